"""The architecture benchmark's arithmetic: rates from progress marks, examples per step, pairing.

No test launches a job; the benchmark itself does that.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import architecture  # noqa: E402 (needs the repository root on sys.path)
from tfps_ha.spec import MULTI_WORKER_MIRRORED, PARAMETER_SERVER, load_spec  # noqa: E402


def write_jsonl(path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def test_rate_skips_marks_before_first_step(tmp_path):
    # Step 50 comes slowly (tracing), then 100 steps take 2 s.
    path = write_jsonl(tmp_path / "checkpoints.jsonl", [
        {"ts": 1000.0, "step": 50, "duration_seconds": 0.1, "path": "backup"},
        {"ts": 1010.0, "step": 100, "duration_seconds": 0.1, "path": "backup"},
        {"ts": 1011.0, "step": 150, "duration_seconds": 0.1, "path": "backup"},
        {"ts": 1012.0, "step": 200, "duration_seconds": 0.1, "path": "backup"},
    ])

    window = architecture.rate_between_marks(architecture.read_marks(path), first_step=100)

    assert window["start_step"] == 100
    assert window["end_step"] == 200
    assert window["seconds"] == pytest.approx(2.0)
    assert window["steps_per_second"] == pytest.approx(50.0)


def test_rate_starts_past_first_step(tmp_path):
    # Progress lines land at arbitrary steps, so the window starts at the first one at or past 100.
    path = write_jsonl(tmp_path / "progress.jsonl", [
        {"ts": 0.0, "step": 0, "loss": None, "leader_epoch": 1, "steps_per_second": 0.0},
        {"ts": 1.0, "step": 90, "loss": 1.0, "leader_epoch": 1, "steps_per_second": 90.0},
        {"ts": 2.0, "step": 240, "loss": 0.5, "leader_epoch": 1, "steps_per_second": 150.0},
        {"ts": 4.0, "step": 600, "loss": 0.1, "leader_epoch": 1, "steps_per_second": 180.0},
    ])

    window = architecture.rate_between_marks(architecture.read_marks(path), first_step=100)

    assert window["start_step"] == 240
    assert window["steps_per_second"] == pytest.approx(180.0)


def test_rate_ends_at_first_mark_of_last_step():
    # The last step repeats while the job evaluates and exits. Those seconds are not training.
    marks = [(100, 10.0), (300, 11.0), (500, 12.0), (500, 13.0), (500, 14.0)]

    window = architecture.rate_between_marks(marks, first_step=100)

    assert window["end_step"] == 500
    assert window["seconds"] == pytest.approx(2.0)
    assert window["steps_per_second"] == pytest.approx(200.0)


def test_rate_rejects_single_mark():
    with pytest.raises(RuntimeError, match="at least 2 progress marks at or past step 100 to compute a rate; found 1"):
        architecture.rate_between_marks([(50, 1.0), (100, 2.0)], first_step=100)


def test_rate_rejects_zero_seconds():
    with pytest.raises(RuntimeError, match="expected both to be positive"):
        architecture.rate_between_marks([(100, 5.0), (200, 5.0)], first_step=100)


def test_rate_rejects_step_going_back():
    # A restart from an older backup writes a lower step after a higher one.
    with pytest.raises(RuntimeError, match="expected both to be positive"):
        architecture.rate_between_marks([(200, 1.0), (150, 3.0)], first_step=100)


def test_failures_until_skips_later_failures(tmp_path):
    events = write_jsonl(tmp_path / "events.jsonl", [
        {"ts": 10.0, "task": "worker:0", "attempt": 0, "state": "RUNNING", "cause": "port accepts connections"},
        {"ts": 20.0, "task": "worker:1", "attempt": 0, "state": "FAILED", "cause": "signal 6"},
        {"ts": 20.0, "task": "worker:1", "attempt": 0, "state": "BACKOFF", "cause": "group restart"},
        {"ts": 30.0, "task": "chief:0", "attempt": 0, "state": "SUPERSEDED", "cause": "lease lost"},
        {"ts": 50.0, "task": "worker:0", "attempt": 1, "state": "FAILED", "cause": "hang: heartbeat is 30 s old"},
    ])

    assert architecture.failures_until(events, end_time=40.0) == ["worker:1: signal 6", "chief:0: lease lost"]
    assert architecture.failures_until(events, end_time=15.0) == []
    assert architecture.failures_until(str(tmp_path / "absent.jsonl"), end_time=40.0) == []


def test_read_marks_missing_file(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        architecture.read_marks(str(tmp_path / "checkpoints.jsonl"))


def test_read_marks_invalid_lines(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ts": 1.0, "step": 50}\n{"ts": 2.0, "step"\n', encoding="utf-8")
    with pytest.raises(RuntimeError, match="broken.jsonl:2: invalid JSON"):
        architecture.read_marks(str(broken))

    no_step = write_jsonl(tmp_path / "no_step.jsonl", [{"ts": 1.0, "step": "50"}])
    with pytest.raises(RuntimeError, match="integer 'step'"):
        architecture.read_marks(no_step)


def test_examples_per_step_pss_is_one_batch():
    assert architecture.examples_per_step(PARAMETER_SERVER, workers=2, global_batch_size=64) == 64
    assert architecture.examples_per_step(PARAMETER_SERVER, workers=5, global_batch_size=64) == 64


def test_examples_per_step_mwms_splits_batch():
    assert architecture.examples_per_step(MULTI_WORKER_MIRRORED, workers=2, global_batch_size=64) == 64
    assert architecture.examples_per_step(MULTI_WORKER_MIRRORED, workers=4, global_batch_size=64) == 64


def test_examples_per_step_rejects_bad_input():
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        architecture.examples_per_step(MULTI_WORKER_MIRRORED, workers=3, global_batch_size=64)
    with pytest.raises(ValueError, match="unknown strategy"):
        architecture.examples_per_step("mirrored", workers=2, global_batch_size=64)


def test_read_batch_size(tmp_path):
    assert architecture.read_batch_size() == 64

    module = tmp_path / "trainer.py"
    module.write_text("BATCH_SIZE = 128\n", encoding="utf-8")
    assert architecture.read_batch_size(str(module)) == 128

    module.write_text("BATCH_SIZE = 2 * 64\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="no module-level 'BATCH_SIZE"):
        architecture.read_batch_size(str(module))


def test_bundled_specs_match_benchmark():
    pss = load_spec(architecture.SPECS["pss"])
    mwms = load_spec(architecture.SPECS["mwms"])

    assert pss.strategy == PARAMETER_SERVER
    assert mwms.strategy == MULTI_WORKER_MIRRORED
    assert architecture._workers(pss) == 2
    assert architecture._workers(mwms) == 2
    for spec in (pss, mwms):
        for steps in (architecture.QUICK_STEPS, architecture.FULL_STEPS):
            assert steps % spec.training.steps_per_epoch == 0
            assert steps % spec.training.checkpoint_every_steps == 0
        assert architecture.FIRST_MARK_STEP % spec.training.checkpoint_every_steps == 0


def test_side_order_alternates():
    assert [architecture.side_order(pair) for pair in range(3)] == [
        ("pss", "mwms"), ("mwms", "pss"), ("pss", "mwms")]


def test_architecture_takes_median_pair_ratio(monkeypatch):
    # Steps per second of each launch, in launch order. Both sides take 64 examples per step.
    rates = iter([100.0, 50.0, 40.0, 100.0, 100.0, 30.0])
    launched = []

    def fake_run_side(side: str, spec_path: str, steps: int) -> dict:
        launched.append((side, steps))
        return {"steps_per_second": next(rates), "progress_steps_per_second": None, "window": {},
                "heldout_accuracy": 0.97, "launch_seconds": 20.0, "restarts": {}}

    monkeypatch.setattr(architecture, "run_side", fake_run_side)
    result = architecture.architecture(quick=False)

    assert launched == [(side, architecture.FULL_STEPS) for side in ("pss", "mwms", "mwms", "pss", "pss", "mwms")]
    assert result["details"]["pair_ratios"] == pytest.approx([0.5, 0.4, 0.3])
    assert result["ratio"] == pytest.approx(0.4)
    assert result["kit"] == pytest.approx(40.0 * 64)
    assert result["baseline"] == pytest.approx(100.0 * 64)
    assert result["details"]["examples_per_step"] == {"pss": 64, "mwms": 64}
    assert result["unit"] == "examples/s, MWMS over PSS, digits, 2 workers"


def test_architecture_retries_restarted_launch(monkeypatch):
    attempts = []

    def fake_run_side(side: str, spec_path: str, steps: int) -> dict:
        attempts.append(side)
        if side == "mwms" and attempts.count("mwms") == 1:
            raise architecture.RestartedLaunchError("the mwms launch restarted tasks")
        return {"steps_per_second": 50.0, "progress_steps_per_second": None, "window": {},
                "heldout_accuracy": 0.97, "launch_seconds": 20.0, "restarts": {}}

    monkeypatch.setattr(architecture, "run_side", fake_run_side)
    result = architecture.architecture(quick=True)

    assert attempts == ["pss", "mwms", "mwms"]
    assert result["details"]["discarded_launches"] == ["the mwms launch restarted tasks"]
    assert result["ratio"] == pytest.approx(1.0)


def test_architecture_gives_up_after_attempts(monkeypatch):
    def fake_run_side(side: str, spec_path: str, steps: int) -> dict:
        raise architecture.RestartedLaunchError(f"the {side} launch restarted tasks")

    monkeypatch.setattr(architecture, "run_side", fake_run_side)
    with pytest.raises(architecture.RestartedLaunchError, match="the pss launch restarted tasks"):
        architecture.architecture(quick=True)
