"""Chaos: kill each role mid-run with `--chaos` and check the job still finishes exactly."""

from __future__ import annotations

import pytest

from launch_helpers import launch_output, read_events, run_launch, write_spec
from tfps_ha.exit_codes import ExitCode

pytestmark = pytest.mark.slow


def test_kill_worker_ps_and_coordinator(tmp_path):
    workdir = tmp_path / "work"
    code, summary = run_launch(write_spec(tmp_path), workdir,
                               "--chaos", "worker:0@step=40,ps:0@step=120,chief@step=200")

    assert code == 0, launch_output(workdir)
    assert summary["completed"] is True
    assert summary["final_step"] == 600
    assert summary["metrics"]["heldout_accuracy"] >= 0.95
    assert summary["restarts"]["worker:0"] >= 1
    assert summary["restarts"]["ps:0"] >= 1
    assert summary["restarts"]["chief:0"] >= 2
    assert summary["lost_steps"] <= 50
    assert [item["task"] for item in summary["recoveries"]] == ["worker:0", "ps:0", "chief:0"]
    for item in summary["recoveries"]:
        assert item.get("recovery_seconds") is not None, item


def test_kill_ps_twice_custom_loop(tmp_path):
    spec = write_spec(tmp_path, "local_4w_2ps.yaml", training={"steps": 300, "checkpoint_every_steps": 50})
    workdir = tmp_path / "work"

    code, summary = run_launch(spec, workdir, "--chaos", "ps:1@step=60,ps:0@step=180")

    assert code == 0, launch_output(workdir)
    assert summary["final_step"] == 300
    assert summary["restarts"]["ps:0"] == 1
    assert summary["restarts"]["ps:1"] == 1
    assert summary["lost_steps"] <= 2 * 50


def test_restart_budget_spent_stops_job(tmp_path):
    spec = write_spec(tmp_path, restart={"worker": {"max_restarts_per_task": 0}})
    workdir = tmp_path / "work"

    code, summary = run_launch(spec, workdir, "--chaos", "worker:1@step=70")

    output = launch_output(workdir)
    assert code == ExitCode.RESTART_BUDGET_SPENT, output
    assert summary["completed"] is False
    assert "Task worker:1 exited with signal 9 after 1 attempts" in output
    assert "restart budget of 0 restarts is spent" in output
    states = [(event["task"], event["state"]) for event in read_events(workdir)]
    assert ("worker:1", "GAVE_UP") in states
    assert ("ps:0", "STOPPED") in states
    saved = [path.name for path in (workdir / "backup" / "chief").glob("ckpt-*.index")]
    assert saved, "the checkpoints must stay after the job gives up"
