"""The supervisor's control loop: one `_step()` per iteration.

Each step polls every task process, probes PS and worker ports, reads the
coordinator heartbeat and the leader lease, applies the restart policy to
what died, keeps a standby coordinator warm, carries out due chaos kills and
prints progress. Process handling lives here; restart decisions come from the
pure `policy.decide`.

Failure handling:
  * A worker that dies is restarted at the same address; the coordinator keeps
    training on the other workers meanwhile.
  * A PS that dies takes its variables with it, so the supervisor also kills
    the leading coordinator, restarts the PS at the same address, and a
    coordinator restores the latest checkpoint.
  * A leading coordinator that exits with a retryable code, dies by a signal,
    or hangs (stale heartbeat, or no step progress while workers are up) is
    replaced. With a standby, the supervisor revokes the dead leader's lease
    and the standby takes over; without one, a new coordinator starts after
    the backoff. Either way the restart counts against the chief's budget.
  * A leader whose lease expired while its process lives (stopped or hung)
    is superseded when the standby takes the lease. It gets a grace period
    to notice and exit, then it is killed. Its saves meet the lease fence.
"""

from __future__ import annotations

import logging
import signal
import time

from tfps_ha.coordinator.leadership import holder_pid
from tfps_ha.coordinator.main import ATTEMPT_ENV
from tfps_ha.exit_codes import ExitCode, describe
from tfps_ha.lease import LeaseError
from tfps_ha.lease.file import FileLease
from tfps_ha.net import port_accepts
from tfps_ha.spec import ClusterSpec, TaskId
from tfps_ha.supervisor import process as processes
from tfps_ha.supervisor.chaos import PlannedKill
from tfps_ha.supervisor.policy import Action, decide
from tfps_ha.supervisor.probe import STOPPED_STATES, probe_server
from tfps_ha.supervisor.progress import Progress
from tfps_ha.supervisor.records import Outcome, TaskRecord, last_log_line, record_transition, run_steps
from tfps_ha.supervisor.state import TaskState
from tfps_ha.tf_config import ResolvedCluster, render_tf_config
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)

CHIEF = TaskId("chief", 0)


class Supervisor:
    """Owns every task process of one local launch.

    `records[CHIEF]` is the leading coordinator's attempt; `standby` is the
    warm standby coordinator, if any; `superseded` lists earlier leaders whose
    processes still live.
    """

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
        self.records[CHIEF].role = "leader"
        self.standby: TaskRecord | None = None
        self.superseded: list[TaskRecord] = []
        self.job_restarts: dict[str, int] = {}
        self.chief_attempts = 0
        self.failovers = 0
        self.standby_failures = 0
        self.standby_disabled = False
        self.fenced_exits = 0
        self.lease = FileLease(workdir.lease)
        self.started_at = clock()
        self.coordinator_started = False
        self.stop_requested: int | None = None
        self.progress = Progress(workdir, target_steps, clock)
        self._last_status = clock()

    # -- public -----------------------------------------------------------------

    def start(self) -> None:
        """Spawns attempt 0 of every PS and worker; the coordinator follows once they are up."""
        for record in self.records.values():
            if record.task.job != "chief":
                self._spawn(record)

    def run(self, poll_seconds: float = 0.2) -> Outcome:
        """Steps until the job ends; returns its outcome."""
        return run_steps(self._step, poll_seconds)

    def request_stop(self, signum: int) -> None:
        """Records a SIGINT or SIGTERM; the next step preempts the coordinator."""
        self.stop_requested = signum

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        """Stops every task: the standby first, then coordinators, then workers, then PS.

        The standby goes first so that it cannot take the lease the leader
        releases while stopping.
        """
        order = [record for record in [self.standby, *self.superseded] if record is not None]
        order += sorted(self.records.values(), key=lambda r: {"chief": 0, "worker": 1, "ps": 2}[r.task.job])
        for record in order:
            if record.process is not None and record.process.poll() is None:
                if record.stopped_by_chaos or processes.process_state(record.process.pid) in STOPPED_STATES:
                    # A stopped process cannot act on SIGTERM; it is superseded, so it has nothing to save.
                    processes.kill_process(record.process)
                processes.stop_process(record.process, grace_seconds, self._name(record))
            if record.state != TaskState.STOPPED:
                self._transition(record, TaskState.STOPPED, cause="job ended")

    def restart_counts(self) -> dict[str, int]:
        """Returns restarts per task, such as `{"worker:0": 1}`."""
        return {str(task): record.restarts for task, record in self.records.items()}

    # -- the control loop -----------------------------------------------------------

    def _step(self) -> Outcome | None:
        now = self.clock()

        if self.stop_requested is not None:
            return self._preempt()

        outcome = self._poll_exits(now)
        if outcome is not None:
            return outcome

        outcome = self._check_startup(now)
        if outcome is not None:
            return outcome

        self._probe_ports(now)
        self._restart_due(now)
        self._read_lease(now)
        self._poll_superseded(now)
        leader = self.records[CHIEF]
        beat = self.progress.read(leader.process.pid if leader.process else None, now)
        self._check_coordinator_health(now)
        self._keep_standby(beat)
        self._run_chaos(now)
        self._print_status(now)
        return None

    def _poll_exits(self, now: float) -> Outcome | None:
        for record in list(self.records.values()) + ([self.standby] if self.standby else []):
            if record.process is None or record.state not in (TaskState.STARTING, TaskState.RUNNING,
                                                              TaskState.STANDBY):
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
        pid = record.process.pid
        record.process = None

        if record is self.records.get(CHIEF) and code == ExitCode.OK:
            self._transition(record, TaskState.SUCCEEDED, exit_code=code, cause="target reached")
            return Outcome(ExitCode.OK, f"Training reached step {self.target_steps}.")

        self._transition(record, TaskState.FAILED, exit_code=code, cause=cause)
        if record is self.standby:
            self._handle_standby_exit(record, code)
            return None
        if record is self.records[CHIEF]:
            self.progress.leader_lost()
            self._revoke_lease_of(pid)
        if record.task.job == "ps":
            self._kill_coordinator_for_ps_loss(record)

        chief_record = self.records[CHIEF] if record.task == CHIEF else record
        decision = decide(record.task, code, chief_record.restarts, self.job_restarts.get(record.task.job, 0),
                          self.spec.restart[record.task.job])
        if decision.action == Action.GIVE_UP:
            self._transition(record, TaskState.GAVE_UP, exit_code=code, cause=decision.reason)
            log_path = self.workdir.task_log(str(record.task), record.attempt)
            message = f"{decision.reason} Last log line: {last_log_line(log_path)!r} ({log_path})."
            logger.error("%s", message)
            return Outcome(_give_up_code(code, self.spec.restart[record.task.job].permanent_exit_codes), message)

        chief_record.restarts += 1
        self.job_restarts[record.task.job] = self.job_restarts.get(record.task.job, 0) + 1
        if record.task == CHIEF and self._standby_ready():
            logger.warning("Task %s exited with %s on attempt %d; the standby coordinator takes over.",
                           record.task, describe(code), record.attempt)
            self._promote_standby(record, f"attempt {record.attempt} exited with {describe(code)}")
            return None

        logger.warning("%s", decision.reason)
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
        for record in self.records.values():
            if record.task.job == "chief" or record.state != TaskState.RUNNING or record.process is None:
                continue
            probe_server(record, now, self.spec.monitoring)

    def _restart_due(self, now: float) -> None:
        for record in self.records.values():
            if record.state == TaskState.BACKOFF and now >= record.restart_at:
                if record.task == CHIEF and not self.coordinator_started:
                    continue
                self._spawn(record)

    # -- leadership -----------------------------------------------------------------

    def _read_lease(self, now: float) -> None:
        """Promotes the standby when it took the lease from a leader whose process still lives."""
        if self.standby is None or self.standby.process is None:
            return
        try:
            record = self.lease.read()
        except LeaseError as error:
            logger.warning("Could not read the leader lease: %s", error)
            return
        if record is None or holder_pid(record.holder) != self.standby.process.pid:
            return

        leader = self.records[CHIEF]
        if leader.state != TaskState.RUNNING or leader.process is None:
            return
        logger.error("Coordinator attempt %d (pid %d) let its lease expire while its process lives; the "
                     "standby took over at epoch %d.", leader.attempt, leader.process.pid, record.epoch)
        self.progress.leader_lost()
        leader.restarts += 1
        self.job_restarts["chief"] = self.job_restarts.get("chief", 0) + 1
        self._promote_standby(leader, f"lease expired; standby took over at epoch {record.epoch}")

    def _promote_standby(self, leader: TaskRecord, cause: str) -> None:
        standby = self.standby
        now = self.clock()
        self._transition(leader, TaskState.SUPERSEDED, cause=cause)
        if leader.process is not None:
            leader.kill_at = now + self.spec.monitoring.heartbeat_timeout_seconds
            self.superseded.append(leader)
            if leader.stopped_by_chaos:
                logger.warning("Chaos: sending SIGCONT to the stopped coordinator attempt %d (pid %d), "
                               "now a zombie, so its next save meets the fence.", leader.attempt,
                               leader.process.pid)
                processes.kill_process(leader.process, signal.SIGCONT)
                leader.stopped_by_chaos = False

        standby.role = "leader"
        standby.restarts = leader.restarts
        standby.started_at = now
        self.records[CHIEF] = standby
        self.standby = None
        self.failovers += 1
        self._transition(standby, TaskState.RUNNING, cause=f"took over from attempt {leader.attempt}")
        logger.warning("Failover %d: standby coordinator attempt %d (pid %d) leads; it restores the latest "
                       "checkpoint.", self.failovers, standby.attempt, standby.process.pid)

    def _handle_standby_exit(self, standby: TaskRecord, code: int) -> None:
        """Replaces a standby that died, or gives up on standbys after a permanent exit or too many.

        A standby's exit never ends the job: the leader still trains.
        """
        self.standby = None
        self.standby_failures += 1
        policy = self.spec.restart["chief"]
        permanent = code > 0 and code in policy.permanent_exit_codes
        if permanent or self.standby_failures > policy.max_restarts_per_task:
            self.standby_disabled = True
            logger.error("Standby coordinator attempt %d exited with %s (%d standby failures); the job "
                         "continues without a standby, so a coordinator failure now costs a full restart. "
                         "See %s.", standby.attempt, describe(code), self.standby_failures,
                         self.workdir.task_log(str(standby.task), standby.attempt))
            return
        logger.warning("Standby coordinator attempt %d exited with %s; a new standby starts once the "
                       "leader trains.", standby.attempt, describe(code))

    def _revoke_lease_of(self, pid: int) -> None:
        """Ends the lease of a coordinator process the supervisor has reaped, so the standby need not wait."""
        try:
            record = self.lease.read()
            if record is not None and holder_pid(record.holder) == pid and self.lease.revoke(record.holder):
                logger.info("Revoked the lease of the dead coordinator pid %d (epoch %d).", pid, record.epoch)
        except LeaseError as error:
            logger.warning("Could not revoke the dead coordinator's lease (%s); the standby waits for it "
                           "to expire.", error)

    def _standby_ready(self) -> bool:
        """Returns whether the standby can take over; a stopped standby is killed and replaced instead."""
        standby = self.standby
        if standby is None or standby.state != TaskState.STANDBY or standby.process is None:
            return False
        if standby.process.poll() is not None:
            return False
        if processes.process_state(standby.process.pid) in STOPPED_STATES:
            logger.warning("Standby coordinator attempt %d (pid %d) is stopped, so it cannot take over; "
                           "killing it.", standby.attempt, standby.process.pid)
            standby.last_cause = "process stopped"
            processes.kill_process(standby.process)
            return False
        return True

    def _keep_standby(self, beat: dict | None) -> None:
        """Spawns a standby once the leader trains, so its TensorFlow import does not slow the restore."""
        if not self.spec.monitoring.standby_coordinator or self.standby is not None or self.standby_disabled:
            return
        leader = self.records[CHIEF]
        if leader.state != TaskState.RUNNING or beat is None or beat.get("phase") != "training":
            return
        self.standby = TaskRecord(CHIEF, leader.address, role="standby")
        self._spawn(self.standby)

    def _poll_superseded(self, now: float) -> None:
        for record in list(self.superseded):
            code = record.process.poll()
            if code is None and now < record.kill_at:
                continue
            if code is None:
                logger.error("Superseded coordinator attempt %d (pid %d) did not exit within %.0f s; killing it.",
                             record.attempt, record.process.pid, self.spec.monitoring.heartbeat_timeout_seconds)
                processes.kill_process(record.process, signal.SIGCONT)
                processes.kill_process(record.process)
                code = record.process.wait(timeout=10)
            if code == ExitCode.LEADERSHIP_LOST:
                self.fenced_exits += 1
            logger.warning("Superseded coordinator attempt %d exited with %s.", record.attempt, describe(code))
            record.process = None
            self.superseded.remove(record)
            self._transition(record, TaskState.STOPPED, exit_code=code, cause=describe(code))

    # -- health ------------------------------------------------------------------------

    def _check_coordinator_health(self, now: float) -> None:
        chief = self.records[CHIEF]
        if chief.state != TaskState.RUNNING or chief.process is None:
            return
        monitoring = self.spec.monitoring
        beat = self.progress.heartbeat
        beat = beat if beat and beat.get("pid") == chief.process.pid else None

        if beat is None:
            # TF import, lease, strategy build and restore come before the first heartbeat.
            allowance = self.spec.startup_timeout_seconds + monitoring.heartbeat_timeout_seconds
            if now - chief.started_at > allowance:
                self._kill_hung_coordinator(chief, f"no heartbeat {allowance:g} s after start")
            return

        age = time.time() - float(beat.get("time", 0))
        if age > monitoring.heartbeat_timeout_seconds:
            self._kill_hung_coordinator(chief, f"heartbeat is {age:.0f} s old")
            return

        workers_up = all(r.state == TaskState.RUNNING for r in self.records.values() if r.task.job == "worker")
        stalled = now - max(self.progress.step_progress_at, chief.started_at)
        if workers_up and beat.get("phase") == "training" and stalled > monitoring.progress_timeout_seconds:
            self._kill_hung_coordinator(chief, f"step {self.progress.last_step} has not advanced for {stalled:.0f} s")

    def _kill_hung_coordinator(self, chief: TaskRecord, reason: str) -> None:
        logger.error("Coordinator %s is hung (%s); killing it so it restarts.", chief.task, reason)
        chief.last_cause = f"hang: {reason}"
        if chief.stopped_by_chaos:
            processes.kill_process(chief.process, signal.SIGCONT)
        processes.kill_process(chief.process)

    # -- chaos and status ------------------------------------------------------------------

    def _run_chaos(self, now: float) -> None:
        while self.chaos and self.progress.last_step >= self.chaos[0].step:
            kill = self.chaos.pop(0)
            record = self.records[kill.task]
            if record.process is None or record.process.poll() is not None:
                logger.warning("Chaos kill %s skipped: the task is not running.", kill.describe())
                continue
            name = signal.Signals(kill.signal).name
            logger.warning("Chaos: sending %s to task %s (attempt %d) at step %d.",
                           name, kill.task, record.attempt, self.progress.last_step)
            record.last_cause = f"chaos {name}"
            if kill.signal == signal.SIGSTOP:
                record.stopped_by_chaos = True
            killed_pid = record.process.pid if kill.task == CHIEF else None
            self.progress.open_recovery(str(kill.task), name, now, killed_pid)
            processes.kill_process(record.process, kill.signal)

    def _print_status(self, now: float) -> None:
        if now - self._last_status < self.spec.monitoring.status_interval_seconds:
            return
        self._last_status = now
        up = sum(r.state == TaskState.RUNNING for r in self.records.values())
        restarts = sum(r.restarts for r in self.records.values())
        print(self.progress.status_line(now, up, len(self.records), restarts), flush=True)

    def _preempt(self) -> Outcome:
        name = signal.Signals(self.stop_requested).name
        grace = self.spec.monitoring.preemption_grace_seconds
        # The standby gets SIGTERM first, so it has stopped competing before
        # the leader releases the lease, but the leader need not wait for it.
        standby = self.standby
        if standby is not None and standby.process is not None:
            processes.kill_process(standby.process, signal.SIGTERM)

        chief = self.records[CHIEF]
        code = None
        if chief.process is not None and chief.process.poll() is None:
            logger.warning("Launcher received %s; asking the coordinator to save a checkpoint "
                           "(grace %.0f s).", name, grace)
            code = processes.stop_process(chief.process, grace, str(CHIEF))
            chief.process = None
            self._transition(chief, TaskState.STOPPED, exit_code=code, cause=f"launcher received {name}")
        if standby is not None and standby.process is not None:
            standby_code = processes.stop_process(standby.process, 10.0, self._name(standby))
            standby.process = None
            self._transition(standby, TaskState.STOPPED, exit_code=standby_code, cause=f"launcher received {name}")
        if code is None:
            ending = "no coordinator was running"
        elif code == ExitCode.PREEMPTED:
            ending = "the coordinator saved a checkpoint and stopped"
        else:
            ending = f"the coordinator stopped with {describe(code)}"
        message = f"Launcher received {name}; {ending}. Run the same command again to resume."
        return Outcome(ExitCode.PREEMPTED, message)

    # -- helpers ---------------------------------------------------------------------

    def _spawn(self, record: TaskRecord) -> None:
        if record.task == CHIEF:
            record.attempt = self.chief_attempts
            self.chief_attempts += 1
        else:
            record.attempt += 1
        argv = ["--spec", self.spec_path, "--workdir", self.workdir.root, "--steps", str(self.target_steps)]
        if record.role == "standby":
            argv.append("--standby")
        log_path = self.workdir.task_log(str(record.task), record.attempt)
        record.process = processes.spawn_task(argv, render_tf_config(self.cluster, record.task), log_path,
                                              extra_env={ATTEMPT_ENV: str(record.attempt)})
        record.started_at = self.clock()
        record.port_failures = 0
        record.stopped_by_chaos = False
        self._transition(record, TaskState.STARTING, cause=f"spawned pid {record.process.pid}")
        if record.role == "standby":
            self._transition(record, TaskState.STANDBY, cause="waits for the leader lease")
            logger.info("Standby coordinator attempt %d started (pid %d); log %s.",
                        record.attempt, record.process.pid, log_path)
            return
        if record.task == CHIEF:
            self._transition(record, TaskState.RUNNING, cause="coordinator process started")
        if record.attempt > 0:
            logger.info("Task %s started attempt %d (pid %d); log %s.",
                        record.task, record.attempt, record.process.pid, log_path)

    def _name(self, record: TaskRecord) -> str:
        return f"{record.task} ({record.role})" if record.role == "standby" else str(record.task)

    def _transition(self, record: TaskRecord, state: TaskState, exit_code: int | None = None,
                    cause: str = "") -> None:
        record_transition(self.workdir, record, state, exit_code, cause)


def _give_up_code(code: int, permanent_codes) -> ExitCode:
    """Returns the launch's exit code when the supervisor gives up on a task.

    A permanent exit passes its own code on (a crashed trainer is `FAILED`, a
    bad spec `USAGE`), so the cause is not mistaken for a spent budget.
    """
    if code > 0 and code in permanent_codes:
        try:
            return ExitCode(code)
        except ValueError:
            return ExitCode.FAILED
    return ExitCode.RESTART_BUDGET_SPENT
