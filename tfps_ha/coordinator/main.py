"""Runs one coordinator attempt and maps its outcome to an exit code.

Every coordinator is a candidate for the leader lease in `WORKDIR/leader.lease`.
It imports TensorFlow and the trainer first, then waits for the lease, so a
standby takes over without paying for the import. Only the leader connects to
the cluster and trains.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from tfps_ha.coordinator.context import RunContext, RunResult
from tfps_ha.coordinator.heartbeat import Heartbeat
from tfps_ha.coordinator.leadership import Leadership, holder_id
from tfps_ha.errors import StartupTimeoutError
from tfps_ha.exit_codes import ExitCode
from tfps_ha.lease import LeaseError, LeadershipLostError
from tfps_ha.lease.select import lease_from_environment, poll_seconds
from tfps_ha.net import free_port, port_in_use, wait_for_ports
from tfps_ha.observe.checkpoint_log import record_checkpoint
from tfps_ha.observe.tensorboard import TENSORBOARD_FOLDER, ScalarWriter
from tfps_ha.spec import ClusterSpec, TaskId, split_address
from tfps_ha.tf_config import ResolvedCluster
from tfps_ha.trainer import load_trainer
from tfps_ha.workdir import Workdir, read_json, write_json_atomic

logger = logging.getLogger(__name__)

ATTEMPT_ENV = "TFPS_HA_ATTEMPT"


def run_coordinator(spec: ClusterSpec, cluster: ResolvedCluster, workdir: Workdir,
                    target_steps: int | None = None, standby: bool = False) -> ExitCode:
    """Waits for leadership, trains to the target step and writes `result.json`.

    Args:
      spec: The cluster spec (trainer, training and deadlines).
      cluster: The training cluster from TF_CONFIG.
      workdir: The job's working folder.
      target_steps: Overrides `spec.training.steps` when set.
      standby: Whether to wait for the lease for as long as another leader
        renews it. Without it the wait ends after `startup_timeout_seconds`.

    Returns:
      `OK` when the target was reached, `PREEMPTED` after a SIGTERM checkpoint
      (or a SIGTERM while standing by), `CLUSTER_UNAVAILABLE` when a PS was
      lost, `LEADERSHIP_LOST` when another coordinator took the lease,
      `STARTUP_TIMEOUT` when the servers or the lease never became available.
    """
    from tfps_ha.tf_env import import_tensorflow

    started = time.time()
    target = target_steps or spec.training.steps
    stop = threading.Event()
    leading = threading.Event()

    def on_sigterm(signum, _frame):
        if leading.is_set():
            logger.warning("Coordinator received %s; it stops scheduling and saves a checkpoint.",
                           signal.Signals(signum).name)
        else:
            logger.warning("Coordinator received %s before it led; it exits without training.",
                           signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)

    tf, keras = import_tensorflow()
    trainer = load_trainer(spec.trainer_module, spec.runner, spec.trainer_args)
    os.makedirs(workdir.root, exist_ok=True)

    attempt = os.environ.get(ATTEMPT_ENV)
    lease_seconds = spec.monitoring.lease_seconds
    try:
        backend, keeper_args = lease_from_environment(workdir.lease)
    except LeaseError as error:
        logger.error("Coordinator cannot reach its leader lease: %s", error)
        return ExitCode.STARTUP_TIMEOUT
    leadership = Leadership(backend, holder_id("chief:0", int(attempt) if attempt else None), lease_seconds,
                            stop, keeper_args=keeper_args, poll_seconds=poll_seconds(backend, lease_seconds))
    try:
        record = leadership.acquire(standby, spec.startup_timeout_seconds)
    except StartupTimeoutError as error:
        logger.error("Coordinator could not become the leader: %s", error)
        return ExitCode.STARTUP_TIMEOUT
    if record is None:
        logger.warning("Coordinator stopped while standing by; it never led.")
        return ExitCode.PREEMPTED
    leading.set()
    leadership.start_renewing()
    previous = f" from {leadership.previous.holder!r}" if leadership.previous else ""
    logger.info("Coordinator %s leads at epoch %d%s.", leadership.holder, record.epoch, previous)

    code = ExitCode.FAILED
    try:
        code = _lead(tf, keras, trainer, spec, cluster, workdir, target, stop, leadership, started)
        return code
    finally:
        # After success the lease is kept until it expires: the supervisor
        # stops the standby before then, so it never restarts a finished job.
        leadership.release(end_lease=code != ExitCode.OK)


def _lead(tf, keras, trainer, spec: ClusterSpec, cluster: ResolvedCluster, workdir: Workdir, target: int,
          stop: threading.Event, leadership: Leadership, started: float) -> ExitCode:
    previous = read_json(workdir.result) or {}
    if previous.get("completed") and previous.get("target_steps") == target:
        logger.info("Coordinator found the job already completed at step %s; nothing to do.",
                    previous.get("final_step"))
        return ExitCode.OK

    servers = {str(task): cluster.address(task) for task in cluster.tasks() if task.job in ("ps", "worker")}
    try:
        wait_for_ports(servers, spec.startup_timeout_seconds)
    except StartupTimeoutError as error:
        logger.error("Coordinator could not reach the cluster: %s", error)
        return ExitCode.STARTUP_TIMEOUT

    from tfps_ha.coordinator.strategy import build_strategy

    strategy, coordinator = build_strategy(tf, cluster, chief_address=_listen_address(cluster))
    scalars = ScalarWriter(os.path.join(workdir.root, TENSORBOARD_FOLDER), tf=tf)
    heartbeat = Heartbeat(
        workdir.heartbeat, target, leader_epoch=leadership.epoch, is_leader=lambda: leadership.lost is None,
        on_write=lambda step, loss, rate: _write_scalars(scalars, step, loss, rate))
    saves = _SaveRecorder(workdir, leadership)

    context = RunContext(
        tf=tf, keras=keras, strategy=strategy, coordinator=coordinator,
        num_workers=cluster.num_workers(), trainer=trainer, training=spec.training,
        target_steps=target, workdir=workdir, heartbeat=heartbeat, stop=stop,
        before_save=saves.before_save, after_save=saves.after_save,
    )
    logger.info("Coordinator is training %s with the %s runner: target %d steps, %d workers, %d PS.",
                trainer.name, trainer.runner, target, cluster.num_workers(), cluster.num_ps())
    try:
        return _train(context, leadership, scalars, started)
    finally:
        scalars.close()


def _train(context: RunContext, leadership: Leadership, scalars: ScalarWriter, started: float) -> ExitCode:
    """Runs the runner and maps its outcome, or the error that ended it, to an exit code."""
    tf, heartbeat, workdir, target = context.tf, context.heartbeat, context.workdir, context.target_steps
    try:
        result = _run(context)
    except LeadershipLostError as error:
        logger.error("Coordinator stopped at step %d without saving, because %s; exiting with %s.",
                     heartbeat.step, error, ExitCode.LEADERSHIP_LOST.name)
        return ExitCode.LEADERSHIP_LOST
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as error:
        if leadership.lost is not None:
            logger.error("Coordinator stopped at step %d after losing leadership (%s); exiting with %s.",
                         heartbeat.step, leadership.lost, ExitCode.LEADERSHIP_LOST.name)
            return ExitCode.LEADERSHIP_LOST
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        logger.error(
            "Coordinator lost the cluster at step %d (%s: %s); exiting with %s so that it "
            "restarts once the PS is back.", heartbeat.step, type(error).__name__, first_line,
            ExitCode.CLUSTER_UNAVAILABLE.name)
        _write_result(workdir, heartbeat.step, target, None, started, ExitCode.CLUSTER_UNAVAILABLE)
        return ExitCode.CLUSTER_UNAVAILABLE

    if leadership.lost is not None:
        # Leadership was lost after the last save: the run stopped without one.
        logger.error("Coordinator stopped at step %d after losing leadership; exiting with %s.",
                     result.final_step, ExitCode.LEADERSHIP_LOST.name)
        return ExitCode.LEADERSHIP_LOST

    code = ExitCode.OK if result.completed else ExitCode.PREEMPTED
    _write_result(workdir, result.final_step, target, result, started, code)
    if result.completed:
        _write_scalars(scalars, result.final_step, None, None, result.metrics)
        logger.info("Coordinator reached step %d of %d; metrics %s.", result.final_step, target, result.metrics)
    else:
        logger.warning("Coordinator stopped at step %d of %d after saving a checkpoint at step %d.",
                       result.final_step, target, result.checkpoint_step)
    return code


class _SaveRecorder:
    """Fences every checkpoint save with the lease, then records where and how long it took."""

    def __init__(self, workdir: Workdir, leadership: Leadership):
        self.workdir = workdir
        self.leadership = leadership
        self._started = time.monotonic()

    def before_save(self, step: int) -> None:
        self.leadership.fence(step)
        self._started = time.monotonic()

    def after_save(self, step: int, path: str) -> None:
        duration = time.monotonic() - self._started
        write_json_atomic(self.workdir.last_checkpoint, {
            "step": int(step), "path": path, "leader_epoch": self.leadership.epoch,
            "holder": self.leadership.holder, "time": time.time(), "duration_seconds": round(duration, 6),
        })
        record_checkpoint(self.workdir.root, step, duration, path=path)


def _write_scalars(scalars: ScalarWriter, step: int, loss: float | None, rate: float | None,
                   metrics: dict | None = None) -> None:
    values = dict(metrics or {})
    if loss is not None:
        values["loss"] = loss
    if rate is not None:
        values["steps_per_second"] = rate
    values = {name: value for name, value in values.items() if isinstance(value, (int, float))}
    if values:
        scalars.write(int(step), values)


def _listen_address(cluster: ResolvedCluster) -> str | None:
    """Returns where the leader listens: None for the chief address, or a free port when it is taken.

    A stopped (SIGSTOP) earlier leader keeps the chief port bound. Workers and
    PS never connect to the coordinator, so listening elsewhere is safe.
    """
    address = cluster.address(TaskId("chief", 0))
    if not port_in_use(address):
        return None
    host, _ = split_address(address)
    replacement = f"[{host}]:{free_port(host)}" if ":" in host else f"{host}:{free_port(host)}"
    logger.warning("The chief address %s is in use, perhaps by a stopped earlier coordinator; this leader "
                   "listens on %s instead.", address, replacement)
    return replacement


def _run(context: RunContext) -> RunResult:
    if context.trainer.runner == "custom_loop":
        from tfps_ha.coordinator.custom_loop import run_custom_loop

        return run_custom_loop(context)

    from tfps_ha.coordinator.fit import run_fit

    return run_fit(context)


def _write_result(workdir: Workdir, step: int, target: int, result: RunResult | None,
                  started: float, code: ExitCode) -> None:
    previous = read_json(workdir.result) or {}
    write_json_atomic(workdir.result, {
        "completed": bool(result and result.completed),
        "final_step": int(step),
        "target_steps": int(target),
        "resumed_from_step": int(result.resumed_from_step) if result else int(previous.get("resumed_from_step", 0)),
        "checkpoint_step": int(result.checkpoint_step) if result else None,
        "metrics": result.metrics if result else {},
        "exit_code": int(code),
        "exit_reason": code.name,
        "pid": os.getpid(),
        "seconds": round(time.time() - started, 3),
    })
