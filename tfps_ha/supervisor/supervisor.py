"""The supervisor's control loop: one `_step()` per iteration.

Each step polls every task process, probes PS and worker ports, reads the
coordinator heartbeat, applies the restart policy to what died, carries out
due chaos kills and prints progress. Process handling lives here; restart
decisions come from the pure `policy.decide`.

Failure handling:
  * A worker that dies is restarted at the same address; the coordinator keeps
    training on the other workers meanwhile.
  * A PS that dies takes its variables with it, so the supervisor also kills
    the coordinator, restarts the PS at the same address, then restarts the
    coordinator, which restores the latest checkpoint.
  * A coordinator that exits with a retryable code, dies by a signal, or hangs
    (stale heartbeat, or no step progress while workers are up) is restarted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import time

from tfps_ha.exit_codes import ExitCode, describe
from tfps_ha.net import port_accepts
from tfps_ha.spec import ClusterSpec, TaskId
from tfps_ha.supervisor import process as processes
from tfps_ha.supervisor.chaos import PlannedKill
from tfps_ha.supervisor.policy import Action, decide
from tfps_ha.supervisor.state import TaskState, check_transition
from tfps_ha.tf_config import ResolvedCluster, render_tf_config
from tfps_ha.workdir import Workdir, read_json

logger = logging.getLogger(__name__)

CHIEF = TaskId("chief", 0)


@dataclasses.dataclass
class TaskRecord:
    """The supervisor's view of one task."""

    task: TaskId
    address: str
    state: TaskState = TaskState.PENDING
    attempt: int = -1
    restarts: int = 0
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    port_failures: int = 0
    last_port_check: float = 0.0
    last_exit_code: int | None = None
    last_cause: str = ""


@dataclasses.dataclass
class Outcome:
    """The end state of a supervised job: its exit code and one-line message."""

    exit_code: ExitCode
    message: str


class Supervisor:
    """Owns every task process of one local launch."""

    def __init__(self, spec: ClusterSpec, spec_path: str, cluster: ResolvedCluster, workdir: Workdir,
                 target_steps: int, chaos: list[PlannedKill] | None = None, clock=time.monotonic):
        self.spec = spec
        self.spec_path = spec_path
        self.cluster = cluster
        self.workdir = workdir
        self.target_steps = target_steps
        self.chaos = list(chaos or [])
        self.clock = clock
        self.records = {task: TaskRecord(task, cluster.address(task))
                        for task in cluster.tasks() if task.job in ("ps", "worker", "chief")}
        self.job_restarts: dict[str, int] = {}
        self.started_at = clock()
        self.coordinator_started = False
        self.stop_requested: int | None = None

        self.heartbeat: dict | None = None
        self.step_progress_at = clock()
        self.last_step = -1
        self.first_step: int | None = None
        self.lost_steps = 0
        self.step_at_coordinator_death: int | None = None
        self.recoveries: list[dict] = []
        self._open_recoveries: list[dict] = []
        self._last_status = clock()
        self._status_window = (clock(), -1)

    # -- public -----------------------------------------------------------------

    def start(self) -> None:
        """Spawns attempt 0 of every PS and worker; the coordinator follows once they are up."""
        for record in self.records.values():
            if record.task.job != "chief":
                self._spawn(record)

    def run(self, poll_seconds: float = 0.2) -> Outcome:
        """Steps until the job ends; returns its outcome."""
        while True:
            outcome = self._step()
            if outcome is not None:
                return outcome
            time.sleep(poll_seconds)

    def request_stop(self, signum: int) -> None:
        """Records a SIGINT or SIGTERM; the next step preempts the coordinator."""
        self.stop_requested = signum

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        """Stops every task: coordinator first, then workers, then PS."""
        order = sorted(self.records.values(), key=lambda r: {"chief": 0, "worker": 1, "ps": 2}[r.task.job])
        for record in order:
            if record.process is not None and record.process.poll() is None:
                processes.stop_process(record.process, grace_seconds, str(record.task))
            if record.state != TaskState.STOPPED:
                self._transition(record, TaskState.STOPPED, cause="job ended")

    # -- the control loop -----------------------------------------------------------

    def _step(self) -> Outcome | None:
        now = self.clock()

        if self.stop_requested is not None:
            return self._preempt(now)

        outcome = self._poll_exits(now)
        if outcome is not None:
            return outcome

        outcome = self._check_startup(now)
        if outcome is not None:
            return outcome

        self._probe_ports(now)
        self._restart_due(now)
        self._read_heartbeat(now)
        self._check_coordinator_health(now)
        self._run_chaos(now)
        self._print_status(now)
        return None

    def _poll_exits(self, now: float) -> Outcome | None:
        for record in self.records.values():
            if record.process is None or record.state not in (TaskState.STARTING, TaskState.RUNNING):
                continue
            code = record.process.poll()
            if code is None:
                continue
            outcome = self._handle_exit(record, code, now)
            if outcome is not None:
                return outcome
        return None

    def _handle_exit(self, record: TaskRecord, code: int, now: float) -> Outcome | None:
        record.last_exit_code = code
        cause = record.last_cause or describe(code)
        record.last_cause = ""
        record.process = None

        if record.task == CHIEF and code == ExitCode.OK:
            self._transition(record, TaskState.SUCCEEDED, exit_code=code, cause="target reached")
            return Outcome(ExitCode.OK, f"Training reached step {self.target_steps}.")

        self._transition(record, TaskState.FAILED, exit_code=code, cause=cause)
        if record.task == CHIEF:
            self.step_at_coordinator_death = self.last_step
        if record.task.job == "ps":
            self._kill_coordinator_for_ps_loss(record)

        decision = decide(record.task, code, record.restarts, self.job_restarts.get(record.task.job, 0),
                          self.spec.restart[record.task.job])
        if decision.action == Action.GIVE_UP:
            self._transition(record, TaskState.GAVE_UP, exit_code=code, cause=decision.reason)
            log_path = self.workdir.task_log(str(record.task), record.attempt)
            message = f"{decision.reason} Last log line: {_last_log_line(log_path)!r} ({log_path})."
            logger.error("%s", message)
            return Outcome(ExitCode.RESTART_BUDGET_SPENT, message)

        logger.warning("%s", decision.reason)
        record.restarts += 1
        self.job_restarts[record.task.job] = self.job_restarts.get(record.task.job, 0) + 1
        record.restart_at = now + decision.delay_seconds
        self._transition(record, TaskState.BACKOFF, exit_code=code, cause=cause)
        return None

    def _kill_coordinator_for_ps_loss(self, ps: TaskRecord) -> None:
        chief = self.records[CHIEF]
        if chief.process is not None and chief.process.poll() is None:
            logger.warning("Task %s was lost, so the coordinator's variables on it are gone; "
                           "killing the coordinator so it restarts from the latest checkpoint.", ps.task)
            chief.last_cause = f"{ps.task} lost"
            processes.kill_process(chief.process)

    def _check_startup(self, now: float) -> Outcome | None:
        deadline = self.spec.startup_timeout_seconds
        for record in self.records.values():
            if record.state != TaskState.STARTING or record.task.job == "chief":
                continue
            if port_accepts(record.address, timeout=0.2):
                self._transition(record, TaskState.RUNNING, cause="port accepts connections")
                record.port_failures = 0
                record.last_port_check = now
            elif now - record.started_at > deadline:
                message = (f"Task {record.task} did not accept connections on {record.address} within "
                           f"the start-up deadline of {deadline:g} s (startup_timeout_seconds); see "
                           f"{self.workdir.task_log(str(record.task), record.attempt)}.")
                logger.error("%s", message)
                return Outcome(ExitCode.STARTUP_TIMEOUT, message)

        servers_up = all(r.state == TaskState.RUNNING for r in self.records.values() if r.task.job != "chief")
        if servers_up and not self.coordinator_started:
            self.coordinator_started = True
            logger.info("All %d PS and worker tasks are up; starting the coordinator.", len(self.records) - 1)
            self._spawn(self.records[CHIEF])
        return None

    def _probe_ports(self, now: float) -> None:
        monitoring = self.spec.monitoring
        for record in self.records.values():
            if record.task.job == "chief" or record.state != TaskState.RUNNING:
                continue
            if now - record.last_port_check < monitoring.port_check_interval_seconds:
                continue
            record.last_port_check = now
            if port_accepts(record.address, timeout=1.0):
                record.port_failures = 0
                continue
            record.port_failures += 1
            if record.port_failures >= monitoring.port_failures_before_dead and record.process is not None:
                logger.warning("Task %s did not accept connections on %s for %d probes in a row; "
                               "killing it as dead.", record.task, record.address, record.port_failures)
                record.last_cause = "port stopped answering"
                processes.kill_process(record.process)

    def _restart_due(self, now: float) -> None:
        for record in self.records.values():
            if record.state == TaskState.BACKOFF and now >= record.restart_at:
                if record.task == CHIEF and not self.coordinator_started:
                    continue
                self._spawn(record)

    def _read_heartbeat(self, now: float) -> None:
        beat = read_json(self.workdir.heartbeat)
        chief = self.records[CHIEF]
        if not beat or chief.process is None or beat.get("pid") != chief.process.pid:
            return
        self.heartbeat = beat
        step = int(beat.get("step", 0))

        if self.first_step is None:
            self.first_step = step
        if self.step_at_coordinator_death is not None:
            self.lost_steps += max(0, self.step_at_coordinator_death - step)
            self.step_at_coordinator_death = None

        if step != self.last_step:
            self.last_step = step
            self.step_progress_at = now
        for recovery in list(self._open_recoveries):
            recovery.setdefault("min_step", step)
            recovery["min_step"] = min(recovery["min_step"], step)
            if beat.get("time", 0) > recovery["killed_at_wall"] and step > recovery["min_step"]:
                recovery["recovery_seconds"] = round(now - recovery["killed_at"], 3)
                self._open_recoveries.remove(recovery)

    def _check_coordinator_health(self, now: float) -> None:
        chief = self.records[CHIEF]
        if chief.state != TaskState.RUNNING or chief.process is None:
            return
        monitoring = self.spec.monitoring
        beat = self.heartbeat if self.heartbeat and self.heartbeat.get("pid") == chief.process.pid else None

        if beat is None:
            # TF import, strategy build and restore come before the first heartbeat.
            allowance = self.spec.startup_timeout_seconds + monitoring.heartbeat_timeout_seconds
            if now - chief.started_at > allowance:
                self._kill_hung_coordinator(chief, f"no heartbeat {allowance:g} s after start")
            return

        age = time.time() - float(beat.get("time", 0))
        if age > monitoring.heartbeat_timeout_seconds:
            self._kill_hung_coordinator(chief, f"heartbeat is {age:.0f} s old")
            return

        workers_up = all(r.state == TaskState.RUNNING for r in self.records.values() if r.task.job == "worker")
        stalled = now - max(self.step_progress_at, chief.started_at)
        if workers_up and beat.get("phase") == "training" and stalled > monitoring.progress_timeout_seconds:
            self._kill_hung_coordinator(chief, f"step {self.last_step} has not advanced for {stalled:.0f} s")

    def _kill_hung_coordinator(self, chief: TaskRecord, reason: str) -> None:
        logger.error("Coordinator %s is hung (%s); killing it so it restarts.", chief.task, reason)
        chief.last_cause = f"hang: {reason}"
        processes.kill_process(chief.process)

    def _run_chaos(self, now: float) -> None:
        while self.chaos and self.last_step >= self.chaos[0].step:
            kill = self.chaos.pop(0)
            record = self.records[kill.task]
            if record.process is None or record.process.poll() is not None:
                logger.warning("Chaos kill %s skipped: the task is not running.", kill.describe())
                continue
            logger.warning("Chaos: sending %s to task %s at step %d.",
                           signal.Signals(kill.signal).name, kill.task, self.last_step)
            record.last_cause = f"chaos {signal.Signals(kill.signal).name}"
            recovery = {"task": str(kill.task), "signal": signal.Signals(kill.signal).name,
                        "step": self.last_step, "killed_at": now, "killed_at_wall": time.time()}
            self.recoveries.append(recovery)
            self._open_recoveries.append(recovery)
            processes.kill_process(record.process, kill.signal)

    def _print_status(self, now: float) -> None:
        if now - self._last_status < self.spec.monitoring.status_interval_seconds:
            return
        self._last_status = now
        window_start, window_step = self._status_window
        self._status_window = (now, self.last_step)
        if self.last_step < 0:
            up = sum(r.state == TaskState.RUNNING for r in self.records.values())
            print(f"Waiting for the coordinator's first step; tasks up {up}/{len(self.records)}.", flush=True)
            return
        rate = 0.0
        if window_step >= 0 and now > window_start:
            rate = max(0, self.last_step - window_step) / (now - window_start)
        eta = f"{(self.target_steps - self.last_step) / rate:.0f} s" if rate > 0 else "unknown"
        loss = self.heartbeat.get("loss") if self.heartbeat else None
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "n/a"
        up = sum(r.state == TaskState.RUNNING for r in self.records.values())
        restarts = sum(r.restarts for r in self.records.values())
        percent = 100.0 * self.last_step / self.target_steps
        print(f"Step {self.last_step}/{self.target_steps} ({percent:.0f}%), {rate:.1f} steps/s, "
              f"loss {loss_text}, ETA {eta}; tasks up {up}/{len(self.records)}; restarts {restarts}.",
              flush=True)

    def _preempt(self, now: float) -> Outcome:
        name = signal.Signals(self.stop_requested).name
        chief = self.records[CHIEF]
        grace = self.spec.monitoring.preemption_grace_seconds
        code = None
        if chief.process is not None and chief.process.poll() is None:
            logger.warning("Launcher received %s; asking the coordinator to save a checkpoint "
                           "(grace %.0f s).", name, grace)
            code = processes.stop_process(chief.process, grace, str(CHIEF))
            chief.process = None
            self._transition(chief, TaskState.STOPPED, exit_code=code, cause=f"launcher received {name}")
        saved = code == ExitCode.PREEMPTED
        message = (f"Launcher received {name}; the coordinator "
                   + ("saved a checkpoint and stopped" if saved else f"stopped with {describe(code or 0)}")
                   + ". Run the same command again to resume.")
        return Outcome(ExitCode.PREEMPTED, message)

    # -- helpers ---------------------------------------------------------------------

    def _spawn(self, record: TaskRecord) -> None:
        record.attempt += 1
        argv = ["--spec", self.spec_path, "--workdir", self.workdir.root, "--steps", str(self.target_steps)]
        log_path = self.workdir.task_log(str(record.task), record.attempt)
        record.process = processes.spawn_task(argv, render_tf_config(self.cluster, record.task), log_path)
        record.started_at = self.clock()
        record.port_failures = 0
        self._transition(record, TaskState.STARTING, cause=f"spawned pid {record.process.pid}")
        if record.task == CHIEF:
            self._transition(record, TaskState.RUNNING, cause="coordinator process started")
        if record.attempt > 0:
            logger.info("Task %s started attempt %d (pid %d); log %s.",
                        record.task, record.attempt, record.process.pid, log_path)

    def _transition(self, record: TaskRecord, state: TaskState, exit_code: int | None = None,
                    cause: str = "") -> None:
        check_transition(record.state, state)
        record.state = state
        signal_name = signal.Signals(-exit_code).name if exit_code is not None and exit_code < 0 else None
        event = {
            "ts": time.time(), "task": str(record.task), "attempt": record.attempt, "state": state.value,
            "exit_code": exit_code if exit_code is None or exit_code >= 0 else None,
            "signal": signal_name, "cause": cause,
        }
        with open(self.workdir.events, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event) + "\n")

    def restart_counts(self) -> dict[str, int]:
        """Returns restarts per task, such as `{"worker:0": 1}`."""
        return {str(task): record.restarts for task, record in self.records.items()}


def _last_log_line(path: str) -> str:
    """Returns the last non-empty line of a task log, where the error usually is."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(0, stream.tell() - 8192))
            lines = [line.strip() for line in stream.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "(empty log)"
