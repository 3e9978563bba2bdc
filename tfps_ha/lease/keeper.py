"""The lease keeper: a small process that renews a coordinator's lease while the coordinator runs.

A renewal thread inside the coordinator would need Python's global
interpreter lock, and TensorFlow calls can hold that lock for seconds, long
enough for a healthy leader to lose its lease. The keeper is a separate
process, so it renews on time. It renews only while its parent lives and is
not stopped: a coordinator paused with SIGSTOP, or killed, lets its lease
expire. A hung but running coordinator keeps its lease; the supervisor's
heartbeat check finds and kills it.

Protocol: on leadership loss the keeper writes one line `LOST <reason>` to
its standard output, which the coordinator reads, then exits with 3. It
logs renewal errors on standard error.

Run it as `python -m tfps_ha.lease.keeper --backend file --lease PATH
--holder ID --epoch N --seconds S --parent PID`; `--backend kubernetes` uses
the Lease named by the pod's `TFPS_HA_LEASE_*` variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from tfps_ha.lease import LeaseBackend, LeaseError, LeadershipLostError
from tfps_ha.lease.file import FileLease
from tfps_ha.supervisor.process import process_state

logger = logging.getLogger(__name__)

EXIT_LOST = 3


def keep(lease: LeaseBackend, holder: str, epoch: int, seconds: float, parent: int) -> int:
    """Renews the lease every quarter of `seconds` while `parent` runs; returns the exit code."""
    interval = seconds / 4
    while True:
        state = process_state(parent)
        if state is None or state == "Z" or os.getppid() != parent:
            return 0
        if state not in ("T", "t"):
            try:
                lease.renew(holder, epoch, seconds)
            except LeadershipLostError as error:
                print(f"LOST {error}", flush=True)
                return EXIT_LOST
            except LeaseError as error:
                logger.warning("Lease keeper could not renew the lease (%s); retrying in %.1f s.", error, interval)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfps_ha.lease.keeper", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("file", "kubernetes"), default="file",
                        help="where the lease is stored")
    parser.add_argument("--lease", help="path of the lease file (file backend)")
    parser.add_argument("--holder", required=True, help="holder id of the coordinator")
    parser.add_argument("--epoch", required=True, type=int, help="epoch the coordinator leads")
    parser.add_argument("--seconds", required=True, type=float, help="lease duration in seconds")
    parser.add_argument("--parent", required=True, type=int, help="pid of the coordinator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.backend == "kubernetes":
        from tfps_ha.lease.kubernetes import KubernetesLease

        backend: LeaseBackend = KubernetesLease.in_cluster()
    elif args.lease:
        backend = FileLease(args.lease)
    else:
        parser.error("--lease is required with --backend file")
    return keep(backend, args.holder, args.epoch, args.seconds, args.parent)


if __name__ == "__main__":
    sys.exit(main())
