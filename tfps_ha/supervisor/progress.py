"""Training progress as the supervisor records it: heartbeat, lost steps, recoveries, status line."""

from __future__ import annotations

import json
import time
from typing import Callable

from tfps_ha.workdir import Workdir, read_json

PROGRESS_RECORD_SECONDS = 1.0


class Progress:
    """Reads the leader's heartbeat and keeps the numbers `summary.json` reports.

    Attributes:
      heartbeat: The leader's last heartbeat, or None before its first.
      last_step: The last step the leader reported (-1 before the first).
      step_progress_at: Monotonic time at which `last_step` last changed.
      first_step: The step of the first heartbeat of this launch.
      lost_steps: Steps redone after coordinator restarts, summed.
      recoveries: One dict per chaos kill: task, signal, step and, once
        training advanced again, `recovery_seconds`.
    """

    def __init__(self, workdir: Workdir, target_steps: int, clock: Callable[[], float] = time.monotonic):
        self.workdir = workdir
        self.target_steps = target_steps
        self.clock = clock
        self.heartbeat: dict | None = None
        self.last_step = -1
        self.step_progress_at = clock()
        self.first_step: int | None = None
        self.lost_steps = 0
        self.recoveries: list[dict] = []
        self._step_at_leader_loss: int | None = None
        self._open_recoveries: list[dict] = []
        self._last_record = 0.0
        self._record_window: tuple[float | None, int] = (None, 0)
        self._rate_window = (clock(), -1)
        self.steps_per_second = 0.0

    def read(self, leader_pid: int | None, now: float) -> dict | None:
        """Reads `heartbeat.json`; returns it when the current leader wrote it."""
        beat = read_json(self.workdir.heartbeat)
        if not beat or leader_pid is None or beat.get("pid") != leader_pid:
            return None
        self.heartbeat = beat
        step = int(beat.get("step", 0))

        if self.first_step is None:
            self.first_step = step
        if self._step_at_leader_loss is not None:
            self.lost_steps += max(0, self._step_at_leader_loss - step)
            self._step_at_leader_loss = None

        if step != self.last_step:
            self.last_step = step
            self.step_progress_at = now
        self._close_recoveries(beat, step, now)
        self._record(beat, now)
        return beat

    def leader_lost(self) -> None:
        """Remembers the step at which the leader died, to count the steps its successor redoes."""
        if self._step_at_leader_loss is None:
            self._step_at_leader_loss = self.last_step

    def open_recovery(self, task: str, signal_name: str, now: float, killed_pid: int | None = None) -> None:
        """Starts timing the recovery from a chaos kill: it ends when the step advances again.

        Args:
          task: The task killed, such as `worker:0`.
          signal_name: The signal sent, such as `SIGKILL`.
          now: Monotonic time of the kill.
          killed_pid: The pid of a killed process that writes the heartbeat
            itself. Its own last beats (a SIGTERM save) do not end the recovery;
            only a beat of its successor does.
        """
        recovery = {"task": task, "signal": signal_name, "step": self.last_step,
                    "killed_at": now, "killed_at_wall": time.time(), "killed_pid": killed_pid}
        self.recoveries.append(recovery)
        self._open_recoveries.append(recovery)

    def status_line(self, now: float, tasks_up: int, tasks: int, restarts: int) -> str:
        """Returns the one-line progress report: step, rate, loss, ETA, tasks up and restarts."""
        window_start, window_step = self._rate_window
        self._rate_window = (now, self.last_step)
        if self.last_step < 0:
            return f"Waiting for the first training step; tasks up {tasks_up}/{tasks}."

        if window_step >= 0 and now > window_start:
            self.steps_per_second = max(0, self.last_step - window_step) / (now - window_start)
        rate = self.steps_per_second
        eta = f"{(self.target_steps - self.last_step) / rate:.0f} s" if rate > 0 else "unknown"
        loss = self.heartbeat.get("loss") if self.heartbeat else None
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "n/a"
        percent = 100.0 * self.last_step / self.target_steps
        return (f"Step {self.last_step}/{self.target_steps} ({percent:.0f}%), {rate:.1f} steps/s, "
                f"loss {loss_text}, ETA {eta}; tasks up {tasks_up}/{tasks}; restarts {restarts}.")

    def summary_recoveries(self) -> list[dict]:
        """Returns the recoveries without their internal timing fields."""
        return [{key: value for key, value in item.items() if not key.startswith(("killed_", "min_"))}
                for item in self.recoveries]

    def _close_recoveries(self, beat: dict, step: int, now: float) -> None:
        for recovery in list(self._open_recoveries):
            if recovery["killed_pid"] is not None and beat.get("pid") == recovery["killed_pid"]:
                continue
            recovery["min_step"] = min(recovery.get("min_step", step), step)
            if beat.get("time", 0) > recovery["killed_at_wall"] and step > recovery["min_step"]:
                recovery["recovery_seconds"] = round(now - recovery["killed_at"], 3)
                self._open_recoveries.remove(recovery)

    def _record(self, beat: dict, now: float) -> None:
        if now - self._last_record < PROGRESS_RECORD_SECONDS:
            return
        previous_time, previous_step = self._record_window
        rate = 0.0
        if previous_time is not None and now > previous_time:
            rate = max(0, int(beat.get("step", 0)) - previous_step) / (now - previous_time)
        self._record_window = (now, int(beat.get("step", 0)))
        self._last_record = now
        line = {"ts": time.time(), "step": int(beat.get("step", 0)), "loss": beat.get("loss"),
                "leader_epoch": int(beat.get("leader_epoch", 0)), "steps_per_second": round(rate, 3)}
        with open(self.workdir.progress, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")
