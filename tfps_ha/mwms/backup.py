"""Step-level backups of Keras `fit` under MultiWorkerMirroredStrategy, and the stop vote.

`MirroredStepBackup` subclasses tf-keras `BackupAndRestore`. Every worker
restores the chief's backup in `WORKDIR/backup/chief/`, so the whole group
resumes at the same step. The chief writes there. Each other worker writes
the same state to its own temporary folder `backup/workertemp_<index>/`,
which tf-keras deletes after each save. Saving takes part in collective ops
(reading a variable that is synchronised on read, such as a metric total,
all-reduces it), so every worker saves at the same steps.

The stock callback does not fit the kit's contract in tf-keras 2.21. It counts
`save_freq` in calls of its batch hook, which come once per
`steps_per_execution` steps. It records the first batch of an execution, so
a resume repeats that execution's other steps. Its `save_before_preemption`
probes the GCE metadata server over the network, and on a GCE CPU VM it then
saves nothing. So this subclass counts steps, records the last batch, and
agrees on a preemption stop with `StopVote`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tfps_ha.coordinator.checkpoints import restore_with_fallback
from tfps_ha.coordinator.heartbeat import Heartbeat
from tfps_ha.spec import TrainingSpec
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)


class StopVote:
    """A vote of the workers on whether any of them received a stop request (SIGTERM).

    Each call all-reduces one 0/1 flag per worker, so every worker gets the
    same result at the same step. A SIGTERM that reaches only some workers
    therefore stops all of them after the same step, and none waits in an
    all-reduce that a stopped peer never joins.
    """

    def __init__(self, tf, strategy, stop: threading.Event):
        self._tf = tf
        self._stop = stop

        @tf.function
        def count_votes(flag):
            per_replica = strategy.run(tf.identity, args=(flag,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        self._count_votes = count_votes

    def any_stop(self) -> bool:
        """Returns whether any worker has its stop flag set.

        Every worker must call it at the same step, because it runs an all-reduce.
        """
        flag = self._tf.constant(1.0 if self._stop.is_set() else 0.0)
        return float(self._count_votes(flag)) > 0


def make_mirrored_backup(keras):
    """Returns the `MirroredStepBackup` class, built on the imported tf_keras module."""
    from tf_keras.src.distribute import worker_training_state

    class MirroredStepBackup(keras.callbacks.BackupAndRestore):
        """`BackupAndRestore` that saves every N steps under MWMS and stops on a preemption vote.

        Attributes:
          completed_steps: Steps fit has completed, counted across restarts.
          resumed_from_step: The step of the backup this run restored (0 when fresh).
          checkpoint_step: The step of the last backup saved or restored.
          preempted: Whether the group stopped after a SIGTERM, with a backup.
          last_loss: The last training loss fetched from fit's logs.
        """

        def __init__(self, tf, workdir: Workdir, training: TrainingSpec, target_steps: int,
                     heartbeat: Heartbeat, vote: StopVote,
                     on_saved: Callable[[int, float, str | None], None] = lambda step, seconds, path: None):
            """Creates the callback.

            Args:
              tf: The TensorFlow module.
              workdir: The job's working folder; backups go to its `backup/`.
              training: Checkpoint cadence, backups to keep and epoch length.
              target_steps: The step fit runs to, logged on resume.
              heartbeat: Progress writer; it writes only on the chief.
              vote: The group's stop vote, called after every batch hook.
              on_saved: Called after each save with the step, the save's
                duration in seconds and the checkpoint path (None off the chief).
            """
            super().__init__(workdir.backup, save_freq=training.checkpoint_every_steps, delete_checkpoint=False)
            self.tf = tf
            self.training = training
            self.steps_per_epoch = int(training.steps_per_epoch)
            self.target_steps = target_steps
            self.heartbeat = heartbeat
            self.vote = vote
            self.on_saved = on_saved
            self.completed_steps = 0
            self.resumed_from_step = 0
            self.checkpoint_step = 0
            self.preempted = False
            self.last_loss: float | None = None
            self._epoch = 0
            self._last_saved = 0

        def on_train_begin(self, logs=None):
            state = worker_training_state.WorkerTrainingState(self.model, self.backup_dir, self.save_freq, False)
            for manager in {id(m): m for m in (state.read_checkpoint_manager,
                                                state.write_checkpoint_manager)}.values():
                # NOTE: private in tf-keras 2.21; more than one backup is kept
                # so that restore_with_fallback has an older one to use.
                manager._max_to_keep = self.training.keep_checkpoints
            self.model._training_state = state
            self._training_state = state

            manager = state.read_checkpoint_manager
            restore_with_fallback(self.tf, manager._checkpoint, manager)
            epoch = int(state._ckpt_saved_epoch.numpy())
            batch = int(state._ckpt_saved_batch.numpy())
            if epoch >= 0 and batch >= 0:
                self.resumed_from_step = epoch * self.steps_per_epoch + batch + 1
                logger.info("Resuming fit at step %d of %d (after %d batches of epoch %d).",
                            self.resumed_from_step, self.target_steps, batch + 1, epoch)
            self.completed_steps = self.resumed_from_step
            self.checkpoint_step = self.resumed_from_step
            self._last_saved = self.resumed_from_step
            self.heartbeat.beat(self.completed_steps, force=True)

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

            if self.vote.any_stop():
                if step != self._last_saved:
                    self._save(batch, step, logs, reason="preemption")
                self.preempted = True
                self.model.stop_training = True
                return

            if step - self._last_saved >= self.training.checkpoint_every_steps:
                self._save(batch, step, logs, reason="interval")
            elif self.heartbeat.is_leader() and self.heartbeat.due():
                self.heartbeat.beat(step, loss=self._fetch_loss(logs))

        def on_train_end(self, logs=None):
            if self.completed_steps != self._last_saved and not self.preempted:
                last_batch = (self.completed_steps - 1) % self.steps_per_epoch
                self._save(last_batch, self.completed_steps, None, reason="end of training")

        def _save(self, batch: int, step: int, logs, reason: str) -> None:
            started = time.monotonic()
            state = self._training_state
            state._ckpt_saved_epoch.assign(self._epoch)
            state._ckpt_saved_batch.assign(batch)
            self._backup(epoch=self._epoch, batch=batch)
            duration = time.monotonic() - started
            self._last_saved = step
            self.checkpoint_step = step
            path = state.write_checkpoint_manager.latest_checkpoint if self.heartbeat.is_leader() else None
            logger.info("Saved fit backup at step %d (%s) in %.2f s.", step, reason, duration)
            self.on_saved(step, duration, path)
            loss = self._fetch_loss(logs) if self.heartbeat.is_leader() else None
            self.heartbeat.beat(step, loss=loss, force=True)

        def _fetch_loss(self, logs) -> float | None:
            if logs is None:
                return self.last_loss
            loss = logs.get("loss") if isinstance(logs, dict) else None
            if loss is not None:
                loss = float(loss.numpy() if hasattr(loss, "numpy") else loss)
                # NOTE: under MWMS, tf-keras 2.21 adds each replica's own mean
                # loss into the batch logs, because "auto" reduction means "sum"
                # there. Every replica gets an equal share of the batch, so the
                # sum divided by the replica count is the mean loss.
                if self.model.distribute_reduction_method in ("auto", "sum"):
                    loss /= self.model.distribute_strategy.num_replicas_in_sync
                self.last_loss = loss
            return self.last_loss

    return MirroredStepBackup
