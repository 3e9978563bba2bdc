"""The status server, served on 127.0.0.1 and queried over real HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import portpicker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from observe_helpers import T0, JobFolder
from tfps_ha.observe.http import StatusServer, StatusServerError, serve_workdir

TIMEOUT_SECONDS = 10


def get(url: str) -> tuple[int, str, str]:
    """Returns the status code, Content-Type and body of a GET, also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def live_job(tmp_path) -> JobFolder:
    """A job training at step 120 whose worker:1 was killed once by chaos."""
    job = JobFolder(tmp_path / "job").cluster()
    job.start_tasks(0.0)
    job.kill_and_restart(5.0, "worker:1", 0)
    job.progress(9.0, 110, rate=8.0)
    job.progress(10.0, 120, rate=9.5, loss=0.3)
    job.checkpoint_state(9.5, [50, 100])
    return job


def test_server_endpoints_live_values(live_job):
    # The server measures ages against the wall clock, so the latest step and
    # heartbeat are written as of now.
    now = time.time() - T0
    live_job.progress(now, 130, rate=9.5, loss=0.3)
    live_job.heartbeat(now, 130, loss=0.3)
    server = serve_workdir(live_job.path, port=portpicker.pick_unused_port(), min_workers=2)
    try:
        health = get(server.url + "/healthz")
        ready = get(server.url + "/readyz")
        status = get(server.url + "/status")
    finally:
        server.stop()

    assert health[0] == 200, health[2]
    assert health[2].startswith("ok: step 130")
    assert ready == (200, "text/plain; charset=utf-8", "ok: 1 PS and 2 of 2 workers running\n")
    assert status[0] == 200
    assert status[1] == "application/json"
    assert json.loads(status[2])["step"] == 130
    assert json.loads(status[2])["restarts"]["worker:1"] == 1


def test_server_metrics(live_job):
    with serve_workdir(live_job.path) as server:
        code, content_type, body = get(server.url + "/metrics")
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(body) for sample in family.samples}

    assert code == 200
    assert content_type.startswith("text/plain")
    assert samples[("tfps_ha_training_step", ())] == 120
    assert samples[("tfps_ha_steps_per_second", ())] == 9.5
    assert samples[("tfps_ha_loss", ())] == 0.3
    assert samples[("tfps_ha_checkpoint_step", ())] == 100
    assert samples[("tfps_ha_failovers_total", ())] == 0
    assert samples[("tfps_ha_chaos_kills_total", ())] == 1
    restart_key = ("tfps_ha_task_restarts_total",
                   (("cause", "chaos SIGKILL"), ("job", "worker"), ("task", "worker:1")))
    assert samples[restart_key] == 1
    assert samples[("tfps_ha_task_up", (("job", "worker"), ("task", "worker:1")))] == 1
    assert samples[("tfps_ha_task_attempt", (("job", "worker"), ("task", "worker:1")))] == 1
    assert ("tfps_ha_checkpoint_duration_seconds", ()) not in samples


def test_server_unhealthy_and_not_ready(live_job):
    live_job.event(11.0, "ps:0", 0, "FAILED", "chaos SIGKILL", signal="SIGKILL")
    live_job.event(11.0, "ps:0", 0, "BACKOFF", "chaos SIGKILL", signal="SIGKILL")
    live_job.heartbeat(10.0, 120)

    with serve_workdir(live_job.path) as server:
        health = get(server.url + "/healthz")
        ready = get(server.url + "/readyz")

    assert health[0] == 503
    assert health[2].startswith("failing: coordinator heartbeat is ")
    assert ready[0] == 503
    assert ready[2] == "failing: PS not running: ps:0 BACKOFF\n"


def test_server_unknown_path_and_head(live_job):
    with serve_workdir(live_job.path) as server:
        missing = get(server.url + "/nope")
        connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT_SECONDS)
        connection.request("HEAD", "/status")
        head = connection.getresponse()
        head_body = head.read()
        connection.close()

    assert missing[0] == 404
    assert missing[2] == "not found: /nope; expected one of /healthz, /readyz, /status, /metrics\n"
    assert head.status == 200
    assert int(head.headers["Content-Length"]) > 0
    assert head_body == b""


def test_server_callable_errors(tmp_path):
    def broken_status() -> dict:
        raise RuntimeError("events.jsonl is unreadable")

    def broken_probe() -> tuple[bool, str]:
        raise OSError("disk gone")

    with StatusServer(broken_status, broken_probe, lambda: (True, "fine")) as server:
        status = get(server.url + "/status")
        metrics = get(server.url + "/metrics")
        health = get(server.url + "/healthz")
        ready = get(server.url + "/readyz")

    assert status[0] == 500
    assert status[2] == "reading the status failed: RuntimeError: events.jsonl is unreadable\n"
    assert metrics[0] == 500
    assert health == (503, "text/plain; charset=utf-8", "failing: health check failed: OSError: disk gone\n")
    assert ready[0] == 200


def test_server_busy_port_error():
    port = portpicker.pick_unused_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(StatusServerError, match=f"cannot listen on 127.0.0.1:{port}: the port is already in use"):
            StatusServer(dict, lambda: (True, ""), lambda: (True, ""), port=port)


@pytest.mark.parametrize("port", [-1, 65536, "8080", True])
def test_server_invalid_port_error(port):
    with pytest.raises(StatusServerError, match="expected an integer in 0..65535"):
        StatusServer(dict, lambda: (True, ""), lambda: (True, ""), port=port)


def test_server_stop_releases_port():
    server = StatusServer(dict, lambda: (True, "alive"), lambda: (True, "ready")).start()
    port = server.port
    assert get(server.url + "/healthz")[0] == 200

    server.stop()
    server.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SECONDS).close()
    # The port can be bound again at once.
    StatusServer(dict, lambda: (True, ""), lambda: (True, ""), port=port).stop()


def test_server_defaults_to_loopback():
    server = StatusServer(dict, lambda: (True, ""), lambda: (True, ""))
    try:
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
