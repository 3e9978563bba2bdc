"""ScalarWriter writes real TensorBoard event files, read back with TensorBoard's event loader."""

from __future__ import annotations

import glob
import math
import os

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from tfps_ha.observe.tensorboard import ScalarWriter  # noqa: E402


def read_scalars(logdir: str) -> list[tuple[int, str, float, str]]:
    """Returns (step, tag, value, plugin) for every summary value in the event files of `logdir`."""
    values = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                number = float(tensor_util.make_ndarray(value.tensor))
                values.append((event.step, value.tag, number, value.metadata.plugin_data.plugin_name))
    return values


def test_scalar_writer_round_trip(tmp_path):
    logdir = str(tmp_path / "tensorboard")

    with ScalarWriter(logdir) as writer:
        writer.write(10, {"loss": 0.5, "steps_per_second": 42})
        writer.write(20, {"loss": 0.25, "eval/accuracy": 0.9})
    scalars = read_scalars(logdir)

    assert scalars == [
        (10, "loss", 0.5, "scalars"),
        (10, "steps_per_second", 42.0, "scalars"),
        (20, "loss", 0.25, "scalars"),
        (20, "eval/accuracy", pytest.approx(0.9), "scalars"),
    ]


def test_scalar_writer_flush_before_close(tmp_path):
    logdir = str(tmp_path / "tensorboard")
    writer = ScalarWriter(logdir)

    writer.write(1, {"loss": float("nan")})
    writer.flush()
    scalars = read_scalars(logdir)
    writer.close()
    writer.close()

    assert len(scalars) == 1
    assert scalars[0][1] == "loss"
    assert math.isnan(scalars[0][2])


@pytest.mark.parametrize("step, scalars, message", [
    (-1, {"loss": 1.0}, "step: received -1; expected a non-negative integer"),
    (1.5, {"loss": 1.0}, "step: received 1.5"),
    (1, {"": 1.0}, "scalar name: received ''"),
    (1, {"loss": "0.5"}, "scalar 'loss': received '0.5'; expected a real number"),
    (1, {"loss": None}, "scalar 'loss': received None"),
])
def test_scalar_writer_invalid_input(tmp_path, step, scalars, message):
    with ScalarWriter(str(tmp_path / "tensorboard")) as writer:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
            writer.write(step, scalars)


def test_scalar_writer_closed(tmp_path):
    writer = ScalarWriter(str(tmp_path / "tensorboard"))
    writer.close()

    with pytest.raises(ValueError, match="is closed"):
        writer.write(1, {"loss": 1.0})
