"""The restart policy: a pure function from a task's exit to a decision.

It never touches processes, so tests drive it with scripted exits.
"""

from __future__ import annotations

import dataclasses
import enum

from tfps_ha.exit_codes import ExitCode, describe
from tfps_ha.spec import RestartPolicySpec, TaskId


class Action(enum.Enum):
    """The supervisor's action after a task exits."""

    RESTART = "restart"
    GIVE_UP = "give_up"
    FINISH = "finish"


@dataclasses.dataclass(frozen=True)
class Decision:
    """The policy's decision for one exit.

    Attributes:
      action: Restart the task, give up on the job, or finish the job.
      delay_seconds: Backoff before the restart (0 unless RESTART).
      reason: One sentence for logs and the final error message.
    """

    action: Action
    delay_seconds: float
    reason: str


def backoff_seconds(policy: RestartPolicySpec, restarts_so_far: int) -> float:
    """Returns the delay before the next restart: doubling from the initial value, capped."""
    return min(policy.backoff_initial_seconds * (2 ** restarts_so_far), policy.backoff_max_seconds)


def decide(task: TaskId, exit_code: int, task_restarts: int, job_restarts: int,
           policy: RestartPolicySpec) -> Decision:
    """Decides what follows an exit of `task`.

    Args:
      task: The task that exited.
      exit_code: Its exit code; negative for a signal (Python's convention).
      task_restarts: Restarts of this task so far.
      job_restarts: Restarts of all tasks of its job so far.
      policy: The restart policy of the task's job.

    Returns:
      FINISH when the coordinator reached its target (exit 0), GIVE_UP for a
      permanent exit or a spent restart budget, else RESTART with a backoff.
    """
    cause = describe(exit_code)

    if task.job == "chief" and exit_code == ExitCode.OK:
        return Decision(Action.FINISH, 0.0, f"Task {task} reached the target step.")

    if exit_code > 0 and exit_code in policy.permanent_exit_codes:
        return Decision(
            Action.GIVE_UP, 0.0,
            f"Task {task} exited with {cause}, which is permanent for job {task.job}; "
            "a restart would fail the same way. See its log.")

    if task_restarts >= policy.max_restarts_per_task:
        return Decision(
            Action.GIVE_UP, 0.0,
            f"Task {task} exited with {cause} after {task_restarts + 1} attempts; its restart "
            f"budget of {policy.max_restarts_per_task} restarts is spent.")

    if job_restarts >= policy.max_restarts_per_job:
        return Decision(
            Action.GIVE_UP, 0.0,
            f"Task {task} exited with {cause}; job {task.job} has used its restart budget "
            f"of {policy.max_restarts_per_job} restarts.")

    delay = backoff_seconds(policy, task_restarts)
    return Decision(
        Action.RESTART, delay,
        f"Task {task} exited with {cause} on attempt {task_restarts + 1}/"
        f"{policy.max_restarts_per_task + 1}; restarting in {delay:.1f} s.")
