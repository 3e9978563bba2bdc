"""Per-task history built from `events.jsonl`, the supervisor's state-change log.

Each line is one task state change:
`{"ts", "task", "attempt", "state", "exit_code", "signal", "cause"}`. The
launcher appends to the same file on every launch in a workdir, so the lines
are split into launches first: a launch begins where a task that already has
events in the current launch starts attempt 0 again.

A task can have two live attempts at once: the coordinator (`chief:0`) keeps
a standby attempt in STANDBY beside the leading one. Every event names its
attempt, so each attempt keeps its own state.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

# States that end an attempt's process, or end its role as the leader.
_ATTEMPT_ENDS = ("FAILED", "SUCCEEDED", "STOPPED", "SUPERSEDED")
# States after FAILED that mean another attempt replaces the failed one.
_REPLACED_AFTER_FAILURE = ("BACKOFF", "SUPERSEDED", "STOPPED")
_TASK_LOST = re.compile(r"^(chief|worker|ps|evaluator):\d+ lost$")


@dataclasses.dataclass
class Attempt:
    """One process of a task, from spawn to exit.

    Attributes:
      attempt: The attempt number, 0 for the first process of the launch.
      started_at: Wall time of the STARTING event.
      state: The attempt's latest state.
      changes: Every `(wall time, state)` of the attempt, oldest first.
      standby: Whether the attempt waited in STANDBY (a standby coordinator).
      running_at: Wall time it became RUNNING (for a standby, took over), or None.
      ended_at: Wall time it exited or stopped leading (the first FAILED,
        SUCCEEDED, STOPPED or SUPERSEDED event), or None while it runs.
      end_state: The state at `ended_at`, or None while it runs.
      exit_code: Exit code when it exited with one.
      signal: Signal name (such as `SIGKILL`) when a signal ended it.
      cause: The supervisor's cause at `ended_at`, such as `chaos SIGKILL`.
      last_cause: The supervisor's cause of the latest state change.
    """

    attempt: int
    started_at: float
    state: str = "STARTING"
    changes: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    standby: bool = False
    running_at: float | None = None
    ended_at: float | None = None
    end_state: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    cause: str = ""
    last_cause: str = ""

    @property
    def standby_only(self) -> bool:
        """Whether the attempt was a standby that never led."""
        return self.standby and self.running_at is None


@dataclasses.dataclass
class Failure:
    """One FAILED event: a task process that exited, died by a signal or was killed.

    Attributes:
      ts: Wall time of the event.
      task: Task name, such as `worker:1`.
      attempt: The attempt that failed.
      cause: The supervisor's cause, such as `chaos SIGKILL` or `CLUSTER_UNAVAILABLE`.
      exit_code: Exit code, or None when a signal ended the process.
      signal: Signal name, or None.
      chaos: Whether a chaos kill caused it (the cause starts with "chaos").
    """

    ts: float
    task: str
    attempt: int
    cause: str
    exit_code: int | None
    signal: str | None
    chaos: bool


@dataclasses.dataclass
class TaskHistory:
    """Everything the events of one launch record about one task.

    The task's state is the state of its primary attempt: the newest attempt
    that is not a standby still waiting to lead.

    Attributes:
      task: Task name, such as `worker:1`.
      attempts: Every attempt, in the order they started.
      restarts_by_cause: Restarts counted by `restart_cause_label` of their
        cause. A restart is a failed attempt that another attempt replaces
        (FAILED, then BACKOFF, SUPERSEDED or STOPPED), or a leader that lost
        its lease while it ran (RUNNING, then SUPERSEDED).
      backoffs: `(wall time, attempt)` of every BACKOFF event.
    """

    task: str
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    restarts_by_cause: dict[str, int] = dataclasses.field(default_factory=dict)
    backoffs: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    @property
    def restarts(self) -> int:
        """Restarts in this launch."""
        return sum(self.restarts_by_cause.values())

    @property
    def primary(self) -> Attempt | None:
        """The newest attempt that is not a waiting standby, else the newest attempt."""
        for attempt in reversed(self.attempts):
            if not attempt.standby_only:
                return attempt
        return self.attempts[-1] if self.attempts else None

    @property
    def standby(self) -> Attempt | None:
        """The newest attempt that is waiting as a standby (STARTING or STANDBY), or None."""
        for attempt in reversed(self.attempts):
            if attempt.standby_only and attempt.state in ("STARTING", "STANDBY"):
                return attempt
        return None

    @property
    def state(self) -> str:
        """The primary attempt's latest state; PENDING before any attempt."""
        primary = self.primary
        return primary.state if primary else "PENDING"

    @property
    def since(self) -> float | None:
        """Wall time of the primary attempt's latest state change."""
        primary = self.primary
        return primary.changes[-1][0] if primary and primary.changes else None

    def find(self, number: int) -> Attempt | None:
        """Returns the attempt with that number, or None."""
        for attempt in reversed(self.attempts):
            if attempt.attempt == number:
                return attempt
        return None


@dataclasses.dataclass
class Launch:
    """The events of one launch, grouped by task.

    Attributes:
      started_at: Wall time of the launch's first event.
      ended_at: Wall time of its last event.
      tasks: Task name to history, in order of first appearance.
      failures: Every FAILED event, oldest first.
    """

    started_at: float
    ended_at: float
    tasks: dict[str, TaskHistory]
    failures: list[Failure]


def split_launches(events: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Splits the lines of `events.jsonl` into one list per launch, oldest first."""
    launches: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    for event in events:
        task = event.get("task")
        starts_again = event.get("state") == "STARTING" and event.get("attempt") == 0 and task in seen
        if not launches or starts_again:
            launches.append([])
            seen = set()
        launches[-1].append(event)
        seen.add(task)
    return launches


def latest_launch(events: Iterable[dict[str, Any]]) -> Launch | None:
    """Returns the history of the newest launch in `events`, or None when there are no events."""
    launches = split_launches(events)
    return build_launch(launches[-1]) if launches else None


def build_launch(events: list[dict[str, Any]]) -> Launch:
    """Groups the events of one launch by task and attempt.

    Raises:
      ValueError: `events` is empty.
    """
    if not events:
        raise ValueError("build_launch received no events; expected the events of one launch")
    tasks: dict[str, TaskHistory] = {}
    failures: list[Failure] = []
    for event in events:
        task = str(event.get("task", "?"))
        history = tasks.setdefault(task, TaskHistory(task))
        _apply(history, event)
        if event.get("state") == "FAILED":
            cause = str(event.get("cause") or "")
            failures.append(Failure(
                ts=_float(event.get("ts")), task=task, attempt=_int(event.get("attempt")), cause=cause,
                exit_code=event.get("exit_code"), signal=event.get("signal"), chaos=cause.startswith("chaos")))
    return Launch(started_at=_float(events[0].get("ts")), ended_at=_float(events[-1].get("ts")),
                  tasks=tasks, failures=failures)


def restart_cause_label(cause: str) -> str:
    """Maps a restart cause to a short label with few distinct values, for metric labels.

    Only the text before the first ";" counts. `hang: heartbeat is 45 s old`
    becomes `hang` and `ps:0 lost` becomes `ps lost`. Exit names
    (`CLUSTER_UNAVAILABLE`), signals (`signal 9`) and chaos causes
    (`chaos SIGKILL`) are kept as they are.
    """
    cause = cause.split(";", 1)[0].strip()
    if not cause:
        return "unknown"
    if cause.startswith("hang"):
        return "hang"
    if _TASK_LOST.match(cause):
        return cause.split(":", 1)[0] + " lost"
    return cause[:60]


def _apply(history: TaskHistory, event: dict[str, Any]) -> None:
    state = str(event.get("state", ""))
    ts = _float(event.get("ts"))
    number = _int(event.get("attempt"))
    cause = str(event.get("cause") or "")

    attempt = history.find(number)
    if attempt is None or (state == "STARTING" and attempt.changes):
        attempt = Attempt(attempt=number, started_at=ts)
        history.attempts.append(attempt)
    previous = attempt.state if attempt.changes else None
    attempt.state = state
    attempt.changes.append((ts, state))
    attempt.last_cause = cause

    if state == "STANDBY":
        attempt.standby = True
    elif state == "RUNNING" and attempt.running_at is None:
        attempt.running_at = ts
    elif state == "BACKOFF":
        history.backoffs.append((ts, number))

    if state in _ATTEMPT_ENDS and attempt.ended_at is None:
        attempt.ended_at = ts
        attempt.end_state = state
        attempt.exit_code = event.get("exit_code")
        attempt.signal = event.get("signal")
        attempt.cause = cause

    replaced = (previous == "FAILED" and state in _REPLACED_AFTER_FAILURE) or \
        (previous == "RUNNING" and state == "SUPERSEDED")
    if replaced:
        label = restart_cause_label(attempt.cause if previous == "FAILED" else cause)
        history.restarts_by_cause[label] = history.restarts_by_cause.get(label, 0) + 1


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
