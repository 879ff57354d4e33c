"""The gateway's Prometheus metrics, multi-worker safe.

With several worker processes every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (``coupon-shim serve --workers N`` makes a fresh folder when the
variable is not set) and ``GET /metrics`` on any worker aggregates them all with
``prometheus_client.multiprocess.MultiProcessCollector``. Without the variable the process's
default registry is served, which also holds the library's own call metrics
(:mod:`shim.metrics`, recorded by the gateway's shim).

``prometheus_client`` comes with the ``gateway`` extra; this module imports it lazily so that
``import shim.gateway`` works without it.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ENDPOINTS", "GatewayMetrics", "render_latest"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The ``endpoint`` label's values (a fixed set: paths never become labels).
ENDPOINTS = ("query", "passthrough", "not_found", "healthz", "readyz", "metrics")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_MAX_CHILDREN = 512  # label sets whose children are kept at hand
_METRICS: GatewayMetrics | None = None


class GatewayMetrics:
    """The gateway's own series (created once per process, in the default registry)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "coupon_shim_gateway_requests",
            "Requests answered by the gateway, by endpoint, HTTP status and outcome kind.",
            ("endpoint", "status", "kind"),
        )
        self.duration = Histogram(
            "coupon_shim_gateway_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            ("endpoint",),
            buckets=_BUCKETS,
        )
        self.in_flight = Gauge(
            "coupon_shim_gateway_in_flight",
            "Query and passthrough requests in flight.",
            multiprocess_mode="livesum",
        )
        self.draining = Gauge(
            "coupon_shim_gateway_draining",
            "1 while the worker drains after SIGTERM.",
            multiprocess_mode="livemax",
        )
        # each label set's children, looked up once (prometheus_client's labels() takes a
        # lock and validates the values on every call); the keys are a small fixed set
        self._children: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    @classmethod
    def get(cls) -> GatewayMetrics:
        """The process's metrics (prometheus_client refuses to register a name twice)."""
        global _METRICS
        if _METRICS is None:
            _METRICS = cls()
        return _METRICS

    def observe(self, endpoint: str, status: int, kind: str, seconds: float) -> None:
        """Count one answered request."""
        key = (endpoint, status, kind)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint, str(status), kind),
                self.duration.labels(endpoint),
            )
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def render_latest() -> tuple[bytes, str]:
    """The exposition text of every metric (all workers' when multiprocess) and its type.

    The library's own call, shadow, breaker and reload metrics (:mod:`shim.metrics`) and the
    gateway's series live in the same registry, so one scrape shows both.
    """
    from shim.metrics import render_latest as library_render

    return library_render()


def mark_worker_dead(pid: int) -> None:
    """Drop a stopped worker's live gauges from the multiprocess files."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
