"""Chaos: kill each role mid-run with `--chaos` and check the job still finishes exactly."""

from __future__ import annotations

import json

import pytest

from launch_helpers import launch_output, read_events, run_launch, write_spec
from tfps_ha.exit_codes import ExitCode

pytestmark = pytest.mark.slow


def chief_log(workdir, attempt: int) -> str:
    with open(workdir / "logs" / "chief_0" / f"attempt_{attempt}.log", encoding="utf-8", errors="replace") as stream:
        return stream.read()


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
    assert summary["failovers"] >= 2
    assert summary["lost_steps"] <= 50
    assert [item["task"] for item in summary["recoveries"]] == ["worker:0", "ps:0", "chief:0"]
    for item in summary["recoveries"]:
        assert item.get("recovery_seconds") is not None, item


def test_coordinator_kill_without_standby(tmp_path):
    spec = write_spec(tmp_path, monitoring={"standby_coordinator": False}, training={"steps": 300})
    workdir = tmp_path / "work"

    code, summary = run_launch(spec, workdir, "--chaos", "chief@step=120")

    assert code == 0, launch_output(workdir)
    assert summary["final_step"] == 300
    assert summary["restarts"]["chief:0"] == 1
    assert summary["failovers"] == 0
    roles = {event.get("role") for event in read_events(workdir) if event["task"] == "chief:0"}
    assert "standby" not in roles


def test_zombie_coordinator_save_rejected(tmp_path):
    workdir = tmp_path / "work"

    code, summary = run_launch(write_spec(tmp_path), workdir, "--chaos", "chief@step=200:stop")

    assert code == 0, launch_output(workdir)
    assert summary["final_step"] == 600
    assert summary["metrics"]["heldout_accuracy"] >= 0.95
    assert summary["failovers"] == 1
    assert summary["fenced_exits"] == 1
    zombie = [event for event in read_events(workdir) if event["task"] == "chief:0" and event["attempt"] == 0]
    assert [event["state"] for event in zombie][-2:] == ["SUPERSEDED", "STOPPED"]
    assert zombie[-1]["exit_code"] == ExitCode.LEADERSHIP_LOST
    log = chief_log(workdir, 0)
    assert "rejected: 'chief:0 attempt 0" in log
    assert "lost leadership of epoch 1" in log
    with open(workdir / "last_checkpoint.json", encoding="utf-8") as stream:
        last = json.load(stream)
    assert last["step"] == 600
    assert last["leader_epoch"] >= 2


def test_kill_worker_repeatedly(tmp_path):
    plan = ",".join(f"worker:{step // 60 % 2}@step={step}" for step in range(60, 600, 60))
    workdir = tmp_path / "work"

    code, summary = run_launch(write_spec(tmp_path), workdir, "--chaos", plan)

    assert code == 0, launch_output(workdir)
    assert summary["final_step"] == 600
    assert summary["metrics"]["heldout_accuracy"] >= 0.95
    worker_kills = [item for item in summary["recoveries"] if item["task"].startswith("worker")]
    assert len(worker_kills) >= 7
    assert summary["restarts"]["worker:0"] + summary["restarts"]["worker:1"] == len(worker_kills)
    assert summary["restarts"]["chief:0"] == 0
    assert summary["lost_steps"] == 0


def test_sigterm_coordinator_resumes_exactly(tmp_path):
    spec = write_spec(tmp_path, "local_4w_2ps.yaml", training={"steps": 300, "checkpoint_every_steps": 100})
    workdir = tmp_path / "work"

    code, summary = run_launch(spec, workdir, "--chaos", "chief@step=150:term")

    assert code == 0, launch_output(workdir)
    assert summary["final_step"] == 300
    assert summary["failovers"] == 1
    assert summary["lost_steps"] == 0
    first = chief_log(workdir, 0)
    assert "stops scheduling and saves a checkpoint" in first
    saved = [line for line in first.splitlines() if "Saved checkpoint" in line][-1]
    saved_step = int(saved.rsplit("at step ", 1)[1].rstrip("."))
    assert saved_step % 100 != 0, "the SIGTERM save must come between interval saves"
    events = read_events(workdir)
    first_exits = [event["exit_code"] for event in events if event["task"] == "chief:0" and event["attempt"] == 0]
    assert ExitCode.PREEMPTED in first_exits
    assert f"Restored checkpoint {workdir}/checkpoints/ckpt-{saved_step}" in chief_log(workdir, 1)


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
