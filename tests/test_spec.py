"""Tests of the cluster spec parser (tfps_ha.spec)."""

from __future__ import annotations

import copy
import os
import pathlib

import pytest
import yaml

from tfps_ha.errors import SpecError, UsageError
from tfps_ha.spec import (
    DEFAULT_RESTART,
    MonitoringSpec,
    RestartPolicySpec,
    TaskId,
    TrainingSpec,
    canonical_host,
    is_loopback,
    load_spec,
    parse_spec,
)

SPECS = pathlib.Path(__file__).resolve().parent.parent / "cluster_specs"

BASE = {
    "name": "t",
    "cluster": {"chief": 1, "worker": 2, "ps": 1},
    "trainer": {"module": "tfps_ha.examples.ctr", "runner": "custom_loop"},
    "training": {"steps": 100, "steps_per_execution": 10, "checkpoint_every_steps": 50},
}

_MISSING = object()


def spec_document(**changes: object) -> dict:
    """Returns a copy of BASE with changes applied.

    A key names a path with `__` between levels (`training__steps`), and the
    value `_MISSING` deletes that key.
    """
    document = copy.deepcopy(BASE)
    for key_path, value in changes.items():
        *parents, last = key_path.split("__")
        mapping = document
        for key in parents:
            mapping = mapping.setdefault(key, {})
        if value is _MISSING:
            del mapping[last]
        else:
            mapping[last] = value
    return document


def parse(document: object) -> object:
    return parse_spec(yaml.safe_dump(document, sort_keys=False), source="x.yaml")


# ---------------------------------------------------------------- valid specs


def test_load_spec_local():
    spec = load_spec(str(SPECS / "local.yaml"))

    assert spec.name == "digits-local"
    assert spec.source == "local.yaml"
    assert dict(spec.jobs) == {"chief": 1, "worker": 2, "ps": 1}
    assert spec.trainer_module == "tfps_ha.examples.digits"
    assert spec.runner == "fit"
    assert spec.training == TrainingSpec(600, 10, 50, 100, 3)
    assert spec.exposed_hosts() == []


def test_load_spec_4w_2ps():
    spec = load_spec(str(SPECS / "local_4w_2ps.yaml"))

    assert spec.name == "ctr-4w-2ps"
    assert dict(spec.jobs) == {"chief": 1, "worker": 4, "ps": 2}
    assert spec.runner == "custom_loop"
    assert spec.training == TrainingSpec(400, 10, 100, None, 3)


def test_summary_local():
    spec = load_spec(str(SPECS / "local.yaml"))

    assert spec.summary() == (
        "local.yaml: valid cluster spec 'digits-local': 1 chief, 2 worker, 1 ps; "
        "trainer tfps_ha.examples.digits (fit); 600 steps, checkpoint every 50"
    )


def test_parse_spec_defaults():
    spec = parse_spec(
        "cluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\n",
        source="x.yaml", default_name="x",
    )

    assert spec.name == "x"
    assert spec.host == "127.0.0.1"
    assert spec.runner is None
    assert spec.trainer_args == {}
    assert spec.training == TrainingSpec(1000, 10, 100, None, 3)
    assert spec.workdir == os.path.join("/tmp", "tfps_ha", "x")
    assert spec.startup_timeout_seconds == 60.0
    assert dict(spec.restart) == DEFAULT_RESTART
    assert spec.monitoring == MonitoringSpec()


def test_load_spec_name_from_file(tmp_path):
    path = tmp_path / "my-job.yaml"
    path.write_text("cluster: {chief: 1, worker: 1, ps: 1}\ntrainer: {module: m}\n")

    assert load_spec(str(path)).name == "my-job"


def test_parse_spec_listed_addresses():
    spec = parse(spec_document(cluster={
        "chief": ["127.0.0.1:1"],
        "worker": ["localhost:2222", "localhost:65535"],
        "ps": ["[::1]:2224"],
        "evaluator": ["localhost:2225"],
    }))

    assert dict(spec.jobs) == {
        "chief": ("127.0.0.1:1",),
        "worker": ("localhost:2222", "localhost:65535"),
        "ps": ("[::1]:2224",),
        "evaluator": ("localhost:2225",),
    }
    assert spec.task_count("worker") == 2
    assert spec.task_count("evaluator") == 1


def test_parse_spec_same_port_other_hosts():
    spec = parse(spec_document(cluster={
        "chief": 1, "worker": ["10.0.0.5:2222"], "ps": ["10.0.0.6:2222"],
    }))

    assert spec.task_count("ps") == 1


def test_parse_spec_fit_runner():
    spec = parse(spec_document(
        trainer__runner="fit", training__steps=100, training__steps_per_epoch=50))

    assert spec.training.steps_per_epoch == 50


def test_parse_spec_restart_override():
    spec = parse(spec_document(restart={"ps": {"max_restarts_per_task": 2, "permanent_exit_codes": [1, 2, 3]}}))

    assert spec.restart["ps"] == RestartPolicySpec(2, 10, 0.2, 15.0, (1, 2, 3))
    assert spec.restart["worker"] == DEFAULT_RESTART["worker"]


def test_parse_spec_monitoring_override():
    spec = parse(spec_document(monitoring={"lease_seconds": 2, "standby_coordinator": False}))

    assert spec.monitoring.lease_seconds == 2.0
    assert spec.monitoring.standby_coordinator is False
    assert spec.monitoring.heartbeat_timeout_seconds == MonitoringSpec().heartbeat_timeout_seconds


def test_parse_spec_workdir_expands_home():
    spec = parse(spec_document(workdir="~/runs/t"))

    assert spec.workdir == os.path.expanduser("~/runs/t")


# ------------------------------------------------------------ invalid values

# Each case: the changes to BASE, the error's path and its whole message.
INVALID = [
    # Addresses.
    pytest.param(
        {"cluster__worker": ["localhost:2222", "localhost:0"]}, "cluster.worker[1]",
        "x.yaml: cluster.worker[1]: received 'localhost:0'; expected a port in 1..65535",
        id="port_zero"),
    pytest.param(
        {"cluster__worker": ["localhost:65536"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'localhost:65536'; expected a port in 1..65535",
        id="port_65536"),
    pytest.param(
        {"cluster__worker": ["localhost:http"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'localhost:http'; expected a port in 1..65535",
        id="port_name"),
    pytest.param(
        {"cluster__worker": ["localhost:\u00b2"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'localhost:\u00b2'; expected a port in 1..65535",
        id="port_superscript_digit"),
    pytest.param(
        {"cluster__worker": ["localhost:" + "9" * 5000]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'localhost:" + "9" * 106
        + "...; expected a port in 1..65535",
        id="port_5000_digits"),
    pytest.param(
        {"cluster__worker": ["localhost"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'localhost'; expected 'host:port', such as '127.0.0.1:2222'",
        id="address_no_port"),
    pytest.param(
        {"cluster__worker": [":2222"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received ':2222'; expected 'host:port', such as '127.0.0.1:2222'",
        id="address_empty_host"),
    pytest.param(
        {"cluster__worker": ["::1:2222"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received '::1:2222'; expected 'host:port', such as '127.0.0.1:2222'",
        id="address_ipv6_no_brackets"),
    pytest.param(
        {"cluster__worker": ["bad host!:2222"]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 'bad host!:2222'; "
        "expected 'host:port' with a valid host name or IP address",
        id="address_junk_host"),
    pytest.param(
        {"cluster__worker": [2222]}, "cluster.worker[0]",
        "x.yaml: cluster.worker[0]: received 2222; expected a 'host:port' string",
        id="address_int"),
    pytest.param(
        {"cluster__worker": ["localhost:2222"], "cluster__ps": ["127.0.0.1:2222"]}, "cluster.ps[0]",
        "x.yaml: cluster.ps[0]: received '127.0.0.1:2222'; "
        "expected an address no other task uses; worker:0 and ps:0 both use it",
        id="duplicate_localhost_127"),
    pytest.param(
        {"cluster__worker": ["127.0.0.1:2222", "LOCALHOST:2222"]}, "cluster.worker[1]",
        "x.yaml: cluster.worker[1]: received 'LOCALHOST:2222'; "
        "expected an address no other task uses; worker:0 and worker:1 both use it",
        id="duplicate_upper_case"),
    pytest.param(
        {"cluster__worker": ["[::1]:2222"], "cluster__ps": ["localhost:2222"]}, "cluster.ps[0]",
        "x.yaml: cluster.ps[0]: received 'localhost:2222'; "
        "expected an address no other task uses; worker:0 and ps:0 both use it",
        id="duplicate_ipv6_loopback"),
    pytest.param(
        {"cluster__worker": ["10.0.0.5:2222"], "cluster__ps": ["10.0.0.5:02222"]}, "cluster.ps[0]",
        "x.yaml: cluster.ps[0]: received '10.0.0.5:02222'; "
        "expected an address no other task uses; worker:0 and ps:0 both use it",
        id="duplicate_leading_zero_port"),
    # Jobs.
    pytest.param(
        {"cluster": {"chief": 1, "ps_hosts": ["localhost:2222"], "worker_hosts": ["localhost:2223"]}},
        "cluster",
        "x.yaml: cluster: received 'ps_hosts, worker_hosts'; expected only the jobs chief, worker, "
        "ps, evaluator; unknown jobs ps_hosts, worker_hosts (rename ps_hosts -> ps, worker_hosts -> worker)",
        id="unknown_jobs_with_hints"),
    pytest.param(
        {"cluster__gpu": 1}, "cluster",
        "x.yaml: cluster: received 'gpu'; expected only the jobs chief, worker, ps, evaluator; unknown jobs gpu",
        id="unknown_job"),
    pytest.param(
        {"cluster__chief": _MISSING}, "cluster.chief",
        "x.yaml: cluster.chief: received nothing (the key is missing); "
        "expected at least 1 chief task for ParameterServerStrategy",
        id="chief_missing"),
    pytest.param(
        {"cluster__chief": 2}, "cluster.chief",
        "x.yaml: cluster.chief: received 2; expected exactly 1 chief (the coordinator)",
        id="chief_two"),
    pytest.param(
        {"cluster__worker": 0}, "cluster.worker",
        "x.yaml: cluster.worker: received 0; expected at least 1 worker task for ParameterServerStrategy",
        id="worker_zero"),
    pytest.param(
        {"cluster__ps": []}, "cluster.ps",
        "x.yaml: cluster.ps: received []; expected at least 1 ps task for ParameterServerStrategy",
        id="ps_empty_list"),
    pytest.param(
        {"cluster__evaluator": 2}, "cluster.evaluator",
        "x.yaml: cluster.evaluator: received 2; expected 0 or 1 evaluator",
        id="evaluator_two"),
    pytest.param(
        {"cluster__worker": True}, "cluster.worker",
        "x.yaml: cluster.worker: received True; expected a task count or a list of host:port",
        id="worker_bool"),
    pytest.param(
        {"cluster__worker": "2"}, "cluster.worker",
        "x.yaml: cluster.worker: received '2'; expected a task count or a list of host:port",
        id="worker_string"),
    pytest.param(
        {"cluster__worker": 2000}, "cluster.worker",
        "x.yaml: cluster.worker: received 2000; expected a task count in 0..1024",
        id="worker_2000"),
    pytest.param(
        {"cluster": _MISSING}, "cluster",
        "x.yaml: cluster: received nothing (the key is missing); expected a mapping of jobs (chief, worker, ps)",
        id="cluster_missing"),
    pytest.param(
        {"cluster": ["localhost:2222"]}, "cluster",
        "x.yaml: cluster: received ['localhost:2222']; expected a mapping of jobs (chief, worker, ps)",
        id="cluster_list"),
    # Trainer.
    pytest.param(
        {"trainer": _MISSING}, "trainer",
        "x.yaml: trainer: received nothing (the key is missing); expected a mapping with 'module'",
        id="trainer_missing"),
    pytest.param(
        {"trainer": "tfps_ha.examples.ctr"}, "trainer",
        "x.yaml: trainer: received 'tfps_ha.examples.ctr'; expected a mapping with 'module'",
        id="trainer_string"),
    pytest.param(
        {"trainer__module": _MISSING}, "trainer.module",
        "x.yaml: trainer.module: received nothing (the key is missing); expected a Python module path",
        id="module_missing"),
    pytest.param(
        {"trainer__module": "not a module"}, "trainer.module",
        "x.yaml: trainer.module: received 'not a module'; "
        "expected a Python module path such as tfps_ha.examples.digits",
        id="module_spaces"),
    pytest.param(
        {"trainer__module": "tfps_ha.examples.ctr\n"}, "trainer.module",
        "x.yaml: trainer.module: received 'tfps_ha.examples.ctr\\n'; "
        "expected a Python module path such as tfps_ha.examples.digits",
        id="module_trailing_newline"),
    pytest.param(
        {"trainer__runner": "keras"}, "trainer.runner",
        "x.yaml: trainer.runner: received 'keras'; expected one of fit, custom_loop",
        id="runner_unknown"),
    pytest.param(
        {"trainer__args": [1]}, "trainer.args",
        "x.yaml: trainer.args: received [1]; expected a mapping of option names to values",
        id="args_list"),
    pytest.param(
        {"trainer__entry": "main"}, "trainer.entry",
        "x.yaml: trainer.entry: received 'entry'; expected one of the keys module, runner, args",
        id="trainer_unknown_key"),
    # Top level.
    pytest.param(
        {"name": "bad name"}, "name",
        "x.yaml: name: received 'bad name'; expected 1-63 letters, digits, '.', '_' or '-'",
        id="name_space"),
    pytest.param(
        {"name": "t\n"}, "name",
        "x.yaml: name: received 't\\n'; expected 1-63 letters, digits, '.', '_' or '-'",
        id="name_trailing_newline"),
    pytest.param(
        {"host": "bad host"}, "host",
        "x.yaml: host: received 'bad host'; expected a host name or IP address",
        id="host_space"),
    pytest.param(
        {"host": "localhost\n"}, "host",
        "x.yaml: host: received 'localhost\\n'; expected a host name or IP address",
        id="host_trailing_newline"),
    pytest.param(
        {"workdir": " "}, "workdir",
        "x.yaml: workdir: received ' '; expected a folder path",
        id="workdir_blank"),
    pytest.param(
        {"workdir": 5}, "workdir",
        "x.yaml: workdir: received 5; expected a folder path",
        id="workdir_int"),
    pytest.param(
        {"startup_timeout_seconds": 0}, "startup_timeout_seconds",
        "x.yaml: startup_timeout_seconds: received 0; expected a number of seconds in 1..3600",
        id="startup_timeout_zero"),
    pytest.param(
        {"cluster_spec": 1}, "cluster_spec",
        "x.yaml: cluster_spec: received 'cluster_spec'; expected one of the keys name, host, cluster, "
        "trainer, training, workdir, startup_timeout_seconds, restart, monitoring, kubernetes, strategy",
        id="unknown_top_key"),
    pytest.param(
        {"a\nb": 1}, "'a\\nb'",
        "x.yaml: 'a\\nb': received 'a\\nb'; expected one of the keys name, host, cluster, "
        "trainer, training, workdir, startup_timeout_seconds, restart, monitoring, kubernetes, strategy",
        id="unknown_key_with_newline"),
    # Training.
    pytest.param(
        {"training": [100]}, "training",
        "x.yaml: training: received [100]; expected a mapping",
        id="training_list"),
    pytest.param(
        {"training__epochs": 3}, "training.epochs",
        "x.yaml: training.epochs: received 'epochs'; expected one of the keys steps, "
        "steps_per_execution, checkpoint_every_steps, steps_per_epoch, keep_checkpoints, async_checkpoint",
        id="training_unknown_key"),
    pytest.param(
        {"training__checkpoint_every_steps": 55}, "training.checkpoint_every_steps",
        "x.yaml: training.checkpoint_every_steps: received 55; expected a multiple of "
        "training.steps_per_execution (10), so that checkpoints fall between scheduled functions",
        id="checkpoint_not_multiple"),
    pytest.param(
        {"trainer__runner": "fit"}, "training.steps_per_epoch",
        "x.yaml: training.steps_per_epoch: received nothing (the key is missing); expected a step "
        "count, because Keras fit under ParameterServerStrategy needs steps_per_epoch",
        id="fit_without_steps_per_epoch"),
    pytest.param(
        {"trainer__runner": "fit", "training__steps": 150, "training__steps_per_epoch": 100},
        "training.steps",
        "x.yaml: training.steps: received 150; expected a multiple of training.steps_per_epoch (100), "
        "because fit runs whole epochs",
        id="steps_not_whole_epochs"),
    pytest.param(
        {"training__steps_per_epoch": 25}, "training.steps_per_epoch",
        "x.yaml: training.steps_per_epoch: received 25; expected a multiple of "
        "training.steps_per_execution (10)",
        id="epoch_not_multiple_of_execution"),
    # Restart.
    pytest.param(
        {"restart": [1]}, "restart",
        "x.yaml: restart: received [1]; expected a mapping of job names to restart policies",
        id="restart_list"),
    pytest.param(
        {"restart": {"ps_hosts": {}}}, "restart.ps_hosts",
        "x.yaml: restart.ps_hosts: received 'ps_hosts'; expected one of the keys chief, worker, ps, evaluator",
        id="restart_unknown_job"),
    pytest.param(
        {"restart": {"ps": 3}}, "restart.ps",
        "x.yaml: restart.ps: received 3; expected a mapping",
        id="restart_policy_int"),
    pytest.param(
        {"restart": {"ps": {"retries": 3}}}, "restart.ps.retries",
        "x.yaml: restart.ps.retries: received 'retries'; expected one of the keys max_restarts_per_task, "
        "max_restarts_per_job, backoff_initial_seconds, backoff_max_seconds, permanent_exit_codes",
        id="restart_unknown_field"),
    pytest.param(
        {"restart": {"ps": {"permanent_exit_codes": [0]}}}, "restart.ps.permanent_exit_codes",
        "x.yaml: restart.ps.permanent_exit_codes: received [0]; expected a list of exit codes in 1..255",
        id="exit_code_zero"),
    pytest.param(
        {"restart": {"ps": {"permanent_exit_codes": [256]}}}, "restart.ps.permanent_exit_codes",
        "x.yaml: restart.ps.permanent_exit_codes: received [256]; expected a list of exit codes in 1..255",
        id="exit_code_256"),
    pytest.param(
        {"restart": {"ps": {"permanent_exit_codes": [True]}}}, "restart.ps.permanent_exit_codes",
        "x.yaml: restart.ps.permanent_exit_codes: received [True]; expected a list of exit codes in 1..255",
        id="exit_code_bool"),
    pytest.param(
        {"restart": {"ps": {"permanent_exit_codes": 1}}}, "restart.ps.permanent_exit_codes",
        "x.yaml: restart.ps.permanent_exit_codes: received 1; expected a list of exit codes in 1..255",
        id="exit_codes_not_list"),
    pytest.param(
        {"restart": {"ps": {"backoff_initial_seconds": -1}}}, "restart.ps.backoff_initial_seconds",
        "x.yaml: restart.ps.backoff_initial_seconds: received -1; expected a number of seconds in 0..3600",
        id="backoff_negative"),
    pytest.param(
        {"restart": {"ps": {"backoff_initial_seconds": "1s"}}}, "restart.ps.backoff_initial_seconds",
        "x.yaml: restart.ps.backoff_initial_seconds: received '1s'; expected a number of seconds in 0..3600",
        id="backoff_string"),
    pytest.param(
        {"restart": {"ps": {"backoff_max_seconds": 0.1}}}, "restart.ps.backoff_max_seconds",
        "x.yaml: restart.ps.backoff_max_seconds: received 0.1; expected at least backoff_initial_seconds (0.2)",
        id="backoff_max_below_initial"),
    pytest.param(
        {"restart": {"ps": {"max_restarts_per_task": -1}}}, "restart.ps.max_restarts_per_task",
        "x.yaml: restart.ps.max_restarts_per_task: received -1; expected an integer in 0..1000000",
        id="max_restarts_negative"),
    pytest.param(
        {"restart": {"worker": {"max_restarts_per_job": 2.5}}}, "restart.worker.max_restarts_per_job",
        "x.yaml: restart.worker.max_restarts_per_job: received 2.5; expected an integer in 0..1000000",
        id="max_restarts_float"),
    # Monitoring.
    pytest.param(
        {"monitoring": [1]}, "monitoring",
        "x.yaml: monitoring: received [1]; expected a mapping",
        id="monitoring_list"),
    pytest.param(
        {"monitoring": {"heartbeat": 30}}, "monitoring.heartbeat",
        "x.yaml: monitoring.heartbeat: received 'heartbeat'; expected one of the keys "
        "heartbeat_timeout_seconds, progress_timeout_seconds, port_check_interval_seconds, "
        "port_failures_before_dead, lease_seconds, standby_coordinator, preemption_grace_seconds, "
        "status_interval_seconds, collective_timeout_seconds",
        id="monitoring_unknown_key"),
    pytest.param(
        {"monitoring": {"standby_coordinator": "yes"}}, "monitoring.standby_coordinator",
        "x.yaml: monitoring.standby_coordinator: received 'yes'; expected true or false",
        id="standby_string"),
    pytest.param(
        {"monitoring": {"port_failures_before_dead": 0}}, "monitoring.port_failures_before_dead",
        "x.yaml: monitoring.port_failures_before_dead: received 0; expected an integer in 1..1000",
        id="port_failures_zero"),
    pytest.param(
        {"monitoring": {"port_failures_before_dead": 1.5}}, "monitoring.port_failures_before_dead",
        "x.yaml: monitoring.port_failures_before_dead: received 1.5; expected an integer in 1..1000",
        id="port_failures_float"),
    pytest.param(
        {"monitoring": {"heartbeat_timeout_seconds": 0}}, "monitoring.heartbeat_timeout_seconds",
        "x.yaml: monitoring.heartbeat_timeout_seconds: received 0; expected a number of seconds in 0.1..86400",
        id="heartbeat_zero"),
    pytest.param(
        {"monitoring": {"lease_seconds": True}}, "monitoring.lease_seconds",
        "x.yaml: monitoring.lease_seconds: received True; expected a number of seconds in 0.1..86400",
        id="lease_bool"),
    pytest.param(
        {"monitoring": {"progress_timeout_seconds": "120"}}, "monitoring.progress_timeout_seconds",
        "x.yaml: monitoring.progress_timeout_seconds: received '120'; "
        "expected a number of seconds in 0.1..86400",
        id="progress_timeout_string"),
]


@pytest.mark.parametrize("changes, path, message", INVALID)
def test_parse_spec_invalid(changes, path, message):
    with pytest.raises(SpecError) as info:
        parse(spec_document(**changes))

    assert info.value.path == path
    assert str(info.value) == message


TRAINING_RANGES = {
    "steps": (1, 10**12),
    "steps_per_execution": (1, 10**6),
    "checkpoint_every_steps": (1, 10**12),
    "steps_per_epoch": (1, 10**12),
    "keep_checkpoints": (1, 1000),
}


@pytest.mark.parametrize("field", sorted(TRAINING_RANGES))
@pytest.mark.parametrize("value", ["10", 10.0, True, 0, -5, [10], "high"], ids=repr)
def test_training_field_wrong_value(field, value):
    low, high = TRAINING_RANGES[field]
    if value == "high":
        value = high + 1

    with pytest.raises(SpecError) as info:
        parse(spec_document(**{f"training__{field}": value}))

    assert info.value.path == f"training.{field}"
    assert str(info.value) == f"x.yaml: training.{field}: received {value!r}; expected an integer in {low}..{high}"


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("cluster: [", r"received \"invalid YAML at line 1, column 11 \(expected the node content"),
        ("cluster: a: b", r"received 'invalid YAML at line 1, column 11 \(mapping values are not allowed here\)'"),
        ("when: 2001-02-30", r"received 'invalid YAML \(day is out of range for month\)'"),
        ("[" * 5000, r"received 'invalid YAML \(nested too deeply\)'"),
        ("a: !!python/object:os.system x", r"received \"invalid YAML at line 1, column 4 \(could not determine"),
        ("a: !!int ''", r"received 'invalid YAML \(a scalar that does not match its !! tag\)'"),
        ("a: !!bool x", r"received 'invalid YAML \(a scalar that does not match its !! tag\)'"),
        ("a: !!timestamp x", r"received 'invalid YAML \(a scalar that does not match its !! tag\)'"),
    ],
    ids=["unclosed_flow", "nested_mapping", "bad_date", "deep_nesting", "python_tag",
         "empty_int_tag", "bad_bool_tag", "bad_timestamp_tag"],
)
def test_parse_spec_invalid_yaml(text, pattern):
    with pytest.raises(SpecError, match=r"^x\.yaml: " + pattern) as info:
        parse_spec(text, source="x.yaml")

    assert info.value.path == ""
    assert str(info.value).endswith("; expected a YAML mapping")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "x.yaml: received None; expected a YAML mapping with a 'cluster' key"),
        ("# only a comment\n", "x.yaml: received None; expected a YAML mapping with a 'cluster' key"),
        ("- a\n- b\n", "x.yaml: received ['a', 'b']; expected a YAML mapping with a 'cluster' key"),
        ("42", "x.yaml: received 42; expected a YAML mapping with a 'cluster' key"),
        ("just text", "x.yaml: received 'just text'; expected a YAML mapping with a 'cluster' key"),
    ],
    ids=["empty", "comment", "list", "int", "string"],
)
def test_parse_spec_not_mapping(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.yaml")

    assert str(info.value) == message


def test_load_spec_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(UsageError, match=r"absent\.yaml: cannot read the cluster spec: No such file"):
        load_spec(str(path))


def test_load_spec_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"cluster: \xff\xfe\n")

    with pytest.raises(UsageError, match=r"binary\.yaml: the cluster spec is not UTF-8 text$"):
        load_spec(str(path))


# ------------------------------------------------------------------ exposure


def test_exposed_hosts_loopback():
    spec = parse(spec_document(cluster={"chief": 1, "worker": ["LOCALHOST:2222"], "ps": ["[::1]:2223"]}))

    assert spec.exposed_hosts() == []


def test_exposed_hosts_wildcard_host():
    spec = parse(spec_document(host="0.0.0.0"))

    assert spec.exposed_hosts() == ["0.0.0.0"]


def test_exposed_hosts_listed_address():
    spec = parse(spec_document(cluster__ps=["10.0.0.5:2222"]))

    assert spec.exposed_hosts() == ["10.0.0.5"]


def test_exposed_hosts_unused_host():
    # `host` only applies to counted jobs, so with every job listed it binds nothing.
    spec = parse(spec_document(
        host="0.0.0.0",
        cluster={"chief": ["127.0.0.1:2221"], "worker": ["127.0.0.1:2222"], "ps": ["127.0.0.1:2223"]},
    ))

    assert spec.exposed_hosts() == []


# --------------------------------------------------------------- host helpers


@pytest.mark.parametrize(
    "host, expected",
    [("localhost", "127.0.0.1"), ("LocalHost", "127.0.0.1"), ("::1", "127.0.0.1"),
     ("0:0:0:0:0:0:0:1", "127.0.0.1"), ("Example.COM", "example.com"), ("10.0.0.5", "10.0.0.5")],
)
def test_canonical_host(host, expected):
    assert canonical_host(host) == expected


@pytest.mark.parametrize(
    "host, expected",
    [("localhost", True), ("LOCALHOST", True), ("127.0.0.2", True), ("::1", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("example.com", False)],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


# -------------------------------------------------------------------- TaskId


@pytest.mark.parametrize(
    "text, expected",
    [("worker:1", TaskId("worker", 1)), (" ps:0 ", TaskId("ps", 0)),
     ("chief", TaskId("chief", 0)), ("evaluator:0", TaskId("evaluator", 0))],
)
def test_task_id_parse(text, expected):
    assert TaskId.parse(text) == expected


@pytest.mark.parametrize("text", ["bogus", "worker", "worker:", "worker:-1", "worker:x", "worker:\u00b2", "ps_hosts:0"])
def test_task_id_parse_invalid(text):
    with pytest.raises(UsageError, match=r"^invalid task .*; expected JOB:INDEX with JOB one of chief, worker, ps, evaluator"):
        TaskId.parse(text)


def test_task_id_str():
    assert str(TaskId("worker", 3)) == "worker:3"


def test_parse_spec_duplicate_key_rejected():
    text = "cluster: {chief: 1, worker: 1, ps: 1}\ntraining: {steps: 100}\ntraining: {steps: 200}\n"

    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.yaml")

    assert "duplicate key 'training'" in str(info.value)
    assert "line 3" in str(info.value)
