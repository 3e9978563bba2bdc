"""Builds MultiWorkerMirroredStrategy for one task, with a timeout on every collective op."""

from __future__ import annotations

import logging

from tfps_ha.errors import UsageError
from tfps_ha.spec import TaskId
from tfps_ha.tf_config import ResolvedCluster

logger = logging.getLogger(__name__)


def build_mirrored_strategy(tf, cluster: ResolvedCluster, task: TaskId, collective_timeout_seconds: float):
    """Returns the MultiWorkerMirroredStrategy of `task`, which starts its gRPC server.

    The constructor returns once every task of the cluster has registered with
    TensorFlow's coordination service, which runs on the MWMS chief.

    Args:
      tf: The TensorFlow module.
      cluster: The chief and worker addresses.
      task: This process's task.
      collective_timeout_seconds: Time one collective op may wait for its
        peers; after it the op fails with DeadlineExceeded instead of hanging
        when a peer died.

    Raises:
      UsageError: The task could not listen on its address.
    """
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.training_cluster()), task_type=task.job, task_id=task.index,
        rpc_layer="grpc")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_seconds)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    except (tf.errors.UnknownError, tf.errors.InternalError) as error:
        if "Could not start gRPC server" in str(error):
            raise UsageError(
                f"Task {task} could not listen on {cluster.address(task)}: the port is already in use by "
                "another process; stop that process or give the task another port in the spec") from None
        raise
