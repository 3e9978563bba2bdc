"""Writes `RESULTS.md` and its plot from the benchmark results."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

TARGETS = {
    "loop_overhead": (">=", 0.97),
    "fit_overhead": (">=", 0.97),
    "auto_spe": (">=", 0.95),
    "checkpoint_stall": ("<=", 0.2),
    "recovery_vs_torchrun": ("<=", 0.5),
}
PLOT_NAME = "results.png"


def describe_machine() -> dict:
    """Returns the machine, the versions and the load when the run starts."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            cpu = next((line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as stream:
            kib = int(next(line for line in stream if line.startswith("MemTotal")).split()[1])
            memory_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    versions = {}
    for package in ("tensorflow", "tf-keras", "tfps-ha"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        if changed:
            commit += " with uncommitted changes"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "versions": versions, "commit": commit, "load_average_start": os.getloadavg(),
    }


def verdict(name: str, result: dict) -> str:
    """Returns whether the benchmark met its target, or that it has none."""
    if "skipped" in result or "error" in result:
        return "not measured"
    if name not in TARGETS:
        return "no target"
    sense, target = TARGETS[name]
    met = result["ratio"] >= target if sense == ">=" else result["ratio"] <= target
    return f"{'met' if met else 'missed'} ({sense} {target})"


def write(path: str, machine: dict, results: dict, quick: bool) -> None:
    """Writes the Markdown report at `path` and the plot beside it."""
    plot = os.path.join(os.path.dirname(path), PLOT_NAME)
    _plot(plot, results)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py{' --quick' if quick else ''}` on {machine['date']}, "
        f"commit {machine['commit']}, in {machine.get('seconds', '?')} s.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; memory {machine['memory_gib']} GiB; {machine['os']}",
        f"- Python {machine['python']}; " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()),
        f"- Load average (1, 5, 15 min) at the start {_load(machine['load_average_start'])} and at the end "
        f"{_load(machine.get('load_average_end'))}. Other programs shared the cores, so absolute "
        "rates vary from run to run; the ratios compare the two sides under the same load.",
        "",
        "## Method",
        "",
        "Each benchmark process starts the PS and worker servers as separate `tfps-ha task` processes on "
        "loopback ports and runs the coordinator in itself. The kit runs through `run_coordinator`, the code "
        "path of a launch (lease, heartbeat, fenced saves, TensorBoard scalars). Kit and baseline share one "
        "strategy and `ClusterCoordinator`, their variables land on the same PS tasks, and they run in turns "
        "(ABBA...). A rate is taken between two joins, from the end of the first checkpoint window to the "
        "target, so start-up and tracing are left out on both sides. Other load on the machine only ever "
        "slows a run, so the ratio compares the fastest kit run with the fastest baseline run, as `timeit` "
        "takes the fastest repeat; the median of the per-pair ratios is in the details. CPU time per step "
        "(servers and coordinator, from /proc) is reported beside the wall rates.",
        "",
        "## Results",
        "",
        "| benchmark | ratio | kit | baseline | unit | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "skipped" in result or "error" in result:
            reason = result.get("skipped") or result.get("error")
            lines.append(f"| {name} | - | - | - | {reason} | {verdict(name, result)} |")
            continue
        lines.append(f"| {name} | {result['ratio']:.3f} | {result['kit']:.4g} | {result['baseline']:.4g} | "
                     f"{result['unit']} | {verdict(name, result)} |")
    lines += ["", f"![ratios and sweeps]({PLOT_NAME})", "", "## Details", ""]
    for name, result in results.items():
        details = result.get("details")
        if details:
            lines += [f"### {name}", "", "```", _format_details(details), "```", ""]
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines))


def _load(values) -> str:
    return ", ".join(f"{value:.1f}" for value in values) if values else "unknown"


def _format_details(details: dict) -> str:
    import json

    return json.dumps(details, indent=1, default=str)


def _plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [name for name, result in results.items() if "ratio" in result]
    ratios = [results[name]["ratio"] for name in names]
    axes[0].barh(names, ratios, color="tab:blue")
    for index, name in enumerate(names):
        if name in TARGETS:
            axes[0].plot([TARGETS[name][1]] * 2, [index - 0.4, index + 0.4], color="tab:red")
    axes[0].set_xlabel("kit / baseline (red: target)")
    axes[0].set_title("Ratios")

    auto_details = results.get("auto_spe", {}).get("details", {})
    sweep = auto_details.get("sweep_steps_per_second", {})
    packings = sorted((int(key), value) for key, value in sweep.items())
    if packings:
        axes[1].plot([p for p, _ in packings], [value for _, value in packings], marker="o", label="sweep")
        auto = auto_details.get("kit_steps_per_second")
        if auto:
            axes[1].axhline(sum(auto) / len(auto), color="tab:green", label="auto (head to head)")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("steps per execution")
        axes[1].set_ylabel("steps/s (tiny model)")
        axes[1].legend()
    axes[1].set_title("auto_spe sweep")

    points = results.get("scaling", {}).get("details", {}).get("points", [])
    if points:
        axes[2].plot([p["workers"] for p in points], [p["steps_per_second"] for p in points], marker="o")
        axes[2].set_xlabel("workers (2 PS)")
        axes[2].set_ylabel("CTR steps/s")
    axes[2].set_title("scaling on this machine")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
