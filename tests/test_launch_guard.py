"""The checks a launch makes before it starts any task: the workdir lock and a leftover leader lease."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tfps_ha import launcher
from tfps_ha.errors import UsageError
from tfps_ha.lease.file import FileLease
from tfps_ha.observe.status import launch_running
from tfps_ha.workdir import Workdir


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_workdir_lock_rejects_second_launch(tmp_path):
    folder = Workdir(str(tmp_path))
    first = launcher._lock_workdir(folder)
    try:
        with pytest.raises(UsageError, match=f"in use by another launch \\(pid {os.getpid()}\\)"):
            launcher._lock_workdir(folder)
        assert launch_running(str(tmp_path)) is True
    finally:
        os.close(first)

    assert launch_running(str(tmp_path)) is False
    os.close(launcher._lock_workdir(folder))


def test_launch_running_without_lock_file(tmp_path):
    assert launch_running(str(tmp_path)) is None


def test_cli_rejects_busy_workdir(tmp_path, run_cli):
    lock_descriptor = launcher._lock_workdir(Workdir(str(tmp_path)))
    try:
        result = run_cli("launch", "cluster_specs/local.yaml", "--workdir", str(tmp_path), "--steps", "100")
    finally:
        os.close(lock_descriptor)

    assert result.returncode == 2, result.stderr
    assert "is in use by another launch" in result.stderr
    assert not (tmp_path / "cluster.json").exists()


def test_stale_local_lease_revoked(tmp_path):
    folder = Workdir(str(tmp_path))
    lease = FileLease(folder.lease)
    holder = f"chief:0 attempt 0 pid {dead_pid()} host {socket.gethostname()}"
    lease.try_acquire(holder, 3600.0)

    launcher._clear_stale_lease(folder, 4.0)

    assert lease.read().expired(time.time())
    assert lease.try_acquire("next", 4.0).epoch == 2


def test_foreign_lease_rejected(tmp_path):
    folder = Workdir(str(tmp_path))
    FileLease(folder.lease).try_acquire("chief:0 attempt 0 pid 999999 host othermachine", 3600.0)

    with pytest.raises(UsageError, match="held by 'chief:0 attempt 0 pid 999999 host othermachine' at epoch 1"):
        launcher._clear_stale_lease(folder, 0.2)


def test_live_local_lease_rejected(tmp_path):
    folder = Workdir(str(tmp_path))
    FileLease(folder.lease).try_acquire(f"chief:0 attempt 0 pid {os.getpid()} host {socket.gethostname()}", 60.0)

    with pytest.raises(UsageError, match="so another coordinator still uses this workdir"):
        launcher._clear_stale_lease(folder, 0.2)


def test_expired_lease_left_alone(tmp_path):
    folder = Workdir(str(tmp_path))
    lease = FileLease(folder.lease, clock=lambda: time.time() - 120)
    lease.try_acquire("chief:0 attempt 0 pid 999999 host othermachine", 4.0)

    launcher._clear_stale_lease(folder, 4.0)

    assert FileLease(folder.lease).read().holder == "chief:0 attempt 0 pid 999999 host othermachine"


def test_expiring_lease_awaited(tmp_path):
    folder = Workdir(str(tmp_path))
    FileLease(folder.lease).try_acquire("chief:0 attempt 0 pid 999999 host othermachine", 0.5)

    launcher._clear_stale_lease(folder, 4.0)

    assert FileLease(folder.lease).read().expired(time.time())


def test_zombie_holder_counts_as_dead(tmp_path):
    folder = Workdir(str(tmp_path))
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while launcher._process_runs(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    FileLease(folder.lease).try_acquire(f"chief:0 attempt 0 pid {zombie.pid} host {socket.gethostname()}", 60.0)

    launcher._clear_stale_lease(folder, 4.0)

    assert FileLease(folder.lease).read().expired(time.time())
    zombie.wait()
