"""Asynchronous checkpoint saves that block training only for a copy on the PS tasks.

TensorFlow's own `CheckpointOptions(experimental_enable_async_checkpoint=True)`
is not usable with ParameterServerStrategy's sharded variables in TF 2.21.
`ShardedVariable._copy_trackable_to_cpu` copies nothing, so the background
write reads the live embedding tables while training goes on. And
`AsyncCheckpointHelper` collects slot variables only for `tf.Variable`s, so
the optimizer slots of sharded tables are left out of the checkpoint. Both are
in `tensorflow/python/checkpoint/async_checkpoint_helper.py` and
`tensorflow/python/distribute/sharded_variable.py` of TF 2.21.

`SnapshotSaver` keeps a shadow copy of the model and the optimizer, built by
the same trainer functions, so its checkpoint has the same object graph and
restores into the real model. A save copies every variable into its shadow,
which moves data only between PS tasks, then writes the shadow from a
background thread with a `tf.train.CheckpointManager` over the same folder.
The manager updates its `checkpoint` state file after the data files are
complete, so a crash during a write leaves the previous checkpoints listed and
readable.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class SnapshotSaver:
    """Writes checkpoints from a snapshot of the variables, one write at a time.

    Use: `start(step)` after the coordinator joined, then `poll()` while
    training to learn when the write finished, and `wait()` before the run
    ends. Every method runs on the coordinator's main thread.
    """

    def __init__(self, tf, sources: list, shadows: list, shadow_checkpoint, directory: str, max_to_keep: int):
        """Pairs each variable with its shadow.

        Args:
          tf: The TensorFlow module.
          sources: The variables that training updates, in creation order.
          shadows: The shadow variables, one per source, in the same order.
          shadow_checkpoint: A `tf.train.Checkpoint` over the shadow model
            and optimizer.
          directory: The checkpoint folder.
          max_to_keep: Checkpoints kept on disk.

        Raises:
          ValueError: The lists differ in length, shape or dtype, so the
            shadow was not built like the model.
        """
        if len(sources) != len(shadows):
            raise ValueError(
                f"the shadow model has {len(shadows)} variables but the model has {len(sources)}; "
                "build_model() and build_optimizer() must build the same variables on every call")
        for source, shadow in zip(sources, shadows):
            if source.shape != shadow.shape or source.dtype != shadow.dtype:
                raise ValueError(
                    f"shadow variable {shadow.name} ({shadow.shape}, {shadow.dtype.name}) does not match "
                    f"{source.name} ({source.shape}, {source.dtype.name}); build_model() and "
                    "build_optimizer() must build the same variables on every call")
        self._tf = tf
        self._pairs = list(zip(sources, shadows))
        self._manager = tf.train.CheckpointManager(shadow_checkpoint, directory, max_to_keep=max_to_keep)
        self._copy = tf.function(self._copy_all)
        self._thread: threading.Thread | None = None
        self._pending: tuple[int, str | None, BaseException | None] | None = None
        self._done = threading.Event()

    def _copy_all(self) -> None:
        for source, shadow in self._pairs:
            shadow.assign(source.read_value())

    def start(self, step: int) -> None:
        """Copies the variables into the shadow, then starts writing it as checkpoint `step`.

        The caller reports the previous write with `wait()` first; this
        method raises when a write is still running.
        """
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still running; call wait() before start()")
        self._copy()
        self._done.clear()
        self._thread = threading.Thread(
            target=self._write, args=(step,), name=f"checkpoint-write-{step}", daemon=True)
        self._thread.start()

    def _write(self, step: int) -> None:
        try:
            path = self._manager.save(checkpoint_number=step)
            self._pending = (step, path, None)
        except BaseException as error:  # Re-raised on the main thread by poll() or wait().
            self._pending = (step, None, error)
        finally:
            self._done.set()

    def running(self) -> bool:
        """Returns whether a write has started and was not yet collected."""
        return self._thread is not None

    def poll(self) -> tuple[int, str] | None:
        """Returns `(step, path)` of a write that finished since the last call, else None.

        Raises:
          Exception: The error that ended the background write.
        """
        if self._thread is None or not self._done.is_set():
            return None
        return self._collect()

    def wait(self) -> tuple[int, str] | None:
        """Waits for the running write; returns its `(step, path)`, or None when none runs.

        Raises:
          Exception: The error that ended the background write.
        """
        if self._thread is None:
            return None
        self._done.wait()
        return self._collect()

    def _collect(self) -> tuple[int, str]:
        assert self._thread is not None
        self._thread.join()
        self._thread = None
        step, path, error = self._pending or (0, None, RuntimeError("checkpoint write ended without a result"))
        self._pending = None
        if error is not None:
            raise error
        return step, str(path)


def build_snapshot_saver(context: Any, model, optimizer, placement_start: int | None = None) -> SnapshotSaver:
    """Builds the shadow model and optimizer with the trainer's functions and returns the saver.

    Args:
      context: The runner's `RunContext`.
      model: The model that training updates.
      optimizer: Its optimizer, with its slots created.
      placement_start: The strategy's round-robin variable count before
        `model` was built, or None. Restoring it before the shadow is built
        places every shadow variable on the PS task of its source, so the copy
        stays inside each PS task.

    Raises:
      ValueError: The shadow's variables do not match the model's.
    """
    tf = context.tf
    module = context.trainer.module
    extended = context.strategy.extended
    if placement_start is not None and hasattr(extended, "_variable_count"):
        # NOTE: private in TF 2.21: ParameterServerStrategy places each new
        # variable (or shard) on PS task `_variable_count % num_ps`.
        extended._variable_count = placement_start
    with context.strategy.scope():
        shadow_model = module.build_model()
        shadow_optimizer = module.build_optimizer()
        shadow_optimizer._create_all_weights(shadow_model.trainable_variables)
    sources = list(model.variables) + list(optimizer.variables())
    shadows = list(shadow_model.variables) + list(shadow_optimizer.variables())
    moved = sum(1 for source, shadow in zip(sources, shadows) if source.device != shadow.device)
    if moved:
        logger.warning("%d of %d shadow variables are on another PS task than their source; each "
                       "asynchronous save copies them between PS tasks.", moved, len(sources))
    checkpoint = tf.train.Checkpoint(model=shadow_model, optimizer=shadow_optimizer)
    return SnapshotSaver(tf, sources, shadows, checkpoint, context.workdir.checkpoints,
                         context.training.keep_checkpoints)
