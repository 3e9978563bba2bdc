"""Builds ParameterServerStrategy and its ClusterCoordinator for a cluster."""

from __future__ import annotations

import logging

from tfps_ha.errors import UsageError
from tfps_ha.tf_config import ResolvedCluster

logger = logging.getLogger(__name__)

# Variables larger than this are split into shards over the PS tasks, so a big
# embedding table spreads its memory and its update traffic.
MIN_SHARD_BYTES = 256 << 10


def build_strategy(tf, cluster: ResolvedCluster, chief_address: str | None = None):
    """Returns `(strategy, coordinator)` for the training cluster.

    Args:
      tf: The TensorFlow module.
      cluster: The resolved cluster; its chief address is where this
        coordinator listens.
      chief_address: Where this coordinator listens instead of the spec's
        chief address, so that a new leader can start while a stopped one
        still has the chief port bound.

    Raises:
      UsageError: The coordinator could not listen on the chief address.
    """
    jobs = cluster.training_cluster()
    if chief_address is not None:
        jobs["chief"] = [chief_address]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(jobs), task_type="chief", task_id=0, rpc_layer="grpc")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=cluster.num_ps())
    try:
        strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    except tf.errors.UnknownError as error:
        if "Could not start gRPC server" in str(error):
            raise UsageError(
                f"the coordinator could not listen on the chief address "
                f"{jobs.get('chief', ['(a local port)'])[0]}: another process, maybe an earlier "
                "coordinator, holds the port"
            ) from None
        raise
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    return strategy, coordinator
