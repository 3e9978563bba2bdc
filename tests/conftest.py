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
