"""What a user writes without the kit: a hand-written PSS loop and plain tf-keras `fit`.

Both follow TensorFlow's "Parameter server training with ParameterServerStrategy"
tutorial. The loop schedules a `tf.function` per closure through
`ClusterCoordinator.schedule`, joins at the end of each epoch and saves with a
`tf.train.CheckpointManager`. `fit` gets a `DatasetCreator` and the stock
`BackupAndRestore` callback. Epochs have the length of the kit's checkpoint
interval, so both sides join and save equally often.
"""

from __future__ import annotations

import tempfile
from types import ModuleType

from benchmarks.harness import Mark, Session


def run_custom_loop(session: Session, trainer: ModuleType, steps: int, steps_per_execution: int,
                    epoch_steps: int) -> list[Mark]:
    """Trains `trainer` (a custom-loop trainer module) for `steps` steps; returns a mark after each epoch.

    Each mark is taken after the epoch's join and before its save, where the
    kit's runner takes its heartbeat mark too.
    """
    tf = session.tf
    strategy, coordinator = session.strategy, session.coordinator
    session.reset_placement()
    with strategy.scope():
        model = trainer.build_model()
        optimizer = trainer.build_optimizer()
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=optimizer), tempfile.mkdtemp(prefix="tfps_ha_bench_"),
        max_to_keep=3)

    @tf.function
    def train_steps(iterator):
        def replica_fn(batch):
            with tf.GradientTape() as tape:
                loss = trainer.compute_loss(model, batch)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        loss = tf.constant(0.0)
        for _ in tf.range(steps_per_execution):
            loss = strategy.reduce(tf.distribute.ReduceOp.MEAN,
                                   strategy.run(replica_fn, args=(next(iterator),)), axis=None)
        return loss

    def per_worker_dataset_fn():
        return strategy.distribute_datasets_from_function(trainer.dataset_fn)

    iterator = iter(coordinator.create_per_worker_dataset(per_worker_dataset_fn))
    marks = []
    step = 0
    while step < steps:
        for _ in range(epoch_steps // steps_per_execution):
            coordinator.schedule(train_steps, args=(iterator,))
        coordinator.join()
        step += epoch_steps
        marks.append(_mark(session, step))
        manager.save(checkpoint_number=step)
    return marks


def run_fit(session: Session, trainer: ModuleType, steps: int, steps_per_execution: int,
            steps_per_epoch: int) -> list[Mark]:
    """Runs plain `model.fit` for `steps` steps; returns a mark after each epoch's backup.

    The trainer's compiled model is compiled again with `steps_per_execution`,
    its optimizer and loss, and the accuracy metric (the digits example's).
    """
    keras = session.keras
    session.reset_placement()
    with session.strategy.scope():
        model = trainer.build_model()
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"],
                      steps_per_execution=steps_per_execution)
    marks = []

    class EpochMarks(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            session.coordinator.join()
            marks.append(_mark(session, (epoch + 1) * steps_per_epoch))

    backup = keras.callbacks.BackupAndRestore(tempfile.mkdtemp(prefix="tfps_ha_bench_"))
    model.fit(keras.utils.experimental.DatasetCreator(trainer.dataset_fn), epochs=steps // steps_per_epoch,
              steps_per_epoch=steps_per_epoch, callbacks=[backup, EpochMarks()], verbose=0)
    return marks


def _mark(session: Session, step: int) -> Mark:
    session.mark(step)
    return session.marks[-1]
