"""The group supervisor's restart decisions, driven one `_step()` at a time over scripted processes.

Processes are stand-ins that exit when a test sets their exit code or when
the supervisor kills them. The heartbeat, the task logs and `events.jsonl`
are real files. The slow test in test_mwms_launch.py runs the same paths with
real TensorFlow workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import time

import pytest

from tfps_ha.exit_codes import ExitCode
from tfps_ha.spec import RestartPolicySpec, TaskId, load_spec
from tfps_ha.supervisor import group as group_module
from tfps_ha.supervisor import probe as probe_module
from tfps_ha.supervisor.chaos import PlannedKill
from tfps_ha.supervisor.group import GroupSupervisor, decide_group_restart
from tfps_ha.supervisor.policy import Action
from tfps_ha.supervisor.state import TaskState
from tfps_ha.tf_config import resolve_cluster
from tfps_ha.workdir import Workdir, write_json_atomic

SPEC = os.path.join(os.path.dirname(__file__), "..", "cluster_specs", "local_mwms.yaml")
WORKER_0 = TaskId("worker", 0)
WORKER_1 = TaskId("worker", 1)
_pids = itertools.count(5_000_000)
FIXED_POLICY = RestartPolicySpec(max_restarts_per_task=10, max_restarts_per_job=30,
                                 backoff_initial_seconds=1.0, backoff_max_seconds=15.0)
FIXED_MONITORING = {"heartbeat_timeout_seconds": 30.0, "progress_timeout_seconds": 120.0,
                    "preemption_grace_seconds": 30.0, "port_check_interval_seconds": 2.0,
                    "port_failures_before_dead": 3}


class ScriptedProcess:
    """A process stand-in: `poll()` returns None until the test or a kill sets `code`.

    A process with `ignores_kill` stays alive after SIGKILL, like one stuck in
    uninterruptible sleep.
    """

    def __init__(self, argv, tf_config):
        self.argv = argv
        self.tf_config = tf_config
        self.pid = next(_pids)
        self.code = None
        self.signals = []
        self.ignores_kill = False

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


@dataclasses.dataclass
class Harness:
    supervisor: GroupSupervisor
    clock: Clock
    spawned: list

    def process(self, task: TaskId) -> ScriptedProcess:
        return self.supervisor.records[task].process

    def state(self, task: TaskId) -> TaskState:
        return self.supervisor.records[task].state

    def step(self, seconds: float = 0.2):
        self.clock.now += seconds
        return self.supervisor._step()

    def beat(self, step: int, phase: str = "training", age: float = 0.0) -> None:
        """Writes a heartbeat of the current chief process, `age` seconds old."""
        write_json_atomic(self.supervisor.workdir.heartbeat, {
            "pid": self.process(WORKER_0).pid, "time": time.time() - age, "step": step,
            "target_step": 600, "loss": 0.5, "phase": phase, "leader_epoch": 0})

    def events(self) -> list[dict]:
        with open(self.supervisor.workdir.events, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream]


@pytest.fixture
def harness(tmp_path, monkeypatch):
    spawned = []

    def spawn_task(argv, tf_config, log_path, extra_env=None):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"attempt of {tf_config['task']['type']}:{tf_config['task']['index']}\n")
        process = ScriptedProcess(argv, tf_config)
        spawned.append(process)
        return process

    def kill_process(process, sig=signal.SIGKILL):
        process.signals.append(sig)
        if sig == signal.SIGKILL and process.code is None and not process.ignores_kill:
            process.code = -sig

    def stop_process(process, grace_seconds, name):
        process.signals.append(signal.SIGTERM)
        if process.code is None:
            process.code = ExitCode.PREEMPTED
        return process.code

    monkeypatch.setattr(group_module.processes, "spawn_task", spawn_task)
    monkeypatch.setattr(group_module.processes, "kill_process", kill_process)
    monkeypatch.setattr(group_module.processes, "stop_process", stop_process)
    monkeypatch.setattr(group_module, "port_accepts", lambda address, timeout=1.0: True)
    monkeypatch.setattr(probe_module, "port_accepts", lambda address, timeout=1.0: True)

    def build(chaos=None, restart=None, **monitoring) -> Harness:
        # The deadlines and the policy are fixed here, so the tests do not follow the defaults.
        spec = load_spec(SPEC)
        deadlines = {**FIXED_MONITORING, **monitoring}
        spec = dataclasses.replace(
            spec, startup_timeout_seconds=60.0,
            monitoring=dataclasses.replace(spec.monitoring, **deadlines),
            restart={**spec.restart, "worker": restart or FIXED_POLICY})
        workdir = Workdir(str(tmp_path / "work"))
        os.makedirs(workdir.root)
        clock = Clock()
        supervisor = GroupSupervisor(spec, SPEC, resolve_cluster(spec), workdir, 600, chaos=chaos, clock=clock)
        supervisor.start()
        assert supervisor._step() is None
        return Harness(supervisor, clock, spawned)

    return build


def run_until_respawn(h: Harness, max_steps: int = 100) -> None:
    """Steps until the group restarted (attempt advanced); fails after `max_steps` steps."""
    attempt = h.supervisor.group_attempt
    for _ in range(max_steps):
        assert h.step() is None
        if h.supervisor.group_attempt > attempt:
            return
    raise AssertionError(f"group did not restart within {max_steps} steps; "
                         f"states {[r.state for r in h.supervisor.records.values()]}")


# ---------------------------------------------------------------- decisions


def test_group_decision_counts_each_task():
    policy = RestartPolicySpec(max_restarts_per_task=10, max_restarts_per_job=30,
                               backoff_initial_seconds=1.0, backoff_max_seconds=15.0)
    decision = decide_group_restart(WORKER_1, -9, 0, 2, policy)
    assert decision.action == Action.RESTART
    assert decision.delay_seconds == 1.0

    assert decide_group_restart(WORKER_1, -9, 3, 2, policy).delay_seconds == 8.0
    assert decide_group_restart(WORKER_1, -9, 9, 2, policy).action == Action.RESTART
    assert decide_group_restart(WORKER_1, -9, 10, 2, policy).action == Action.GIVE_UP


def test_group_decision_job_budget_never_exceeded():
    policy = RestartPolicySpec(max_restarts_per_task=100, max_restarts_per_job=10,
                               backoff_initial_seconds=1.0, backoff_max_seconds=15.0)
    # Three tasks: restarts 1..3 make 3, 6 and 9 task restarts; a 4th would make 12.
    assert decide_group_restart(WORKER_1, -9, 2, 3, policy).action == Action.RESTART
    decision = decide_group_restart(WORKER_1, -9, 3, 3, policy)
    assert decision.action == Action.GIVE_UP
    assert "restart budget of 10 restarts" in decision.reason


def test_group_decision_permanent_exit():
    policy = RestartPolicySpec(10, 30, 1.0, 15.0, permanent_exit_codes=(1, 2))
    decision = decide_group_restart(WORKER_0, ExitCode.FAILED, 0, 2, policy)
    assert decision.action == Action.GIVE_UP
    assert decision.reason.startswith("Task worker:0 exited with FAILED, which is permanent")


# ---------------------------------------------------------------- start


def test_start_spawns_every_worker(harness):
    h = harness()
    assert len(h.spawned) == 2
    assert [p.tf_config["task"] for p in h.spawned] == [{"type": "worker", "index": 0},
                                                         {"type": "worker", "index": 1}]
    assert set(h.spawned[0].tf_config["cluster"]) == {"worker"}
    assert h.supervisor.chief == WORKER_0
    assert h.state(WORKER_0) == TaskState.RUNNING
    assert h.state(WORKER_1) == TaskState.RUNNING
    assert "--spec" in h.spawned[0].argv
    assert "--standby" not in h.spawned[0].argv


def test_startup_deadline_names_task(harness, monkeypatch):
    monkeypatch.setattr(group_module, "port_accepts", lambda address, timeout=1.0: False)
    h = harness()
    outcome = h.step(61.0)
    assert outcome.exit_code == ExitCode.STARTUP_TIMEOUT
    assert outcome.message.startswith("Task worker:0 did not accept connections on 127.0.0.1:")
    assert "start-up deadline of 60 s" in outcome.message


# ---------------------------------------------------------------- group restarts


def test_worker_kill_restarts_whole_group(harness):
    h = harness()
    old_worker_0 = h.process(WORKER_0)
    h.process(WORKER_1).code = -signal.SIGKILL

    assert h.step() is None
    assert signal.SIGKILL in old_worker_0.signals
    assert h.state(WORKER_1) == TaskState.FAILED
    assert h.step() is None
    assert h.state(WORKER_0) == TaskState.BACKOFF
    assert h.state(WORKER_1) == TaskState.BACKOFF
    assert len(h.spawned) == 2

    assert h.step(0.5) is None
    assert len(h.spawned) == 2, "respawned before the 1 s backoff of restart.worker"
    assert h.step(0.6) is None
    assert len(h.spawned) == 4
    assert h.step() is None
    assert h.supervisor.group_attempt == 1
    assert h.supervisor.restart_counts() == {"worker:0": 1, "worker:1": 1}
    assert all(record.attempt == 1 for record in h.supervisor.records.values())
    assert h.spawned[2].tf_config == old_worker_0.tf_config


def test_group_restart_events(harness):
    h = harness()
    h.process(WORKER_1).code = -signal.SIGKILL
    run_until_respawn(h)
    assert h.step() is None

    worker_0 = [(e["state"], e["cause"]) for e in h.events() if e["task"] == "worker:0"]
    assert worker_0[2:] == [
        ("FAILED", "worker:1 lost"),
        ("BACKOFF", "group restart after worker:1 exited with signal 9"),
        ("STARTING", worker_0[4][1]),
        ("RUNNING", "port accepts connections"),
    ]
    failed_1 = [e for e in h.events() if e["task"] == "worker:1" and e["state"] == "FAILED"]
    assert failed_1[0]["signal"] == "SIGKILL"
    assert failed_1[0]["attempt"] == 0


def test_preempted_exit_waits_for_peers(harness):
    h = harness()
    worker_1 = h.process(WORKER_1)
    h.process(WORKER_0).code = ExitCode.PREEMPTED

    assert h.step() is None
    assert worker_1.signals == [], "a peer that is saving the same backup was killed"
    assert h.state(WORKER_1) == TaskState.RUNNING

    worker_1.code = ExitCode.PREEMPTED
    assert h.step() is None
    assert worker_1.signals == []
    assert h.state(WORKER_1) == TaskState.BACKOFF
    run_until_respawn(h)
    assert h.supervisor.restart_counts() == {"worker:0": 1, "worker:1": 1}


def test_preempted_peer_killed_after_grace(harness):
    h = harness(preemption_grace_seconds=5.0)
    worker_1 = h.process(WORKER_1)
    h.process(WORKER_0).code = ExitCode.PREEMPTED
    assert h.step() is None
    assert h.step(4.0) is None
    assert worker_1.signals == []

    assert h.step(1.5) is None
    assert worker_1.signals == [signal.SIGKILL]
    run_until_respawn(h)


def test_permanent_exit_gives_up(harness):
    h = harness()
    h.process(WORKER_1).code = ExitCode.FAILED

    assert h.step() is None
    outcome = h.step()
    assert outcome.exit_code == ExitCode.RESTART_BUDGET_SPENT
    assert outcome.message.startswith("Task worker:1 exited with FAILED, which is permanent")
    assert "Last log line: 'attempt of worker:1'" in outcome.message
    assert h.state(WORKER_1) == TaskState.GAVE_UP
    assert len(h.spawned) == 2


def test_restart_budget_spent(harness):
    policy = RestartPolicySpec(max_restarts_per_task=2, max_restarts_per_job=30,
                               backoff_initial_seconds=0.0, backoff_max_seconds=0.0)
    h = harness(restart=policy)
    for _ in range(2):
        h.process(WORKER_1).code = -signal.SIGKILL
        run_until_respawn(h)

    h.process(WORKER_1).code = -signal.SIGKILL
    assert h.step() is None
    outcome = h.step()
    assert outcome.exit_code == ExitCode.RESTART_BUDGET_SPENT
    assert "after 3 attempts; its restart budget of 2 restarts is spent" in outcome.message
    assert h.supervisor.group_restarts == 2


def test_signal_death_chosen_over_peer_error(harness):
    h = harness()
    h.process(WORKER_0).code = ExitCode.CLUSTER_UNAVAILABLE
    h.process(WORKER_1).code = -signal.SIGKILL

    assert h.step() is None
    assert h.supervisor.failure is None
    backoff = [e for e in h.events() if e["state"] == "BACKOFF"]
    assert backoff[0]["cause"] == "group restart after worker:1 exited with signal 9"


def test_permanent_exit_chosen_over_peer_error(harness):
    h = harness()
    h.process(WORKER_0).code = ExitCode.CLUSTER_UNAVAILABLE
    h.process(WORKER_1).code = ExitCode.USAGE

    outcome = h.step()
    assert outcome.exit_code == ExitCode.RESTART_BUDGET_SPENT
    assert outcome.message.startswith("Task worker:1 exited with USAGE")


def test_unkillable_process_fails_the_launch(harness):
    h = harness()
    survivor = h.process(WORKER_0)
    survivor.ignores_kill = True
    h.process(WORKER_1).code = -signal.SIGKILL
    assert h.step() is None
    assert h.step(10.0) is None
    assert len(h.spawned) == 2

    outcome = h.step(21.0)
    assert outcome.exit_code == ExitCode.FAILED
    assert outcome.message.startswith(f"Task worker:0 (pid {survivor.pid}) did not exit within 30 s of SIGKILL")


# ---------------------------------------------------------------- the end of the job


def test_chief_exit_ok_ends_job(harness):
    h = harness()
    worker_1 = h.process(WORKER_1)
    h.process(WORKER_0).code = ExitCode.OK

    outcome = h.step()
    assert outcome.exit_code == ExitCode.OK
    assert worker_1.signals == [signal.SIGTERM]
    assert h.state(WORKER_0) == TaskState.SUCCEEDED
    h.supervisor.stop_all()
    assert h.state(WORKER_0) == TaskState.STOPPED
    assert h.state(WORKER_1) == TaskState.STOPPED


def test_worker_exit_ok_waits_for_chief(harness):
    h = harness()
    h.process(WORKER_1).code = ExitCode.OK
    assert h.step() is None
    assert h.state(WORKER_1) == TaskState.SUCCEEDED
    assert h.process(WORKER_0).signals == []

    h.process(WORKER_0).code = ExitCode.OK
    assert h.step().exit_code == ExitCode.OK


def test_chief_failure_after_worker_finished_restarts(harness):
    h = harness()
    h.process(WORKER_1).code = ExitCode.OK
    assert h.step() is None
    h.process(WORKER_0).code = -signal.SIGSEGV
    run_until_respawn(h)
    assert h.step() is None
    assert h.state(WORKER_1) == TaskState.RUNNING
    assert h.supervisor.records[WORKER_1].restarts == 1


# ---------------------------------------------------------------- health, chaos and stop


def test_stale_heartbeat_restarts_group(harness):
    h = harness()
    chief = h.process(WORKER_0)
    h.beat(100, age=31.0)
    assert h.step() is None
    assert chief.signals == [signal.SIGKILL]
    assert h.step() is None
    run_until_respawn(h)
    failed = [e for e in h.events() if e["task"] == "worker:0" and e["state"] == "FAILED"]
    assert failed[0]["cause"].startswith("hang: heartbeat is 31 s old")


def test_missing_heartbeat_restarts_group(harness):
    h = harness()
    chief = h.process(WORKER_0)
    assert h.step(89.0) is None
    assert chief.signals == []
    assert h.step(2.0) is None
    assert chief.signals == [signal.SIGKILL]


def test_stalled_step_restarts_group(harness):
    h = harness()
    chief = h.process(WORKER_0)
    h.beat(100)
    assert h.step() is None
    for _ in range(13):
        h.beat(100)
        assert h.step(10.0) is None
    assert chief.signals == [signal.SIGKILL]


def test_chaos_kills_at_step(harness):
    kill = PlannedKill(WORKER_1, 60, signal.SIGKILL)
    h = harness(chaos=[kill])
    victim = h.process(WORKER_1)
    h.beat(50)
    assert h.step() is None
    assert victim.signals == []

    h.beat(70)
    assert h.step() is None
    assert victim.signals == [signal.SIGKILL]
    run_until_respawn(h)
    recovery = h.supervisor.progress.recoveries[0]
    assert recovery["task"] == "worker:1"
    assert recovery["step"] == 70
    failed = [e for e in h.events() if e["task"] == "worker:1" and e["state"] == "FAILED"]
    assert failed[0]["cause"] == "chaos SIGKILL"


def test_lost_steps_counted_after_restart(harness):
    h = harness()
    h.beat(80)
    assert h.step() is None
    h.process(WORKER_1).code = -signal.SIGKILL
    run_until_respawn(h)
    h.beat(50)
    assert h.step() is None
    assert h.supervisor.progress.lost_steps == 30


def test_stop_request_preempts_group(harness):
    h = harness()
    worker_0, worker_1 = h.process(WORKER_0), h.process(WORKER_1)
    h.supervisor.request_stop(signal.SIGTERM)
    outcome = h.step()
    assert outcome.exit_code == ExitCode.PREEMPTED
    assert outcome.message == ("Launcher received SIGTERM; the worker group saved a backup and stopped. "
                               "Run the same command again to resume.")
    assert signal.SIGTERM in worker_0.signals
    assert signal.SIGTERM in worker_1.signals
    assert h.state(WORKER_0) == TaskState.STOPPED


def test_stop_request_during_backoff(harness):
    h = harness()
    h.process(WORKER_1).code = -signal.SIGKILL
    assert h.step() is None
    h.supervisor.request_stop(signal.SIGINT)
    outcome = h.step()
    assert outcome.exit_code == ExitCode.PREEMPTED
    assert "the worker group was restarting, so it saved no new backup" in outcome.message
    assert h.state(WORKER_0) == TaskState.STOPPED
    assert h.state(WORKER_1) == TaskState.FAILED
