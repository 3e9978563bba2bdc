"""A cost model of PSS training throughput, fed by the benchmark's measurements.

Three ceilings bound a job's steps/s with W workers and P PS tasks:

* compute: `W / t`, where `t` is one worker's step time with a core of its own;
* dispatch: `R * spe`, where `R` is the closures/s one coordinator dispatches
  and `spe` the steps per closure;
* PS network: `P * B / bytes_per_step`, where `B` is one PS task's network
  bandwidth and `bytes_per_step` what one step moves to and from the PS tasks.

The job runs at the smallest of the three. `t` and `R` are measured, `B` is an
assumption (a 10 Gbit/s NIC), and `bytes_per_step` is counted from the CTR
example's shapes.
"""

from __future__ import annotations

import dataclasses

# 10 Gbit/s, a common NIC for PS hosts; an assumption, not a measurement.
ASSUMED_PS_BANDWIDTH_BYTES_PER_SECOND = 1.25e9
FLOAT_BYTES = 4
INDEX_BYTES = 8


def ctr_bytes_per_step() -> int:
    """Returns the bytes one CTR example step moves between a worker and the PS tasks, at most.

    Every example reads one row of each embedding table and sends one
    gradient row back with its int64 index. The dense layers are read whole
    and their gradients sent back whole. Rows that repeat within a batch move
    once, so this is an upper bound.
    """
    from tfps_ha.examples import ctr

    batch = ctr.BATCH_SIZE
    row_floats = 2 * ctr.EMBEDDING_DIM + 4  # user and ad rows, and the 4-wide category row
    embedding = batch * row_floats * FLOAT_BYTES * 2 + batch * 3 * INDEX_BYTES
    concatenated = row_floats
    dense_floats = concatenated * 32 + 32 + 32 * 1 + 1
    return embedding + dense_floats * FLOAT_BYTES * 2


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The three ceilings and the predicted rate, in steps/s."""

    compute: float
    dispatch: float
    network: float

    @property
    def steps_per_second(self) -> float:
        return min(self.compute, self.dispatch, self.network)

    @property
    def limit(self) -> str:
        """Names the ceiling that binds."""
        ceilings = {"compute": self.compute, "dispatch": self.dispatch, "PS network": self.network}
        return min(ceilings, key=ceilings.get)


def predict(workers: int, ps: int, step_seconds: float, closures_per_second: float, steps_per_execution: int,
            bytes_per_step: int, ps_bandwidth: float = ASSUMED_PS_BANDWIDTH_BYTES_PER_SECOND) -> Prediction:
    """Returns the ceilings for `workers` workers and `ps` PS tasks."""
    return Prediction(
        compute=workers / step_seconds,
        dispatch=closures_per_second * steps_per_execution,
        network=ps * ps_bandwidth / bytes_per_step,
    )
