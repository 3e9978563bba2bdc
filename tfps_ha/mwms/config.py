"""TF_CONFIG of a MultiWorkerMirroredStrategy task: workers, an optional chief, no PS.

    {"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}
"""

from __future__ import annotations

from tfps_ha.errors import SpecError
from tfps_ha.spec import JOBS, TaskId, _Parser, show_key
from tfps_ha.tf_config import (
    SOURCE,
    ResolvedCluster,
    TaskConfig,
    _is_dense,
    _job_addresses,
    _parse_task,
    load_tf_config_document,
)

# The jobs whose tasks train under MultiWorkerMirroredStrategy.
MIRRORED_JOBS = ("chief", "worker")


def parse_mirrored_tf_config(text: str | None) -> TaskConfig:
    """Parses TF_CONFIG for a multi_worker_mirrored task.

    Every job must list its tasks without gaps in their indices, because every
    worker takes part in every all-reduce and needs each peer's address. An
    `evaluator` job is dropped from the training cluster.

    Args:
      text: The TF_CONFIG value; None or empty when the variable is unset.

    Returns:
      The cluster (chief and worker jobs) and this process's task.

    Raises:
      SpecError: Any part is missing or invalid, the cluster has a `ps` job,
        or the task is not a chief or worker task.
    """
    document = load_tf_config_document(text)

    cluster = document.get("cluster", SpecError._MISSING)
    if cluster is SpecError._MISSING:
        raise SpecError.missing(SOURCE, "cluster", "a mapping of job names to addresses")
    if not isinstance(cluster, dict):
        raise SpecError(SOURCE, "cluster", cluster, "a mapping of job names to addresses")
    unknown = [show_key(job) for job in cluster if job not in JOBS]
    if unknown:
        raise SpecError(SOURCE, "cluster", ", ".join(unknown),
                        f"only the jobs {', '.join(MIRRORED_JOBS)}; unknown jobs {', '.join(unknown)}")

    checker = _Parser(SOURCE)
    indexed: dict[str, dict[int, object]] = {}
    for job, value in cluster.items():
        addresses = _job_addresses(job, value)
        for index, address in addresses.items():
            checker.check_address(f"cluster.{job}[{index}]", address)
        if addresses:
            indexed[job] = addresses
    checker._reject_duplicate_addresses(indexed)

    if "ps" in indexed:
        raise SpecError(SOURCE, "cluster.ps", [indexed["ps"][index] for index in sorted(indexed["ps"])],
                        "no ps job, because MultiWorkerMirroredStrategy has no parameter servers")
    if not indexed.get("worker"):
        raise SpecError(SOURCE, "cluster", sorted(indexed),
                        "at least one 'worker' task for MultiWorkerMirroredStrategy")
    for job in MIRRORED_JOBS:
        addresses = indexed.get(job, {})
        if addresses and not _is_dense(addresses):
            raise SpecError(
                SOURCE, f"cluster.{job}", sorted(addresses),
                f"indices 0..{len(addresses) - 1} with no gaps, because every MultiWorkerMirroredStrategy "
                "worker needs each peer's address for the all-reduce")
    if len(indexed.get("chief", ())) > 1:
        raise SpecError(SOURCE, "cluster.chief", sorted(indexed["chief"]), "at most 1 chief")

    task = _parse_task(document.get("task", SpecError._MISSING), indexed)
    if task.job not in MIRRORED_JOBS:
        raise SpecError(SOURCE, "task.type", task.job,
                        "chief or worker, the jobs that train under MultiWorkerMirroredStrategy")
    jobs = {job: tuple(indexed[job][index] for index in sorted(indexed[job]))
            for job in MIRRORED_JOBS if job in indexed}
    return TaskConfig(ResolvedCluster(jobs), task)


def mirrored_chief(cluster: ResolvedCluster) -> TaskId:
    """Returns the task that writes checkpoints: `chief:0` when the cluster has a chief, else `worker:0`.

    This is the rule of `tf.distribute.MultiWorkerMirroredStrategy`
    (`multi_worker_util.is_chief` in TensorFlow 2.21).
    """
    return TaskId("chief", 0) if cluster.jobs.get("chief") else TaskId("worker", 0)
