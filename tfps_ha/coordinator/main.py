"""Runs one coordinator attempt and maps its outcome to an exit code."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from tfps_ha.coordinator.context import RunContext, RunResult
from tfps_ha.coordinator.heartbeat import Heartbeat
from tfps_ha.errors import StartupTimeoutError
from tfps_ha.exit_codes import ExitCode
from tfps_ha.net import wait_for_ports
from tfps_ha.spec import ClusterSpec
from tfps_ha.tf_config import ResolvedCluster
from tfps_ha.trainer import load_trainer
from tfps_ha.workdir import Workdir, read_json, write_json_atomic

logger = logging.getLogger(__name__)


def run_coordinator(spec: ClusterSpec, cluster: ResolvedCluster, workdir: Workdir,
                    target_steps: int | None = None) -> ExitCode:
    """Trains to the target step and writes `result.json`.

    Args:
      spec: The cluster spec (trainer, training and deadlines).
      cluster: The training cluster from TF_CONFIG.
      workdir: The job's working folder.
      target_steps: Overrides `spec.training.steps` when set.

    Returns:
      `OK` when the target was reached, `PREEMPTED` after a SIGTERM checkpoint,
      `CLUSTER_UNAVAILABLE` when a PS was lost, `STARTUP_TIMEOUT` when the
      servers never came up.
    """
    from tfps_ha.tf_env import import_tensorflow

    started = time.time()
    target = target_steps or spec.training.steps
    stop = threading.Event()

    def on_sigterm(signum, _frame):
        logger.warning("Coordinator received %s; it stops scheduling and saves a checkpoint.",
                       signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)

    tf, keras = import_tensorflow()
    trainer = load_trainer(spec.trainer_module, spec.runner, spec.trainer_args)
    os.makedirs(workdir.root, exist_ok=True)

    servers = {str(task): cluster.address(task) for task in cluster.tasks() if task.job in ("ps", "worker")}
    try:
        wait_for_ports(servers, spec.startup_timeout_seconds)
    except StartupTimeoutError as error:
        logger.error("Coordinator could not reach the cluster: %s", error)
        return ExitCode.STARTUP_TIMEOUT

    from tfps_ha.coordinator.strategy import build_strategy

    strategy, coordinator = build_strategy(tf, cluster)
    heartbeat = Heartbeat(workdir.heartbeat, target)
    context = RunContext(
        tf=tf, keras=keras, strategy=strategy, coordinator=coordinator,
        num_workers=cluster.num_workers(), trainer=trainer, training=spec.training,
        target_steps=target, workdir=workdir, heartbeat=heartbeat, stop=stop,
    )
    logger.info("Coordinator is training %s with the %s runner: target %d steps, %d workers, %d PS.",
                trainer.name, trainer.runner, target, cluster.num_workers(), cluster.num_ps())

    try:
        result = _run(context)
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as error:
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        logger.error(
            "Coordinator lost the cluster at step %d (%s: %s); exiting with %s so that it "
            "restarts once the PS is back.", heartbeat.step, type(error).__name__, first_line,
            ExitCode.CLUSTER_UNAVAILABLE.name)
        _write_result(workdir, heartbeat.step, target, None, started, ExitCode.CLUSTER_UNAVAILABLE)
        return ExitCode.CLUSTER_UNAVAILABLE

    code = ExitCode.OK if result.completed else ExitCode.PREEMPTED
    _write_result(workdir, result.final_step, target, result, started, code)
    if result.completed:
        logger.info("Coordinator reached step %d of %d; metrics %s.", result.final_step, target, result.metrics)
    else:
        logger.warning("Coordinator stopped at step %d of %d after saving a checkpoint at step %d.",
                       result.final_step, target, result.checkpoint_step)
    return code


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
