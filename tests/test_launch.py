"""End-to-end tests of `tfps-ha launch` with real task processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from launch_helpers import (launch_output, read_events, read_summary, run_launch, start_launch,
                            wait_for_step, write_spec)
from tfps_ha.exit_codes import ExitCode
from tfps_ha.net import port_accepts


def _cluster_addresses(workdir) -> list[str]:
    with open(os.path.join(str(workdir), "cluster.json"), encoding="utf-8") as stream:
        jobs = json.load(stream)["cluster"]
    return [address for job in ("ps", "worker") for address in jobs.get(job, [])]


def _wait_ports_closed(addresses: list[str], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    open_ports = addresses
    while time.monotonic() < deadline:
        open_ports = [address for address in addresses if port_accepts(address, timeout=0.2)]
        if not open_ports:
            return []
        time.sleep(0.2)
    return open_ports


def test_launch_digits_completes(tmp_path):
    code, summary = run_launch(write_spec(tmp_path), tmp_path / "work")

    assert code == 0, launch_output(tmp_path / "work")
    assert summary["completed"] is True
    assert summary["final_step"] == 600
    assert summary["target_steps"] == 600
    assert summary["resumed_from_step"] == 0
    assert summary["metrics"]["heldout_accuracy"] >= 0.95
    assert set(summary["restarts"].values()) == {0}
    assert _wait_ports_closed(_cluster_addresses(tmp_path / "work")) == []

    states = [(event["task"], event["state"]) for event in read_events(tmp_path / "work")]
    assert ("chief:0", "SUCCEEDED") in states
    assert ("ps:0", "STOPPED") in states

    assert os.path.exists(tmp_path / "work" / "logs" / "worker_1" / "attempt_0.log")

    code, again = run_launch(write_spec(tmp_path), tmp_path / "work", timeout=60)
    assert code == 0
    assert again["completed"] is True
    assert again["final_step"] == 600
    assert "nothing to do" in launch_output(tmp_path / "work")


def test_launch_custom_loop_ctr(tmp_path):
    spec = write_spec(tmp_path, "local_4w_2ps.yaml", training={"steps": 200, "checkpoint_every_steps": 50})

    code, summary = run_launch(spec, tmp_path / "work")

    assert code == 0, launch_output(tmp_path / "work")
    assert summary["completed"] is True
    assert summary["final_step"] == 200
    assert "heldout_auc" in summary["metrics"]
    checkpoints = sorted(os.listdir(tmp_path / "work" / "checkpoints"))
    assert "ckpt-200.index" in checkpoints


def test_resume_after_launcher_sigkill(tmp_path):
    spec = write_spec(tmp_path)
    workdir = tmp_path / "work"
    process = start_launch(spec, workdir)
    wait_for_step(workdir, 250, process)

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert _wait_ports_closed(_cluster_addresses(workdir)) == [], "task processes outlived the launcher"

    code, summary = run_launch(spec, workdir)
    assert code == 0, launch_output(workdir)
    assert summary["completed"] is True
    assert summary["final_step"] == 600
    assert summary["resumed_from_step"] > 0
    assert summary["resumed_from_step"] % 50 == 0
    assert summary["metrics"]["heldout_accuracy"] >= 0.95


def test_sigint_saves_and_resumes(tmp_path):
    spec = write_spec(tmp_path)
    workdir = tmp_path / "work"
    process = start_launch(spec, workdir)
    wait_for_step(workdir, 120, process)

    os.kill(process.pid, signal.SIGINT)
    code = process.wait(timeout=90)
    summary = read_summary(workdir)
    assert code == ExitCode.PREEMPTED, launch_output(workdir)
    assert summary["completed"] is False
    with open(workdir / "result.json", encoding="utf-8") as stream:
        result = json.load(stream)
    assert result["exit_reason"] == "PREEMPTED"
    assert result["checkpoint_step"] == result["final_step"]
    saved_step = result["final_step"]
    assert saved_step >= 120

    code, summary = run_launch(spec, workdir)
    assert code == 0, launch_output(workdir)
    assert summary["resumed_from_step"] == saved_step
    assert summary["final_step"] == 600


def test_port_in_use_fails_naming_task(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        spec = write_spec(tmp_path, cluster={"chief": 1, "worker": [f"127.0.0.1:{port}"], "ps": 1})
        code, _ = run_launch(spec, tmp_path / "work", timeout=120)
    finally:
        blocker.close()

    output = launch_output(tmp_path / "work")
    assert code == ExitCode.USAGE, output
    assert "worker:0" in output
    assert str(port) in output
    assert "Traceback" not in output


def test_startup_deadline_names_task(tmp_path):
    spec = write_spec(tmp_path, startup_timeout_seconds=1)

    code, summary = run_launch(spec, tmp_path / "work", timeout=120)

    output = launch_output(tmp_path / "work")
    assert code == ExitCode.STARTUP_TIMEOUT, output
    assert "start-up deadline of 1 s" in output
    assert summary["completed"] is False
    assert _wait_ports_closed(_cluster_addresses(tmp_path / "work")) == []
