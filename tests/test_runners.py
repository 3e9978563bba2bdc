"""Both runners in-process, on a real in-process cluster from tfps_ha.testing."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest

from tfps_ha.exit_codes import ExitCode
from tfps_ha.spec import load_spec
from tfps_ha.testing import in_process_cluster
from tfps_ha.workdir import Workdir

SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster_specs")


@pytest.fixture(scope="module")
def cluster():
    with in_process_cluster(num_workers=2, num_ps=2) as running:
        yield running


def _run(cluster, spec_name: str, workdir: Workdir, steps: int, **training) -> dict:
    from tfps_ha.coordinator.main import run_coordinator

    spec = load_spec(os.path.join(SPECS, spec_name))
    spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, **training))
    code = run_coordinator(spec, cluster.cluster, workdir, target_steps=steps)
    assert code == ExitCode.OK
    with open(workdir.result, encoding="utf-8") as stream:
        return json.load(stream)


def test_fit_runner_trains_and_resumes(cluster, tmp_path):
    workdir = Workdir(str(tmp_path))

    first = _run(cluster, "local.yaml", workdir, steps=300)
    assert first["completed"] is True
    assert first["final_step"] == 300
    assert first["resumed_from_step"] == 0
    assert first["metrics"]["heldout_accuracy"] >= 0.9

    second = _run(cluster, "local.yaml", workdir, steps=400)
    assert second["resumed_from_step"] == 300
    assert second["final_step"] == 400
    assert second["metrics"]["heldout_accuracy"] >= 0.95


def test_custom_loop_exact_steps_and_resume(cluster, tmp_path):
    workdir = Workdir(str(tmp_path))

    first = _run(cluster, "local_4w_2ps.yaml", workdir, steps=130, checkpoint_every_steps=50)
    assert first["final_step"] == 130
    assert sorted(os.path.basename(path) for path in glob.glob(f"{workdir.checkpoints}/*.index")) == [
        "ckpt-100.index", "ckpt-130.index", "ckpt-50.index"]

    second = _run(cluster, "local_4w_2ps.yaml", workdir, steps=170, checkpoint_every_steps=50)
    assert second["resumed_from_step"] == 130
    assert second["final_step"] == 170


def test_corrupted_checkpoint_falls_back(cluster, tmp_path, caplog):
    workdir = Workdir(str(tmp_path))
    _run(cluster, "local_4w_2ps.yaml", workdir, steps=100, checkpoint_every_steps=50)

    for data_file in glob.glob(f"{workdir.checkpoints}/ckpt-100.data-*"):
        with open(data_file, "r+b") as stream:
            stream.truncate(max(0, os.path.getsize(data_file) // 3))

    result = _run(cluster, "local_4w_2ps.yaml", workdir, steps=120, checkpoint_every_steps=50)
    assert result["resumed_from_step"] == 50
    assert result["final_step"] == 120
    assert "ckpt-100 cannot be restored" in caplog.text


def test_fit_backup_falls_back(cluster, tmp_path, caplog):
    workdir = Workdir(str(tmp_path))
    _run(cluster, "local.yaml", workdir, steps=100, checkpoint_every_steps=50)

    newest = sorted(glob.glob(f"{workdir.backup}/chief/ckpt-*.index"))[-1]
    for data_file in glob.glob(newest.replace(".index", ".data-*")):
        with open(data_file, "r+b") as stream:
            stream.truncate(max(0, os.path.getsize(data_file) // 3))

    result = _run(cluster, "local.yaml", workdir, steps=200, checkpoint_every_steps=50)
    assert result["resumed_from_step"] == 50
    assert result["final_step"] == 200
    assert "cannot be restored" in caplog.text


def test_custom_loop_beats_inside_a_long_window(cluster, tmp_path, monkeypatch):
    # One window of 400 steps in 200 closures: the heartbeat must advance
    # while the window runs, not only at its join.
    from tfps_ha.coordinator import heartbeat

    written_steps = []
    original_init = heartbeat.Heartbeat.__init__

    def short_interval(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.interval = 0.2

    def record(path, value):
        written_steps.append(value["step"])

    monkeypatch.setattr(heartbeat.Heartbeat, "__init__", short_interval)
    monkeypatch.setattr(heartbeat, "write_json_atomic", record)
    result = _run(cluster, "local_4w_2ps.yaml", Workdir(str(tmp_path)), steps=400,
                  checkpoint_every_steps=1000, steps_per_execution=2)

    assert result["final_step"] == 400
    inside = sorted({step for step in written_steps if 0 < step < 400})
    assert len(inside) >= 2, f"heartbeat steps written: {written_steps}"
