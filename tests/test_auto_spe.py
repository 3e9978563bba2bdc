"""The cost model behind `steps_per_execution: auto` (no TensorFlow needed)."""

from __future__ import annotations

import pytest

from tfps_ha.coordinator.auto_spe import (
    FALLBACK_STEPS_PER_EXECUTION,
    DispatchProfile,
    ProbeSample,
    choose_steps_per_execution,
    divisors,
    fit_profile,
)


def _samples(overhead: float, step: float, workers: int) -> list[ProbeSample]:
    samples = []
    for closures, packing in ((8, 1), (4, 8)):
        steps = closures * packing
        samples.append(ProbeSample(closures, steps, (closures * overhead + steps * step) / workers))
    return samples


def test_fit_recovers_costs():
    profile = fit_profile(_samples(0.004, 0.0005, workers=2), workers=2)

    assert profile is not None
    assert profile.closure_seconds == pytest.approx(0.004)
    assert profile.step_seconds == pytest.approx(0.0005)


def test_fit_needs_two_packings():
    same_packing = [ProbeSample(4, 4, 0.01), ProbeSample(8, 8, 0.02)]

    assert fit_profile(same_packing, workers=2) is None
    assert fit_profile(same_packing[:1], workers=2) is None


def test_fit_rejects_negative_step_time():
    # Larger closures that ran faster in total: no positive step time fits.
    samples = [ProbeSample(8, 8, 0.08), ProbeSample(4, 32, 0.02)]

    assert fit_profile(samples, workers=1) is None


def test_fit_clamps_negative_overhead():
    samples = [ProbeSample(8, 8, 0.007), ProbeSample(4, 32, 0.033)]

    profile = fit_profile(samples, workers=1)

    assert profile is not None
    assert profile.closure_seconds == 0.0


def test_divisors():
    assert divisors(100) == [1, 2, 4, 5, 10, 20, 25, 50, 100]
    assert divisors(1) == [1]
    assert divisors(13) == [1, 13]


def test_dispatch_bound_model_packs_one_closure_per_worker():
    profile = DispatchProfile(closure_seconds=0.004, step_seconds=0.0005, workers=2)

    assert choose_steps_per_execution(profile, checkpoint_every_steps=100) == 50


def test_choice_divides_checkpoint_interval():
    profile = DispatchProfile(closure_seconds=0.004, step_seconds=0.0005, workers=3)

    choice = choose_steps_per_execution(profile, checkpoint_every_steps=90)

    assert 90 % choice == 0
    assert choice == 30


def test_closure_duration_caps_the_choice():
    # 50 ms steps: a 100-step closure would last 5 s.
    profile = DispatchProfile(closure_seconds=0.004, step_seconds=0.05, workers=1)

    choice = choose_steps_per_execution(profile, checkpoint_every_steps=100, max_closure_seconds=2.0)

    assert choice * 0.05 + 0.004 <= 2.0
    assert choice == 25


def test_slow_steps_allow_one_step_closures():
    profile = DispatchProfile(closure_seconds=0.001, step_seconds=5.0, workers=2)

    assert choose_steps_per_execution(profile, checkpoint_every_steps=10) == 1


def test_fallback_without_profile():
    assert choose_steps_per_execution(None, checkpoint_every_steps=100) == FALLBACK_STEPS_PER_EXECUTION
    assert choose_steps_per_execution(None, checkpoint_every_steps=7) == 7
    assert choose_steps_per_execution(None, checkpoint_every_steps=12) == 6
