"""Parsing of `--chaos` plans."""

import signal

import pytest

from tfps_ha.errors import UsageError
from tfps_ha.spec import TaskId
from tfps_ha.supervisor.chaos import parse_chaos
from tfps_ha.tf_config import ResolvedCluster

CLUSTER = ResolvedCluster({
    "chief": ("127.0.0.1:1001",),
    "worker": ("127.0.0.1:1002", "127.0.0.1:1003"),
    "ps": ("127.0.0.1:1004",),
})


def test_explicit_plan_sorted_by_step():
    kills = parse_chaos("ps:0@step=120,worker:0@step=40,chief@step=200:term", CLUSTER, 600)
    assert [str(kill.task) for kill in kills] == ["worker:0", "ps:0", "chief:0"]
    assert [kill.step for kill in kills] == [40, 120, 200]
    assert kills[0].signal == signal.SIGKILL
    assert kills[2].signal == signal.SIGTERM


def test_random_plan_is_seeded():
    first = parse_chaos("random:seed=7,kills=5", CLUSTER, 600)
    second = parse_chaos("random:seed=7,kills=5", CLUSTER, 600)
    assert first == second
    assert len(first) == 5
    assert all(0 < kill.step < 600 for kill in first)
    assert all(kill.task.job in ("worker", "ps", "chief") for kill in first)


@pytest.mark.parametrize("plan,message", [
    ("worker:5@step=10", "not part of the training cluster"),
    ("worker:0@10", "expected TASK@step=N"),
    ("worker:0@step=900", "not below the target"),
    ("random:seed=x", "expected random:seed=S,kills=K"),
    ("", "empty"),
])
def test_invalid_plans_rejected(plan, message):
    with pytest.raises(UsageError, match=message):
        parse_chaos(plan, CLUSTER, 600)


def test_task_id_parse():
    assert TaskId.parse("chief") == TaskId("chief", 0)
    assert str(TaskId.parse("worker:1")) == "worker:1"
    with pytest.raises(UsageError, match="expected JOB:INDEX"):
        TaskId.parse("ps_hosts:0")


def test_stop_plan_pauses_chief():
    kills = parse_chaos("chief@step=200:stop", CLUSTER, 600)

    assert kills[0].task == TaskId("chief", 0)
    assert kills[0].signal == signal.SIGSTOP


def test_stop_plan_rejects_worker():
    with pytest.raises(UsageError, match="':stop' applies only to chief"):
        parse_chaos("worker:0@step=40:stop", CLUSTER, 600)
