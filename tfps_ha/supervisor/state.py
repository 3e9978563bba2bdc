"""Task lifecycle states.

Transitions (every one is written to `events.jsonl`):

    PENDING  -> STARTING   the supervisor spawned attempt N
    STARTING -> RUNNING    a PS or worker port accepts connections; the
                           coordinator is RUNNING as soon as it is spawned
    STARTING -> FAILED     the process exited before it was up
    RUNNING  -> FAILED     the process exited with a non-zero code or a
                           signal, or a health check killed it
    RUNNING  -> SUCCEEDED  the coordinator exited 0 (target reached)
    FAILED   -> BACKOFF    the restart policy allows another attempt
    BACKOFF  -> STARTING   the backoff delay passed; attempt N+1 starts
    FAILED   -> GAVE_UP    the restart budget is spent, or the exit is permanent
    any      -> STOPPED    the supervisor stopped the task (end of the job)
"""

from __future__ import annotations

import enum


class TaskState(enum.Enum):
    """Lifecycle state of one task; see the module docstring for transitions."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    BACKOFF = "BACKOFF"
    SUCCEEDED = "SUCCEEDED"
    GAVE_UP = "GAVE_UP"
    STOPPED = "STOPPED"


ALLOWED = {
    TaskState.PENDING: {TaskState.STARTING, TaskState.STOPPED},
    TaskState.STARTING: {TaskState.RUNNING, TaskState.FAILED, TaskState.STOPPED, TaskState.SUCCEEDED},
    TaskState.RUNNING: {TaskState.FAILED, TaskState.SUCCEEDED, TaskState.STOPPED},
    TaskState.FAILED: {TaskState.BACKOFF, TaskState.GAVE_UP, TaskState.STOPPED},
    TaskState.BACKOFF: {TaskState.STARTING, TaskState.STOPPED},
    TaskState.SUCCEEDED: {TaskState.STOPPED},
    TaskState.GAVE_UP: {TaskState.STOPPED},
    TaskState.STOPPED: set(),
}


def check_transition(old: TaskState, new: TaskState) -> None:
    """Raises ValueError for a transition the lifecycle does not allow."""
    if new not in ALLOWED[old]:
        raise ValueError(f"invalid task state transition {old.name} -> {new.name}")
