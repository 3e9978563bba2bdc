"""The status of a running or finished job, read from its working folder.

`status_from_workdir` reads once, for the CLI. `WorkdirStatus` keeps file
offsets between reads, for a server that is polled every few seconds.

The status dict has these keys (a value is None when the files do not tell):

  workdir: The job's working folder.
  time: Wall time when the status was taken.
  job_state: `no_job` (no job files), `starting` (no coordinator yet),
    `running`, `completed`, `failed`, `stopped` (PREEMPTED: resumable) or
    `interrupted`. A job is interrupted when no launch has the workdir's
    launch lock and the last launch wrote no summary, because its launcher
    was killed. Running the launch again resumes it.
  completed: Whether training reached its target step.
  exit_code, exit_reason, message: The launch's exit code, its name (such as
    `RESTART_BUDGET_SPENT`) and one-line message once it ended.
  launched_at: Wall time of the latest launch's first event.
  step, target_step: The training step and the target step.
  steps_per_second: The latest rate from `progress.jsonl`; 0.0 once the job
    ended; None without progress lines.
  eta_seconds: Seconds to the target at that rate.
  loss: The latest training loss.
  phase: The coordinator's phase from its heartbeat (`training`, `done`, ...).
  heartbeat_time, heartbeat_age_seconds: When the coordinator last wrote its
    heartbeat, and how long ago.
  step_changed_at: Wall time when the step last advanced, from the
    progress lines (or successive heartbeats, for `WorkdirStatus`).
  tasks: Task name to `{job, index, address, state, attempt, since, restarts,
    restarts_by_cause, last_exit_code, last_signal, last_cause, standby}` for
    the latest launch. `state`, `attempt` and the `last_` keys describe the
    primary attempt (see `TaskHistory`); `state` is a `TaskState` value and
    `since` the wall time it was entered. `standby` is `{attempt, state,
    since}` of a standby coordinator waiting to lead, else None.
  restarts: Task name to restarts in the latest launch.
  restarts_total: Restarts of all tasks together.
  chaos_kills: Tasks killed by the chaos plan in the latest launch.
  checkpoint: `{step, saved_at, age_seconds, duration_seconds, path,
    source}` of the newest checkpoint (see `checkpoint_log`), or None.
  leader: `{holder, epoch, acquired_at, renewed_at, expires_at,
    expires_in_seconds}` from `leader.lease`, or None without a lease.
  leader_epoch: The lease epoch, else the latest one in the progress lines.
  failovers: Leader changes (see `ProgressTracker.failovers`), or the
    summary's count when that is larger.
  lost_steps: Steps trained again after a restore, from `summary.json`.
"""

from __future__ import annotations

import json
import math
import fcntl
import os
import threading
import time
from typing import Any

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode, describe
from tfps_ha.observe.checkpoint_log import latest_checkpoint
from tfps_ha.observe.events import Launch, TaskHistory, build_launch, split_launches
from tfps_ha.observe.jsonl import JsonlFollower
from tfps_ha.observe.progress import ProgressTracker
from tfps_ha.spec import ClusterSpec
from tfps_ha.workdir import Workdir, read_json

SUPERVISED_JOBS = ("chief", "ps", "worker")
# Files whose presence makes a folder a job's working folder.
JOB_FILES = ("events.jsonl", "heartbeat.json", "summary.json", "result.json", "cluster.json", "progress.jsonl")


def has_job_files(workdir: str) -> bool:
    """Returns whether `workdir` contains any file that a launch writes."""
    return any(os.path.exists(os.path.join(workdir, name)) for name in JOB_FILES)


def require_job_folder(workdir: str) -> str:
    """Returns the absolute path of `workdir` after checking that it contains a job's files.

    Raises:
      UsageError: The folder does not exist, is not a folder, or contains none
        of the files a launch writes.
    """
    path = os.path.abspath(workdir)
    if not os.path.exists(path):
        raise UsageError(f"workdir {workdir!r} not found; expected the working folder of a launch (its --workdir)")
    if not os.path.isdir(path):
        raise UsageError(f"workdir {workdir!r} is not a folder; expected the working folder of a launch")
    if not has_job_files(path):
        raise UsageError(
            f"workdir {workdir!r} contains no job files (expected one of {', '.join(JOB_FILES)}); "
            "pass the --workdir of a launch, or wait until the launch has started its tasks")
    return path


def status_from_workdir(workdir: str, spec: ClusterSpec | None = None) -> dict[str, Any]:
    """Reads the status of the job in `workdir` once; see the module docstring for the keys.

    Args:
      workdir: The job's working folder (a launch's `--workdir`).
      spec: The job's cluster spec. Optional: it supplies the target step and
        the task list when the job has not written them yet.
    """
    return WorkdirStatus(workdir, spec).read()


def status_to_json(status: dict[str, Any]) -> str:
    """Returns the status as indented JSON, with NaN and infinity written as null.

    A diverged loss can be NaN, which strict JSON parsers reject.
    """
    return json.dumps(_finite(status), indent=2, sort_keys=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class WorkdirStatus:
    """Reads a job's status repeatedly, reading only what files gained since the last call.

    It is safe to call `read` from several threads.
    """

    def __init__(self, workdir: str, spec: ClusterSpec | None = None):
        self.workdir = Workdir(os.path.abspath(workdir))
        self.spec = spec
        self._lock = threading.Lock()
        self._events_follower = JsonlFollower(self.workdir.events)
        self._events: list[dict[str, Any]] = []
        self._launched_at: float | None = None
        self._progress_follower = JsonlFollower(self.workdir.progress)
        self._progress = ProgressTracker()
        self._last_heartbeat: tuple[float, int] | None = None
        self._heartbeat_step_changed_at: float | None = None

    def read(self, now: float | None = None) -> dict[str, Any]:
        """Returns the status dict described in the module docstring.

        Args:
          now: Wall time that ages are measured against; the current time when None.
        """
        with self._lock:
            return self._read(time.time() if now is None else now)

    def _read(self, now: float) -> dict[str, Any]:
        launch = self._read_events()
        progress = self._read_progress(launch)
        heartbeat = read_json(self.workdir.heartbeat)
        heartbeat = heartbeat if isinstance(heartbeat, dict) else None
        self._track_heartbeat(heartbeat)
        launched_at = launch.started_at if launch else None
        summary = _fresh_json(self.workdir.summary, launched_at)
        result = _fresh_json(self.workdir.result, launched_at)

        status: dict[str, Any] = {"workdir": self.workdir.root, "time": now, "launched_at": launched_at}
        status.update(_job_state(launch, summary, result, has_job_files(self.workdir.root)))
        if status["job_state"] in ("running", "starting") and launch_running(self.workdir.root) is False:
            status["job_state"] = "interrupted"
        status.update(_training(status, heartbeat, progress, summary, result, self.spec, now))
        if status["step_changed_at"] is None:
            status["step_changed_at"] = self._heartbeat_step_changed_at
        status.update(_tasks(launch, read_json(os.path.join(self.workdir.root, "cluster.json")), self.spec))
        status["checkpoint"] = _checkpoint(self.workdir.root, launched_at, now)
        status.update(_leadership(read_json(self.workdir.lease), progress, heartbeat, summary, now))
        status["lost_steps"] = summary.get("lost_steps") if summary else None
        return status

    def _read_events(self) -> Launch | None:
        new = self._events_follower.read_new()
        if self._events_follower.restarted:
            self._events = []
        self._events.extend(new)
        launches = split_launches(self._events)
        if not launches:
            return None
        # Earlier launches are not needed again; keeping only the latest bounds memory.
        self._events = launches[-1]
        return build_launch(self._events)

    def _read_progress(self, launch: Launch | None) -> ProgressTracker:
        launched_at = launch.started_at if launch else None
        if launched_at != self._launched_at:
            self._launched_at = launched_at
            self._progress = ProgressTracker()
            self._progress_follower = JsonlFollower(self._progress_follower.path)
            self._last_heartbeat = None
            self._heartbeat_step_changed_at = None
        records = self._progress_follower.read_new()
        if self._progress_follower.restarted:
            self._progress = ProgressTracker()
        self._progress.add(records, since=launched_at)
        return self._progress

    def _track_heartbeat(self, heartbeat: dict[str, Any] | None) -> None:
        """Notes when the heartbeat's step changed, for jobs without progress lines."""
        if not heartbeat or not isinstance(heartbeat.get("step"), int):
            return
        sample = (_number(heartbeat.get("time")) or 0.0, heartbeat["step"])
        if self._last_heartbeat is not None and sample[1] != self._last_heartbeat[1]:
            self._heartbeat_step_changed_at = sample[0]
        self._last_heartbeat = sample


def _fresh_json(path: str, launched_at: float | None) -> dict[str, Any] | None:
    """Returns a JSON object file unless it predates the latest launch."""
    value = read_json(path)
    if not isinstance(value, dict):
        return None
    try:
        written_at = os.path.getmtime(path)
    except OSError:
        return None
    if launched_at is not None and written_at < launched_at:
        return None
    return value


def launch_running(workdir: str) -> bool | None:
    """Returns whether a launch holds `WORKDIR/launch.lock`, or None when there is no lock file."""
    path = os.path.join(workdir, "launch.lock")
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def _job_state(launch: Launch | None, summary: dict | None, result: dict | None,
               has_files: bool) -> dict[str, Any]:
    state = {"completed": False, "exit_code": None, "exit_reason": None, "message": None}
    if summary is not None:
        code = summary.get("exit_code")
        state["completed"] = bool(summary.get("completed"))
        state["exit_code"] = code
        state["exit_reason"] = describe(code) if isinstance(code, int) else None
        state["message"] = summary.get("message")
        if state["completed"]:
            state["job_state"] = "completed"
        elif code == ExitCode.PREEMPTED:
            state["job_state"] = "stopped"
        else:
            state["job_state"] = "failed"
        return state

    if result is not None and result.get("completed"):
        state["completed"] = True
        state["job_state"] = "completed"
    elif launch is None:
        state["job_state"] = "no_job" if not has_files else "starting"
    elif "chief:0" in launch.tasks:
        state["job_state"] = "running"
    else:
        state["job_state"] = "starting"
    return state


def _training(status: dict[str, Any], heartbeat: dict | None, progress: ProgressTracker,
              summary: dict | None, result: dict | None, spec: ClusterSpec | None, now: float) -> dict[str, Any]:
    last = progress.last or {}
    ended = status["job_state"] in ("completed", "failed", "stopped")

    step = _first_int(summary.get("final_step") if summary and ended else None,
                      heartbeat.get("step") if heartbeat else None,
                      last.get("step"),
                      result.get("final_step") if result else None)
    target = _first_int(heartbeat.get("target_step") if heartbeat else None,
                        summary.get("target_steps") if summary else None,
                        result.get("target_steps") if result else None,
                        spec.training.steps if spec else None)
    loss = _first_number(heartbeat.get("loss") if heartbeat else None, last.get("loss"),
                         (summary or {}).get("metrics", {}).get("loss"))

    rate = _number(last.get("steps_per_second"))
    if ended:
        rate = 0.0
    eta = None
    if rate and step is not None and target is not None:
        eta = max(0, target - step) / rate

    heartbeat_time = _number(heartbeat.get("time")) if heartbeat else None
    return {
        "step": step, "target_step": target, "steps_per_second": rate, "eta_seconds": eta, "loss": loss,
        "phase": heartbeat.get("phase") if heartbeat else None,
        "heartbeat_time": heartbeat_time,
        "heartbeat_age_seconds": max(0.0, now - heartbeat_time) if heartbeat_time is not None else None,
        "step_changed_at": progress.step_changed_at,
    }


def _tasks(launch: Launch | None, cluster_file: Any, spec: ClusterSpec | None) -> dict[str, Any]:
    addresses = _addresses(cluster_file, spec)
    names = list(addresses)
    if launch:
        names += [name for name in launch.tasks if name not in addresses]
    tasks = {}
    for name in sorted(names, key=_task_order):
        history = launch.tasks.get(name) if launch else None
        tasks[name] = _task_entry(name, addresses.get(name), history)
    restarts = {name: task["restarts"] for name, task in tasks.items()}
    return {
        "tasks": tasks, "restarts": restarts, "restarts_total": sum(restarts.values()),
        "chaos_kills": sum(failure.chaos for failure in launch.failures) if launch else 0,
    }


def _task_entry(name: str, address: str | None, history: TaskHistory | None) -> dict[str, Any]:
    job, _, index = name.partition(":")
    primary = history.primary if history else None
    standby = history.standby if history else None
    return {
        "job": job, "index": int(index) if index.isdigit() else 0, "address": address,
        "state": history.state if history else "PENDING",
        "attempt": primary.attempt if primary else -1,
        "since": history.since if history else None,
        "restarts": history.restarts if history else 0,
        "restarts_by_cause": dict(history.restarts_by_cause) if history else {},
        "last_exit_code": primary.exit_code if primary else None,
        "last_signal": primary.signal if primary else None,
        "last_cause": primary.last_cause if primary else "",
        "standby": {"attempt": standby.attempt, "state": standby.state, "since": standby.changes[-1][0]}
        if standby else None,
    }


def _addresses(cluster_file: Any, spec: ClusterSpec | None) -> dict[str, str | None]:
    """Returns task name to address from `cluster.json`, else the task names of the spec."""
    jobs = cluster_file.get("cluster") if isinstance(cluster_file, dict) else None
    addresses: dict[str, str | None] = {}
    if isinstance(jobs, dict):
        for job, members in jobs.items():
            if job in SUPERVISED_JOBS and isinstance(members, list):
                for index, address in enumerate(members):
                    addresses[f"{job}:{index}"] = str(address)
    elif spec is not None:
        for job in SUPERVISED_JOBS:
            for index in range(spec.task_count(job)):
                addresses[f"{job}:{index}"] = None
    return addresses


def _task_order(name: str) -> tuple[int, int, str]:
    job, _, index = name.partition(":")
    rank = SUPERVISED_JOBS.index(job) if job in SUPERVISED_JOBS else len(SUPERVISED_JOBS)
    return rank, int(index) if index.isdigit() else 0, name


def _checkpoint(workdir: str, launched_at: float | None, now: float) -> dict[str, Any] | None:
    checkpoint = latest_checkpoint(workdir, since=launched_at)
    if checkpoint is None:
        return None
    saved_at = checkpoint.get("saved_at")
    checkpoint["age_seconds"] = max(0.0, now - saved_at) if saved_at is not None else None
    return checkpoint


def _leadership(lease: Any, progress: ProgressTracker, heartbeat: dict | None, summary: dict | None,
                now: float) -> dict[str, Any]:
    leader = None
    if isinstance(lease, dict):
        expires_at = _number(lease.get("expires_at"))
        leader = {
            "holder": lease.get("holder"), "epoch": lease.get("epoch"),
            "acquired_at": lease.get("acquired_at"), "renewed_at": lease.get("renewed_at"),
            "expires_at": expires_at,
            "expires_in_seconds": expires_at - now if expires_at is not None else None,
        }
    epoch = _first_int(leader.get("epoch") if leader else None, progress.leader_epoch,
                       heartbeat.get("leader_epoch") if heartbeat else None)
    failovers = progress.failovers
    if summary and isinstance(summary.get("failovers"), int):
        failovers = max(failovers, summary["failovers"])
    return {"leader": leader, "leader_epoch": epoch, "failovers": failovers}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _first_number(*values: Any) -> float | None:
    for value in values:
        number = _number(value)
        if number is not None:
            return number
    return None


def _first_int(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
