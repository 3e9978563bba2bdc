"""The Keras runner: tf-keras `model.fit` under ParameterServerStrategy.

tf-keras 2.21's `BackupAndRestore` skips its batch hooks under
ParameterServerStrategy, so an integer `save_freq` never saves there and only
epoch-level backups happen. `StepBackup` subclasses it and saves every
`checkpoint_every_steps` steps under PSS: it joins the coordinator first, so
the backup contains exactly the steps scheduled so far, then records the epoch
and the batch. `fit` resumes from that epoch and batch on the next start.
"""

from __future__ import annotations

import logging

from tfps_ha.coordinator.checkpoints import restore_with_fallback
from tfps_ha.coordinator.context import RunContext, RunResult
from tfps_ha.errors import UsageError
from tfps_ha.trainer import check_legacy_optimizer

logger = logging.getLogger(__name__)


def run_fit(context: RunContext) -> RunResult:
    """Runs `model.fit` to the target step with step-level backups.

    Returns:
      The result; `final_step` counts the steps fit completed, across restarts.

    Raises:
      UsageError: The trainer's model is not compiled, uses a non-legacy
        optimizer, or the spec lacks `steps_per_epoch`.
      tf.errors.UnavailableError: A PS became unreachable.
    """
    tf = context.tf
    keras = context.keras
    trainer = context.trainer
    steps_per_epoch = context.training.steps_per_epoch
    if not steps_per_epoch:
        raise UsageError(
            "training.steps_per_epoch is missing; the fit runner needs it because Keras "
            "fit under ParameterServerStrategy cannot infer the epoch length")
    if context.training.auto_steps_per_execution:
        raise UsageError(
            "training.steps_per_execution: auto works with the custom_loop runner only; give the fit "
            "runner an integer that divides training.steps_per_epoch")
    if context.training.async_checkpoint:
        logger.warning("training.async_checkpoint applies to the custom_loop runner only; fit saves "
                       "its backups synchronously.")
    if context.target_steps % steps_per_epoch:
        raise UsageError(
            f"the target of {context.target_steps} steps is not a multiple of "
            f"training.steps_per_epoch ({steps_per_epoch}); fit runs whole epochs")

    with context.strategy.scope():
        model = trainer.module.build_model()
        if getattr(model, "optimizer", None) is None or not getattr(model, "_is_compiled", False):
            raise UsageError(f"{trainer.name}.build_model() must return a compiled tf_keras model for the fit runner")
        check_legacy_optimizer(keras, model.optimizer, f"{trainer.name}.build_model()")
        # Slots exist before the restore, so a corrupted backup fails at restore.
        model.optimizer._create_all_weights(model.trainable_variables)

    # NOTE: tf-keras 2.21 has no public setter; compile(steps_per_execution=N)
    # would recompile the user's model. This private call only sets the count.
    model._configure_steps_per_execution(context.training.steps_per_execution)

    backup = make_step_backup(keras)(context, steps_per_epoch)
    epochs = context.target_steps // steps_per_epoch
    history = model.fit(
        keras.utils.experimental.DatasetCreator(trainer.module.dataset_fn),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[backup],
        verbose=0,
    )

    # NOTE: fit's train function has no step gate, so a function that
    # ClusterCoordinator re-runs after a worker died can apply extra updates:
    # optimizer.iterations may then exceed `step`, which is fit's own count.
    step = backup.completed_steps
    completed = step >= context.target_steps and not backup.preempted
    metrics = {}
    if completed:
        evaluate = trainer.hook("evaluate")
        if evaluate is not None:
            metrics = {name: float(value) for name, value in evaluate(model).items()}
    for name, values in (history.history or {}).items():
        if values:
            metrics.setdefault(f"train_{name}", float(values[-1]))
    if backup.last_loss is not None:
        metrics.setdefault("loss", backup.last_loss)
    context.heartbeat.beat(step, phase="done" if completed else "stopped", force=True)
    return RunResult(
        completed=completed, final_step=step, resumed_from_step=backup.resumed_from_step,
        metrics=metrics, preempted=backup.preempted, checkpoint_step=backup.checkpoint_step)


def make_step_backup(keras):
    """Returns the `StepBackup` class, built on the imported tf_keras module."""
    from tf_keras.src.distribute import worker_training_state

    class StepBackup(keras.callbacks.BackupAndRestore):
        """`BackupAndRestore` that saves every N steps under PSS, with fallback.

        It keeps `training.keep_checkpoints` backups (tf-keras keeps one), so a
        truncated newest backup falls back to the one before.
        """

        def __init__(self, context: RunContext, steps_per_epoch: int):
            super().__init__(
                context.workdir.backup,
                save_freq=context.training.checkpoint_every_steps,
                delete_checkpoint=False,
            )
            self.context = context
            self.steps_per_epoch = steps_per_epoch
            self.completed_steps = 0
            self.resumed_from_step = 0
            self.checkpoint_step = 0
            self.preempted = False
            self.last_loss: float | None = None
            self._epoch = 0
            self._last_saved = 0

        def on_train_begin(self, logs=None):
            state = worker_training_state.WorkerTrainingState(
                self.model, self.backup_dir, self.save_freq, False)
            for manager in (state.read_checkpoint_manager, state.write_checkpoint_manager):
                # NOTE: private in tf-keras 2.21; more than one backup is kept
                # so that the fallback below has an older one to use.
                manager._max_to_keep = self.context.training.keep_checkpoints
            self.model._training_state = state
            self._training_state = state

            tf = self.context.tf
            restore_with_fallback(tf, state.read_checkpoint_manager._checkpoint, state.read_checkpoint_manager)
            epoch = int(state._ckpt_saved_epoch.numpy())
            batch = int(state._ckpt_saved_batch.numpy())
            if epoch >= 0 and batch >= 0:
                self.resumed_from_step = epoch * self.steps_per_epoch + batch + 1
                logger.info(
                    "Resuming fit at step %d of %d (epoch %d, batch %d).",
                    self.resumed_from_step, self.context.target_steps, epoch, batch + 1)
            self.completed_steps = self.resumed_from_step
            self.checkpoint_step = self.resumed_from_step
            self._last_saved = self.resumed_from_step
            self.context.heartbeat.beat(self.completed_steps, force=True)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = int(epoch)
            super().on_epoch_begin(epoch, logs)

        def on_epoch_end(self, epoch, logs=None):
            pass

        def on_train_batch_begin(self, batch, logs=None):
            pass

        def on_train_batch_end(self, batch, logs=None):
            batch = int(batch)  # Keras passes a NumPy integer after a mid-epoch resume.
            step = self._epoch * self.steps_per_epoch + batch + 1
            self.completed_steps = step

            if self.context.stop.is_set():
                self._save(batch, step, reason="preemption")
                self.preempted = True
                self.model.stop_training = True
                return

            if step - self._last_saved >= self.context.training.checkpoint_every_steps:
                self._save(batch, step, reason="interval")
                self.context.heartbeat.beat(step, loss=self._fetch_loss(logs), force=True)
            elif self.context.heartbeat.due():
                self.context.heartbeat.beat(step, loss=self._fetch_loss(logs))

        def on_train_end(self, logs=None):
            if self.completed_steps != self._last_saved and not self.preempted:
                last_batch = (self.completed_steps - 1) % self.steps_per_epoch
                self._save(last_batch, self.completed_steps, reason="end of training")

        def _save(self, batch: int, step: int, reason: str) -> None:
            # Joining first makes the backup hold exactly `step` applied steps.
            self.model._cluster_coordinator.join()
            self.context.before_save(step)
            self._training_state._ckpt_saved_epoch.assign(self._epoch)
            self._training_state._ckpt_saved_batch.assign(batch)
            self._backup(epoch=self._epoch, batch=batch)
            self._last_saved = step
            self.checkpoint_step = step
            logger.info("Saved fit backup at step %d (%s).", step, reason)
            self.context.after_save(step, self.context.workdir.backup)
            self.context.heartbeat.beat(step, loss=self.last_loss, force=True)

        def _fetch_loss(self, logs) -> float | None:
            if logs is None:
                return None
            if hasattr(logs, "fetch"):
                logs = logs.fetch()
            loss = logs.get("loss") if isinstance(logs, dict) else None
            if loss is not None:
                self.last_loss = float(loss.fetch() if hasattr(loss, "fetch") else loss)
            return self.last_loss

    return StepBackup
