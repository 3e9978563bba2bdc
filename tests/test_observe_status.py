"""Status read from hand-built job folders in the supervisor's and coordinator's formats."""

from __future__ import annotations

import json
import os

import pytest

from observe_helpers import T0, JobFolder
from tfps_ha.errors import UsageError
from tfps_ha.observe.checkpoint_log import latest_checkpoint, record_checkpoint
from tfps_ha.observe.events import restart_cause_label
from tfps_ha.observe.jsonl import JsonlFollower
from tfps_ha.observe.status import WorkdirStatus, require_job_folder, status_from_workdir, status_to_json


def running_job(tmp_path) -> JobFolder:
    """A job at step 250 after a chaos kill of worker:0 and a PS loss that restarted the coordinator."""
    job = JobFolder(tmp_path / "job").cluster(workers=2, ps=1)
    job.start_tasks(0.0)
    job.kill_and_restart(20.0, "worker:0", 0)
    job.event(30.0, "ps:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(30.0, "ps:0", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")
    job.event(30.1, "chief:0", 0, "FAILED", "ps:0 lost", exit_code=200)
    job.event(30.1, "chief:0", 0, "BACKOFF", "ps:0 lost", exit_code=200)
    job.event(31.0, "ps:0", 1, "STARTING", "spawned pid 400")
    job.event(33.0, "ps:0", 1, "RUNNING", "port accepts connections")
    job.event(33.5, "chief:0", 1, "STARTING", "spawned pid 500")
    job.event(33.5, "chief:0", 1, "RUNNING", "coordinator process started")
    for second, step in enumerate(range(0, 260, 10)):
        job.progress(10.0 + second * 2, step, rate=5.0, epoch=1 if second < 14 else 2)
    job.heartbeat(61.0, 250, target=600, loss=0.25, epoch=2)
    job.checkpoint_state(55.0, [100, 150, 200])
    job.lease(59.0, "chief:0 attempt 1 pid 500 host vm", epoch=2)
    return job


def test_status_running_job_progress(tmp_path):
    job = running_job(tmp_path)
    status = WorkdirStatus(job.path).read(now=T0 + 62.0)

    assert status["job_state"] == "running"
    assert status["completed"] is False
    assert status["step"] == 250
    assert status["target_step"] == 600
    assert status["steps_per_second"] == 5.0
    assert status["eta_seconds"] == pytest.approx(70.0)
    assert status["loss"] == 0.25
    assert status["phase"] == "training"
    assert status["heartbeat_age_seconds"] == pytest.approx(1.0)
    assert status["step_changed_at"] == pytest.approx(T0 + 60.0)
    assert status["launched_at"] == pytest.approx(T0)


def test_status_running_job_tasks(tmp_path):
    status = WorkdirStatus(running_job(tmp_path).path).read(now=T0 + 62.0)
    tasks = status["tasks"]

    assert list(tasks) == ["chief:0", "ps:0", "worker:0", "worker:1"]
    assert tasks["worker:0"]["state"] == "RUNNING"
    assert tasks["worker:0"]["attempt"] == 1
    assert tasks["worker:0"]["address"] == "127.0.0.1:20100"
    assert tasks["worker:0"]["restarts_by_cause"] == {"chaos SIGKILL": 1}
    assert tasks["chief:0"]["attempt"] == 1
    assert tasks["chief:0"]["restarts_by_cause"] == {"ps lost": 1}
    assert tasks["worker:1"]["restarts"] == 0
    assert tasks["chief:0"]["since"] == pytest.approx(T0 + 33.5)
    assert status["restarts"] == {"chief:0": 1, "ps:0": 1, "worker:0": 1, "worker:1": 0}
    assert status["restarts_total"] == 3
    assert status["chaos_kills"] == 2


def test_status_running_job_checkpoint_and_leader(tmp_path):
    status = WorkdirStatus(running_job(tmp_path).path).read(now=T0 + 62.0)

    assert status["checkpoint"]["step"] == 200
    assert status["checkpoint"]["age_seconds"] == pytest.approx(7.0)
    assert status["checkpoint"]["duration_seconds"] is None
    assert status["checkpoint"]["path"].endswith(os.path.join("checkpoints", "ckpt-200"))
    assert status["leader"]["holder"] == "chief:0 attempt 1 pid 500 host vm"
    assert status["leader"]["epoch"] == 2
    assert status["leader"]["expires_in_seconds"] == pytest.approx(1.0)
    assert status["leader_epoch"] == 2
    assert status["failovers"] == 1


def test_status_completed_job(tmp_path):
    job = JobFolder(tmp_path / "done").cluster()
    job.start_tasks(0.0)
    job.event(40.0, "chief:0", 0, "SUCCEEDED", "target reached", exit_code=0)
    for task in ("chief:0", "worker:0", "worker:1", "ps:0"):
        job.event(40.5, task, 0, "STOPPED", "job ended")
    job.progress(39.0, 600, rate=12.0)
    job.heartbeat(40.0, 600, phase="done")
    job.summary(True, 600, 0, "Training reached step 600.")

    status = WorkdirStatus(job.path).read(now=T0 + 100.0)

    assert status["job_state"] == "completed"
    assert status["completed"] is True
    assert status["exit_reason"] == "OK"
    assert status["step"] == 600
    assert status["steps_per_second"] == 0.0
    assert status["eta_seconds"] is None
    assert status["tasks"]["chief:0"]["state"] == "STOPPED"
    assert status["tasks"]["chief:0"]["last_exit_code"] == 0


def test_status_failed_job_names_exit(tmp_path):
    job = JobFolder(tmp_path / "failed").cluster()
    job.start_tasks(0.0)
    job.event(5.0, "chief:0", 0, "FAILED", "USAGE", exit_code=2)
    job.event(5.0, "chief:0", 0, "GAVE_UP", "Task chief:0 exited with USAGE", exit_code=2)
    job.summary(False, 0, 3, "Task chief:0 exited with USAGE, which is permanent.")

    status = status_from_workdir(job.path)

    assert status["job_state"] == "failed"
    assert status["exit_code"] == 3
    assert status["exit_reason"] == "RESTART_BUDGET_SPENT"
    assert status["message"].startswith("Task chief:0 exited with USAGE")
    assert status["tasks"]["chief:0"]["state"] == "GAVE_UP"
    assert status["tasks"]["chief:0"]["restarts"] == 0


def test_status_preempted_job_is_stopped(tmp_path):
    job = JobFolder(tmp_path / "preempted").cluster()
    job.start_tasks(0.0)
    job.summary(False, 120, 201, "Launcher received SIGTERM; run the same command again to resume.")

    assert status_from_workdir(job.path)["job_state"] == "stopped"


def test_status_reads_latest_launch_only(tmp_path):
    job = running_job(tmp_path)
    job.summary(False, 250, 201, "Launcher received SIGINT.", written_at=62.0)
    # The second launch starts every task at attempt 0 again.
    job.start_tasks(100.0)
    job.progress(110.0, 250, rate=0.0, epoch=3)
    job.progress(112.0, 260, rate=5.0, epoch=3)

    status = WorkdirStatus(job.path).read(now=T0 + 113.0)

    assert status["job_state"] == "running"
    assert status["launched_at"] == pytest.approx(T0 + 100.0)
    assert status["restarts_total"] == 0
    assert status["chaos_kills"] == 0
    assert status["tasks"]["worker:0"]["attempt"] == 0
    assert status["failovers"] == 0
    assert status["step_changed_at"] == pytest.approx(T0 + 112.0)


def test_status_standby_and_failover(tmp_path):
    job = JobFolder(tmp_path / "standby").cluster()
    job.start_tasks(0.0)
    job.event(10.0, "chief:0", 1, "STARTING", "spawned pid 600")
    job.event(10.0, "chief:0", 1, "STANDBY", "waits for the leader lease")
    job.event(20.0, "chief:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(20.0, "chief:0", 0, "SUPERSEDED", "attempt 0 exited with signal 9")
    job.event(20.0, "chief:0", 1, "RUNNING", "took over from attempt 0")
    job.event(25.0, "chief:0", 2, "STARTING", "spawned pid 700")
    job.event(25.0, "chief:0", 2, "STANDBY", "waits for the leader lease")
    job.event(30.0, "chief:0", 1, "RUNNING", "unexpected repeat of a state")

    status = WorkdirStatus(job.path).read(now=T0 + 31.0)
    chief = status["tasks"]["chief:0"]

    assert chief["state"] == "RUNNING"
    assert chief["attempt"] == 1
    assert chief["restarts_by_cause"] == {"chaos SIGKILL": 1}
    assert chief["standby"] == {"attempt": 2, "state": "STANDBY", "since": T0 + 25.0}
    assert status["chaos_kills"] == 1


def test_status_lease_expiry_counts_restart(tmp_path):
    job = JobFolder(tmp_path / "lease").cluster()
    job.start_tasks(0.0)
    job.event(10.0, "chief:0", 1, "STARTING", "spawned pid 600")
    job.event(10.0, "chief:0", 1, "STANDBY", "waits for the leader lease")
    job.event(20.0, "chief:0", 0, "SUPERSEDED", "lease expired; standby took over at epoch 2")
    job.event(20.0, "chief:0", 1, "RUNNING", "took over from attempt 0")

    chief = status_from_workdir(job.path)["tasks"]["chief:0"]

    assert chief["restarts_by_cause"] == {"lease expired": 1}
    assert chief["standby"] is None


def test_status_incremental_reads(tmp_path):
    job = JobFolder(tmp_path / "live").cluster()
    job.start_tasks(0.0)
    job.progress(5.0, 10)
    reader = WorkdirStatus(job.path)

    first = reader.read(now=T0 + 6.0)
    job.kill_and_restart(7.0, "worker:1", 0)
    job.progress(8.0, 20, rate=4.0, epoch=2)
    with open(os.path.join(job.path, "progress.jsonl"), "a", encoding="utf-8") as stream:
        stream.write('{"ts": %f, "step": 30' % (T0 + 9.0))
    second = reader.read(now=T0 + 10.0)

    assert first["restarts_total"] == 0
    assert second["restarts"]["worker:1"] == 1
    assert second["tasks"]["worker:1"]["attempt"] == 1
    assert second["steps_per_second"] == 4.0
    assert second["step_changed_at"] == pytest.approx(T0 + 8.0)
    assert second["failovers"] == 1


def test_status_heartbeat_tracks_step_change(tmp_path):
    job = JobFolder(tmp_path / "no_progress").cluster()
    job.start_tasks(0.0)
    job.heartbeat(5.0, 10)
    reader = WorkdirStatus(job.path)

    first = reader.read(now=T0 + 5.5)
    job.heartbeat(6.0, 20)
    second = reader.read(now=T0 + 6.5)

    assert first["step_changed_at"] is None
    assert first["steps_per_second"] is None
    assert second["step_changed_at"] == pytest.approx(T0 + 6.0)


def test_status_to_json_nan_loss(tmp_path):
    job = JobFolder(tmp_path / "nan").cluster()
    job.start_tasks(0.0)
    job.write_json("heartbeat.json", {"pid": 1, "time": T0 + 1.0, "step": 5, "target_step": 10,
                                      "loss": float("nan"), "phase": "training", "leader_epoch": 1})

    text = status_to_json(status_from_workdir(job.path))

    assert json.loads(text)["loss"] is None
    assert "NaN" not in text


def test_status_spec_supplies_tasks_and_target(tmp_path):
    from tfps_ha.spec import parse_spec

    spec = parse_spec("cluster: {chief: 1, worker: 3, ps: 2}\ntrainer: {module: tfps_ha.examples.digits}\n"
                      "training: {steps: 500, steps_per_execution: 10, checkpoint_every_steps: 50}\n")
    job = JobFolder(tmp_path / "fresh")
    job.write_json("heartbeat.json", {})

    status = status_from_workdir(job.path, spec)

    assert status["job_state"] == "starting"
    assert status["target_step"] == 500
    assert list(status["tasks"]) == ["chief:0", "ps:0", "ps:1", "worker:0", "worker:1", "worker:2"]
    assert {task["state"] for task in status["tasks"].values()} == {"PENDING"}


def test_require_job_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")

    with pytest.raises(UsageError, match="not found"):
        require_job_folder(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="not a folder"):
        require_job_folder(str(tmp_path / "file"))
    with pytest.raises(UsageError, match="contains no job files"):
        require_job_folder(str(tmp_path / "empty"))


def test_checkpoint_fit_backup_step_from_result(tmp_path):
    job = JobFolder(tmp_path / "fit")
    job.checkpoint_state(50.0, [4, 5, 6], folder="backup/chief")
    job.write_json("result.json", {"checkpoint_step": 300, "completed": True})

    checkpoint = latest_checkpoint(job.path)
    job.set_mtime("result.json", 40.0)
    before_save = latest_checkpoint(job.path)

    assert checkpoint["step"] == 300
    assert checkpoint["path"].endswith(os.path.join("backup", "chief", "ckpt-6"))
    assert before_save["step"] is None


def test_checkpoint_sources_merge(tmp_path):
    job = JobFolder(tmp_path / "merge")
    job.checkpoint_state(50.0, [4, 5, 6], folder="backup/chief")
    job.write_json("last_checkpoint.json", {"step": 300, "path": "/w/backup", "leader_epoch": 2,
                                            "holder": "chief:0", "time": T0 + 50.3})
    record_checkpoint(job.path, 250, 0.2, path="/w/backup", ts=T0 + 40.0)
    record_checkpoint(job.path, 300, 0.4, path="/w/backup", ts=T0 + 50.2)

    checkpoint = latest_checkpoint(job.path)

    assert checkpoint["step"] == 300
    assert checkpoint["duration_seconds"] == pytest.approx(0.4)
    assert checkpoint["saved_at"] == pytest.approx(T0 + 50.2)
    assert checkpoint["source"] == "log"


def test_checkpoint_newer_state_file_wins(tmp_path):
    job = JobFolder(tmp_path / "unlogged")
    record_checkpoint(job.path, 100, 0.2, ts=T0 + 10.0)
    job.checkpoint_state(30.0, [100, 200])

    checkpoint = latest_checkpoint(job.path)

    assert checkpoint["step"] == 200
    assert checkpoint["source"] == "state_file"
    assert checkpoint["duration_seconds"] is None


def test_checkpoint_none_without_files(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None


@pytest.mark.parametrize("cause, label", [
    ("chaos SIGKILL", "chaos SIGKILL"),
    ("hang: heartbeat is 45 s old", "hang"),
    ("hang: step 40 has not advanced for 130 s", "hang"),
    ("ps:1 lost", "ps lost"),
    ("lease expired; standby took over at epoch 3", "lease expired"),
    ("CLUSTER_UNAVAILABLE", "CLUSTER_UNAVAILABLE"),
    ("signal 9", "signal 9"),
    ("", "unknown"),
])
def test_restart_cause_label(cause, label):
    assert restart_cause_label(cause) == label


def test_jsonl_follower_partial_and_replaced(tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2')
    follower = JsonlFollower(str(path))

    first = follower.read_new()
    with open(path, "a", encoding="utf-8") as stream:
        stream.write("}\n")
    second = follower.read_new()
    path.write_text('{"c": 3}\n')
    third = follower.read_new()

    assert first == [{"a": 1}]
    assert follower.skipped_lines == 1
    assert second == [{"b": 2}]
    assert third == [{"c": 3}]
    assert follower.restarted is True
