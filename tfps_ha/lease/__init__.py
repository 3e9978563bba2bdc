"""Leader election for the coordinator: a lease with a holder, an epoch and an expiry."""

from tfps_ha.lease.base import LeaseBackend, LeaseError, LeaseRecord, LeadershipLostError

__all__ = ["LeaseBackend", "LeaseError", "LeaseRecord", "LeadershipLostError"]
