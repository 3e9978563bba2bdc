"""The liveness probe of PS and worker tasks: the port accepts connections and the process is not stopped."""

from __future__ import annotations

import logging

from tfps_ha.net import port_accepts
from tfps_ha.spec import MonitoringSpec
from tfps_ha.supervisor import process as processes
from tfps_ha.supervisor.records import TaskRecord

logger = logging.getLogger(__name__)

STOPPED_STATES = ("T", "t")


def probe_server(record: TaskRecord, now: float, monitoring: MonitoringSpec) -> None:
    """Probes one running PS or worker when its interval has passed; kills it after enough failed probes.

    A task fails a probe when its port refuses connections, or when its
    process is stopped (SIGSTOP, a frozen container): the kernel still
    accepts TCP connections on a stopped process's port, but it serves nothing.
    """
    if now - record.last_port_check < monitoring.port_check_interval_seconds:
        return
    record.last_port_check = now

    stopped = processes.process_state(record.process.pid) in STOPPED_STATES
    if not stopped and port_accepts(record.address, timeout=1.0):
        record.port_failures = 0
        return

    record.port_failures += 1
    if record.port_failures < monitoring.port_failures_before_dead:
        return
    if stopped:
        logger.warning("Task %s has been stopped for %d probes in a row; killing it as dead.",
                       record.task, record.port_failures)
        record.last_cause = "process stopped"
    else:
        logger.warning("Task %s did not accept connections on %s for %d probes in a row; killing it as dead.",
                       record.task, record.address, record.port_failures)
        record.last_cause = "port stopped answering"
    processes.kill_process(record.process)
