"""Values derived from `progress.jsonl`, the supervisor's training progress log.

The supervisor appends one line about once a second: `{"ts": wall time,
"step": int, "loss": float or null, "leader_epoch": int, "steps_per_second":
float}`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


@dataclasses.dataclass
class ProgressTracker:
    """Reduces progress lines, fed in order, to the values the status reports.

    Attributes:
      last: The newest line, or None before the first.
      step_changed_at: Wall time of the first line that showed the current step.
      failovers: Times the leader epoch rose from an epoch of 1 or more. The
        first lease acquisition of a launch (0 to N) is not a failover.
      leader_epoch: The newest leader epoch.
    """

    last: dict[str, Any] | None = None
    step_changed_at: float | None = None
    failovers: int = 0
    leader_epoch: int | None = None

    def add(self, records: Iterable[dict[str, Any]], since: float | None = None) -> None:
        """Feeds lines in file order, ignoring lines older than `since` (an earlier launch)."""
        for record in records:
            ts = _number(record.get("ts"))
            if ts is None or (since is not None and ts < since):
                continue
            step = record.get("step")
            if self.last is None or step != self.last.get("step"):
                self.step_changed_at = ts
            epoch = record.get("leader_epoch")
            if isinstance(epoch, int):
                if self.leader_epoch is not None and self.leader_epoch >= 1 and epoch > self.leader_epoch:
                    self.failovers += 1
                self.leader_epoch = epoch
            self.last = record


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
