"""The newest checkpoint of a job, read without TensorFlow.

Three sources; the newest save among them wins:
  * `checkpoints.jsonl`, one line per save that the coordinator appends with
    `record_checkpoint`: step, wall time, save duration and path. It is the
    only source of the save duration and of the save history.
  * `last_checkpoint.json`, which the coordinator rewrites after every save:
    step, path, wall time and leader epoch.
  * The `checkpoint` state file that `tf.train.CheckpointManager` keeps in
    `checkpoints/` (custom_loop) or `backup/<task>/` (fit). It names the newest
    checkpoint and its wall-time timestamp.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from typing import Any

from tfps_ha.observe.jsonl import read_jsonl
from tfps_ha.workdir import Workdir, read_json

logger = logging.getLogger(__name__)

CHECKPOINT_LOG_FILE = "checkpoints.jsonl"
# Two records of saves less than this many seconds apart describe the same save.
SAME_SAVE_SECONDS = 1.0
_STATE_LINE = re.compile(r'^\s*(\w+)\s*:\s*(.+?)\s*$')
_NUMBERED = re.compile(r"-(\d+)$")


def checkpoint_log_path(workdir: str) -> str:
    """Returns the path of `checkpoints.jsonl` in a job's working folder."""
    return os.path.join(workdir, CHECKPOINT_LOG_FILE)


def record_checkpoint(workdir: str, step: int, duration_seconds: float, path: str | None = None,
                      ts: float | None = None) -> None:
    """Appends one saved checkpoint to `WORKDIR/checkpoints.jsonl` in a single write.

    Args:
      workdir: The job's working folder.
      step: The training step the checkpoint holds.
      duration_seconds: How long the save took, join included.
      path: The checkpoint prefix that was written, such as `.../ckpt-300`.
      ts: Wall time when the save finished; now when None.
    """
    record = {"ts": time.time() if ts is None else float(ts), "step": int(step),
              "duration_seconds": round(float(duration_seconds), 6), "path": path}
    # One os.write on an O_APPEND descriptor, so a concurrent reader sees the
    # whole line or none of it.
    descriptor = os.open(checkpoint_log_path(workdir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(descriptor)


def read_checkpoint_log(workdir: str, since: float | None = None) -> list[dict[str, Any]]:
    """Returns the valid lines of `checkpoints.jsonl`, oldest first, skipping lines older than `since`."""
    lines = [line for line in read_jsonl(checkpoint_log_path(workdir))
             if isinstance(line.get("step"), int) and isinstance(line.get("ts"), (int, float))]
    return [line for line in lines if since is None or line["ts"] >= since]


def latest_checkpoint(workdir: str, since: float | None = None) -> dict[str, Any] | None:
    """Returns the newest checkpoint of a job, or None when there is none.

    Args:
      workdir: The job's working folder.
      since: Ignore `checkpoints.jsonl` lines older than this wall time (an
        earlier launch's saves). The other sources are not filtered, because a
        launch resumes from the checkpoints of the one before.

    Returns:
      `{"step", "saved_at", "duration_seconds", "path", "source"}`. `source`
      names the file that recorded the newest save (`log`,
      `last_checkpoint` or `state_file`); records of the same save fill each
      other's missing values. `step` is None when no source records it (a fit
      backup is numbered by save count, not step), and `duration_seconds` is
      None without a `checkpoints.jsonl` line.
    """
    records = []
    logged = read_checkpoint_log(workdir, since)
    if logged:
        newest = logged[-1]
        records.append({"step": newest["step"], "saved_at": float(newest["ts"]),
                        "duration_seconds": newest.get("duration_seconds"), "path": newest.get("path"),
                        "source": "log"})
    last = read_json(Workdir(workdir).last_checkpoint)
    if isinstance(last, dict) and isinstance(last.get("time"), (int, float)):
        records.append({"step": last.get("step") if isinstance(last.get("step"), int) else None,
                        "saved_at": float(last["time"]), "duration_seconds": last.get("duration_seconds"),
                        "path": last.get("path"), "source": "last_checkpoint"})
    state = _from_state_files(workdir)
    if state is not None:
        records.append(state)
    if not records:
        return None

    newest_time = max(record["saved_at"] or 0.0 for record in records)
    same_save = [record for record in records if newest_time - (record["saved_at"] or 0.0) < SAME_SAVE_SECONDS]
    merged = dict(same_save[0])
    for record in same_save[1:]:
        for key, value in record.items():
            if merged.get(key) is None:
                merged[key] = value
    return merged


def _from_state_files(workdir: str) -> dict[str, Any] | None:
    candidates = []
    for state_file in _state_files(workdir):
        state = _parse_state_file(state_file)
        if state is not None:
            candidates.append(state)
    if not candidates:
        return _from_index_files(workdir)
    newest = max(candidates, key=lambda state: state["saved_at"] or 0.0)
    newest["step"] = _step_of(workdir, newest)
    return newest


def _state_files(workdir: str) -> list[str]:
    found = []
    for folder in (os.path.join(workdir, "checkpoints"), os.path.join(workdir, "backup")):
        found += glob.glob(os.path.join(folder, "checkpoint"))
        found += glob.glob(os.path.join(folder, "*", "checkpoint"))
    return sorted(found)


def _parse_state_file(state_file: str) -> dict[str, Any] | None:
    """Parses the text-format `CheckpointState` proto that CheckpointManager writes."""
    try:
        with open(state_file, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        logger.warning("Failed to read checkpoint state file %s (%s); ignoring it.", state_file, error)
        return None
    newest = None
    timestamps = []
    for line in text.splitlines():
        match = _STATE_LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "model_checkpoint_path":
            newest = value.strip('"')
        elif key == "all_model_checkpoint_timestamps":
            try:
                timestamps.append(float(value))
            except ValueError:
                pass
    if not newest:
        return None
    folder = os.path.dirname(state_file)
    path = newest if os.path.isabs(newest) else os.path.join(folder, newest)
    saved_at = max(timestamps) if timestamps else _mtime(path + ".index")
    return {"step": None, "saved_at": saved_at, "duration_seconds": None, "path": path, "source": "state_file"}


def _from_index_files(workdir: str) -> dict[str, Any] | None:
    """Falls back to the newest `*.index` file when no state file exists."""
    indexes = glob.glob(os.path.join(workdir, "checkpoints", "*.index"))
    indexes += glob.glob(os.path.join(workdir, "backup", "**", "*.index"), recursive=True)
    timed = [(mtime, path) for path in indexes if (mtime := _mtime(path)) is not None]
    if not timed:
        return None
    saved_at, newest = max(timed)
    state = {"step": None, "saved_at": saved_at, "duration_seconds": None,
             "path": newest[: -len(".index")], "source": "state_file"}
    state["step"] = _step_of(workdir, state)
    return state


def _step_of(workdir: str, state: dict[str, Any]) -> int | None:
    path = state["path"]
    match = _NUMBERED.search(os.path.basename(path))
    if os.path.dirname(path) == os.path.join(workdir, "checkpoints") and match:
        # NOTE: the custom_loop runner numbers checkpoints by step
        # (`manager.save(checkpoint_number=step)`). A fit backup is numbered by
        # save count instead, so its step comes from result.json below.
        return int(match.group(1))
    result_path = Workdir(workdir).result
    result = read_json(result_path) or {}
    result_time = _mtime(result_path)
    step = result.get("checkpoint_step")
    if isinstance(step, int) and result_time is not None and state["saved_at"] is not None \
            and result_time >= state["saved_at"]:
        return step
    return None


def _mtime(path: str) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None
