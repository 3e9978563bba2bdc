"""The custom-loop runner: `ClusterCoordinator.schedule` over train functions with a step limit.

Exactness: `optimizer.iterations` is the step count. The coordinator plans each
checkpoint window as closures (scheduled functions) whose step counts add up
to the window, so without failures the window ends exactly on its last step.
Each closure reads the count once when it starts and runs
`min(steps, limit - iterations)` steps, with `limit = target - (workers - 1) * spe`.
At most one closure runs per worker, so the running closures cannot push the
count past the target, even when `ClusterCoordinator` re-runs a closure
after its worker died. Such a re-run repeats the steps the dead worker had
applied, so a window with failures can end past its planned last step; its
checkpoint then contains the steps it reports.

The last window ends at the target. Its planned closures stop at `limit`;
then up to `MAX_LIMITED_STAGES - 1` rounds of one smaller closure per worker
move the limit closer. Closures that check `iterations < bound` before every
step bring the count to `workers` steps before the target (two closures that
read the count at the same moment can each apply a step), and the last steps
run one closure at a time. Restarts resume from the checkpoint's `iterations`, so the applied step
count ends exactly at the target however often any task restarts.

The per-step check costs a PS round trip and a conditional on every step. On
the CTR example (2 workers, 2 PS, one 2-core machine) it added about 12% CPU
time per step, and a conditional around the whole loop added as much, so only
the last steps before the target use it.

With `training.async_checkpoint`, a save copies the variables into a shadow
model on the PS tasks and writes the shadow from a background thread
(`tfps_ha.coordinator.async_checkpoint`). `context.before_save` runs before
the copy and `context.after_save` once the files are complete.

With `training.steps_per_execution: auto`, the first closures time two
packings and `tfps_ha.coordinator.auto_spe` picks the packing from them.
"""

from __future__ import annotations

import logging
import math
import time

from tfps_ha.coordinator.auto_spe import (
    PROBE_CLOSURES_PER_WORKER,
    PROBE_PACKINGS,
    ProbeSample,
    choose_steps_per_execution,
    fit_profile,
)
from tfps_ha.coordinator.checkpoints import restore_with_fallback
from tfps_ha.coordinator.context import RunContext, RunResult
from tfps_ha.trainer import check_legacy_optimizer

logger = logging.getLogger(__name__)

# Stages of shrinking closures before the target; each costs a join, and past
# a few the remaining steps are few enough for the per-step gate.
MAX_LIMITED_STAGES = 3

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

    placement_start = getattr(strategy.extended, "_variable_count", None)
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

    def one_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    @tf.function
    def limited_steps(iterator, steps, limit):
        # One read of the count; the loop itself has no conditional, which
        # keeps its cost equal to a plain loop.
        count = tf.clip_by_value(limit - iterations, 0, steps)
        loss = tf.constant(0.0)
        for _ in tf.range(count):
            loss = one_step(iterator)
        return loss

    @tf.function
    def gated_steps(iterator, steps, bound):
        loss = tf.constant(0.0)
        for _ in tf.range(steps):
            if iterations < bound:
                loss = one_step(iterator)
            else:
                break
        return loss

    def per_worker_dataset_fn():
        return strategy.distribute_datasets_from_function(trainer.module.dataset_fn)

    saver = _Saver(context, manager, model, optimizer, start_step, placement_start)
    step = start_step
    context.heartbeat.beat(step, phase="training", force=True)

    if step < context.target_steps:
        dataset = context.coordinator.create_per_worker_dataset(per_worker_dataset_fn)
        iterator = iter(dataset)
        loop = _Loop(context, limited_steps, gated_steps, iterator, iterations)
        loop.warm_up()
        while step < context.target_steps and not context.stop.is_set():
            window_end = loop.window_end(step)
            if context.training.auto_steps_per_execution and not loop.tuned:
                step = loop.tune(step, window_end)
                window_end = loop.window_end(step) if step < window_end else window_end
            step = loop.run_window(step, window_end)
            saver.poll()
            saver.save(step)

        if context.stop.is_set() and saver.requested_step != step:
            saver.save(step)

    completed = step >= context.target_steps
    if completed and saver.requested_step != step:
        saver.save(step)
    saver.finish()
    metrics = _evaluate(trainer, model) if completed else {}
    if context.heartbeat.loss is not None:
        metrics.setdefault("loss", context.heartbeat.loss)
    context.heartbeat.beat(step, phase="done" if completed else "stopped", force=True)
    return RunResult(
        completed=completed, final_step=step, resumed_from_step=start_step, metrics=metrics,
        preempted=context.stop.is_set() and not completed, checkpoint_step=saver.saved_step or start_step)


class _Loop:
    """Schedules train functions and reports progress while they run."""

    def __init__(self, context: RunContext, limited_steps, gated_steps, iterator, iterations):
        self.context = context
        self.limited_steps = limited_steps
        self.gated_steps = gated_steps
        self.iterator = iterator
        self.iterations = iterations
        self.tf = context.tf
        self.workers = max(1, context.num_workers)
        self.steps_per_execution = context.training.steps_per_execution
        self.tuned = False
        # Wall seconds per closure in the last join, for the heartbeat stride.
        self.closure_seconds: float | None = None

    def warm_up(self) -> None:
        """Runs the gated function once per worker with no steps.

        So the function is traced and set up on the workers at the start, not
        near the target. Tracing it took about 0.4 s of coordinator time for
        the CTR example on a 2-core machine.
        """
        self._run(self.gated_steps, [0] * self.workers, self.context.target_steps)

    @property
    def limit(self) -> int:
        """The count past which no closure starts a step: the target less what the other workers may add."""
        return self.context.target_steps - (self.workers - 1) * self.steps_per_execution

    def window_end(self, step: int) -> int:
        """Returns the last step of the checkpoint window that `step` is in.

        A window that would end within `limit` of the target is merged into
        the last window, because its closures could not reach its end.
        """
        every = self.context.training.checkpoint_every_steps
        target = self.context.target_steps
        end = (step // every + 1) * every
        return end if end <= min(self.limit, target - self.workers) else target

    def run_window(self, step: int, window_end: int) -> int:
        """Runs steps from `step` to `window_end`, then joins; returns the step reached."""
        spe = self.steps_per_execution
        target = self.context.target_steps
        if window_end < target:
            if min(window_end, self.limit) > step:
                self._run(self.limited_steps, _plan(window_end - step, spe), self.limit)
                step = self._step()
            return step

        # Near the target the packing shrinks in stages, each with one closure
        # per worker, so the workers stay busy while the limit closes in.
        packing = spe
        for _ in range(MAX_LIMITED_STAGES):
            limit = target - (self.workers - 1) * packing
            if limit > step and not self.context.stop.is_set():
                self._run(self.limited_steps, _plan(target - step, packing), limit)
                step = self._step()
            remaining = target - step
            if packing == 1 or remaining <= 2 * self.workers:
                break
            packing = math.ceil(remaining / self.workers)

        # Gated closures overshoot a bound by at most one step per other
        # worker, so they stop that far short and the rest runs serially.
        bulk_end = target - self.workers
        if bulk_end > step and not self.context.stop.is_set():
            packing = math.ceil((bulk_end - step) / self.workers)
            self._run(self.gated_steps, _plan(bulk_end - step, packing), bulk_end)
            step = self._step()
        while step < target and not self.context.stop.is_set():
            self._run(self.gated_steps, [min(spe, target - step)], target)
            step = self._step()
        return step

    def tune(self, step: int, window_end: int) -> int:
        """Times closures at the probe packings, then sets the packing; returns the step reached.

        The probe closures are training steps like any other, planned inside
        the window and limited like the rest. When the window ends before the
        probe does, the packing comes from the samples taken so far, or the
        fallback.
        """
        self.tuned = True
        samples = []
        # One closure per worker first, so function tracing and start-up are not timed.
        step = self._timed(step, window_end, 1, self.workers)[0]
        for packing, per_worker in zip(PROBE_PACKINGS, PROBE_CLOSURES_PER_WORKER):
            if step >= window_end or self.context.stop.is_set():
                break
            step, sample = self._timed(step, window_end, packing, per_worker * self.workers)
            samples.append(sample)

        profile = fit_profile(samples, self.workers)
        self.steps_per_execution = choose_steps_per_execution(profile, self.context.training.checkpoint_every_steps)
        if profile is None:
            logger.warning("Could not measure the closure cost from %s; using %d steps per execution.",
                           samples, self.steps_per_execution)
        else:
            logger.info(
                "Measured %.2f ms per closure and %.2f ms per step on %d workers; using %d steps per execution.",
                profile.closure_seconds * 1e3, profile.step_seconds * 1e3, self.workers, self.steps_per_execution)
        return step

    def _timed(self, step: int, window_end: int, packing: int, closures: int) -> tuple[int, ProbeSample]:
        plan = _plan(window_end - step, packing)[:closures]
        started = time.perf_counter()
        # Every running closure has at most `packing` steps, so this limit
        # keeps them all from passing the target.
        limit = self.context.target_steps - (self.workers - 1) * packing
        scheduled = self._run(self.limited_steps, plan, limit)
        reached = self._step()
        return reached, ProbeSample(scheduled, reached - step, time.perf_counter() - started)

    def _run(self, function, plan: list[int], limit: int) -> int:
        """Schedules one closure per entry of `plan` (its step count), joins, and returns how many it scheduled.

        While the closures run, it waits on every `stride`-th of them, about
        one per heartbeat interval, and writes the heartbeat when it is due.
        Waiting on a closure fetches its loss, a copy from its worker, so the
        others are not fetched.
        """
        tf = self.tf
        started = time.perf_counter()
        limit_tensor = tf.constant(limit, dtype=tf.int64)
        pending = []
        for steps in plan:
            if self.context.stop.is_set():
                break
            args = (self.iterator, tf.constant(steps, dtype=tf.int64), limit_tensor)
            pending.append(self.context.coordinator.schedule(function, args=args))
            self._report()

        stride = self._heartbeat_stride()
        for remote in pending[stride - 1:-1:stride]:
            loss = remote.fetch()
            if self.context.heartbeat.due():
                self.context.heartbeat.beat(self._step(), loss=float(loss))
        self.context.coordinator.join()
        if pending:
            self.context.heartbeat.beat(self._step(), loss=float(pending[-1].fetch()))
            self.closure_seconds = (time.perf_counter() - started) / len(pending)
        return len(pending)

    def _heartbeat_stride(self) -> int:
        """Returns how many closures finish, by the last join's pace, in one heartbeat interval (at least 1)."""
        if self.closure_seconds is None or self.closure_seconds <= 0:
            return 1
        return max(1, int(self.context.heartbeat.interval / self.closure_seconds))

    def _step(self) -> int:
        return int(self.iterations.numpy())

    def _report(self) -> None:
        if self.context.heartbeat.due():
            self.context.heartbeat.beat(self._step())


def _plan(steps: int, steps_per_execution: int) -> list[int]:
    """Splits `steps` into closures of `steps_per_execution` steps and one smaller remainder."""
    if steps <= 0:
        return []
    full, remainder = divmod(steps, steps_per_execution)
    return [steps_per_execution] * full + ([remainder] if remainder else [])


class _Saver:
    """Saves checkpoints, synchronously or from a snapshot in the background.

    Both ways call `context.before_save` before anything is written and
    `context.after_save` once the checkpoint is complete on disk.
    """

    def __init__(self, context: RunContext, manager, model, optimizer, start_step: int,
                 placement_start: int | None):
        self.context = context
        self.manager = manager
        self.requested_step = start_step
        self.saved_step: int | None = None
        self.snapshot = None
        if context.training.async_checkpoint:
            from tfps_ha.coordinator.async_checkpoint import build_snapshot_saver

            self.snapshot = build_snapshot_saver(context, model, optimizer, placement_start)

    def save(self, step: int) -> None:
        """Saves checkpoint `step`; the asynchronous way returns once the copy is made.

        Raises:
          LeadershipLostError: From `context.before_save`; nothing was written.
        """
        if self.snapshot is None:
            self.context.before_save(step)
            path = self.manager.save(checkpoint_number=step)
            self.requested_step = step
            self._saved(step, path)
            return

        self._report(self.snapshot.wait())
        self.context.before_save(step)
        self.snapshot.start(step)
        self.requested_step = step
        self.context.heartbeat.beat(step, force=True)

    def poll(self) -> None:
        """Reports a background write that has finished."""
        if self.snapshot is not None:
            self._report(self.snapshot.poll())

    def finish(self) -> None:
        """Waits for the background write, if any, and reports it."""
        if self.snapshot is not None:
            self._report(self.snapshot.wait())

    def _report(self, finished: tuple[int, str] | None) -> None:
        if finished is not None:
            self._saved(*finished)

    def _saved(self, step: int, path: str) -> None:
        logger.info("Saved checkpoint %s at step %d.", path, step)
        self.saved_step = step
        self.context.after_save(step, path)
        self.context.heartbeat.beat(step, force=True)


def _evaluate(trainer, model) -> dict:
    evaluate = trainer.hook("evaluate")
    if evaluate is None:
        return {}
    return {name: float(value) for name, value in evaluate(model).items()}
