"""The lease contract shared by every leader-election backend.

A lease record names its holder, an epoch and an expiry time. Coordinators
compete for it; the one that holds an unexpired lease is the leader.

Contract, which every backend keeps and `tests/lease_contract.py` checks:
  * `try_acquire` takes a lease that is absent, expired or released, and
    increments the epoch on every such change of leadership. A holder that
    already holds the lease keeps it, with the same epoch.
  * `renew` extends the expiry only for the current holder at the current
    epoch; anyone else gets `LeadershipLostError`.
  * `check` is the fence: a checkpoint save calls it first and is rejected
    with `LeadershipLostError` unless the caller holds the lease at its epoch
    with at least `min_remaining_seconds` left.
  * `release` ends the caller's lease at once (a clean exit), so a standby
    does not wait for the expiry. `revoke` does the same for a holder that
    the caller knows is dead, such as a process it has reaped.
  * Times are wall-clock seconds since the epoch (`time.time()`), because
    candidates run in different processes and, on Kubernetes, on different
    hosts. Backends take a `clock` so tests can move time.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Callable


class LeaseError(Exception):
    """The lease store could not be read or written (a timeout or I/O error)."""


class LeadershipLostError(Exception):
    """The caller no longer holds the lease at its epoch.

    Attributes:
      holder: The caller's holder id.
      epoch: The epoch the caller believed it held.
      current: The lease record now stored, or None when there is none.
    """

    def __init__(self, holder: str, epoch: int, current: LeaseRecord | None):
        self.holder = holder
        self.epoch = epoch
        self.current = current
        if current is None:
            now_text = "no lease is stored"
        elif current.holder == holder and current.epoch == epoch:
            now_text = (f"its lease expired or has too little time left (expiry at "
                        f"{time.strftime('%H:%M:%S', time.localtime(current.expires_at))}), so a standby may "
                        "take over")
        else:
            now_text = f"the lease is held by {current.holder!r} at epoch {current.epoch}"
        super().__init__(f"{holder!r} lost leadership of epoch {epoch}: {now_text}")


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """One stored lease.

    Attributes:
      holder: Id of the candidate that holds the lease, unique per process.
      epoch: Leadership epoch; it grows by one at every change of leadership.
      acquired_at: Wall time at which this epoch began.
      renewed_at: Wall time of the last renewal.
      expires_at: Wall time after which any candidate may take the lease.
    """

    holder: str
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        """Returns whether the lease is free to take at wall time `now`."""
        return now >= self.expires_at

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> LeaseRecord:
        """Builds a record from `to_json` output.

        Raises:
          LeaseError: A field is missing or has the wrong type.
        """
        try:
            return cls(holder=str(value["holder"]), epoch=int(value["epoch"]),
                       acquired_at=float(value["acquired_at"]), renewed_at=float(value["renewed_at"]),
                       expires_at=float(value["expires_at"]))
        except (KeyError, TypeError, ValueError) as error:
            raise LeaseError(f"invalid lease record {value!r}: {error}") from None


class LeaseBackend(abc.ABC):
    """A store of one lease; see the module docstring for the contract."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock

    @abc.abstractmethod
    def read(self) -> LeaseRecord | None:
        """Returns the stored lease, or None when there is none.

        Raises:
          LeaseError: The store could not be read.
        """

    @abc.abstractmethod
    def try_acquire(self, holder: str, duration_seconds: float) -> LeaseRecord | None:
        """Takes the lease for `holder` when it is free; returns the new record.

        Args:
          holder: The candidate's id.
          duration_seconds: How long the lease lasts without a renewal.

        Returns:
          The record `holder` now holds (a new epoch when leadership changed,
          the same epoch when `holder` already held it), or None when another
          holder's lease has not expired.

        Raises:
          LeaseError: The store could not be read or written.
        """

    @abc.abstractmethod
    def renew(self, holder: str, epoch: int, duration_seconds: float) -> LeaseRecord:
        """Extends the lease of `holder` at `epoch` by `duration_seconds` from now.

        Raises:
          LeadershipLostError: `holder` does not hold the lease at `epoch`, or
            its lease expired (a standby may already be restoring).
          LeaseError: The store could not be read or written.
        """

    @abc.abstractmethod
    def check(self, holder: str, epoch: int, min_remaining_seconds: float = 0.0) -> LeaseRecord:
        """Fences a write: returns the record if `holder` leads at `epoch`.

        Raises:
          LeadershipLostError: `holder` does not hold the lease at `epoch`, or
            it has less than `min_remaining_seconds` left.
          LeaseError: The store could not be read.
        """

    @abc.abstractmethod
    def release(self, holder: str, epoch: int) -> bool:
        """Ends the lease of `holder` at `epoch` now; returns whether it did.

        Raises:
          LeaseError: The store could not be read or written.
        """

    @abc.abstractmethod
    def revoke(self, holder: str) -> bool:
        """Ends the lease held by `holder`, known to be dead; returns whether it did.

        Raises:
          LeaseError: The store could not be read or written.
        """


# -- pure transitions, shared by the backends -----------------------------------
# Each takes the stored record and returns the record to store, or raises.
# A backend only adds its own atomic read-modify-write around them.


def acquired(current: LeaseRecord | None, holder: str, duration_seconds: float,
             now: float) -> LeaseRecord | None:
    """Returns the record after `holder` tries to acquire, or None when it is held by another."""
    if current is not None and current.holder == holder and not current.expired(now):
        return current
    if current is not None and not current.expired(now):
        return None

    epoch = current.epoch + 1 if current is not None else 1
    return LeaseRecord(holder=holder, epoch=epoch, acquired_at=now, renewed_at=now,
                       expires_at=now + duration_seconds)


def renewed(current: LeaseRecord | None, holder: str, epoch: int, duration_seconds: float,
            now: float) -> LeaseRecord:
    """Returns the renewed record.

    Raises:
      LeadershipLostError: `holder` does not hold an unexpired lease at `epoch`.
    """
    checked(current, holder, epoch, now)
    return dataclasses.replace(current, renewed_at=now, expires_at=now + duration_seconds)


def checked(current: LeaseRecord | None, holder: str, epoch: int, now: float,
            min_remaining_seconds: float = 0.0) -> LeaseRecord:
    """Returns `current` when `holder` leads at `epoch` with enough time left.

    Raises:
      LeadershipLostError: It does not.
    """
    if current is None or current.holder != holder or current.epoch != epoch:
        raise LeadershipLostError(holder, epoch, current)
    if current.expires_at - now < min_remaining_seconds or current.expired(now):
        raise LeadershipLostError(holder, epoch, current)
    return current


def released(current: LeaseRecord | None, holder: str, epoch: int | None, now: float) -> LeaseRecord | None:
    """Returns the record with its expiry moved to `now`, or None when `holder` does not hold it.

    Args:
      epoch: The epoch to release, or None for any epoch `holder` holds.
    """
    if current is None or current.holder != holder or current.expired(now):
        return None
    if epoch is not None and current.epoch != epoch:
        return None
    return dataclasses.replace(current, expires_at=now)
