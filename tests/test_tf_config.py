"""Tests of TF_CONFIG parsing, rendering and port assignment (tfps_ha.tf_config)."""

from __future__ import annotations

import json

import pytest

from tfps_ha.errors import SpecError
from tfps_ha.spec import TaskId, parse_spec, split_address
from tfps_ha.tf_config import ResolvedCluster, parse_tf_config, render_tf_config, resolve_cluster

CLUSTER = {
    "chief": ["localhost:2221"],
    "worker": ["localhost:2222", "localhost:2223"],
    "ps": ["localhost:2224"],
}


def tf_config(cluster: object = None, task: object = None, **extra: object) -> str:
    """Returns TF_CONFIG text, with CLUSTER and task worker:1 unless given."""
    document = {
        "cluster": CLUSTER if cluster is None else cluster,
        "task": {"type": "worker", "index": 1} if task is None else task,
        **extra,
    }
    return json.dumps(document)


# -------------------------------------------------------------------- parsing


def test_parse_list_form():
    config = parse_tf_config(tf_config())

    assert config.task == TaskId("worker", 1)
    assert dict(config.cluster.jobs) == {job: tuple(addresses) for job, addresses in CLUSTER.items()}
    assert config.cluster.training_cluster() == CLUSTER


def test_parse_ignores_environment_keys():
    config = parse_tf_config(tf_config(environment="cloud", rpc_layer="grpc"))

    assert config.task == TaskId("worker", 1)


def test_parse_dict_form_normalised():
    cluster = {**CLUSTER, "worker": {"1": "localhost:2223", "0": "localhost:2222"}}

    config = parse_tf_config(tf_config(cluster))

    assert config.cluster.jobs["worker"] == ("localhost:2222", "localhost:2223")
    assert config.cluster.training_cluster()["worker"] == ["localhost:2222", "localhost:2223"]


def test_parse_index_as_string():
    config = parse_tf_config(tf_config(task={"type": "worker", "index": "1"}))

    assert config.task == TaskId("worker", 1)


def test_parse_index_defaults_to_zero():
    config = parse_tf_config(tf_config(task={"type": "ps"}))

    assert config.task == TaskId("ps", 0)


def test_parse_cluster_without_chief():
    cluster = {"worker": ["localhost:2222"], "ps": ["localhost:2224"]}

    config = parse_tf_config(tf_config(cluster, {"type": "ps", "index": 0}))

    assert config.cluster.training_cluster() == cluster


def test_parse_evaluator_outside_cluster():
    config = parse_tf_config(tf_config(task={"type": "evaluator", "index": 0}))

    assert config.task == TaskId("evaluator", 0)
    assert "evaluator" not in config.cluster.training_cluster()


def test_parse_evaluator_in_cluster():
    cluster = {**CLUSTER, "evaluator": ["localhost:2225"]}

    config = parse_tf_config(tf_config(cluster, {"type": "evaluator", "index": 0}))

    assert config.cluster.jobs["evaluator"] == ("localhost:2225",)
    assert config.cluster.training_cluster() == CLUSTER


# Each case: TF_CONFIG text, the error's path and its whole message.
INVALID = [
    pytest.param(
        None, "",
        "TF_CONFIG: received nothing (the key is missing); "
        "expected a JSON object with 'cluster' and 'task' (the variable is unset or empty)",
        id="unset"),
    pytest.param(
        "", "",
        "TF_CONFIG: received nothing (the key is missing); "
        "expected a JSON object with 'cluster' and 'task' (the variable is unset or empty)",
        id="empty"),
    pytest.param(
        "  \n", "",
        "TF_CONFIG: received nothing (the key is missing); "
        "expected a JSON object with 'cluster' and 'task' (the variable is unset or empty)",
        id="blank"),
    pytest.param(
        '{"cluster": ', "",
        "TF_CONFIG: received '{\"cluster\": '; expected valid JSON (Expecting value)",
        id="malformed_json"),
    pytest.param(
        "{'cluster': {}}", "",
        "TF_CONFIG: received \"{'cluster': {}}\"; "
        "expected valid JSON (Expecting property name enclosed in double quotes)",
        id="single_quotes"),
    pytest.param(
        "[" * 100000, "",
        "TF_CONFIG: received '" + "[" * 77 + "...'; expected valid JSON (nested too deeply)",
        id="deep_nesting"),
    pytest.param(
        "[]", "",
        "TF_CONFIG: received []; expected a JSON object with 'cluster' and 'task'",
        id="json_list"),
    pytest.param(
        json.dumps({"task": {"type": "worker", "index": 0}}), "cluster",
        "TF_CONFIG: cluster: received nothing (the key is missing); expected a mapping of job names to addresses",
        id="cluster_missing"),
    pytest.param(
        tf_config(["localhost:2222"]), "cluster",
        "TF_CONFIG: cluster: received ['localhost:2222']; expected a mapping of job names to addresses",
        id="cluster_list"),
    pytest.param(
        tf_config({**CLUSTER, "ps_hosts": ["localhost:2225"]}), "cluster",
        "TF_CONFIG: cluster: received 'ps_hosts'; "
        "expected only the jobs chief, worker, ps, evaluator; unknown jobs ps_hosts",
        id="unknown_job"),
    pytest.param(
        tf_config({**CLUSTER, "a\nb": []}), "cluster",
        "TF_CONFIG: cluster: received \"'a\\\\nb'\"; "
        "expected only the jobs chief, worker, ps, evaluator; unknown jobs 'a\\nb'",
        id="unknown_job_with_newline"),
    pytest.param(
        tf_config({**CLUSTER, "worker": "localhost:2222"}), "cluster.worker",
        "TF_CONFIG: cluster.worker: received 'localhost:2222'; "
        "expected a list of 'host:port' or a mapping of index to 'host:port'",
        id="job_string"),
    pytest.param(
        tf_config({**CLUSTER, "worker": {"0": "localhost:2222", "a": "localhost:2223"}}), "cluster.worker['a']",
        "TF_CONFIG: cluster.worker['a']: received 'a'; expected an integer index such as \"0\"",
        id="index_key_letter"),
    pytest.param(
        tf_config({**CLUSTER, "worker": {"0": "localhost:2222", "01": "localhost:2223"}}), "cluster.worker['01']",
        "TF_CONFIG: cluster.worker['01']: received '01'; expected an integer index such as \"0\"",
        id="index_key_leading_zero"),
    pytest.param(
        tf_config({**CLUSTER, "worker": {"0": "localhost:2222", "-1": "localhost:2223"}}), "cluster.worker['-1']",
        "TF_CONFIG: cluster.worker['-1']: received '-1'; expected an integer index such as \"0\"",
        id="index_key_negative"),
    pytest.param(
        tf_config({**CLUSTER, "worker": {"0": "localhost:2222", "\u00b2": "localhost:2223"}}),
        "cluster.worker['\u00b2']",
        "TF_CONFIG: cluster.worker['\u00b2']: received '\u00b2'; expected an integer index such as \"0\"",
        id="index_key_superscript_digit"),
    pytest.param(
        tf_config({**CLUSTER, "worker": {"0": "localhost:2222", "2": "localhost:2223"}}, {"type": "chief"}),
        "cluster.worker",
        "TF_CONFIG: cluster.worker: received [0, 2]; expected indices 0..1 with no gaps, one per task, "
        "because the chief (the coordinator) needs every task's address; only a PS or worker task "
        "can run with a sparse job",
        id="index_gap_chief"),
    pytest.param(
        tf_config({**CLUSTER, "worker": ["localhost:2222", "localhost:0"]}), "cluster.worker[1]",
        "TF_CONFIG: cluster.worker[1]: received 'localhost:0'; expected a port in 1..65535",
        id="port_zero"),
    pytest.param(
        tf_config({**CLUSTER, "worker": ["localhost"]}), "cluster.worker[0]",
        "TF_CONFIG: cluster.worker[0]: received 'localhost'; expected 'host:port', such as '127.0.0.1:2222'",
        id="address_no_port"),
    pytest.param(
        tf_config({**CLUSTER, "worker": [2222]}), "cluster.worker[0]",
        "TF_CONFIG: cluster.worker[0]: received 2222; expected a 'host:port' string",
        id="address_int"),
    pytest.param(
        tf_config({"worker": ["localhost:2222"], "ps": ["127.0.0.1:2222"]}), "cluster.ps[0]",
        "TF_CONFIG: cluster.ps[0]: received '127.0.0.1:2222'; "
        "expected an address no other task uses; worker:0 and ps:0 both use it",
        id="duplicate_address"),
    pytest.param(
        tf_config({"chief": ["localhost:2221"], "worker": ["localhost:2222"]}), "cluster",
        "TF_CONFIG: cluster: received ['chief', 'worker']; "
        "expected at least one 'worker' and one 'ps' task for ParameterServerStrategy",
        id="no_ps"),
    pytest.param(
        tf_config({**CLUSTER, "worker": []}), "cluster",
        "TF_CONFIG: cluster: received ['chief', 'ps']; "
        "expected at least one 'worker' and one 'ps' task for ParameterServerStrategy",
        id="no_workers"),
    pytest.param(
        tf_config({**CLUSTER, "chief": ["localhost:2220", "localhost:2221"]}), "cluster.chief",
        "TF_CONFIG: cluster.chief: received ['localhost:2220', 'localhost:2221']; expected at most 1 chief",
        id="two_chiefs"),
    pytest.param(
        json.dumps({"cluster": CLUSTER}), "task",
        "TF_CONFIG: task: received nothing (the key is missing); expected a mapping with 'type' and 'index'",
        id="task_missing"),
    pytest.param(
        tf_config(task="worker:1"), "task",
        "TF_CONFIG: task: received 'worker:1'; expected a mapping with 'type' and 'index'",
        id="task_string"),
    pytest.param(
        tf_config(task={"index": 0}), "task.type",
        "TF_CONFIG: task.type: received nothing (the key is missing); "
        "expected one of the cluster's jobs (chief, ps, worker)",
        id="type_missing"),
    pytest.param(
        tf_config(task={"type": "bogus", "index": 0}), "task.type",
        "TF_CONFIG: task.type: received 'bogus'; expected one of the cluster's jobs (chief, ps, worker)",
        id="type_unknown"),
    pytest.param(
        tf_config(task={"type": ["worker"], "index": 0}), "task.type",
        "TF_CONFIG: task.type: received ['worker']; expected one of the cluster's jobs (chief, ps, worker)",
        id="type_list"),
    pytest.param(
        tf_config({"worker": ["localhost:2222"], "ps": ["localhost:2224"]}, {"type": "chief", "index": 0}),
        "task.type",
        "TF_CONFIG: task.type: received 'chief'; expected one of the cluster's jobs (ps, worker)",
        id="type_not_in_cluster"),
    pytest.param(
        tf_config(task={"type": "worker", "index": 2}), "task.index",
        "TF_CONFIG: task.index: received 2; expected an index of job 'worker' in 0..1",
        id="index_past_end"),
    pytest.param(
        tf_config(task={"type": "evaluator", "index": 1}), "task.index",
        "TF_CONFIG: task.index: received 1; expected an index of job 'evaluator' in 0..0",
        id="evaluator_index_past_end"),
    pytest.param(
        tf_config(task={"type": "worker", "index": -1}), "task.index",
        "TF_CONFIG: task.index: received -1; expected an index of job 'worker' in 0..1",
        id="index_negative"),
    pytest.param(
        tf_config(task={"type": "worker", "index": True}), "task.index",
        "TF_CONFIG: task.index: received True; expected an index of job 'worker' in 0..1",
        id="index_bool"),
    pytest.param(
        tf_config(task={"type": "worker", "index": 1.0}), "task.index",
        "TF_CONFIG: task.index: received 1.0; expected an index of job 'worker' in 0..1",
        id="index_float"),
    pytest.param(
        tf_config(task={"type": "worker", "index": "\u00b2"}), "task.index",
        "TF_CONFIG: task.index: received '\u00b2'; expected an index of job 'worker' in 0..1",
        id="index_superscript_digit"),
]


@pytest.mark.parametrize("text, path, message", INVALID)
def test_parse_invalid(text, path, message):
    with pytest.raises(SpecError) as info:
        parse_tf_config(text)

    assert info.value.path == path
    assert str(info.value) == message


def test_parse_index_key_5000_digits():
    cluster = {**CLUSTER, "worker": {"0": "localhost:2222", "1" * 5000: "localhost:2223"}}

    with pytest.raises(SpecError, match=r"^TF_CONFIG: cluster\.worker\['1111.*expected an integer index"):
        parse_tf_config(tf_config(cluster))


# ------------------------------------------------------------------ rendering

RESOLVED = ResolvedCluster({
    "chief": ("localhost:2221",),
    "worker": ("localhost:2222", "localhost:2223"),
    "ps": ("localhost:2224",),
    "evaluator": ("localhost:2225",),
})


def test_render_worker():
    rendered = render_tf_config(RESOLVED, TaskId("worker", 1))

    assert rendered == {"cluster": CLUSTER, "task": {"type": "worker", "index": 1}}


def test_render_evaluator_outside_cluster():
    rendered = render_tf_config(RESOLVED, TaskId("evaluator", 0))

    assert rendered["cluster"] == CLUSTER
    assert rendered["task"] == {"type": "evaluator", "index": 0}


@pytest.mark.parametrize("task", RESOLVED.tasks(), ids=str)
def test_render_parse_round_trip(task):
    config = parse_tf_config(json.dumps(render_tf_config(RESOLVED, task)))

    assert config.task == task
    assert config.cluster.training_cluster() == CLUSTER


@pytest.mark.parametrize("task", [TaskId("worker", 2), TaskId("worker", -1), TaskId("chief", 1)], ids=str)
def test_render_task_not_in_cluster(task):
    with pytest.raises(SpecError) as info:
        render_tf_config(RESOLVED, task)

    assert str(info.value) == (
        f"TF_CONFIG: task: received '{task}'; expected a task of the cluster "
        "(ps:0, worker:0, worker:1, chief:0, evaluator:0)"
    )


# ------------------------------------------------------------ resolved cluster


def test_resolved_cluster_tasks_order():
    assert [str(task) for task in RESOLVED.tasks()] == [
        "ps:0", "worker:0", "worker:1", "chief:0", "evaluator:0",
    ]


def test_resolved_cluster_counts():
    assert RESOLVED.num_workers() == 2
    assert RESOLVED.num_ps() == 1
    assert RESOLVED.address(TaskId("worker", 1)) == "localhost:2223"


def test_resolve_cluster_counted_jobs():
    spec = parse_spec(
        "cluster: {chief: 1, worker: 3, ps: ['127.0.0.1:2224']}\ntrainer: {module: m}\n",
        source="x.yaml",
    )

    resolved = resolve_cluster(spec)

    assert {job: len(addresses) for job, addresses in resolved.jobs.items()} == {"chief": 1, "worker": 3, "ps": 1}
    assert resolved.jobs["ps"] == ("127.0.0.1:2224",)
    counted = resolved.jobs["chief"] + resolved.jobs["worker"]
    assert {split_address(address)[0] for address in counted} == {"127.0.0.1"}
    assert len({split_address(address)[1] for address in counted}) == 4


def test_resolve_cluster_ipv6_host():
    spec = parse_spec("host: '::1'\ncluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\n")

    resolved = resolve_cluster(spec)

    assert resolved.jobs["worker"][0].startswith("[::1]:")
    assert split_address(resolved.jobs["worker"][0])[0] == "::1"
