"""`tfps-ha doctor SPEC`: a preflight check of a cluster spec and of this machine.

Each finding is one line: its level (`ok`, `warning` or `error`), the check,
what was found and, unless it is ok, the fix. For example::

    error   port: ps:0 cannot listen on 127.0.0.1:2222: another process uses the port. Fix: ...

The doctor exits 0 when no check found an error (warnings allowed) and 1
otherwise. An unreadable or invalid spec is an error finding too, and the
checks of this machine still run. The doctor imports no TensorFlow, so it
takes well under a second: package versions come from `importlib.metadata`
and modules are looked up with `importlib.util.find_spec`. Two checks can
take longer: looking up the trainer module imports its parent packages, as
any `find_spec` of a dotted name does, and a host name in the spec is
resolved before its port is probed.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import inspect
import logging
import os
import socket
import sys
import tempfile
from typing import TextIO

from tfps_ha import tf_env
from tfps_ha.errors import SpecError, UsageError
from tfps_ha.exit_codes import ExitCode, describe
from tfps_ha.spec import ClusterSpec, TaskId, load_spec, split_address

logger = logging.getLogger(__name__)

# Below this many seconds a deadline is likely to fire on a healthy job. Both
# are estimates: importing TensorFlow takes seconds per process, more when
# several tasks start together on few cores, and a checkpoint save or a join
# after a worker loss blocks the coordinator's heartbeat writes for seconds.
MIN_STARTUP_TIMEOUT_SECONDS = 10.0
MIN_HEARTBEAT_TIMEOUT_SECONDS = 10.0


class Level(enum.Enum):
    """Severity of a finding; only `ERROR` makes the doctor exit 1."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Finding:
    """The result of one check.

    Attributes:
      level: ok, warning or error.
      check: Short name of the check, such as `port` or `restart.ps`.
      message: What the check found, as one or more sentences.
      fix: What to change, as a sentence; empty for ok findings.
    """

    level: Level
    check: str
    message: str
    fix: str = ""

    def line(self) -> str:
        """Returns the finding as one output line."""
        text = f"{self.check}: {self.message}"
        if self.fix:
            text += f" Fix: {self.fix}"
        # Values quoted from a spec can contain line breaks, and a finding stays one line.
        return f"{self.level.value:<7} " + " ".join(text.split())


def run_doctor(spec_path: str, workdir: str | None = None, stream: TextIO | None = None) -> int:
    """Prints every finding for `spec_path` and returns the exit code.

    Args:
      spec_path: Path of the cluster spec YAML.
      workdir: The folder the launch would use; defaults to the spec's workdir.
      stream: Where the lines go; stdout when None.

    Returns:
      `ExitCode.OK` without error findings, else `ExitCode.FAILED` (1).
    """
    stream = stream or sys.stdout
    findings = diagnose(spec_path, workdir)
    for finding in findings:
        print(finding.line(), file=stream)
    errors = sum(finding.level == Level.ERROR for finding in findings)
    warnings = sum(finding.level == Level.WARNING for finding in findings)
    print(f"doctor: {_count(errors, 'error')}, {_count(warnings, 'warning')}, "
          f"{len(findings) - errors - warnings} ok.", file=stream)
    return ExitCode.FAILED if errors else ExitCode.OK


def diagnose(spec_path: str, workdir: str | None = None) -> list[Finding]:
    """Runs every check and returns the findings, the spec's first.

    The checks that need the spec are skipped when it is invalid.
    """
    findings: list[Finding] = []
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        findings.append(Finding(
            Level.ERROR, "spec", f"{error}.",
            f"correct that value, then run 'tfps-ha validate {spec_path}' again."))
        spec = None
    except UsageError as error:
        findings.append(Finding(
            Level.ERROR, "spec", f"{error}.", "pass the path of a readable UTF-8 YAML file."))
        spec = None
    else:
        findings.append(Finding(Level.OK, "spec", spec.summary() + "."))

    findings += check_packages()
    findings += check_legacy_keras_variable(os.environ.get("TF_USE_LEGACY_KERAS"))
    if spec is not None:
        findings += check_trainer(spec)
        findings += check_threads(spec)
        findings += check_ports(spec)
        findings += check_exposure(spec)
        findings += check_folders(spec, workdir)
        findings += check_restart(spec)
        findings += check_monitoring(spec)
    return findings


# ------------------------------------------------------------------- packages


def check_packages() -> list[Finding]:
    """Checks that TensorFlow and tf-keras are importable and of one minor version."""
    findings = []
    tf_found, tf_reason = tf_env.find_module("tensorflow")
    tf_version = tf_env.tensorflow_version()
    if not tf_found:
        findings.append(Finding(
            Level.ERROR, "tensorflow", f"tensorflow cannot be imported ({tf_reason}).",
            f"install it with tf-keras of the same minor version: "
            f"{tf_env.install_command(with_tensorflow=True)}."))
    else:
        findings.append(Finding(Level.OK, "tensorflow", f"tensorflow {tf_version or '(version unknown)'} is installed."))

    keras_found, keras_reason = tf_env.find_module("tf_keras")
    keras_version = tf_env.installed_version("tf-keras")
    keras3_version = tf_env.installed_version("keras")
    keras3 = f"Keras 3 (keras {keras3_version} is installed)" if tf_env.is_keras_3(keras3_version) else "Keras 3"
    if not keras_found and keras_version:
        findings.append(Finding(
            Level.ERROR, "tf-keras",
            f"tf-keras {keras_version} is installed but the module tf_keras cannot be found "
            f"({keras_reason}), so tf.keras would be {keras3}, which does not support "
            "ParameterServerStrategy.",
            f"reinstall it: {tf_env.install_command(reinstall=True)}."))
    elif not keras_found:
        findings.append(Finding(
            Level.ERROR, "tf-keras",
            f"tf-keras is not installed, so tf.keras would be {keras3}, which does not support "
            "ParameterServerStrategy.",
            f"install it: {tf_env.install_command()}."))
    elif tf_version and keras_version and not tf_env.same_minor_version(tf_version, keras_version):
        findings.append(Finding(
            Level.ERROR, "tf-keras",
            f"tf-keras {keras_version} and tensorflow {tf_version} differ in minor version.",
            f"install the matching tf-keras: {tf_env.install_command()}."))
    else:
        findings.append(Finding(Level.OK, "tf-keras", f"tf-keras {keras_version or '(version unknown)'} is installed."))

    if keras_found and tf_env.is_keras_3(keras3_version):
        findings.append(Finding(
            Level.OK, "keras",
            f"Keras 3 (keras {keras3_version}) is installed as well; the kit uses tf-keras, because "
            "every kit process sets TF_USE_LEGACY_KERAS=1 before it imports TensorFlow."))
    return findings


def check_legacy_keras_variable(value: str | None) -> list[Finding]:
    """Checks TF_USE_LEGACY_KERAS, which makes tf.keras tf-keras in TensorFlow 2.16+.

    Importing `tfps_ha` sets it to 1 when it is unset, so the doctor cannot
    tell unset from 1; both are fine.
    """
    if value is None or value in tf_env.LEGACY_KERAS_VALUES:
        return [Finding(Level.OK, "TF_USE_LEGACY_KERAS",
                        "TF_USE_LEGACY_KERAS is 1 or unset; kit processes set it to 1.")]
    return [Finding(
        Level.ERROR, "TF_USE_LEGACY_KERAS",
        f"TF_USE_LEGACY_KERAS is {value!r}, which would make tf.keras Keras 3, and launch rejects it.",
        "unset TF_USE_LEGACY_KERAS or set it to 1.")]


def check_trainer(spec: ClusterSpec) -> list[Finding]:
    """Checks that the trainer module can be found, without importing the module itself."""
    found, reason = _find_trainer(spec.trainer_module)
    if found:
        return [Finding(Level.OK, "trainer", f"trainer module {spec.trainer_module} is found at {found}.")]
    return [Finding(
        Level.ERROR, "trainer", f"trainer module {spec.trainer_module} cannot be found ({reason}).",
        "install the package that provides it, add its folder to PYTHONPATH, or correct trainer.module.")]


def _find_trainer(module: str) -> tuple[str, str]:
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    # find_spec imports the parent packages, whose __init__ is the user's code
    # and can raise anything; the doctor reports it instead of crashing.
    except Exception as error:  # noqa: BLE001
        return "", f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if found is None:
        return "", f"no module named {module!r}"
    return found.origin or "a namespace package", ""


# -------------------------------------------------------------------- threads


def check_threads(spec: ClusterSpec) -> list[Finding]:
    """Checks the inter-op thread count of the PS and worker servers against workers + 1."""
    from tfps_ha.server import inter_op_threads

    workers = spec.task_count("worker")
    threads = inter_op_threads(workers)
    if threads < workers + 1:
        return [Finding(
            Level.ERROR, "threads",
            f"PS and worker servers would use {threads} inter-op threads for {workers} workers; "
            f"join() can deadlock below workers + 1 = {workers + 1}.",
            "raise the count in tfps_ha.server.inter_op_threads.")]
    return [Finding(
        Level.OK, "threads",
        f"PS and worker servers use {threads} inter-op threads, at least workers + 1 = {workers + 1}, "
        "so join() cannot deadlock.")]


# ---------------------------------------------------------------------- ports


def check_ports(spec: ClusterSpec) -> list[Finding]:
    """Checks that every listed task address can be bound here, and that counted tasks can bind `spec.host`.

    The launch starts every PS, worker and chief task on this machine, so each
    listed port must be free. A port in use on any local address counts,
    because TensorFlow's gRPC server listens on 0.0.0.0:PORT.
    """
    findings = []
    free = []
    for job in ("ps", "worker", "chief"):
        value = spec.jobs.get(job, 0)
        if isinstance(value, int):
            continue
        for index, address in enumerate(value):
            task = TaskId(job, index)
            finding = _check_listed_port(task, address)
            if finding is None:
                free.append(f"{task} at {address}")
            else:
                findings.append(finding)
    if free:
        findings.append(Finding(Level.OK, "port", f"free on this machine: {', '.join(free)}."))

    counted = [f"{spec.task_count(job)} {job}" for job in ("ps", "worker", "chief")
               if isinstance(spec.jobs.get(job, 0), int) and spec.task_count(job)]
    if counted:
        state, reason = probe_bind(spec.host, 0)
        if state == "free":
            findings.append(Finding(
                Level.OK, "port",
                f"counted tasks ({', '.join(counted)}) get free ports on {spec.host} when the launch starts."))
        else:
            findings.append(Finding(
                Level.ERROR, "host",
                f"counted tasks ({', '.join(counted)}) cannot listen on host {spec.host}: {reason}.",
                "set host to 127.0.0.1 for a local launch, or list each task's address."))
    return findings


def _check_listed_port(task: TaskId, address: str) -> Finding | None:
    host, port_text = split_address(address)
    port = int(port_text)
    state, reason = probe_bind(host, port)
    if state == "free":
        state, reason = probe_bind("0.0.0.0", port)
        if state == "in use":
            reason = "another process uses the port on another local address, and TensorFlow listens on 0.0.0.0"
    if state == "free":
        return None
    if state == "not local":
        return Finding(
            Level.WARNING, "port",
            f"{task} at {address} is not on this machine ({reason}), so 'tfps-ha launch' cannot start it here.",
            f"run {task} with 'tfps-ha task' on that host, or use a local address for a launch.")
    if state == "in use":
        return Finding(
            Level.ERROR, "port", f"{task} cannot listen on {address}: {reason}.",
            f"stop that process (see 'ss -ltnp sport = :{port}') or give {task} another port in the spec.")
    return Finding(
        Level.ERROR, "port", f"{task} cannot listen on {address}: {reason}.",
        f"give {task} another port in the spec, above 1023 unless the tasks run as root.")


def probe_bind(host: str, port: int) -> tuple[str, str]:
    """Binds a TCP socket to `host:port` the way a server would, then closes it.

    `SO_REUSEADDR` is set as gRPC sets it, so connections of an earlier run in
    TIME_WAIT do not count as a port in use.

    Returns:
      `(state, reason)`: state is `free`, `in use`, `not local` (the host is
      not an address of this machine or cannot be resolved) or `error`.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        return "not local", f"host {host!r} cannot be resolved: {error}"
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "in use", "another process uses the port"
            if error.errno == errno.EADDRNOTAVAIL:
                return "not local", f"{host} is not an address of this machine"
            return "error", f"bind failed: {error.strerror or error}"
    return "free", ""


def check_exposure(spec: ClusterSpec) -> list[Finding]:
    """Warns that TF gRPC servers are unauthenticated and reachable beyond loopback."""
    exposed = spec.exposed_hosts()
    if exposed:
        return [Finding(
            Level.WARNING, "exposure",
            f"servers would listen on {', '.join(exposed)}, beyond loopback. TF gRPC servers are "
            "unauthenticated: anyone who can reach these ports can run code in the tasks.",
            "use 127.0.0.1 for a local launch, or restrict the ports with a firewall or a NetworkPolicy.")]
    return [Finding(
        Level.WARNING, "exposure",
        "the spec names loopback addresses only, but TensorFlow's gRPC server listens on 0.0.0.0:PORT "
        "whatever host its address names (GrpcServer::Init in TensorFlow 2.21), so other hosts can "
        "reach the unauthenticated task ports.",
        "block the task ports from other hosts with a firewall on any machine with untrusted network peers.")]


# -------------------------------------------------------------------- folders


def check_folders(spec: ClusterSpec, workdir: str | None) -> list[Finding]:
    """Checks that the workdir and the checkpoint folder can be written.

    A folder that does not exist yet is fine when its nearest existing parent
    is a writable folder, because the launch creates it. The doctor creates
    nothing; in a folder that exists it writes and deletes one temporary file.
    """
    root = os.path.abspath(workdir or spec.workdir)
    findings = [_check_folder("workdir", root)]
    if findings[0].level == Level.ERROR:
        return findings
    runners = {"custom_loop": ("checkpoints",), "fit": ("backup",), None: ("checkpoints", "backup")}
    for name in runners[spec.runner]:
        path = os.path.join(root, name)
        if os.path.lexists(path):
            findings.append(_check_folder("checkpoints", path))
    return findings


def _check_folder(check: str, path: str) -> Finding:
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return Finding(Level.ERROR, check, f"{path} exists but is not a folder.",
                           f"remove it or choose another {_folder_setting(check)}.")
        problem = _write_probe(path)
        if problem:
            return Finding(Level.ERROR, check, f"{path} is not writable: {problem}.",
                           f"make it writable or choose another {_folder_setting(check)}.")
        return Finding(Level.OK, check, f"{path} is writable.")

    parent = os.path.dirname(path)
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return Finding(Level.ERROR, check, f"{path} cannot be created: {parent} is not a folder.",
                       f"choose another {_folder_setting(check)}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        return Finding(Level.ERROR, check, f"{path} cannot be created: {parent} is not writable.",
                       f"make {parent} writable or choose another {_folder_setting(check)}.")
    return Finding(Level.OK, check, f"{path} does not exist yet; the launch creates it in {parent}, which is writable.")


def _folder_setting(check: str) -> str:
    return "workdir (spec key or --workdir)" if check == "workdir" else "workdir"


def _write_probe(folder: str) -> str:
    """Writes and deletes a temporary file in `folder`; returns the error, or '' on success."""
    try:
        descriptor, path = tempfile.mkstemp(dir=folder, prefix=".tfps-ha-doctor-")
    except OSError as error:
        return error.strerror or str(error)
    os.close(descriptor)
    os.unlink(path)
    return ""


# -------------------------------------------------------------------- restart


def check_restart(spec: ClusterSpec) -> list[Finding]:
    """Checks restart budgets, backoff and permanent exit codes of the PS, worker and chief jobs."""
    findings = []
    for job in ("ps", "worker", "chief"):
        findings += _check_job_restart(spec, job)

    # Each PS loss kills the coordinator, and its restart counts against the
    # chief's budget, so that budget must outlast the PS budget.
    ps_policy = spec.restart["ps"]
    ps_budget = min(ps_policy.max_restarts_per_job, ps_policy.max_restarts_per_task * spec.task_count("ps"))
    chief_policy = spec.restart["chief"]
    chief_budget = min(chief_policy.max_restarts_per_task, chief_policy.max_restarts_per_job)
    if chief_budget < ps_budget:
        findings.append(Finding(
            Level.WARNING, "restart.chief",
            f"the coordinator may restart {chief_budget} times, but the PS tasks {ps_budget} times, and "
            "each PS restart also restarts the coordinator, so the chief's budget runs out first.",
            f"set restart.chief.max_restarts_per_task and max_restarts_per_job to at least {ps_budget}."))
    if not any(finding.level != Level.OK for finding in findings):
        findings.append(Finding(Level.OK, "restart", "restart budgets, backoff and permanent exit codes are coherent."))
    return findings


def _check_job_restart(spec: ClusterSpec, job: str) -> list[Finding]:
    policy = spec.restart[job]
    check = f"restart.{job}"
    findings = []

    budget = min(policy.max_restarts_per_task, policy.max_restarts_per_job)
    if budget == 0:
        setting = "max_restarts_per_task" if policy.max_restarts_per_task == 0 else "max_restarts_per_job"
        consequence = {
            "ps": "the first PS exit ends the launch, although a restarted PS costs only a checkpoint restore",
            "worker": "the first worker exit ends the launch, although the others could keep training",
            "chief": "the first PS loss, preemption or coordinator crash ends the launch",
        }[job]
        findings.append(Finding(
            Level.WARNING, check, f"{check}.{setting} is 0, so {consequence}.",
            "allow a few restarts (the defaults are in tfps_ha.spec.DEFAULT_RESTART), unless failing fast is intended."))

    if policy.backoff_max_seconds < policy.backoff_initial_seconds:
        findings.append(Finding(
            Level.ERROR, check,
            f"{check}.backoff_max_seconds ({policy.backoff_max_seconds:g}) is below backoff_initial_seconds "
            f"({policy.backoff_initial_seconds:g}).",
            "set backoff_max_seconds to at least backoff_initial_seconds."))
    elif policy.backoff_initial_seconds == 0 and budget > 0:
        findings.append(Finding(
            Level.WARNING, check,
            f"{check}.backoff_initial_seconds is 0, so a task that crashes at start restarts at once and "
            "spends its restart budget within seconds.",
            "set backoff_initial_seconds to 0.5 or more."))

    if ExitCode.USAGE not in policy.permanent_exit_codes and budget > 0:
        findings.append(Finding(
            Level.WARNING, check,
            f"{check}.permanent_exit_codes lacks 2 (USAGE: invalid spec, TF_CONFIG or flags), so such an "
            "exit is retried although every attempt fails the same way.",
            "add 2 to permanent_exit_codes."))
    if job == "chief":
        retryable = [code for code in policy.permanent_exit_codes if code >= ExitCode.CLUSTER_UNAVAILABLE]
        if retryable:
            names = ", ".join(f"{code} ({describe(code)})" for code in retryable)
            findings.append(Finding(
                Level.WARNING, check,
                f"{check}.permanent_exit_codes lists {names}, which the coordinator uses for exits that a "
                "restart recovers from, so such an exit ends the launch.",
                f"remove {', '.join(str(code) for code in retryable)} from permanent_exit_codes."))
    return findings


# ----------------------------------------------------------------- monitoring


def check_monitoring(spec: ClusterSpec) -> list[Finding]:
    """Checks that the health-signal deadlines, the lease and the start-up deadline fit together."""
    monitoring = spec.monitoring
    heartbeat = monitoring.heartbeat_timeout_seconds
    progress = monitoring.progress_timeout_seconds
    interval = _heartbeat_interval()
    findings = []

    for name, value in (("heartbeat_timeout_seconds", heartbeat), ("progress_timeout_seconds", progress)):
        if value <= interval:
            findings.append(Finding(
                Level.ERROR, "monitoring",
                f"monitoring.{name} ({value:g} s) is not above the coordinator's heartbeat interval "
                f"({interval:g} s), so a healthy coordinator would be killed as hung.",
                f"set monitoring.{name} well above {interval:g} s (the default is "
                f"{getattr(type(monitoring)(), name):g} s)."))
    if interval < heartbeat < MIN_HEARTBEAT_TIMEOUT_SECONDS:
        findings.append(Finding(
            Level.WARNING, "monitoring",
            f"monitoring.heartbeat_timeout_seconds is {heartbeat:g} s; a checkpoint save or a join after a "
            "worker loss can block heartbeat writes for several seconds, so a healthy coordinator may be "
            "killed as hung.",
            f"set it to {MIN_HEARTBEAT_TIMEOUT_SECONDS:g} s or more."))
    if interval < progress < heartbeat:
        findings.append(Finding(
            Level.WARNING, "monitoring",
            f"monitoring.progress_timeout_seconds ({progress:g} s) is below heartbeat_timeout_seconds "
            f"({heartbeat:g} s). The progress check is the slower, second signal: it also fires for a "
            "live coordinator whose steps are slow.",
            "set progress_timeout_seconds above heartbeat_timeout_seconds."))

    if monitoring.standby_coordinator:
        lease = monitoring.lease_seconds
        if lease >= heartbeat:
            findings.append(Finding(
                Level.ERROR, "monitoring",
                f"monitoring.lease_seconds ({lease:g} s) is not below heartbeat_timeout_seconds "
                f"({heartbeat:g} s), so a hung leader is killed for its stale heartbeat before its lease "
                "expires, and the standby coordinator never takes over.",
                f"set lease_seconds to at most half of heartbeat_timeout_seconds ({heartbeat / 2:g} s)."))
        elif lease > heartbeat / 2:
            findings.append(Finding(
                Level.WARNING, "monitoring",
                f"monitoring.lease_seconds ({lease:g} s) is above half of heartbeat_timeout_seconds "
                f"({heartbeat:g} s), so the standby may take over only just before hang detection kills "
                "the leader.",
                f"set lease_seconds to at most {heartbeat / 2:g} s."))

    detection = monitoring.port_check_interval_seconds * monitoring.port_failures_before_dead
    if detection >= heartbeat:
        findings.append(Finding(
            Level.WARNING, "monitoring",
            f"a PS or worker whose port stops answering is marked dead after about {detection:g} s "
            f"(port_check_interval_seconds x port_failures_before_dead), not before the coordinator's "
            f"heartbeat deadline ({heartbeat:g} s), so a coordinator blocked on a hung PS is restarted "
            "against the same hung PS.",
            "lower port_check_interval_seconds or port_failures_before_dead, or raise heartbeat_timeout_seconds."))

    if spec.startup_timeout_seconds < MIN_STARTUP_TIMEOUT_SECONDS:
        findings.append(Finding(
            Level.WARNING, "startup",
            f"startup_timeout_seconds is {spec.startup_timeout_seconds:g} s; each task imports TensorFlow "
            "before it listens, which takes seconds, more when several tasks start together on few cores.",
            f"set it to {MIN_STARTUP_TIMEOUT_SECONDS:g} s or more (the default is 60 s)."))

    if not findings:
        findings.append(Finding(
            Level.OK, "monitoring",
            f"deadlines are coherent: heartbeat {heartbeat:g} s, progress {progress:g} s, lease "
            f"{monitoring.lease_seconds:g} s, start-up {spec.startup_timeout_seconds:g} s."))
    return findings


def _heartbeat_interval() -> float:
    """Returns the coordinator's default heartbeat write interval, in seconds."""
    from tfps_ha.coordinator.heartbeat import Heartbeat

    return float(inspect.signature(Heartbeat).parameters["interval"].default)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")

