"""Cluster spec: the YAML file that names the jobs, the trainer and the policies.

A cluster spec looks like this (every key but `cluster` and `trainer.module`
has a default)::

    name: digits-local
    strategy: parameter_server # or multi_worker_mirrored (no ps job; chief optional)
    host: 127.0.0.1            # where counted tasks bind
    cluster:
      chief: 1                 # the coordinator; a count or a list of host:port
      worker: 2
      ps: ["127.0.0.1:2222"]
    trainer:
      module: tfps_ha.examples.digits
      runner: fit              # fit | custom_loop; inferred from the module if absent
    training:
      steps: 600
      steps_per_execution: 10  # or auto (custom_loop only)
      checkpoint_every_steps: 100
      steps_per_epoch: 100     # fit only
      async_checkpoint: false  # custom_loop only: write checkpoints in the background
    workdir: /tmp/tfps_ha/digits-local

`load_spec` checks every value and raises `SpecError` naming the first invalid
one. A job given as a count gets loopback ports from portpicker when the
launcher calls `resolve_cluster`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Any, Mapping

import yaml

from tfps_ha.errors import SpecError, UsageError, short_repr
from tfps_ha.k8s.settings import KubernetesSpec, parse_kubernetes

JOBS = ("chief", "worker", "ps", "evaluator")
TRAINING_JOBS = ("chief", "worker", "ps")
RUNNERS = ("fit", "custom_loop")
PARAMETER_SERVER = "parameter_server"
MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
STRATEGIES = (PARAMETER_SERVER, MULTI_WORKER_MIRRORED)

_JOB_HINTS = {
    "ps_hosts": "ps",
    "worker_hosts": "worker",
    "master": "chief",
    "coordinator": "chief",
    "parameter_server": "ps",
    "workers": "worker",
}
# These end in \Z, not $, because $ also matches before a trailing newline.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
# Ports and task indices take ASCII digits only, because str.isdigit() also
# accepts digits such as '²' that int() rejects.
_PORT_RE = re.compile(r"[0-9]{1,5}")
_INDEX_RE = re.compile(r"[0-9]{1,9}")


@dataclasses.dataclass(frozen=True)
class TaskId:
    """One task of the cluster, written `job:index` (for example `worker:1`)."""

    job: str
    index: int

    def __str__(self) -> str:
        return f"{self.job}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> "TaskId":
        """Parses `worker:1`, or a bare `chief` for `chief:0`.

        Raises:
          UsageError: `text` is not of that form or names an unknown job.
        """
        job, sep, index = text.strip().partition(":")
        if not sep and job == "chief":
            return cls("chief", 0)
        if job not in JOBS or not _INDEX_RE.fullmatch(index):
            raise UsageError(
                f"invalid task {short_repr(text)}; expected JOB:INDEX with JOB one of "
                f"{', '.join(JOBS)}, for example worker:1"
            )
        return cls(job, int(index))


@dataclasses.dataclass(frozen=True)
class RestartPolicySpec:
    """How one job's tasks are restarted.

    Attributes:
      max_restarts_per_task: Restarts allowed for each task of the job.
      max_restarts_per_job: Restarts allowed for all tasks of the job together.
      backoff_initial_seconds: Delay before the first restart of a task.
      backoff_max_seconds: Cap of the delay, which doubles per restart.
      permanent_exit_codes: Exit codes after which the task is not restarted.
    """

    max_restarts_per_task: int
    max_restarts_per_job: int
    backoff_initial_seconds: float
    backoff_max_seconds: float
    permanent_exit_codes: tuple[int, ...] = (1, 2)


DEFAULT_RESTART = {
    # A PS restart costs a coordinator restart and a checkpoint restore, so the
    # budget is smaller than for workers, which rejoin without losing a step.
    # The first restart follows at once: training waits on the lost task, and
    # only a crash loop needs the doubling backoff.
    "ps": RestartPolicySpec(5, 10, 0.2, 15.0),
    "worker": RestartPolicySpec(10, 30, 0.2, 15.0),
    # The coordinator's exits are mostly retryable (PS loss, preemption).
    "chief": RestartPolicySpec(10, 10, 0.5, 10.0),
    "evaluator": RestartPolicySpec(3, 3, 1.0, 15.0),
}


@dataclasses.dataclass(frozen=True)
class MonitoringSpec:
    """Deadlines of the supervisor's three health signals and of failover.

    Attributes:
      heartbeat_timeout_seconds: A coordinator heartbeat older than this is a hang.
      progress_timeout_seconds: A step that does not advance this long, while
        the workers are up, is a hang.
      port_check_interval_seconds: How often PS and worker ports are probed.
      port_failures_before_dead: Failed probes in a row that mark a task dead.
      lease_seconds: Leadership lease duration; a standby takes over when the
        leader has not renewed it for this long.
      standby_coordinator: Whether a standby coordinator is kept warm.
      preemption_grace_seconds: Time a coordinator has, after SIGTERM, to stop
        scheduling, drain steps and save a checkpoint.
      status_interval_seconds: Interval of the launcher's progress line.
      collective_timeout_seconds: (multi_worker_mirrored) Seconds without a
        heartbeat after which TensorFlow's coordination service declares a
        worker dead. The other workers' collective ops, such as the gradient
        all-reduce, then fail, and they exit instead of hanging.
    """

    heartbeat_timeout_seconds: float = 30.0
    progress_timeout_seconds: float = 120.0
    port_check_interval_seconds: float = 2.0
    port_failures_before_dead: int = 3
    lease_seconds: float = 4.0
    standby_coordinator: bool = True
    preemption_grace_seconds: float = 30.0
    status_interval_seconds: float = 5.0
    collective_timeout_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """Training length and checkpoint cadence, all counted in steps.

    Attributes:
      steps: Target number of applied steps.
      steps_per_execution: Steps packed into one scheduled function.
      checkpoint_every_steps: Steps between checkpoints; a multiple of
        `steps_per_execution`.
      steps_per_epoch: Epoch length for the fit runner (None for custom_loop).
      keep_checkpoints: Checkpoints kept on disk.
      auto_steps_per_execution: Set by `steps_per_execution: auto`: the
        custom loop measures the cost of a scheduled function and of a step,
        then picks a divisor of `checkpoint_every_steps`. `steps_per_execution`
        is then 1 and not used by the custom loop.
      async_checkpoint: Whether the custom loop writes checkpoints in the
        background from a copy on the PS tasks, which doubles the PS memory
        that the model and optimizer take.
    """

    steps: int
    steps_per_execution: int = 10
    checkpoint_every_steps: int = 100
    steps_per_epoch: int | None = None
    keep_checkpoints: int = 3
    auto_steps_per_execution: bool = False
    async_checkpoint: bool = False


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster spec.

    Attributes:
      name: Job name used in logs and rendered manifests.
      source: Where the spec came from (file name), used in error messages.
      host: Host that counted tasks bind on.
      jobs: For each job, a task count (int) or a tuple of `host:port`.
      trainer_module: Import path of the trainer module.
      runner: `fit`, `custom_loop`, or None to infer from the module.
      trainer_args: Keyword options passed to the trainer's builders.
      training: Training length and checkpoint cadence.
      workdir: Default working folder of a launch.
      startup_timeout_seconds: Deadline for every task to come up.
      restart: Restart policy per job.
      monitoring: Health-signal deadlines.
      kubernetes: Settings of `tfps-ha render-k8s`; local launches ignore them.
      strategy: `parameter_server` or `multi_worker_mirrored`.
    """

    name: str
    source: str
    host: str
    jobs: Mapping[str, int | tuple[str, ...]]
    trainer_module: str
    runner: str | None
    trainer_args: Mapping[str, Any]
    training: TrainingSpec
    workdir: str
    startup_timeout_seconds: float
    restart: Mapping[str, RestartPolicySpec]
    monitoring: MonitoringSpec
    kubernetes: KubernetesSpec = dataclasses.field(default_factory=KubernetesSpec)
    strategy: str = PARAMETER_SERVER

    def task_count(self, job: str) -> int:
        """Returns how many tasks `job` has (0 when absent)."""
        value = self.jobs.get(job, 0)
        return value if isinstance(value, int) else len(value)

    def summary(self) -> str:
        """Returns a one-line description for `tfps-ha validate`."""
        counts = ", ".join(
            f"{self.task_count(job)} {job}" for job in JOBS if self.task_count(job)
        )
        runner = self.runner or "inferred runner"
        strategy = f" ({self.strategy})" if self.strategy != PARAMETER_SERVER else ""
        return (
            f"{self.source}: valid cluster spec '{self.name}'{strategy}: {counts}; trainer "
            f"{self.trainer_module} ({runner}); {self.training.steps} steps, "
            f"checkpoint every {self.training.checkpoint_every_steps}"
        )

    def exposed_hosts(self) -> list[str]:
        """Returns the hosts that are not loopback, where servers would be reachable."""
        hosts = set()
        for value in self.jobs.values():
            if isinstance(value, int):
                if value:
                    hosts.add(self.host)
            else:
                hosts.update(split_address(address)[0] for address in value)
        return sorted(host for host in hosts if not is_loopback(host))


def load_spec(path: str) -> ClusterSpec:
    """Reads and validates a cluster spec file.

    Args:
      path: Path of the YAML file.

    Returns:
      The validated spec.

    Raises:
      SpecError: The file is not valid YAML or a value is invalid.
      UsageError: The file cannot be read.
    """
    source = os.path.basename(path) or path
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise UsageError(f"{path}: cannot read the cluster spec: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the cluster spec is not UTF-8 text") from None
    default_name = os.path.splitext(source)[0]
    return parse_spec(text, source=source, default_name=default_name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a mapping with the same key twice.

    PyYAML keeps the last value, so a second `training:` block would silently
    replace the first.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            # Only plain scalar keys are compared, by tag and text; merge keys
            # (`<<`) and collection keys are left to the base constructor.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short_repr(key_node.value)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_spec(text: str, source: str = "spec", default_name: str = "tfps-ha") -> ClusterSpec:
    """Validates cluster spec text; see `load_spec`."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the document"
        problem = getattr(error, "problem", None) or "a syntax error"
        raise SpecError(source, "", f"invalid YAML at {where} ({problem})", "a YAML mapping") from None
    except ValueError as error:  # PyYAML raises it for some malformed scalars.
        raise SpecError(source, "", f"invalid YAML ({error})", "a YAML mapping") from None
    except (IndexError, KeyError, AttributeError):
        # PyYAML 6.0.4 raises these for an explicitly tagged scalar that it cannot
        # convert, such as `!!int ''`, `!!bool x` or `!!timestamp x`.
        raise SpecError(source, "", "invalid YAML (a scalar that does not match its !! tag)",
                        "a YAML mapping") from None
    except RecursionError:  # PyYAML composes nested collections recursively.
        raise SpecError(source, "", "invalid YAML (nested too deeply)", "a YAML mapping") from None
    if not isinstance(document, dict):
        raise SpecError(source, "", document, "a YAML mapping with a 'cluster' key")
    return _Parser(source).parse(document, default_name)


class _Parser:
    """Checks one spec document, key by key, with the path of each value."""

    _TOP_KEYS = (
        "name", "host", "cluster", "trainer", "training", "workdir",
        "startup_timeout_seconds", "restart", "monitoring", "kubernetes", "strategy",
    )

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, received: object, expected: str) -> SpecError:
        return SpecError(self.source, path, received, expected)

    def parse(self, document: dict, default_name: str) -> ClusterSpec:
        self._reject_unknown_keys("", document, self._TOP_KEYS)

        name = document.get("name", default_name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail("name", name, "1-63 letters, digits, '.', '_' or '-'")

        host = document.get("host", "127.0.0.1")
        self._check_host("host", host)

        strategy = document.get("strategy", PARAMETER_SERVER)
        if strategy not in STRATEGIES:
            raise self.fail("strategy", strategy, "one of " + ", ".join(STRATEGIES))

        jobs = self._parse_cluster(document.get("cluster", SpecError._MISSING), host, strategy)
        module, runner, trainer_args = self._parse_trainer(document.get("trainer", SpecError._MISSING))
        if strategy == MULTI_WORKER_MIRRORED and runner == "custom_loop":
            raise self.fail("trainer.runner", runner,
                            f"fit, because strategy {MULTI_WORKER_MIRRORED} runs only the fit runner")
        training = self._parse_training(document.get("training", {}), runner, strategy)

        workdir = document.get("workdir", os.path.join("/tmp", "tfps_ha", name))
        if not isinstance(workdir, str) or not workdir.strip():
            raise self.fail("workdir", workdir, "a folder path")

        startup = self._number("startup_timeout_seconds", document.get("startup_timeout_seconds", 60), 1, 3600)
        restart = self._parse_restart(document.get("restart", {}))
        monitoring = self._parse_monitoring(document.get("monitoring", {}))
        kubernetes = parse_kubernetes(document.get("kubernetes", {}), self.fail)

        return ClusterSpec(
            name=name, source=self.source, host=host, jobs=jobs,
            trainer_module=module, runner=runner, trainer_args=trainer_args,
            training=training, workdir=os.path.expanduser(workdir),
            startup_timeout_seconds=startup, restart=restart, monitoring=monitoring,
            kubernetes=kubernetes, strategy=strategy,
        )

    def _reject_unknown_keys(self, path: str, mapping: dict, allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in allowed:
                where = f"{path}.{show_key(key)}" if path else show_key(key)
                raise self.fail(where, key, "one of the keys " + ", ".join(allowed))

    def _check_host(self, path: str, host: object) -> None:
        if not isinstance(host, str) or not (_HOST_RE.match(host) or _is_ip(host)):
            raise self.fail(path, host, "a host name or IP address")

    def _parse_cluster(self, cluster: object, host: str,
                       strategy: str = PARAMETER_SERVER) -> dict[str, int | tuple[str, ...]]:
        if cluster is SpecError._MISSING:
            raise SpecError.missing(self.source, "cluster", "a mapping of jobs (chief, worker, ps)")
        if not isinstance(cluster, dict):
            raise self.fail("cluster", cluster, "a mapping of jobs (chief, worker, ps)")

        unknown = [show_key(job) for job in cluster if job not in JOBS]
        if unknown:
            hints = [f"{job} -> {_JOB_HINTS[job]}" for job in unknown if job in _JOB_HINTS]
            hint = f" (rename {', '.join(hints)})" if hints else ""
            raise self.fail(
                "cluster", ", ".join(unknown),
                f"only the jobs {', '.join(JOBS)}; unknown jobs {', '.join(unknown)}{hint}",
            )

        jobs: dict[str, int | tuple[str, ...]] = {}
        for job in JOBS:
            if job in cluster:
                jobs[job] = self._parse_job(job, cluster[job])

        if strategy == MULTI_WORKER_MIRRORED:
            self._check_mirrored_jobs(cluster, jobs)
            self._reject_duplicate_addresses(jobs)
            return jobs

        for job, minimum in (("chief", 1), ("worker", 1), ("ps", 1)):
            count = _count(jobs.get(job, 0))
            if count < minimum:
                raise self.fail(
                    f"cluster.{job}", cluster.get(job, SpecError._MISSING),
                    f"at least {minimum} {job} task for ParameterServerStrategy",
                )
        if _count(jobs.get("chief", 0)) != 1:
            raise self.fail("cluster.chief", cluster["chief"], "exactly 1 chief (the coordinator)")
        if _count(jobs.get("evaluator", 0)) > 1:
            raise self.fail("cluster.evaluator", cluster["evaluator"], "0 or 1 evaluator")

        self._reject_duplicate_addresses(jobs)
        return jobs

    def _check_mirrored_jobs(self, cluster: dict, jobs: Mapping[str, int | tuple[str, ...]]) -> None:
        """Checks the jobs of a multi_worker_mirrored spec: workers, an optional chief, no PS."""
        if _count(jobs.get("ps", 0)):
            raise self.fail(
                "cluster.ps", cluster["ps"],
                "no ps job, because MultiWorkerMirroredStrategy keeps every variable on every "
                "worker and has no parameter servers",
            )
        if _count(jobs.get("worker", 0)) < 1:
            raise self.fail(
                "cluster.worker", cluster.get("worker", SpecError._MISSING),
                "at least 1 worker task for MultiWorkerMirroredStrategy",
            )
        if _count(jobs.get("chief", 0)) > 1:
            raise self.fail(
                "cluster.chief", cluster["chief"],
                "0 or 1 chief (a training worker that also writes the checkpoints)",
            )
        if _count(jobs.get("evaluator", 0)) > 1:
            raise self.fail("cluster.evaluator", cluster["evaluator"], "0 or 1 evaluator")

    def _parse_job(self, job: str, value: object) -> int | tuple[str, ...]:
        path = f"cluster.{job}"
        if isinstance(value, bool):
            raise self.fail(path, value, "a task count or a list of host:port")
        if isinstance(value, int):
            if not 0 <= value <= 1024:
                raise self.fail(path, value, "a task count in 0..1024")
            return value
        if isinstance(value, list):
            for index, address in enumerate(value):
                self.check_address(f"{path}[{index}]", address)
            return tuple(value)
        raise self.fail(path, value, "a task count or a list of host:port")

    def check_address(self, path: str, address: object) -> None:
        """Raises SpecError unless `address` is `host:port` with a valid port."""
        if not isinstance(address, str):
            raise self.fail(path, address, "a 'host:port' string")
        try:
            host, port_text = split_address(address)
        except ValueError:
            raise self.fail(path, address, "'host:port', such as '127.0.0.1:2222'") from None
        if not (_HOST_RE.match(host) or _is_ip(host)):
            raise self.fail(path, address, "'host:port' with a valid host name or IP address")
        if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise self.fail(path, address, "a port in 1..65535")

    def _reject_duplicate_addresses(
            self, jobs: Mapping[str, int | tuple[str, ...] | Mapping[int, str]]) -> None:
        """Raises SpecError when two tasks share an address.

        A job is a task count (skipped), a tuple of addresses in index order,
        or a mapping of task index to address (a sparse TF_CONFIG job).
        """
        seen: dict[tuple[str, int], str] = {}
        for job, value in jobs.items():
            if isinstance(value, int):
                continue
            indexed = value.items() if isinstance(value, Mapping) else enumerate(value)
            for index, address in indexed:
                host, port = split_address(address)
                key = (canonical_host(host), int(port))
                task = f"{job}:{index}"
                if key in seen:
                    raise self.fail(
                        f"cluster.{job}[{index}]", address,
                        f"an address no other task uses; {seen[key]} and {task} both use it",
                    )
                seen[key] = task

    def _parse_trainer(self, trainer: object) -> tuple[str, str | None, dict]:
        if trainer is SpecError._MISSING:
            raise SpecError.missing(self.source, "trainer", "a mapping with 'module'")
        if not isinstance(trainer, dict):
            raise self.fail("trainer", trainer, "a mapping with 'module'")
        self._reject_unknown_keys("trainer", trainer, ("module", "runner", "args"))

        module = trainer.get("module", SpecError._MISSING)
        if module is SpecError._MISSING:
            raise SpecError.missing(self.source, "trainer.module", "a Python module path")
        if not isinstance(module, str) or not _MODULE_RE.match(module):
            raise self.fail("trainer.module", module, "a Python module path such as tfps_ha.examples.digits")

        runner = trainer.get("runner")
        if runner is not None and runner not in RUNNERS:
            raise self.fail("trainer.runner", runner, "one of " + ", ".join(RUNNERS))

        args = trainer.get("args", {})
        if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
            raise self.fail("trainer.args", args, "a mapping of option names to values")
        return module, runner, args

    def _parse_training(self, training: object, runner: str | None,
                        strategy: str = PARAMETER_SERVER) -> TrainingSpec:
        if not isinstance(training, dict):
            raise self.fail("training", training, "a mapping")
        self._reject_unknown_keys(
            "training", training,
            ("steps", "steps_per_execution", "checkpoint_every_steps", "steps_per_epoch", "keep_checkpoints",
             "async_checkpoint"),
        )
        steps = self._integer("training.steps", training.get("steps", 1000), 1, 10**12)
        auto_per_execution = training.get("steps_per_execution") == "auto"
        if auto_per_execution and runner == "fit":
            raise self.fail("training.steps_per_execution", "auto",
                            "an integer, because only the custom_loop runner picks the count automatically")
        per_execution = 1 if auto_per_execution else self._integer(
            "training.steps_per_execution", training.get("steps_per_execution", 10), 1, 10**6)
        async_checkpoint = training.get("async_checkpoint", False)
        if not isinstance(async_checkpoint, bool):
            raise self.fail("training.async_checkpoint", async_checkpoint, "true or false")
        every = self._integer(
            "training.checkpoint_every_steps", training.get("checkpoint_every_steps", 100), 1, 10**12)
        keep = self._integer("training.keep_checkpoints", training.get("keep_checkpoints", 3), 1, 1000)
        if every % per_execution:
            raise self.fail(
                "training.checkpoint_every_steps", every,
                f"a multiple of training.steps_per_execution ({per_execution}), so that "
                "checkpoints fall between scheduled functions",
            )

        per_epoch = training.get("steps_per_epoch")
        if per_epoch is not None:
            per_epoch = self._integer("training.steps_per_epoch", per_epoch, 1, 10**12)
            if steps % per_epoch:
                raise self.fail(
                    "training.steps", steps,
                    f"a multiple of training.steps_per_epoch ({per_epoch}), because "
                    "fit runs whole epochs",
                )
            if per_epoch % per_execution:
                raise self.fail(
                    "training.steps_per_epoch", per_epoch,
                    f"a multiple of training.steps_per_execution ({per_execution})",
                )
        elif runner == "fit":
            reason = ("Keras fit under ParameterServerStrategy needs steps_per_epoch"
                      if strategy == PARAMETER_SERVER else
                      "Keras fit needs steps_per_epoch to read the trainer's dataset_fn")
            raise SpecError.missing(self.source, "training.steps_per_epoch", f"a step count, because {reason}")
        return TrainingSpec(steps, per_execution, every, per_epoch, keep,
                            auto_steps_per_execution=auto_per_execution, async_checkpoint=async_checkpoint)

    def _parse_restart(self, restart: object) -> dict[str, RestartPolicySpec]:
        if not isinstance(restart, dict):
            raise self.fail("restart", restart, "a mapping of job names to restart policies")
        self._reject_unknown_keys("restart", restart, JOBS)
        policies = dict(DEFAULT_RESTART)
        for job, value in restart.items():
            path = f"restart.{job}"
            if not isinstance(value, dict):
                raise self.fail(path, value, "a mapping")
            fields = [field.name for field in dataclasses.fields(RestartPolicySpec)]
            self._reject_unknown_keys(path, value, tuple(fields))
            base = policies[job]
            codes = value.get("permanent_exit_codes", list(base.permanent_exit_codes))
            if not isinstance(codes, list) or not all(
                isinstance(code, int) and not isinstance(code, bool) and 1 <= code <= 255 for code in codes
            ):
                raise self.fail(f"{path}.permanent_exit_codes", codes, "a list of exit codes in 1..255")
            initial = self._number(
                f"{path}.backoff_initial_seconds",
                value.get("backoff_initial_seconds", base.backoff_initial_seconds), 0, 3600)
            cap = self._number(
                f"{path}.backoff_max_seconds", value.get("backoff_max_seconds", base.backoff_max_seconds), 0, 3600)
            if cap < initial:
                raise self.fail(f"{path}.backoff_max_seconds", cap, f"at least backoff_initial_seconds ({initial})")
            policies[job] = RestartPolicySpec(
                max_restarts_per_task=self._integer(
                    f"{path}.max_restarts_per_task",
                    value.get("max_restarts_per_task", base.max_restarts_per_task), 0, 10**6),
                max_restarts_per_job=self._integer(
                    f"{path}.max_restarts_per_job",
                    value.get("max_restarts_per_job", base.max_restarts_per_job), 0, 10**6),
                backoff_initial_seconds=initial,
                backoff_max_seconds=cap,
                permanent_exit_codes=tuple(codes),
            )
        return policies

    def _parse_monitoring(self, monitoring: object) -> MonitoringSpec:
        if not isinstance(monitoring, dict):
            raise self.fail("monitoring", monitoring, "a mapping")
        defaults = MonitoringSpec()
        fields = {field.name: field for field in dataclasses.fields(MonitoringSpec)}
        self._reject_unknown_keys("monitoring", monitoring, tuple(fields))
        values: dict[str, Any] = {}
        for name, value in monitoring.items():
            path = f"monitoring.{name}"
            default = getattr(defaults, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise self.fail(path, value, "true or false")
                values[name] = value
            elif isinstance(default, int):
                values[name] = self._integer(path, value, 1, 1000)
            elif name == "collective_timeout_seconds":
                # A heartbeat timeout under 1 s risks declaring busy but healthy workers dead.
                values[name] = self._number(path, value, 1, 86400)
            else:
                values[name] = self._number(path, value, 0.1, 86400)
        return dataclasses.replace(defaults, **values)

    def _integer(self, path: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(path, value, f"an integer in {low}..{high}")
        return value

    def _number(self, path: str, value: object, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise self.fail(path, value, f"a number of seconds in {low:g}..{high:g}")
        return float(value)


def show_key(key: object, limit: int = 60) -> str:
    """Formats a mapping key for a message, with repr() unless it is a short printable string."""
    if isinstance(key, str) and key and len(key) <= limit and key.isprintable():
        return key
    return short_repr(key, limit)


def _count(value: int | tuple[str, ...]) -> int:
    return value if isinstance(value, int) else len(value)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def split_address(address: str) -> tuple[str, str]:
    """Splits `host:port` or `[v6]:port` into host and port text.

    Raises:
      ValueError: There is no `:port` part or no host.
    """
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(address)
        return host, rest[1:]
    host, sep, port = address.rpartition(":")
    if not sep or not host or ":" in host:
        raise ValueError(address)
    return host, port


def canonical_host(host: str) -> str:
    """Maps a host to one form so that duplicate addresses are found.

    Names are lower-cased (a trailing dot dropped) and IP addresses
    compressed, with IPv4-mapped IPv6 addresses as IPv4. Every form of this
    machine becomes 127.0.0.1: localhost, any loopback address (127.0.0.0/8,
    ::1) and the wildcards 0.0.0.0 and ::. TensorFlow's gRPC server listens
    on 0.0.0.0:PORT whatever host its address names (`GrpcServer::Init` in
    TensorFlow 2.21), so two local tasks on one port collide whatever their
    hosts.
    """
    host = host.lower()
    if host.endswith(".") and host != ".":
        host = host[:-1]
    if _is_ip(host):
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        if address.is_loopback or address.is_unspecified:
            return "127.0.0.1"
        return str(address)
    return "127.0.0.1" if host == "localhost" else host


def is_loopback(host: str) -> bool:
    """Returns whether `host` is only reachable from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target_steps(training: TrainingSpec, steps: int, flag: str = "--steps") -> None:
    """Checks a target step count that overrides `training.steps`, with the spec's own rules.

    Raises:
      UsageError: `steps` is below 1 or is not a whole number of fit epochs.
    """
    if steps < 1:
        raise UsageError(f"{flag}: received {steps}; expected a step count of at least 1")
    per_epoch = training.steps_per_epoch
    if per_epoch is not None and steps % per_epoch:
        raise UsageError(
            f"{flag}: received {steps}; expected a multiple of training.steps_per_epoch ({per_epoch}), "
            "because fit runs whole epochs")
