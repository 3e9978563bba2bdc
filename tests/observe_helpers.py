"""Builds job working folders by hand, in the formats the supervisor and coordinator write."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

# A fixed wall-clock origin in the past: files written now are newer than every
# fixture event, as they are in a real run.
T0 = 1_700_000_000.0


@dataclasses.dataclass
class JobFolder:
    """A workdir under construction; times are seconds after `T0`."""

    root: pathlib.Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> str:
        return str(self.root)

    def cluster(self, workers: int = 2, ps: int = 1) -> "JobFolder":
        jobs = {"chief": ["127.0.0.1:20000"],
                "worker": [f"127.0.0.1:{20100 + index}" for index in range(workers)],
                "ps": [f"127.0.0.1:{20200 + index}" for index in range(ps)]}
        return self._write_json("cluster.json", {"cluster": jobs})

    def event(self, at: float, task: str, attempt: int, state: str, cause: str = "",
              exit_code: int | None = None, signal: str | None = None) -> "JobFolder":
        record = {"ts": T0 + at, "task": task, "attempt": attempt, "state": state,
                  "exit_code": exit_code, "signal": signal, "cause": cause}
        return self._append("events.jsonl", record)

    def start_tasks(self, at: float, workers: int = 2, ps: int = 1, up_after: float = 2.0) -> "JobFolder":
        """Records attempt 0 of every PS and worker coming up, then the leading coordinator."""
        names = [f"ps:{index}" for index in range(ps)] + [f"worker:{index}" for index in range(workers)]
        for name in names:
            self.event(at, name, 0, "STARTING", "spawned pid 100")
        for name in names:
            self.event(at + up_after, name, 0, "RUNNING", "port accepts connections")
        self.event(at + up_after, "chief:0", 0, "STARTING", "spawned pid 200")
        return self.event(at + up_after, "chief:0", 0, "RUNNING", "coordinator process started")

    def kill_and_restart(self, at: float, task: str, attempt: int, cause: str = "chaos SIGKILL",
                         restart_after: float = 1.0, up_after: float = 2.0) -> "JobFolder":
        """Records a task dying, its backoff, and its next attempt coming up."""
        signal = "SIGKILL" if cause.startswith("chaos") else None
        exit_code = None if signal else 200
        self.event(at, task, attempt, "FAILED", cause, exit_code=exit_code, signal=signal)
        self.event(at, task, attempt, "BACKOFF", cause, exit_code=exit_code, signal=signal)
        self.event(at + restart_after, task, attempt + 1, "STARTING", "spawned pid 300")
        return self.event(at + restart_after + up_after, task, attempt + 1, "RUNNING", "port accepts connections")

    def heartbeat(self, at: float, step: int, target: int = 600, loss: float | None = 0.5,
                  phase: str = "training", epoch: int = 1) -> "JobFolder":
        return self._write_json("heartbeat.json", {
            "pid": 200, "time": T0 + at, "step": step, "target_step": target, "loss": loss, "phase": phase,
            "leader_epoch": epoch})

    def progress(self, at: float, step: int, rate: float = 10.0, loss: float | None = 0.5,
                 epoch: int = 1) -> "JobFolder":
        return self._append("progress.jsonl", {"ts": T0 + at, "step": step, "loss": loss, "leader_epoch": epoch,
                                               "steps_per_second": rate})

    def checkpoint_state(self, at: float, numbers: list[int], folder: str = "checkpoints") -> "JobFolder":
        """Writes the text `checkpoint` state file of tf.train.CheckpointManager, newest number last."""
        target = self.root / folder
        target.mkdir(parents=True, exist_ok=True)
        lines = [f'model_checkpoint_path: "ckpt-{numbers[-1]}"']
        lines += [f'all_model_checkpoint_paths: "ckpt-{number}"' for number in numbers]
        lines += [f"all_model_checkpoint_timestamps: {T0 + at - 10 * (len(numbers) - 1 - position)}"
                  for position in range(len(numbers))]
        lines.append(f"last_preserved_timestamp: {T0}")
        (target / "checkpoint").write_text("\n".join(lines) + "\n")
        for number in numbers:
            (target / f"ckpt-{number}.index").write_bytes(b"index")
        return self

    def summary(self, completed: bool, final_step: int, exit_code: int, message: str, target: int = 600,
                failovers: int = 0, written_at: float | None = None) -> "JobFolder":
        self._write_json("summary.json", {
            "completed": completed, "final_step": final_step, "target_steps": target, "exit_code": exit_code,
            "message": message, "failovers": failovers, "lost_steps": 0, "restarts": {}, "metrics": {}})
        if written_at is not None:
            self.set_mtime("summary.json", written_at)
        return self

    def lease(self, at: float, holder: str, epoch: int, seconds: float = 4.0) -> "JobFolder":
        return self._write_json("leader.lease", {"holder": holder, "epoch": epoch, "acquired_at": T0 + at,
                                                 "renewed_at": T0 + at, "expires_at": T0 + at + seconds})

    def set_mtime(self, name: str, at: float) -> None:
        os.utime(self.root / name, (T0 + at, T0 + at))

    def write_json(self, name: str, value: Any) -> "JobFolder":
        return self._write_json(name, value)

    def _write_json(self, name: str, value: Any) -> "JobFolder":
        (self.root / name).write_text(json.dumps(value))
        return self

    def _append(self, name: str, record: dict) -> "JobFolder":
        with open(self.root / name, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        return self
