"""TCP probes of task ports: the supervisor's second health signal."""

from __future__ import annotations

import socket
import time
from typing import Iterable, Mapping

from tfps_ha.errors import StartupTimeoutError
from tfps_ha.spec import split_address


def port_accepts(address: str, timeout: float = 1.0) -> bool:
    """Returns whether a TCP connection to `host:port` succeeds within `timeout` seconds."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(addresses: Mapping[str, str], deadline_seconds: float, poll_seconds: float = 0.2,
                   alive: Iterable | None = None) -> None:
    """Waits until every task's port accepts connections.

    Args:
      addresses: Task name (such as `worker:1`) to `host:port`.
      deadline_seconds: How long to wait in total.
      poll_seconds: Pause between rounds of probes.
      alive: Optional callable returning task names whose process has died;
        the wait stops early with an error naming them.

    Raises:
      StartupTimeoutError: Some ports did not accept connections in time; the
        message names the tasks and addresses.
    """
    pending = dict(addresses)
    deadline = time.monotonic() + deadline_seconds
    while pending:
        for task, address in list(pending.items()):
            if port_accepts(address, timeout=0.5):
                del pending[task]
        if not pending:
            return
        if alive is not None:
            dead = sorted(set(alive()) & set(pending))
            if dead:
                raise StartupTimeoutError(
                    f"task {', '.join(dead)} exited before its port "
                    f"{', '.join(pending[task] for task in dead)} accepted connections"
                )
        if time.monotonic() >= deadline:
            listing = ", ".join(f"{task} at {address}" for task, address in sorted(pending.items()))
            raise StartupTimeoutError(
                f"timed out after {deadline_seconds:g} s waiting for {listing} to accept "
                "connections; check that the task started and that the address is reachable"
            )
        time.sleep(poll_seconds)
