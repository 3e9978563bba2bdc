"""`tfps-ha task` for a multi_worker_mirrored spec: one worker of the synchronous group.

Every chief and worker task runs this same program: it joins the group,
restores the latest backup and runs the trainer's `fit` to the target step.
The MWMS chief also writes `heartbeat.json`, `result.json` and the checkpoint
records. Exit codes follow `tfps_ha.exit_codes`: OK at the target, PREEMPTED
after a SIGTERM stop with a backup, CLUSTER_UNAVAILABLE when a peer was lost
(the supervisor then restarts the whole group).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from tfps_ha.coordinator.heartbeat import Heartbeat
from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode
from tfps_ha.mwms.backup import StopVote, make_mirrored_backup
from tfps_ha.mwms.config import mirrored_chief, parse_mirrored_tf_config
from tfps_ha.mwms.strategy import build_mirrored_strategy
from tfps_ha.observe.checkpoint_log import record_checkpoint
from tfps_ha.spec import ClusterSpec, TaskId, check_target_steps
from tfps_ha.tf_config import TaskConfig
from tfps_ha.trainer import check_legacy_optimizer, load_trainer
from tfps_ha.workdir import Workdir, write_json_atomic

logger = logging.getLogger(__name__)


def run_mirrored_task(spec: ClusterSpec, workdir: str | None, steps: int | None) -> NoReturn:
    """Runs the MWMS task that TF_CONFIG names and exits the process with its exit code.

    The process ends with `os._exit`, because TensorFlow's gRPC threads can
    keep a finished process alive.

    Raises:
      UsageError: TF_CONFIG or `steps` is invalid (before TensorFlow is imported).
    """
    config = parse_mirrored_tf_config(os.environ.get("TF_CONFIG"))
    if steps is not None:
        check_target_steps(spec.training, steps)
    try:
        code = run_mirrored_worker(spec, config, Workdir(workdir or spec.workdir), steps)
    except UsageError as error:
        logger.error("Task %s stopped: %s", config.task, error)
        code = ExitCode.USAGE
    except Exception:  # A crash: log it with its traceback, then exit FAILED.
        logger.exception("Task %s crashed.", config.task)
        code = ExitCode.FAILED
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def run_mirrored_worker(spec: ClusterSpec, config: TaskConfig, workdir: Workdir,
                        target_steps: int | None = None) -> ExitCode:
    """Trains this worker's share of the group to the target step.

    Args:
      spec: The cluster spec (trainer, training and deadlines).
      config: The cluster and this task, from TF_CONFIG.
      workdir: The job's working folder, shared by every worker.
      target_steps: Overrides `spec.training.steps` when set.

    Returns:
      OK at the target, PREEMPTED after a SIGTERM stop with a backup,
      CLUSTER_UNAVAILABLE when a collective op failed because a peer is gone.

    Raises:
      UsageError: The trainer is not a `fit` trainer or breaks its contract.
    """
    from tfps_ha.tf_env import import_tensorflow

    started = time.time()
    task = config.task
    target = target_steps or spec.training.steps
    is_chief = task == mirrored_chief(config.cluster)
    stop = threading.Event()

    def on_sigterm(signum, _frame):
        logger.warning("Task %s received %s; the group saves a backup and stops after the current steps.",
                       task, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)

    tf, keras = import_tensorflow()
    trainer = load_trainer(spec.trainer_module, spec.runner, spec.trainer_args)
    if trainer.runner != "fit":
        raise UsageError(
            f"trainer {trainer.name} uses the {trainer.runner} runner, but strategy multi_worker_mirrored "
            "runs only the fit runner; set trainer.runner to fit with a build_model() that returns a "
            "compiled model, or use strategy parameter_server")
    os.makedirs(workdir.root, exist_ok=True)

    try:
        strategy = build_mirrored_strategy(tf, config.cluster, task, spec.monitoring.collective_timeout_seconds)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as error:
        # A peer that died or restarted while the group formed: retryable, so
        # the supervisor (or the operator's ExitCode policy) starts the group again.
        logger.error("Task %s could not join the worker group (%s: %s); exiting with %s.", task,
                     type(error).__name__, _summarize(error), ExitCode.CLUSTER_UNAVAILABLE.name)
        return ExitCode.CLUSTER_UNAVAILABLE
    # The coordination service that the strategy starts installs its own
    # SIGTERM handler in C++ (SigtermNotifier in tsl's preemption_notifier,
    # TensorFlow 2.21), which replaces this one, so it is installed again.
    signal.signal(signal.SIGTERM, on_sigterm)
    logger.info("Task %s joined the MultiWorkerMirroredStrategy group of %d tasks; %s writes the checkpoints.",
                task, strategy.num_replicas_in_sync, mirrored_chief(config.cluster))

    heartbeat = Heartbeat(workdir.heartbeat, target, is_leader=lambda: is_chief)
    try:
        result = _fit(tf, keras, trainer, spec, workdir, target, strategy, heartbeat, stop, task, is_chief)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as error:
        logger.error("Task %s lost a peer of the group at step %d (%s: %s); exiting with %s so that the "
                     "supervisor restarts the group.", task, heartbeat.step, type(error).__name__,
                     _summarize(error), ExitCode.CLUSTER_UNAVAILABLE.name)
        if is_chief:
            _write_result(workdir, heartbeat.step, target, None, started, ExitCode.CLUSTER_UNAVAILABLE)
        return ExitCode.CLUSTER_UNAVAILABLE

    code = ExitCode.OK if result["completed"] else ExitCode.PREEMPTED
    if is_chief:
        _write_result(workdir, result["final_step"], target, result, started, code)
    if result["completed"]:
        logger.info("Task %s reached step %d of %d; metrics %s.", task, result["final_step"], target,
                    result["metrics"])
    else:
        logger.warning("Task %s stopped at step %d of %d after saving a backup at step %d.", task,
                       result["final_step"], target, result["checkpoint_step"])
    return code


def _fit(tf, keras, trainer, spec: ClusterSpec, workdir: Workdir, target: int, strategy, heartbeat: Heartbeat,
         stop: threading.Event, task: TaskId, is_chief: bool) -> dict:
    """Builds the model in the strategy scope, runs `fit` with the step backup and returns the result fields."""
    training = spec.training
    steps_per_epoch = training.steps_per_epoch
    if not steps_per_epoch:
        raise UsageError("training.steps_per_epoch is missing; the fit runner needs it to read the trainer's "
                         "dataset_fn")
    if target % steps_per_epoch:
        raise UsageError(f"the target of {target} steps is not a multiple of training.steps_per_epoch "
                         f"({steps_per_epoch}); fit runs whole epochs")

    with strategy.scope():
        model = trainer.module.build_model()
        if getattr(model, "optimizer", None) is None or not getattr(model, "_is_compiled", False):
            raise UsageError(f"{trainer.name}.build_model() must return a compiled tf_keras model for the fit runner")
        check_legacy_optimizer(keras, model.optimizer, f"{trainer.name}.build_model()")
        # Slots exist before the restore, so a corrupted backup fails at restore.
        model.optimizer._create_all_weights(model.trainable_variables)
        # NOTE: tf-keras 2.21 has no public setter; compile(steps_per_execution=N)
        # would recompile the user's model. This private call only sets the count.
        model._configure_steps_per_execution(training.steps_per_execution)

    def on_saved(step: int, seconds: float, path: str | None) -> None:
        if not is_chief:
            return
        write_json_atomic(workdir.last_checkpoint, {
            "step": int(step), "path": path, "leader_epoch": 0, "holder": f"{task} pid {os.getpid()}",
            "time": time.time(), "duration_seconds": round(seconds, 6)})
        record_checkpoint(workdir.root, step, seconds, path=path)

    backup = make_mirrored_backup(keras)(tf, workdir, training, target, heartbeat,
                                         StopVote(tf, strategy, stop), on_saved=on_saved)
    history = model.fit(
        keras.utils.experimental.DatasetCreator(trainer.module.dataset_fn),
        epochs=target // steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=[backup],
        verbose=0,
    )

    step = backup.completed_steps
    completed = step >= target and not backup.preempted
    metrics: dict[str, float] = {}
    evaluate = trainer.hook("evaluate")
    if completed and evaluate is not None:
        # Every worker evaluates, because reading a variable that is
        # synchronised on read (such as a batch-norm moving mean) all-reduces it.
        metrics = {name: float(value) for name, value in evaluate(model).items()}
    for name, values in (history.history or {}).items():
        if values:
            metrics.setdefault(f"train_{name}", float(values[-1]))
    if backup.last_loss is not None:
        metrics.setdefault("loss", backup.last_loss)
    heartbeat.beat(step, phase="done" if completed else "stopped", force=True)
    return {"completed": completed, "final_step": step, "resumed_from_step": backup.resumed_from_step,
            "checkpoint_step": backup.checkpoint_step, "metrics": metrics}


def _summarize(error: Exception, limit: int = 300) -> str:
    """Returns the first line of an error, and its last line when the first only introduces the rest.

    TensorFlow's errors from a function start with "Graph execution error:"
    and name the failed collective op in their last line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    summary = lines[0]
    if summary.endswith(":") and len(lines) > 1:
        summary = f"{summary} ... {lines[-1]}"
    return summary[:limit]


def _write_result(workdir: Workdir, step: int, target: int, result: dict | None, started: float,
                  code: ExitCode) -> None:
    """Writes `result.json` with the fields that the coordinator of a PSS job writes."""
    write_json_atomic(workdir.result, {
        "completed": bool(result and result["completed"]),
        "final_step": int(step),
        "target_steps": int(target),
        "resumed_from_step": int(result["resumed_from_step"]) if result else 0,
        "checkpoint_step": int(result["checkpoint_step"]) if result else None,
        "metrics": result["metrics"] if result else {},
        "exit_code": int(code),
        "exit_reason": code.name,
        "pid": os.getpid(),
        "seconds": round(time.time() - started, 3),
    })
