"""Prometheus metrics computed from a status dict at scrape time."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "tfps_ha"


class StatusCollector:
    """A prometheus-client collector that turns one status dict into metrics per scrape.

    The training step is a gauge, not a counter, because a restore from an
    older checkpoint moves it back. Restarts and failovers are counters of the
    latest launch, so they reset to 0 when a job is launched again, which
    Prometheus treats as a counter reset.
    """

    def __init__(self, status_fn: Callable[[], dict[str, Any]]):
        self.status_fn = status_fn

    def collect(self) -> Iterator[Metric]:
        """Yields every metric for one scrape; metrics whose value is unknown are left out."""
        status = self.status_fn()
        yield from _training_metrics(status)
        yield from _task_metrics(status)
        yield from _checkpoint_metrics(status)
        yield from _leadership_metrics(status)


def build_registry(status_fn: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """Returns a new registry holding only a `StatusCollector` over `status_fn`.

    A registry of its own keeps these metrics out of prometheus-client's
    global registry, so several servers can run in one process.
    """
    registry = CollectorRegistry()
    registry.register(StatusCollector(status_fn))
    return registry


def _gauge(name: str, documentation: str, value: Any) -> Iterator[Metric]:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)):
        yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))


def _training_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    yield from _gauge("training_step", "Training step reached (optimizer iterations).", status["step"])
    yield from _gauge("target_step", "Step at which training completes.", status["target_step"])
    yield from _gauge("steps_per_second", "Training steps per second over the supervisor's recent window.",
                      status["steps_per_second"])
    yield from _gauge("loss", "Latest training loss.", status["loss"])
    yield from _gauge("heartbeat_age_seconds", "Seconds since the coordinator last wrote its heartbeat.",
                      status["heartbeat_age_seconds"])
    yield from _gauge("job_completed", "1 when training reached its target step, else 0.", status["completed"])


def _task_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    up = GaugeMetricFamily(f"{PREFIX}_task_up", "1 when the task's process is RUNNING, else 0.",
                           labels=["task", "job"])
    attempt = GaugeMetricFamily(f"{PREFIX}_task_attempt", "Attempt number of the task's latest process.",
                                labels=["task", "job"])
    restarts = CounterMetricFamily(f"{PREFIX}_task_restarts", "Task restarts in the latest launch, by cause.",
                                   labels=["task", "job", "cause"])
    for name, task in status["tasks"].items():
        up.add_metric([name, task["job"]], 1.0 if task["state"] == "RUNNING" else 0.0)
        attempt.add_metric([name, task["job"]], float(task["attempt"]))
        for cause, count in sorted(task["restarts_by_cause"].items()):
            restarts.add_metric([name, task["job"], cause], float(count))
    yield up
    yield attempt
    yield restarts
    kills = CounterMetricFamily(f"{PREFIX}_chaos_kills", "Tasks killed by the chaos plan in the latest launch.",
                                value=float(status["chaos_kills"]))
    yield kills


def _checkpoint_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    checkpoint = status["checkpoint"] or {}
    yield from _gauge("checkpoint_step", "Step held by the newest checkpoint.", checkpoint.get("step"))
    yield from _gauge("checkpoint_age_seconds", "Seconds since the newest checkpoint was saved.",
                      checkpoint.get("age_seconds"))
    yield from _gauge("checkpoint_duration_seconds", "Seconds the newest checkpoint save took.",
                      checkpoint.get("duration_seconds"))


def _leadership_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    yield from _gauge("leader_epoch", "Epoch of the coordinator leadership lease.", status["leader_epoch"])
    yield CounterMetricFamily(f"{PREFIX}_failovers", "Coordinator leadership changes in the latest launch.",
                              value=float(status["failovers"]))
