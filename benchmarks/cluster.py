"""PS and worker server processes on loopback ports, for the benchmarks.

Each task is a separate `python -m tfps_ha task` process, as a launch starts
it, so the coordinator under test does not share its GIL with the servers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from typing import Iterator

import portpicker

from tfps_ha.net import wait_for_ports
from tfps_ha.spec import TaskId
from tfps_ha.supervisor.process import die_with_parent
from tfps_ha.tf_config import ResolvedCluster, render_tf_config

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 120


def pick_cluster(num_workers: int, num_ps: int) -> ResolvedCluster:
    """Returns a cluster with a chief, `num_workers` workers and `num_ps` PS on free loopback ports."""
    jobs = {
        "chief": (f"127.0.0.1:{portpicker.pick_unused_port()}",),
        "worker": tuple(f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(num_workers)),
        "ps": tuple(f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(num_ps)),
    }
    return ResolvedCluster(jobs)


@dataclasses.dataclass
class ServerCluster:
    """Running PS and worker processes.

    Attributes:
      cluster: Every task's address; the chief address is free for the
        coordinator of this process.
      pids: Process id of each PS and worker task.
    """

    cluster: ResolvedCluster
    pids: dict[str, int]

    def cpu_seconds(self) -> float:
        """Returns the CPU time (user and system) used so far by the servers and this process."""
        total = sum(_process_cpu_seconds(pid) for pid in self.pids.values())
        times = os.times()
        return total + times.user + times.system


def _process_cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/PID/stat are utime and stime in clock ticks.
    # The command name (field 2) may contain spaces, so split after its ')'.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_processes(num_workers: int, num_ps: int, log_folder: str | None = None) -> Iterator[ServerCluster]:
    """Starts the PS and worker servers as processes; stops them with SIGKILL on exit.

    Yields:
      The running servers.

    Raises:
      StartupTimeoutError: A server did not accept connections in time.
    """
    cluster = pick_cluster(num_workers, num_ps)
    log_folder = log_folder or tempfile.mkdtemp(prefix="tfps_ha_bench_servers_")
    processes: dict[str, subprocess.Popen] = {}
    try:
        for task in cluster.tasks():
            if task.job not in ("ps", "worker"):
                continue
            log_path = os.path.join(log_folder, f"{task.job}_{task.index}.log")
            processes[str(task)] = _spawn_server(cluster, task, log_path)
        wait_for_ports({str(task): cluster.address(task) for task in cluster.tasks() if task.job != "chief"},
                       STARTUP_TIMEOUT_SECONDS)
        yield ServerCluster(cluster, {task: process.pid for task, process in processes.items()})
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in processes.values():
            process.wait()


def _spawn_server(cluster: ResolvedCluster, task: TaskId, log_path: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps(render_tf_config(cluster, task))
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tfps_ha", "task"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            # Without it, a benchmark killed by a timeout leaves its servers running.
            # Linux sends the signal when the spawning thread ends, so spawn from the main thread.
            preexec_fn=die_with_parent)
