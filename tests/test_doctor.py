"""Tests of `tfps-ha doctor`: each check on real specs, ports, folders and environments."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import socket
import subprocess
import sys

import portpicker
import pytest
import yaml

from import_blocker import site_without, split_importtime
from tfps_ha.doctor import Finding, Level, check_legacy_keras_variable, check_restart, diagnose
from tfps_ha.spec import load_spec
from tfps_ha.tf_env import installed_version, is_keras_3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An address of TEST-NET-1 (RFC 5737), which no machine of a test run has. Binding
# to it fails locally with EADDRNOTAVAIL; nothing is sent to it.
FOREIGN_HOST = "192.0.2.10"


def write_spec(tmp_path, **overrides) -> str:
    """Writes a valid custom-loop spec with top-level keys replaced; returns its path."""
    document = {
        "cluster": {"chief": 1, "worker": 2, "ps": 1},
        "trainer": {"module": "tfps_ha.examples.ctr", "runner": "custom_loop"},
        "workdir": str(tmp_path / "work"),
        **overrides,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def findings_of(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


def levels(findings: list[Finding]) -> set[Level]:
    return {finding.level for finding in findings}


def run_doctor_cli(*args: str, env: dict | None = None, python_flags: tuple[str, ...] = ()):
    child_env = dict(os.environ if env is None else env)
    child_env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, *python_flags, "-X", "importtime", "-m", "tfps_ha", "doctor", *args],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def listener():
    """Returns a function that listens on a free 127.0.0.1 port and returns the port."""
    sockets = []

    def listen() -> int:
        port = portpicker.pick_unused_port()
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        sockets.append(sock)
        return port

    yield listen
    for sock in sockets:
        sock.close()


# ------------------------------------------------------------------------ CLI


@pytest.mark.timeout(30)
def test_cli_bundled_spec_passes(tmp_path):
    result = run_doctor_cli(os.path.join("cluster_specs", "local.yaml"), "--workdir", str(tmp_path / "w"))

    imported, stderr_lines = split_importtime(result.stderr)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    assert stderr_lines == []
    assert lines[0].startswith("ok      spec: local.yaml: valid cluster spec 'digits-local'")
    assert [line for line in lines if line.startswith("error")] == []
    assert lines[-1] == "doctor: 0 errors, 1 warning, 11 ok."
    assert "tensorflow" not in imported


@pytest.mark.timeout(30)
def test_cli_every_line_has_level(tmp_path):
    result = run_doctor_cli(os.path.join("cluster_specs", "local_4w_2ps.yaml"), "--workdir", str(tmp_path))

    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    for line in lines[:-1]:
        level, _, rest = line.partition(" ")
        assert level in ("ok", "warning", "error"), line
        assert ": " in rest, line
    for line in lines:
        if line.startswith("warning"):
            assert " Fix: " in line, line


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args", [(), ("a.yaml", "b.yaml"), ("a.yaml", "--bogus")], ids=["no_spec", "two_specs", "unknown_flag"])
def test_cli_usage_error(args):
    result = run_doctor_cli(*args)

    _, lines = split_importtime(result.stderr)
    assert result.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("tfps-ha: error: tfps-ha")
    assert result.stdout == ""


@pytest.mark.timeout(30)
def test_cli_invalid_spec_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster: {chief: 1, worker: ['localhost:2222', 'localhost:0'], ps: 1}\ntrainer: {module: m}\n")

    result = run_doctor_cli(str(path))

    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert lines[0] == (
        "error   spec: bad.yaml: cluster.worker[1]: received 'localhost:0'; expected a port in 1..65535. "
        f"Fix: correct that value, then run 'tfps-ha validate {path}' again.")
    assert any(line.startswith("ok      tensorflow: ") for line in lines), lines
    assert lines[-1].startswith("doctor: 1 error, ")


@pytest.mark.timeout(30)
def test_cli_missing_spec_file(tmp_path):
    path = tmp_path / "absent.yaml"

    result = run_doctor_cli(str(path))

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"error   spec: {path}: cannot read the cluster spec: No such file or directory. "
        "Fix: pass the path of a readable UTF-8 YAML file.")


@pytest.mark.timeout(30)
def test_cli_port_in_use_exits_1(tmp_path, listener):
    port = listener()
    spec = write_spec(tmp_path, cluster={"chief": 1, "worker": 1, "ps": [f"127.0.0.1:{port}"]})

    result = run_doctor_cli(spec)

    assert result.returncode == 1
    assert (f"error   port: ps:0 cannot listen on 127.0.0.1:{port}: another process uses the port. "
            f"Fix: stop that process (see 'ss -ltnp sport = :{port}') or give ps:0 another port in the spec."
            ) in result.stdout.splitlines()


@pytest.mark.skipif(not is_keras_3(installed_version("keras")), reason="Keras 3 is not installed")
@pytest.mark.timeout(30)
def test_cli_without_tf_keras(tmp_path):
    keras_version = installed_version("keras")
    tf_minor = ".".join(importlib.metadata.version("tensorflow").split(".")[:2])
    shadow = site_without(tmp_path, ("tf_keras",))
    env = dict(os.environ, PYTHONPATH=str(shadow))

    result = run_doctor_cli(os.path.join("cluster_specs", "local.yaml"), "--workdir", str(tmp_path),
                            env=env, python_flags=("-S",))

    assert result.returncode == 1, result.stdout
    assert (
        "error   tf-keras: tf-keras is not installed, so tf.keras would be Keras 3 "
        f"(keras {keras_version} is installed), which does not support ParameterServerStrategy. "
        f"Fix: install it: pip install 'tf-keras~={tf_minor}.0'."
    ) in result.stdout.splitlines()
    assert not any(line.startswith("ok      keras:") for line in result.stdout.splitlines())


@pytest.mark.timeout(30)
def test_cli_legacy_keras_variable_zero(tmp_path):
    result = run_doctor_cli(os.path.join("cluster_specs", "local.yaml"), "--workdir", str(tmp_path),
                            env=dict(os.environ, TF_USE_LEGACY_KERAS="0"))

    assert result.returncode == 1
    assert ("error   TF_USE_LEGACY_KERAS: TF_USE_LEGACY_KERAS is '0', which would make tf.keras Keras 3, "
            "and launch rejects it. Fix: unset TF_USE_LEGACY_KERAS or set it to 1.") in result.stdout.splitlines()


# -------------------------------------------------------------------- package


@pytest.mark.parametrize("value", [None, "1", "true", "True"])
def test_legacy_keras_variable_accepted(value):
    assert levels(check_legacy_keras_variable(value)) == {Level.OK}


@pytest.mark.parametrize("value", ["0", "false", "", "yes"])
def test_legacy_keras_variable_rejected(value):
    assert levels(check_legacy_keras_variable(value)) == {Level.ERROR}


def test_trainer_module_missing(tmp_path):
    spec = write_spec(tmp_path, trainer={"module": "no_such_trainer_module", "runner": "custom_loop"})

    (finding,) = findings_of(diagnose(spec), "trainer")

    assert finding.level == Level.ERROR
    assert finding.message == "trainer module no_such_trainer_module cannot be found (no module named 'no_such_trainer_module')."


def test_trainer_parent_package_raises(tmp_path, monkeypatch):
    package = tmp_path / "broken_trainer_package"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the package fails on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = write_spec(tmp_path, trainer={"module": "broken_trainer_package.model", "runner": "custom_loop"})

    (finding,) = findings_of(diagnose(spec), "trainer")

    assert finding.level == Level.ERROR
    assert "(RuntimeError: the package fails on import)" in finding.message


# ---------------------------------------------------------------- threads


def test_threads_at_least_workers_plus_one(tmp_path):
    spec = write_spec(tmp_path, cluster={"chief": 1, "worker": 40, "ps": 1})

    (finding,) = findings_of(diagnose(spec), "threads")

    assert finding.level == Level.OK
    threads = max(41, os.cpu_count() or 1)
    assert finding.message == (
        f"PS and worker servers use {threads} inter-op threads, at least workers + 1 = 41, "
        "so join() cannot deadlock.")


# ------------------------------------------------------------------ ports


def test_listed_free_port_ok(tmp_path):
    port = portpicker.pick_unused_port()
    spec = write_spec(tmp_path, cluster={"chief": 1, "worker": 1, "ps": [f"127.0.0.1:{port}"]})

    findings = findings_of(diagnose(spec), "port")

    assert [finding.level for finding in findings] == [Level.OK, Level.OK]
    assert findings[0].message == f"free on this machine: ps:0 at 127.0.0.1:{port}."


def test_listed_port_in_use_error(tmp_path, listener):
    port = listener()
    spec = write_spec(tmp_path, cluster={"chief": [f"localhost:{port}"], "worker": 1, "ps": 1})

    findings = findings_of(diagnose(spec), "port")

    errors = [finding for finding in findings if finding.level == Level.ERROR]
    assert [finding.message for finding in errors] == [
        f"chief:0 cannot listen on localhost:{port}: another process uses the port."]


def test_listed_foreign_address_warning(tmp_path):
    spec = write_spec(tmp_path, cluster={"chief": 1, "worker": 1, "ps": [f"{FOREIGN_HOST}:2222"]})

    findings = diagnose(spec)

    (port,) = [finding for finding in findings_of(findings, "port") if finding.level != Level.OK]
    assert port.level == Level.WARNING
    assert port.message == (
        f"ps:0 at {FOREIGN_HOST}:2222 is not on this machine ({FOREIGN_HOST} is not an address of this "
        "machine), so 'tfps-ha launch' cannot start it here.")
    (exposure,) = findings_of(findings, "exposure")
    assert exposure.message.startswith(f"servers would listen on {FOREIGN_HOST}, beyond loopback.")


def test_counted_tasks_foreign_host_error(tmp_path):
    spec = write_spec(tmp_path, host=FOREIGN_HOST)

    (finding,) = findings_of(diagnose(spec), "host")

    assert finding.level == Level.ERROR
    assert finding.message == (
        f"counted tasks (1 ps, 2 worker, 1 chief) cannot listen on host {FOREIGN_HOST}: "
        f"{FOREIGN_HOST} is not an address of this machine.")


# --------------------------------------------------------------- exposure


def test_exposure_wildcard_host_warning(tmp_path):
    spec = write_spec(tmp_path, host="0.0.0.0")

    (finding,) = findings_of(diagnose(spec), "exposure")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("servers would listen on 0.0.0.0, beyond loopback. TF gRPC servers are unauthenticated")


def test_exposure_loopback_still_warns(tmp_path):
    (finding,) = findings_of(diagnose(write_spec(tmp_path)), "exposure")

    assert finding.level == Level.WARNING
    assert "listens on 0.0.0.0:PORT whatever host its address names" in finding.message


# ---------------------------------------------------------------- folders


def test_workdir_existing_writable(tmp_path):
    (tmp_path / "work").mkdir()

    (finding,) = findings_of(diagnose(write_spec(tmp_path)), "workdir")

    assert finding.level == Level.OK
    assert finding.message == f"{tmp_path / 'work'} is writable."
    assert os.listdir(tmp_path / "work") == []


def test_workdir_created_later(tmp_path):
    (finding,) = findings_of(diagnose(write_spec(tmp_path, workdir=str(tmp_path / "a" / "b"))), "workdir")

    assert finding.level == Level.OK
    assert finding.message == f"{tmp_path / 'a' / 'b'} does not exist yet; the launch creates it in {tmp_path}, which is writable."
    assert not (tmp_path / "a").exists()


def test_workdir_is_a_file(tmp_path):
    (tmp_path / "work").write_text("not a folder")

    (finding,) = findings_of(diagnose(write_spec(tmp_path)), "workdir")

    assert finding.level == Level.ERROR
    assert finding.message == f"{tmp_path / 'work'} exists but is not a folder."


def test_workdir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")

    (finding,) = findings_of(diagnose(write_spec(tmp_path, workdir=str(tmp_path / "file" / "work"))), "workdir")

    assert finding.level == Level.ERROR
    assert finding.message == f"{tmp_path / 'file' / 'work'} cannot be created: {tmp_path / 'file'} is not a folder."


def test_workdir_flag_overrides_spec(tmp_path):
    (tmp_path / "file").write_text("not a folder")

    (finding,) = findings_of(diagnose(write_spec(tmp_path), workdir=str(tmp_path / "file")), "workdir")

    assert finding.level == Level.ERROR
    assert finding.message == f"{tmp_path / 'file'} exists but is not a folder."


def test_checkpoint_folder_is_a_file(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "checkpoints").write_text("not a folder")

    (finding,) = findings_of(diagnose(write_spec(tmp_path)), "checkpoints")

    assert finding.level == Level.ERROR
    assert finding.message == f"{tmp_path / 'work' / 'checkpoints'} exists but is not a folder."


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_workdir_read_only(tmp_path):
    (tmp_path / "work").mkdir(mode=0o500)

    (finding,) = findings_of(diagnose(write_spec(tmp_path)), "workdir")

    assert finding.level == Level.ERROR
    assert finding.message.startswith(f"{tmp_path / 'work'} is not writable: ")


# ---------------------------------------------------------------- restart


def test_restart_defaults_ok(tmp_path):
    findings = [finding for finding in diagnose(write_spec(tmp_path)) if finding.check.startswith("restart")]

    assert [(finding.level, finding.check) for finding in findings] == [(Level.OK, "restart")]


def test_restart_ps_budget_zero(tmp_path):
    spec = write_spec(tmp_path, restart={"ps": {"max_restarts_per_task": 0}})

    (finding,) = findings_of(diagnose(spec), "restart.ps")

    assert finding.level == Level.WARNING
    assert finding.message == (
        "restart.ps.max_restarts_per_task is 0, so the first PS exit ends the launch, although a "
        "restarted PS costs only a checkpoint restore.")


def test_restart_chief_budget_below_ps(tmp_path):
    spec = write_spec(tmp_path, restart={"chief": {"max_restarts_per_task": 3, "max_restarts_per_job": 3}})

    (finding,) = findings_of(diagnose(spec), "restart.chief")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("the coordinator may restart 3 times, but the PS tasks 5 times")
    assert finding.fix == "set restart.chief.max_restarts_per_task and max_restarts_per_job to at least 5."


def test_restart_zero_backoff(tmp_path):
    spec = write_spec(tmp_path, restart={"worker": {"backoff_initial_seconds": 0}})

    (finding,) = findings_of(diagnose(spec), "restart.worker")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("restart.worker.backoff_initial_seconds is 0")


def test_restart_cap_below_initial(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    policy = dataclasses.replace(spec.restart["ps"], backoff_initial_seconds=8.0, backoff_max_seconds=2.0)
    spec = dataclasses.replace(spec, restart={**spec.restart, "ps": policy})

    (finding,) = findings_of(check_restart(spec), "restart.ps")

    assert finding.level == Level.ERROR
    assert finding.message == "restart.ps.backoff_max_seconds (2) is below backoff_initial_seconds (8)."


def test_restart_cap_below_initial_in_spec(tmp_path):
    spec = write_spec(tmp_path, restart={"ps": {"backoff_initial_seconds": 8, "backoff_max_seconds": 2}})

    (finding,) = findings_of(diagnose(spec), "spec")

    assert finding.level == Level.ERROR
    assert "restart.ps.backoff_max_seconds: received 2.0; expected at least backoff_initial_seconds (8.0)" in finding.message


def test_restart_usage_exit_not_permanent(tmp_path):
    spec = write_spec(tmp_path, restart={"worker": {"permanent_exit_codes": [1]}})

    (finding,) = findings_of(diagnose(spec), "restart.worker")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("restart.worker.permanent_exit_codes lacks 2 (USAGE")


def test_restart_chief_retryable_code_permanent(tmp_path):
    spec = write_spec(tmp_path, restart={"chief": {"permanent_exit_codes": [1, 2, 200]}})

    (finding,) = findings_of(diagnose(spec), "restart.chief")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("restart.chief.permanent_exit_codes lists 200 (CLUSTER_UNAVAILABLE)")


@pytest.mark.timeout(30)
def test_cli_warnings_only_exit_0(tmp_path):
    spec = write_spec(tmp_path, restart={"ps": {"max_restarts_per_task": 0}})

    result = subprocess.run([sys.executable, "-m", "tfps_ha", "doctor", spec], cwd=REPO,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stdout
    assert any(line.startswith("warning restart.ps: ") for line in result.stdout.splitlines())


# ------------------------------------------------------------- monitoring


def monitoring_findings(tmp_path, **monitoring) -> list[Finding]:
    findings = diagnose(write_spec(tmp_path, monitoring=monitoring))
    return [finding for finding in findings if finding.check == "monitoring"]


def test_monitoring_defaults_ok(tmp_path):
    (finding,) = monitoring_findings(tmp_path)

    assert finding.level == Level.OK
    assert finding.message == "deadlines are coherent: heartbeat 30 s, progress 120 s, lease 4 s, start-up 60 s."


def test_monitoring_heartbeat_at_interval_error(tmp_path):
    findings = monitoring_findings(tmp_path, heartbeat_timeout_seconds=1, lease_seconds=0.2,
                                   port_check_interval_seconds=0.2)

    assert [finding.level for finding in findings] == [Level.ERROR]
    assert findings[0].message.startswith(
        "monitoring.heartbeat_timeout_seconds (1 s) is not above the coordinator's heartbeat interval (1 s)")


def test_monitoring_short_heartbeat_warning(tmp_path):
    findings = monitoring_findings(tmp_path, heartbeat_timeout_seconds=5, lease_seconds=2,
                                   port_check_interval_seconds=1)

    assert [finding.level for finding in findings] == [Level.WARNING]
    assert findings[0].message.startswith("monitoring.heartbeat_timeout_seconds is 5 s;")


def test_monitoring_progress_below_heartbeat(tmp_path):
    findings = monitoring_findings(tmp_path, progress_timeout_seconds=20)

    assert [finding.level for finding in findings] == [Level.WARNING]
    assert findings[0].message.startswith(
        "monitoring.progress_timeout_seconds (20 s) is below heartbeat_timeout_seconds (30 s).")


def test_monitoring_lease_not_below_heartbeat(tmp_path):
    findings = monitoring_findings(tmp_path, lease_seconds=30)

    assert [finding.level for finding in findings] == [Level.ERROR]
    assert findings[0].message.startswith(
        "monitoring.lease_seconds (30 s) is not below heartbeat_timeout_seconds (30 s), so a hung leader")
    assert findings[0].fix == "set lease_seconds to at most half of heartbeat_timeout_seconds (15 s)."


def test_monitoring_lease_above_half_heartbeat(tmp_path):
    findings = monitoring_findings(tmp_path, lease_seconds=20)

    assert [finding.level for finding in findings] == [Level.WARNING]
    assert findings[0].message.startswith("monitoring.lease_seconds (20 s) is above half of")


def test_monitoring_lease_ignored_without_standby(tmp_path):
    (finding,) = monitoring_findings(tmp_path, lease_seconds=40, standby_coordinator=False)

    assert finding.level == Level.OK


def test_monitoring_slow_port_detection(tmp_path):
    findings = monitoring_findings(tmp_path, port_check_interval_seconds=10, port_failures_before_dead=3)

    assert [finding.level for finding in findings] == [Level.WARNING]
    assert findings[0].message.startswith(
        "a PS or worker whose port stops answering is marked dead after about 30 s")


def test_startup_deadline_short(tmp_path):
    (finding,) = findings_of(diagnose(write_spec(tmp_path, startup_timeout_seconds=3)), "startup")

    assert finding.level == Level.WARNING
    assert finding.message.startswith("startup_timeout_seconds is 3 s;")


# ------------------------------------------------------------------ output


def test_finding_line_is_one_line():
    finding = Finding(Level.ERROR, "spec", "received 'a\nb'; expected x.", "fix\tit.")

    assert finding.line() == "error   spec: received 'a b'; expected x. Fix: fix it."


def test_finding_line_ok_has_no_fix():
    assert Finding(Level.OK, "threads", "fine.").line() == "ok      threads: fine."
