"""The coordinator heartbeat: a small JSON file with the step and a timestamp."""

from __future__ import annotations

import os
import time

from tfps_ha.workdir import write_json_atomic


class Heartbeat:
    """Writes the coordinator's progress to `heartbeat.json`, at most every `interval` seconds.

    The supervisor reads the file: a heartbeat older than its timeout, or a
    step that stops advancing while workers are up, is a hang.
    """

    def __init__(self, path: str, target_step: int, leader_epoch: int = 0, interval: float = 1.0):
        self.path = path
        self.target_step = target_step
        self.leader_epoch = leader_epoch
        self.interval = interval
        self._last_write = 0.0
        self.step = 0
        self.loss: float | None = None

    def due(self) -> bool:
        """Returns whether the next `beat` without `force` would write."""
        return time.monotonic() - self._last_write >= self.interval

    def beat(self, step: int, loss: float | None = None, phase: str = "training", force: bool = False) -> None:
        """Records progress and writes it when the interval has passed or `force` is set."""
        self.step = int(step)
        if loss is not None:
            self.loss = float(loss)
        if not force and not self.due():
            return
        self._last_write = time.monotonic()
        write_json_atomic(self.path, {
            "pid": os.getpid(),
            "time": time.time(),
            "step": self.step,
            "target_step": self.target_step,
            "loss": self.loss,
            "phase": phase,
            "leader_epoch": self.leader_epoch,
        })
