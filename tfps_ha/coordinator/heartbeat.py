"""The coordinator heartbeat: a small JSON file with the step and a timestamp."""

from __future__ import annotations

import os
import time
from typing import Callable

from tfps_ha.workdir import write_json_atomic


class Heartbeat:
    """Writes the coordinator's progress to `heartbeat.json`, at most every `interval` seconds.

    The supervisor reads the file: a heartbeat older than its timeout, or a
    step that stops advancing while workers are up, is a hang. Only the leader
    writes it: `is_leader` turns writes off once leadership is lost.
    """

    def __init__(self, path: str, target_step: int, leader_epoch: int = 0, interval: float = 1.0,
                 is_leader: Callable[[], bool] = lambda: True,
                 on_write: Callable[[int, float | None, float], None] | None = None):
        """Creates the writer.

        Args:
          path: The heartbeat file.
          target_step: The run's target, written for readers.
          leader_epoch: The lease epoch this coordinator leads.
          interval: Minimum seconds between writes without `force`.
          is_leader: Returns False once leadership is lost; writes stop then.
          on_write: Called with the step, the loss and the steps per second
            since the previous write, after each write (TensorBoard scalars).
        """
        self.on_write = on_write
        self._previous = (time.monotonic(), 0)
        self.path = path
        self.target_step = target_step
        self.leader_epoch = leader_epoch
        self.interval = interval
        self.is_leader = is_leader
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
        if not self.is_leader():
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

        previous_time, previous_step = self._previous
        now = time.monotonic()
        rate = max(0, self.step - previous_step) / (now - previous_time) if now > previous_time else 0.0
        self._previous = (now, self.step)
        if self.on_write is not None:
            self.on_write(self.step, self.loss, rate)
