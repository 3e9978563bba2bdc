"""Spec and TF_CONFIG validation for `strategy: multi_worker_mirrored`."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
import yaml

from tfps_ha.errors import SpecError
from tfps_ha.mwms.config import mirrored_chief, parse_mirrored_tf_config
from tfps_ha.spec import MULTI_WORKER_MIRRORED, PARAMETER_SERVER, TaskId, load_spec, parse_spec
from tfps_ha.tf_config import render_tf_config, resolve_cluster

SPECS = pathlib.Path(__file__).resolve().parent.parent / "cluster_specs"

MIRRORED = {
    "name": "m",
    "strategy": "multi_worker_mirrored",
    "cluster": {"worker": 2},
    "trainer": {"module": "tfps_ha.examples.digits", "runner": "fit"},
    "training": {"steps": 200, "steps_per_epoch": 100, "steps_per_execution": 10,
                 "checkpoint_every_steps": 50},
}


def parse(**top_level: object):
    document = copy.deepcopy(MIRRORED)
    document.update(top_level)
    return parse_spec(yaml.safe_dump(document, sort_keys=False), source="m.yaml")


def error_of(**top_level: object) -> str:
    with pytest.raises(SpecError) as caught:
        parse(**top_level)
    return str(caught.value)


# ---------------------------------------------------------------- the spec


def test_bundled_mirrored_spec_is_valid():
    spec = load_spec(str(SPECS / "local_mwms.yaml"))
    assert spec.strategy == MULTI_WORKER_MIRRORED
    assert spec.task_count("worker") == 2
    assert spec.task_count("ps") == 0
    assert spec.task_count("chief") == 0
    assert spec.training.checkpoint_every_steps == 50


def test_strategy_defaults_to_parameter_server():
    spec = load_spec(str(SPECS / "local.yaml"))
    assert spec.strategy == PARAMETER_SERVER
    assert "(" not in spec.summary().split(":")[1]


def test_mirrored_summary_names_strategy():
    summary = parse().summary()
    assert "'m' (multi_worker_mirrored): 2 worker;" in summary


def test_mirrored_chief_is_optional():
    spec = parse(cluster={"chief": 1, "worker": 1})
    assert spec.task_count("chief") == 1
    assert spec.task_count("worker") == 1


def test_mirrored_worker_addresses_listed():
    spec = parse(cluster={"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]})
    assert spec.jobs["worker"] == ("127.0.0.1:2222", "127.0.0.1:2223")


def test_unknown_strategy_rejected():
    message = error_of(strategy="mirrored")
    assert message == ("m.yaml: strategy: received 'mirrored'; expected one of "
                       "parameter_server, multi_worker_mirrored")


def test_strategy_must_be_a_string():
    assert "strategy: received ['multi_worker_mirrored']" in error_of(strategy=["multi_worker_mirrored"])


def test_mirrored_rejects_ps_job():
    message = error_of(cluster={"worker": 2, "ps": 1})
    assert message.startswith("m.yaml: cluster.ps: received 1; expected no ps job")
    assert "has no parameter servers" in message


def test_mirrored_accepts_ps_count_zero():
    assert parse(cluster={"worker": 2, "ps": 0}).task_count("ps") == 0


def test_mirrored_requires_a_worker():
    message = error_of(cluster={"chief": 1})
    assert message == ("m.yaml: cluster.worker: received nothing (the key is missing); expected at "
                       "least 1 worker task for MultiWorkerMirroredStrategy")


def test_mirrored_rejects_zero_workers():
    assert "cluster.worker: received 0; expected at least 1 worker" in error_of(cluster={"worker": 0})


def test_mirrored_rejects_two_chiefs():
    message = error_of(cluster={"chief": 2, "worker": 1})
    assert message.startswith("m.yaml: cluster.chief: received 2; expected 0 or 1 chief")


def test_mirrored_rejects_duplicate_addresses():
    message = error_of(cluster={"chief": ["127.0.0.1:2222"], "worker": ["localhost:2222"]})
    assert "chief:0 and worker:0 both use it" in message


def test_mirrored_fit_needs_steps_per_epoch():
    document = copy.deepcopy(MIRRORED)
    del document["training"]["steps_per_epoch"]
    with pytest.raises(SpecError) as caught:
        parse_spec(yaml.safe_dump(document), source="m.yaml")
    assert "training.steps_per_epoch: received nothing" in str(caught.value)
    assert "Keras fit needs steps_per_epoch to read the trainer's dataset_fn" in str(caught.value)


def test_mirrored_rejects_custom_loop_runner():
    message = error_of(trainer={"module": "tfps_ha.examples.ctr", "runner": "custom_loop"})
    assert message == ("m.yaml: trainer.runner: received 'custom_loop'; expected fit, because strategy "
                       "multi_worker_mirrored runs only the fit runner")


def test_parameter_server_rules_unchanged():
    with pytest.raises(SpecError) as caught:
        parse(strategy="parameter_server")
    assert str(caught.value).startswith("m.yaml: cluster.chief: received nothing")


def test_collective_timeout_is_a_monitoring_setting():
    spec = parse(monitoring={"collective_timeout_seconds": 15})
    assert spec.monitoring.collective_timeout_seconds == 15.0
    assert "monitoring.collective_timeout_seconds: received 0" in error_of(
        monitoring={"collective_timeout_seconds": 0})
    assert "received 0.5; expected a number of seconds in 1..86400" in error_of(
        monitoring={"collective_timeout_seconds": 0.5})


# ---------------------------------------------------------------- TF_CONFIG


def tf_config(cluster: dict, task_type: str = "worker", index: int = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def tf_config_error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_mirrored_tf_config(text)
    return str(caught.value)


def test_rendered_tf_config_parses():
    spec = parse()
    cluster = resolve_cluster(spec)
    rendered = render_tf_config(cluster, TaskId("worker", 1))
    assert set(rendered["cluster"]) == {"worker"}

    config = parse_mirrored_tf_config(json.dumps(rendered))
    assert config.task == TaskId("worker", 1)
    assert config.cluster.jobs == {"worker": cluster.jobs["worker"]}


def test_tf_config_with_chief():
    config = parse_mirrored_tf_config(
        tf_config({"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "chief", 0))
    assert config.task == TaskId("chief", 0)
    assert mirrored_chief(config.cluster) == TaskId("chief", 0)


def test_tf_config_drops_evaluator():
    config = parse_mirrored_tf_config(
        tf_config({"worker": ["127.0.0.1:2"], "evaluator": ["127.0.0.1:3"]}))
    assert set(config.cluster.jobs) == {"worker"}


def test_mirrored_chief_without_chief_job():
    config = parse_mirrored_tf_config(tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "worker", 1))
    assert mirrored_chief(config.cluster) == TaskId("worker", 0)


def test_tf_config_rejects_ps():
    message = tf_config_error(tf_config({"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}))
    assert message == ("TF_CONFIG: cluster.ps: received ['127.0.0.1:2']; expected no ps job, because "
                       "MultiWorkerMirroredStrategy has no parameter servers")


def test_tf_config_requires_worker():
    message = tf_config_error(tf_config({"chief": ["127.0.0.1:1"]}, "chief", 0))
    assert message == ("TF_CONFIG: cluster: received ['chief']; expected at least one 'worker' task for "
                       "MultiWorkerMirroredStrategy")


def test_tf_config_rejects_sparse_worker_job():
    message = tf_config_error(tf_config({"worker": {"1": "127.0.0.1:2"}}, "worker", 1))
    assert message.startswith("TF_CONFIG: cluster.worker: received [1]; expected indices 0..0 with no gaps")


def test_tf_config_rejects_evaluator_task():
    message = tf_config_error(tf_config({"worker": ["127.0.0.1:1"]}, "evaluator", 0))
    assert message == ("TF_CONFIG: task.type: received 'evaluator'; expected chief or worker, the jobs "
                       "that train under MultiWorkerMirroredStrategy")


def test_tf_config_rejects_unknown_job():
    message = tf_config_error(tf_config({"worker": ["127.0.0.1:1"], "master": ["127.0.0.1:2"]}))
    assert message.startswith("TF_CONFIG: cluster: received 'master'; expected only the jobs chief, worker")


def test_tf_config_missing():
    assert tf_config_error("").startswith("TF_CONFIG: received nothing")


def test_tf_config_task_index_out_of_range():
    message = tf_config_error(tf_config({"worker": ["127.0.0.1:1"]}, "worker", 3))
    assert message == "TF_CONFIG: task.index: received 3; expected an index of job 'worker' in 0..0"
