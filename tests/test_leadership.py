"""Leadership: waiting for the lease, the keeper process, fencing a zombie's save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tfps_ha.coordinator.leadership import Leadership, holder_id, holder_pid
from tfps_ha.errors import StartupTimeoutError
from tfps_ha.lease import LeaseError, LeadershipLostError, select
from tfps_ha.lease.file import FileLease

LEASE_SECONDS = 1.0

# A coordinator stand-in: it takes the lease and starts the keeper. Once its
# stop event is set it tries a fenced save and prints the outcome on stdout.
CANDIDATE = textwrap.dedent("""
    import sys, threading, time
    from tfps_ha.coordinator.leadership import Leadership
    from tfps_ha.lease import LeadershipLostError
    from tfps_ha.lease.file import FileLease

    stop = threading.Event()
    leadership = Leadership(FileLease(sys.argv[1]), "candidate pid " + str(__import__("os").getpid()),
                            float(sys.argv[2]), stop)
    record = leadership.acquire(standby=False, deadline_seconds=10)
    leadership.start_renewing()
    print("LEADS", record.epoch, leadership._keeper.pid, flush=True)
    stop.wait()
    print("STOPPED", flush=True)
    try:
        leadership.fence(250)
    except LeadershipLostError as error:
        print("FENCED", error, flush=True)
        sys.exit(202)
    print("SAVED", flush=True)
""")


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_candidate(lease_path: str, lease_seconds: float = LEASE_SECONDS) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", CANDIDATE, lease_path, str(lease_seconds)],
                               stdout=subprocess.PIPE, text=True)
    words = process.stdout.readline().split()
    assert words[:2] == ["LEADS", "1"], words
    return process, int(words[2])


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # kill(0) succeeds on a zombie child of another process, so its state is checked.
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_holder_id_carries_pid():
    holder = holder_id("chief:0", 3)

    assert holder.startswith("chief:0 attempt 3 pid ")
    assert holder_pid(holder) == os.getpid()
    assert holder_pid("someone else") is None


def test_keeper_renews_past_duration(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    process, _ = start_candidate(lease.path)
    try:
        time.sleep(3 * LEASE_SECONDS)

        assert lease.try_acquire("standby", LEASE_SECONDS) is None
        assert lease.read().epoch == 1
    finally:
        process.kill()
        process.wait()


def test_stopped_leader_is_fenced(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    process, _ = start_candidate(lease.path)
    try:
        process.send_signal(signal.SIGSTOP)
        taken = wait_until(lambda: lease.try_acquire("standby", 30.0), 10 * LEASE_SECONDS,
                           "the standby to take the expired lease")
        assert taken.epoch == 2

        process.send_signal(signal.SIGCONT)
        out, _ = process.communicate(timeout=20)
    finally:
        process.kill()

    assert process.returncode == 202, out
    assert "STOPPED" in out
    assert "FENCED" in out
    assert "'standby' at epoch 2" in out
    assert "SAVED" not in out
    assert lease.read().holder == "standby"


def test_keeper_exits_with_leader(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    process, keeper_pid = start_candidate(lease.path)

    process.kill()
    process.wait()

    wait_until(lambda: process_gone(keeper_pid), 10, "the keeper to exit after its coordinator died")
    wait_until(lambda: lease.try_acquire("standby", LEASE_SECONDS), 5 * LEASE_SECONDS,
               "the dead leader's lease to expire")


def test_acquire_deadline_names_holder(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    lease.try_acquire("other launch", 60.0)
    leadership = Leadership(lease, "me", LEASE_SECONDS, threading.Event())

    with pytest.raises(StartupTimeoutError, match="'other launch' kept renewing it"):
        leadership.acquire(standby=False, deadline_seconds=0.3)


def test_standby_acquire_ends_on_stop(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    lease.try_acquire("leader", 60.0)
    stop = threading.Event()
    leadership = Leadership(lease, "standby", LEASE_SECONDS, stop)
    threading.Timer(0.3, stop.set).start()

    assert leadership.acquire(standby=True, deadline_seconds=0.0) is None
    assert leadership.epoch == 0


def test_standby_takes_released_lease(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    first = lease.try_acquire("leader", 60.0)
    standby = Leadership(lease, "standby", LEASE_SECONDS, threading.Event())
    threading.Timer(0.3, lambda: lease.release("leader", first.epoch)).start()

    record = standby.acquire(standby=True, deadline_seconds=0.0)

    assert record.epoch == 2
    assert standby.previous.holder == "leader"


def test_release_keeps_lease_after_success(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    leadership = Leadership(lease, "leader", 60.0, threading.Event())
    leadership.acquire(standby=False, deadline_seconds=1)

    leadership.release(end_lease=False)

    assert lease.try_acquire("standby", 60.0) is None
    leadership.release()
    assert lease.try_acquire("standby", 60.0).epoch == 2


def test_fence_rejects_after_takeover(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    leadership = Leadership(lease, "leader", LEASE_SECONDS, threading.Event())
    leadership.acquire(standby=False, deadline_seconds=1)
    leadership.fence(10)
    time.sleep(LEASE_SECONDS)
    lease.try_acquire("standby", 60.0)

    with pytest.raises(LeadershipLostError, match="'standby' at epoch 2"):
        leadership.fence(20)


def test_lease_backend_file_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(select.LEASE_NAME_ENV, raising=False)

    backend, keeper_args = select.lease_from_environment(str(tmp_path / "leader.lease"))

    assert isinstance(backend, FileLease)
    assert keeper_args == ["--backend", "file", "--lease", str(tmp_path / "leader.lease")]
    assert select.poll_seconds(backend, 4.0) == 0.1


def test_lease_backend_kubernetes_outside_pod(tmp_path, monkeypatch):
    monkeypatch.setenv(select.LEASE_NAME_ENV, "job-leader")
    monkeypatch.setenv("TFPS_HA_LEASE_NAMESPACE", "team")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    with pytest.raises(LeaseError, match="cannot reach the Kubernetes API"):
        select.lease_from_environment(str(tmp_path / "leader.lease"))


def test_environment_names_match_manifests():
    from tfps_ha.coordinator import leadership
    from tfps_ha.lease import kubernetes

    assert select.LEASE_NAME_ENV == kubernetes.LEASE_NAME_ENV
    assert leadership.POD_UID_ENV == kubernetes.POD_UID_ENV


def test_holder_id_adds_pod_uid(monkeypatch):
    monkeypatch.setenv("TFPS_HA_POD_UID", "0a1b-2c3d")

    holder = holder_id("chief:0", None)

    assert holder.endswith(" pod 0a1b-2c3d")
    assert holder_pid(holder) == os.getpid()


def test_killed_keeper_restarted(tmp_path):
    lease = FileLease(str(tmp_path / "leader.lease"))
    # A longer lease than the other tests, so the restarted keeper has time to start.
    process, keeper_pid = start_candidate(lease.path, lease_seconds=4.0)
    try:
        os.kill(keeper_pid, signal.SIGKILL)
        time.sleep(6.0)

        assert lease.try_acquire("standby", 4.0) is None
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()
