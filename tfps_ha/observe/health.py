"""Liveness and readiness verdicts over a status dict, for `/healthz` and `/readyz`.

The liveness rules mirror the supervisor's hang detection, so a probe fails
when the supervisor would kill the coordinator as hung.
"""

from __future__ import annotations

from typing import Any

from tfps_ha.spec import ClusterSpec, MonitoringSpec

# The spec's default startup_timeout_seconds, used when no spec is given.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 60.0


def check_health(status: dict[str, Any], spec: ClusterSpec | None = None) -> tuple[bool, str]:
    """Returns whether the job is alive and making progress, and the reason.

    The job is healthy in three cases:
      * It completed.
      * The coordinator's heartbeat is younger than `heartbeat_timeout_seconds`,
        and the step advanced within `progress_timeout_seconds`. The step
        check applies only while the coordinator trains with every worker up.
      * A coordinator attempt started less than `startup_timeout_seconds +
        heartbeat_timeout_seconds` ago and has not written a heartbeat yet.

    Args:
      status: A dict from `status_from_workdir` or `WorkdirStatus.read`.
      spec: The job's spec, for its deadlines; the defaults apply without one.
    """
    monitoring = spec.monitoring if spec else MonitoringSpec()
    startup = spec.startup_timeout_seconds if spec else DEFAULT_STARTUP_TIMEOUT_SECONDS
    now = status["time"]
    state = status["job_state"]

    if state == "completed":
        return True, f"job completed at step {status['step']}"
    if state in ("failed", "stopped"):
        return False, f"job ended ({status['exit_reason']}): {status['message']}"
    if state == "no_job":
        return False, f"no job files in {status['workdir']}"
    if state == "interrupted":
        return False, "no launch runs and the last one ended without a summary (the launcher was killed)"

    chief = status["tasks"].get("chief:0")
    attempt_started = chief["since"] if chief and chief["state"] in ("STARTING", "RUNNING") else None
    heartbeat_time = status["heartbeat_time"]
    if heartbeat_time is None or (attempt_started is not None and heartbeat_time < attempt_started):
        # TF import, strategy build and restore come before a new attempt's first heartbeat.
        allowance = startup + monitoring.heartbeat_timeout_seconds
        started = attempt_started or status["launched_at"] or now
        waited = now - started
        if waited > allowance:
            return False, (f"no coordinator heartbeat {waited:.0f} s after the coordinator started "
                           f"(allowed {allowance:g} s)")
        return True, f"starting: waiting for the coordinator's first heartbeat ({waited:.0f} s)"

    age = status["heartbeat_age_seconds"]
    if age > monitoring.heartbeat_timeout_seconds:
        return False, (f"coordinator heartbeat is {age:.0f} s old "
                       f"(heartbeat_timeout_seconds {monitoring.heartbeat_timeout_seconds:g})")

    workers = [task for task in status["tasks"].values() if task["job"] == "worker"]
    workers_up = bool(workers) and all(task["state"] == "RUNNING" for task in workers)
    changed_at = status["step_changed_at"]
    if workers_up and status["phase"] == "training" and changed_at is not None:
        stalled = now - max(changed_at, attempt_started or changed_at)
        if stalled > monitoring.progress_timeout_seconds:
            return False, (f"step {status['step']} has not advanced for {stalled:.0f} s while every "
                           f"worker is up (progress_timeout_seconds {monitoring.progress_timeout_seconds:g})")
    return True, f"step {status['step']}, heartbeat {age:.0f} s old"


def check_readiness(status: dict[str, Any], min_workers: int = 1) -> tuple[bool, str]:
    """Returns whether every PS and at least `min_workers` workers are RUNNING, and the reason.

    Args:
      status: A dict from `status_from_workdir` or `WorkdirStatus.read`.
      min_workers: Workers that must be up. PSS trains on any worker that is
        up, so the default is 1.
    """
    tasks = status["tasks"]
    ps = [name for name, task in tasks.items() if task["job"] == "ps"]
    workers = [name for name, task in tasks.items() if task["job"] == "worker"]
    ps_down = [name for name in ps if tasks[name]["state"] != "RUNNING"]
    workers_up = [name for name in workers if tasks[name]["state"] == "RUNNING"]

    if not ps:
        return False, "no PS task is known yet (no cluster.json and no events)"
    if ps_down:
        states = ", ".join(f"{name} {tasks[name]['state']}" for name in ps_down)
        return False, f"PS not running: {states}"
    if len(workers_up) < min_workers:
        return False, f"{len(workers_up)} of {len(workers)} workers running; at least {min_workers} required"
    return True, f"{len(ps)} PS and {len(workers_up)} of {len(workers)} workers running"
