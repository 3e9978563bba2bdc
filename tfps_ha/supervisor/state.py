"""Task lifecycle states.

Transitions (every one is written to `events.jsonl`):

    PENDING  -> STARTING   the supervisor spawned attempt N
    STARTING -> RUNNING    a PS or worker port accepts connections; the
                           leading coordinator is RUNNING as soon as it is spawned
    STARTING -> STANDBY    a coordinator was spawned as the standby: it has
                           imported TensorFlow and waits for the leader lease
    STARTING -> FAILED     the process exited before it was up
    STANDBY  -> RUNNING    the standby took over the lease and leads
    STANDBY  -> FAILED     the standby exited while it waited
    RUNNING  -> FAILED     the process exited with a non-zero code or a
                           signal, or a health check killed it
    RUNNING  -> SUCCEEDED  the coordinator exited 0 (target reached)
    FAILED   -> BACKOFF    the restart policy allows another attempt
    BACKOFF  -> STARTING   the backoff delay passed; attempt N+1 starts
    FAILED   -> GAVE_UP    the restart budget is spent, or the exit is permanent
    FAILED   -> SUPERSEDED the leading coordinator died and the standby took
                           over, so this attempt is not restarted
    RUNNING  -> SUPERSEDED the leading coordinator lost the lease while its
                           process lives (stopped or hung); it gets a grace
                           period to exit, then is killed
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
    STANDBY = "STANDBY"
    SUPERSEDED = "SUPERSEDED"
    STOPPED = "STOPPED"


ALLOWED = {
    TaskState.PENDING: {TaskState.STARTING, TaskState.STOPPED},
    TaskState.STARTING: {TaskState.RUNNING, TaskState.STANDBY, TaskState.FAILED, TaskState.STOPPED,
                         TaskState.SUCCEEDED},
    TaskState.STANDBY: {TaskState.RUNNING, TaskState.FAILED, TaskState.STOPPED},
    TaskState.RUNNING: {TaskState.FAILED, TaskState.SUCCEEDED, TaskState.SUPERSEDED, TaskState.STOPPED},
    TaskState.FAILED: {TaskState.BACKOFF, TaskState.GAVE_UP, TaskState.SUPERSEDED, TaskState.STOPPED},
    TaskState.SUPERSEDED: {TaskState.STOPPED},
    TaskState.BACKOFF: {TaskState.STARTING, TaskState.STOPPED},
    TaskState.SUCCEEDED: {TaskState.STOPPED},
    TaskState.GAVE_UP: {TaskState.STOPPED},
    TaskState.STOPPED: set(),
}


def check_transition(old: TaskState, new: TaskState) -> None:
    """Raises ValueError for a transition the lifecycle does not allow."""
    if new not in ALLOWED[old]:
        raise ValueError(f"invalid task state transition {old.name} -> {new.name}")
