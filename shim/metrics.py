"""Prometheus metrics: an observer of the facades' call records, breaker changes and reloads.

Needs the ``metrics`` extra (``pip install 'coupon-shim[metrics]'``, i.e. ``prometheus_client``).
When it is installed, both twins record into ``prometheus_client.REGISTRY`` unless given
``registry=`` (a :class:`prometheus_client.CollectorRegistry`); every shim recording into one
registry shares one set of metric objects. Without the package, nothing is recorded.

Metrics (label values are bounded: routes, fixed vocabularies, configured merchants, known v2
answer fields; never stock ids):

==========================================================  =====================================
``coupon_shim_calls_total{route,outcome}``                  calls by the route that served
                                                            (``legacy`` | ``v3``; for an error
                                                            the route that failed last) and
                                                            ``success`` | ``business_error`` |
                                                            ``fail`` | ``error``
``coupon_shim_call_duration_seconds{route}``                histogram of served latency,
                                                            1 ms … 10 s buckets
``coupon_shim_routing_decisions_total{route,reason}``       routing's choice (before fallback)
                                                            and why (``mode``, ``canary_in`` …)
``coupon_shim_fallbacks_total{from_route,cause}``           the other route was tried after
                                                            ``from_route`` failed with ``cause``
                                                            (``timeout``, ``http_status`` …)
``coupon_shim_upstream_errors_total{route,kind}``           route failures seen by callers'
                                                            calls (the failure that led to a
                                                            fallback, and the final error)
``coupon_shim_unmapped_fields_total{field}``                v2 keys a v3 answer could not fill
``coupon_shim_shadow_comparisons_total{result}``            ``match`` | ``mismatch`` | ``error``
                                                            | ``dropped`` | ``sampled_out``
``coupon_shim_shadow_field_mismatches_total{field}``        differing fields (``other`` for a
                                                            field no v2 answer defines)
``coupon_shim_shadow_errors_total{kind}``                   shadow failures by kind
``coupon_shim_shadow_duration_seconds{route}``              histogram of shadow call latency
``coupon_shim_shadow_in_flight``                            comparisons running or queued
``coupon_shim_circuit_breaker_open{route,mch_id}``          1 from opening until the breaker
                                                            closes again (half-open included)
``coupon_shim_circuit_breaker_transitions_total``           every state change, labelled
``{route,mch_id,state}``                                    ``open`` | ``half_open`` | ``closed``
``coupon_shim_config_reloads_total{result}``                ``applied`` | ``rejected``
``coupon_shim_coalesced_calls_total{route}``                calls answered by an identical call's
                                                            upstream exchange (single-flight)
``coupon_shim_answer_cache_total{result}``                  ``hit`` | ``miss`` (cache on only)
==========================================================  =====================================

Multi-process servers (gunicorn, uvicorn ``--workers``): set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty folder before the workers start; ``prometheus_client`` then keeps each worker's values in
files there, and :func:`render_latest` (what a ``/metrics`` endpoint should return) aggregates
them. Gauges aggregate as ``livemax`` (breaker open: 1 if open in any live worker) and
``livesum`` (shadow in flight); call ``prometheus_client.multiprocess.mark_process_dead(pid)``
from gunicorn's ``child_exit`` hook so dead workers drop out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from shim._errors import ConfigError, Route
from shim._observe import fallback_kind, outcome_of

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shim._observe import CallRecord
    from shim._policy import BreakerTransition

__all__ = [
    "DURATION_BUCKETS",
    "METRIC_NAMES",
    "V2_ANSWER_FIELDS",
    "ShimMetrics",
    "available",
    "metrics_for",
    "render_latest",
]

_INSTALL_HINT: Final = (
    "metrics need the prometheus_client package: pip install 'coupon-shim[metrics]'"
)

#: Histogram buckets (seconds): resolve 1 ms … 10 s.
DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Fields every v2 answer carries besides the mapped ones: the signature envelope the shim adds
#: when it signs (``nonce_str``, ``sign``) and the business-error pair the mapping's error
#: rules fill (``err_code``, ``err_code_des``).
_ENVELOPE_FIELDS: Final = ("nonce_str", "sign", "err_code", "err_code_des")


def _answer_fields() -> frozenset[str]:
    """The v2 answer fields the shipped mapping can produce, plus the envelope fields."""
    from shim._mapping.load import default_mapping_dir, load_mapping

    table = load_mapping(default_mapping_dir())
    return frozenset({rule.v2_key for rule in table.fields} | set(_ENVELOPE_FIELDS))


#: Every v2 answer field the metrics name (any other field name is counted as ``other``, so a
#: hostile answer cannot grow the label set): derived from the shipped mapping, the one home
#: of the answer's keys, plus the envelope fields.
V2_ANSWER_FIELDS: Final = _answer_fields()


#: The metric families this module defines (names as exposed, without sample suffixes).
METRIC_NAMES: Final = (
    "coupon_shim_calls_total",
    "coupon_shim_call_duration_seconds",
    "coupon_shim_routing_decisions_total",
    "coupon_shim_fallbacks_total",
    "coupon_shim_upstream_errors_total",
    "coupon_shim_unmapped_fields_total",
    "coupon_shim_shadow_comparisons_total",
    "coupon_shim_shadow_field_mismatches_total",
    "coupon_shim_shadow_errors_total",
    "coupon_shim_shadow_duration_seconds",
    "coupon_shim_shadow_in_flight",
    "coupon_shim_circuit_breaker_open",
    "coupon_shim_circuit_breaker_transitions_total",
    "coupon_shim_config_reloads_total",
    "coupon_shim_coalesced_calls_total",
    "coupon_shim_answer_cache_total",
)


def available() -> bool:
    """Whether ``prometheus_client`` is installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _field(name: str) -> str:
    return name if name in V2_ANSWER_FIELDS else "other"


def _counting(child: Any) -> Callable[[], None]:
    """``child.inc`` (a labelled counter's child) as the value update it comes down to.

    ``Counter.inc`` checks, on every call, that the child has its labels and that the amount
    is not negative, then adds under the value's lock; for a bound child and an amount of 1
    only the addition is left. Any other prometheus_client layout keeps the public method.
    """
    from prometheus_client import Counter

    value = getattr(child, "_value", None)
    if type(child).inc is Counter.inc and callable(getattr(value, "inc", None)):
        return functools.partial(value.inc, 1)  # type: ignore[union-attr]
    return child.inc  # type: ignore[no-any-return]


def _observing(child: Any) -> Callable[[float], None]:
    """``child.observe`` (a labelled histogram's child), reduced to its value updates.

    ``Histogram.observe`` adds the amount to the sum, then 1 to the first bucket whose upper
    bound is at least the amount (the last is +Inf), each under its value's lock: the same
    updates here, the bucket found by bisection. Any other prometheus_client layout keeps
    the public method.
    """
    from prometheus_client import Histogram

    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if (
        type(child).observe is not Histogram.observe
        or not isinstance(bounds, list | tuple)
        or not isinstance(buckets, list)
        or len(buckets) != len(bounds)
        or not callable(getattr(total, "inc", None))
    ):
        return child.observe  # type: ignore[no-any-return]
    upper = tuple(bounds)
    add = total.inc  # type: ignore[union-attr]
    counts = tuple(bucket.inc for bucket in buckets)
    last = len(upper)

    def observe(amount: float) -> None:
        add(amount)
        i = bisect_left(upper, amount)
        if i < last and amount <= upper[i]:  # (never true for NaN, as in observe())
            counts[i](1)

    return observe


class ShimMetrics:
    """The shim's metric families in one registry, and the observer methods that feed them.

    Build it with :func:`metrics_for` (one instance per registry); the facades do.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = registry
        self.registry = registry
        self.calls = Counter(
            "coupon_shim_calls",
            "Calls by serving route and outcome",
            ["route", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "coupon_shim_call_duration_seconds",
            "Served call latency by serving route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "coupon_shim_routing_decisions",
            "Routing decisions by chosen route and reason",
            ["route", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "coupon_shim_fallbacks",
            "Fallbacks to the other route by failed route and cause",
            ["from_route", "cause"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "coupon_shim_upstream_errors",
            "Route failures in calls, by route and error kind",
            ["route", "kind"],
            registry=r,
        )
        self.unmapped = Counter(
            "coupon_shim_unmapped_fields",
            "v2 keys a v3 answer could not fill",
            ["field"],
            registry=r,
        )
        self.shadow = Counter(
            "coupon_shim_shadow_comparisons",
            "Shadow comparisons by result",
            ["result"],
            registry=r,
        )
        self.mismatches = Counter(
            "coupon_shim_shadow_field_mismatches",
            "Shadow mismatches by v2 field",
            ["field"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "coupon_shim_shadow_errors",
            "Shadow call failures by kind",
            ["kind"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "coupon_shim_shadow_duration_seconds",
            "Shadow call latency by shadowed route",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "coupon_shim_shadow_in_flight",
            "Shadow comparisons running or queued",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.breaker_open = Gauge(
            "coupon_shim_circuit_breaker_open",
            "1 while a route's circuit breaker for a merchant is open (or half-open)",
            ["route", "mch_id"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_changes = Counter(
            "coupon_shim_circuit_breaker_transitions",
            "Circuit breaker state changes",
            ["route", "mch_id", "state"],
            registry=r,
        )
        self.reloads = Counter(
            "coupon_shim_config_reloads",
            "Config reloads by result",
            ["result"],
            registry=r,
        )
        self.coalesced = Counter(
            "coupon_shim_coalesced_calls",
            "Calls answered by an identical call's upstream exchange (single-flight)",
            ["route"],
            registry=r,
        )
        self.cache = Counter(
            "coupon_shim_answer_cache",
            "Answer cache lookups by result",
            ["result"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._hot: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}

    # ------------------------------------------------------------------ observer methods

    def _child(self, metric: Any, *key: str) -> Any:
        """The labelled child of ``metric``, cached (``labels()`` validates on every call)."""
        cache_key = (id(metric), key)
        child = self._children.get(cache_key)
        if child is None:
            child = self._children.setdefault(cache_key, metric.labels(*key))
        return child

    def _per_call(self, key: tuple[str, str, str, str]) -> tuple[Any, Any, Any]:
        """The bound ``inc``/``observe`` of the three series every call touches."""
        route, outcome, serve, reason = key
        bound = (
            _counting(self._child(self.calls, route, outcome)),
            _observing(self._child(self.duration, route)),
            _counting(self._child(self.decisions, serve, reason)),
        )
        return self._hot.setdefault(key, bound)

    def call(self, record: CallRecord) -> None:
        """Count one finished call (and its shadow comparison, if any)."""
        child = self._child
        served = record.served
        d = record.decision
        if served is not None:  # (record.route and record.outcome, read once)
            route, outcome = served.served_by, outcome_of(served.result.answer)
        else:
            route, outcome = record.route, "error"
        # The three series of every call, bound once per (route, outcome, decision): a
        # bounded set (two routes, four outcomes, the routing reasons).
        key = (route, outcome, d.serve, d.reason)
        per_call = self._hot.get(key) or self._per_call(key)
        per_call[0]()
        per_call[1](record.latency_ms / 1000.0)
        per_call[2]()
        if served is None or served.fallback_error is not None:
            first = record.first_error
            if first is not None:
                child(self.fallbacks, d.serve, fallback_kind(first)).inc()
            for failed_route, kind in record.route_errors:
                child(self.upstream_errors, failed_route, kind).inc()
        if served is not None and served.result.unmapped:
            for name in served.result.unmapped:
                child(self.unmapped, _field(name)).inc()
        tags = record.tags
        if tags:
            if tags.get("coalesced"):
                child(self.coalesced, route).inc()
            looked = tags.get("cache")
            if looked in ("hit", "miss"):
                child(self.cache, looked).inc()
        shadow = record.shadow
        if shadow is not None:
            child(self.shadow, shadow.kind).inc()
            for diff in shadow.diffs:
                child(self.mismatches, _field(diff.field)).inc()
            if shadow.kind == "error":
                child(self.shadow_errors, shadow.error_kind or "unexpected").inc()
            if shadow.latency_ms is not None and d.shadow is not None:
                child(self.shadow_duration, d.shadow).observe(shadow.latency_ms / 1000.0)

    def shadow_in_flight(self, delta: int) -> None:
        """A comparison was handed to the runner (+1) or finished (-1)."""
        self.in_flight.inc(delta)

    def breaker(self, route: Route, mch_id: str, change: BreakerTransition) -> None:
        """Record a breaker state change."""
        self.breaker_open.labels(route, mch_id).set(0 if change.state == "closed" else 1)
        self.breaker_changes.labels(route, mch_id, change.state).inc()

    def breaker_forgotten(self, route: Route, mch_id: str) -> None:
        """A merchant left the config: drop its breaker series."""
        with contextlib.suppress(KeyError):
            self.breaker_open.remove(route, mch_id)
        for state in ("open", "half_open", "closed"):
            with contextlib.suppress(KeyError):
                self.breaker_changes.remove(route, mch_id, state)

    def breakers_known(self, pairs: Iterable[tuple[Route, str]]) -> None:
        """Publish a 0 for breakers that exist and are closed (so dashboards see them)."""
        for route, mch_id in pairs:
            self.breaker_open.labels(route, mch_id)

    def reload(self, applied: bool) -> None:
        """Count a config reload that was applied, or rejected (the last good one kept)."""
        self.reloads.labels("applied" if applied else "rejected").inc()


_BY_REGISTRY: weakref.WeakKeyDictionary[Any, ShimMetrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def metrics_for(registry: CollectorRegistry | None = None) -> ShimMetrics | None:
    """The :class:`ShimMetrics` of ``registry`` (default: ``prometheus_client.REGISTRY``).

    Returns None when ``prometheus_client`` is not installed and no registry was given.

    Raises:
        ConfigError: a registry was given but ``prometheus_client`` cannot be imported.
    """
    try:
        import prometheus_client
    except ImportError:
        if registry is not None:  # pragma: no cover - a registry implies the package
            raise ConfigError(_INSTALL_HINT) from None
        return None
    target = prometheus_client.REGISTRY if registry is None else registry
    with _BY_REGISTRY_LOCK:
        found = _BY_REGISTRY.get(target)
        if found is None:
            found = _BY_REGISTRY[target] = ShimMetrics(target)
    return found


def render_latest(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The text exposition of the metrics, and its content type (for a ``/metrics`` endpoint).

    With ``PROMETHEUS_MULTIPROC_DIR`` set and no ``registry`` given, the values of every
    worker process are aggregated (``prometheus_client.multiprocess.MultiProcessCollector``);
    otherwise ``registry`` (default ``prometheus_client.REGISTRY``) is rendered.

    Raises:
        ConfigError: ``prometheus_client`` is not installed.
    """
    try:
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            REGISTRY,
            CollectorRegistry,
            generate_latest,
        )
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry or REGISTRY), CONTENT_TYPE_LATEST
