"""The kit's process exit codes: one table for the CLI, the launcher and TFJob.

The Kubeflow TFJob `restartPolicy: ExitCode` restarts a replica whose exit code
is in 128..255 and treats 1..127 as permanent. So every exit after which a
restart can succeed is in 128..255, and every exit that a restart would only
repeat is below 128. The retryable codes sit at 200 and above to stay clear of
the 128+N codes that shells report for a process killed by signal N.

| code | name                 | retryable | meaning                                          |
|------|----------------------|-----------|--------------------------------------------------|
| 0    | OK                   | -         | training reached its target step                  |
| 1    | FAILED               | no        | a crash: a bug in the trainer or the kit         |
| 2    | USAGE                | no        | invalid spec, TF_CONFIG or flags                 |
| 3    | RESTART_BUDGET_SPENT | no        | a task used up its restart budget                 |
| 4    | STARTUP_TIMEOUT      | no        | a task never came up before the start-up deadline |
| 200  | CLUSTER_UNAVAILABLE  | yes       | a PS (or every worker) became unreachable         |
| 201  | PREEMPTED            | yes       | SIGTERM: a checkpoint was saved, then the exit    |
| 202  | LEADERSHIP_LOST      | yes       | a coordinator lost its lease and stopped          |
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of every tfps_ha process."""

    OK = 0
    FAILED = 1
    USAGE = 2
    RESTART_BUDGET_SPENT = 3
    STARTUP_TIMEOUT = 4
    CLUSTER_UNAVAILABLE = 200
    PREEMPTED = 201
    LEADERSHIP_LOST = 202


RETRYABLE = frozenset(code for code in ExitCode if code >= 128)


def is_retryable(code: int) -> bool:
    """Returns whether a restart can succeed after a process exited with `code`.

    A negative code (a Python subprocess killed by a signal) and the shell's
    128+N form are retryable, because a killed task did nothing wrong itself.
    """
    return code < 0 or code >= 128


def describe(code: int) -> str:
    """Returns a short name for an exit code, such as `PREEMPTED` or `signal 9`."""
    if code < 0:
        return f"signal {-code}"
    try:
        return ExitCode(code).name
    except ValueError:
        return f"exit code {code}"
