"""End-to-end tests of `tfps-ha launch` with `strategy: multi_worker_mirrored` on loopback.

Each test runs two real TensorFlow worker processes for about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from launch_helpers import (SPECS, launch_output, read_events, read_summary, run_launch, start_launch,
                            wait_for_step, write_spec)
from tfps_ha.exit_codes import ExitCode

pytestmark = pytest.mark.slow

SPEC = os.path.join(SPECS, "local_mwms.yaml")


def test_worker_kill_restarts_group_and_completes(tmp_path):
    workdir = tmp_path / "work"

    code, summary = run_launch(SPEC, workdir, "--chaos", "worker:1@step=60")

    assert code == 0, launch_output(workdir)
    assert summary["completed"] is True
    assert summary["final_step"] == 600
    assert summary["target_steps"] == 600
    assert summary["metrics"]["heldout_accuracy"] >= 0.95
    assert summary["restarts"] == {"worker:0": 1, "worker:1": 1}
    assert summary["failovers"] == 0
    assert summary["lost_steps"] >= 0

    recoveries = summary["recoveries"]
    assert len(recoveries) == 1
    assert recoveries[0]["task"] == "worker:1"
    assert recoveries[0]["signal"] == "SIGKILL"
    assert recoveries[0]["step"] >= 60
    assert recoveries[0]["recovery_seconds"] > 0

    events = read_events(workdir)
    killed = [e for e in events if e["task"] == "worker:1" and e["state"] == "FAILED"]
    assert killed[0]["cause"] == "chaos SIGKILL"
    restarted = [e for e in events if e["task"] == "worker:0" and e["state"] == "BACKOFF"]
    assert restarted[0]["cause"] == "group restart after worker:1 exited with signal 9"
    for task in ("worker_0", "worker_1"):
        assert os.path.exists(workdir / "logs" / task / "attempt_1.log")

    with open(workdir / "result.json", encoding="utf-8") as stream:
        result = json.load(stream)
    assert result["resumed_from_step"] > 0
    assert result["resumed_from_step"] % 50 == 0
    assert os.path.isdir(workdir / "backup" / "chief")


def test_sigterm_saves_and_resumes(tmp_path):
    spec = write_spec(tmp_path, "local_mwms.yaml", training={"steps": 300})
    workdir = tmp_path / "work"
    process = start_launch(spec, workdir)
    wait_for_step(workdir, 120, process)

    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    summary = read_summary(workdir)
    assert code == ExitCode.PREEMPTED, launch_output(workdir)
    assert summary["completed"] is False
    assert "the worker group saved a backup and stopped" in summary["message"]
    with open(workdir / "result.json", encoding="utf-8") as stream:
        result = json.load(stream)
    assert result["exit_reason"] == "PREEMPTED"
    assert result["checkpoint_step"] == result["final_step"]
    saved_step = result["final_step"]
    assert saved_step >= 120

    code, summary = run_launch(spec, workdir)
    assert code == 0, launch_output(workdir)
    assert summary["resumed_from_step"] == saved_step
    assert summary["final_step"] == 300
    assert summary["lost_steps"] == 0


def _thread_counts(workdir) -> list[int]:
    pids = [int(event["cause"].split()[-1]) for event in read_events(workdir)
            if event["state"] == "STARTING" and event["cause"].startswith("spawned pid")]
    return [len(os.listdir(f"/proc/{pid}/task")) for pid in pids]


def test_worker_threads_stay_bounded(tmp_path):
    # TensorFlow 2.21 keeps a sleeping thread for every collective op that has
    # a timeout. With a timeout on every op, the workers held thousands of
    # threads after a few hundred steps.
    spec = write_spec(tmp_path, "local_mwms.yaml", training={"steps": 800})
    workdir = tmp_path / "work"
    process = start_launch(spec, workdir)
    try:
        wait_for_step(workdir, 150, process)
        early = _thread_counts(workdir)
        wait_for_step(workdir, 550, process)
        late = _thread_counts(workdir)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

    assert len(early) == len(late) == 2
    for before, after in zip(early, late):
        assert after <= before + 100, f"worker threads grew from {early} to {late}"
