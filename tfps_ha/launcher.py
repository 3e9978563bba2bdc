"""`tfps-ha launch`: one local job, supervised, with `summary.json` at the end."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import time

from tfps_ha.errors import UsageError
from tfps_ha.coordinator.leadership import holder_host, holder_pid
from tfps_ha.exit_codes import ExitCode
from tfps_ha.lease import LeaseError
from tfps_ha.lease.file import FileLease
from tfps_ha.net import port_in_use
from tfps_ha.spec import MULTI_WORKER_MIRRORED, ClusterSpec, check_target_steps
from tfps_ha.supervisor import process as processes
from tfps_ha.supervisor.chaos import parse_chaos
from tfps_ha.supervisor.group import GroupSupervisor
from tfps_ha.supervisor.supervisor import Supervisor
from tfps_ha.tf_config import resolve_cluster
from tfps_ha.tf_env import check_keras_environment
from tfps_ha.workdir import Workdir, read_json, write_json_atomic

logger = logging.getLogger(__name__)


def launch(spec: ClusterSpec, spec_path: str, workdir: str | None = None, steps: int | None = None,
           chaos: str | None = None, status_port: int | None = None) -> int:
    """Runs every task of `spec` on this machine until the target step.

    Re-running on the same workdir resumes from the latest checkpoint; a job
    that already reached its target is not started again. One launch at a
    time may use a workdir, because each keeps `WORKDIR/launch.lock` locked
    while it runs.

    Args:
      spec: The validated cluster spec.
      spec_path: The spec's file, passed on to every task.
      workdir: The working folder; default the spec's `workdir`.
      steps: Target step count instead of `training.steps`.
      chaos: A `--chaos` kill plan.
      status_port: Port of the status endpoints on 127.0.0.1 (0 picks one);
        None serves none.

    Returns:
      The exit code: 0 only when training completed.

    Raises:
      UsageError: The chaos plan is invalid, tf-keras is missing, the workdir
        cannot be created or is in use by another launch, or a live
        coordinator holds its leader lease.
    """
    check_keras_environment()
    target = steps or spec.training.steps
    if steps is not None:
        check_target_steps(spec.training, steps)
    folder = Workdir(os.path.abspath(workdir or spec.workdir))
    try:
        os.makedirs(folder.root, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--workdir: cannot create {folder.root}: {error.strerror}") from None

    workdir_lock = _lock_workdir(folder)
    try:
        return _launch_locked(spec, spec_path, folder, target, chaos, status_port)
    finally:
        os.close(workdir_lock)


def _launch_locked(spec: ClusterSpec, spec_path: str, folder: Workdir, target: int, chaos: str | None,
                   status_port: int | None) -> int:
    previous = read_json(folder.result)
    if previous and previous.get("completed") and int(previous.get("final_step", 0)) >= target:
        print(f"Job in {folder.root} already reached step {previous.get('final_step')}; nothing to do.",
              flush=True)
        summary = _summary(previous, target, None, 0.0)
        summary["resumed_from_step"] = previous.get("final_step", target)
        write_json_atomic(folder.summary, summary)
        _print_summary(folder, summary)
        return ExitCode.OK

    for stale in (folder.result, folder.heartbeat, folder.summary):
        if os.path.exists(stale):
            os.unlink(stale)

    cluster = resolve_cluster(spec)
    plan = parse_chaos(chaos, cluster, target) if chaos else []
    for task in cluster.tasks():
        if task.job != "evaluator" and port_in_use(cluster.address(task)):
            raise UsageError(
                f"task {task} cannot listen on {cluster.address(task)}: the port is already in use "
                "by another process; stop that process or give the task another port in the spec")
    try:
        os.makedirs(os.path.join(folder.root, "logs"), exist_ok=True)
    except OSError as error:
        raise UsageError(f"--workdir: cannot create {os.path.join(folder.root, 'logs')}: {error.strerror}") from None
    if spec.strategy != MULTI_WORKER_MIRRORED:
        _clear_stale_lease(folder, spec.monitoring.lease_seconds)
    write_json_atomic(os.path.join(folder.root, "cluster.json"), {"cluster": dict(cluster.jobs)})
    # MultiWorkerMirroredStrategy cannot train with a worker missing, so its
    # supervisor restarts the whole worker group where PSS restarts one task.
    supervisor_class = GroupSupervisor if spec.strategy == MULTI_WORKER_MIRRORED else Supervisor
    supervisor = supervisor_class(spec, os.path.abspath(spec_path), cluster, folder, target, plan)
    logger.info("Launching %s: %s; target %d steps; workdir %s.", spec.name,
                ", ".join(f"{job} {', '.join(addresses)}" for job, addresses in cluster.jobs.items()),
                target, folder.root)
    if plan:
        logger.info("Chaos plan: %s.", ", ".join(kill.describe() for kill in plan))

    status_server = None
    if status_port is not None:
        from tfps_ha.observe.http import serve_workdir

        status_server = serve_workdir(folder.root, spec, port=status_port)
        print(f"Status endpoints: {status_server.url}/healthz, /readyz, /status, /metrics.", flush=True)

    started = time.monotonic()
    previous_handlers = {sig: signal.signal(sig, lambda signum, _frame: supervisor.request_stop(signum))
                         for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        outcome = supervisor.run()
    finally:
        supervisor.stop_all(grace_seconds=10.0)
        if status_server is not None:
            status_server.stop()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    result = read_json(folder.result) or {}
    summary = _summary(result, target, supervisor, time.monotonic() - started)
    completed = outcome.exit_code == ExitCode.OK and summary["completed"]
    summary["completed"] = completed
    summary["exit_code"] = int(outcome.exit_code if not (outcome.exit_code == ExitCode.OK and not completed)
                               else ExitCode.FAILED)
    summary["message"] = outcome.message
    write_json_atomic(folder.summary, summary)
    _print_summary(folder, summary)
    if not completed:
        logger.error("Job did not complete: %s Checkpoints are kept in %s.", outcome.message, folder.root)
    return summary["exit_code"]


def _lock_workdir(folder: Workdir) -> int:
    """Takes the workdir's launch lock for the life of this process; returns its file descriptor.

    Raises:
      UsageError: Another launch holds the lock.
    """
    path = os.path.join(folder.root, "launch.lock")
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UsageError(f"--workdir: cannot create {path}: {error.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(descriptor, 64).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise UsageError(f"--workdir: {folder.root} is in use by another launch (pid {owner}); wait for it to "
                         "end or choose another --workdir") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
    return descriptor


def _clear_stale_lease(folder: Workdir, lease_seconds: float) -> None:
    """Clears the way for this launch's coordinator through a leader lease left in the workdir.

    A lease of a coordinator of this host that no longer runs is revoked. A
    lease that another holder renews is rejected, after waiting up to two
    lease durations for it to expire.

    Raises:
      UsageError: Another coordinator keeps renewing the lease.
    """
    lease = FileLease(folder.lease)
    deadline = time.monotonic() + 2 * lease_seconds
    while True:
        try:
            record = lease.read()
        except LeaseError as error:
            raise UsageError(f"--workdir: {error}; delete {folder.lease} if no coordinator uses this workdir") from None
        if record is None or record.expired(time.time()):
            return

        pid = holder_pid(record.holder)
        if holder_host(record.holder) == socket.gethostname() and pid is not None and not _process_runs(pid):
            lease.revoke(record.holder)
            logger.info("Revoked the leader lease of %r, a coordinator of this host that no longer runs.",
                        record.holder)
            return
        if time.monotonic() >= deadline:
            break
        logger.info("Waiting for the leader lease of %r to expire.", record.holder)
        time.sleep(min(0.5, max(0.05, record.expires_at - time.time())))

    raise UsageError(
        f"--workdir: the leader lease in {folder.lease} is held by {record.holder!r} at epoch {record.epoch}, "
        f"which renewed it for {2 * lease_seconds:g} s, so another coordinator still uses this workdir; "
        "stop it, or delete the file if you are sure it is stale")


def _process_runs(pid: int) -> bool:
    """Returns whether `pid` is a live process; a zombie, dead but not yet reaped, does not run."""
    state = processes.process_state(pid)
    return state is not None and state != "Z"


def _summary(result: dict, target: int, supervisor: Supervisor | GroupSupervisor | None,
             wall_seconds: float) -> dict:
    """Builds `summary.json`; without a supervisor (nothing was run) the counters are empty."""
    progress = supervisor.progress if supervisor else None
    return {
        "completed": bool(result.get("completed")),
        "final_step": int(result.get("final_step", 0)),
        "target_steps": target,
        "resumed_from_step": int(progress.first_step or 0) if progress else 0,
        "metrics": result.get("metrics", {}),
        "restarts": supervisor.restart_counts() if supervisor else {},
        "failovers": supervisor.failovers if supervisor else 0,
        "fenced_exits": supervisor.fenced_exits if supervisor else 0,
        "lost_steps": progress.lost_steps if progress else 0,
        "recoveries": progress.summary_recoveries() if progress else [],
        "wall_seconds": round(wall_seconds, 3),
    }


def _print_summary(folder: Workdir, summary: dict) -> None:
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in sorted(summary["metrics"].items())
                        if isinstance(value, (int, float)))
    print(f"completed: {str(summary['completed']).lower()}; final step {summary['final_step']}/"
          f"{summary['target_steps']}; resumed from step {summary['resumed_from_step']}; "
          f"{metrics or 'no metrics'}; summary {folder.summary}", flush=True)
