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

    A dead or stopped peer is found by that service's heartbeats, not by a
    timeout on each collective op. TensorFlow 2.21 keeps a sleeping thread for
    every collective op that has a timeout, until the timeout ends. The digits
    example runs about 15 collective ops per step, so with a 60 s timeout each
    worker held about 16,000 threads by step 1,100. Both workers then aborted
    with `Resource temporarily unavailable`.

    Args:
      tf: The TensorFlow module.
      cluster: The chief and worker addresses.
      task: This process's task.
      collective_timeout_seconds: Seconds without a heartbeat after which the
        coordination service declares a task dead. The collective ops of the
        other tasks then fail with UnavailableError or DeadlineExceeded, so
        they do not hang.

    Raises:
      UsageError: The task could not listen on its address.
    """
    cluster_spec = tf.train.ClusterSpec(cluster.training_cluster())
    _configure_coordination_service(cluster_spec, collective_timeout_seconds)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster_spec, task_type=task.job, task_id=task.index, rpc_layer="grpc")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (tf.errors.UnknownError, tf.errors.InternalError) as error:
        if "Could not start gRPC server" in str(error):
            raise UsageError(
                f"Task {task} could not listen on {cluster.address(task)}: the port is already in use by "
                "another process; stop that process or give the task another port in the spec") from None
        raise


def _configure_coordination_service(cluster_spec, heartbeat_timeout_seconds: float) -> None:
    """Configures the coordination service as MWMS would, with the spec's heartbeat timeout.

    MWMS configures the service itself only when nothing configured it
    before, with the same leader and jobs as here.
    """
    # NOTE: private TensorFlow 2.21 modules, used as MultiWorkerMirroredStrategy
    # uses them in `_initialize_multi_worker`; a TensorFlow upgrade must
    # re-check them.
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        logger.warning("The coordination service was configured before the strategy; "
                       "monitoring.collective_timeout_seconds does not apply.")
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(heartbeat_timeout_seconds * 1000))
