"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Generous, so a loaded machine does not fail the suite. The commands that
# parse a spec normally finish in well under a second.
CLI_TIMEOUT_SECONDS = 30


@pytest.fixture
def run_cli():
    """Returns a function that runs `python -m tfps_ha ARGS...` and returns the CompletedProcess."""

    def run(*args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, TFPS_HA_LOG_LEVEL="INFO")
        env.pop("TF_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "tfps_ha", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
        )

    return run


def pytest_configure(config):
    """Sizes TensorFlow's inter-op thread pool before any test runs a TensorFlow op.

    `tfps_ha.testing.in_process_cluster` needs at least workers + 1 inter-op
    threads, and TensorFlow fixes the pool at its first op. Without this, a
    test that ran any op earlier in the same process would make every later
    in-process cluster fail.
    """
    from tfps_ha.tf_env import import_tensorflow

    tf, _ = import_tensorflow()
    tf.config.threading.set_inter_op_parallelism_threads(max(8, os.cpu_count() or 1))
