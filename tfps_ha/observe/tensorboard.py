"""TensorBoard scalars for the coordinator: loss, steps/s and evaluation metrics."""

from __future__ import annotations

import logging
import math
import numbers
from types import ModuleType
from typing import Mapping

logger = logging.getLogger(__name__)

# The coordinator's scalars go to WORKDIR/tensorboard.
TENSORBOARD_FOLDER = "tensorboard"


class ScalarWriter:
    """Writes `{name: value}` scalars at a step to TensorBoard event files in `logdir`.

    TensorFlow is imported when the writer is created, so importing this module
    stays cheap. Writes go through `tf.summary`, which needs the `tensorboard`
    package for its scalar op.

        writer = ScalarWriter(os.path.join(workdir, "tensorboard"))
        writer.write(step, {"loss": 0.31, "steps_per_second": 48.0})
        writer.close()
    """

    def __init__(self, logdir: str, tf: ModuleType | None = None, flush_millis: int = 10_000):
        """Creates the event file writer.

        Args:
          logdir: Folder of the event files; created when missing.
          tf: The TensorFlow module, when the caller already imported it.
          flush_millis: Maximum time, in milliseconds, that written values
            wait in memory before TensorFlow writes them to disk.
        """
        if tf is None:
            import tensorflow as tf  # noqa: PLC0415 (deferred: importing TensorFlow takes seconds)
        self.logdir = logdir
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir, flush_millis=flush_millis)
        self._closed = False

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes each scalar at `step`.

        A NaN or infinite value is written as it is (TensorBoard shows it), so
        a diverging loss stays visible.

        Raises:
          ValueError: The writer is closed, `step` is negative or not an
            integer, a name is empty, or a value is not a real number.
        """
        if self._closed:
            raise ValueError(f"ScalarWriter for {self.logdir} is closed; create a new one to write more")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"step: received {step!r}; expected a non-negative integer")
        for name, value in scalars.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"scalar name: received {name!r}; expected a non-empty string such as 'loss'")
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"scalar {name!r}: received {value!r}; expected a real number")

        with self._writer.as_default():
            for name, value in scalars.items():
                if not math.isfinite(float(value)):
                    logger.warning("Scalar %s is %s at step %d.", name, value, step)
                self._tf.summary.scalar(name, float(value), step=int(step))

    def flush(self) -> None:
        """Writes buffered values to the event file now."""
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file; later calls do nothing."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self) -> "ScalarWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
