"""Recovery time after SIGKILL, measured with `tfps-ha launch --chaos` on the bundled digits job.

Each launch kills a worker, a PS and the leading coordinator at planned steps.
The supervisor times each recovery from the kill to the next step advance
(`recoveries` in `summary.json`) and counts the steps that restarted
coordinators redo (`lost_steps`).

The baseline is what a job without the kit pays at the least after any of
these failures: a restart of the whole job, from `tfps-ha launch` to its first
step advance (process start, TensorFlow import, connecting to the cluster,
tracing). It is measured on the same launches.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO_ROOT, "cluster_specs", "local.yaml")
# Steps of each kill within the job's 600 steps.
PLANS = (
    "worker:0@step=120,ps:0@step=300,chief@step=480",
    "ps:0@step=120,chief@step=300,worker:1@step=480",
    "chief@step=120,worker:0@step=300,ps:0@step=480",
)
LAUNCH_TIMEOUT_SECONDS = 600


def run_launch(plan: str) -> dict:
    """Runs one chaos launch; returns its summary plus `first_step_seconds`, the cold-start time.

    Raises:
      RuntimeError: The launch failed or timed out.
    """
    workdir = tempfile.mkdtemp(prefix="tfps_ha_bench_recovery_")
    env = dict(os.environ, TFPS_HA_LOG_LEVEL="WARNING")
    started = time.time()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "tfps_ha", "launch", SPEC, "--workdir", workdir, "--chaos", plan],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the chaos launch {plan!r} timed out after {LAUNCH_TIMEOUT_SECONDS} s; "
                           f"see {workdir}") from None
    summary_path = os.path.join(workdir, "summary.json")
    if completed.returncode != 0 or not os.path.exists(summary_path):
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"the chaos launch {plan!r} exited with {completed.returncode}: {' | '.join(tail)}")
    with open(summary_path, encoding="utf-8") as stream:
        summary = json.load(stream)
    summary["first_step_seconds"] = _first_step_seconds(os.path.join(workdir, "progress.jsonl"), started)
    return summary


def _first_step_seconds(progress_path: str, started: float) -> float | None:
    # The supervisor appends a progress line about once a second.
    with open(progress_path, encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            if record.get("step", 0) > 0:
                return record["ts"] - started
    return None


def recovery(quick: bool) -> dict:
    """Returns the recovery benchmark's result: median seconds per kill against the cold start."""
    plans = PLANS[:1] if quick else PLANS
    by_task: dict[str, list[float]] = {"worker": [], "ps": [], "chief": []}
    lost_steps = []
    cold_starts = []
    kills = 0

    for plan in plans:
        summary = run_launch(plan)
        for item in summary.get("recoveries", []):
            job = item["task"].split(":")[0]
            if "recovery_seconds" in item:
                by_task.setdefault(job, []).append(item["recovery_seconds"])
            kills += 1
        lost_steps.append(summary.get("lost_steps", 0))
        if summary["first_step_seconds"] is not None:
            cold_starts.append(summary["first_step_seconds"])

    every = [value for values in by_task.values() for value in values]
    if not every or not cold_starts:
        raise RuntimeError(f"no recovery was timed: {by_task}, cold starts {cold_starts}")
    kit = statistics.median(every)
    baseline = statistics.median(cold_starts)
    return {
        "ratio": kit / baseline, "kit": kit, "baseline": baseline, "unit": "s from SIGKILL to the next step",
        "details": {
            "median_seconds_by_task": {job: statistics.median(values) for job, values in by_task.items() if values},
            "seconds_by_task": by_task,
            "lost_steps_per_kill": sum(lost_steps) / max(1, kills),
            "kills": kills, "cold_start_seconds": cold_starts, "plans": list(plans),
            "job": "cluster_specs/local.yaml (digits, fit, 2 workers, 1 PS)",
        },
    }
