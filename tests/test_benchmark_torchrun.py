"""The torchrun comparison: interpreter lookup, progress-file parsing and recovery timing.

No test needs torch or starts a launch; the benchmark itself does that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import torchrun  # noqa: E402 (needs the repository root on sys.path)

KILLED_AT = 1000.0


def progress(ts: float, event: str, step: int, rank: int, restart: int, pid: int) -> dict:
    return {"ts": ts, "event": event, "step": step, "rank": rank, "restart": restart, "pid": pid}


def parse_all(records: list[dict]) -> list[torchrun.ProgressLine]:
    return [torchrun.parse_progress_line(json.dumps(record)) for record in records]


# A run killed once: rank 1 (pid 11) dies at KILLED_AT after step 177. Rank 0
# still finishes step 178, whose gradients rank 1 had already sent. The
# restarted group resumes from the checkpoint of step 150 and finishes step 151
# 4.5 s after the kill.
ONE_KILL = [
    progress(990.0, "start", 0, 0, 0, 10),
    progress(990.1, "start", 0, 1, 0, 11),
    progress(999.9, "step", 177, 0, 0, 10),
    progress(999.95, "step", 177, 1, 0, 11),
    progress(1000.02, "step", 178, 0, 0, 10),
    progress(1003.9, "start", 150, 1, 1, 21),
    progress(1004.0, "start", 150, 0, 1, 20),
    progress(1004.5, "step", 151, 1, 1, 21),
    progress(1004.52, "step", 151, 0, 1, 20),
    progress(1004.6, "step", 152, 0, 1, 20),
]


@pytest.fixture
def no_launch(monkeypatch):
    """Makes any kit launch fail the test: a skipped benchmark must not start one."""

    def fail(plan: str) -> dict:
        raise AssertionError(f"a kit launch started with plan {plan!r}")

    monkeypatch.setattr(torchrun, "run_launch", fail)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="this interpreter has torch")
def test_skipped_without_torch_in_configured_python(monkeypatch, no_launch):
    monkeypatch.setenv(torchrun.TORCH_PYTHON_VARIABLE, sys.executable)

    result = torchrun.recovery_vs_torchrun(quick=True)

    assert set(result) == {"skipped"}
    assert result["skipped"].startswith("torch not installed")
    assert sys.executable in result["skipped"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="this interpreter has torch")
def test_skipped_without_torch_in_current_python(monkeypatch, no_launch):
    monkeypatch.delenv(torchrun.TORCH_PYTHON_VARIABLE, raising=False)

    result = torchrun.recovery_vs_torchrun(quick=True)

    assert result == {"skipped": f"torch not installed in the current interpreter {sys.executable}; "
                                 "set TFPS_HA_TORCH_PYTHON to a Python that has it"}


def test_configured_python_missing_raises(monkeypatch, tmp_path, no_launch):
    missing = str(tmp_path / "no-such-python")
    monkeypatch.setenv(torchrun.TORCH_PYTHON_VARIABLE, missing)

    with pytest.raises(RuntimeError, match="TFPS_HA_TORCH_PYTHON: received .*no-such-python"):
        torchrun.recovery_vs_torchrun(quick=True)


def test_configured_python_with_torch_found(monkeypatch, tmp_path):
    # A stand-in interpreter whose `import torch` succeeds and prints a version.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 9.9.9\n", encoding="utf-8")
    os.chmod(fake, 0o755)
    monkeypatch.setenv(torchrun.TORCH_PYTHON_VARIABLE, str(fake))

    assert torchrun.find_torch_python() == (str(fake), "9.9.9")


def test_parse_progress_line_fields():
    line = torchrun.parse_progress_line(json.dumps(progress(12.5, "step", 7, 1, 2, 345)))

    assert line == torchrun.ProgressLine(ts=12.5, event="step", step=7, rank=1, restart=2, pid=345)


@pytest.mark.parametrize("text", ['{"ts": 1.0, "event": "step"}', "not json", "[1, 2]",
                                  '{"ts": "soon", "event": "step", "step": 1, "rank": 0, "restart": 0, "pid": 1}'])
def test_parse_progress_line_invalid(text):
    with pytest.raises(ValueError, match="invalid progress line"):
        torchrun.parse_progress_line(text)


def test_reader_keeps_partial_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    reader = torchrun.ProgressReader(str(path))
    first = json.dumps(progress(1.0, "start", 0, 0, 0, 10))
    second = json.dumps(progress(2.0, "step", 1, 0, 0, 10))

    assert reader.read_new() == []
    path.write_text(first + "\n" + second[:20], encoding="utf-8")
    assert [line.ts for line in reader.read_new()] == [1.0]
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(second[20:] + "\n")
    assert [line.ts for line in reader.read_new()] == [2.0]
    assert reader.read_new() == []


def test_measure_recovery_one_kill():
    kill = torchrun.Kill(planned_step=175, killed_at=KILLED_AT, pid=11, restart=0)

    recovery = torchrun.measure_recovery(kill, parse_all(ONE_KILL))

    assert recovery.seconds == pytest.approx(4.5)
    assert recovery.start_seconds == pytest.approx(3.9)
    assert recovery.step_at_kill == 177
    assert recovery.resumed_step == 150
    assert recovery.lost_steps == 27


def test_measure_recovery_skips_failed_restart():
    # Restart 1 fails before its first step, so training advances again only in restart 2.
    records = ONE_KILL[:5] + [
        progress(1003.0, "start", 150, 0, 1, 20),
        progress(1009.0, "start", 150, 0, 2, 30),
        progress(1009.1, "start", 150, 1, 2, 31),
        progress(1010.0, "step", 151, 0, 2, 30),
    ]
    kill = torchrun.Kill(planned_step=175, killed_at=KILLED_AT, pid=11, restart=0)

    recovery = torchrun.measure_recovery(kill, parse_all(records))

    assert recovery.seconds == pytest.approx(10.0)
    assert recovery.start_seconds == pytest.approx(9.0)
    assert recovery.lost_steps == 27


def test_measure_recovery_second_kill_ignores_first():
    second_kill_records = [
        progress(1010.0, "step", 330, 1, 1, 21),
        progress(1020.0, "start", 300, 0, 2, 40),
        progress(1020.1, "start", 300, 1, 2, 41),
        progress(1021.0, "step", 301, 0, 2, 40),
    ]
    kill = torchrun.Kill(planned_step=325, killed_at=1010.5, pid=21, restart=1)

    recovery = torchrun.measure_recovery(kill, parse_all(ONE_KILL + second_kill_records))

    assert recovery.seconds == pytest.approx(10.5)
    assert recovery.step_at_kill == 330
    assert recovery.resumed_step == 300


def test_measure_recovery_without_restart_raises():
    kill = torchrun.Kill(planned_step=175, killed_at=KILLED_AT, pid=11, restart=0)

    with pytest.raises(RuntimeError, match="no training step after the kill of pid 11 at step 177"):
        torchrun.measure_recovery(kill, parse_all(ONE_KILL[:5]))


def test_measure_recovery_without_start_line_raises():
    records = ONE_KILL[:5] + [progress(1004.5, "step", 151, 0, 1, 20)]
    kill = torchrun.Kill(planned_step=175, killed_at=KILLED_AT, pid=11, restart=0)

    with pytest.raises(RuntimeError, match="restart 1 wrote steps but no start line"):
        torchrun.measure_recovery(kill, parse_all(records))


def test_kit_worker_recoveries_counts_untimed():
    summary = {"recoveries": [
        {"task": "worker:0", "signal": "SIGKILL", "step": 150, "recovery_seconds": 0.4},
        {"task": "ps:0", "signal": "SIGKILL", "step": 300, "recovery_seconds": 5.0},
        {"task": "worker:1", "signal": "SIGKILL", "step": 450},
    ]}

    assert torchrun._kit_worker_recoveries(summary) == ([0.4], 2)


def test_command_restarts_once_per_kill():
    run = torchrun.TorchrunRun("/usr/bin/python3", (175, 325, 475), "/tmp/work")

    command = run.command(port=29400)

    assert command[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    assert "--max-restarts=3" in command
    assert "--nproc-per-node=2" in command
    assert "--rdzv-endpoint=127.0.0.1:29400" in command
    assert "--local-addr=127.0.0.1" in command
    assert "--log-dir=/tmp/work/torchelastic" in command
    assert command[command.index("--progress") + 1] == "/tmp/work/progress.jsonl"
