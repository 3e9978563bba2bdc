"""The Kubernetes Lease backend against the leader-election contract, plus its API handling.

There is no Kubernetes cluster here. `LeaseApiStandIn` is a stand-in for the
API server: a small HTTP server on 127.0.0.1 that speaks the three Lease
endpoints the backend uses (GET, POST and PUT under
/apis/coordination.k8s.io/v1) and copies the behaviour of kube-apiserver that
the backend relies on. A PUT whose resourceVersion is not the stored one gets
409 Conflict, a POST of an existing Lease gets 409 AlreadyExists, a MicroTime
without exactly six fractional digits gets 400, and a leaseDurationSeconds
below 1 gets 422. It does no authentication and no watches.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.parse
import uuid

import portpicker
import pytest
from kubernetes import client

from lease_contract import DURATION, FakeClock, LeaseContract
from tfps_ha.lease import LeaseError, LeadershipLostError
from tfps_ha.lease.kubernetes import EXPIRES_AT_ANNOTATION, LEASE_NAME_ENV, KubernetesLease

NAMESPACE = "training"
LEASE = "job-leader"
_COLLECTION = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases$")
_ITEM = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases/(?P<name>[^/]+)$")
# The layout kube-apiserver parses MicroTime with: 2006-01-02T15:04:05.000000Z07:00.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


class LeaseApiStandIn:
    """A stand-in for the Kubernetes API server's Lease endpoints; see the module docstring.

    Attributes:
      requests: (method, path, body) of every request, in arrival order.
      before_write: Called with (method, namespace, name) under the store's
        lock just before a write is checked, to simulate another client
        writing between the backend's read and its write.
      fail_with: When set to (status, reason), every request gets that error.
      hold: While cleared, requests wait on it (an unresponsive server).
    """

    def __init__(self):
        self.leases: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.before_write = None
        self.fail_with: tuple[int, str] | None = None
        self.hold = threading.Event()
        self.hold.set()
        # Reentrant, because `before_write` runs under it and may call put_lease.
        self._lock = threading.RLock()
        self._version = 0
        port = portpicker.pick_unused_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> LeaseApiStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def configuration(self) -> client.Configuration:
        configuration = client.Configuration()
        configuration.host = self.url
        return configuration

    def put_lease(self, namespace: str, name: str, spec: dict, annotations: dict | None = None) -> None:
        """Stores a Lease as another client would have written it."""
        with self._lock:
            self._version += 1
            metadata = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                        "resourceVersion": str(self._version), "creationTimestamp": "2023-11-14T22:00:00Z"}
            if annotations:
                metadata["annotations"] = annotations
            self.leases[(namespace, name)] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                              "metadata": metadata, "spec": spec}

    def touch(self, namespace: str, name: str) -> None:
        """Changes the Lease's resourceVersion only, as a label update by another client does."""
        self._version += 1
        self.leases[(namespace, name)]["metadata"]["resourceVersion"] = str(self._version)

    def _handler_class(self):
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # Keep pytest output clean.
                pass

            def do_GET(self) -> None:
                stand_in._serve(self, "GET")

            def do_POST(self) -> None:
                stand_in._serve(self, "POST")

            def do_PUT(self) -> None:
                stand_in._serve(self, "PUT")

        return Handler

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(handler.path).path
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self._reply(handler, *_status(400, "BadRequest", "the body is not JSON"))
                return
        self.requests.append((method, path, body))
        self.hold.wait()
        if self.fail_with is not None:
            code, reason = self.fail_with
            self._reply(handler, *_status(code, reason, f"stand-in error {code}"))
            return
        with self._lock:
            self._reply(handler, *self._route(method, path, body))

    def _route(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        item = _ITEM.match(path)
        collection = _COLLECTION.match(path)
        if method == "GET" and item:
            lease = self.leases.get((item["ns"], item["name"]))
            if lease is None:
                return _status(404, "NotFound", f'leases.coordination.k8s.io "{item["name"]}" not found')
            return 200, lease
        if method == "POST" and collection:
            return self._create(collection["ns"], body)
        if method == "PUT" and item:
            return self._replace(item["ns"], item["name"], body)
        return _status(404, "NotFound", f"the stand-in serves no {method} {path}")

    def _create(self, namespace: str, body: dict | None) -> tuple[int, dict]:
        invalid = _invalid_lease(body)
        if invalid:
            return invalid
        metadata = body.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if metadata.get("namespace", namespace) != namespace:
            return _status(400, "BadRequest", "the namespace of the object does not match the namespace on the URL")
        if self.before_write:
            self.before_write("POST", namespace, name)
        if (namespace, name) in self.leases:
            return _status(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists')
        return 201, self._save(namespace, name, body, uid=str(uuid.uuid4()))

    def _replace(self, namespace: str, name: str, body: dict | None) -> tuple[int, dict]:
        invalid = _invalid_lease(body)
        if invalid:
            return invalid
        metadata = body.get("metadata") or {}
        if metadata.get("name") != name:
            return _status(400, "BadRequest", "the name of the object does not match the name on the URL")
        if self.before_write:
            self.before_write("PUT", namespace, name)
        stored = self.leases.get((namespace, name))
        if stored is None:
            return _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        # Like kube-apiserver, a PUT without resourceVersion overwrites unconditionally.
        version = metadata.get("resourceVersion")
        if version is not None and version != stored["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": '
                                            "the object has been modified; please apply your changes to the latest "
                                            "version and try again")
        return 200, self._save(namespace, name, body, uid=stored["metadata"]["uid"])

    def _save(self, namespace: str, name: str, body: dict, uid: str) -> dict:
        self._version += 1
        metadata = dict(body.get("metadata") or {})
        metadata.update(name=name, namespace=namespace, uid=uid, resourceVersion=str(self._version),
                        creationTimestamp="2023-11-14T22:00:00Z")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                 "spec": dict(body.get("spec") or {})}
        self.leases[(namespace, name)] = lease
        return lease

    @staticmethod
    def _reply(handler: http.server.BaseHTTPRequestHandler, code: int, document: dict) -> None:
        data = json.dumps(document).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class _QuietServer(http.server.ThreadingHTTPServer):
    """Drops the traceback of a reply to a client that already timed out and left."""

    daemon_threads = True
    # The contract test connects from 8 threads at once; the default backlog
    # of 5 would drop connections.
    request_queue_size = 64

    def handle_error(self, request, client_address) -> None:
        pass


def _invalid_lease(body: dict | None) -> tuple[int, dict] | None:
    if not isinstance(body, dict):
        return _status(400, "BadRequest", "the request has no Lease body")
    spec = body.get("spec") or {}
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is not None and not (isinstance(value, str) and _MICRO_TIME.match(value)):
            return _status(400, "BadRequest", f'Lease in version "v1" cannot be handled as a Lease: parsing time '
                                              f'{value!r} as "2006-01-02T15:04:05.000000Z07:00"')
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        return _status(422, "Invalid", "spec.leaseDurationSeconds: Invalid value: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        return _status(422, "Invalid", "spec.leaseTransitions: Invalid value: must be greater than or equal to 0")
    return None


def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                  "reason": reason, "code": code}


@pytest.fixture
def api():
    with LeaseApiStandIn() as stand_in:
        yield stand_in


def new_lease(api: LeaseApiStandIn, clock, **kwargs) -> KubernetesLease:
    return KubernetesLease(LEASE, NAMESPACE, api.configuration(), clock=clock, **kwargs)


class TestKubernetesLease(LeaseContract):
    """The leader-election contract against the stand-in API server."""

    @pytest.fixture
    def new_backend(self, clock, api):
        return lambda: new_lease(api, clock)


# ------------------------------------------------------------ what is stored


def test_record_maps_to_lease_fields(api):
    clock = FakeClock()
    new_lease(api, clock).try_acquire("a", DURATION)

    stored = api.leases[(NAMESPACE, LEASE)]
    assert stored["spec"]["holderIdentity"] == "a"
    assert stored["spec"]["leaseTransitions"] == 1
    assert stored["spec"]["leaseDurationSeconds"] == 4
    assert stored["spec"]["acquireTime"] == "2023-11-14T22:13:20.000000Z"
    assert stored["spec"]["renewTime"] == "2023-11-14T22:13:20.000000Z"
    assert stored["metadata"]["annotations"][EXPIRES_AT_ANNOTATION] == "2023-11-14T22:13:24.000000Z"


def test_fractional_times_round_trip(api):
    clock = FakeClock(start=1_700_000_000.123456)
    backend = new_lease(api, clock)

    record = backend.try_acquire("a", 2.5)

    assert record.expires_at == pytest.approx(1_700_000_002.623456, abs=1e-6)
    assert backend.read() == record
    stored = api.leases[(NAMESPACE, LEASE)]
    assert stored["spec"]["leaseDurationSeconds"] == 3
    assert stored["metadata"]["annotations"][EXPIRES_AT_ANNOTATION] == "2023-11-14T22:13:22.623456Z"


def test_release_keeps_epoch_in_lease(api):
    clock = FakeClock()
    backend = new_lease(api, clock)
    record = backend.try_acquire("a", DURATION)
    clock.advance(1.0)

    assert backend.release("a", record.epoch) is True

    stored = api.leases[(NAMESPACE, LEASE)]
    assert stored["spec"]["leaseTransitions"] == 1
    assert stored["spec"]["leaseDurationSeconds"] == 1
    assert stored["metadata"]["annotations"][EXPIRES_AT_ANNOTATION] == "2023-11-14T22:13:21.000000Z"


def test_write_keeps_other_metadata(api):
    clock = FakeClock()
    api.put_lease(NAMESPACE, LEASE, {}, annotations={"team": "ranking"})

    new_lease(api, clock).try_acquire("a", DURATION)

    annotations = api.leases[(NAMESPACE, LEASE)]["metadata"]["annotations"]
    assert annotations["team"] == "ranking"
    assert EXPIRES_AT_ANNOTATION in annotations


# ------------------------------------------------- Leases written by others


def test_foreign_released_lease_keeps_epoch_growing(api):
    clock = FakeClock()
    api.put_lease(NAMESPACE, LEASE, {"holderIdentity": "", "leaseTransitions": 5, "leaseDurationSeconds": 15,
                                     "renewTime": "2023-11-14T22:13:19.000000Z"})

    record = new_lease(api, clock).try_acquire("a", DURATION)

    assert record.holder == "a"
    assert record.epoch == 6


def test_foreign_holder_without_annotation(api):
    clock = FakeClock()
    api.put_lease(NAMESPACE, LEASE, {"holderIdentity": "other", "leaseTransitions": 2, "leaseDurationSeconds": 15,
                                     "acquireTime": "2023-11-14T22:13:10.000000Z",
                                     "renewTime": "2023-11-14T22:13:15.000000Z"})
    backend = new_lease(api, clock)

    assert backend.read().expires_at == clock.now + 10
    assert backend.try_acquire("a", DURATION) is None
    clock.advance(10.0)
    assert backend.try_acquire("a", DURATION).epoch == 3


def test_empty_lease_reads_as_none(api):
    api.put_lease(NAMESPACE, LEASE, {})

    backend = new_lease(api, FakeClock())

    assert backend.read() is None
    assert backend.try_acquire("a", DURATION).epoch == 1


def test_invalid_expiry_annotation_raises(api):
    api.put_lease(NAMESPACE, LEASE, {"holderIdentity": "a", "leaseTransitions": 1, "leaseDurationSeconds": 4,
                                     "renewTime": "2023-11-14T22:13:20.000000Z"},
                  annotations={EXPIRES_AT_ANNOTATION: "soon"})

    with pytest.raises(LeaseError, match="tfps-ha/expires-at is 'soon'"):
        new_lease(api, FakeClock()).read()


# ---------------------------------------------- optimistic concurrency (409)


def test_every_put_carries_read_version(api):
    clock = FakeClock()
    backend = new_lease(api, clock)
    record = backend.try_acquire("a", DURATION)
    clock.advance(1.0)
    backend.renew("a", record.epoch, DURATION)
    backend.release("a", record.epoch)

    puts = [body for method, _, body in api.requests if method == "PUT"]
    assert len(puts) == 2
    for body in puts:
        assert body["metadata"]["resourceVersion"]


def test_conflicting_takeover_fences_renew(api):
    clock = FakeClock()
    backend = new_lease(api, clock)
    record = backend.try_acquire("a", DURATION)
    clock.advance(1.0)
    takeovers = []

    def other_client_takes_over(method, namespace, name):
        # Runs between the backend's GET and its PUT, as a supervisor's revoke
        # and a second coordinator's acquire would.
        if method == "PUT" and not takeovers:
            takeovers.append(True)
            api.put_lease(namespace, name, {"holderIdentity": "b", "leaseTransitions": 2, "leaseDurationSeconds": 60,
                                            "renewTime": "2023-11-14T22:13:25.000000Z"})

    api.before_write = other_client_takes_over

    with pytest.raises(LeadershipLostError) as raised:
        backend.renew("a", record.epoch, DURATION)

    assert raised.value.current.holder == "b"
    assert api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == "b"


def test_conflicting_metadata_change_retries(api):
    clock = FakeClock()
    backend = new_lease(api, clock)
    record = backend.try_acquire("a", DURATION)
    clock.advance(1.0)
    touched = []

    def other_client_labels(method, namespace, name):
        if method == "PUT" and not touched:
            touched.append(True)
            api.touch(namespace, name)

    api.before_write = other_client_labels

    renewed = backend.renew("a", record.epoch, DURATION)

    assert renewed.expires_at == clock.now + DURATION
    assert len([request for request in api.requests if request[0] == "PUT"]) == 2


def test_endless_conflicts_raise(api):
    clock = FakeClock()
    backend = new_lease(api, clock, max_conflicts=2)
    record = backend.try_acquire("a", DURATION)
    api.before_write = lambda method, namespace, name: api.touch(namespace, name)

    with pytest.raises(LeaseError, match="3 writes in a row conflicted"):
        backend.renew("a", record.epoch, DURATION)


def test_create_race_loser_reads_winner(api):
    clock = FakeClock()

    def other_client_creates(method, namespace, name):
        if method == "POST" and (namespace, name) not in api.leases:
            api.put_lease(namespace, name, {"holderIdentity": "b", "leaseTransitions": 1, "leaseDurationSeconds": 4,
                                            "renewTime": "2023-11-14T22:13:20.000000Z"},
                          annotations={EXPIRES_AT_ANNOTATION: "2023-11-14T22:13:24.000000Z"})

    api.before_write = other_client_creates

    assert new_lease(api, clock).try_acquire("a", DURATION) is None
    assert api.leases[(NAMESPACE, LEASE)]["spec"]["holderIdentity"] == "b"


# ------------------------------------------------------------- API errors


def test_forbidden_names_missing_role(api):
    api.fail_with = (403, "Forbidden")

    with pytest.raises(LeaseError) as raised:
        new_lease(api, FakeClock()).try_acquire("a", DURATION)

    message = str(raised.value)
    assert "HTTP 403" in message
    assert f"{NAMESPACE}/{LEASE}" in message
    assert "render-k8s" in message


def test_server_error_names_status(api):
    api.fail_with = (500, "InternalError")

    with pytest.raises(LeaseError, match="could not read Lease training/job-leader: HTTP 500"):
        new_lease(api, FakeClock()).read()


def test_unreachable_server_raises():
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{portpicker.pick_unused_port()}"
    backend = KubernetesLease(LEASE, NAMESPACE, configuration, clock=FakeClock())

    with pytest.raises(LeaseError, match="the API server at http://127.0.0.1:[0-9]+ did not respond"):
        backend.try_acquire("a", DURATION)


def test_unresponsive_server_times_out(api):
    backend = new_lease(api, FakeClock(), request_timeout_seconds=0.3)
    api.hold.clear()

    with pytest.raises(LeaseError, match="within 0.3 s"):
        backend.read()


def test_in_cluster_requires_lease_name(monkeypatch):
    monkeypatch.delenv(LEASE_NAME_ENV, raising=False)

    with pytest.raises(LeaseError, match=f"{LEASE_NAME_ENV} is not set"):
        KubernetesLease.in_cluster(namespace=NAMESPACE)


def test_in_cluster_outside_pod_raises(monkeypatch):
    monkeypatch.setenv(LEASE_NAME_ENV, LEASE)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    with pytest.raises(LeaseError, match="runs in a pod"):
        KubernetesLease.in_cluster(namespace=NAMESPACE)
