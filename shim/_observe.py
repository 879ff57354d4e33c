"""What observers see: one record per call, breaker changes, reloads; and the event sink.

The facade builds one :class:`CallRecord` per call, in one place, when the call is complete
(for a shadowed call, once its comparison is done). Observers subscribe to the records; they
are never called from the flow. Two observers ship with the library:

- :class:`EventSink` turns each record into the ``coupon_stock.query`` event (and each breaker
  change into a ``coupon_shim.circuit_breaker`` event) on the library's logger
  (:mod:`shim._logs`: silent unless the application configures logging or structlog);
- :class:`shim.metrics.ShimMetrics` counts them in a Prometheus registry.

Event schema of ``coupon_stock.query`` (one event per call; readers such as
``coupon-shim report`` rely on these names):

=====================  ==========================================================
``mch_id``             the caller's merchant
``coupon_stock_id``    the stock queried
``route``              the route that served (``legacy`` | ``v3``); for an error,
                       the route that failed last
``decided_route``      the route routing chose to serve (before any fallback)
``reason``             why routing chose it: ``mode``, ``flag``, ``canary_in``,
                       ``canary_out``, ``kill_switch``, ``force_legacy_mch_id``,
                       ``force_legacy_stock_id``, ``force_v3_mch_id``,
                       ``force_v3_stock_id``, ``no_v3_credentials``, ``explicit``
                       (``query_via`` / ``coupon-shim query --route``)
``bucket``             the routing key's bucket (0-9999) in canary mode, else null
``latency_ms``         the served call's latency
``outcome``            ``success`` | ``business_error`` | ``fail`` | ``error``
``fallback``           true when the other route served (or was tried) after a failure
``attempts``           attempts on the serving route (answers only)
``fallback_from``      the route that failed first (when a fallback served)
``fallback_cause``     its error, ``Type:kind`` (e.g. ``UpstreamError:timeout``)
``fallback_kind``      the same as a bare kind (``timeout``; the metrics' ``cause``);
                       ``credentials_refused`` when v3 refused the shim's own
                       credentials (HTTP 401 / ``SIGN_ERROR``)
``unmapped``           v2 keys v3 could not fill (list)
``err_code``           the v2 business error code, when the answer has one
``error_kind``         for errors: ``Type:kind`` (e.g. ``SignatureError``)
``error_cause``        for errors: the bare kind (``signature``, ``timeout`` …)
``error``              for errors: the secret-free message
``shadow_route``       the route compared in the background (shadowed calls)
``shadow``             ``match`` | ``mismatch`` | ``error`` | ``dropped`` |
                       ``sampled_out``
``mismatch_fields``    fields that differ (list)
``shadow_error``       the shadow failure's kind
``shadow_latency_ms``  how long the shadow call took
``coalesced``          true when an identical call in flight answered this one
``cache``              ``hit`` | ``miss`` when the answer cache is on
=====================  ==========================================================

plus whatever context the application bound with ``structlog.contextvars``
(``request_id`` …), also for shadowed calls of the sync twin.

When v3 refused the shim's own credentials (an HTTP 401 or ``SIGN_ERROR``: a wrong
``v3_private_key`` or ``v3_cert_serial``, a skewed clock), the sink also logs the WARNING event
``coupon_shim.v3_credentials_refused`` (``mch_id``, ``coupon_stock_id``, ``status``, ``code``,
``request_id``, ``served_by``, ``action``, ``hint``), whether legacy then served or not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shim._errors import Route, ShimError, UpstreamError
from shim._events import CREDENTIALS_REFUSED_EVENT, EVENT
from shim._logs import LibraryLogger, get_logger
from shim._policy import BreakerTransition, credentials_refused
from shim._routing import Decision
from shim._shadow.outcome import ShadowOutcome, error_kind_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from shim._flow import CallOutcome
    from shim.metrics import ShimMetrics

__all__ = [
    "BREAKER_EVENT",
    "CallObservers",
    "CallRecord",
    "EventSink",
    "Outcome",
    "credentials_refusal",
    "describe_route",
    "event_fields",
    "fallback_kind",
    "outcome_of",
]

BREAKER_EVENT = "coupon_shim.circuit_breaker"
Outcome = Literal["success", "business_error", "fail", "error"]


def outcome_of(answer: Mapping[str, str]) -> Outcome:
    """``success``, ``business_error`` (result_code FAIL or an err_code) or ``fail``."""
    if answer.get("return_code") != "SUCCESS":
        return "fail"
    if answer.get("result_code") != "SUCCESS" or answer.get("err_code"):
        return "business_error"
    return "success"


def _type_kind(error: ShimError) -> str:
    kind = getattr(error, "kind", None)
    name = type(error).__name__
    return f"{name}:{kind}" if kind else name


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything observable about one finished call.

    Attributes:
        mch_id: the caller's merchant.
        coupon_stock_id: the stock queried.
        decision: the routing decision.
        latency_ms: the served call's latency (shadow work excluded).
        served: what served the call, for an answer.
        error: the typed error the caller got, for an error.
        shadow: the shadow comparison's outcome, for a shadowed call.
        tags: how the call was served when not by its own exchange: ``coalesced`` (an
            identical call in flight answered it, single-flight), ``cache`` (``hit`` or
            ``miss``, when the answer cache is on).
    """

    mch_id: str
    coupon_stock_id: str
    decision: Decision
    latency_ms: float
    served: CallOutcome | None = None
    error: ShimError | None = None
    shadow: ShadowOutcome | None = None
    tags: Mapping[str, Any] | None = None

    @property
    def route(self) -> Route:
        """The route that served; for an error, the route that failed last."""
        if self.served is not None:
            return self.served.served_by
        if isinstance(self.error, UpstreamError):
            return self.error.route
        return self.decision.serve

    @property
    def outcome(self) -> Outcome:
        """``success`` | ``business_error`` | ``fail`` | ``error``."""
        if self.served is None:
            return "error"
        return outcome_of(self.served.result.answer)

    @property
    def first_error(self) -> ShimError | None:
        """The serving route's error when the other route was then tried, else None."""
        if self.served is not None:
            return self.served.fallback_error
        cause = self.error.__cause__ if self.error is not None else None
        return cause if isinstance(cause, ShimError) else None

    @property
    def route_errors(self) -> tuple[tuple[Route, str], ...]:
        """Each route failure in the call as (route, kind): the first route's, then the last."""
        out: list[tuple[Route, str]] = []
        first = self.first_error
        if first is not None:
            out.append((self.decision.serve, error_kind_of(first)))
        if self.error is not None:
            out.append((self.route, error_kind_of(self.error)))
        return tuple(out)


def fallback_kind(first: ShimError) -> str:
    """The cause of a fallback as a bare kind: ``credentials_refused`` when v3 refused the
    shim's own credentials, else the error's kind (``timeout``, ``mapping`` …)."""
    return "credentials_refused" if credentials_refused(first) else error_kind_of(first)


def credentials_refusal(record: CallRecord) -> tuple[bool, ShimError | None]:
    """Whether v3 refused the shim's credentials in this call, and the error that said so
    (None for a signed 401 the mapping turned into an answer)."""
    for error in (record.first_error, record.error):
        if error is not None and credentials_refused(error):
            return True, error
    served = record.served
    if served is not None and served.result.credentials_refused:
        return True, None
    return False, None


def describe_route(record: CallRecord) -> str:
    """One line saying which route served and why, e.g. ``v3 (reason: canary_in, bucket 12)``."""
    d = record.decision
    why = f"reason: {d.reason}"
    if d.bucket is not None:
        why += f", bucket {d.bucket}"
    text = f"{record.route} ({why})"
    first = record.first_error
    if first is not None:
        text += f", after {d.serve} failed ({error_kind_of(first)})"
    if record.shadow is not None and d.shadow is not None:
        text += f"; {d.shadow} shadowed: {record.shadow.kind}"
    return text


class EventSink:
    """Logs records as events on the library's logger (see :mod:`shim._logs`)."""

    __slots__ = ("_log",)

    def __init__(self, logger: Any = None) -> None:
        self._log: Any = logger if logger is not None else get_logger("shim")

    def _target(self) -> Any:
        log = self._log
        if isinstance(log, LibraryLogger):
            return log.resolve()
        bind = getattr(log, "bind", None)  # structlog's lazy proxy: resolve once per event
        return log if bind is None else bind()

    def call(self, record: CallRecord) -> None:
        """Emit the ``coupon_stock.query`` event of one call (and the WARNING event when v3
        refused the shim's credentials)."""
        log = self._target()
        refused, error = credentials_refusal(record)
        if refused:
            served_by = record.served.served_by if record.served is not None else None
            log.warning(
                CREDENTIALS_REFUSED_EVENT,
                mch_id=record.mch_id,
                coupon_stock_id=record.coupon_stock_id,
                route="v3",
                status=getattr(error, "status", None) or 401,
                code=getattr(error, "code", None) or "SIGN_ERROR",
                request_id=getattr(error, "request_id", None),
                served_by=served_by,
                action=(
                    "served by legacy (fallback_to_legacy)"
                    if served_by == "legacy"
                    else "not served by legacy: fallback_to_legacy is off or not possible"
                ),
                hint="check the merchant's v3_private_key, v3_cert_serial and the host clock",
            )
        enabled = getattr(log, "is_enabled_for", None)
        if enabled is not None and not enabled(logging.INFO):
            return  # filtered out (e.g. an app at WARNING): build nothing
        log.info(EVENT, **event_fields(record))

    def breaker(self, route: Route, mch_id: str, change: BreakerTransition) -> None:
        """Emit the ``coupon_shim.circuit_breaker`` event of one state change."""
        log = self._target()
        fields = {
            "route": route,
            "mch_id": mch_id,
            "state": change.state,
            "previous": change.previous,
            "cause": change.cause,
            "failures": change.failures,
            "error_kind": change.error_kind,
            "reset_after_s": change.reset_after_s,
        }
        if change.state == "open":
            log.warning(BREAKER_EVENT, **fields)
        else:
            log.info(BREAKER_EVENT, **fields)


def event_fields(record: CallRecord) -> dict[str, Any]:
    """The ``coupon_stock.query`` event's fields for one record (see the module doc)."""
    d = record.decision
    served, error = record.served, record.error
    if served is not None:
        result = served.result
        fields: dict[str, Any] = {
            "mch_id": record.mch_id,
            "coupon_stock_id": record.coupon_stock_id,
            "route": served.served_by,
            "decided_route": d.serve,
            "reason": d.reason,
            "bucket": d.bucket,
            "latency_ms": round(record.latency_ms, 3),
            "outcome": outcome_of(result.answer),
            "fallback": served.fallback,
            "attempts": result.attempts,
        }
        if served.fallback_error is not None:
            fields["fallback_from"] = d.serve
            fields["fallback_cause"] = _type_kind(served.fallback_error)
            fields["fallback_kind"] = fallback_kind(served.fallback_error)
        if result.unmapped:
            fields["unmapped"] = list(result.unmapped)
        if "err_code" in result.answer:
            fields["err_code"] = result.answer["err_code"]
    else:
        fields = {
            "mch_id": record.mch_id,
            "coupon_stock_id": record.coupon_stock_id,
            "route": record.route,
            "decided_route": d.serve,
            "reason": d.reason,
            "bucket": d.bucket,
            "latency_ms": round(record.latency_ms, 3),
        }
    if error is not None:
        fields["outcome"] = "error"
        first = record.first_error
        fields["fallback"] = first is not None
        if first is not None:
            fields["fallback_from"] = d.serve
            fields["fallback_cause"] = _type_kind(first)
            fields["fallback_kind"] = fallback_kind(first)
        fields["error_kind"] = _type_kind(error)
        fields["error_cause"] = error_kind_of(error)
        fields["error"] = str(error)
    if record.tags:
        fields.update(record.tags)
    shadow = record.shadow
    if shadow is not None:
        fields["shadow_route"] = d.shadow
        fields["shadow"] = shadow.kind
        if shadow.diffs:
            fields["mismatch_fields"] = [diff.field for diff in shadow.diffs]
        if shadow.error_kind:
            fields["shadow_error"] = shadow.error_kind
        if shadow.latency_ms is not None:
            fields["shadow_latency_ms"] = round(shadow.latency_ms, 3)
    return fields


class CallObservers:
    """Everyone told about one shim's calls: its events, its metrics, its subscribers.

    The facade hands each finished call's one :class:`CallRecord` (and each breaker change,
    reload and shadow start/end) here; this fans it out to the :class:`EventSink`, the
    shim's :class:`~shim.metrics.ShimMetrics` (None without ``prometheus_client`` or with
    ``metrics=False``) and every subscriber. A subscriber runs on the thread (or task) that
    finished the call; its exceptions are swallowed.
    """

    __slots__ = ("_events", "_subscribers", "metrics")

    def __init__(self, metrics: ShimMetrics | None, logger: Any = None) -> None:
        self._events = EventSink(logger)
        self.metrics = metrics
        self._subscribers: tuple[Callable[[CallRecord], None], ...] = ()

    def subscribe(self, observer: Callable[[CallRecord], None]) -> None:
        self._subscribers = (*self._subscribers, observer)

    def unsubscribe(self, observer: Callable[[CallRecord], None]) -> None:
        self._subscribers = tuple(o for o in self._subscribers if o != observer)

    def call(self, record: CallRecord) -> None:
        """One finished call."""
        self._events.call(record)
        if self.metrics is not None:
            self.metrics.call(record)
        for observer in self._subscribers:
            try:
                observer(record)
            except Exception:  # noqa: S112 - an observer must never break a call
                continue

    def breaker(self, route: Route, mch_id: str, change: BreakerTransition) -> None:
        """One breaker's state change."""
        self._events.breaker(route, mch_id, change)
        if self.metrics is not None:
            self.metrics.breaker(route, mch_id, change)

    def breaker_known(self, route: Route, mch_id: str) -> None:
        if self.metrics is not None:
            self.metrics.breakers_known([(route, mch_id)])

    def breakers_forgotten(self, pairs: list[tuple[Route, str]]) -> None:
        if self.metrics is not None:
            for route, mch_id in pairs:
                self.metrics.breaker_forgotten(route, mch_id)

    def reload(self, applied: bool) -> None:
        """A config reload was applied (or refused)."""
        if self.metrics is not None:
            self.metrics.reload(applied=applied)

    def shadow_in_flight(self, delta: int) -> None:
        if self.metrics is not None:
            self.metrics.shadow_in_flight(delta)
