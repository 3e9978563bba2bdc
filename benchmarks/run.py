"""Runs the kit's benchmarks against their baselines and prints one line per benchmark.

    python benchmarks/run.py           # full run; writes benchmarks/RESULTS.md and results.png
    python benchmarks/run.py --quick   # short pass; prints the lines only

Each line reads `NAME: ratio=R (kit X, baseline Y, UNIT)`, or
`NAME: skipped (REASON)`, or `NAME: error (MESSAGE)`. Timings are ratios of
the kit to its baseline measured in the same run, interleaved where both run
on one cluster, so other load on the machine affects both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks import report  # noqa: E402 (needs the repository root on sys.path)

ORDER = ("loop_overhead", "fit_overhead", "dispatch_ceiling", "auto_spe", "checkpoint_stall", "recovery",
         "recovery_vs_torchrun", "architecture", "scaling")
MAIN_SESSION = ("loop_overhead", "fit_overhead", "dispatch_ceiling", "auto_spe", "checkpoint_stall", "scaling_point")
SESSION_TIMEOUT_SECONDS = 3600


def run_session(workers: int, ps: int, names: tuple[str, ...], quick: bool, log_folder: str) -> dict:
    """Runs `benchmarks.session` on a new cluster; returns its JSON result."""
    out = os.path.join(log_folder, f"session_{workers}w_{ps}ps.json")
    log = os.path.join(log_folder, f"session_{workers}w_{ps}ps.log")
    command = [sys.executable, "-m", "benchmarks.session", "--workers", str(workers), "--ps", str(ps),
               "--bench", ",".join(names), "--out", out] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
               TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w", encoding="utf-8") as stream:
        try:
            subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT,
                           timeout=SESSION_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            pass
    if not os.path.exists(out):
        return {name: {"error": f"the benchmark process wrote no result; see {log}"} for name in names}
    with open(out, encoding="utf-8") as stream:
        results = json.load(stream)
    for name in names:
        results.setdefault(name, {"error": f"the benchmark process stopped before it; see {log}"})
    return results


def scaling(points: list[dict]) -> dict:
    """Combines the per-cluster CTR rates into the scaling result and its cost model.

    The prediction for 100 workers and 10 PS takes one worker's step time from
    the 1-worker run (an upper bound here, where that worker shares 2 cores
    with the PS tasks and the coordinator) and the fastest dispatch rate.
    """
    from benchmarks import cost_model

    usable = sorted((point for point in points if "steps_per_second" in point), key=lambda point: point["workers"])
    if len(usable) < 2:
        errors = [point.get("error") for point in points if "error" in point]
        return {"error": f"fewer than two cluster sizes were measured: {errors}"}
    first, last = usable[0], usable[-1]
    single = next((point for point in usable if point["workers"] == 1), first)
    bytes_per_step = first["bytes_per_step"]
    dispatch = max(point["empty_closures_per_second"] for point in usable)
    prediction = cost_model.predict(100, 10, step_seconds=1 / single["steps_per_second"],
                                    closures_per_second=dispatch, steps_per_execution=10,
                                    bytes_per_step=bytes_per_step)
    return {
        "ratio": last["steps_per_second"] / first["steps_per_second"], "kit": last["steps_per_second"],
        "baseline": first["steps_per_second"],
        "unit": f"steps/s, {last['workers']} workers over {first['workers']}",
        "details": {"points": usable, "bytes_per_step": bytes_per_step, "closures_per_second": dispatch,
                    "prediction_100_workers_10_ps": dataclasses_dict(prediction)},
    }


def dataclasses_dict(prediction) -> dict:
    return {"compute": prediction.compute, "dispatch": prediction.dispatch, "network": prediction.network,
            "steps_per_second": prediction.steps_per_second, "limit": prediction.limit}


def format_line(name: str, result: dict) -> str:
    """Returns the benchmark's output line."""
    if "skipped" in result:
        return f"{name}: skipped ({result['skipped']})"
    if "error" in result:
        return f"{name}: error ({result['error']})"
    return (f"{name}: ratio={result['ratio']:.3f} (kit {result['kit']:.4g}, baseline {result['baseline']:.4g}, "
            f"{result['unit']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, repeats and cluster sizes")
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated benchmark names to run")
    parser.add_argument("--results", default=None,
                        help="Markdown file to write (default: benchmarks/RESULTS.md for a full run, none for --quick)")
    args = parser.parse_args(argv)
    selected = [name for name in args.only.split(",") if name]
    unknown = [name for name in selected if name not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; expected names from {', '.join(ORDER)}")
    results_path = args.results or (None if args.quick else os.path.join(REPO_ROOT, "benchmarks", "RESULTS.md"))

    log_folder = tempfile.mkdtemp(prefix="tfps_ha_bench_")
    machine = report.describe_machine()
    started = time.monotonic()
    results: dict[str, dict] = {}

    main_names = tuple(name for name in MAIN_SESSION if name in selected or (name == "scaling_point" and "scaling" in selected))
    session = run_session(2, 2, main_names, args.quick, log_folder) if main_names else {}
    for name in ORDER[:5]:
        if name in selected:
            results[name] = session[name]
            print(format_line(name, results[name]), flush=True)

    if "recovery" in selected:
        from benchmarks.recovery import recovery

        try:
            results["recovery"] = recovery(args.quick)
        except RuntimeError as error:
            results["recovery"] = {"error": str(error)}
        print(format_line("recovery", results["recovery"]), flush=True)

    if "recovery_vs_torchrun" in selected:
        from benchmarks.torchrun import recovery_vs_torchrun

        try:
            results["recovery_vs_torchrun"] = recovery_vs_torchrun(args.quick)
        except RuntimeError as error:
            results["recovery_vs_torchrun"] = {"error": str(error)}
        print(format_line("recovery_vs_torchrun", results["recovery_vs_torchrun"]), flush=True)

    if "architecture" in selected:
        from benchmarks.architecture import architecture

        try:
            results["architecture"] = architecture(args.quick)
        except RuntimeError as error:
            results["architecture"] = {"error": str(error)}
        print(format_line("architecture", results["architecture"]), flush=True)

    if "scaling" in selected:
        points = [session.get("scaling_point", {"error": "not measured"})]
        for workers in ((1,) if args.quick else (1, 4)):
            points.append(run_session(workers, 2, ("scaling_point",), args.quick, log_folder)["scaling_point"])
        results["scaling"] = scaling(points)
        print(format_line("scaling", results["scaling"]), flush=True)

    machine["seconds"] = round(time.monotonic() - started)
    machine["load_average_end"] = os.getloadavg()
    with open(os.path.join(log_folder, "results.json"), "w", encoding="utf-8") as stream:
        json.dump({"machine": machine, "results": results}, stream, indent=1, default=str)
    if results_path:
        report.write(results_path, machine, results, quick=args.quick)
        print(f"Wrote {os.path.relpath(results_path, REPO_ROOT)}; logs and raw results in {log_folder}.")
    else:
        print(f"Logs and raw results in {log_folder}.")
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
