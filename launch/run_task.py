"""Runs the task named by $TF_CONFIG: the entry point for a host or a container.

    TF_CONFIG='{"cluster": {...}, "task": {"type": "worker", "index": 0}}' \
        python launch/run_task.py --spec cluster_specs/local.yaml --workdir /tmp/job

A thin absl wrapper over `tfps_ha.task.run_task`: `ps` and `worker` serve
until SIGTERM; `chief` runs the coordinator and exits with the kit's exit code.
"""

import sys

from absl import app, flags

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode

FLAGS = flags.DEFINE_string("spec", None, "Cluster spec YAML (required for the chief task).")
WORKDIR = flags.DEFINE_string("workdir", None, "Working folder; default: the spec's workdir.")
STEPS = flags.DEFINE_integer("steps", None, "Target step count; default: the spec's training.steps.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from tfps_ha.task import run_task

    try:
        return run_task(spec_path=FLAGS.value, workdir=WORKDIR.value, steps=STEPS.value)
    except UsageError as error:
        print(f"run_task: error: {error}", file=sys.stderr)
        return int(ExitCode.USAGE)


if __name__ == "__main__":
    app.run(main)
