"""The run report: data from a hand-built chaos run, and the PNG it draws."""

from __future__ import annotations

import matplotlib.image
import pytest

from observe_helpers import T0, JobFolder
from tfps_ha.observe.checkpoint_log import record_checkpoint
from tfps_ha.observe.report import draw_report, load_report_data, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chaos_run(tmp_path) -> JobFolder:
    """A finished run with a worker kill, a PS kill that takes the leader down, and a standby takeover."""
    job = JobFolder(tmp_path / "chaos").cluster()
    job.start_tasks(0.0, up_after=3.0)
    job.event(6.0, "chief:0", 1, "STARTING", "spawned pid 600")
    job.event(6.0, "chief:0", 1, "STANDBY", "waits for the leader lease")
    job.kill_and_restart(12.0, "worker:0", 0)
    job.event(20.0, "ps:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    job.event(20.0, "ps:0", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")
    job.event(20.2, "chief:0", 0, "FAILED", "ps:0 lost", exit_code=200)
    job.event(20.2, "chief:0", 0, "SUPERSEDED", "attempt 0 exited with CLUSTER_UNAVAILABLE")
    job.event(20.2, "chief:0", 1, "RUNNING", "took over from attempt 0")
    job.event(21.0, "ps:0", 1, "STARTING", "spawned pid 700")
    job.event(23.0, "ps:0", 1, "RUNNING", "port accepts connections")
    job.event(40.0, "chief:0", 1, "SUCCEEDED", "target reached", exit_code=0)
    for task, attempt in (("chief:0", 1), ("worker:0", 1), ("worker:1", 0), ("ps:0", 1)):
        job.event(40.5, task, attempt, "STOPPED", "job ended")

    steps = {4: 0, 8: 40, 12: 80, 16: 120, 20: 150, 22: 150, 24: 150, 26: 150, 28: 160,
             32: 200, 36: 260, 40: 300}
    for second, step in steps.items():
        job.progress(second, step, loss=2.0 / (1 + step / 50), epoch=1 if second <= 20 else 2)
    for step, second in ((100, 13.5), (150, 19.0), (300, 40.0)):
        record_checkpoint(job.path, step, 0.3, ts=T0 + second)
    job.summary(True, 300, 0, "Training reached step 300.", target=300, failovers=1)
    return job


def test_report_data_recoveries(tmp_path):
    data = load_report_data(chaos_run(tmp_path).path)

    assert [recovery.failure.task for recovery in data.recoveries] == ["worker:0", "ps:0"]
    worker, ps = data.recoveries
    assert worker.resumed_from == 120
    assert worker.recovered_at == pytest.approx(T0 + 20.0)
    assert ps.resumed_from == 150
    assert ps.recovered_at == pytest.approx(T0 + 28.0)
    assert [line["step"] for line in data.checkpoints] == [100, 150, 300]
    assert data.start == pytest.approx(T0)
    assert data.end == pytest.approx(T0 + 40.5)
    assert data.title == "chaos: completed at step 300/300; 3 restarts, 2 chaos kills"


def test_report_rows_include_standby(tmp_path):
    figure = draw_report(load_report_data(chaos_run(tmp_path).path))
    timeline = figure.axes[0]

    rows = sorted(zip(timeline.get_yticks(), (label.get_text() for label in timeline.get_yticklabels())),
                  reverse=True)

    assert [label for _, label in rows] == ["chief:0", "chief:0 standby", "ps:0", "worker:0", "worker:1"]


def test_report_png_written(tmp_path):
    job = chaos_run(tmp_path)
    out = tmp_path / "run.png"

    write_report(job.path, str(out))
    image = matplotlib.image.imread(str(out))

    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert image.shape[1] == 1320
    assert image.shape[0] > 500


def test_report_without_progress(tmp_path):
    job = JobFolder(tmp_path / "events_only").cluster()
    job.start_tasks(0.0)
    job.kill_and_restart(5.0, "worker:1", 0)
    out = tmp_path / "events_only.png"

    data = write_report(job.path, str(out))

    assert data.progress == []
    assert data.recoveries == []
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_report_without_events(tmp_path):
    job = JobFolder(tmp_path / "heartbeat_only")
    job.heartbeat(1.0, 5)
    out = tmp_path / "heartbeat_only.png"

    data = write_report(job.path, str(out))

    assert data.launch is None
    assert out.read_bytes()[:8] == PNG_SIGNATURE
