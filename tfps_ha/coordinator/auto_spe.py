"""Automatic steps per execution: pick the packing from a measured cost model.

Each scheduled function (closure) costs a fixed `o` seconds of dispatch and
function start, plus `t` seconds per step, on one of `W` workers. The custom
loop joins at every checkpoint, every `E` steps. A window of `E` steps packed
`s` to a closure has `ceil(E / s)` closures, which the `W` workers run in
`ceil(ceil(E / s) / W)` rounds, so the wall time per step is about

    T(s) = ceil(ceil(E / s) / W) * (o + s * t) / E

Larger closures pay `o` less often, but a window whose closures do not
divide evenly among the workers leaves some of them idle until the join. The
choice is the divisor of `E` with the smallest `T`, so that closures end on
checkpoint steps, among those whose closures last at most
`max_closure_seconds`, so that progress reports and SIGTERM handling, which
run between closures, stay timely.

`o` and `t` come from timing real training closures at two packings: for
each sample, `seconds * W = closures * o + steps * t`, solved by least squares.
"""

from __future__ import annotations

import dataclasses
import logging
import math

logger = logging.getLogger(__name__)

# A closure runs for at most this long. The coordinator writes its heartbeat
# and checks for SIGTERM between closures; the supervisor's default heartbeat
# timeout is 30 s, so this leaves a wide margin.
MAX_CLOSURE_SECONDS = 2.0
# Packings timed by the probe; the spread makes `o` and `t` separable.
PROBE_PACKINGS = (1, 8)
# Closures per worker for each probe packing, after one warm-up closure per worker.
PROBE_CLOSURES_PER_WORKER = (4, 2)
# Packing used when the probe could not measure both packings.
FALLBACK_STEPS_PER_EXECUTION = 10


@dataclasses.dataclass(frozen=True)
class ProbeSample:
    """One timed batch of closures: `closures` functions that applied `steps` steps in `seconds`."""

    closures: int
    steps: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class DispatchProfile:
    """The measured costs of the cost model.

    Attributes:
      closure_seconds: Fixed cost `o` of one closure on a worker (dispatch,
        function start, result transfer).
      step_seconds: Cost `t` of one training step on a worker.
      workers: Workers that ran closures in parallel.
    """

    closure_seconds: float
    step_seconds: float
    workers: int

    def seconds_per_step(self, steps_per_execution: int, checkpoint_every_steps: int) -> float:
        """Returns the model's wall time per step, `T(s)` in the module docstring."""
        s = steps_per_execution
        closures = math.ceil(checkpoint_every_steps / s)
        rounds = math.ceil(closures / self.workers)
        return rounds * (self.closure_seconds + s * self.step_seconds) / checkpoint_every_steps


def fit_profile(samples: list[ProbeSample], workers: int) -> DispatchProfile | None:
    """Fits `o` and `t` to the samples; returns None when they do not determine both.

    The fit is least squares on `seconds * workers = closures * o + steps * t`.
    Noise can make a coefficient negative: `o` is then clamped to 0, and a
    non-positive `t` makes the fit fail, because no packing follows from it.
    """
    usable = [sample for sample in samples if sample.closures > 0 and sample.steps > 0 and sample.seconds > 0]
    if len(usable) < 2:
        return None
    # Normal equations of the two-parameter least-squares fit.
    cc = sum(sample.closures ** 2 for sample in usable)
    cs = sum(sample.closures * sample.steps for sample in usable)
    ss = sum(sample.steps ** 2 for sample in usable)
    cy = sum(sample.closures * sample.seconds * workers for sample in usable)
    sy = sum(sample.steps * sample.seconds * workers for sample in usable)
    determinant = cc * ss - cs * cs
    if determinant <= 1e-9 * cc * ss:
        return None  # Every sample had the same steps per closure.
    overhead = (cy * ss - sy * cs) / determinant
    step = (cc * sy - cs * cy) / determinant
    if step <= 0:
        return None
    return DispatchProfile(closure_seconds=max(0.0, overhead), step_seconds=step, workers=workers)


def divisors(number: int) -> list[int]:
    """Returns the positive divisors of `number` in increasing order."""
    small = [d for d in range(1, math.isqrt(number) + 1) if number % d == 0]
    return sorted(set(small + [number // d for d in small]))


def choose_steps_per_execution(profile: DispatchProfile | None, checkpoint_every_steps: int,
                               max_closure_seconds: float = MAX_CLOSURE_SECONDS) -> int:
    """Returns the packing with the smallest modelled time per step.

    Args:
      profile: The measured costs, or None when the probe failed.
      checkpoint_every_steps: Steps between checkpoints (`E`); the result divides it.
      max_closure_seconds: Maximum duration of one closure, in seconds.

    Returns:
      A divisor of `checkpoint_every_steps`. Without a profile, the largest
      divisor up to `FALLBACK_STEPS_PER_EXECUTION`.
    """
    candidates = divisors(checkpoint_every_steps)
    if profile is None:
        return max(d for d in candidates if d <= FALLBACK_STEPS_PER_EXECUTION)
    allowed = [s for s in candidates
               if profile.closure_seconds + s * profile.step_seconds <= max_closure_seconds] or [1]
    return min(allowed, key=lambda s: (profile.seconds_per_step(s, checkpoint_every_steps), s))
