"""Chooses the coordinator's lease backend from its environment."""

from __future__ import annotations

import os

from tfps_ha.lease.base import LeaseBackend
from tfps_ha.lease.file import FileLease

# Set in the coordinator pod by the manifests of `tfps-ha render-k8s`. It is
# `tfps_ha.lease.kubernetes.LEASE_NAME_ENV`, repeated here so that a local run
# never imports the Kubernetes client.
LEASE_NAME_ENV = "TFPS_HA_LEASE_NAME"


def lease_from_environment(lease_path: str) -> tuple[LeaseBackend, list[str]]:
    """Returns the lease backend and the `tfps_ha.lease.keeper` arguments that rebuild it.

    Inside a pod with `TFPS_HA_LEASE_NAME` set, the backend is that
    `coordination.k8s.io/v1` Lease; elsewhere it is the file lease at
    `lease_path`.

    Raises:
      LeaseError: The Kubernetes Lease was named but the API is unreachable.
    """
    if os.environ.get(LEASE_NAME_ENV):
        from tfps_ha.lease.kubernetes import KubernetesLease

        return KubernetesLease.in_cluster(), ["--backend", "kubernetes"]
    return FileLease(lease_path), ["--backend", "file", "--lease", lease_path]


def poll_seconds(backend: LeaseBackend, lease_seconds: float) -> float:
    """Returns how often a standby polls the lease: often for a file, gently for an API server."""
    if isinstance(backend, FileLease):
        return 0.1
    return max(0.1, lease_seconds / 8)
