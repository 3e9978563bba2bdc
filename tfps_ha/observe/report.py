"""`tfps-ha report`: one PNG that shows a run's task attempts, failures and training progress.

The top panel has one row per task, with a bar per attempt: amber while it
starts, green while it runs, blue while a coordinator waits as the standby.
Grey gaps show a task waiting to restart. A red cross marks a chaos kill and an
orange triangle any other failure. The bottom panel plots the step and the loss over time
from `progress.jsonl`, with the checkpoint saves from `checkpoints.jsonl`. A
dashed line runs through both panels at every chaos kill, and a shaded band
lasts until the step passed its value at the kill again.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tfps_ha.observe.checkpoint_log import checkpoint_log_path
from tfps_ha.observe.events import Attempt, Failure, Launch, TaskHistory, latest_launch
from tfps_ha.observe.jsonl import read_jsonl
from tfps_ha.observe.status import status_from_workdir
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)

STARTING_COLOR = "#f2b134"
RUNNING_COLOR = "#3a9d5d"
BACKOFF_COLOR = "#c8c8c8"
KILL_COLOR = "#d62728"
FAILURE_COLOR = "#ff7f0e"
STEP_COLOR = "#1f5fa8"
LOSS_COLOR = "#9467bd"
STANDBY_COLOR = "#8fb9e3"
SEGMENT_COLORS = {"STARTING": STARTING_COLOR, "STANDBY": STANDBY_COLOR, "RUNNING": RUNNING_COLOR}


@dataclasses.dataclass
class Recovery:
    """When training advanced again after a chaos kill, from the progress lines.

    Like the supervisor's recovery time, it ends at the first progress line
    whose step exceeds the lowest step seen since the kill, so a restore to an
    older checkpoint counts as not recovered yet.

    Attributes:
      failure: The chaos kill.
      resumed_from: The lowest step seen after the kill.
      recovered_at: Wall time of the first line past `resumed_from`, or None
        when training never advanced again.
    """

    failure: Failure
    resumed_from: int
    recovered_at: float | None


@dataclasses.dataclass
class ReportData:
    """Everything the report draws, read from one workdir.

    Attributes:
      title: The figure title.
      launch: The latest launch's events, or None without events.
      progress: Progress lines of the latest launch, oldest first.
      checkpoints: `checkpoints.jsonl` lines of the latest launch.
      recoveries: One entry per chaos kill that has a progress line after it.
      start: Wall time of the time axis' zero.
      end: Wall time of the time axis' end (now, for a running job).
      target_step: The target step, when known.
    """

    title: str
    launch: Launch | None
    progress: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    recoveries: list[Recovery]
    start: float
    end: float
    target_step: int | None


def write_report(workdir: str, out_path: str) -> ReportData:
    """Draws the report of the job in `workdir` and writes it to `out_path` as PNG.

    Returns:
      The data that was drawn, for callers that summarise it in text.
    """
    data = load_report_data(workdir)
    figure = draw_report(data)
    FigureCanvasAgg(figure)
    figure.savefig(out_path, format="png", dpi=110)
    logger.debug("Wrote the run report %s.", out_path)
    return data


def load_report_data(workdir: str) -> ReportData:
    """Reads the events, progress and checkpoint lines of the latest launch in `workdir`."""
    status = status_from_workdir(workdir)
    launch = latest_launch(read_jsonl(Workdir(workdir).events))
    since = launch.started_at if launch else None
    progress = [line for line in read_jsonl(Workdir(workdir).progress)
                if isinstance(line.get("ts"), (int, float)) and isinstance(line.get("step"), int)
                and (since is None or line["ts"] >= since)]
    checkpoints = [line for line in read_jsonl(checkpoint_log_path(workdir))
                   if isinstance(line.get("ts"), (int, float)) and isinstance(line.get("step"), int)
                   and (since is None or line["ts"] >= since)]

    times = [line["ts"] for line in progress]
    if launch:
        times += [launch.started_at, launch.ended_at]
    start = min(times) if times else status["time"]
    end = max(times) if times else status["time"]
    if status["job_state"] in ("running", "starting"):
        end = max(end, status["time"])

    step_text = f"step {status['step']}/{status['target_step']}" if status["step"] is not None else "no step"
    title = (f"{os.path.basename(os.path.abspath(workdir))}: {status['job_state']} at {step_text}; "
             f"{status['restarts_total']} restarts, {status['chaos_kills']} chaos kills")
    recoveries = _recoveries(launch, progress)
    return ReportData(title=title, launch=launch, progress=progress, checkpoints=checkpoints,
                      recoveries=recoveries, start=start, end=max(end, start + 1.0),
                      target_step=status["target_step"])


def draw_report(data: ReportData) -> Figure:
    """Returns the report figure; it is not attached to pyplot, so no display is needed."""
    tasks = list(data.launch.tasks) if data.launch else []
    timeline_height = 0.5 + 0.45 * max(len(tasks), 1)
    figure = Figure(figsize=(12, timeline_height + 3.8), layout="constrained")
    timeline, training = figure.subplots(2, 1, sharex=True, height_ratios=[timeline_height, 3.0])
    figure.suptitle(data.title, fontsize=12)

    _draw_timeline(timeline, data, tasks)
    _draw_training(training, data)
    recovered = {id(recovery.failure): recovery for recovery in data.recoveries}
    kills = [failure for failure in (data.launch.failures if data.launch else []) if failure.chaos]
    level, previous = 0, None
    for failure in kills:
        # Labels of kills close in time go on successive text rows so they do not overlap.
        close = previous is not None and failure.ts - previous < 0.12 * (data.end - data.start)
        level = (level + 1) % 3 if close else 0
        previous = failure.ts
        _draw_kill(timeline, training, data, failure, recovered.get(id(failure)), level)

    started = datetime.datetime.fromtimestamp(data.start).strftime("%Y-%m-%d %H:%M:%S")
    training.set_xlabel(f"seconds since the launch started ({started})")
    training.set_xlim(0, data.end - data.start)
    handles = _legend_handles(with_checkpoints=bool(data.checkpoints))
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return figure


def _draw_timeline(axes, data: ReportData, tasks: list[str]) -> None:
    axes.set_title("Task attempts", loc="left", fontsize=10)
    if not tasks:
        axes.text(0.5, 0.5, "no events.jsonl: no task history", transform=axes.transAxes,
                  ha="center", va="center", color="grey")
        axes.set_yticks([])
        return

    labels = []
    for name in _ordered(tasks):
        labels.append((name, False))
        if any(attempt.standby for attempt in data.launch.tasks[name].attempts):
            labels.append((name, True))
    rows = {label: len(labels) - 1 - position for position, label in enumerate(labels)}

    for name in tasks:
        history = data.launch.tasks[name]
        main_row = rows[(name, False)]
        standby_row = rows.get((name, True), main_row)
        _draw_backoffs(axes, data, history, main_row)
        for attempt in history.attempts:
            _draw_attempt(axes, data, attempt, main_row, standby_row)
        if history.state == "GAVE_UP" and history.since is not None:
            axes.plot(history.since - data.start, main_row, marker="X", color="black", markersize=11, zorder=5)

    axes.set_yticks(list(rows.values()), [name + (" standby" if standby else "") for name, standby in rows])
    axes.set_ylim(-0.7, len(labels) - 0.3)
    axes.grid(axis="x", color="#e5e5e5")


def _draw_attempt(axes, data: ReportData, attempt: Attempt, main_row: int, standby_row: int) -> None:
    """Draws one attempt's bars, its number and the marker where it ended."""
    changes = attempt.changes + [(attempt.ended_at if attempt.ended_at is not None else data.end, "")]
    labelled_rows = set()
    for (start, state), (end, _) in zip(changes, changes[1:]):
        color = SEGMENT_COLORS.get(state)
        if color is None or end <= start:
            continue
        waiting = attempt.standby and state in ("STARTING", "STANDBY")
        row = standby_row if waiting else main_row
        axes.broken_barh([(start - data.start, end - start)], (row - 0.3, 0.6), facecolor=color,
                         edgecolor="white", linewidth=0.8)
        if row not in labelled_rows and attempt.attempt > 0:
            # Offset past the previous attempt's end marker, which sits at the same x.
            axes.annotate(str(attempt.attempt), xy=(start - data.start, row), xytext=(7, 0),
                          textcoords="offset points", fontsize=7, va="center", ha="left", zorder=6)
            labelled_rows.add(row)

    if attempt.ended_at is None:
        return
    x = attempt.ended_at - data.start
    row = standby_row if attempt.standby_only else main_row
    if attempt.end_state == "FAILED" and attempt.cause.startswith("chaos"):
        axes.plot(x, row, marker="X", color=KILL_COLOR, markersize=11, markeredgecolor="white", zorder=5)
    elif attempt.end_state == "FAILED" or (attempt.end_state == "SUPERSEDED" and attempt.running_at):
        axes.plot(x, row, marker="v", color=FAILURE_COLOR, markersize=10, markeredgecolor="white", zorder=5)
        axes.text(x, row - 0.34, " " + attempt.cause.split(";", 1)[0][:40], fontsize=7, va="top",
                  color=FAILURE_COLOR)
    elif attempt.end_state == "SUCCEEDED":
        axes.plot(x, row, marker="*", color="black", markersize=12, zorder=5)


def _draw_backoffs(axes, data: ReportData, history: TaskHistory, row: int) -> None:
    """Draws a thin grey bar from each BACKOFF to the start of the next attempt."""
    for ts, number in history.backoffs:
        following = [attempt.started_at for attempt in history.attempts
                     if attempt.attempt > number and attempt.started_at >= ts]
        end = min(following) if following else data.end
        axes.broken_barh([(ts - data.start, end - ts)], (row - 0.12, 0.24), color=BACKOFF_COLOR)


def _draw_training(axes, data: ReportData) -> None:
    axes.set_title("Training progress", loc="left", fontsize=10)
    axes.set_ylabel("step", color=STEP_COLOR)
    axes.grid(color="#e5e5e5")
    if data.target_step:
        axes.axhline(data.target_step, color=STEP_COLOR, linestyle=":", linewidth=1)
    if not data.progress:
        axes.set_ylim(0, (data.target_step or 1) * 1.1)
        axes.text(0.5, 0.5, "no progress.jsonl: step and loss over time were not recorded",
                  transform=axes.transAxes, ha="center", va="center", color="grey",
                  bbox={"facecolor": "white", "edgecolor": "none"})
        return

    times = [line["ts"] - data.start for line in data.progress]
    axes.step(times, [line["step"] for line in data.progress], where="post", color=STEP_COLOR, linewidth=1.8)
    if data.checkpoints:
        axes.plot([line["ts"] - data.start for line in data.checkpoints], [line["step"] for line in data.checkpoints],
                  linestyle="none", marker="D", markersize=4, color=RUNNING_COLOR, zorder=4)
    axes.set_ylim(bottom=0)

    losses = [(time, line["loss"]) for time, line in zip(times, data.progress)
              if isinstance(line.get("loss"), (int, float))]
    if losses:
        loss_axes = axes.twinx()
        loss_axes.plot([time for time, _ in losses], [loss for _, loss in losses], color=LOSS_COLOR,
                       linewidth=1.0, alpha=0.8)
        loss_axes.set_ylabel("loss", color=LOSS_COLOR)
        loss_axes.set_ylim(bottom=0)


def _draw_kill(timeline, training, data: ReportData, failure: Failure, recovery: Recovery | None,
               level: int) -> None:
    """Draws a chaos kill across both panels, with its recovery band and a label at text row `level`."""
    killed = failure.ts - data.start
    for axes in (timeline, training):
        axes.axvline(killed, color=KILL_COLOR, linestyle="--", linewidth=1, alpha=0.6)
    label = f"{failure.task} killed"
    if recovery is not None and recovery.recovered_at is not None:
        training.axvspan(killed, recovery.recovered_at - data.start, color=KILL_COLOR, alpha=0.12, linewidth=0)
        label += f"\ntraining again after\n{recovery.recovered_at - failure.ts:.1f} s, from step {recovery.resumed_from}"
    elif recovery is not None:
        label += f"\nno step after step {recovery.resumed_from}"
    training.annotate(label, xy=(killed, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3 - 30 * level),
                      textcoords="offset points", va="top", fontsize=7, color=KILL_COLOR)


def _recoveries(launch: Launch | None, progress: list[dict[str, Any]]) -> list[Recovery]:
    if launch is None:
        return []
    recoveries = []
    for failure in launch.failures:
        after = [line for line in progress if line["ts"] > failure.ts]
        if not failure.chaos or not after:
            continue
        lowest = after[0]["step"]
        recovered_at = None
        for line in after[1:]:
            if line["step"] > lowest:
                recovered_at = line["ts"]
                break
            lowest = min(lowest, line["step"])
        recoveries.append(Recovery(failure=failure, resumed_from=lowest, recovered_at=recovered_at))
    return recoveries


def _ordered(tasks: list[str]) -> list[str]:
    order = {"chief": 0, "ps": 1, "worker": 2}

    def key(name: str) -> tuple[int, int, str]:
        job, _, index = name.partition(":")
        return order.get(job, 3), int(index) if index.isdigit() else 0, name

    return sorted(tasks, key=key)


def _legend_handles(with_checkpoints: bool) -> list:
    handles = [
        Patch(color=STARTING_COLOR, label="starting"),
        Patch(color=RUNNING_COLOR, label="running"),
        Patch(color=STANDBY_COLOR, label="standby"),
        Patch(color=BACKOFF_COLOR, label="waiting to restart"),
        Line2D([], [], linestyle="none", marker="X", color=KILL_COLOR, markersize=9, label="chaos kill"),
        Line2D([], [], linestyle="none", marker="v", color=FAILURE_COLOR, markersize=8, label="other failure"),
        Line2D([], [], linestyle="none", marker="*", color="black", markersize=10, label="target reached"),
        Line2D([], [], color=STEP_COLOR, label="step"),
        Line2D([], [], color=LOSS_COLOR, label="loss"),
    ]
    if with_checkpoints:
        handles.append(Line2D([], [], linestyle="none", marker="D", color=RUNNING_COLOR, markersize=5,
                              label="checkpoint saved"))
    return handles
