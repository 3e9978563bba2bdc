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

from tfps_ha.errors import UsageError, short_repr
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

    doctor = commands.add_parser(
        "doctor", help="check a spec and this machine before a launch; prints each finding with its fix "
                       "and exits 1 when one is an error")
    doctor.add_argument("spec", help="path of the cluster spec YAML")
    doctor.add_argument("--workdir", help="working folder the launch would use (default: the spec's workdir)")

    launch = commands.add_parser("launch", help="start every task of a spec locally and supervise them")
    launch.add_argument("spec", help="path of the cluster spec YAML")
    launch.add_argument("--workdir", help="working folder (default: the spec's workdir)")
    launch.add_argument("--steps", type=int, help="override training.steps (target step count)")
    launch.add_argument("--chaos", help="kill plan, e.g. 'worker:0@step=40,ps:0@step=120' or 'random:seed=7,kills=5'")
    launch.add_argument("--status-port", type=int,
                        help="serve /healthz, /readyz, /status and /metrics on 127.0.0.1:PORT during the launch "
                             "(0 picks a free port)")

    status = commands.add_parser("status", help="print the status of a running or finished job from its workdir")
    status.add_argument("workdir", help="the job's working folder (the --workdir of a launch)")
    status.add_argument("--json", action="store_true", help="print the status as JSON instead of text lines")
    status.add_argument("--spec", help="cluster spec YAML; supplies the target step and tasks before the job "
                                       "has written them")

    report = commands.add_parser(
        "report", help="draw a PNG timeline of a job: task attempts, kills, restarts, step and loss")
    report.add_argument("workdir", help="the job's working folder (the --workdir of a launch)")
    report.add_argument("--out", help="PNG file to write (default: WORKDIR/report.png)")

    render_k8s = commands.add_parser(
        "render-k8s",
        help="write the Kubernetes manifests of a spec: a Kubeflow TFJob, its NetworkPolicy and, for "
             "parameter_server specs, the Lease RBAC")
    render_k8s.add_argument("spec", help="path of the cluster spec YAML")
    render_k8s.add_argument("--image", required=True, help="container image of every task, with the kit installed")
    render_k8s.add_argument("--namespace", help="namespace of every object (default: the spec's kubernetes.namespace)")
    render_k8s.add_argument("--out", required=True, help="folder to write the YAML files to; created if missing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns the process exit code."""
    level, invalid_level = _log_level(os.environ.get("TFPS_HA_LOG_LEVEL", ""))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if invalid_level is not None:
        logger.warning(
            "TFPS_HA_LOG_LEVEL is %s, which is not a log level; using INFO. Set it to DEBUG, "
            "INFO, WARNING, ERROR or CRITICAL, or unset it.", short_repr(invalid_level))
    try:
        args = _build_parser().parse_args(argv)
        return int(_run(args))
    except UsageError as error:
        print(f"tfps-ha: error: {error}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        print("tfps-ha: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away, as with `tfps-ha status DIR | head`.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


def _log_level(text: str) -> tuple[int, str | None]:
    """Returns the level that TFPS_HA_LOG_LEVEL names and, when it names none, the invalid text.

    Level names are case-insensitive, a number is a level too, and an unset or
    empty value is INFO. An invalid value falls back to INFO rather than
    stopping a task, because the log level does not change what the task does.
    """
    name = text.strip().upper()
    if not name:
        return logging.INFO, None
    if name.isascii() and name.isdigit() and len(name) <= 9:
        return int(name), None
    level = logging.getLevelName(name)
    if isinstance(level, int):
        return level, None
    return logging.INFO, text


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
        rendered = render_tf_config(resolve_cluster(spec), task, source=spec.source, path="--task")
        print(json.dumps(rendered, indent=2))
        return ExitCode.OK

    if args.command == "doctor":
        from tfps_ha.doctor import run_doctor

        return run_doctor(args.spec, workdir=args.workdir)

    if args.command == "task":
        from tfps_ha.task import run_task

        return run_task(spec_path=args.spec, workdir=args.workdir, steps=args.steps, standby=args.standby)

    if args.command == "launch":
        from tfps_ha.launcher import launch

        spec = spec_module.load_spec(args.spec)
        _warn_exposure(spec)
        if args.status_port is not None and not 0 <= args.status_port <= 65535:
            raise UsageError(f"--status-port: received {args.status_port}; expected a TCP port from 0 to 65535")
        return launch(spec, args.spec, workdir=args.workdir, steps=args.steps, chaos=args.chaos,
                      status_port=args.status_port)

    if args.command == "status":
        from tfps_ha.observe.status import require_job_folder, status_from_workdir, status_to_json
        from tfps_ha.observe.text import format_status

        workdir = require_job_folder(args.workdir)
        spec = spec_module.load_spec(args.spec) if args.spec else None
        status = status_from_workdir(workdir, spec)
        print(status_to_json(status) if args.json else format_status(status))
        return ExitCode.OK

    if args.command == "report":
        from tfps_ha.observe.report import write_report
        from tfps_ha.observe.status import require_job_folder

        workdir = require_job_folder(args.workdir)
        out = os.path.abspath(args.out or os.path.join(workdir, "report.png"))
        if not os.path.isdir(os.path.dirname(out)):
            raise UsageError(f"--out: folder {os.path.dirname(out)!r} not found; create it or choose another path")
        if os.path.isdir(out):
            raise UsageError(f"--out: {out!r} is a folder; expected a file path such as {out}/run.png")
        if not out.lower().endswith(".png"):
            raise UsageError(f"--out: received {out!r}; expected a .png file name, because the report is a PNG")
        try:
            write_report(workdir, out)
        except OSError as error:
            raise UsageError(f"--out: cannot write {out!r}: {error.strerror or error}") from None
        print(f"Wrote {out}.")
        return ExitCode.OK

    if args.command == "render-k8s":
        from tfps_ha.k8s.render import render_manifests, render_warnings, write_manifests

        spec = spec_module.load_spec(args.spec)
        with open(args.spec, encoding="utf-8") as stream:
            spec_text = stream.read()
        manifests = render_manifests(spec, spec_text, args.image, args.namespace)
        for warning in render_warnings(spec):
            logger.warning("%s: %s", spec.source, warning)
        for path in write_manifests(manifests, args.out, spec.source):
            print(path)
        return ExitCode.OK

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
