"""The supervisor of a multi_worker_mirrored launch: one worker group, restarted as a whole.

Under MultiWorkerMirroredStrategy every worker takes part in every gradient
all-reduce, so the group cannot train while one worker is missing, and a
worker that rejoins alone would be a step behind its peers. When any task of
the group dies, the supervisor therefore kills the others, waits for every
process to exit, and after the backoff of `restart.worker` starts the whole
group again at the same addresses. Every worker restores the same backup.

A task that exits PREEMPTED took part in the group's stop vote, and the others
are saving the same backup, so they get `preemption_grace_seconds` to exit on
their own before they are killed. The job ends when the MWMS chief exits 0
(it reached the target step and wrote `result.json`).

One `_step()` runs per iteration, so tests drive the loop over scripted
process stand-ins. Restart decisions come from the pure `policy.decide`.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Callable

from tfps_ha.exit_codes import ExitCode, describe, is_retryable
from tfps_ha.mwms.config import mirrored_chief
from tfps_ha.net import port_accepts
from tfps_ha.spec import ClusterSpec, RestartPolicySpec, TaskId
from tfps_ha.supervisor import process as processes
from tfps_ha.supervisor.chaos import PlannedKill
from tfps_ha.supervisor.policy import Action, Decision, decide
from tfps_ha.supervisor.probe import probe_server
from tfps_ha.supervisor.progress import Progress
from tfps_ha.supervisor.state import TaskState
from tfps_ha.supervisor.records import Outcome, TaskRecord, last_log_line, record_transition, run_steps
from tfps_ha.tf_config import ResolvedCluster, render_tf_config
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)

# How long a process may take to exit after SIGKILL before the group restart fails.
REAP_DEADLINE_SECONDS = 30.0
_LIVE_STATES = (TaskState.STARTING, TaskState.RUNNING)


def decide_group_restart(culprit: TaskId, exit_code: int, group_restarts: int, group_size: int,
                         policy: RestartPolicySpec) -> Decision:
    """Applies `policy.decide` to a group restart, which restarts every task of the group.

    A group restart counts as one restart of each task: the per-task budget
    bounds the number of group restarts, and the job budget bounds group
    restarts times the group size. The job budget is checked for the restart
    about to happen, so the restarts of all tasks never exceed it.

    Args:
      culprit: The task whose exit ends the current group attempt.
      exit_code: Its exit code; negative for a signal.
      group_restarts: Group restarts so far.
      group_size: Tasks in the group.
      policy: `restart.worker` of the spec.

    Returns:
      RESTART with the backoff, or GIVE_UP with the reason.
    """
    job_restarts_after = (group_restarts + 1) * group_size
    return decide(culprit, exit_code, group_restarts, job_restarts_after - 1, policy)


@dataclasses.dataclass
class GroupFailure:
    """The exit that ends one group attempt, while the rest of the group is stopped.

    Attributes:
      task: The task that exited first.
      exit_code: Its exit code; negative for a signal.
      cause: Why it exited, as the supervisor recorded it.
      kill_at: Monotonic time at which the tasks still alive are killed.
      killed_at: Monotonic time at which they were killed, or None before.
    """

    task: TaskId
    exit_code: int
    cause: str
    kill_at: float
    killed_at: float | None = None


class GroupSupervisor:
    """Owns the chief and worker processes of one local multi_worker_mirrored launch.

    It offers what the launcher reads from `Supervisor`: `start`, `run`,
    `request_stop`, `stop_all`, `restart_counts`, `progress`, `failovers` and
    `fenced_exits` (both always 0: there is no coordinator to fail over).

    Attributes:
      records: One record per task, the MWMS chief first.
      chief: The task that writes checkpoints, the heartbeat and the result.
      group_attempt: The attempt number of the running group (-1 before start).
      group_restarts: Group restarts so far.
    """

    def __init__(self, spec: ClusterSpec, spec_path: str, cluster: ResolvedCluster, workdir: Workdir,
                 target_steps: int, chaos: list[PlannedKill] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self.spec_path = spec_path
        self.cluster = cluster
        self.workdir = workdir
        self.target_steps = target_steps
        self.chaos = list(chaos or [])
        self.clock = clock
        self.policy = spec.restart["worker"]
        self.chief = mirrored_chief(cluster)
        tasks = [task for task in cluster.tasks() if task.job in ("chief", "worker")]
        tasks.sort(key=lambda task: task != self.chief)
        self.records = {task: TaskRecord(task, cluster.address(task)) for task in tasks}
        self.group_attempt = -1
        self.group_restarts = 0
        self.failure: GroupFailure | None = None
        self.restart_at: float | None = None
        self.finished_at: float | None = None
        self.group_started_at = clock()
        self.stop_requested: int | None = None
        self.failovers = 0
        self.fenced_exits = 0
        self.progress = Progress(workdir, target_steps, clock)
        self._last_status = clock()

    # -- public -----------------------------------------------------------------

    def start(self) -> None:
        """Spawns attempt 0 of every task of the group."""
        self._spawn_group()

    def run(self, poll_seconds: float = 0.2) -> Outcome:
        """Steps until the job ends; returns its outcome."""
        return run_steps(self._step, poll_seconds)

    def request_stop(self, signum: int) -> None:
        """Records a SIGINT or SIGTERM, so that the next step sends SIGTERM to the group to save and stop."""
        self.stop_requested = signum

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        """Stops every task that still runs (SIGTERM, then SIGKILL after `grace_seconds`)."""
        for record in self.records.values():
            if record.process is not None and record.process.poll() is None:
                if record.stopped_by_chaos:
                    processes.kill_process(record.process, signal.SIGCONT)
                processes.stop_process(record.process, grace_seconds, str(record.task))
            if record.state != TaskState.STOPPED:
                self._transition(record, TaskState.STOPPED, cause="job ended")

    def restart_counts(self) -> dict[str, int]:
        """Returns restarts per task, such as `{"worker:0": 1, "worker:1": 1}`."""
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
        outcome = self._advance_teardown(now)
        if outcome is not None:
            return outcome

        self._restart_due(now)
        if self.failure is None:
            # During a teardown the heartbeat is the dead attempt's, so it is
            # not read: the next attempt's first one counts the lost steps.
            chief = self.records[self.chief]
            self.progress.read(chief.process.pid if chief.process else None, now)
            self._check_chief_health(now)
        self._run_chaos(now)
        self._print_status(now)
        return None

    def _poll_exits(self, now: float) -> Outcome | None:
        exited = []
        for record in self.records.values():
            if record.process is None:
                continue
            code = record.process.poll()
            if code is not None:
                exited.append((record, code))
        # When several tasks exit between two steps, a death by a signal comes
        # first (a kill from outside, whose peers then fail), then a permanent
        # exit (a bug that a restart would repeat), then the rest.
        exited.sort(key=lambda item: (item[1] >= 0, is_retryable(item[1])))
        for record, code in exited:
            outcome = self._handle_exit(record, code, now)
            if outcome is not None:
                return outcome
        return None

    def _handle_exit(self, record: TaskRecord, code: int, now: float) -> Outcome | None:
        record.last_exit_code = code
        cause = record.last_cause or describe(code)
        record.last_cause = ""
        record.process = None

        if code == ExitCode.OK:
            self._transition(record, TaskState.SUCCEEDED, exit_code=code, cause="target reached")
            if record.task == self.chief:
                return self._finish(now)
            return None

        self._transition(record, TaskState.FAILED, exit_code=code, cause=cause)
        if self.failure is None and self.finished_at is None:
            self._begin_teardown(record, code, cause, now)
        return None

    def _finish(self, now: float) -> Outcome:
        """Ends the job after the chief reached the target; tasks still alive are stopped."""
        self.finished_at = now
        others = [record for record in self.records.values() if record.process is not None]
        grace = self.spec.monitoring.preemption_grace_seconds
        for record in others:
            code = processes.stop_process(record.process, grace, str(record.task))
            logger.info("Task %s exited with %s after the chief reached the target.", record.task,
                        describe(code) if code is not None else "an unknown status")
            record.process = None
            state = TaskState.SUCCEEDED if code == ExitCode.OK else TaskState.STOPPED
            self._transition(record, state, exit_code=code, cause="chief reached the target")
        return Outcome(ExitCode.OK, f"Training reached step {self.target_steps}.")

    # -- group restarts ------------------------------------------------------------------

    def _begin_teardown(self, record: TaskRecord, code: int, cause: str, now: float) -> None:
        """Starts ending the current group attempt after `record` exited with `code`."""
        self.progress.leader_lost()
        if code == ExitCode.PREEMPTED:
            grace = self.spec.monitoring.preemption_grace_seconds
            self.failure = GroupFailure(record.task, code, cause, kill_at=now + grace)
            logger.warning("Task %s exited with %s on attempt %d; waiting up to %.0f s for the other workers "
                           "to save the same backup and exit, then restarting the worker group.",
                           record.task, describe(code), record.attempt, grace)
            return
        self.failure = GroupFailure(record.task, code, cause, kill_at=now)
        logger.warning("Task %s exited with %s on attempt %d; restarting the worker group.",
                       record.task, describe(code), record.attempt)
        self._kill_survivors(now)

    def _kill_survivors(self, now: float) -> None:
        failure = self.failure
        for record in self.records.values():
            if record.process is None or record.process.poll() is not None:
                continue
            record.last_cause = f"{failure.task} lost"
            if record.stopped_by_chaos:
                processes.kill_process(record.process, signal.SIGCONT)
            processes.kill_process(record.process)
            logger.info("Killed task %s (pid %d) for the restart of the worker group.", record.task,
                        record.process.pid)
        failure.killed_at = now

    def _advance_teardown(self, now: float) -> Outcome | None:
        """Kills, reaps and then restarts or gives up, once the group attempt has ended."""
        failure = self.failure
        if failure is None:
            return None
        alive = [record for record in self.records.values() if record.process is not None]
        if alive and failure.killed_at is None and now >= failure.kill_at:
            logger.warning("Tasks %s did not exit within %.0f s after %s exited with %s; killing them.",
                           ", ".join(str(record.task) for record in alive),
                           self.spec.monitoring.preemption_grace_seconds, failure.task, describe(failure.exit_code))
            self._kill_survivors(now)
        if alive:
            if failure.killed_at is not None and now - failure.killed_at > REAP_DEADLINE_SECONDS:
                record = alive[0]
                message = (f"Task {record.task} (pid {record.process.pid}) did not exit within "
                           f"{REAP_DEADLINE_SECONDS:g} s of SIGKILL, so the worker group cannot restart at "
                           f"the same addresses; stop that process and run the same command again.")
                logger.error("%s", message)
                return Outcome(ExitCode.FAILED, message)
            return None

        self.failure = None
        decision = decide_group_restart(failure.task, failure.exit_code, self.group_restarts,
                                        len(self.records), self.policy)
        if decision.action == Action.GIVE_UP:
            record = self.records[failure.task]
            self._transition(record, TaskState.GAVE_UP, exit_code=failure.exit_code, cause=decision.reason)
            log_path = self.workdir.task_log(str(record.task), record.attempt)
            message = f"{decision.reason} Last log line: {last_log_line(log_path)!r} ({log_path})."
            logger.error("%s", message)
            return Outcome(ExitCode.RESTART_BUDGET_SPENT, message)

        self.group_restarts += 1
        self.restart_at = now + decision.delay_seconds
        for record in self.records.values():
            record.restarts += 1
            self._enter_backoff(record, failure)
        logger.warning("Restarting the worker group in %.1f s (group restart %d of at most %d) after %s exited "
                       "with %s; every worker resumes from the latest backup.", decision.delay_seconds,
                       self.group_restarts, self.policy.max_restarts_per_task, failure.task,
                       describe(failure.exit_code))
        return None

    def _enter_backoff(self, record: TaskRecord, failure: GroupFailure) -> None:
        cause = f"group restart after {failure.task} exited with {describe(failure.exit_code)}"
        if record.state == TaskState.SUCCEEDED:
            # A worker that finished fit before the chief failed: the lifecycle
            # has no way back from SUCCEEDED, so a fresh record replaces it.
            self._transition(record, TaskState.STOPPED, cause=cause)
            replacement = TaskRecord(record.task, record.address, restarts=record.restarts, attempt=record.attempt)
            self.records[record.task] = replacement
            return
        self._transition(record, TaskState.BACKOFF, exit_code=record.last_exit_code, cause=cause)

    def _restart_due(self, now: float) -> None:
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._spawn_group()

    # -- health ------------------------------------------------------------------------

    def _check_startup(self, now: float) -> Outcome | None:
        deadline = self.spec.startup_timeout_seconds
        for record in self.records.values():
            if record.state != TaskState.STARTING or record.process is None:
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
        return None

    def _probe_ports(self, now: float) -> None:
        for record in self.records.values():
            if record.state != TaskState.RUNNING or record.process is None:
                continue
            probe_server(record, now, self.spec.monitoring)

    def _check_chief_health(self, now: float) -> None:
        """Kills a hung chief: no heartbeat, a stale one, or no step progress while every task runs."""
        chief = self.records[self.chief]
        if chief.process is None or chief.state not in _LIVE_STATES:
            return
        monitoring = self.spec.monitoring
        beat = self.progress.heartbeat
        beat = beat if beat and beat.get("pid") == chief.process.pid else None

        if beat is None:
            # TF import, the group's rendezvous, model build and restore come first.
            allowance = self.spec.startup_timeout_seconds + monitoring.heartbeat_timeout_seconds
            if now - chief.started_at > allowance:
                self._kill_hung_chief(chief, f"no heartbeat {allowance:g} s after start")
            return

        age = time.time() - float(beat.get("time", 0))
        if age > monitoring.heartbeat_timeout_seconds:
            self._kill_hung_chief(chief, f"heartbeat is {age:.0f} s old")
            return

        all_running = all(record.state == TaskState.RUNNING for record in self.records.values())
        stalled = now - max(self.progress.step_progress_at, chief.started_at)
        if all_running and beat.get("phase") == "training" and stalled > monitoring.progress_timeout_seconds:
            self._kill_hung_chief(chief, f"step {self.progress.last_step} has not advanced for {stalled:.0f} s")

    def _kill_hung_chief(self, chief: TaskRecord, reason: str) -> None:
        logger.error("Task %s, the MWMS chief, is hung (%s); killing it so the worker group restarts.",
                     chief.task, reason)
        chief.last_cause = f"hang: {reason}"
        if chief.stopped_by_chaos:
            processes.kill_process(chief.process, signal.SIGCONT)
        processes.kill_process(chief.process)

    # -- chaos, status and preemption ------------------------------------------------------

    def _run_chaos(self, now: float) -> None:
        while self.chaos and self.progress.last_step >= self.chaos[0].step:
            kill = self.chaos.pop(0)
            record = self.records.get(kill.task)
            if record is None or record.process is None or record.process.poll() is not None:
                logger.warning("Chaos kill %s skipped: the task is not running.", kill.describe())
                continue
            name = signal.Signals(kill.signal).name
            logger.warning("Chaos: sending %s to task %s (attempt %d) at step %d.",
                           name, kill.task, record.attempt, self.progress.last_step)
            record.last_cause = f"chaos {name}"
            if kill.signal == signal.SIGSTOP:
                record.stopped_by_chaos = True
            self.progress.open_recovery(str(kill.task), name, now)
            processes.kill_process(record.process, kill.signal)

    def _print_status(self, now: float) -> None:
        if now - self._last_status < self.spec.monitoring.status_interval_seconds:
            return
        self._last_status = now
        up = sum(record.state == TaskState.RUNNING for record in self.records.values())
        print(self.progress.status_line(now, up, len(self.records), self.group_restarts), flush=True)

    def _preempt(self) -> Outcome:
        """Sends SIGTERM to every task, so the group saves and stops, and kills what runs after the grace."""
        name = signal.Signals(self.stop_requested).name
        grace = self.spec.monitoring.preemption_grace_seconds
        restarting = self.failure is not None or self.restart_at is not None
        running = [record for record in self.records.values()
                   if record.process is not None and record.process.poll() is None]
        if running:
            logger.warning("Launcher received %s; asking the worker group to save a backup and stop "
                           "(grace %.0f s).", name, grace)
        for record in running:
            if record.stopped_by_chaos:
                processes.kill_process(record.process, signal.SIGCONT)
            processes.kill_process(record.process, signal.SIGTERM)

        deadline = self.clock() + grace
        codes: dict[TaskId, int | None] = {}
        for record in self.records.values():
            if record.process is None:
                continue
            remaining = max(1.0, deadline - self.clock())
            codes[record.task] = processes.stop_process(record.process, remaining, str(record.task))
            record.process = None
            self._transition(record, TaskState.STOPPED, exit_code=codes[record.task],
                             cause=f"launcher received {name}")

        chief_code = codes.get(self.chief)
        if chief_code == ExitCode.PREEMPTED:
            ending = "saved a backup and stopped"
        elif restarting or not running:
            ending = "was restarting, so it saved no new backup"
        else:
            ending = f"stopped with {describe(chief_code)} without a new backup"
        return Outcome(ExitCode.PREEMPTED,
                       f"Launcher received {name}; the worker group {ending}. Run the same command again to resume.")

    # -- helpers ---------------------------------------------------------------------

    def _spawn_group(self) -> None:
        self.group_attempt += 1
        self.group_started_at = self.clock()
        self.finished_at = None
        argv = ["--spec", self.spec_path, "--workdir", self.workdir.root, "--steps", str(self.target_steps)]
        for record in self.records.values():
            record.attempt = self.group_attempt
            log_path = self.workdir.task_log(str(record.task), record.attempt)
            record.process = processes.spawn_task(argv, render_tf_config(self.cluster, record.task), log_path)
            record.started_at = self.clock()
            record.port_failures = 0
            record.stopped_by_chaos = False
            self._transition(record, TaskState.STARTING, cause=f"spawned pid {record.process.pid}")
            if record.attempt > 0:
                logger.info("Task %s started attempt %d (pid %d); log %s.",
                            record.task, record.attempt, record.process.pid, log_path)

    def _transition(self, record: TaskRecord, state: TaskState, exit_code: int | None = None,
                    cause: str = "") -> None:
        record_transition(self.workdir, record, state, exit_code, cause)
