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

from tfps_ha.errors import SpecError, UsageError, short_repr
from tfps_ha.spec import JOBS, TRAINING_JOBS, ClusterSpec, TaskId, _Parser, show_key, split_address

SOURCE = "TF_CONFIG"
# A task index written as text, in ASCII digits with no leading zero.
# str.isdigit() is not enough, because it accepts digits such as '²' that int() rejects.
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,8}")
# The highest task index a TF_CONFIG job may use; a spec job has at most 1024 tasks.
MAX_TASK_INDEX = 1023
# Tries of portpicker for one counted task beyond the ports the spec lists.
_PORT_TRIES = 10


@dataclasses.dataclass(frozen=True)
class ResolvedCluster:
    """Every task's address, after counted jobs got their ports.

    Attributes:
      jobs: Job name to the list of `host:port`, index order.
      sparse_jobs: Job name to a mapping of task index to `host:port`, for a
        job that a TF_CONFIG lists only in part (such as the Kubeflow
        operator's sparse TF_CONFIG, whose worker job lists only the worker
        that reads it). A job
        is in `jobs` or in `sparse_jobs`, never in both. Only PS and worker
        tasks run with a sparse job; the coordinator needs every address.
    """

    jobs: Mapping[str, tuple[str, ...]]
    sparse_jobs: Mapping[str, Mapping[int, str]] = dataclasses.field(default_factory=dict)

    def training_cluster(self) -> dict[str, list[str] | dict[int, str]]:
        """Returns the cluster the coordinator trains on: chief, worker, ps.

        A sparse job is a mapping of task index to address, which
        `tf.train.ClusterSpec` accepts as it is.
        """
        cluster: dict[str, list[str] | dict[int, str]] = {}
        for job in TRAINING_JOBS:
            if self.jobs.get(job):
                cluster[job] = list(self.jobs[job])
            elif self.sparse_jobs.get(job):
                cluster[job] = dict(sorted(self.sparse_jobs[job].items()))
        return cluster

    def tasks(self) -> list[TaskId]:
        """Returns every task, PS first, then workers, chief and evaluator."""
        order = ("ps", "worker", "chief", "evaluator")
        return [TaskId(job, index) for job in order for index in self._indices(job)]

    def address(self, task: TaskId) -> str:
        """Returns the `host:port` of `task`."""
        if task.job in self.sparse_jobs:
            return self.sparse_jobs[task.job][task.index]
        return self.jobs[task.job][task.index]

    def num_workers(self) -> int:
        """Returns the number of workers; for a sparse worker job, its highest index plus 1."""
        return self._size("worker")

    def num_ps(self) -> int:
        """Returns the number of PS tasks; for a sparse PS job, its highest index plus 1."""
        return self._size("ps")

    def _indices(self, job: str) -> list[int]:
        if job in self.sparse_jobs:
            return sorted(self.sparse_jobs[job])
        return list(range(len(self.jobs.get(job, ()))))

    def _size(self, job: str) -> int:
        if job in self.sparse_jobs:
            return max(self.sparse_jobs[job], default=-1) + 1
        return len(self.jobs.get(job, ()))


def resolve_cluster(spec: ClusterSpec) -> ResolvedCluster:
    """Gives every counted task a free port on `spec.host` (portpicker).

    A picked port is never one that a listed address of the spec uses, on any
    host: TensorFlow's server listens on 0.0.0.0:PORT, so a counted task and a
    listed task of this machine cannot share a port even with different hosts.

    Returns:
      The cluster with an address for every task.

    Raises:
      UsageError: No free port was found for a counted task.
    """
    used_ports = {int(split_address(address)[1])
                  for value in spec.jobs.values() if not isinstance(value, int) for address in value}
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    jobs: dict[str, tuple[str, ...]] = {}
    for job in JOBS:
        value = spec.jobs.get(job, 0)
        if isinstance(value, int):
            ports = [_pick_port(used_ports, f"{spec.source}: {job}:{index}", spec.host) for index in range(value)]
            jobs[job] = tuple(f"{host}:{port}" for port in ports)
        else:
            jobs[job] = tuple(value)
    return ResolvedCluster({job: value for job, value in jobs.items() if value})


def _pick_port(used_ports: set[int], task: str, host: str) -> int:
    """Returns a free port from portpicker that is not in `used_ports`, and adds it there."""
    # portpicker 1.6 returns a port once per process unless it is reserved or
    # returned again, so each try gets a new port and the loop ends once the
    # used ones are skipped.
    for _ in range(len(used_ports) + _PORT_TRIES):
        try:
            port = portpicker.pick_unused_port()
        except portpicker.NoFreePortFoundError:
            break
        if port not in used_ports:
            used_ports.add(port)
            return port
    raise UsageError(
        f"{task}: no free port found on {host}; free some ports, or list the task's "
        "address with a port in the spec")


def render_tf_config(cluster: ResolvedCluster, task: TaskId, source: str = SOURCE, path: str = "task") -> dict:
    """Returns the TF_CONFIG mapping for `task` in `cluster`.

    Args:
      cluster: Every task's address.
      task: The task the TF_CONFIG is for.
      source: Where the cluster came from, named in the error (the spec file
        for `tfps-ha tf-config`).
      path: Where `task` came from, named in the error (such as `--task`).

    Raises:
      SpecError: `task` is not in the cluster.
    """
    tasks = cluster.tasks()
    if task not in tasks:
        raise SpecError(source, path, str(task), f"a task of the cluster ({', '.join(str(t) for t in tasks)})")
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


def load_tf_config_document(text: str | None) -> dict:
    """Decodes TF_CONFIG text into its top-level JSON object.

    Raises:
      SpecError: The text is unset, empty, not JSON or not a JSON object.
    """
    if not text or not text.strip():
        raise SpecError.missing(SOURCE, "", "a JSON object with 'cluster' and 'task' (the variable is unset or empty)")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SpecError(SOURCE, "", _clip(text), f"valid JSON ({_reason(error)})") from None
    if not isinstance(document, dict):
        raise SpecError(SOURCE, "", document, "a JSON object with 'cluster' and 'task'")
    return document


def parse_tf_config(text: str | None) -> TaskConfig:
    """Parses and normalises TF_CONFIG.

    Jobs given as a mapping keyed by string indices (`{"0": "h:1", "1": "h:2"}`,
    as some launchers write them) are turned into lists. A mapping with gaps
    in its indices, such as `{"1": "h:2"}` in the Kubeflow operator's sparse
    TF_CONFIG, stays a sparse job (`ResolvedCluster.sparse_jobs`); only a PS
    or worker task accepts one. An `evaluator` job in the cluster is dropped
    from the training cluster.

    Args:
      text: The TF_CONFIG value; None or empty when the variable is unset.

    Returns:
      The cluster and this process's task.

    Raises:
      SpecError: Any part is missing or invalid.
    """
    document = load_tf_config_document(text)

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

    indexed: dict[str, dict[int, str]] = {}
    for job, value in cluster.items():
        addresses = _job_addresses(job, value)
        for index, address in addresses.items():
            checker.check_address(f"cluster.{job}[{index}]", address)
        if addresses:
            indexed[job] = addresses
    checker._reject_duplicate_addresses(indexed)
    if not indexed.get("worker") or not indexed.get("ps"):
        raise SpecError(
            SOURCE, "cluster", sorted(indexed),
            "at least one 'worker' and one 'ps' task for ParameterServerStrategy",
        )
    if len(indexed.get("chief", ())) > 1:
        raise SpecError(SOURCE, "cluster.chief", _job_value(indexed["chief"]), "at most 1 chief")
    if "chief" in indexed and 0 not in indexed["chief"]:
        raise SpecError(SOURCE, "cluster.chief", _job_value(indexed["chief"]), "the chief at index 0")

    task = _parse_task(document.get("task", SpecError._MISSING), indexed)
    if task.job == "chief":
        # The coordinator schedules onto every worker and places variables on
        # every PS, so it needs each address.
        for job, addresses in indexed.items():
            if not _is_dense(addresses):
                raise SpecError(
                    SOURCE, f"cluster.{job}", sorted(addresses),
                    f"indices 0..{len(addresses) - 1} with no gaps, one per task, because the chief "
                    "(the coordinator) needs every task's address; only a PS or worker task can "
                    "run with a sparse job",
                )
    jobs = {job: tuple(addresses[index] for index in sorted(addresses))
            for job, addresses in indexed.items() if _is_dense(addresses)}
    sparse = {job: addresses for job, addresses in indexed.items() if not _is_dense(addresses)}
    return TaskConfig(ResolvedCluster(jobs, sparse), task)


def _job_addresses(job: str, value: object) -> dict[int, object]:
    """Returns the addresses of one TF_CONFIG job by task index.

    A job is a list, or a mapping keyed by string indices as TensorFlow's
    `ClusterSpec` accepts it, where indices may have gaps (a sparse job).
    """
    path = f"cluster.{job}"
    if isinstance(value, list):
        return dict(enumerate(value))
    if isinstance(value, dict):
        indices: dict[int, object] = {}
        for key, address in value.items():
            where = f"{path}[{short_repr(key, 40)}]"
            if not isinstance(key, str) or not _INDEX_RE.fullmatch(key):
                raise SpecError(SOURCE, where, key, "an integer index such as \"0\"")
            if int(key) > MAX_TASK_INDEX:
                raise SpecError(SOURCE, where, key, f"an index in 0..{MAX_TASK_INDEX}")
            indices[int(key)] = address
        return indices
    raise SpecError(SOURCE, path, value, "a list of 'host:port' or a mapping of index to 'host:port'")


def _is_dense(addresses: Mapping[int, object]) -> bool:
    return sorted(addresses) == list(range(len(addresses)))


def _job_value(addresses: Mapping[int, str]) -> list | dict:
    """Returns a job as the user wrote it: a list when dense, else a mapping."""
    if _is_dense(addresses):
        return [addresses[index] for index in sorted(addresses)]
    return {str(index): address for index, address in sorted(addresses.items())}


def _parse_task(task: object, jobs: Mapping[str, Mapping[int, str]]) -> TaskId:
    if task is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "task", "a mapping with 'type' and 'index'")
    if not isinstance(task, dict):
        raise SpecError(SOURCE, "task", task, "a mapping with 'type' and 'index'")
    kind = task.get("type", SpecError._MISSING)
    if kind is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "task.type", f"one of the cluster's jobs ({', '.join(sorted(jobs))})")
    if kind == "evaluator" and "evaluator" not in jobs:
        # The kit renders an evaluator's TF_CONFIG with the training cluster only.
        jobs = {**jobs, "evaluator": {0: ""}}
    if not isinstance(kind, str) or kind not in jobs:
        raise SpecError(SOURCE, "task.type", kind, f"one of the cluster's jobs ({', '.join(sorted(jobs))})")

    index = task.get("index", 0)
    if isinstance(index, str) and _INDEX_RE.fullmatch(index):
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or index not in jobs[kind]:
        raise SpecError(SOURCE, "task.index", index, f"an index of job '{kind}' {_describe_indices(jobs[kind])}")
    return TaskId(kind, index)


def _describe_indices(addresses: Mapping[int, object]) -> str:
    if _is_dense(addresses):
        return f"in 0..{len(addresses) - 1}"
    return f"that the cluster lists ({short_repr(sorted(addresses), 60)})"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(":")[0]
