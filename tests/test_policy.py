"""The restart policy and the task state machine, driven by scripted exits."""

import pytest

from tfps_ha.exit_codes import ExitCode, is_retryable
from tfps_ha.spec import RestartPolicySpec, TaskId
from tfps_ha.supervisor.policy import Action, backoff_seconds, decide
from tfps_ha.supervisor.state import TaskState, check_transition

POLICY = RestartPolicySpec(max_restarts_per_task=3, max_restarts_per_job=5,
                           backoff_initial_seconds=1.0, backoff_max_seconds=5.0)
WORKER = TaskId("worker", 1)
CHIEF = TaskId("chief", 0)


def test_chief_exit_zero_finishes():
    decision = decide(CHIEF, 0, 0, 0, POLICY)
    assert decision.action == Action.FINISH


def test_worker_sigkill_restarts_with_backoff():
    decision = decide(WORKER, -9, 0, 0, POLICY)
    assert decision.action == Action.RESTART
    assert decision.delay_seconds == 1.0
    assert "worker:1" in decision.reason
    assert "signal 9" in decision.reason


def test_backoff_doubles_then_caps():
    delays = [backoff_seconds(POLICY, restarts) for restarts in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_permanent_exit_gives_up():
    decision = decide(WORKER, ExitCode.USAGE, 0, 0, POLICY)
    assert decision.action == Action.GIVE_UP
    assert "permanent" in decision.reason


def test_task_budget_spent_gives_up():
    decision = decide(WORKER, -9, 3, 3, POLICY)
    assert decision.action == Action.GIVE_UP
    assert "4 attempts" in decision.reason
    assert "budget of 3 restarts" in decision.reason


def test_job_budget_spent_gives_up():
    decision = decide(WORKER, -9, 1, 5, POLICY)
    assert decision.action == Action.GIVE_UP
    assert "job worker" in decision.reason


def test_retryable_coordinator_exit_restarts():
    for code in (ExitCode.CLUSTER_UNAVAILABLE, ExitCode.PREEMPTED, ExitCode.LEADERSHIP_LOST):
        decision = decide(CHIEF, code, 0, 0, POLICY)
        assert decision.action == Action.RESTART, code


def test_retryable_codes_in_tfjob_range():
    for code in ExitCode:
        assert is_retryable(code) == (code >= 128), code
    assert ExitCode.CLUSTER_UNAVAILABLE >= 128
    assert ExitCode.PREEMPTED >= 128


def test_state_machine_allows_restart_cycle():
    cycle = [TaskState.PENDING, TaskState.STARTING, TaskState.RUNNING, TaskState.FAILED,
             TaskState.BACKOFF, TaskState.STARTING, TaskState.RUNNING, TaskState.SUCCEEDED,
             TaskState.STOPPED]
    for old, new in zip(cycle, cycle[1:]):
        check_transition(old, new)


def test_state_machine_allows_standby_takeover():
    standby = [TaskState.PENDING, TaskState.STARTING, TaskState.STANDBY, TaskState.RUNNING,
               TaskState.SUPERSEDED, TaskState.STOPPED]
    for old, new in zip(standby, standby[1:]):
        check_transition(old, new)
    check_transition(TaskState.FAILED, TaskState.SUPERSEDED)
    check_transition(TaskState.STANDBY, TaskState.FAILED)


@pytest.mark.parametrize("old,new", [
    (TaskState.PENDING, TaskState.RUNNING),
    (TaskState.SUCCEEDED, TaskState.RUNNING),
    (TaskState.GAVE_UP, TaskState.STARTING),
    (TaskState.STOPPED, TaskState.STARTING),
    (TaskState.PENDING, TaskState.STANDBY),
    (TaskState.SUPERSEDED, TaskState.RUNNING),
    (TaskState.STANDBY, TaskState.SUCCEEDED),
])
def test_state_machine_rejects_jumps(old, new):
    with pytest.raises(ValueError, match="invalid task state transition"):
        check_transition(old, new)
