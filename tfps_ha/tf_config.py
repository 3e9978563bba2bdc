"""TF_CONFIG: render it for each task of a spec, and parse it in a task.

TF_CONFIG is the JSON that TensorFlow and the Kubeflow operator use to tell a
process its cluster and its own task::

    {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"]},
     "task": {"type": "worker", "index": 1}}

The evaluator is never part of the training cluster: it gets the training
cluster plus its own task, so the coordinator never schedules onto it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Mapping

import portpicker

from tfps_ha.errors import SpecError
from tfps_ha.spec import JOBS, TRAINING_JOBS, ClusterSpec, TaskId, _Parser, show_key

SOURCE = "TF_CONFIG"
# A task index written as text, in ASCII digits with no leading zero.
# str.isdigit() is not enough, because it accepts digits such as '²' that int() rejects.
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class ResolvedCluster:
    """Every task's address, after counted jobs got their ports.

    Attributes:
      jobs: Job name to the list of `host:port`, index order.
    """

    jobs: Mapping[str, tuple[str, ...]]

    def training_cluster(self) -> dict[str, list[str]]:
        """Returns the cluster the coordinator trains on: chief, worker, ps."""
        return {job: list(self.jobs[job]) for job in TRAINING_JOBS if self.jobs.get(job)}

    def tasks(self) -> list[TaskId]:
        """Returns every task, PS first, then workers, chief and evaluator."""
        order = ("ps", "worker", "chief", "evaluator")
        return [TaskId(job, index) for job in order for index in range(len(self.jobs.get(job, ())))]

    def address(self, task: TaskId) -> str:
        """Returns the `host:port` of `task`."""
        return self.jobs[task.job][task.index]

    def num_workers(self) -> int:
        return len(self.jobs.get("worker", ()))

    def num_ps(self) -> int:
        return len(self.jobs.get("ps", ()))


def resolve_cluster(spec: ClusterSpec) -> ResolvedCluster:
    """Gives every counted task a free port on `spec.host` (portpicker).

    Returns:
      The cluster with an address for every task.
    """
    jobs: dict[str, tuple[str, ...]] = {}
    for job in JOBS:
        value = spec.jobs.get(job, 0)
        if isinstance(value, int):
            host = f"[{spec.host}]" if ":" in spec.host else spec.host
            jobs[job] = tuple(f"{host}:{portpicker.pick_unused_port()}" for _ in range(value))
        else:
            jobs[job] = tuple(value)
    return ResolvedCluster({job: value for job, value in jobs.items() if value})


def render_tf_config(cluster: ResolvedCluster, task: TaskId) -> dict:
    """Returns the TF_CONFIG mapping for `task` in `cluster`.

    Raises:
      SpecError: `task` is not in the cluster.
    """
    if not 0 <= task.index < len(cluster.jobs.get(task.job, ())):
        raise SpecError(
            SOURCE, "task", str(task),
            f"a task of the cluster ({', '.join(str(t) for t in cluster.tasks())})",
        )
    return {
        "cluster": cluster.training_cluster(),
        "task": {"type": task.job, "index": task.index},
    }


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """A parsed TF_CONFIG.

    Attributes:
      cluster: The training cluster (chief, worker, ps).
      task: This process's task.
    """

    cluster: ResolvedCluster
    task: TaskId


def parse_tf_config(text: str | None) -> TaskConfig:
    """Parses and normalises TF_CONFIG.

    Jobs given as a mapping keyed by string indices (`{"0": "h:1", "1": "h:2"}`,
    as some launchers write them) are turned into lists. An `evaluator` job in
    the cluster is dropped from the training cluster.

    Args:
      text: The TF_CONFIG value; None or empty when the variable is unset.

    Returns:
      The cluster and this process's task.

    Raises:
      SpecError: Any part is missing or invalid.
    """
    if not text or not text.strip():
        raise SpecError.missing(SOURCE, "", "a JSON object with 'cluster' and 'task' (the variable is unset or empty)")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SpecError(SOURCE, "", _clip(text), f"valid JSON ({_reason(error)})") from None
    if not isinstance(document, dict):
        raise SpecError(SOURCE, "", document, "a JSON object with 'cluster' and 'task'")

    checker = _Parser(SOURCE)
    cluster = document.get("cluster", SpecError._MISSING)
    if cluster is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "cluster", "a mapping of job names to addresses")
    if not isinstance(cluster, dict):
        raise SpecError(SOURCE, "cluster", cluster, "a mapping of job names to addresses")
    unknown = [show_key(job) for job in cluster if job not in JOBS]
    if unknown:
        raise SpecError(
            SOURCE, "cluster", ", ".join(unknown),
            f"only the jobs {', '.join(JOBS)}; unknown jobs {', '.join(unknown)}",
        )

    jobs: dict[str, tuple[str, ...]] = {}
    for job, value in cluster.items():
        addresses = _job_addresses(job, value)
        for index, address in enumerate(addresses):
            checker.check_address(f"cluster.{job}[{index}]", address)
        if addresses:
            jobs[job] = tuple(addresses)
    checker._reject_duplicate_addresses(jobs)
    if not jobs.get("worker") or not jobs.get("ps"):
        raise SpecError(
            SOURCE, "cluster", sorted(jobs),
            "at least one 'worker' and one 'ps' task for ParameterServerStrategy",
        )
    if len(jobs.get("chief", ())) > 1:
        raise SpecError(SOURCE, "cluster.chief", list(jobs["chief"]), "at most 1 chief")

    task = _parse_task(document.get("task", SpecError._MISSING), jobs)
    return TaskConfig(ResolvedCluster(jobs), task)


def _job_addresses(job: str, value: object) -> list:
    path = f"cluster.{job}"
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        indices: dict[int, object] = {}
        for key, address in value.items():
            if not isinstance(key, str) or not _INDEX_RE.fullmatch(key):
                raise SpecError(SOURCE, f"{path}[{key!r}]", key, "an integer index such as \"0\"")
            indices[int(key)] = address
        expected = list(range(len(indices)))
        if sorted(indices) != expected:
            raise SpecError(
                SOURCE, path, sorted(indices),
                f"indices 0..{len(indices) - 1} with no gaps, one per task",
            )
        return [indices[index] for index in expected]
    raise SpecError(SOURCE, path, value, "a list of 'host:port' or a mapping of index to 'host:port'")


def _parse_task(task: object, jobs: Mapping[str, tuple[str, ...]]) -> TaskId:
    if task is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "task", "a mapping with 'type' and 'index'")
    if not isinstance(task, dict):
        raise SpecError(SOURCE, "task", task, "a mapping with 'type' and 'index'")
    kind = task.get("type", SpecError._MISSING)
    if kind is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "task.type", f"one of the cluster's jobs ({', '.join(sorted(jobs))})")
    if kind == "evaluator" and "evaluator" not in jobs:
        # The kit renders an evaluator's TF_CONFIG with the training cluster only.
        jobs = {**jobs, "evaluator": ("",)}
    if not isinstance(kind, str) or kind not in jobs:
        raise SpecError(SOURCE, "task.type", kind, f"one of the cluster's jobs ({', '.join(sorted(jobs))})")

    index = task.get("index", 0)
    if isinstance(index, str) and _INDEX_RE.fullmatch(index):
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
        raise SpecError(
            SOURCE, "task.index", index,
            f"an index of job '{kind}' in 0..{len(jobs[kind]) - 1}",
        )
    return TaskId(kind, index)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(":")[0]
