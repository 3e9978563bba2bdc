"""The supervisors' shared records: a task attempt, the job outcome and the event log."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from typing import Callable

from tfps_ha.exit_codes import ExitCode
from tfps_ha.spec import TaskId
from tfps_ha.supervisor.state import TaskState, check_transition
from tfps_ha.workdir import Workdir


@dataclasses.dataclass
class TaskRecord:
    """The supervisor's view of one task attempt.

    Attributes:
      role: For the chief, "leader" or "standby"; empty for PS and workers.
      stopped_by_chaos: Whether a chaos `:stop` paused the process (SIGSTOP).
      kill_at: For a superseded leader, when it is killed if still alive.
    """

    task: TaskId
    address: str
    role: str = ""
    state: TaskState = TaskState.PENDING
    attempt: int = -1
    restarts: int = 0
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    port_failures: int = 0
    last_port_check: float = 0.0
    last_exit_code: int | None = None
    last_cause: str = ""
    stopped_by_chaos: bool = False
    kill_at: float = 0.0


@dataclasses.dataclass
class Outcome:
    """The end state of a supervised job: its exit code and one-line message."""

    exit_code: ExitCode
    message: str


def record_transition(workdir: Workdir, record: TaskRecord, state: TaskState, exit_code: int | None = None,
                      cause: str = "") -> None:
    """Moves `record` to `state` and appends the change to `events.jsonl`.

    Raises:
      ValueError: The lifecycle does not allow the transition.
    """
    check_transition(record.state, state)
    record.state = state
    signal_name = signal.Signals(-exit_code).name if exit_code is not None and exit_code < 0 else None
    event = {
        "ts": time.time(), "task": str(record.task), "attempt": record.attempt, "state": state.value,
        "exit_code": exit_code if exit_code is None or exit_code >= 0 else None,
        "signal": signal_name, "cause": cause,
    }
    if record.role:
        event["role"] = record.role
    with open(workdir.events, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(event) + "\n")


def run_steps(step: Callable[[], Outcome | None], poll_seconds: float) -> Outcome:
    """Calls `step` every `poll_seconds` until it returns an outcome; returns that outcome."""
    while True:
        outcome = step()
        if outcome is not None:
            return outcome
        time.sleep(poll_seconds)


def last_log_line(path: str) -> str:
    """Returns the last non-empty line of a task log, where the error usually is."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(0, stream.tell() - 8192))
            lines = [line.strip() for line in stream.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "(empty log)"
