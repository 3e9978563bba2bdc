"""This coordinator's hold on the leader lease: wait for it, renew it, fence saves with it.

Failure contract:
  * Only the lease holder builds a strategy and trains; a standby waits in
    `acquire` with TensorFlow and the trainer already imported.
  * A lease keeper process (`tfps_ha.lease.keeper`) extends the lease every
    quarter of its duration while this process runs and is not stopped.
    When a renewal finds another holder or a newer epoch, the keeper reports
    it. The coordinator then records the loss and sets the run's stop event,
    so the runner stops scheduling.
  * Every checkpoint save calls `fence` first. A coordinator whose epoch is
    no longer current gets `LeadershipLostError` there and exits with
    `LEADERSHIP_LOST` without writing, so a paused and resumed coordinator
    (a zombie) cannot overwrite the new leader's checkpoints.
  * A clean exit releases the lease, so the standby takes over at once.

TODO(#3): a zombie resumed between `fence` and the end of its save can still
finish that one save. Closing the gap needs storage that checks the epoch on
write, which neither local files nor TF's checkpoint writer offer.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time

from tfps_ha.errors import StartupTimeoutError
from tfps_ha.lease import LeaseBackend, LeaseError, LeaseRecord, LeadershipLostError

logger = logging.getLogger(__name__)

STANDBY_LOG_INTERVAL_SECONDS = 60.0
MAX_KEEPER_RESTARTS = 5
# Set in the coordinator pod by the manifests of `tfps-ha render-k8s`.
POD_UID_ENV = "TFPS_HA_POD_UID"


def holder_id(task: str, attempt: int | None) -> str:
    """Returns a lease holder id unique to this process, such as `chief:0 attempt 2 pid 4711 host h1`.

    In a Kubernetes pod the pod UID is added, because a replacement pod has
    the same name and often the same pid.
    """
    attempt_text = f" attempt {attempt}" if attempt is not None else ""
    pod_uid = os.environ.get(POD_UID_ENV)
    pod_text = f" pod {pod_uid}" if pod_uid else ""
    return f"{task}{attempt_text} pid {os.getpid()} host {socket.gethostname()}{pod_text}"


def holder_pid(holder: str) -> int | None:
    """Returns the pid inside a `holder_id`, or None when it has none."""
    value = _holder_field(holder, "pid")
    return int(value) if value is not None and value.isdigit() else None


def holder_host(holder: str) -> str | None:
    """Returns the host name inside a `holder_id`, or None when it has none."""
    return _holder_field(holder, "host")


def _holder_field(holder: str, name: str) -> str | None:
    words = holder.split()
    for key, value in zip(words, words[1:]):
        if key == name:
            return value
    return None


class Leadership:
    """One coordinator's candidacy for, and then tenure of, the leader lease.

    Args:
      backend: The lease store.
      holder: This coordinator's holder id.
      lease_seconds: Lease duration; the keeper renews it every quarter of it.
      stop: The run's stop event, set when leadership is lost.
      keeper_args: `tfps_ha.lease.keeper` arguments that name the same store;
        by default the file of a `FileLease` backend.
      poll_seconds: How often `acquire` tries the lease.
    """

    def __init__(self, backend: LeaseBackend, holder: str, lease_seconds: float, stop: threading.Event,
                 keeper_args: list[str] | None = None, poll_seconds: float = 0.1):
        if keeper_args is None:
            keeper_args = ["--backend", "file", "--lease", backend.path]
        self.keeper_args = keeper_args
        self.poll_seconds = poll_seconds
        self.backend = backend
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.stop = stop
        self.record: LeaseRecord | None = None
        self.lost: LeadershipLostError | None = None
        self.previous: LeaseRecord | None = None
        self._keeper: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._released = False
        self._keeper_restarts = 0

    @property
    def epoch(self) -> int:
        """The epoch this coordinator leads, or 0 before it leads."""
        return self.record.epoch if self.record else 0

    def acquire(self, standby: bool, deadline_seconds: float) -> LeaseRecord | None:
        """Waits until this coordinator holds the lease.

        Args:
          standby: Whether to wait for as long as another leader lives. A
            coordinator that is not a standby waits at most `deadline_seconds`.
          deadline_seconds: The wait limit when `standby` is False.

        Returns:
          The lease record, or None when the stop event was set first.

        Raises:
          StartupTimeoutError: Not a standby, and another holder kept the lease
            past the deadline.
        """
        started = time.monotonic()
        last_log = 0.0
        while not self.stop.is_set():
            try:
                current = self.backend.read()
                record = self.backend.try_acquire(self.holder, self.lease_seconds)
            except LeaseError as error:
                logger.warning("Coordinator %s could not reach the lease (%s); retrying.", self.holder, error)
                current, record = None, None
            if record is not None:
                self.previous = current if current and current.holder != self.holder else None
                self.record = record
                return record

            waited = time.monotonic() - started
            if not standby and waited > deadline_seconds:
                raise StartupTimeoutError(
                    f"the coordinator waited {deadline_seconds:g} s for the leader lease, but "
                    f"{current.holder if current else 'another coordinator'!r} kept renewing it; is another "
                    "launch using the same workdir?")
            if time.monotonic() - last_log >= (STANDBY_LOG_INTERVAL_SECONDS if standby else 5.0):
                last_log = time.monotonic()
                if current is not None:
                    logger.info("Coordinator %s is standing by: %r leads at epoch %d (lease expires in %.1f s).",
                                self.holder, current.holder, current.epoch,
                                max(0.0, current.expires_at - time.time()))
            self.stop.wait(self.poll_seconds)
        return None

    def start_renewing(self) -> None:
        """Starts the lease keeper process and a thread that reads its loss report.

        Raises:
          LeaseError: The keeper could not start.
        """
        command = [sys.executable, "-m", "tfps_ha.lease.keeper", *self.keeper_args,
                   "--holder", self.holder, "--epoch", str(self.epoch),
                   "--seconds", str(self.lease_seconds), "--parent", str(os.getpid())]
        try:
            # No parent-death signal: Linux sends it when the spawning thread
            # ends, and a restart comes from the reader thread. The keeper
            # checks its parent before every renewal instead.
            self._keeper = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        except OSError as error:
            raise LeaseError(f"could not start the lease keeper: {error}") from error
        self._reader = threading.Thread(target=self._read_keeper, name="lease-keeper-reader", daemon=True)
        self._reader.start()

    def fence(self, step: int) -> None:
        """Rejects a checkpoint save unless this coordinator still leads at its epoch.

        Raises:
          LeadershipLostError: Another coordinator leads now, or this lease is
            about to expire.
        """
        if self.lost is not None:
            self._log_rejected_save(step, self.lost)
            raise self.lost
        try:
            self.backend.check(self.holder, self.epoch, min_remaining_seconds=self.lease_seconds / 4)
        except LeadershipLostError as error:
            self.lost = error
            self._log_rejected_save(step, error)
            raise

    def release(self, end_lease: bool = True) -> None:
        """Stops renewing and, with `end_lease`, ends the lease now so a standby need not wait."""
        self._released = True
        self._stop_keeper()
        if self.record is None or self.lost is not None or not end_lease:
            return
        try:
            if self.backend.release(self.holder, self.epoch):
                logger.info("Coordinator released leadership of epoch %d.", self.epoch)
        except LeaseError as error:
            logger.warning("Coordinator could not release the lease (%s); a standby takes over when it "
                           "expires.", error)

    def _read_keeper(self) -> None:
        keeper = self._keeper
        for line in keeper.stdout:
            if not line.startswith("LOST"):
                continue
            try:
                current = self.backend.read()
            except LeaseError:
                current = None
            self.lost = LeadershipLostError(self.holder, self.epoch, current)
            logger.error("Coordinator lost leadership: %s. It stops scheduling steps and will not save.",
                         self.lost)
            self.stop.set()
            return

        # The keeper's output ended without a loss report: it exited.
        code = keeper.wait()
        if self._released or self.lost is not None:
            return
        if self._keeper_restarts >= MAX_KEEPER_RESTARTS:
            logger.error("Lease keeper exited with %s for the %d time; the coordinator stops renewing, so a "
                         "standby takes over when the lease expires.", code, self._keeper_restarts + 1)
            return
        self._keeper_restarts += 1
        logger.warning("Lease keeper pid %d exited with %s; starting it again (%d/%d).", keeper.pid, code,
                       self._keeper_restarts, MAX_KEEPER_RESTARTS)
        try:
            self.start_renewing()
        except LeaseError as error:
            logger.error("Could not restart the lease keeper: %s", error)

    def _stop_keeper(self) -> None:
        if self._keeper is None or self._keeper.poll() is not None:
            return
        self._keeper.terminate()
        try:
            self._keeper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._keeper.kill()
            self._keeper.wait(timeout=5)

    @staticmethod
    def _log_rejected_save(step: int, error: LeadershipLostError) -> None:
        logger.error("Checkpoint save at step %d rejected: %s.", step, error)
