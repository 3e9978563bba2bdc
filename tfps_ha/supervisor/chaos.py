"""Chaos plans: kill tasks at given steps to prove recovery.

An explicit plan is `TASK@step=N[:term|:stop]` items joined by commas, for
example `worker:0@step=40,ps:0@step=120,chief@step=200`; each kills with
SIGKILL, or SIGTERM with `:term`. `chief@step=N:stop` sends SIGSTOP to the
leading coordinator, which makes it a zombie: its lease expires, the standby
takes over, and the supervisor then sends SIGCONT so the zombie's next save
meets the fence. `random:seed=S,kills=K` draws K kills over the workers,
PS and coordinator at steps spread through the run.
"""

from __future__ import annotations

import dataclasses
import random
import re
import signal

from tfps_ha.errors import UsageError
from tfps_ha.spec import TaskId
from tfps_ha.tf_config import ResolvedCluster

_ITEM_RE = re.compile(r"^(?P<task>[a-z]+(?::\d+)?)@step=(?P<step>\d+)(?::(?P<signal>term|kill|stop))?$")


@dataclasses.dataclass(frozen=True)
class PlannedKill:
    """One kill: the task, the step at which it happens and the signal."""

    task: TaskId
    step: int
    signal: int

    def describe(self) -> str:
        return f"{self.task}@step={self.step} ({signal.Signals(self.signal).name})"


def parse_chaos(plan: str, cluster: ResolvedCluster, target_steps: int) -> list[PlannedKill]:
    """Parses a chaos plan against the cluster; returns kills sorted by step.

    Raises:
      UsageError: The plan is malformed or names a task the cluster lacks.
    """
    plan = plan.strip()
    if plan.startswith("random:"):
        return _random_plan(plan, cluster, target_steps)

    kills = []
    for item in filter(None, (part.strip() for part in plan.split(","))):
        match = _ITEM_RE.match(item)
        if not match:
            raise UsageError(
                f"--chaos: received {item!r}; expected TASK@step=N[:term|:stop], for example worker:0@step=40")
        task = TaskId.parse(match["task"])
        if task.index >= len(cluster.jobs.get(task.job, ())) or task.job == "evaluator":
            raise UsageError(f"--chaos: task {task} is not part of the training cluster")
        step = int(match["step"])
        if step >= target_steps:
            raise UsageError(f"--chaos: step {step} of {item!r} is not below the target of {target_steps} steps")
        sig = {"term": signal.SIGTERM, "stop": signal.SIGSTOP}.get(match["signal"], signal.SIGKILL)
        if sig == signal.SIGSTOP and task.job != "chief":
            raise UsageError(f"--chaos: received {item!r}; ':stop' applies only to chief, the coordinator "
                             "whose lease the standby takes over")
        kills.append(PlannedKill(task, step, sig))
    if not kills:
        raise UsageError("--chaos: the plan is empty")
    return sorted(kills, key=lambda kill: kill.step)


def _random_plan(plan: str, cluster: ResolvedCluster, target_steps: int) -> list[PlannedKill]:
    options = {}
    for part in plan[len("random:"):].split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("seed", "kills") or not value.strip().isdigit():
            raise UsageError(f"--chaos: received {plan!r}; expected random:seed=S,kills=K")
        options[key.strip()] = int(value)
    kills_count = options.get("kills", 3)
    if kills_count < 1:
        raise UsageError("--chaos: kills must be at least 1")
    rng = random.Random(options.get("seed", 0))
    tasks = [task for task in cluster.tasks() if task.job in ("worker", "ps", "chief")]
    spacing = target_steps // (kills_count + 1)
    if spacing < 1:
        raise UsageError(f"--chaos: {kills_count} kills do not fit in {target_steps} steps")
    return [PlannedKill(rng.choice(tasks), spacing * (index + 1), signal.SIGKILL) for index in range(kills_count)]
