"""PS and worker tasks: a `tf.distribute.Server` that serves until SIGTERM.

A PS or worker task does no work of its own: the coordinator places variables
on the PS tasks and schedules functions onto the workers through gRPC. The
process therefore only starts its server and waits. SIGTERM and SIGINT end it
with exit code 0; the server has no clean shutdown in TF's Python API, so the
process exits with `os._exit` after logging.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from tfps_ha.errors import UsageError
from tfps_ha.spec import TaskId
from tfps_ha.tf_config import ResolvedCluster

logger = logging.getLogger(__name__)


def inter_op_threads(num_workers: int) -> int:
    """Returns the inter-op thread count that keeps a PSS cluster from deadlocking.

    A server that shares its process's thread pool needs at least one thread
    per worker plus one, or `join()` can wait forever on blocked threads.
    """
    return max(num_workers + 1, os.cpu_count() or 1)


def server_config(tf, num_workers: int):
    """Returns the `ConfigProto` for a PS or worker server."""
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = inter_op_threads(num_workers)
    return config


def start_server(tf, cluster: ResolvedCluster, task: TaskId):
    """Starts the gRPC server of a PS or worker task.

    Raises:
      UsageError: The port is taken by another process.
    """
    cluster_spec = tf.train.ClusterSpec(cluster.training_cluster())
    try:
        return tf.distribute.Server(
            cluster_spec,
            job_name=task.job,
            task_index=task.index,
            protocol="grpc",
            config=server_config(tf, cluster.num_workers()),
            start=True,
        )
    except (tf.errors.UnknownError, tf.errors.InternalError) as error:
        raise UsageError(
            f"Task {task} could not start its gRPC server on {cluster.address(task)}: "
            f"{error.message.strip()}. Is the port used by another process?"
        ) from None


def serve(tf, cluster: ResolvedCluster, task: TaskId) -> None:
    """Starts the server of `task` and blocks until SIGTERM or SIGINT; never returns."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    start_server(tf, cluster, task)
    logger.info("Task %s is serving on %s.", task, cluster.address(task))

    # Event.wait with a timeout lets the main thread run signal handlers,
    # which Server.join() would block.
    while not stop.wait(timeout=1.0):
        pass

    logger.info("Task %s received %s; stopping.", task, signal.Signals(received[0]).name)
    logging.shutdown()
    os._exit(0)
