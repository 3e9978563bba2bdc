"""TCP probes of task ports: the supervisor's second health signal."""

from __future__ import annotations

import errno
import socket
import time
from typing import Mapping

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


def wait_for_ports(addresses: Mapping[str, str], deadline_seconds: float, poll_seconds: float = 0.2) -> None:
    """Waits until every task's port accepts connections.

    Args:
      addresses: Task name (such as `worker:1`) to `host:port`.
      deadline_seconds: How long to wait in total.
      poll_seconds: Pause between rounds of probes.

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
        if time.monotonic() >= deadline:
            listing = ", ".join(f"{task} at {address}" for task, address in sorted(pending.items()))
            raise StartupTimeoutError(
                f"timed out after {deadline_seconds:g} s waiting for {listing} to accept "
                "connections; check that the task started and that the address is reachable"
            )
        time.sleep(poll_seconds)


def port_in_use(address: str) -> bool:
    """Returns whether another process already listens on a local `host:port`.

    Only an `EADDRINUSE` from bind counts; an address that is not local to this
    machine cannot be bound at all and is reported as free. The probe sets
    SO_REUSEADDR, as gRPC servers do, so connections of a dead process left
    in TIME_WAIT do not count as a listener.
    """
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def free_port(host: str) -> int:
    """Returns a TCP port that is free on the local `host` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
