"""Helpers for tests that run `tfps-ha launch` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = os.path.join(REPO, "cluster_specs")


def write_spec(folder, base: str = "local.yaml", **overrides) -> str:
    """Writes a copy of a bundled spec with top-level keys merged; returns its path."""
    with open(os.path.join(SPECS, base), encoding="utf-8") as stream:
        document = yaml.safe_load(stream)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    path = os.path.join(str(folder), f"spec_{len(os.listdir(str(folder)))}.yaml")
    with open(path, "w", encoding="utf-8") as stream:
        yaml.safe_dump(document, stream)
    return path


def start_launch(spec: str, workdir, *extra: str) -> subprocess.Popen:
    """Starts `tfps-ha launch` in its own session; output goes to workdir/launch.out."""
    os.makedirs(str(workdir), exist_ok=True)
    out = open(os.path.join(str(workdir), "launch.out"), "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tfps_ha", "launch", spec, "--workdir", str(workdir), *extra],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def run_launch(spec: str, workdir, *extra: str, timeout: float = 420) -> tuple[int, dict]:
    """Runs a launch to its end; returns the exit code and summary.json."""
    process = start_launch(spec, workdir, *extra)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"launch did not finish within {timeout} s; see {workdir}/launch.out")
    return code, read_summary(workdir)


def read_summary(workdir) -> dict:
    path = os.path.join(str(workdir), "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def launch_output(workdir) -> str:
    with open(os.path.join(str(workdir), "launch.out"), encoding="utf-8", errors="replace") as stream:
        return stream.read()


def wait_for_step(workdir, step: int, process: subprocess.Popen, timeout: float = 180) -> int:
    """Waits until the heartbeat reports at least `step`; returns the step seen.

    Raises:
      AssertionError: The deadline passed or the launch exited first.
    """
    path = os.path.join(str(workdir), "heartbeat.json")
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"launch exited with {process.returncode} before step {step}; "
                                 f"last heartbeat step {seen}")
        try:
            with open(path, encoding="utf-8") as stream:
                seen = int(json.load(stream)["step"])
        except (OSError, ValueError, KeyError):
            pass
        if seen >= step:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"heartbeat did not reach step {step} within {timeout} s; last step {seen}")


def read_events(workdir) -> list[dict]:
    path = os.path.join(str(workdir), "events.jsonl")
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]
