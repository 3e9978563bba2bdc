"""Spawning and stopping task processes, one log file per attempt."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Asks Linux to SIGKILL this child when the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # Not Linux: orphans are then reaped by stop_all at a normal exit.


def spawn_task(argv: list[str], tf_config: dict, log_path: str, extra_env: dict | None = None) -> subprocess.Popen:
    """Starts `tfps-ha task` with TF_CONFIG, its output appended to `log_path`.

    The child gets its own session, so a Ctrl-C in the terminal reaches only
    the supervisor, which then stops the tasks in order.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps(tf_config)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if extra_env:
        env.update(extra_env)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tfps_ha", "task", *argv],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )


def stop_process(process: subprocess.Popen, grace_seconds: float, name: str) -> int | None:
    """Sends SIGTERM, waits up to `grace_seconds`, then SIGKILL; returns the exit code."""
    if process.poll() is not None:
        return process.returncode
    try:
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        logger.warning("Task %s did not stop within %.0f s of SIGTERM; sending SIGKILL.", name, grace_seconds)
        process.kill()
        return process.wait(timeout=30)
    except ProcessLookupError:
        return process.poll()


def kill_process(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Sends `sig` to a live process; a process that already exited is left alone."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass


def process_state(pid: int) -> str | None:
    """Returns the process state letter of `pid` from /proc (`T` when stopped), or None when it is gone.

    Where /proc is missing (not Linux), a live process reads as running (`R`).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return fields[0]
    except FileNotFoundError:
        if not os.path.exists("/proc/self/stat"):
            try:
                os.kill(pid, 0)
                return "R"
            except ProcessLookupError:
                return None
        return None
    except (OSError, IndexError):
        return None
