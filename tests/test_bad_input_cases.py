"""Bad inputs that users of ParameterServerStrategy report, each with the result it must give.

Every kind goes through the entry points a user has: `tfps-ha validate` for a
spec, the TF_CONFIG path of `tfps-ha task`, and `tfps-ha launch`. A bad spec
or TF_CONFIG must end in one line on stderr and exit code 2 within seconds;
the pytest-timeout markers hold that bound. Tests that start TensorFlow
servers use ports that portpicker picks on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import portpicker
import pytest
import yaml

from launch_helpers import launch_output, read_events, run_launch
from tfps_ha.errors import SpecError, StartupTimeoutError, short_repr
from tfps_ha.exit_codes import ExitCode
from tfps_ha.net import port_accepts, wait_for_ports
from tfps_ha.spec import TaskId, parse_spec, split_address
from tfps_ha.tf_config import parse_tf_config, render_tf_config, resolve_cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI must reject a bad input well within this. Parsing takes
# milliseconds, and starting Python takes most of the rest.
QUICK_SECONDS = 5
# Tests that import TensorFlow in a child process.
TF_CHILD_SECONDS = 120

VALID = {
    "cluster": {"chief": 1, "worker": 2, "ps": 1},
    "trainer": {"module": "tfps_ha.examples.ctr", "runner": "custom_loop"},
}


def run_tfps(*args: str, tf_config: str | None = None, extra_env: dict | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "TFPS_HA_LOG_LEVEL": "INFO", **(extra_env or {})}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return subprocess.run([sys.executable, "-m", "tfps_ha", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def validate_text(tmp_path, text: str, name: str = "bad.yaml") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return run_tfps("validate", str(path))


def spec_yaml(cluster: dict) -> str:
    return yaml.safe_dump({**VALID, "cluster": cluster})


def assert_one_line_usage_error(result: subprocess.CompletedProcess, line: str | None = None) -> None:
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    if line is not None:
        assert lines[0] == line


def free_address() -> str:
    return f"127.0.0.1:{portpicker.pick_unused_port()}"


# ------------------------------------------------ TF_CONFIG jobs as mappings

# The Kubeflow operator's sparse TF_CONFIG: a worker's cluster lists the PS tasks and that worker only.
SPARSE = {"cluster": {"ps": ["localhost:2220"], "worker": {"1": "localhost:2222"}},
          "task": {"type": "worker", "index": 1}}


def test_sparse_worker_job_accepted():
    config = parse_tf_config(json.dumps(SPARSE))

    assert config.task == TaskId("worker", 1)
    assert config.cluster.address(config.task) == "localhost:2222"
    assert config.cluster.training_cluster() == {"worker": {1: "localhost:2222"}, "ps": ["localhost:2220"]}
    assert config.cluster.tasks() == [TaskId("ps", 0), TaskId("worker", 1)]
    assert config.cluster.num_workers() == 2


def test_sparse_worker_job_round_trip():
    config = parse_tf_config(json.dumps(SPARSE))

    rendered = json.loads(json.dumps(render_tf_config(config.cluster, config.task)))

    assert rendered == {"cluster": {"worker": {"1": "localhost:2222"}, "ps": ["localhost:2220"]},
                        "task": {"type": "worker", "index": 1}}
    assert parse_tf_config(json.dumps(rendered)) == config


def test_sparse_job_task_not_listed():
    with pytest.raises(SpecError) as info:
        parse_tf_config(json.dumps({**SPARSE, "task": {"type": "worker", "index": 0}}))

    assert str(info.value) == (
        "TF_CONFIG: task.index: received 0; expected an index of job 'worker' that the cluster lists ([1])")


def test_sparse_job_index_too_high():
    cluster = {"ps": ["localhost:2220"], "worker": {"5000": "localhost:2222"}}

    with pytest.raises(SpecError) as info:
        parse_tf_config(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 5000}}))

    assert str(info.value) == "TF_CONFIG: cluster.worker['5000']: received '5000'; expected an index in 0..1023"


def test_sparse_chief_rejected():
    cluster = {"chief": {"1": "localhost:2221"}, "ps": ["localhost:2220"], "worker": ["localhost:2222"]}

    with pytest.raises(SpecError) as info:
        parse_tf_config(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))

    assert str(info.value) == "TF_CONFIG: cluster.chief: received {'1': 'localhost:2221'}; expected the chief at index 0"


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_task_serves_sparse_tf_config():
    address = free_address()
    tf_config = json.dumps({"cluster": {"ps": [free_address()], "worker": {"1": address}},
                            "task": {"type": "worker", "index": 1}})
    env = dict(os.environ, TF_CONFIG=tf_config)
    process = subprocess.Popen([sys.executable, "-m", "tfps_ha", "task"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + TF_CHILD_SECONDS
        while not port_accepts(address, timeout=0.5):
            assert process.poll() is None, f"task exited with {process.returncode}: {process.stdout.read()}"
            assert time.monotonic() < deadline, f"worker:1 did not listen on {address} in {TF_CHILD_SECONDS} s"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, output
    assert f"Task worker:1 is serving on {address}." in output


# Each case: TF_CONFIG and the whole stderr line of `tfps-ha task`, which
# parses TF_CONFIG before it imports TensorFlow.
TF_CONFIG_CASES = [
    pytest.param(
        {"cluster": {"ps": ["localhost:2220"], "worker": {"a": "localhost:2222"}},
         "task": {"type": "worker", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.worker['a']: received 'a'; expected an integer index such as \"0\"",
        id="index_key_not_integer"),
    pytest.param(
        {"cluster": {"ps_hosts": ["localhost:2220"], "worker_hosts": ["localhost:2222"]},
         "task": {"type": "worker", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster: received 'ps_hosts, worker_hosts'; expected only the jobs "
        "chief, worker, ps, evaluator; unknown jobs ps_hosts, worker_hosts",
        id="ps_hosts_worker_hosts"),
    pytest.param(
        {"cluster": {"ps": ["localhost:0"], "worker": ["localhost:2222"]}, "task": {"type": "ps", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.ps[0]: received 'localhost:0'; expected a port in 1..65535",
        id="port_zero"),
    pytest.param(
        {"cluster": {"ps": ["localhost:65536"], "worker": ["localhost:2222"]}, "task": {"type": "ps", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.ps[0]: received 'localhost:65536'; expected a port in 1..65535",
        id="port_above_65535"),
    pytest.param(
        {"cluster": {"ps": ["localhost"], "worker": ["localhost:2222"]}, "task": {"type": "ps", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.ps[0]: received 'localhost'; expected 'host:port', "
        "such as '127.0.0.1:2222'",
        id="address_without_port"),
    pytest.param(
        {"cluster": {"ps": ["127.0.0.1:2222"], "worker": ["0.0.0.0:2222"]}, "task": {"type": "ps", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.worker[0]: received '0.0.0.0:2222'; expected an address no "
        "other task uses; ps:0 and worker:0 both use it",
        id="duplicate_wildcard_and_loopback"),
    pytest.param(
        {"cluster": {"ps": ["localhost:2220"], "worker": ["localhost:2222"]}, "task": {"type": "worker", "index": 3}},
        "tfps-ha: error: TF_CONFIG: task.index: received 3; expected an index of job 'worker' in 0..0",
        id="index_past_end"),
    pytest.param(
        {"cluster": {"ps": ["localhost:2220"], "worker": ["localhost:2222"]}, "task": {"type": "chief", "index": 0}},
        "tfps-ha: error: TF_CONFIG: task.type: received 'chief'; expected one of the cluster's jobs (ps, worker)",
        id="task_type_not_in_cluster"),
    pytest.param(
        {"cluster": {"ps": ["localhost:2220"], "worker": {"1": "localhost:2222"}, "chief": ["localhost:2221"]},
         "task": {"type": "chief", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.worker: received [1]; expected indices 0..0 with no gaps, one per "
        "task, because the chief (the coordinator) needs every task's address; only a PS or worker task "
        "can run with a sparse job",
        id="sparse_job_for_chief"),
    pytest.param(
        '{"cluster": {"ps": ["localhost:2220"]',
        "tfps-ha: error: TF_CONFIG: received '{\"cluster\": {\"ps\": [\"localhost:2220\"]'; "
        "expected valid JSON (Expecting ',' delimiter)",
        id="malformed_json"),
    pytest.param(
        {"cluster": {"ps": "localhost:2220", "worker": ["localhost:2222"]}, "task": {"type": "ps", "index": 0}},
        "tfps-ha: error: TF_CONFIG: cluster.ps: received 'localhost:2220'; expected a list of 'host:port' "
        "or a mapping of index to 'host:port'",
        id="job_is_a_string"),
]


@pytest.mark.timeout(QUICK_SECONDS)
@pytest.mark.parametrize("document, line", TF_CONFIG_CASES)
def test_task_bad_tf_config(document, line):
    text = document if isinstance(document, str) else json.dumps(document)

    result = run_tfps("task", tf_config=text)

    assert_one_line_usage_error(result, line)


# ------------------------------------------------------------- spec inputs

# Each case: the cluster of an otherwise valid spec, and the whole stderr line of `tfps-ha validate`.
SPEC_CLUSTER_CASES = [
    pytest.param(
        {"chief": 1, "ps_hosts": ["localhost:2222"], "worker_hosts": ["localhost:2223"]},
        "tfps-ha: error: bad.yaml: cluster: received 'ps_hosts, worker_hosts'; expected only the jobs "
        "chief, worker, ps, evaluator; unknown jobs ps_hosts, worker_hosts (rename ps_hosts -> ps, "
        "worker_hosts -> worker)",
        id="ps_hosts_worker_hosts"),
    pytest.param(
        {"chief": 1, "worker": 1, "ps": ["localhost:0"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received 'localhost:0'; expected a port in 1..65535",
        id="port_zero"),
    pytest.param(
        {"chief": 1, "worker": 1, "ps": ["localhost:70000"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received 'localhost:70000'; expected a port in 1..65535",
        id="port_above_65535"),
    pytest.param(
        {"chief": 1, "worker": 1, "ps": ["localhost:22:22"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received 'localhost:22:22'; expected 'host:port', "
        "such as '127.0.0.1:2222'",
        id="two_colons"),
    pytest.param(
        {"chief": 1, "worker": 1, "ps": ["bad host:2222"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received 'bad host:2222'; expected 'host:port' with a "
        "valid host name or IP address",
        id="host_with_space"),
    pytest.param(
        {"chief": ["localhost:2222"], "worker": 1, "ps": ["127.0.0.1:2222"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received '127.0.0.1:2222'; expected an address no "
        "other task uses; chief:0 and ps:0 both use it",
        id="duplicate_localhost"),
    pytest.param(
        {"chief": 1, "worker": ["[::ffff:127.0.0.1]:2222", "127.0.0.2:2222"], "ps": 1},
        "tfps-ha: error: bad.yaml: cluster.worker[1]: received '127.0.0.2:2222'; expected an address no "
        "other task uses; worker:0 and worker:1 both use it",
        id="duplicate_other_loopback"),
    pytest.param(
        {"chief": 1, "worker": ["0.0.0.0:2222"], "ps": ["localhost:2222"]},
        "tfps-ha: error: bad.yaml: cluster.ps[0]: received 'localhost:2222'; expected an address no "
        "other task uses; worker:0 and ps:0 both use it",
        id="duplicate_wildcard"),
]


@pytest.mark.timeout(QUICK_SECONDS)
@pytest.mark.parametrize("cluster, line", SPEC_CLUSTER_CASES)
def test_validate_bad_cluster(tmp_path, cluster, line):
    result = validate_text(tmp_path, spec_yaml(cluster))

    assert_one_line_usage_error(result, line)


def alias_bomb_spec(**top_level: str) -> str:
    """Returns a spec whose trainer.args hold anchors that expand to 10**9 strings.

    Building a message from the whole value would take minutes and gigabytes.
    `top_level` adds or replaces top-level keys with YAML text, such as `*i`.
    """
    lines = ["trainer:", "  module: tfps_ha.examples.ctr", "  runner: custom_loop", "  args:",
             "    a: &a [" + ", ".join(['"x"'] * 10) + "]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"    {name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    keys = {"cluster": "{chief: 1, worker: 2, ps: 1}", **top_level}
    lines += [f"{key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(QUICK_SECONDS)
@pytest.mark.parametrize(
    "top_level, start",
    [({"name": "*i"}, "tfps-ha: error: bad.yaml: name: received [[[[...]"),
     ({"cluster": "{chief: 1, worker: *i, ps: 1}"}, "tfps-ha: error: bad.yaml: cluster.worker[0]: received [[[[...]"),
     ({"workdir": "*i"}, "tfps-ha: error: bad.yaml: workdir: received [[[[...]")],
    ids=["name", "cluster_worker", "workdir"])
def test_validate_alias_bomb(tmp_path, top_level, start):
    result = validate_text(tmp_path, alias_bomb_spec(**top_level))

    assert_one_line_usage_error(result)
    assert result.stderr.startswith(start)
    assert len(result.stderr) < 400


@pytest.mark.timeout(QUICK_SECONDS)
def test_validate_alias_bomb_in_trainer_args(tmp_path):
    result = validate_text(tmp_path, alias_bomb_spec(), name="bomb.yaml")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bomb.yaml: valid cluster spec 'bomb'")


def test_spec_error_alias_bomb_value_bounded():
    value = ["x"]
    for _ in range(9):
        value = [value] * 10

    error = SpecError("x.yaml", "name", value, "a name")

    assert str(error).startswith("x.yaml: name: received [[[[...], [...]")
    assert len(str(error)) < 250


@pytest.mark.parametrize(
    "value, shown",
    [("a" * 1_000_000, "'" + "a" * 116 + "..."), (10 ** 5000, "<an integer of about 5001 digits>"),
     ({"b": 1, "a": 2}, "{'b': 1, 'a': 2}"), (b"x" * 10_000, "b'" + "x" * 115 + "...")],
    ids=["long_string", "huge_int", "dict_order_kept", "long_bytes"])
def test_short_repr_bounded(value, shown):
    assert short_repr(value) == shown


@pytest.mark.timeout(QUICK_SECONDS)
def test_validate_huge_string_value(tmp_path):
    text = yaml.safe_dump({**VALID, "name": "n" * 1_000_000})

    result = validate_text(tmp_path, text)

    assert_one_line_usage_error(
        result, "tfps-ha: error: bad.yaml: name: received '" + "n" * 116 + "...; expected 1-63 letters, "
        "digits, '.', '_' or '-'")


@pytest.mark.timeout(QUICK_SECONDS)
def test_validate_huge_unknown_key(tmp_path):
    text = yaml.safe_dump({**VALID, "k" * 100_000: 1})

    result = validate_text(tmp_path, text)

    assert_one_line_usage_error(result)
    assert len(result.stderr) < 600


# ------------------------------------------------------------ ports in use


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_task_port_in_use_names_task_and_port():
    port = portpicker.pick_unused_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    try:
        tf_config = json.dumps({"cluster": {"ps": [f"127.0.0.1:{port}"], "worker": [free_address()]},
                                "task": {"type": "ps", "index": 0}})
        result = run_tfps("task", tf_config=tf_config, timeout=TF_CHILD_SECONDS)
    finally:
        blocker.close()

    errors = [line for line in result.stderr.splitlines() if line.startswith("tfps-ha: error:")]
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"tfps-ha: error: Task ps:0 could not start its gRPC server on 127.0.0.1:{port}: ")
    assert errors[0].endswith("Is the port used by another process?")


# ------------------------------------------------------- tasks that never come up


def test_wait_for_ports_names_missing_task():
    address = free_address()

    with pytest.raises(StartupTimeoutError) as info:
        wait_for_ports({"ps:0": address}, deadline_seconds=0.5, poll_seconds=0.1)

    assert str(info.value) == (
        f"timed out after 0.5 s waiting for ps:0 at {address} to accept connections; check that the "
        "task started and that the address is reachable")


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_chief_times_out_on_missing_servers(tmp_path):
    ps, worker, chief = free_address(), free_address(), free_address()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**VALID, "startup_timeout_seconds": 2,
                                    "monitoring": {"standby_coordinator": False}}))
    tf_config = json.dumps({"cluster": {"chief": [chief], "worker": [worker], "ps": [ps]},
                            "task": {"type": "chief", "index": 0}})

    result = run_tfps("task", "--spec", str(spec), "--workdir", str(tmp_path / "work"),
                      tf_config=tf_config, timeout=TF_CHILD_SECONDS)

    assert result.returncode == ExitCode.STARTUP_TIMEOUT, result.stderr
    assert f"timed out after 2 s waiting for ps:0 at {ps}, worker:0 at {worker} to accept connections" \
        in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- exposure

EXPOSED = yaml.safe_dump({**VALID, "host": "0.0.0.0"})


@pytest.mark.timeout(QUICK_SECONDS)
def test_tf_config_command_warns_exposed(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(EXPOSED)

    result = run_tfps("tf-config", str(path), "--task", "ps:0")

    assert result.returncode == 0
    assert "servers would listen on 0.0.0.0, beyond loopback. TF gRPC servers are unauthenticated" in result.stderr


@pytest.mark.timeout(30)
def test_launch_warns_exposed_before_start(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(EXPOSED)

    # The invalid chaos plan stops the launch before any task starts.
    result = run_tfps("launch", str(path), "--workdir", str(tmp_path / "work"), "--chaos", "bogus")

    assert result.returncode == ExitCode.USAGE
    assert "servers would listen on 0.0.0.0, beyond loopback. TF gRPC servers are unauthenticated" in result.stderr
    assert not (tmp_path / "work" / "logs").exists()


# ---------------------------------------------------------- CLI regressions


@pytest.mark.timeout(QUICK_SECONDS)
def test_tf_config_index_past_end_names_spec():
    result = run_tfps("tf-config", "cluster_specs/local.yaml", "--task", "worker:9")

    assert_one_line_usage_error(
        result, "tfps-ha: error: local.yaml: --task: received 'worker:9'; expected a task of the cluster "
        "(ps:0, worker:0, worker:1, chief:0)")


@pytest.mark.timeout(QUICK_SECONDS)
@pytest.mark.parametrize("value", ["bogus", "-3", "INFO2", "9" * 5000])
def test_invalid_log_level_falls_back(value):
    result = run_tfps("validate", "cluster_specs/local.yaml", extra_env={"TFPS_HA_LOG_LEVEL": value})

    lines = result.stderr.splitlines()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f"WARNING tfps_ha.cli: TFPS_HA_LOG_LEVEL is {short_repr(value)}, which is not a log level; using INFO. "
        "Set it to DEBUG, INFO, WARNING, ERROR or CRITICAL, or unset it.")
    assert result.stdout.startswith("local.yaml: valid cluster spec")


@pytest.mark.timeout(QUICK_SECONDS)
@pytest.mark.parametrize("value", ["debug", " Warning ", "40", ""])
def test_valid_log_level_accepted(value):
    result = run_tfps("validate", "cluster_specs/local.yaml", extra_env={"TFPS_HA_LOG_LEVEL": value})

    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.timeout(QUICK_SECONDS)
def test_invalid_log_level_with_bad_spec(tmp_path):
    result = run_tfps("validate", str(tmp_path / "absent.yaml"), extra_env={"TFPS_HA_LOG_LEVEL": "loud"})

    lines = result.stderr.splitlines()
    assert result.returncode == ExitCode.USAGE
    assert len(lines) == 2, lines
    assert "TFPS_HA_LOG_LEVEL is 'loud'" in lines[0]
    assert lines[1].startswith("tfps-ha: error: ")


# ------------------------------------------------- port picking for counted jobs


def test_resolve_cluster_skips_listed_port():
    listed = portpicker.pick_unused_port()
    # portpicker hands out a reserved port before asking the OS for one, so
    # without the check the first counted task would get the listed port.
    portpicker.add_reserved_port(listed)
    spec = parse_spec(yaml.safe_dump({**VALID, "cluster": {"chief": 1, "worker": 2, "ps": [f"127.0.0.1:{listed}"]}}))

    resolved = resolve_cluster(spec)

    counted = [int(split_address(address)[1]) for job in ("chief", "worker") for address in resolved.jobs[job]]
    assert listed not in counted
    assert len(set(counted)) == 3
    assert resolved.jobs["ps"] == (f"127.0.0.1:{listed}",)


def test_resolve_cluster_skips_listed_port_other_host():
    listed = portpicker.pick_unused_port()
    portpicker.add_reserved_port(listed)
    spec = parse_spec(yaml.safe_dump({**VALID, "cluster": {"chief": 1, "worker": 1, "ps": [f"10.0.0.5:{listed}"]}}))

    resolved = resolve_cluster(spec)

    assert f"127.0.0.1:{listed}" not in resolved.jobs["chief"] + resolved.jobs["worker"]


# ---------------------------------------------- unreadable checkpoints on restore

# Runs in a child process: TensorFlow ops in the pytest process would fix its
# inter-op thread pool before tfps_ha.testing can size it for an in-process
# cluster. Each scenario saves checkpoints of a scalar variable, damages
# some, restores with fallback and reports the outcome as JSON.
RESTORE_SCRIPT = r"""
import glob, json, logging, os, sys

from tfps_ha.coordinator.checkpoints import restore_with_fallback
from tfps_ha.tf_env import import_tensorflow

tf, _ = import_tensorflow()
root = sys.argv[1]


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def truncate(pattern, size):
    for path in glob.glob(pattern):
        with open(path, "r+b") as stream:
            stream.truncate(size(path))


def garbage_index(path):
    with open(path + ".index", "wb") as stream:
        stream.write(b"\0not a checkpoint index" * 10)


def remove_data(path):
    for data in glob.glob(path + ".data-*"):
        os.unlink(data)


SCENARIOS = {
    "truncated_data": (3, lambda paths: truncate(paths[-1] + ".data-*", lambda p: os.path.getsize(p) // 3)),
    "garbage_index": (2, lambda paths: garbage_index(paths[-1])),
    "missing_data": (2, lambda paths: remove_data(paths[-1])),
    "none_readable": (2, lambda paths: truncate(os.path.join(os.path.dirname(paths[-1]), "ckpt-*.data-*"),
                                                 lambda p: 1)),
}
results = {}
for name, (count, damage) in SCENARIOS.items():
    folder = os.path.join(root, name)
    variable = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(value=variable)
    manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=count)
    for value in range(1, count + 1):
        variable.assign(float(value))
        manager.save()
    damage(manager.checkpoints)
    variable.assign(0.0)
    files = sorted(os.listdir(folder))
    handler = Records()
    logging.getLogger("tfps_ha").addHandler(handler)
    logging.getLogger("tfps_ha").setLevel(logging.INFO)
    try:
        restored, error = restore_with_fallback(tf, checkpoint, manager), None
    except RuntimeError as raised:
        restored, error = None, str(raised)
    logging.getLogger("tfps_ha").removeHandler(handler)
    results[name] = {
        "checkpoints": list(manager.checkpoints), "restored": restored, "value": float(variable.numpy()),
        "error": error, "log": handler.messages, "files_unchanged": sorted(os.listdir(folder)) == files,
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def restore_results(tmp_path_factory):
    """Runs every restore scenario in one child process; returns its results by scenario."""
    root = tmp_path_factory.mktemp("restore")
    result = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(root)], cwd=REPO,
                            capture_output=True, text=True, timeout=TF_CHILD_SECONDS)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_restore_skips_truncated_data(restore_results):
    outcome = restore_results["truncated_data"]
    newest, previous = outcome["checkpoints"][-1], outcome["checkpoints"][-2]

    assert outcome["restored"] == previous
    assert outcome["value"] == 2.0
    assert any(message.startswith(f"Checkpoint {newest} cannot be restored") for message in outcome["log"])
    assert f"Restored the older checkpoint {previous} because newer ones were unreadable." in outcome["log"]


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_restore_skips_garbage_index(restore_results):
    outcome = restore_results["garbage_index"]
    previous = outcome["checkpoints"][-2]

    assert outcome["restored"] == previous
    assert outcome["value"] == 1.0
    assert f"Restored the older checkpoint {previous} because newer ones were unreadable." in outcome["log"]


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_restore_skips_missing_data(restore_results):
    outcome = restore_results["missing_data"]

    assert outcome["restored"] == outcome["checkpoints"][-2]
    assert outcome["value"] == 1.0


@pytest.mark.timeout(TF_CHILD_SECONDS + 30)
def test_restore_none_readable_keeps_files(restore_results):
    outcome = restore_results["none_readable"]

    assert outcome["restored"] is None
    assert outcome["error"].startswith("none of the checkpoints can be restored; they were left in place")
    for path in outcome["checkpoints"]:
        assert path in outcome["error"]
    assert outcome["files_unchanged"] is True


# ------------------------------------------------------ no orphans after the coordinator


CRASHING_TRAINER = '''\
"""A trainer whose model cannot be built, so the coordinator exits FAILED."""


def dataset_fn(input_context):
    raise AssertionError("never called")


def build_model():
    raise ValueError("build_model fails on purpose")


def build_optimizer():
    raise AssertionError("never called")


def compute_loss(model, batch):
    raise AssertionError("never called")
'''


def spawned_pids(workdir) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for event in read_events(workdir):
        cause = event.get("cause") or ""
        if cause.startswith("spawned pid "):
            pids.setdefault(event["task"], []).append(int(cause.split()[-1]))
    return pids


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped, and its state in /proc/PID/stat is Z.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:
            return stream.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.timeout(420)
def test_crashed_coordinator_leaves_no_servers(tmp_path, monkeypatch):
    (tmp_path / "crashing_trainer.py").write_text(CRASHING_TRAINER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "cluster": {"chief": 1, "worker": 1, "ps": 1},
        "trainer": {"module": "crashing_trainer", "runner": "custom_loop"},
        "monitoring": {"standby_coordinator": False},
    }))
    workdir = tmp_path / "work"

    code, summary = run_launch(str(spec), workdir, timeout=360)

    output = launch_output(workdir)
    pids = spawned_pids(workdir)
    assert set(pids) == {"ps:0", "worker:0", "chief:0"}, output
    for task, task_pids in pids.items():
        for pid in task_pids:
            assert not process_alive(pid), f"{task} (pid {pid}) outlived the launch"
    with open(workdir / "cluster.json", encoding="utf-8") as stream:
        jobs = json.load(stream)["cluster"]
    for address in jobs["ps"] + jobs["worker"]:
        assert not port_accepts(address, timeout=0.5), f"{address} still accepts connections"

    # A permanent coordinator exit ends the launch with the coordinator's own code.
    assert code == ExitCode.FAILED, output
    assert summary["completed"] is False
    assert summary["exit_code"] == ExitCode.FAILED
    assert summary["message"].startswith("Task chief:0 exited with FAILED, which is permanent for job chief")
    assert "Traceback" not in output.split("Last log line")[0]
