"""Keras 3 without tf-keras: every entry point stops with exit 2 before any server starts.

The children run in real environments that lack tf-keras: a site-packages
copy without it (`python -S`), or a start-up finder that blocks or breaks the
import. `-X importtime` shows whether a child imported TensorFlow; a PS or
worker cannot start its server without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import portpicker
import pytest

from import_blocker import blocker_env, site_without, split_importtime
from tfps_ha.exit_codes import ExitCode
from tfps_ha.net import port_accepts
from tfps_ha.tf_env import installed_version, is_keras_3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "cluster_specs", "local.yaml")
# Generous, because the broken-import case imports TensorFlow on a loaded machine.
CHILD_TIMEOUT_SECONDS = 120

TF_VERSION = importlib.metadata.version("tensorflow")
TF_MINOR = ".".join(TF_VERSION.split(".")[:2])
KERAS_VERSION = installed_version("keras") or ""
needs_keras_3 = pytest.mark.skipif(not is_keras_3(KERAS_VERSION), reason="Keras 3 is not installed")

MISSING_LINE = (
    "tf-keras is not installed (no module named 'tf_keras'), so tf.keras would be Keras 3 "
    f"(keras {KERAS_VERSION} is installed), which does not support ParameterServerStrategy; "
    f"install it with: pip install 'tf-keras~={TF_MINOR}.0'"
)


def cluster_tf_config(task_type: str) -> tuple[str, dict[str, str]]:
    """Returns a TF_CONFIG for `task_type`:0 on free loopback ports, and the addresses by task."""
    addresses = {job: f"127.0.0.1:{portpicker.pick_unused_port()}" for job in ("chief", "worker", "ps")}
    config = {"cluster": {job: [address] for job, address in addresses.items()},
              "task": {"type": task_type, "index": 0}}
    return json.dumps(config), addresses


def run_child(args: list[str], env: dict, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_flags, "-X", "importtime", "-m", "tfps_ha", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)


@pytest.fixture
def without_tf_keras(tmp_path):
    """Returns `(env, python_flags)` for a child whose environment has no tf-keras installed."""
    if not is_keras_3(KERAS_VERSION):
        pytest.skip(f"Keras 3 is not installed (keras {KERAS_VERSION!r})")
    shadow = site_without(tmp_path, ("tf_keras",))
    env = dict(os.environ, PYTHONPATH=str(shadow), TFPS_HA_LOG_LEVEL="INFO")
    env.pop("TF_CONFIG", None)
    return env, ("-S",)


# ------------------------------------------------------------ not installed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("job", ["ps", "worker"])
def test_server_task_without_tf_keras(without_tf_keras, job):
    env, flags = without_tf_keras
    env["TF_CONFIG"], addresses = cluster_tf_config(job)

    result = run_child(["task"], env, flags)

    imported, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert lines == [f"tfps-ha: error: {MISSING_LINE}"]
    assert "tensorflow" not in imported
    assert not port_accepts(addresses[job], timeout=0.5)


@pytest.mark.timeout(60)
def test_chief_task_without_tf_keras(without_tf_keras, tmp_path):
    env, flags = without_tf_keras
    env["TF_CONFIG"], _ = cluster_tf_config("chief")
    workdir = tmp_path / "work"

    result = run_child(["task", "--spec", SPEC, "--workdir", str(workdir)], env, flags)

    imported, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].endswith(MISSING_LINE)
    assert "tensorflow" not in imported
    assert not (workdir / "heartbeat.json").exists()


@pytest.mark.timeout(60)
def test_launch_without_tf_keras(without_tf_keras, tmp_path):
    env, flags = without_tf_keras
    workdir = tmp_path / "work"

    result = run_child(["launch", SPEC, "--workdir", str(workdir)], env, flags)

    imported, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert lines == [f"tfps-ha: error: {MISSING_LINE}"]
    assert "tensorflow" not in imported
    assert "Launching" not in result.stdout
    assert not (workdir / "logs").exists()
    assert not (workdir / "cluster.json").exists()


@pytest.mark.timeout(60)
def test_launch_without_tensorflow(tmp_path):
    shadow = site_without(tmp_path, ("tensorflow", "tf_keras"))
    env = dict(os.environ, PYTHONPATH=str(shadow))

    result = run_child(["launch", SPEC, "--workdir", str(tmp_path / "work")], env, ("-S",))

    _, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "tfps-ha: error: tensorflow cannot be imported (no module named 'tensorflow'); install it "
        "together with tf-keras of the same minor version: pip install 'tensorflow")
    assert "'tf-keras" in lines[0]


# ------------------------------------------------------ installed but broken


@needs_keras_3
@pytest.mark.timeout(60)
def test_ps_task_tf_keras_blocked(tmp_path):
    env = blocker_env(tmp_path, blocked=("tf_keras",))
    env["TF_CONFIG"], addresses = cluster_tf_config("ps")

    result = run_child(["task"], env)

    imported, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert lines == [
        f"tfps-ha: error: tf-keras {importlib.metadata.version('tf-keras')} is installed but the module "
        "tf_keras cannot be imported (No module named 'tf_keras' (blocked by the test)), so tf.keras "
        f"would be Keras 3 (keras {KERAS_VERSION} is installed), which does not support "
        f"ParameterServerStrategy; reinstall it with: pip install --force-reinstall 'tf-keras~={TF_MINOR}.0'"
    ]
    assert "tensorflow" not in imported
    assert not port_accepts(addresses["ps"], timeout=0.5)


@pytest.mark.timeout(CHILD_TIMEOUT_SECONDS + 30)
def test_worker_task_tf_keras_import_fails(tmp_path):
    env = blocker_env(tmp_path, broken=("tf_keras",))
    env["TF_CONFIG"], addresses = cluster_tf_config("worker")

    result = run_child(["task"], env)

    _, lines = split_importtime(result.stderr)
    errors = [line for line in lines if line.startswith("tfps-ha: error:")]
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert errors == [
        f"tfps-ha: error: tf-keras {importlib.metadata.version('tf-keras')} is installed but fails to "
        "import (tf_keras is broken on purpose by the test's sitecustomize), and Keras 3 does not "
        "support ParameterServerStrategy; reinstall it with: pip install --force-reinstall "
        f"'tf-keras~={TF_MINOR}.0'"
    ]
    assert "Traceback" not in result.stderr
    assert "is serving" not in result.stderr
    assert not port_accepts(addresses["worker"], timeout=0.5)


# ------------------------------------------------------ TF_USE_LEGACY_KERAS


@pytest.mark.timeout(60)
def test_launch_legacy_keras_disabled(tmp_path):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="0")

    result = run_child(["launch", SPEC, "--workdir", str(tmp_path / "work")], env)

    imported, lines = split_importtime(result.stderr)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert lines == [
        "tfps-ha: error: TF_USE_LEGACY_KERAS is '0'; expected 1, because Keras 3 does not support "
        "ParameterServerStrategy. Unset it or set it to 1."
    ]
    assert "tensorflow" not in imported
