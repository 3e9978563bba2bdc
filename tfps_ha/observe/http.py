"""An HTTP server for probes, status and metrics, on a background thread.

Endpoints (GET or HEAD):
  /healthz   200 when the job is alive and making progress, else 503; the
             body is one line with the reason.
  /readyz    200 when every PS and enough workers are up, else 503.
  /status    the status dict as JSON.
  /metrics   Prometheus text format.
"""

from __future__ import annotations

import errno
import http.server
import logging
import threading
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tfps_ha.errors import UsageError
from tfps_ha.observe.health import check_health, check_readiness
from tfps_ha.observe.metrics import build_registry
from tfps_ha.observe.status import WorkdirStatus, status_to_json
from tfps_ha.spec import ClusterSpec

logger = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]
# Returns (passed, reason): the probe's verdict and a one-line explanation.
ProbeFn = Callable[[], "tuple[bool, str]"]
ENDPOINTS = ("/healthz", "/readyz", "/status", "/metrics")


class StatusServerError(UsageError):
    """The status server cannot listen on the requested address."""


class StatusServer:
    """Serves `/healthz`, `/readyz`, `/status` and `/metrics` from three callables.

    Each request calls its callable anew, on the server's request thread, so
    the callables must be safe to call from several threads at once.

    Use it as a context manager, or call `start` and later `stop`:

        with StatusServer(status_fn, health_fn, ready_fn, port=8080) as server:
            print(server.url)
    """

    def __init__(self, status_fn: StatusFn, health_fn: ProbeFn, ready_fn: ProbeFn,
                 host: str = "127.0.0.1", port: int = 0):
        """Binds the listening socket; requests are served only after `start`.

        Args:
          status_fn: Returns the status dict for `/status` and `/metrics`.
          health_fn: Returns the `/healthz` verdict and reason.
          ready_fn: Returns the `/readyz` verdict and reason.
          host: Address to listen on. The default is loopback, because the
            endpoints have no authentication.
          port: TCP port; 0 picks a free one (see `port`).

        Raises:
          StatusServerError: The port is in use or the address cannot be bound.
        """
        self.status_fn = status_fn
        self.health_fn = health_fn
        self.ready_fn = ready_fn
        self._registry = build_registry(status_fn)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise StatusServerError(f"status server port: received {port!r}; expected an integer in 0..65535")
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as error:
            raise _bind_error(host, port, error) from None
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._server.server_address[0]

    @property
    def port(self) -> int:
        """The TCP port the server listens on, also when it was created with port 0."""
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, such as `http://127.0.0.1:8080`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "StatusServer":
        """Starts serving on a daemon thread and returns self."""
        if self._thread is not None:
            raise RuntimeError(f"status server {self.url} was already started; create a new one")
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"status-server-{self.port}", daemon=True)
        self._thread.start()
        logger.info("Status server listening on %s (%s).", self.url, ", ".join(ENDPOINTS))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops serving, closes the socket and waits up to `timeout` seconds for the thread.

        Calling it again, or without `start`, only closes the socket.
        """
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("Status server thread on %s did not stop within %.0f s.", self.url, timeout)
            self._thread = None
            logger.info("Status server on %s stopped.", self.url)
        self._server.server_close()

    def __enter__(self) -> "StatusServer":
        """Starts the server unless it already runs (as one from `serve_workdir` does)."""
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def metrics_text(self) -> bytes:
        """Returns the `/metrics` body."""
        return generate_latest(self._registry)


def serve_workdir(workdir: str, spec: ClusterSpec | None = None, host: str = "127.0.0.1", port: int = 0,
                  min_workers: int = 1) -> StatusServer:
    """Starts a `StatusServer` over the files of the job in `workdir` and returns it.

    Every request reads the files again (only what was appended since the
    last read), so the supervisor and the coordinator can each serve the same
    job without sharing memory.

    Args:
      workdir: The job's working folder.
      spec: The job's spec, for the target step, task list and deadlines.
      host: Address to listen on; loopback by default.
      port: TCP port; 0 picks a free one.
      min_workers: Workers that must be RUNNING for `/readyz`.

    Raises:
      StatusServerError: The port is in use or the address cannot be bound.
    """
    reader = WorkdirStatus(workdir, spec)
    return StatusServer(
        status_fn=reader.read,
        health_fn=lambda: check_health(reader.read(), spec),
        ready_fn=lambda: check_readiness(reader.read(), min_workers),
        host=host, port=port,
    ).start()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: StatusServer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base class signature)
        logger.debug("%s %s", self.address_string(), format % args)

    def _respond(self, send_body: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            code, content_type, body = self._probe(owner.health_fn, "health")
        elif path == "/readyz":
            code, content_type, body = self._probe(owner.ready_fn, "readiness")
        elif path == "/status":
            code, content_type, body = self._call(
                lambda: status_to_json(owner.status_fn()).encode() + b"\n",
                "application/json", "status")
        elif path == "/metrics":
            code, content_type, body = self._call(owner.metrics_text, CONTENT_TYPE_LATEST, "metrics")
        else:
            code, content_type = 404, "text/plain; charset=utf-8"
            body = f"not found: {path}; expected one of {', '.join(ENDPOINTS)}\n".encode()

        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    @staticmethod
    def _probe(probe: ProbeFn, name: str) -> tuple[int, str, bytes]:
        try:
            passed, reason = probe()
        except Exception as error:  # noqa: BLE001 (a broken probe must answer 503, not drop the request)
            logger.exception("The %s check failed", name)
            passed, reason = False, f"{name} check failed: {type(error).__name__}: {error}"
        word = "ok" if passed else "failing"
        return (200 if passed else 503), "text/plain; charset=utf-8", f"{word}: {reason}\n".encode()

    @staticmethod
    def _call(render: Callable[[], bytes], content_type: str, name: str) -> tuple[int, str, bytes]:
        try:
            return 200, content_type, render()
        except Exception as error:  # noqa: BLE001 (answer 500 with the error rather than drop the request)
            logger.exception("Building the %s response failed", name)
            message = f"reading the {name} failed: {type(error).__name__}: {error}\n"
            return 500, "text/plain; charset=utf-8", message.encode()


def _bind_error(host: str, port: int, error: OSError) -> StatusServerError:
    if error.errno == errno.EADDRINUSE:
        return StatusServerError(
            f"status server cannot listen on {host}:{port}: the port is already in use by another "
            "process; choose another port (or 0 for a free one) or stop that process")
    return StatusServerError(
        f"status server cannot listen on {host}:{port}: {error.strerror or error}; expected a local "
        "address such as 127.0.0.1 and a port in 0..65535")
