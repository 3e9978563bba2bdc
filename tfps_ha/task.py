"""`tfps-ha task`: runs the task that TF_CONFIG names.

`ps` and `worker` tasks serve a `tf.distribute.Server` until SIGTERM. The
`chief` task runs the coordinator. Under a `multi_worker_mirrored` spec every
chief and worker task trains (`tfps_ha.mwms.worker`). Each process ends with
`os._exit`, because TensorFlow's gRPC threads can keep a finished process alive.
"""

from __future__ import annotations

import logging
import os
import sys

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode
from tfps_ha.spec import MULTI_WORKER_MIRRORED, check_target_steps, load_spec
from tfps_ha.tf_config import parse_tf_config
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)


def run_task(spec_path: str | None, workdir: str | None, steps: int | None, standby: bool = False) -> int:
    """Runs this process's task from TF_CONFIG; returns the exit code (chief only).

    Args:
      spec_path: The cluster spec (required for the chief, and for every task
        of a multi_worker_mirrored spec).
      workdir: The job's working folder (chief); defaults to the spec's.
      steps: Overrides the spec's target step count (chief).
      standby: (chief) Wait for the leader lease for as long as another
        coordinator renews it, instead of at most the start-up deadline.

    Raises:
      UsageError: TF_CONFIG or the flags are invalid.
    """
    if spec_path:
        spec = load_spec(spec_path)
        if spec.strategy == MULTI_WORKER_MIRRORED:
            if standby:
                raise UsageError("--standby applies only to the chief of a parameter_server spec; "
                                 f"{spec.source} uses strategy {MULTI_WORKER_MIRRORED}")
            from tfps_ha.mwms.worker import run_mirrored_task

            run_mirrored_task(spec, workdir, steps)

    config = parse_tf_config(os.environ.get("TF_CONFIG"))
    task = config.task

    if task.job in ("ps", "worker"):
        from tfps_ha.server import serve
        from tfps_ha.tf_env import import_tensorflow

        tf, _ = import_tensorflow()
        serve(tf, config.cluster, task)

    if task.job == "evaluator":
        raise UsageError("the evaluator task is not supported by 'tfps-ha task' yet; leave it out of the spec")

    if not spec_path:
        raise UsageError("--spec is required for the chief task (it names the trainer and the training length)")
    spec = load_spec(spec_path)
    if steps is not None:
        check_target_steps(spec.training, steps)

    from tfps_ha.coordinator.main import run_coordinator

    try:
        code = run_coordinator(spec, config.cluster, Workdir(workdir or spec.workdir), target_steps=steps,
                               standby=standby)
    except UsageError as error:
        logger.error("Coordinator stopped: %s", error)
        code = ExitCode.USAGE
    except Exception:  # A crash: log it with its traceback, then exit FAILED.
        logger.exception("Coordinator crashed.")
        code = ExitCode.FAILED
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
