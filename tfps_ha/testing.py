"""In-process PSS clusters for users' own tests.

    from tfps_ha.testing import in_process_cluster

    with in_process_cluster(num_workers=2, num_ps=1) as cluster:
        strategy, coordinator = cluster.strategy_and_coordinator()
        ...

The servers are real `tf.distribute.Server`s on loopback ports from
portpicker, running in this process. TensorFlow cannot stop an in-process
server, so they live until the process exits; each cluster uses new ports.

In-process servers share the process's inter-op thread pool, and a PSS
cluster deadlocks in `join()` unless that pool has at least `num_workers + 1`
threads. `in_process_cluster` sets it before the first server starts and
raises when TensorFlow's runtime was already initialised with fewer threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import portpicker

from tfps_ha.spec import TaskId
from tfps_ha.tf_config import ResolvedCluster


@dataclasses.dataclass
class InProcessCluster:
    """A running in-process cluster.

    Attributes:
      cluster: Every task's address, including a chief address for the coordinator.
      servers: The started servers, by task.
    """

    cluster: ResolvedCluster
    servers: dict

    def strategy_and_coordinator(self):
        """Returns a new `(ParameterServerStrategy, ClusterCoordinator)` on this cluster."""
        from tfps_ha.coordinator.strategy import build_strategy
        from tfps_ha.tf_env import import_tensorflow

        tf, _ = import_tensorflow()
        return build_strategy(tf, self.cluster)


@contextlib.contextmanager
def in_process_cluster(num_workers: int = 2, num_ps: int = 1) -> Iterator[InProcessCluster]:
    """Starts `num_workers` worker and `num_ps` PS servers in this process.

    Raises:
      RuntimeError: The process's inter-op thread pool is already set to fewer
        than `num_workers + 1` threads, so the cluster would deadlock.
    """
    from tfps_ha.server import server_config
    from tfps_ha.tf_env import import_tensorflow

    tf, _ = import_tensorflow()
    needed = num_workers + 1
    current = tf.config.threading.get_inter_op_parallelism_threads()
    if current == 0 or current < needed:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(max(needed, current))
        except RuntimeError:
            raise RuntimeError(
                f"in-process cluster needs at least {needed} inter-op threads for "
                f"{num_workers} workers, but TensorFlow was already initialised with "
                f"{current or 'the default number of'}; call in_process_cluster (or "
                "tf.config.threading.set_inter_op_parallelism_threads) before any "
                "TensorFlow op runs"
            ) from None

    jobs = {
        "chief": (f"127.0.0.1:{portpicker.pick_unused_port()}",),
        "worker": tuple(f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(num_workers)),
        "ps": tuple(f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(num_ps)),
    }
    cluster = ResolvedCluster(jobs)
    cluster_spec = tf.train.ClusterSpec(cluster.training_cluster())
    servers = {}
    for task in cluster.tasks():
        if task.job == "chief":
            continue
        servers[str(task)] = tf.distribute.Server(
            cluster_spec, job_name=task.job, task_index=task.index, protocol="grpc",
            config=server_config(tf, num_workers), start=True)
    yield InProcessCluster(cluster, servers)


def cluster_fixture(num_workers: int = 2, num_ps: int = 1):
    """Returns a session-scoped pytest fixture that yields an `InProcessCluster`.

    Use it in a conftest.py: `ps_cluster = cluster_fixture(num_workers=2)`.
    """
    import pytest

    @pytest.fixture(scope="session")
    def _fixture():
        with in_process_cluster(num_workers=num_workers, num_ps=num_ps) as cluster:
            yield cluster

    return _fixture


__all__ = ["InProcessCluster", "TaskId", "cluster_fixture", "in_process_cluster"]
