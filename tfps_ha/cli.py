"""The `tfps-ha` command line.

Usage errors (a bad spec, flag or TF_CONFIG) print one line on stderr and exit
with code 2 (`ExitCode.USAGE`), without a traceback. Other exceptions are
crashes and keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from tfps_ha.errors import UsageError
from tfps_ha.exit_codes import ExitCode

logger = logging.getLogger(__name__)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="tfps-ha", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    validate = commands.add_parser("validate", help="check a cluster spec and print a one-line summary")
    validate.add_argument("spec", help="path of the cluster spec YAML")

    tf_config = commands.add_parser("tf-config", help="print the TF_CONFIG JSON one task of a spec gets")
    tf_config.add_argument("spec", help="path of the cluster spec YAML")
    tf_config.add_argument("--task", required=True, help="task as JOB:INDEX, for example worker:1")

    task = commands.add_parser(
        "task", help="run the task that TF_CONFIG names (ps and worker serve; chief runs the coordinator)")
    task.add_argument("--spec", help="cluster spec YAML with the trainer and training settings (required for chief)")
    task.add_argument("--workdir", help="working folder for checkpoints, heartbeat and results (chief)")
    task.add_argument("--steps", type=int, help="override training.steps")
    task.add_argument("--standby", action="store_true",
                      help="(chief) start as a standby coordinator that waits for the leadership lease")

    launch = commands.add_parser("launch", help="start every task of a spec locally and supervise them")
    launch.add_argument("spec", help="path of the cluster spec YAML")
    launch.add_argument("--workdir", help="working folder (default: the spec's workdir)")
    launch.add_argument("--steps", type=int, help="override training.steps (target step count)")
    launch.add_argument("--chaos", help="kill plan, e.g. 'worker:0@step=40,ps:0@step=120' or 'random:seed=7,kills=5'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns the process exit code."""
    logging.basicConfig(
        level=os.environ.get("TFPS_HA_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args = _build_parser().parse_args(argv)
        return int(_run(args))
    except UsageError as error:
        print(f"tfps-ha: error: {error}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("tfps-ha: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from tfps_ha import spec as spec_module

    if args.command == "validate":
        spec = spec_module.load_spec(args.spec)
        _warn_exposure(spec)
        print(spec.summary())
        return ExitCode.OK

    if args.command == "tf-config":
        from tfps_ha.tf_config import render_tf_config, resolve_cluster

        spec = spec_module.load_spec(args.spec)
        task = spec_module.TaskId.parse(args.task)
        _warn_exposure(spec)
        print(json.dumps(render_tf_config(resolve_cluster(spec), task), indent=2))
        return ExitCode.OK

    if args.command == "task":
        from tfps_ha.task import run_task

        return run_task(spec_path=args.spec, workdir=args.workdir, steps=args.steps, standby=args.standby)

    if args.command == "launch":
        from tfps_ha.launcher import launch

        spec = spec_module.load_spec(args.spec)
        _warn_exposure(spec)
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps: received {args.steps}; expected a step count of at least 1")
        return launch(spec, args.spec, workdir=args.workdir, steps=args.steps, chaos=args.chaos)

    raise UsageError(f"unknown command {args.command!r}")


def _warn_exposure(spec) -> None:
    exposed = spec.exposed_hosts()
    if exposed:
        logger.warning(
            "%s: servers would listen on %s, beyond loopback. TF gRPC servers are "
            "unauthenticated: anyone who can reach these ports can run code in the "
            "tasks. Restrict them with a firewall or a NetworkPolicy.",
            spec.source, ", ".join(exposed),
        )
