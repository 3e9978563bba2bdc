"""The coordinator: runs the user's trainer under ParameterServerStrategy.

Failure contract (what the supervisor relies on):
  * A worker that dies is not an error here: `ClusterCoordinator` re-runs its
    scheduled functions on other workers (at least once) and waits for it to
    come back at the same address. The kit's step gate keeps the applied step
    count exact through those re-runs.
  * A PS that dies makes the coordinator exit with
    `ExitCode.CLUSTER_UNAVAILABLE` (200). Variables on a PS are lost with it, so
    the only recovery is a new coordinator that restores the latest checkpoint,
    once the PS is back at its address.
  * SIGTERM stops scheduling, drains scheduled steps, saves a checkpoint and
    exits with `ExitCode.PREEMPTED` (201).
"""
