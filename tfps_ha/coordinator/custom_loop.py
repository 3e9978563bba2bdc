"""The custom-loop runner: `ClusterCoordinator.schedule` over a gated train function.

Exactness: `optimizer.iterations` is the step count. Each scheduled function
runs up to `steps_per_execution` steps, and each step first checks
`iterations < bound` on the PS, so a function that `ClusterCoordinator` re-runs
after a worker died cannot push the count past the bound. Two functions that
read the count at the same moment can each apply a step, so near the target
the runner schedules the last steps one function at a time. Restarts resume
from the checkpoint's `iterations`, so the applied step count ends exactly at
the target however often any task restarts.
"""

from __future__ import annotations

import logging
import math

from tfps_ha.coordinator.checkpoints import restore_with_fallback
from tfps_ha.coordinator.context import RunContext, RunResult
from tfps_ha.trainer import check_legacy_optimizer

logger = logging.getLogger(__name__)


def run_custom_loop(context: RunContext) -> RunResult:
    """Trains with the trainer's `compute_loss` until the target step.

    Returns:
      The result; `preempted` is set when `context.stop` ended the run early.

    Raises:
      tf.errors.UnavailableError: A PS became unreachable (the caller maps it
        to a retryable exit).
    """
    tf = context.tf
    strategy = context.strategy
    trainer = context.trainer
    spe = context.training.steps_per_execution

    with strategy.scope():
        model = trainer.module.build_model()
        optimizer = trainer.module.build_optimizer()
        check_legacy_optimizer(context.keras, optimizer, f"{trainer.name}.build_optimizer()")
        iterations = optimizer.iterations
        # Slots exist before the restore, so restore reads every value now and
        # a corrupted checkpoint fails here, where the fallback can catch it.
        optimizer._create_all_weights(model.trainable_variables)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(
        checkpoint, context.workdir.checkpoints, max_to_keep=context.training.keep_checkpoints)
    restored = restore_with_fallback(tf, checkpoint, manager)
    start_step = int(iterations.numpy())
    if restored:
        logger.info("Resuming at step %d of %d from %s.", start_step, context.target_steps, restored)

    def replica_step(batch):
        with tf.GradientTape() as tape:
            loss = tf.cast(trainer.module.compute_loss(model, batch), tf.float32)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_steps(iterator, bound):
        loss = tf.constant(0.0)
        for _ in tf.range(spe):
            if iterations < bound:
                per_replica = strategy.run(replica_step, args=(next(iterator),))
                loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
        return loss

    def per_worker_dataset_fn():
        return strategy.distribute_datasets_from_function(trainer.module.dataset_fn)

    step = start_step
    checkpoint_step = start_step
    context.heartbeat.beat(step, phase="training", force=True)

    if step < context.target_steps:
        dataset = context.coordinator.create_per_worker_dataset(per_worker_dataset_fn)
        iterator = iter(dataset)
        loop = _Loop(context, train_steps, iterator, iterations)
        while step < context.target_steps and not context.stop.is_set():
            window_end = min(
                (step // context.training.checkpoint_every_steps + 1) * context.training.checkpoint_every_steps,
                context.target_steps,
            )
            step = loop.run_window(step, window_end)
            checkpoint_step = _save(context, manager, step)

        if context.stop.is_set() and checkpoint_step != step:
            checkpoint_step = _save(context, manager, step)

    completed = step >= context.target_steps
    metrics = {}
    if completed:
        if checkpoint_step != step:
            checkpoint_step = _save(context, manager, step)
        metrics = _evaluate(trainer, model)
    if context.heartbeat.loss is not None:
        metrics.setdefault("loss", context.heartbeat.loss)
    context.heartbeat.beat(step, phase="done" if completed else "stopped", force=True)
    return RunResult(
        completed=completed, final_step=step, resumed_from_step=start_step, metrics=metrics,
        preempted=context.stop.is_set() and not completed, checkpoint_step=checkpoint_step)


class _Loop:
    """Schedules gated train functions and reports progress while they run."""

    def __init__(self, context: RunContext, train_steps, iterator, iterations):
        self.context = context
        self.train_steps = train_steps
        self.iterator = iterator
        self.iterations = iterations
        self.tf = context.tf

    def run_window(self, step: int, window_end: int) -> int:
        """Runs steps from `step` to `window_end`, then joins; returns the step reached."""
        is_last_window = window_end >= self.context.target_steps

        # Concurrent functions can overshoot a bound by at most one step per
        # other worker, so the final window keeps that margin for the serial tail.
        bulk_end = window_end - (self.context.num_workers if is_last_window else 0)
        if bulk_end > step:
            self._run_concurrently(step, bulk_end)
            step = int(self.iterations.numpy())

        while is_last_window and step < window_end and not self.context.stop.is_set():
            self._run_concurrently(step, window_end, max_functions=1)
            step = int(self.iterations.numpy())

        return step

    def _run_concurrently(self, step: int, bound: int, max_functions: int | None = None) -> None:
        spe = self.context.training.steps_per_execution
        count = math.ceil((bound - step) / spe)
        if max_functions is not None:
            count = min(count, max_functions)
        bound_tensor = self.tf.constant(bound, dtype=self.tf.int64)

        pending = []
        for _ in range(count):
            if self.context.stop.is_set():
                break
            pending.append(self.context.coordinator.schedule(self.train_steps, args=(self.iterator, bound_tensor)))
            self._report()

        for remote in pending:
            loss = remote.fetch()
            if self.context.heartbeat.due():
                self.context.heartbeat.beat(int(self.iterations.numpy()), loss=float(loss))
        self.context.coordinator.join()
        if pending:
            self.context.heartbeat.beat(int(self.iterations.numpy()), loss=float(pending[-1].fetch()))

    def _report(self) -> None:
        if self.context.heartbeat.due():
            self.context.heartbeat.beat(int(self.iterations.numpy()))


def _save(context: RunContext, manager, step: int) -> int:
    context.before_save(step)
    path = manager.save(checkpoint_number=step)
    logger.info("Saved checkpoint %s at step %d.", path, step)
    context.after_save(step, path)
    context.heartbeat.beat(step, force=True)
    return step


def _evaluate(trainer, model) -> dict:
    evaluate = trainer.hook("evaluate")
    if evaluate is None:
        return {}
    return {name: float(value) for name, value in evaluate(model).items()}
