"""One benchmark process: starts PS and worker servers, then runs benchmarks against them.

    python -m benchmarks.session --workers 2 --ps 2 --bench loop_overhead,fit_overhead --out result.json

Writes one JSON object with a result per benchmark. `benchmarks/run.py`
starts this module once per cluster shape and prints the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time

from benchmarks.cluster import server_processes
from benchmarks.harness import (
    Rate,
    Session,
    interleaved,
    median_cpu_ratio,
    median_ratio,
    rate_between,
)

logger = logging.getLogger("benchmarks.session")

CTR = "tfps_ha.examples.ctr"
DIGITS = "tfps_ha.examples.digits"
TINY = "benchmarks.tiny"


def custom_loop_spec(session: Session, module: str, steps: int, steps_per_execution: int | str,
                     checkpoint_every_steps: int, async_checkpoint: bool = False) -> str:
    """Returns a spec for the custom loop on the session's cluster shape."""
    return (
        f"cluster: {{chief: 1, worker: {session.cluster.num_workers()}, ps: {session.cluster.num_ps()}}}\n"
        f"trainer: {{module: {module}, runner: custom_loop}}\n"
        f"training: {{steps: {steps}, steps_per_execution: {steps_per_execution}, "
        f"checkpoint_every_steps: {checkpoint_every_steps}, "
        f"async_checkpoint: {'true' if async_checkpoint else 'false'}}}\n")


def loop_overhead(session: Session, quick: bool) -> dict:
    """Compares the kit's custom loop with the tutorial loop on the CTR model, in steps/s."""
    from tfps_ha.examples import ctr

    steps, every, spe, pairs = (300, 100, 10, 2) if quick else (1100, 100, 10, 8)
    spec = custom_loop_spec(session, CTR, steps, spe, every)

    def kit() -> Rate:
        return rate_between(session.run_kit(spec)[0], every, steps)

    def baseline() -> Rate:
        from benchmarks.baselines import run_custom_loop

        return rate_between(run_custom_loop(session, ctr, steps, spe, every), every, steps)

    return _pair_result(interleaved(kit, baseline, pairs), "steps/s",
                        {"model": "CTR example", "steps": steps, "measured_from_step": every,
                         "steps_per_execution": spe, "checkpoint_every_steps": every})


def fit_overhead(session: Session, quick: bool) -> dict:
    """Compares the kit's fit runner with plain tf-keras fit on the digits model, in steps/s."""
    from tfps_ha.examples import digits

    steps, per_epoch, spe, pairs = (300, 100, 10, 2) if quick else (600, 100, 10, 6)
    spec = (
        f"cluster: {{chief: 1, worker: {session.cluster.num_workers()}, ps: {session.cluster.num_ps()}}}\n"
        f"trainer: {{module: {DIGITS}, runner: fit}}\n"
        f"training: {{steps: {steps}, steps_per_execution: {spe}, checkpoint_every_steps: {per_epoch}, "
        f"steps_per_epoch: {per_epoch}}}\n")

    def kit() -> Rate:
        return rate_between(session.run_kit(spec)[0], per_epoch, steps)

    def baseline() -> Rate:
        from benchmarks.baselines import run_fit

        return rate_between(run_fit(session, digits, steps, spe, per_epoch), per_epoch, steps)

    return _pair_result(interleaved(kit, baseline, pairs), "steps/s",
                        {"model": "digits example", "steps": steps, "measured_from_step": per_epoch,
                         "steps_per_execution": spe, "steps_per_epoch": per_epoch})


def empty_closure_rate(session: Session, closures: int) -> float:
    """Returns closures/s that the shared ClusterCoordinator dispatches for a function without ops."""
    tf = session.tf

    @tf.function
    def empty():
        return tf.constant(0)

    for _ in range(2 * session.cluster.num_workers()):
        session.coordinator.schedule(empty)
    session.coordinator.join()
    started = time.perf_counter()
    for _ in range(closures):
        session.coordinator.schedule(empty)
    session.coordinator.join()
    return closures / (time.perf_counter() - started)


def dispatch_ceiling(session: Session, quick: bool) -> dict:
    """Empty-closure dispatch rate, and the kit's tiny-model rate at one step per closure as a fraction."""
    closures, steps, every, reps = (300, 300, 100, 2) if quick else (1000, 600, 100, 4)
    spec = custom_loop_spec(session, TINY, steps, 1, every)
    ceilings = []
    kit_rates = []
    for _ in range(reps):
        ceilings.append(empty_closure_rate(session, closures))
        kit_rates.append(rate_between(session.run_kit(spec)[0], every, steps).steps_per_second)
    ceiling = statistics.median(ceilings)
    kit = statistics.median(kit_rates)
    return {"ratio": kit / ceiling, "kit": kit, "baseline": ceiling, "unit": "closures/s",
            "details": {"empty_closures_per_second": ceilings, "kit_steps_per_second_at_spe_1": kit_rates,
                        "model": "benchmarks.tiny", "closures_timed": closures}}


class _ChoiceRecorder(logging.Handler):
    """Keeps the packing that the custom loop logs after its probe."""

    PATTERN = re.compile(r"using (\d+) steps per execution")

    def __init__(self):
        super().__init__(logging.INFO)
        self.choices: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.choices.append(int(match.group(1)))


def auto_spe(session: Session, quick: bool) -> dict:
    """Compares `steps_per_execution: auto` with the best packing of a sweep, on the tiny model, in steps/s.

    The sweep runs each packing once to find the best; then the best and
    auto run in turns, and the ratio compares the fastest run of each (`_pair_result`).
    """
    steps, every = (400, 100) if quick else (1000, 100)
    sweep = (1, 10, 50) if quick else (1, 2, 5, 10, 20, 25, 50, 100)
    pairs = 1 if quick else 3
    recorder = _ChoiceRecorder()
    logging.getLogger("tfps_ha.coordinator.custom_loop").addHandler(recorder)
    logging.getLogger("tfps_ha.coordinator.custom_loop").setLevel(logging.INFO)

    def run(packing: int | str) -> Rate:
        spec = custom_loop_spec(session, TINY, steps, packing, every)
        return rate_between(session.run_kit(spec)[0], every, steps)

    swept = {packing: run(packing).steps_per_second for packing in sweep}
    best = max(swept, key=swept.get)
    head_to_head = interleaved(lambda: run("auto"), lambda: run(best), pairs)
    result = _pair_result(head_to_head, "steps/s", {
        "sweep_steps_per_second": swept, "best_hand_tuned": best, "auto_choices": recorder.choices,
        "model": "benchmarks.tiny", "checkpoint_every_steps": every, "steps": steps})
    return result


def checkpoint_stall(session: Session, quick: bool) -> dict:
    """Measures the time the custom loop is blocked per save, asynchronous over synchronous, on the CTR model.

    The blocked time is the wall time of the runner's save call. For an
    asynchronous save it contains the wait for the previous write, if that is
    still running, and the copy into the shadow variables. Both are also
    reported on their own.
    """
    from tfps_ha.coordinator import async_checkpoint, custom_loop

    steps, every, pairs = (300, 100, 1) if quick else (600, 100, 3)
    timings: dict[str, list[float]] = {"save": [], "wait": [], "start": []}
    originals = {
        "save": (custom_loop._Saver, custom_loop._Saver.save),
        "wait": (async_checkpoint.SnapshotSaver, async_checkpoint.SnapshotSaver.wait),
        "start": (async_checkpoint.SnapshotSaver, async_checkpoint.SnapshotSaver.start),
    }

    def timed(name, method):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - started)
        return wrapper

    for name, (owner, method) in originals.items():
        setattr(owner, name, timed(name, method))
    results: dict[str, list[float]] = {"async": [], "sync": [], "async_wait": [], "async_copy": []}
    try:
        for index in range(pairs):
            for mode in (("sync", "async") if index % 2 == 0 else ("async", "sync")):
                for values in timings.values():
                    values.clear()
                session.run_kit(custom_loop_spec(session, CTR, steps, 10, every, async_checkpoint=mode == "async"))
                # The first save of a run traces the save or copy function; it is left out.
                results[mode].extend(timings["save"][1:])
                if mode == "async":
                    # save() calls wait() then start(); finish() makes one more wait().
                    results["async_wait"].extend(timings["wait"][1:len(timings["start"])])
                    results["async_copy"].extend(timings["start"][1:])
    finally:
        for name, (owner, method) in originals.items():
            setattr(owner, name, method)
    async_ms = 1000 * statistics.median(results["async"])
    sync_ms = 1000 * statistics.median(results["sync"])
    return {"ratio": async_ms / sync_ms, "kit": async_ms, "baseline": sync_ms, "unit": "ms blocked per save",
            "details": {name: [round(1000 * value, 2) for value in values] for name, values in results.items()}
            | {"model": "CTR example", "checkpoint_every_steps": every, "ps": session.cluster.num_ps()}}


def scaling_point(session: Session, quick: bool) -> dict:
    """Measures the kit's CTR steps/s on this cluster and the dispatch rate for the cost model."""
    steps, every, reps = (300, 100, 1) if quick else (500, 100, 3)
    spec = custom_loop_spec(session, CTR, steps, 10, every)
    rates = [rate_between(session.run_kit(spec)[0], every, steps) for _ in range(reps)]
    from benchmarks.cost_model import ctr_bytes_per_step

    return {
        "workers": session.cluster.num_workers(), "ps": session.cluster.num_ps(),
        "bytes_per_step": ctr_bytes_per_step(),
        "steps_per_second": statistics.median(rate.steps_per_second for rate in rates),
        "cpu_ms_per_step": statistics.median(rate.cpu_ms_per_step for rate in rates),
        "empty_closures_per_second": empty_closure_rate(session, 300 if quick else 1000),
    }


def _pair_result(pairs: list[tuple[Rate, Rate]], unit: str, details: dict) -> dict:
    """Returns the result of interleaved runs: the fastest kit run over the fastest baseline run.

    Other load on the machine only ever slows a run, so each side's fastest
    run is the closest to its own speed. The median of the per-pair ratios
    and the CPU ratio are kept in the details.
    """
    kit = max(a.steps_per_second for a, _ in pairs)
    baseline = max(b.steps_per_second for _, b in pairs)
    details = dict(details)
    details.update({
        "kit_steps_per_second": [round(a.steps_per_second, 2) for a, _ in pairs],
        "baseline_steps_per_second": [round(b.steps_per_second, 2) for _, b in pairs],
        "median_pair_ratio": median_ratio(pairs),
        "kit_cpu_ms_per_step": [round(a.cpu_ms_per_step, 3) for a, _ in pairs],
        "baseline_cpu_ms_per_step": [round(b.cpu_ms_per_step, 3) for _, b in pairs],
        "cpu_ratio": median_cpu_ratio(pairs),
    })
    return {"ratio": kit / baseline, "kit": kit, "baseline": baseline, "unit": unit, "details": details}


BENCHMARKS = {
    "loop_overhead": loop_overhead,
    "fit_overhead": fit_overhead,
    "dispatch_ceiling": dispatch_ceiling,
    "auto_spe": auto_spe,
    "checkpoint_stall": checkpoint_stall,
    "scaling_point": scaling_point,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker tasks to start")
    parser.add_argument("--ps", type=int, default=2, help="PS tasks to start")
    parser.add_argument("--bench", required=True, help=f"comma-separated names from: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--out", required=True, help="JSON file to write the results to")
    args = parser.parse_args(argv)
    names = [name for name in args.bench.split(",") if name]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; expected names from {', '.join(BENCHMARKS)}")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = {}
    with server_processes(args.workers, args.ps) as servers:
        session = Session(servers)
        for name in names:
            started = time.monotonic()
            try:
                results[name] = BENCHMARKS[name](session, args.quick)
            except Exception as error:  # Reported in the output; the other benchmarks still run.
                logger.exception("Benchmark %s failed.", name)
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            logger.warning("Benchmark %s finished in %.0f s.", name, time.monotonic() - started)
            with open(args.out, "w", encoding="utf-8") as stream:
                json.dump(results, stream, indent=1)
    sys.stdout.flush()
    sys.stderr.flush()
    # TensorFlow's gRPC threads can keep the process alive; the servers are already gone.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
