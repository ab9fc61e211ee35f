"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Children(Generic[M]):
    """A labelled metric's children, each made once per label values: ``labels()`` checks and
    locks on every call, and a turn would pay that for every metric it counts. Label values are
    bounded by their callers (transports, statuses, error types, known stage codes)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.turns = Counter(
            "callagent_turns", "Turns ended, by transport and status", ["transport", "status"], registry=r
        )
        self.stage_codes = Counter("callagent_stage_codes", "Stage codes sent to gateways", ["code"], registry=r)
        self.turn_errors = Counter("callagent_turn_errors", "Failed turns, by error type", ["type"], registry=r)
        self.upstream_errors = Counter(
            "callagent_upstream_errors", "Turns failed by the upstream, by error type", ["type"], registry=r
        )
        self.upstream_first_byte = Histogram(
            "callagent_upstream_first_byte_seconds",
            "Turn start to the upstream's first chunk",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_text = Histogram(
            "callagent_first_text_seconds",
            "Turn start to the first text sent to the gateway",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_duration = Histogram(
            "callagent_turn_duration_seconds", "Turn start to its terminal event", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.running_turns = Gauge("callagent_running_turns", "Turns running in this process", registry=r)
        self.open_sockets = Gauge("callagent_open_websockets", "Open WebSocket connections", registry=r)
        self.open_streams = Gauge("callagent_open_sse_streams", "Open SSE responses", registry=r)
        # The labelled ones as a turn counts them.
        self.turns_by = Children(self.turns)
        self.stage_codes_by = Children(self.stage_codes)
        self.turn_errors_by = Children(self.turn_errors)
        self.upstream_errors_by = Children(self.upstream_errors)

    def render(self) -> bytes:
        return generate_latest(self.registry)
