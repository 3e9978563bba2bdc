"""The supervisor's failover decisions, driven one `_step()` at a time over scripted processes.

Processes are stand-ins that exit when a test sets their exit code; the lease, heartbeat
and events are real files. The multi-process chaos tests run the same paths
with real TensorFlow tasks.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import time

import pytest

from tfps_ha.coordinator.leadership import holder_id
from tfps_ha.exit_codes import ExitCode
from tfps_ha.lease.file import FileLease
from tfps_ha.spec import load_spec
from tfps_ha.supervisor import probe as probe_module
from tfps_ha.supervisor import supervisor as supervisor_module
from tfps_ha.supervisor.state import TaskState
from tfps_ha.supervisor.supervisor import CHIEF, Supervisor
from tfps_ha.tf_config import resolve_cluster
from tfps_ha.workdir import Workdir, write_json_atomic

SPEC = os.path.join(os.path.dirname(__file__), "..", "cluster_specs", "local.yaml")
_pids = itertools.count(4_000_000)


class ScriptedProcess:
    """A process stand-in: `poll()` returns None until the test sets `code`."""

    def __init__(self, argv):
        self.argv = argv
        self.pid = next(_pids)
        self.code = None
        self.signals = []

    def poll(self):
        return self.code

    def wait(self, timeout=None):
        return self.code

    @property
    def returncode(self):
        return self.code


@dataclasses.dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def harness(tmp_path, monkeypatch):
    spawned = []

    def spawn_task(argv, tf_config, log_path, extra_env=None):
        process = ScriptedProcess(argv)
        spawned.append(process)
        return process

    def kill_process(process, sig=signal.SIGKILL):
        process.signals.append(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM) and process.code is None:
            process.code = -sig

    def stop_process(process, grace_seconds, name):
        kill_process(process, signal.SIGTERM)
        return process.code

    monkeypatch.setattr(supervisor_module.processes, "spawn_task", spawn_task)
    monkeypatch.setattr(supervisor_module.processes, "kill_process", kill_process)
    monkeypatch.setattr(supervisor_module.processes, "stop_process", stop_process)
    monkeypatch.setattr(supervisor_module, "port_accepts", lambda address, timeout=1.0: True)
    monkeypatch.setattr(probe_module, "port_accepts", lambda address, timeout=1.0: True)

    def build(**monitoring):
        spec = load_spec(SPEC)
        spec = dataclasses.replace(spec, monitoring=dataclasses.replace(spec.monitoring, **monitoring))
        workdir = Workdir(str(tmp_path / "work"))
        os.makedirs(workdir.root)
        clock = Clock()
        supervisor = Supervisor(spec, SPEC, resolve_cluster(spec), workdir, 600, clock=clock)
        supervisor.start()
        supervisor._step()
        return supervisor, clock, spawned

    return build


def lead(supervisor: Supervisor, step: int = 10) -> None:
    """Makes the current leader take the lease and report a training heartbeat."""
    leader = supervisor.records[CHIEF]
    holder = holder_id("chief:0", leader.attempt).replace(f"pid {os.getpid()}", f"pid {leader.process.pid}")
    lease = FileLease(supervisor.workdir.lease)
    record = lease.read()
    if record is None or record.holder != holder:
        if record is not None:
            lease.revoke(record.holder)
        lease.try_acquire(holder, 30.0)
    write_json_atomic(supervisor.workdir.heartbeat, {
        "pid": leader.process.pid, "time": time.time(), "step": step, "target_step": 600,
        "loss": 0.5, "phase": "training", "leader_epoch": lease.read().epoch})


def events(supervisor: Supervisor) -> list[dict]:
    with open(supervisor.workdir.events, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def test_coordinator_spawned_after_servers(harness):
    supervisor, _, spawned = harness()

    leader = supervisor.records[CHIEF]
    assert leader.state == TaskState.RUNNING
    assert leader.attempt == 0
    assert "--standby" not in spawned[-1].argv
    assert supervisor.standby is None


def test_standby_spawned_once_leader_trains(harness):
    supervisor, _, spawned = harness()
    lead(supervisor)

    supervisor._step()
    supervisor._step()

    assert supervisor.standby is not None
    assert supervisor.standby.state == TaskState.STANDBY
    assert supervisor.standby.attempt == 1
    assert spawned[-1].argv[-1] == "--standby"
    assert sum("--standby" in process.argv for process in spawned) == 1


def test_leader_death_promotes_standby(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    old, standby = supervisor.records[CHIEF], supervisor.standby
    lease = FileLease(supervisor.workdir.lease)
    old.process.code = -9

    supervisor._step()

    assert supervisor.records[CHIEF] is standby
    assert standby.state == TaskState.RUNNING
    assert standby.role == "leader"
    assert old.state == TaskState.SUPERSEDED
    assert supervisor.failovers == 1
    assert supervisor.restart_counts()["chief:0"] == 1
    assert lease.read().expired(lease.clock()), "the dead leader's lease must be revoked"
    chief_states = [(event["attempt"], event["state"]) for event in events(supervisor) if event["task"] == "chief:0"]
    assert chief_states[-3:] == [(0, "FAILED"), (0, "SUPERSEDED"), (1, "RUNNING")]


def test_leader_death_without_standby_backs_off(harness):
    supervisor, clock, spawned = harness(standby_coordinator=False)
    lead(supervisor)
    supervisor._step()
    assert supervisor.standby is None
    leader = supervisor.records[CHIEF]
    leader.process.code = ExitCode.CLUSTER_UNAVAILABLE

    supervisor._step()
    assert leader.state == TaskState.BACKOFF
    clock.now += 60
    supervisor._step()

    assert leader.state == TaskState.RUNNING
    assert leader.attempt == 1
    assert "--standby" not in spawned[-1].argv
    assert supervisor.failovers == 0


def test_expired_lease_supersedes_live_leader(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    old, standby = supervisor.records[CHIEF], supervisor.standby
    old.stopped_by_chaos = True
    lease = FileLease(supervisor.workdir.lease)
    lease.revoke(lease.read().holder)
    lease.try_acquire(f"chief:0 attempt 1 pid {standby.process.pid} host h", 30.0)

    supervisor._step()

    assert supervisor.records[CHIEF] is standby
    assert old.state == TaskState.SUPERSEDED
    assert old in supervisor.superseded
    assert old.process.signals == [signal.SIGCONT]
    assert supervisor.restart_counts()["chief:0"] == 1

    old.process.code = ExitCode.LEADERSHIP_LOST
    supervisor._step()

    assert supervisor.superseded == []
    assert supervisor.fenced_exits == 1
    assert old.state == TaskState.STOPPED


def test_superseded_leader_killed_after_grace(harness):
    supervisor, clock, _ = harness()
    lead(supervisor)
    supervisor._step()
    old, standby = supervisor.records[CHIEF], supervisor.standby
    zombie = old.process
    lease = FileLease(supervisor.workdir.lease)
    lease.revoke(lease.read().holder)
    lease.try_acquire(f"chief:0 attempt 1 pid {standby.process.pid} host h", 30.0)
    supervisor._step()

    clock.now += supervisor.spec.monitoring.heartbeat_timeout_seconds + 1
    supervisor._step()

    assert signal.SIGKILL in zombie.signals
    assert supervisor.superseded == []
    assert supervisor.fenced_exits == 0


def test_ps_loss_kills_leader_then_fails_over(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    leader, standby = supervisor.records[CHIEF], supervisor.standby
    leader_process = leader.process
    ps = supervisor.records[next(task for task in supervisor.records if task.job == "ps")]
    ps.process.code = -9

    supervisor._step()

    assert signal.SIGKILL in leader_process.signals
    assert ps.state == TaskState.BACKOFF
    supervisor._step()
    assert supervisor.records[CHIEF] is standby
    assert supervisor.failovers == 1


def test_standby_killed_is_replaced(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    first = supervisor.standby
    first.process.code = -9

    supervisor._step()
    assert first.state == TaskState.FAILED
    supervisor._step()

    assert supervisor.standby is not None
    assert supervisor.standby is not first
    assert supervisor.standby.attempt == 2
    assert supervisor.restart_counts()["chief:0"] == 0
    assert supervisor.records[CHIEF].state == TaskState.RUNNING


def test_standby_permanent_failure_disables_standby(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    supervisor.standby.process.code = ExitCode.FAILED

    outcome = supervisor._step()
    supervisor._step()

    assert outcome is None
    assert supervisor.standby is None
    assert supervisor.records[CHIEF].state == TaskState.RUNNING


def test_preempt_stops_standby_and_leader(harness):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    leader, standby = supervisor.records[CHIEF], supervisor.standby
    supervisor.request_stop(signal.SIGTERM)

    outcome = supervisor._step()

    assert outcome.exit_code == ExitCode.PREEMPTED
    assert standby.process is None
    assert standby.state == TaskState.STOPPED
    assert leader.state == TaskState.STOPPED


def test_stopped_server_killed_as_dead(harness, monkeypatch):
    supervisor, clock, _ = harness()
    ps = supervisor.records[next(task for task in supervisor.records if task.job == "ps")]
    ps_process = ps.process
    monkeypatch.setattr(supervisor_module.processes, "process_state",
                        lambda pid: "T" if pid == ps_process.pid else "S")

    for _ in range(supervisor.spec.monitoring.port_failures_before_dead):
        clock.now += supervisor.spec.monitoring.port_check_interval_seconds
        supervisor._step()

    assert signal.SIGKILL in ps_process.signals
    supervisor._step()
    assert ps.state == TaskState.BACKOFF
    ps_events = [event for event in events(supervisor) if event["task"] == "ps:0" and event["state"] == "FAILED"]
    assert ps_events[-1]["cause"] == "process stopped"


def test_stopped_standby_not_promoted(harness, monkeypatch):
    supervisor, _, _ = harness()
    lead(supervisor)
    supervisor._step()
    leader, standby = supervisor.records[CHIEF], supervisor.standby
    standby_process = standby.process
    monkeypatch.setattr(supervisor_module.processes, "process_state",
                        lambda pid: "T" if pid == standby_process.pid else "S")
    leader.process.code = -9

    supervisor._step()

    assert supervisor.failovers == 0
    assert signal.SIGKILL in standby_process.signals
    assert leader.state == TaskState.BACKOFF
