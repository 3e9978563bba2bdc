"""The working folder of a job: where every process reads and writes its files.

    WORKDIR/
      checkpoints/             custom_loop runner: tf.train.CheckpointManager
      backup/                  fit runner: the step-level backup of fit
      heartbeat.json           coordinator heartbeat: step, time, loss
      result.json              coordinator result when it stops
      leader.lease             leader lease: holder, epoch, expiry (and .lock)
      last_checkpoint.json     step, path and leader epoch of the newest save
      progress.jsonl           supervisor: step, loss and rate about once a second
      summary.json             launcher summary
      events.jsonl             one JSON object per task state change
      logs/<task>/attempt_<n>.log
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Paths inside one job's working folder."""

    root: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def backup(self) -> str:
        return os.path.join(self.root, "backup")

    @property
    def heartbeat(self) -> str:
        return os.path.join(self.root, "heartbeat.json")

    @property
    def result(self) -> str:
        return os.path.join(self.root, "result.json")

    @property
    def summary(self) -> str:
        return os.path.join(self.root, "summary.json")

    @property
    def events(self) -> str:
        return os.path.join(self.root, "events.jsonl")

    @property
    def lease(self) -> str:
        return os.path.join(self.root, "leader.lease")

    @property
    def last_checkpoint(self) -> str:
        return os.path.join(self.root, "last_checkpoint.json")

    @property
    def progress(self) -> str:
        return os.path.join(self.root, "progress.jsonl")

    def task_log(self, task: str, attempt: int) -> str:
        """Returns the log path of one attempt of a task, such as `logs/worker_1/attempt_0.log`."""
        return os.path.join(self.root, "logs", task.replace(":", "_"), f"attempt_{attempt}.log")


def write_json_atomic(path: str, value: Any) -> None:
    """Writes JSON so that a reader never sees a half-written file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(value, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_json(path: str) -> Any | None:
    """Returns the JSON value in `path`, or None when it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None
