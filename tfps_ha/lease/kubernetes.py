"""A lease in a `coordination.k8s.io/v1` Lease: leader election across the pods of a job.

The record maps onto the Lease like this:

| LeaseRecord | Lease                                                       |
|-------------|-------------------------------------------------------------|
| holder      | spec.holderIdentity                                         |
| epoch       | spec.leaseTransitions                                       |
| acquired_at | spec.acquireTime                                            |
| renewed_at  | spec.renewTime                                              |
| expires_at  | annotation `tfps-ha/expires-at`, and spec.leaseDurationSeconds rounded up |

The epoch is `leaseTransitions` because it is the Lease's own integer for
changes of holder, so `kubectl get lease -o yaml` shows it where readers look.
It counts acquisitions, so it is one more than client-go's count of holder
changes. The API server does not keep it monotonic, but the compare-and-swap
below does. The expiry needs the annotation because `leaseDurationSeconds` is
a whole number of at least 1, so it can express neither "expired now" after a
release nor a fractional duration. The spec fields are still kept consistent:
a reader that ignores the annotation sees the same holder and epoch, and an
expiry at most one second late. A Lease written by another tool (no
annotation) expires at renewTime + leaseDurationSeconds, and one without a
holder is free.

Every change is a read-modify-write: a GET, one of the pure transitions of
`tfps_ha.lease.base`, and a PUT that carries the resourceVersion of the GET
(or a POST when no Lease exists). The API server answers 409 Conflict when the
Lease changed in between, or 409 AlreadyExists when another client created it
first. Either way someone else won the race, so the backend reads the Lease
again and reruns the transition, which then usually finds another holder.

Times come from the backend's `clock` and are stored with microsecond
precision, as the Lease's MicroTime fields hold them. Across pods the lease is
only as good as the nodes' clock synchronisation: a node whose clock is ahead
by S seconds sees every lease expire S seconds early.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import time
from typing import Callable, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tfps_ha.lease import base
from tfps_ha.lease.base import LeaseBackend, LeaseError, LeaseRecord

logger = logging.getLogger(__name__)

EXPIRES_AT_ANNOTATION = "tfps-ha/expires-at"
# Environment of the coordinator pod that `tfps-ha render-k8s` writes.
LEASE_NAME_ENV = "TFPS_HA_LEASE_NAME"
LEASE_NAMESPACE_ENV = "TFPS_HA_LEASE_NAMESPACE"
POD_NAME_ENV = "TFPS_HA_POD_NAME"
# The pod UID differs between a pod and its replacement of the same name, so
# a holder id built from it distinguishes the two.
POD_UID_ENV = "TFPS_HA_POD_UID"
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
_MICRO_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

_Result = TypeVar("_Result")


class KubernetesLease(LeaseBackend):
    """The lease stored in one Lease object.

    Args:
      name: The Lease's name, such as `JOB-leader`.
      namespace: The Lease's namespace.
      configuration: Where the API server is and how to authenticate to it.
      request_timeout_seconds: Deadline of each HTTP request. Keep it below a
        quarter of the lease duration, the renewal interval.
      max_conflicts: Write conflicts in a row after which an operation raises
        `LeaseError`.
      clock: Wall-clock source, replaced in tests.
    """

    def __init__(self, name: str, namespace: str, configuration: client.Configuration,
                 request_timeout_seconds: float = 1.0, max_conflicts: int = 8,
                 clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.name = name
        self.namespace = namespace
        self.host = configuration.host
        self.request_timeout_seconds = request_timeout_seconds
        self.max_conflicts = max_conflicts
        # The caller's lease loop retries at its next tick; urllib3's own
        # retries would stretch one call past the renewal interval.
        configuration = copy.deepcopy(configuration)
        configuration.retries = 0
        self._api = client.CoordinationV1Api(_MicroTimeApiClient(configuration))

    @classmethod
    def in_cluster(cls, name: str | None = None, namespace: str | None = None,
                   clock: Callable[[], float] = time.time, **kwargs) -> KubernetesLease:
        """Builds the backend inside a pod, from its ServiceAccount and the `TFPS_HA_LEASE_*` variables.

        Args:
          name: The Lease's name; default `$TFPS_HA_LEASE_NAME`.
          namespace: Default `$TFPS_HA_LEASE_NAMESPACE`, else the pod's own namespace.
          clock: Wall-clock source.
          **kwargs: Passed to the constructor.

        Raises:
          LeaseError: The name is not set, or this process does not run in a pod.
        """
        name = name or os.environ.get(LEASE_NAME_ENV)
        if not name:
            raise LeaseError(f"no Lease name: {LEASE_NAME_ENV} is not set; run the coordinator from the "
                             "manifests of 'tfps-ha render-k8s', which set it, or pass the name")
        namespace = namespace or os.environ.get(LEASE_NAMESPACE_ENV) or _pod_namespace()
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as error:
            raise LeaseError(f"cannot reach the Kubernetes API from this process: {error}; the Lease "
                             "backend runs in a pod with a ServiceAccount token") from None
        return cls(name, namespace, configuration, clock=clock, **kwargs)

    def read(self) -> LeaseRecord | None:
        return _record_of(self._get(), self._where())

    def try_acquire(self, holder: str, duration_seconds: float) -> LeaseRecord | None:
        def decide(current: LeaseRecord | None) -> tuple[LeaseRecord | None, LeaseRecord | None]:
            record = base.acquired(current, holder, duration_seconds, self.clock())
            if record is None or record == current:
                return record, None
            record = _quantized(record)
            return record, record

        return self._read_modify_write("acquire", decide)

    def renew(self, holder: str, epoch: int, duration_seconds: float) -> LeaseRecord:
        def decide(current: LeaseRecord | None) -> tuple[LeaseRecord, LeaseRecord]:
            record = _quantized(base.renewed(current, holder, epoch, duration_seconds, self.clock()))
            return record, record

        return self._read_modify_write("renew", decide)

    def check(self, holder: str, epoch: int, min_remaining_seconds: float = 0.0) -> LeaseRecord:
        return base.checked(self.read(), holder, epoch, self.clock(), min_remaining_seconds)

    def release(self, holder: str, epoch: int) -> bool:
        return self._end("release", holder, epoch)

    def revoke(self, holder: str) -> bool:
        return self._end("revoke", holder, None)

    def _end(self, operation: str, holder: str, epoch: int | None) -> bool:
        def decide(current: LeaseRecord | None) -> tuple[bool, LeaseRecord | None]:
            record = base.released(current, holder, epoch, self.clock())
            if record is None:
                return False, None
            return True, _quantized(record)

        return self._read_modify_write(operation, decide)

    def _read_modify_write(
            self, operation: str,
            decide: Callable[[LeaseRecord | None], tuple[_Result, LeaseRecord | None]]) -> _Result:
        """Runs `decide` on the stored record and writes the record it returns, until no write conflicts.

        `decide` returns its result and the record to store, or None to store nothing.
        """
        for _ in range(self.max_conflicts + 1):
            lease = self._get()
            result, record = decide(_record_of(lease, self._where()))
            if record is None or self._write(operation, lease, record):
                return result
            logger.info("Lease %s changed while this client tried to %s it (HTTP 409); reading it again.",
                        self._where(), operation)
        raise LeaseError(
            f"could not {operation} Lease {self._where()}: {self.max_conflicts + 1} writes in a row conflicted "
            "with other clients (HTTP 409); find what else updates this Lease")

    def _get(self) -> client.V1Lease | None:
        try:
            return self._api.read_namespaced_lease(self.name, self.namespace,
                                                   _request_timeout=self.request_timeout_seconds)
        except ApiException as error:
            if error.status == 404:
                return None
            raise self._api_error("read", error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self._unreachable("read", error) from None

    def _write(self, operation: str, lease: client.V1Lease | None, record: LeaseRecord) -> bool:
        """Creates or replaces the Lease; returns False when another client wrote it first."""
        try:
            if lease is None:
                self._api.create_namespaced_lease(self.namespace, self._new_lease(record),
                                                  _request_timeout=self.request_timeout_seconds)
            else:
                _store(lease, record)
                self._api.replace_namespaced_lease(self.name, self.namespace, lease,
                                                   _request_timeout=self.request_timeout_seconds)
        except ApiException as error:
            if error.status == 409:
                return False
            raise self._api_error(operation, error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self._unreachable(operation, error) from None
        return True

    def _new_lease(self, record: LeaseRecord) -> client.V1Lease:
        lease = client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(),
        )
        _store(lease, record)
        return lease

    def _where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _api_error(self, operation: str, error: ApiException) -> LeaseError:
        detail = _status_message(error.body) or error.reason or "no message"
        if error.status == 403:
            hint = (f"grant the pod's ServiceAccount get, create and update on leases.coordination.k8s.io "
                    f"in namespace {self.namespace}, as the Role of 'tfps-ha render-k8s' does")
        elif error.status == 401:
            hint = "the API server rejected the credentials; check the pod's ServiceAccount token"
        elif error.status in (400, 422):
            hint = "the API server rejected the Lease this client wrote; report it with this message"
        else:
            hint = "check the API server's health and retry"
        return LeaseError(f"could not {operation} Lease {self._where()}: HTTP {error.status} ({detail}); {hint}")

    def _unreachable(self, operation: str, error: Exception) -> LeaseError:
        return LeaseError(
            f"could not {operation} Lease {self._where()}: the API server at {self.host} did not respond "
            f"within {self.request_timeout_seconds:g} s ({type(error).__name__}: {error}); check that it is "
            "reachable from this pod")


class _MicroTimeApiClient(client.ApiClient):
    """An ApiClient that writes every time with exactly six fractional digits.

    The API server parses a Lease's MicroTime fields with the layout
    `2006-01-02T15:04:05.000000Z07:00`, which requires six digits. The
    `kubernetes` client (checked in 37.0.2) writes `datetime.isoformat()`,
    which drops the fraction when it is zero, so a time on a whole second
    would be rejected with HTTP 400. Fields of type Time accept the six digits too.
    """

    def sanitize_for_serialization(self, obj):
        if isinstance(obj, datetime.datetime):
            return format_micro_time(obj)
        return super().sanitize_for_serialization(obj)


def format_micro_time(value: datetime.datetime) -> str:
    """Returns `value` in UTC as the API server writes a MicroTime: `2023-11-14T22:13:20.000000Z`."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC).strftime(_MICRO_TIME_FORMAT)


def _record_of(lease: client.V1Lease | None, where: str) -> LeaseRecord | None:
    """Reads the record from a Lease; None when no Lease exists or it never had a holder."""
    if lease is None or lease.spec is None:
        return None
    spec = lease.spec
    holder = spec.holder_identity or ""
    epoch = spec.lease_transitions or 0
    if not holder and epoch == 0:
        return None

    acquired_at = _seconds(spec.acquire_time) if spec.acquire_time else 0.0
    renewed_at = _seconds(spec.renew_time) if spec.renew_time else acquired_at
    annotation = ((lease.metadata.annotations if lease.metadata else None) or {}).get(EXPIRES_AT_ANNOTATION)
    if not holder:
        expires_at = 0.0  # A Lease without a holder is free, whatever its times are.
    elif annotation is not None:
        expires_at = _parse_expiry(annotation, where)
    elif spec.renew_time and spec.lease_duration_seconds:
        expires_at = renewed_at + spec.lease_duration_seconds
    else:
        expires_at = renewed_at
    return LeaseRecord(holder=holder, epoch=epoch, acquired_at=acquired_at, renewed_at=renewed_at,
                       expires_at=expires_at)


def _store(lease: client.V1Lease, record: LeaseRecord) -> None:
    """Writes `record` into the Lease's spec and expiry annotation, keeping its other metadata."""
    lease.spec.holder_identity = record.holder
    lease.spec.lease_transitions = record.epoch
    lease.spec.acquire_time = _datetime(record.acquired_at)
    lease.spec.renew_time = _datetime(record.renewed_at)
    lease.spec.lease_duration_seconds = max(1, math.ceil(record.expires_at - record.renewed_at))
    annotations = dict(lease.metadata.annotations or {})
    annotations[EXPIRES_AT_ANNOTATION] = format_micro_time(_datetime(record.expires_at))
    lease.metadata.annotations = annotations


def _quantized(record: LeaseRecord) -> LeaseRecord:
    """Rounds the record's times to the microseconds that a Lease stores."""
    return dataclasses.replace(
        record,
        acquired_at=_round_micros(record.acquired_at),
        renewed_at=_round_micros(record.renewed_at),
        expires_at=_round_micros(record.expires_at),
    )


def _round_micros(seconds: float) -> float:
    return round(seconds * 1_000_000) / 1_000_000


def _datetime(seconds: float) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=round(seconds * 1_000_000))


def _seconds(value: datetime.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return ((value - _EPOCH) // _MICROSECOND) / 1_000_000


def _parse_expiry(text: str, where: str) -> float:
    try:
        value = datetime.datetime.strptime(text, _MICRO_TIME_FORMAT).replace(tzinfo=_UTC)
    except (TypeError, ValueError):
        raise LeaseError(
            f"Lease {where}: annotation {EXPIRES_AT_ANNOTATION} is {text!r}; expected a UTC time such as "
            "2023-11-14T22:13:20.000000Z; remove the annotation or delete the Lease") from None
    return _seconds(value)


def _status_message(body: object) -> str | None:
    """Returns the `message` of a Kubernetes Status body, or None."""
    if not isinstance(body, (str, bytes)):
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else None


def _pod_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE, encoding="utf-8") as stream:
            return stream.read().strip()
    except OSError as error:
        raise LeaseError(f"no Lease namespace: {LEASE_NAMESPACE_ENV} is not set and "
                         f"{SERVICE_ACCOUNT_NAMESPACE_FILE} cannot be read ({error.strerror}); "
                         "pass the namespace") from None
