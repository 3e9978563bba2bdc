"""Liveness and readiness verdicts over statuses read from hand-built job folders."""

from __future__ import annotations

from observe_helpers import T0, JobFolder
from tfps_ha.observe.health import check_health, check_readiness
from tfps_ha.observe.status import WorkdirStatus
from tfps_ha.spec import parse_spec

SPEC = parse_spec(
    "cluster: {chief: 1, worker: 2, ps: 1}\ntrainer: {module: tfps_ha.examples.digits}\n"
    "training: {steps: 600, steps_per_execution: 10, checkpoint_every_steps: 50}\n"
    "startup_timeout_seconds: 20\n"
    "monitoring: {heartbeat_timeout_seconds: 10, progress_timeout_seconds: 30}\n")


def training_job(tmp_path) -> JobFolder:
    job = JobFolder(tmp_path / "job").cluster()
    job.start_tasks(0.0)
    job.progress(8.0, 40)
    job.progress(9.0, 50)
    job.heartbeat(10.0, 50)
    return job


def health_at(job: JobFolder, seconds: float) -> tuple[bool, str]:
    return check_health(WorkdirStatus(job.path, SPEC).read(now=T0 + seconds), SPEC)


def test_health_training_is_ok(tmp_path):
    passed, reason = health_at(training_job(tmp_path), 11.0)

    assert passed, reason
    assert reason == "step 50, heartbeat 1 s old"


def test_health_stale_heartbeat_fails(tmp_path):
    passed, reason = health_at(training_job(tmp_path), 25.0)

    assert not passed
    assert "heartbeat is 15 s old" in reason
    assert "heartbeat_timeout_seconds 10" in reason


def test_health_stalled_step_fails(tmp_path):
    job = training_job(tmp_path)
    for second in range(10, 45, 5):
        job.progress(second, 50)
    job.heartbeat(44.0, 50)

    passed, reason = health_at(job, 45.0)

    assert not passed
    assert "step 50 has not advanced for 36 s" in reason


def test_health_stalled_while_worker_down_is_ok(tmp_path):
    job = training_job(tmp_path)
    job.event(12.0, "worker:1", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(12.0, "worker:1", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")
    job.heartbeat(44.0, 50)

    passed, reason = health_at(job, 45.0)

    assert passed, reason


def test_health_new_coordinator_gets_startup_allowance(tmp_path):
    job = training_job(tmp_path)
    job.kill_and_restart(12.0, "chief:0", 0, restart_after=1.0, up_after=0.0)

    starting = health_at(job, 30.0)
    overdue = health_at(job, 45.0)

    assert starting[0], starting[1]
    assert starting[1].startswith("starting")
    assert not overdue[0]
    assert "no coordinator heartbeat 32 s after the coordinator started (allowed 30 s)" in overdue[1]


def test_health_completed_and_failed(tmp_path):
    done = JobFolder(tmp_path / "done").cluster()
    done.start_tasks(0.0)
    done.summary(True, 600, 0, "Training reached step 600.")
    failed = JobFolder(tmp_path / "failed").cluster()
    failed.start_tasks(0.0)
    failed.summary(False, 10, 3, "Task ps:0 exited with signal 9 on attempt 6/6.")

    done_verdict = health_at(done, 1000.0)
    failed_verdict = health_at(failed, 1000.0)

    assert done_verdict == (True, "job completed at step 600")
    assert failed_verdict[0] is False
    assert failed_verdict[1] == "job ended (RESTART_BUDGET_SPENT): Task ps:0 exited with signal 9 on attempt 6/6."


def test_readiness_all_up(tmp_path):
    status = WorkdirStatus(training_job(tmp_path).path).read(now=T0 + 11.0)

    assert check_readiness(status, min_workers=2) == (True, "1 PS and 2 of 2 workers running")


def test_readiness_ps_down(tmp_path):
    job = training_job(tmp_path)
    job.event(12.0, "ps:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(12.0, "ps:0", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")

    passed, reason = check_readiness(WorkdirStatus(job.path).read(now=T0 + 13.0))

    assert not passed
    assert reason == "PS not running: ps:0 BACKOFF"


def test_readiness_too_few_workers(tmp_path):
    job = training_job(tmp_path)
    job.event(12.0, "worker:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(12.0, "worker:0", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")
    status = WorkdirStatus(job.path).read(now=T0 + 13.0)

    assert check_readiness(status, min_workers=1)[0] is True
    assert check_readiness(status, min_workers=2) == (
        False, "1 of 2 workers running; at least 2 required")


def test_readiness_before_any_task(tmp_path):
    job = JobFolder(tmp_path / "empty")
    job.write_json("heartbeat.json", {})

    passed, reason = check_readiness(WorkdirStatus(job.path).read())

    assert not passed
    assert "no PS task is known yet" in reason
