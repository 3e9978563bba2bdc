"""`tfps-ha task`: runs the task that TF_CONFIG names.

`ps` and `worker` tasks serve a `tf.distribute.Server` until SIGTERM. The
`chief` task runs the coordinator. Each process ends with `os._exit`, because
TensorFlow's gRPC threads can keep a finished process alive.
"""

from __future__ import annotations

import logging
import os
import sys

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode
from tfps_ha.spec import load_spec
from tfps_ha.tf_config import parse_tf_config
from tfps_ha.workdir import Workdir

logger = logging.getLogger(__name__)


def run_task(spec_path: str | None, workdir: str | None, steps: int | None, standby: bool = False) -> int:
    """Runs this process's task from TF_CONFIG; returns the exit code (chief only).

    Raises:
      UsageError: TF_CONFIG or the flags are invalid.
    """
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
    if steps is not None and steps < 1:
        raise UsageError(f"--steps: received {steps}; expected a step count of at least 1")
    if standby:
        raise UsageError("--standby is not supported yet")

    from tfps_ha.coordinator.main import run_coordinator

    try:
        code = run_coordinator(spec, config.cluster, Workdir(workdir or spec.workdir), target_steps=steps)
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
