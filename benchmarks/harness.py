"""Runs the kit's coordinator and the hand-written baselines in one process, with timing marks.

The kit runs through `run_coordinator`, the code path of a real launch (lease,
heartbeat, fenced saves, TensorBoard scalars), minus the process start. Two
patches make the runs comparable and measurable, and neither changes what
the kit does:

* `build_strategy` returns one strategy and `ClusterCoordinator` shared by
  every run of the process, so the kit and the baseline dispatch through the
  same coordinator threads and gRPC channels.
* `Heartbeat.beat` also records `(time, step, cpu seconds)`; the runners call
  it after every join, so marks fall on exact step counts.

Before every run the strategy's round-robin placement counter is reset, so the
kit's and the baseline's variables land on the same PS tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import tempfile
import time
from typing import Callable, Iterator

from benchmarks.cluster import ServerCluster


@dataclasses.dataclass(frozen=True)
class Mark:
    """One point of a run: wall time (perf_counter), steps applied and CPU seconds used so far."""

    seconds: float
    step: int
    cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class Rate:
    """Throughput between two marks.

    Attributes:
      steps_per_second: Steps over wall time.
      cpu_ms_per_step: CPU time of the servers and the coordinator per step,
        in milliseconds; less sensitive than wall time to other load on the
        machine.
    """

    steps_per_second: float
    cpu_ms_per_step: float


def rate_between(marks: list[Mark], start_step: int, end_step: int) -> Rate:
    """Returns the rate from the first mark at or past `start_step` to the first at or past `end_step`.

    Raises:
      ValueError: No mark reaches one of the steps.
    """
    first = next((mark for mark in marks if mark.step >= start_step), None)
    last = next((mark for mark in marks if mark.step >= end_step), None)
    if first is None or last is None or last.seconds <= first.seconds:
        raise ValueError(f"no marks at steps {start_step} and {end_step}: {[mark.step for mark in marks]}")
    steps = last.step - first.step
    return Rate(steps / (last.seconds - first.seconds), 1000 * (last.cpu_seconds - first.cpu_seconds) / steps)


class Session:
    """The servers, the shared strategy and the patches of one benchmark process."""

    def __init__(self, servers: ServerCluster):
        from tfps_ha.coordinator import heartbeat as heartbeat_module
        from tfps_ha.coordinator import strategy as strategy_module
        from tfps_ha.tf_env import import_tensorflow

        self.tf, self.keras = import_tensorflow()
        self.servers = servers
        self.cluster = servers.cluster
        self.strategy, self.coordinator = strategy_module.build_strategy(self.tf, self.cluster)
        self.marks: list[Mark] = []
        self._placement_start = getattr(self.strategy.extended, "_variable_count", None)
        shared = (self.strategy, self.coordinator)
        strategy_module.build_strategy = lambda *args, **kwargs: shared

        original_beat = heartbeat_module.Heartbeat.beat
        session = self

        def recording_beat(heartbeat, step, *args, **kwargs):
            session.mark(step)
            return original_beat(heartbeat, step, *args, **kwargs)

        heartbeat_module.Heartbeat.beat = recording_beat

    def mark(self, step: int) -> None:
        """Records a mark at `step` now."""
        self.marks.append(Mark(time.perf_counter(), int(step), self.servers.cpu_seconds()))

    def reset_placement(self) -> None:
        """Makes the next variables land on the PS tasks where the first run's did."""
        if self._placement_start is not None:
            # NOTE: private in TF 2.21: the next variable goes to PS task
            # `_variable_count % num_ps`.
            self.strategy.extended._variable_count = self._placement_start

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[Mark]]:
        """Collects the marks made inside the block."""
        self.reset_placement()
        self.marks = []
        yield self.marks

    def run_kit(self, spec_text: str, target_steps: int | None = None) -> tuple[list[Mark], dict]:
        """Runs the kit's coordinator on this cluster; returns its marks and `result.json`.

        Raises:
          RuntimeError: The coordinator did not exit OK.
        """
        from tfps_ha.coordinator.main import run_coordinator
        from tfps_ha.exit_codes import ExitCode
        from tfps_ha.spec import parse_spec
        from tfps_ha.workdir import Workdir, read_json

        spec = parse_spec(spec_text, source="benchmark")
        workdir = Workdir(tempfile.mkdtemp(prefix="tfps_ha_bench_"))
        with self.recording() as marks:
            code = run_coordinator(spec, self.cluster, workdir, target_steps=target_steps)
        if code != ExitCode.OK:
            raise RuntimeError(f"the kit's coordinator exited with {code.name}; see the log above")
        return list(marks), read_json(workdir.result) or {}


def interleaved(first: Callable[[], Rate], second: Callable[[], Rate], pairs: int) -> list[tuple[Rate, Rate]]:
    """Runs the two measurements `pairs` times, alternating which goes first (ABBA...)."""
    results = []
    for index in range(pairs):
        if index % 2 == 0:
            a = first()
            b = second()
        else:
            b = second()
            a = first()
        results.append((a, b))
    return results


def median_ratio(pairs: list[tuple[Rate, Rate]]) -> float:
    """Returns the median over the pairs of the first rate's steps/s over the second's."""
    return statistics.median(a.steps_per_second / b.steps_per_second for a, b in pairs)


def median_cpu_ratio(pairs: list[tuple[Rate, Rate]]) -> float:
    """Returns the median over the pairs of the second's CPU per step over the first's.

    Like `median_ratio`, a value below 1 means the first is slower.
    """
    return statistics.median(b.cpu_ms_per_step / a.cpu_ms_per_step for a, b in pairs)
