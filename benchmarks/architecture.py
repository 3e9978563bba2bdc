"""Training throughput of the digits job under MWMS against PSS, on the same machine.

Each side is a real `tfps-ha launch` of the bundled digits job (Keras fit):
PSS with `cluster_specs/local.yaml` (1 coordinator, 2 workers, 1 PS) and MWMS
with `cluster_specs/local_mwms.yaml` (2 workers). Both sides run the same
number of steps, passed with `--steps`, and the launches alternate in ABBA
order so that other load on the machine affects both sides alike.

The rate comes from `checkpoints.jsonl`, not from `progress.jsonl`. Both
runners append a line to it after every save (every
`training.checkpoint_every_steps` steps), with the step and the wall time at
which the save finished. Under PSS the fit runner joins the cluster first, so
the line's step has been applied. The supervisor's `progress.jsonl` is too
coarse: it writes at most one line a second, and its `ts` is the time at
which the supervisor read `heartbeat.json`, up to about a second (the
heartbeat interval) after the step was reached. At the roughly 150 steps/s of PSS on 2 cores that error is a large
part of a window of a few seconds. Its rate is still reported in the details
as a cross-check.

The window starts at the first save at or past step `FIRST_MARK_STEP`, so
process start-up, connecting to the cluster and tracing are left out, and it
ends at the last save (the target step). Saves inside the window count on both
sides, as they do in a real job with this spec.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from tfps_ha.observe.jsonl import read_jsonl
from tfps_ha.spec import MULTI_WORKER_MIRRORED, PARAMETER_SERVER, ClusterSpec, load_spec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = {
    "pss": os.path.join(REPO_ROOT, "cluster_specs", "local.yaml"),
    "mwms": os.path.join(REPO_ROOT, "cluster_specs", "local_mwms.yaml"),
}
DIGITS_MODULE = os.path.join(REPO_ROOT, "tfps_ha", "examples", "digits.py")
# Steps per launch, on both sides. Multiples of the specs' steps_per_epoch (100).
QUICK_STEPS = 600
FULL_STEPS = 1500
QUICK_PAIRS = 1
FULL_PAIRS = 3
# The rate window starts at the first checkpoint at or past this step.
FIRST_MARK_STEP = 100
LAUNCH_TIMEOUT_SECONDS = 600
# Time a timed-out launch gets to stop its tasks after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 30
# Launches per slot of the ABBA order: a launch with a task failure inside the
# rate window is discarded (listed in the details) and run again once.
LAUNCH_ATTEMPTS = 2
# Task states in `events.jsonl` that end an attempt of a task abnormally.
FAILURE_STATES = ("FAILED", "SUPERSEDED")


class RestartedLaunchError(RuntimeError):
    """A launch completed, but a task failed inside the rate window, so the rate includes a recovery."""


def read_marks(path: str) -> list[tuple[int, float]]:
    """Reads the `(step, wall time)` marks of a JSON Lines file with `step` and `ts` fields.

    Args:
      path: A `checkpoints.jsonl` or `progress.jsonl` file.

    Returns:
      The marks in file order.

    Raises:
      RuntimeError: The file is missing, or a line is not a JSON object with
        a numeric `step` and `ts`.
    """
    marks = []
    try:
        with open(path, encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RuntimeError(f"{path}:{number}: invalid JSON ({error.msg})") from None
                step = record.get("step") if isinstance(record, dict) else None
                ts = record.get("ts") if isinstance(record, dict) else None
                if not isinstance(step, int) or not isinstance(ts, (int, float)):
                    raise RuntimeError(f"{path}:{number}: expected an object with an integer 'step' and a "
                                       f"numeric 'ts'; received {line.strip()[:200]}")
                marks.append((step, float(ts)))
    except FileNotFoundError:
        raise RuntimeError(f"{path} not found; the launch recorded no progress there") from None
    return marks


def rate_between_marks(marks: list[tuple[int, float]], first_step: int) -> dict:
    """Computes the steps per second from the first mark at or past `first_step` to the last step's first mark.

    Args:
      marks: `(step, wall time)` pairs in the order they were written.
      first_step: The window starts at the first mark whose step is at least
        this, so that start-up and tracing are left out.

    Returns:
      `{"steps_per_second", "start_step", "end_step", "seconds", "end_time"}`.
      `end_time` is the wall time of the window's last mark.

    Raises:
      RuntimeError: Fewer than two marks are at or past `first_step`, or the
        window has no positive step or time difference.
    """
    window = [mark for mark in marks if mark[0] >= first_step]
    if len(window) < 2:
        raise RuntimeError(f"expected at least 2 progress marks at or past step {first_step} to compute a rate; "
                           f"found {len(window)} (first marks: {marks[:20]})")
    start_step, start_time = window[0]
    # The supervisor keeps writing the final step while the job evaluates and
    # exits, so the window ends at the first mark of the last step.
    end_step = window[-1][0]
    end_time = next(ts for step, ts in window if step == end_step)
    steps = end_step - start_step
    seconds = end_time - start_time
    if steps <= 0 or seconds <= 0:
        raise RuntimeError(f"the progress marks from step {start_step} to step {end_step} span {steps} steps "
                           f"in {seconds:.3f} s; expected both to be positive")
    return {"steps_per_second": steps / seconds, "start_step": start_step, "end_step": end_step,
            "seconds": seconds, "end_time": end_time}


def failures_until(events_path: str, end_time: float) -> list[str]:
    """Lists the task failures that `events.jsonl` records at or before `end_time`.

    Args:
      events_path: The launch's `events.jsonl`.
      end_time: Wall time. Failures after it are left out.

    Returns:
      One `"task: cause"` string per failure, in file order.
    """
    return [f"{event.get('task')}: {event.get('cause')}" for event in read_jsonl(events_path)
            if event.get("state") in FAILURE_STATES and isinstance(event.get("ts"), (int, float))
            and event["ts"] <= end_time]


def examples_per_step(strategy: str, workers: int, global_batch_size: int) -> int:
    """Computes the training examples that one step of the digits job consumes.

    The digits `dataset_fn` batches `input_context.get_per_replica_batch_size(BATCH_SIZE)`
    examples. Under PSS each worker builds its own pipeline with one replica
    in sync (CPU workers), so a step is one worker's batch of `BATCH_SIZE`.
    Under MWMS every worker is a replica in sync, so each worker's batch is
    `BATCH_SIZE / workers` and one synchronous step consumes all of them.

    Args:
      strategy: `parameter_server` or `multi_worker_mirrored`.
      workers: Worker tasks (chief included for MWMS).
      global_batch_size: The trainer's `BATCH_SIZE`.

    Returns:
      Examples per step.

    Raises:
      ValueError: The strategy is unknown, or under MWMS the batch size is not
        a multiple of the worker count (TensorFlow rejects that too).
    """
    if strategy == PARAMETER_SERVER:
        return global_batch_size
    if strategy == MULTI_WORKER_MIRRORED:
        if workers < 1 or global_batch_size % workers:
            raise ValueError(f"a batch size of {global_batch_size} does not split evenly over {workers} "
                             "MWMS workers")
        return workers * (global_batch_size // workers)
    raise ValueError(f"unknown strategy {strategy!r}; expected {PARAMETER_SERVER} or {MULTI_WORKER_MIRRORED}")


def read_batch_size(module_path: str = DIGITS_MODULE) -> int:
    """Reads the integer `BATCH_SIZE = N` assignment of a trainer module without importing TensorFlow.

    Raises:
      RuntimeError: The module has no module-level integer `BATCH_SIZE`.
    """
    with open(module_path, encoding="utf-8") as stream:
        tree = ast.parse(stream.read(), filename=module_path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "BATCH_SIZE"
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
            return node.value.value
    raise RuntimeError(f"{module_path} has no module-level 'BATCH_SIZE = <integer>'; the benchmark needs it "
                       "to count examples per step")


def side_order(pair: int) -> tuple[str, str]:
    """Returns the launch order of a pair: PSS first in even pairs, MWMS first in odd ones (ABBA...)."""
    return ("pss", "mwms") if pair % 2 == 0 else ("mwms", "pss")


def _workers(spec: ClusterSpec) -> int:
    # Under MWMS a chief task trains too. Under PSS the chief is the coordinator.
    return spec.task_count("worker") + (spec.task_count("chief") if spec.strategy == MULTI_WORKER_MIRRORED else 0)


def run_side(side: str, spec_path: str, steps: int) -> dict:
    """Launches one side's digits job to `steps` and measures its training rate.

    Args:
      side: `pss` or `mwms`, used in messages.
      spec_path: The cluster spec to launch.
      steps: Target step count, passed as `--steps`.

    Returns:
      `{"steps_per_second", "progress_steps_per_second", "window", "heldout_accuracy", "launch_seconds",
      "restarts"}`. `progress_steps_per_second` is the `progress.jsonl` rate,
      or None when that file has fewer than two lines in the window.
      `restarts` counts the tasks that the supervisor restarted after the
      window, such as during the job's final evaluation.

    Raises:
      RestartedLaunchError: A task failed inside the rate window.
      RuntimeError: The launch failed, timed out or recorded too few
        progress marks.
    """
    workdir = tempfile.mkdtemp(prefix=f"tfps_ha_bench_architecture_{side}_")
    env = dict(os.environ, TFPS_HA_LOG_LEVEL="WARNING")
    command = [sys.executable, "-m", "tfps_ha", "launch", spec_path, "--workdir", workdir, "--steps", str(steps)]
    started = time.monotonic()
    # A session of its own, so that a timed-out launch can be stopped without
    # signalling this process. The launch stops its tasks on SIGTERM.
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise RuntimeError(f"the {side} launch of {steps} steps timed out after {LAUNCH_TIMEOUT_SECONDS} s; "
                           f"see {workdir}") from None
    launch_seconds = time.monotonic() - started

    summary = _read_summary(side, workdir, process.returncode, output)
    window = rate_between_marks(read_marks(os.path.join(workdir, "checkpoints.jsonl")), FIRST_MARK_STEP)
    if window["end_step"] != steps:
        raise RuntimeError(f"the last checkpoint of the {side} launch is at step {window['end_step']}; expected "
                           f"{steps}; see {workdir}")
    failures = failures_until(os.path.join(workdir, "events.jsonl"), window["end_time"])
    if failures:
        raise RestartedLaunchError(f"a task of the {side} launch failed before step {steps}, so its rate includes "
                                   f"a recovery ({'; '.join(failures)}); see the task logs in {workdir}/logs")
    try:
        progress_rate = rate_between_marks(read_marks(os.path.join(workdir, "progress.jsonl")),
                                           FIRST_MARK_STEP)["steps_per_second"]
    except RuntimeError:
        # This rate is only a cross-check, so a short or unreadable file does not
        # fail the benchmark. A short run can end within a second of step
        # FIRST_MARK_STEP, before the supervisor writes a second line.
        progress_rate = None
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "steps_per_second": window["steps_per_second"],
        "progress_steps_per_second": progress_rate,
        "window": window,
        "heldout_accuracy": summary.get("metrics", {}).get("heldout_accuracy"),
        "launch_seconds": launch_seconds,
        "restarts": {task: count for task, count in summary.get("restarts", {}).items() if count},
    }


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _read_summary(side: str, workdir: str, returncode: int, output: str) -> dict:
    summary_path = os.path.join(workdir, "summary.json")
    if returncode != 0 or not os.path.exists(summary_path):
        tail = output.strip().splitlines()[-3:]
        raise RuntimeError(f"the {side} launch exited with {returncode}: {' | '.join(tail)}; see {workdir}")
    with open(summary_path, encoding="utf-8") as stream:
        return json.load(stream)


def architecture(quick: bool) -> dict:
    """Measures the digits job's examples per second under MWMS and under PSS, interleaved.

    Args:
      quick: One pair of launches of `QUICK_STEPS` steps when True; otherwise
        `FULL_PAIRS` pairs of `FULL_STEPS` steps.

    Returns:
      `{"ratio", "kit", "baseline", "unit", "details"}`. `ratio` is the median
      of the per-pair ratios MWMS over PSS. `kit` and `baseline` are the median
      examples per second of MWMS and of PSS.

    Raises:
      RuntimeError: A launch failed or recorded too few progress marks.
      RestartedLaunchError: In each of the `LAUNCH_ATTEMPTS` launches of one
        slot, a task failed inside the rate window.
    """
    steps = QUICK_STEPS if quick else FULL_STEPS
    pairs = QUICK_PAIRS if quick else FULL_PAIRS
    specs = {side: load_spec(path) for side, path in SPECS.items()}
    batch_size = read_batch_size()
    workers = {side: _workers(spec) for side, spec in specs.items()}
    per_step = {side: examples_per_step(spec.strategy, workers[side], batch_size) for side, spec in specs.items()}

    runs: dict[str, list[dict]] = {"pss": [], "mwms": []}
    discarded: list[str] = []
    ratios = []
    for pair in range(pairs):
        for side in side_order(pair):
            runs[side].append(_run_side_with_retry(side, steps, discarded))
        mwms, pss = runs["mwms"][-1], runs["pss"][-1]
        ratios.append(mwms["steps_per_second"] * per_step["mwms"] / (pss["steps_per_second"] * per_step["pss"]))

    def examples_per_second(side: str) -> list[float]:
        return [run["steps_per_second"] * per_step[side] for run in runs[side]]

    return {
        "ratio": statistics.median(ratios),
        "kit": statistics.median(examples_per_second("mwms")),
        "baseline": statistics.median(examples_per_second("pss")),
        "unit": f"examples/s, MWMS over PSS, digits, {workers['mwms']} workers",
        "details": {
            "steps": steps, "pairs": pairs, "pair_ratios": ratios, "discarded_launches": discarded,
            "order": [side for pair in range(pairs) for side in side_order(pair)],
            "examples_per_step": per_step,
            "examples_per_second": {side: examples_per_second(side) for side in runs},
            "steps_per_second": {side: [run["steps_per_second"] for run in runs[side]] for side in runs},
            "progress_jsonl_steps_per_second": {
                side: [run["progress_steps_per_second"] for run in runs[side]] for side in runs},
            "heldout_accuracy": {side: [run["heldout_accuracy"] for run in runs[side]] for side in runs},
            "launch_seconds": {side: [round(run["launch_seconds"], 1) for run in runs[side]] for side in runs},
            "restarts_after_window": {side: [run["restarts"] for run in runs[side]] for side in runs},
            "window": f"checkpoints.jsonl, from the first save at or past step {FIRST_MARK_STEP} to step {steps}",
            "jobs": {"pss": "cluster_specs/local.yaml (fit, 1 coordinator, 2 workers, 1 PS)",
                     "mwms": "cluster_specs/local_mwms.yaml (fit, 2 workers)"},
        },
    }


def _run_side_with_retry(side: str, steps: int, discarded: list[str]) -> dict:
    """Runs `run_side` up to `LAUNCH_ATTEMPTS` times while a task fails inside the rate window.

    The message of each discarded launch is appended to `discarded`, and the
    last attempt's `RestartedLaunchError` propagates.
    """
    for _ in range(LAUNCH_ATTEMPTS - 1):
        try:
            return run_side(side, SPECS[side], steps)
        except RestartedLaunchError as error:
            discarded.append(str(error))
    return run_side(side, SPECS[side], steps)
