"""`tfps-ha status` and `tfps-ha report` on hand-built job folders and on a real finished run."""

from __future__ import annotations

import json

import pytest

from launch_helpers import SPECS, run_launch
from observe_helpers import JobFolder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def finished_job(tmp_path) -> JobFolder:
    job = JobFolder(tmp_path / "job").cluster()
    job.start_tasks(0.0)
    job.kill_and_restart(5.0, "worker:1", 0)
    job.progress(8.0, 300, rate=20.0)
    job.heartbeat(9.0, 300, target=300, phase="done")
    job.event(9.5, "chief:0", 0, "SUCCEEDED", "target reached", exit_code=0)
    job.checkpoint_state(9.0, [200, 300])
    job.summary(True, 300, 0, "Training reached step 300.", target=300)
    return job


def test_status_text(run_cli, finished_job):
    result = run_cli("status", finished_job.path)
    lines = result.stdout.splitlines()

    assert result.returncode == 0, result.stderr
    assert lines[0] == f"Job in {finished_job.path}: completed (exit 0 OK). Training reached step 300."
    assert lines[1].startswith("Progress: step 300/300 (100%), 0.0 steps/s, loss 0.5000; heartbeat ")
    assert lines[1].endswith("(phase done); restarts 1, chaos kills 1.")
    assert lines[2].startswith("Checkpoint: step 300, saved ")
    assert lines[3] == "Leader: no lease file (epoch 1); failovers 0."
    assert lines[4] == "Tasks:"
    assert lines[5].split()[:2] == ["chief:0", "SUCCEEDED"]
    assert "restarts 1 (chaos SIGKILL 1)" in lines[8]


def test_status_json(run_cli, finished_job):
    result = run_cli("status", finished_job.path, "--json")
    status = json.loads(result.stdout)

    assert result.returncode == 0, result.stderr
    assert status["job_state"] == "completed"
    assert status["restarts"] == {"chief:0": 0, "ps:0": 0, "worker:0": 0, "worker:1": 1}
    assert status["checkpoint"]["step"] == 300


@pytest.mark.parametrize("command", ["status", "report"])
def test_missing_workdir_usage_error(run_cli, tmp_path, command):
    result = run_cli(command, str(tmp_path / "nowhere"))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tfps-ha: error: workdir '{tmp_path / 'nowhere'}' not found; expected the working folder of a "
        "launch (its --workdir)"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["status", "report"])
def test_empty_workdir_usage_error(run_cli, tmp_path, command):
    (tmp_path / "empty").mkdir()

    result = run_cli(command, str(tmp_path / "empty"))

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "contains no job files" in result.stderr


def test_report_writes_png(run_cli, finished_job, tmp_path):
    out = tmp_path / "run.png"

    result = run_cli("report", finished_job.path, "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Wrote {out}."
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_report_default_out_and_missing_folder(run_cli, finished_job, tmp_path):
    default = run_cli("report", finished_job.path)
    missing = run_cli("report", finished_job.path, "--out", str(tmp_path / "no" / "run.png"))

    assert default.returncode == 0, default.stderr
    assert (finished_job.root / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert missing.returncode == 2
    assert f"--out: folder '{tmp_path / 'no'}' not found" in missing.stderr


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real digits launch to step 200 with worker:0 killed at step 50."""
    workdir = tmp_path_factory.mktemp("real_run")
    code, summary = run_launch(f"{SPECS}/local.yaml", workdir, "--steps", "200", "--chaos", "worker:0@step=50")
    assert code == 0, f"launch failed with {code}; see {workdir}/launch.out"
    return workdir, summary


@pytest.mark.slow
def test_status_of_real_run(run_cli, real_run):
    workdir, summary = real_run

    result = run_cli("status", str(workdir), "--json")
    status = json.loads(result.stdout)

    assert result.returncode == 0, result.stderr
    assert status["job_state"] == "completed"
    assert status["step"] == summary["final_step"] == 200
    assert status["restarts"]["worker:0"] == summary["restarts"]["worker:0"] == 1
    assert status["tasks"]["worker:0"]["restarts_by_cause"] == {"chaos SIGKILL": 1}
    assert status["chaos_kills"] == 1
    assert status["checkpoint"]["step"] == 200
    assert status["failovers"] == summary["failovers"]


@pytest.mark.slow
def test_report_of_real_run(run_cli, real_run, tmp_path):
    workdir, _ = real_run
    out = tmp_path / "real.png"

    result = run_cli("report", str(workdir), "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_SIGNATURE
