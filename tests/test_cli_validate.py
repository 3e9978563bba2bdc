"""Tests of the `tfps-ha validate` and `tfps-ha tf-config` commands, run as subprocesses."""

from __future__ import annotations

import json

import pytest

from tfps_ha.spec import split_address
from tfps_ha.tf_config import parse_tf_config

VALID_SPEC = """\
cluster: {chief: 1, worker: 2, ps: 1}
trainer: {module: tfps_ha.examples.ctr, runner: custom_loop}
"""


def write_spec(tmp_path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    "spec, summary",
    [
        ("cluster_specs/local.yaml",
         "local.yaml: valid cluster spec 'digits-local': 1 chief, 2 worker, 1 ps; "
         "trainer tfps_ha.examples.digits (fit); 600 steps, checkpoint every 50"),
        ("cluster_specs/local_4w_2ps.yaml",
         "local_4w_2ps.yaml: valid cluster spec 'ctr-4w-2ps': 1 chief, 4 worker, 2 ps; "
         "trainer tfps_ha.examples.ctr (custom_loop); 400 steps, checkpoint every 100"),
    ],
    ids=["local", "local_4w_2ps"],
)
def test_validate_shipped_spec(run_cli, spec, summary):
    result = run_cli("validate", spec)

    assert result.returncode == 0
    assert result.stdout == summary + "\n"
    assert result.stderr == ""


# Each case: the spec text and the whole error line on stderr.
BAD_SPECS = [
    pytest.param(
        "cluster: {chief: 1, worker: ['localhost:2222', 'localhost:0'], ps: 1}\ntrainer: {module: m}\n",
        "tfps-ha: error: bad.yaml: cluster.worker[1]: received 'localhost:0'; expected a port in 1..65535",
        id="port_zero"),
    pytest.param(
        "cluster: {chief: 1, ps_hosts: ['localhost:2222'], worker_hosts: ['localhost:2223']}\n"
        "trainer: {module: m}\n",
        "tfps-ha: error: bad.yaml: cluster: received 'ps_hosts, worker_hosts'; expected only the jobs "
        "chief, worker, ps, evaluator; unknown jobs ps_hosts, worker_hosts "
        "(rename ps_hosts -> ps, worker_hosts -> worker)",
        id="ps_hosts"),
    pytest.param(
        "cluster: {chief: 1, worker: ['localhost:2222'], ps: ['127.0.0.1:2222']}\ntrainer: {module: m}\n",
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received '127.0.0.1:2222'; "
        "expected an address no other task uses; worker:0 and ps:0 both use it",
        id="duplicate_address"),
    pytest.param(
        "cluster: [\n",
        "tfps-ha: error: bad.yaml: received \"invalid YAML at line 2, column 1 "
        "(expected the node content, but found '<stream end>')\"; expected a YAML mapping",
        id="invalid_yaml"),
    pytest.param(
        "trainer: {module: m}\n",
        "tfps-ha: error: bad.yaml: cluster: received nothing (the key is missing); "
        "expected a mapping of jobs (chief, worker, ps)",
        id="cluster_missing"),
    pytest.param(
        "- just\n- a list\n",
        "tfps-ha: error: bad.yaml: received ['just', 'a list']; expected a YAML mapping with a 'cluster' key",
        id="not_mapping"),
]


@pytest.mark.parametrize("text, line", BAD_SPECS)
def test_validate_bad_spec(run_cli, tmp_path, text, line):
    result = run_cli("validate", write_spec(tmp_path, text, "bad.yaml"))

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]


def test_validate_missing_file(run_cli, tmp_path):
    path = str(tmp_path / "absent.yaml")

    result = run_cli("validate", path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"tfps-ha: error: {path}: cannot read the cluster spec: No such file or directory"
    ]


def test_validate_folder(run_cli, tmp_path):
    result = run_cli("validate", str(tmp_path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_validate_not_utf8(run_cli, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")

    result = run_cli("validate", str(path))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"tfps-ha: error: {path}: the cluster spec is not UTF-8 text"]


@pytest.mark.parametrize(
    "args",
    [(), ("validate",), ("bogus-command",), ("validate", "a.yaml", "b.yaml")],
    ids=["no_command", "no_spec", "unknown_command", "two_specs"],
)
def test_cli_bad_arguments(run_cli, args):
    result = run_cli(*args)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("tfps-ha: error: ")


# ------------------------------------------------------------------- exposure


@pytest.mark.parametrize(
    "text, host",
    [
        ("host: 0.0.0.0\n" + VALID_SPEC, "0.0.0.0"),
        ("cluster: {chief: 1, worker: 2, ps: ['10.0.0.5:2222']}\ntrainer: {module: m}\n", "10.0.0.5"),
    ],
    ids=["wildcard_host", "listed_address"],
)
def test_validate_warns_exposed(run_cli, tmp_path, text, host):
    result = run_cli("validate", write_spec(tmp_path, text))

    assert result.returncode == 0
    assert result.stdout.startswith("spec.yaml: valid cluster spec 'spec'")
    assert f"servers would listen on {host}, beyond loopback" in result.stderr
    assert "TF gRPC servers are unauthenticated" in result.stderr


def test_validate_loopback_no_warning(run_cli, tmp_path):
    result = run_cli("validate", write_spec(tmp_path, VALID_SPEC))

    assert result.returncode == 0
    assert result.stderr == ""


# ------------------------------------------------------------------ tf-config


def test_tf_config_worker(run_cli):
    result = run_cli("tf-config", "cluster_specs/local.yaml", "--task", "worker:1")

    assert result.returncode == 0
    rendered = json.loads(result.stdout)
    assert rendered["task"] == {"type": "worker", "index": 1}
    assert sorted(rendered["cluster"]) == ["chief", "ps", "worker"]
    assert {job: len(addresses) for job, addresses in rendered["cluster"].items()} == {
        "chief": 1, "worker": 2, "ps": 1,
    }
    for addresses in rendered["cluster"].values():
        for address in addresses:
            host, port = split_address(address)
            assert host == "127.0.0.1"
            assert 1 <= int(port) <= 65535


def test_tf_config_output_parses(run_cli):
    result = run_cli("tf-config", "cluster_specs/local_4w_2ps.yaml", "--task", "ps:1")

    config = parse_tf_config(result.stdout)

    assert str(config.task) == "ps:1"
    assert config.cluster.num_workers() == 4
    assert config.cluster.num_ps() == 2


def test_tf_config_bare_chief(run_cli):
    result = run_cli("tf-config", "cluster_specs/local.yaml", "--task", "chief")

    assert result.returncode == 0
    assert json.loads(result.stdout)["task"] == {"type": "chief", "index": 0}


@pytest.mark.parametrize(
    "task, line",
    [
        ("bogus",
         "tfps-ha: error: invalid task 'bogus'; expected JOB:INDEX with JOB one of "
         "chief, worker, ps, evaluator, for example worker:1"),
        ("worker:2",
         "tfps-ha: error: local.yaml: --task: received 'worker:2'; expected a task of the cluster "
         "(ps:0, worker:0, worker:1, chief:0)"),
        ("evaluator:0",
         "tfps-ha: error: local.yaml: --task: received 'evaluator:0'; expected a task of the cluster "
         "(ps:0, worker:0, worker:1, chief:0)"),
    ],
    ids=["bogus", "index_past_end", "job_not_in_spec"],
)
def test_tf_config_bad_task(run_cli, task, line):
    result = run_cli("tf-config", "cluster_specs/local.yaml", "--task", task)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]


def test_tf_config_bad_spec(run_cli, tmp_path):
    result = run_cli("tf-config", write_spec(tmp_path, "cluster: 3\n", "bad.yaml"), "--task", "worker:0")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tfps-ha: error: bad.yaml: cluster: received 3; expected a mapping of jobs (chief, worker, ps)"
    ]
