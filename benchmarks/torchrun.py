"""Worker recovery time of the kit against torchrun's elastic agent, both on the digits data.

Kit side: `tfps-ha launch cluster_specs/local.yaml` with a chaos plan that
SIGKILLs a worker three times. The supervisor times each recovery from the
kill to the next step advance (`recoveries` in `summary.json`).

Torchrun side: `benchmarks/torch_job.py` under
`python -m torch.distributed.run --nproc-per-node=2 --max-restarts=N` with
c10d rendezvous on 127.0.0.1. The job checkpoints every 50 steps, as the kit's
spec does, and resumes from the checkpoint when the agent restarts the worker
group. This module SIGKILLs rank 1 at planned steps and times each recovery
from the kill to the first training step of the restarted group.

Both sides run on the same machine, one after the other. In full mode the
launches alternate between the kit and torchrun, so a change in load affects
both alike. PyTorch is not a dependency of the kit. The torchrun side runs in
the interpreter named by TFPS_HA_TORCH_PYTHON, or in the current one if it can
import torch, and is skipped otherwise.

NOTE: the two sides are timed at different resolutions. The kit's supervisor
polls the coordinator's heartbeat every 0.2 s, and the coordinator writes it
about once a second, so a kit time can be up to about 1.2 s late. The torch job
stamps every step, so a torchrun time is exact to one step (20 ms).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Sequence

import portpicker

from benchmarks.recovery import REPO_ROOT, run_launch

logger = logging.getLogger(__name__)

TORCH_PYTHON_VARIABLE = "TFPS_HA_TORCH_PYTHON"
TORCH_JOB = os.path.join(REPO_ROOT, "benchmarks", "torch_job.py")
UNIT = "s from SIGKILL of a worker to the next step"

KIT_PLAN = "worker:0@step=150,worker:1@step=300,worker:0@step=450"
# The torch job checkpoints every 50 steps, like cluster_specs/local.yaml. Its
# kills land midway between two checkpoints, the average case for a job that
# resumes from its last checkpoint. The kit's worker kills lose no steps at all,
# so the kit's kill steps do not need that choice.
TORCH_KILL_STEPS = (175, 325, 475)
TORCH_STEPS = 600
TORCH_CHECKPOINT_EVERY = 50
TORCH_PROCESSES = 2
# The kit's digits job runs at about 48 steps/s (the README's example output),
# so each torch step takes at least 1/50 s. Unpaced, a torch step took about
# 3 ms on a 2-core machine, and the whole run would last only a few seconds.
TORCH_STEP_SECONDS = 0.02

POLL_SECONDS = 0.01
PROBE_TIMEOUT_SECONDS = 120
FIRST_STEP_TIMEOUT_SECONDS = 180
RECOVERY_TIMEOUT_SECONDS = 180
FINISH_TIMEOUT_SECONDS = 180
LOG_TAIL_LINES = 5


@dataclasses.dataclass(frozen=True)
class ProgressLine:
    """One line of the torch job's progress file (see benchmarks/torch_job.py).

    Attributes:
      ts: Wall-clock time of the event in seconds.
      event: `start` (the process resumed at `step`) or `step` (a step finished).
      step: The step count after the event.
      rank: The rank of the writing process.
      restart: The agent's restart count (TORCHELASTIC_RESTART_COUNT).
      pid: The writing process.
    """

    ts: float
    event: str
    step: int
    rank: int
    restart: int
    pid: int


@dataclasses.dataclass(frozen=True)
class Kill:
    """One SIGKILL that the watcher sent to a rank of the torch job.

    Attributes:
      planned_step: The step the plan named.
      killed_at: Wall-clock time just before the signal was sent.
      pid: The process killed.
      restart: The restart count of the worker group that was killed.
    """

    planned_step: int
    killed_at: float
    pid: int
    restart: int


@dataclasses.dataclass(frozen=True)
class Recovery:
    """The recovery from one kill, as read from the progress file.

    Attributes:
      seconds: From the kill to the first finished step of a restarted group.
      start_seconds: From the kill to the first `start` line of that group,
        the part spent restarting processes, rendezvous and loading the checkpoint.
      step_at_kill: The highest step any rank had finished at the kill.
      resumed_step: The step the restarted group resumed from.
      lost_steps: `step_at_kill - resumed_step`, the steps done again.
    """

    seconds: float
    start_seconds: float
    step_at_kill: int
    resumed_step: int
    lost_steps: int


def parse_progress_line(text: str) -> ProgressLine:
    """Parses one JSON line of the progress file.

    Raises:
      ValueError: The line is not a JSON object with the six fields.
    """
    try:
        record = json.loads(text)
        return ProgressLine(ts=float(record["ts"]), event=str(record["event"]), step=int(record["step"]),
                            rank=int(record["rank"]), restart=int(record["restart"]), pid=int(record["pid"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"invalid progress line {text!r}: {error}; expected a JSON object with "
                         "ts, event, step, rank, restart and pid") from None


class ProgressReader:
    """Reads the lines that were appended to a progress file since the previous call.

    A last line without its newline is kept back until the rest of it arrives.
    """

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[ProgressLine]:
        """Returns the complete lines appended since the last call; none while the file does not exist.

        Raises:
          ValueError: A line is not a valid progress line.
        """
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [parse_progress_line(line.decode("utf-8")) for line in complete if line.strip()]


def measure_recovery(kill: Kill, lines: Sequence[ProgressLine]) -> Recovery:
    """Times one kill's recovery from the whole progress file.

    The recovery ends at the first `step` line of a worker group restarted
    after the kill, which is the first step the job advances after it. The
    resumed step is the step of that group's `start` lines.

    Raises:
      RuntimeError: No restarted group finished a step, or none reported where it resumed.
    """
    step_at_kill = max((line.step for line in lines if line.ts <= kill.killed_at), default=0)
    later = [line for line in lines if line.restart > kill.restart]
    steps = [line for line in later if line.event == "step"]
    if not steps:
        raise RuntimeError(f"no training step after the kill of pid {kill.pid} at step {step_at_kill} "
                           f"(restart {kill.restart}); expected a step line with a higher restart count")
    first_step = min(steps, key=lambda line: line.ts)
    starts = [line for line in later if line.event == "start" and line.restart == first_step.restart]
    if not starts:
        raise RuntimeError(f"the worker group of restart {first_step.restart} wrote steps but no start line")
    resumed_step = min(line.step for line in starts)
    started = min(line.ts for line in starts)
    return Recovery(seconds=first_step.ts - kill.killed_at, start_seconds=started - kill.killed_at,
                    step_at_kill=step_at_kill,
                    resumed_step=resumed_step, lost_steps=step_at_kill - resumed_step)


def find_torch_python() -> tuple[str | None, str]:
    """Finds the Python interpreter for the torchrun side.

    Returns:
      The interpreter and torch's version, or None and the reason to skip.

    Raises:
      RuntimeError: TFPS_HA_TORCH_PYTHON names a file that is not executable.
    """
    configured = os.environ.get(TORCH_PYTHON_VARIABLE)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise RuntimeError(f"{TORCH_PYTHON_VARIABLE}: received {configured!r}; "
                               "expected the path of a Python interpreter that can import torch")
        candidate, origin = configured, f"{TORCH_PYTHON_VARIABLE}={configured}"
    else:
        candidate, origin = sys.executable, f"the current interpreter {sys.executable}"

    version = _torch_version(candidate)
    if version is None:
        return None, f"torch not installed in {origin}; set {TORCH_PYTHON_VARIABLE} to a Python that has it"
    return candidate, version


def _torch_version(python: str) -> str | None:
    try:
        completed = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"importing torch in {python} timed out after {PROBE_TIMEOUT_SECONDS} s") from None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip().splitlines()[-1]


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:
            stat = stream.read()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so the fields start after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return stream.read().replace(b"\0", b" ").decode("utf-8", errors="replace")
    except OSError:
        return ""


def _child_pids(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent_pid(int(entry)) == parent:
            children.append(int(entry))
    return children


class TorchrunRun:
    """One torchrun launch of the torch job, with the kills that the watcher sends.

    Attributes:
      workdir: Folder with the progress file, the checkpoint and torchrun's log.
      kills: The kills sent so far.
      lines: Every progress line read so far.
    """

    def __init__(self, python: str, kill_steps: Sequence[int], workdir: str):
        self.python = python
        self.kill_steps = list(kill_steps)
        self.workdir = workdir
        self.progress_path = os.path.join(workdir, "progress.jsonl")
        self.log_path = os.path.join(workdir, "torchrun.log")
        self.kills: list[Kill] = []
        self.lines: list[ProgressLine] = []
        self._reader = ProgressReader(self.progress_path)
        self._process: subprocess.Popen | None = None

    def command(self, port: int) -> list[str]:
        """Returns the torchrun command line, with its c10d rendezvous on 127.0.0.1:`port`."""
        return [self.python, "-m", "torch.distributed.run", f"--nproc-per-node={TORCH_PROCESSES}",
                f"--max-restarts={len(self.kill_steps)}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}", "--local-addr=127.0.0.1",
                f"--log-dir={os.path.join(self.workdir, 'torchelastic')}", TORCH_JOB, "--progress", self.progress_path,
                "--checkpoint", os.path.join(self.workdir, "checkpoint.pt"), "--steps", str(TORCH_STEPS),
                "--checkpoint-every", str(TORCH_CHECKPOINT_EVERY), "--min-step-seconds", str(TORCH_STEP_SECONDS)]

    def run(self) -> list[Recovery]:
        """Runs torchrun to the end, killing rank 1 at each planned step.

        Returns:
          One recovery per kill, in the order of the kills.

        Raises:
          RuntimeError: Torchrun failed, or a wait passed its deadline.
        """
        # GLOO_SOCKET_IFNAME keeps gloo on loopback, which it would otherwise pick by host name.
        # With the rendezvous store shared between the agent and the workers (the default),
        # a restarted group read the address of the previous group's rank 0 and failed
        # with "Connection refused" in gloo's connectFullMesh (torch 2.13.0, see
        # https://github.com/pytorch/pytorch/issues/135712). With sharing off, rank 0 of
        # each group hosts a store of its own.
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
        command = self.command(portpicker.pick_unused_port())
        logger.info("Starting torchrun with kills at steps %s; workdir %s.", self.kill_steps, self.workdir)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_for(lambda: self._max_step(restart=0) >= 1, FIRST_STEP_TIMEOUT_SECONDS,
                           "the first training step")
            for planned_step in self.kill_steps:
                restart = len(self.kills)
                self._wait_for(lambda: self._max_step(restart) >= planned_step, RECOVERY_TIMEOUT_SECONDS,
                               f"step {planned_step} in the worker group of restart {restart}")
                self._kill_rank_1(planned_step, restart)
                self._wait_for(lambda: self._has_step(restart + 1), RECOVERY_TIMEOUT_SECONDS,
                               f"a training step after the kill at step {planned_step}")
            self._wait_for_exit()
        finally:
            self._stop()
        return [measure_recovery(kill, self.lines) for kill in self.kills]

    def _max_step(self, restart: int) -> int:
        return max((line.step for line in self.lines if line.restart == restart and line.event == "step"), default=0)

    def _has_step(self, restart: int) -> bool:
        return any(line.restart >= restart and line.event == "step" for line in self.lines)

    def _wait_for(self, condition: Callable[[], bool], timeout: float, description: str) -> None:
        """Reads progress lines until `condition` holds.

        Raises:
          RuntimeError: Torchrun exited, the worker group restarted without a
            kill, or `timeout` seconds passed; the message contains `description`.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.lines.extend(self._reader.read_new())
            restarts = max((line.restart for line in self.lines), default=0)
            if restarts > len(self.kills):
                raise RuntimeError(f"torchrun restarted the worker group {restarts} times after "
                                   f"{len(self.kills)} kills while waiting for {description}; see {self.log_path}")
            if condition():
                return
            if self._process.poll() is not None:
                raise RuntimeError(f"torchrun exited with {self._process.returncode} while waiting for {description}: "
                                   f"{self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {description}; see {self.workdir}")
            time.sleep(POLL_SECONDS)

    def _kill_rank_1(self, planned_step: int, restart: int) -> None:
        pids = {line.pid for line in self.lines if line.rank == 1 and line.restart == restart}
        if len(pids) != 1:
            raise RuntimeError(f"expected one rank 1 process in the worker group of restart {restart}; "
                               f"the progress file names {sorted(pids)}")
        pid = pids.pop()
        # Only a child of this torchrun is killed, never a process that reused the pid.
        if _parent_pid(pid) != self._process.pid:
            raise RuntimeError(f"rank 1 (pid {pid}) is not a child of torchrun (pid {self._process.pid}); "
                               "not killing it")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        self.kills.append(Kill(planned_step=planned_step, killed_at=killed_at, pid=pid, restart=restart))
        logger.info("Sent SIGKILL to rank 1 (pid %d) at planned step %d.", pid, planned_step)

    def _wait_for_exit(self) -> None:
        try:
            code = self._process.wait(timeout=FINISH_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {FINISH_TIMEOUT_SECONDS} s waiting for torchrun to finish "
                               f"{TORCH_STEPS} steps; see {self.workdir}") from None
        self.lines.extend(self._reader.read_new())
        if code != 0:
            raise RuntimeError(f"torchrun exited with {code}: {self._log_tail()}")

    def _stop(self) -> None:
        """Kills torchrun's process group and every worker of this run that is still alive.

        The workers run in sessions of their own, so killing torchrun's group
        does not reach them. A worker counts as part of this run while it is a
        child of torchrun or while its command line names this run's progress file.
        """
        if self._process is None:
            return
        workers = set(_child_pids(self._process.pid))
        workers.update(line.pid for line in self.lines)
        if self._process.poll() is None:
            logger.warning("Killing torchrun (pid %d).", self._process.pid)
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()
        for pid in sorted(workers):
            if self.progress_path in _command_line(pid):
                logger.warning("Killing torch job worker pid %d, which outlived torchrun.", pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _log_tail(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as stream:
            lines = [line.strip() for line in stream if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"


def _kit_worker_recoveries(summary: dict) -> tuple[list[float], int]:
    """Returns the kit's worker recovery seconds and the number of worker kills in a launch summary."""
    workers = [item for item in summary.get("recoveries", []) if item["task"].startswith("worker")]
    return [item["recovery_seconds"] for item in workers if "recovery_seconds" in item], len(workers)


def _median_or_raise(values: Iterable[float], side: str) -> float:
    values = list(values)
    if not values:
        raise RuntimeError(f"no {side} recovery was timed")
    return statistics.median(values)


def recovery_vs_torchrun(quick: bool) -> dict:
    """Runs the benchmark and returns its result line's fields.

    Args:
      quick: One launch per side instead of three.

    Returns:
      `{"skipped": REASON}` without a Python that has torch, else the ratio
      of the kit's median worker recovery to torchrun's, both sides' medians
      (`kit`, `baseline`), `unit` and `details`.

    Raises:
      RuntimeError: A launch failed or timed out.
    """
    python, version = find_torch_python()
    if python is None:
        return {"skipped": version}

    load_before = os.getloadavg()
    rounds = 1 if quick else 3
    kit_seconds: list[float] = []
    kit_kills = 0
    kit_lost_steps = []
    torch_recoveries: list[Recovery] = []
    torch_wall_seconds = []
    for _ in range(rounds):
        summary = run_launch(KIT_PLAN)
        seconds, kills = _kit_worker_recoveries(summary)
        kit_seconds.extend(seconds)
        kit_kills += kills
        kit_lost_steps.append(summary.get("lost_steps", 0))

        started = time.monotonic()
        workdir = tempfile.mkdtemp(prefix="tfps_ha_bench_torchrun_")
        torch_recoveries.extend(TorchrunRun(python, TORCH_KILL_STEPS, workdir).run())
        torch_wall_seconds.append(round(time.monotonic() - started, 1))

    kit = _median_or_raise(kit_seconds, "kit worker")
    baseline = _median_or_raise((item.seconds for item in torch_recoveries), "torchrun")
    return {
        "ratio": kit / baseline, "kit": kit, "baseline": baseline, "unit": UNIT,
        "details": {
            "kit_seconds": kit_seconds, "kit_median_seconds": kit, "kit_kills": kit_kills,
            "kit_timed_kills": len(kit_seconds), "kit_lost_steps_per_launch": kit_lost_steps,
            "kit_plan": KIT_PLAN, "kit_job": "cluster_specs/local.yaml (digits, fit, 2 workers, 1 PS)",
            "torchrun_seconds": [round(item.seconds, 3) for item in torch_recoveries],
            "torchrun_median_seconds": baseline, "torchrun_kills": len(torch_recoveries),
            "torchrun_start_seconds": [round(item.start_seconds, 3) for item in torch_recoveries],
            "torchrun_lost_steps": [item.lost_steps for item in torch_recoveries],
            "torchrun_steps_at_kill": [item.step_at_kill for item in torch_recoveries],
            "torchrun_resumed_steps": [item.resumed_step for item in torch_recoveries],
            "torchrun_wall_seconds": torch_wall_seconds, "torchrun_kill_steps": list(TORCH_KILL_STEPS),
            "torchrun_job": (f"benchmarks/torch_job.py, DDP over gloo, {TORCH_PROCESSES} processes, "
                             f"{TORCH_STEPS} steps of at least {TORCH_STEP_SECONDS} s, checkpoint every "
                             f"{TORCH_CHECKPOINT_EVERY} steps, torch {version}"),
            "rounds": rounds, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        },
    }
