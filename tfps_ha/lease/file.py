"""A lease in a local file, guarded by an OS lock: leader election on one host.

The record is JSON in `WORKDIR/leader.lease`. Every read-modify-write takes an
exclusive `flock` on `leader.lease.lock`, and the record is replaced
atomically, so readers never see half a record. The lock is held for
microseconds, never for the length of a leadership: a leader that is
stopped (SIGSTOP) keeps no lock, and its lease simply expires.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from typing import Callable, Iterator

from tfps_ha.lease import base
from tfps_ha.lease.base import LeaseBackend, LeaseError, LeaseRecord
from tfps_ha.workdir import read_json, write_json_atomic

logger = logging.getLogger(__name__)


class FileLease(LeaseBackend):
    """The lease stored in one file.

    Args:
      path: The lease record's path; the lock file is `path + ".lock"`.
      lock_timeout_seconds: How long an operation waits for the lock before it
        raises `LeaseError`.
      clock: Wall-clock source, replaced in tests.
    """

    def __init__(self, path: str, lock_timeout_seconds: float = 5.0, clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.path = path
        self.lock_path = path + ".lock"
        self.lock_timeout_seconds = lock_timeout_seconds

    def read(self) -> LeaseRecord | None:
        value = read_json(self.path)
        if value is None:
            if os.path.exists(self.path):
                raise LeaseError(f"lease file {self.path} is not valid JSON")
            return None
        return LeaseRecord.from_json(value)

    def try_acquire(self, holder: str, duration_seconds: float) -> LeaseRecord | None:
        with self._locked():
            current = self.read()
            record = base.acquired(current, holder, duration_seconds, self.clock())
            if record is not None and record != current:
                self._write(record)
            return record

    def renew(self, holder: str, epoch: int, duration_seconds: float) -> LeaseRecord:
        with self._locked():
            record = base.renewed(self.read(), holder, epoch, duration_seconds, self.clock())
            self._write(record)
            return record

    def check(self, holder: str, epoch: int, min_remaining_seconds: float = 0.0) -> LeaseRecord:
        with self._locked():
            return base.checked(self.read(), holder, epoch, self.clock(), min_remaining_seconds)

    def release(self, holder: str, epoch: int) -> bool:
        return self._end(holder, epoch)

    def revoke(self, holder: str) -> bool:
        return self._end(holder, None)

    def _end(self, holder: str, epoch: int | None) -> bool:
        with self._locked():
            record = base.released(self.read(), holder, epoch, self.clock())
            if record is None:
                return False
            self._write(record)
            return True

    def _write(self, record: LeaseRecord) -> None:
        try:
            write_json_atomic(self.path, record.to_json())
        except OSError as error:
            raise LeaseError(f"could not write lease file {self.path}: {error}") from error

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            os.makedirs(os.path.dirname(self.lock_path) or ".", exist_ok=True)
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise LeaseError(f"could not open lease lock {self.lock_path}: {error}") from error

        try:
            deadline = time.monotonic() + self.lock_timeout_seconds
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        # A process stopped inside its few-microsecond critical
                        # section keeps the lock until it is killed.
                        raise LeaseError(
                            f"timed out after {self.lock_timeout_seconds:g} s waiting for the lease lock "
                            f"{self.lock_path}; a stopped coordinator may hold it") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(descriptor)
