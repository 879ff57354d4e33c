"""The facades: the v2 call signature, sync and async, over one flow.

``CouponStockShim`` and ``AsyncCouponStockShim`` share :class:`_ShimCore`, which validates
the call, picks the merchant, decides the route and builds the flow; the twins differ only in
the driver they run it with and the shadow runner they hand comparisons to.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from shim import _v2 as v2
from shim._cache import AnswerCache, Entry
from shim._environ import kill_switch_on
from shim._errors import ClosedError, InputError, Route, ShimError, UpstreamError
from shim._flags import OpenFeatureRouteSource
from shim._flow import (
    CallContext,
    CallOutcome,
    Flow,
    RouteResult,
    call_flow,
    resign,
    route_flow,
)
from shim._live import LiveConfig
from shim._mapping.load import load_mapping
from shim._mapping.model import MappingTable
from shim._nonces import pooled_nonce
from shim._observe import CallRecord, EventSink
from shim._policy import BreakerTransition, CircuitBreaker
from shim._redaction import scrubs_locals, scrubs_locals_async
from shim._routing import Decision, decide, routing_key
from shim._shadow.outcome import ShadowOutcome, compare_answers
from shim._shadow.runners import AsyncShadowRunner, ThreadShadowRunner
from shim._shadow.totals import ShadowStats, ShadowTotals
from shim._singleflight import AsyncFlights, ThreadFlights
from shim._transport import (
    Admission,
    AsyncAdmission,
    DeadlineTransport,
    proxy_mounts,
    run_async,
    run_sync,
)
from shim._values import ShimConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shim.metrics import ShimMetrics

__all__ = ["AsyncCouponStockShim", "CouponStockShim"]

CallObserver = Callable[[CallRecord], None]
_IGNORED_PAYLOAD_KEYS = frozenset({"nonce_str", "sign", "sign_type"})
_NO_V3 = "no_v3_credentials"
_REQUEST_FIELD_SET = frozenset(v2.REQUEST_FIELDS)
_MEMO_SIZE = 4096
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=32, keepalive_expiry=30
)
#: How much longer than ``[shadow] timeout_s`` close() waits for shadow jobs to wind down
#: (each ends by its own deadline; this covers recording its outcome).
CLOSE_GRACE_S = 0.25
_CLOSED_MESSAGE = "the shim is closed; build a new one"

# Fork safety: the pid the shims' pooled connections belong to. A forked child gets a new
# value (os.register_at_fork), and each shim rebuilds its own pool there on first use,
# never touching (or closing) the parent's connections.
_PID = os.getpid()
_FORK_LOCK = threading.Lock()
_ABANDONED: list[object] = []  # the parent's clients, kept (not closed) in a forked child


def _after_fork_in_child() -> None:
    global _PID, _FORK_LOCK
    _PID = os.getpid()
    _FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _limits(limit: int) -> httpx.Limits:
    """Pool limits for the shim's own client: never fewer connections than admissions."""
    return httpx.Limits(
        max_connections=max(limit, 1),
        max_keepalive_connections=min(DEFAULT_LIMITS.max_keepalive_connections or 32, limit),
        keepalive_expiry=DEFAULT_LIMITS.keepalive_expiry,
    )


@dataclass(slots=True)
class _Call:
    ctx: CallContext
    decision: Decision
    started: float
    #: event fields of how the call was served: ``coalesced`` (single-flight), ``cache``
    tags: dict[str, Any] | None = None


class _ShimCore:
    """What the two twins share: config, routing, breakers, shadow totals, events."""

    @scrubs_locals
    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        flag_source: OpenFeatureRouteSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[], str] = pooled_nonce,
        logger: Any = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> None:
        self._env = os.environ if env is None else env
        if isinstance(config, LiveConfig):
            self._live = config
        elif isinstance(config, ShimConfig):
            self._live = LiveConfig(config=config, env=self._env)
        else:
            self._live = LiveConfig(config, env=self._env)
        self._flag_source = flag_source
        self._owns_flag_source = False
        self._clock, self._wall, self._nonce = clock, wall, nonce
        self._breakers: dict[tuple[Route, str], CircuitBreaker] = {}
        self._breaker_lock = threading.Lock()
        self._mapping: tuple[ShimConfig, MappingTable] | None = None
        self._stats = ShadowStats()
        # Observers of call records and breaker changes: events always, metrics when
        # prometheus_client is installed (see shim._observe, shim.metrics).
        self._events = EventSink(logger)
        # The public metrics module is imported when a shim is built, not by ``import shim``.
        from shim.metrics import metrics_for

        self._metrics: ShimMetrics | None = metrics_for(registry) if metrics else None
        self._observers: tuple[CallObserver, ...] = ()
        self._cache = AnswerCache(self._live.current().cache.max_entries)
        # validated arguments -> (request, its fields); shared, never mutated
        self._valid: dict[tuple[Any, ...], tuple[v2.V2Request, dict[str, str]]] = {}
        self._live.on_reload(self._on_reload)
        self._live.on_reload_failed(self._on_reload_failed)
        self._pid = _PID
        self._closed = False

    def subscribe(self, observer: Callable[[CallRecord], None]) -> None:
        """Call ``observer`` with the :class:`~shim._observe.CallRecord` of every finished call.

        It runs on the thread (or task) that finished the call; its exceptions are swallowed.
        """
        self._observers = (*self._observers, observer)

    def unsubscribe(self, observer: Callable[[CallRecord], None]) -> None:
        """Stop calling ``observer``."""
        self._observers = tuple(o for o in self._observers if o != observer)

    @property
    def metrics(self) -> ShimMetrics | None:
        """The metrics this shim records into (None without ``prometheus_client``)."""
        return self._metrics

    def _fresh_after_fork(self) -> None:
        """In a forked child: state no thread of the parent may hold a lock on, anew."""
        self._breakers = {}
        self._breaker_lock = threading.Lock()
        self._stats = ShadowStats()  # the child's own totals
        self._cache = AnswerCache(self._live.current().cache.max_entries)

    @property
    def config(self) -> ShimConfig:
        """The configuration snapshot in force."""
        return self._live.current()

    def shadow_totals(self) -> ShadowTotals:
        """Running shadow totals: calls, matches, mismatches per field, errors, dropped."""
        return self._stats.snapshot()

    def breaker(self, route: Route, mch_id: str) -> CircuitBreaker:
        """The circuit breaker of one route for one merchant."""
        key = (route, mch_id)
        found = self._breakers.get(key)
        if found is None:
            with self._breaker_lock:
                found = self._breakers.get(key)
                if found is None:
                    found = self._breakers[key] = CircuitBreaker(
                        self._live.current().breaker,
                        listener=lambda change: self._breaker_changed(route, mch_id, change),
                    )
                    if self._metrics is not None:
                        self._metrics.breakers_known([key])
        return found

    def _breaker_changed(self, route: Route, mch_id: str, change: BreakerTransition) -> None:
        self._events.breaker(route, mch_id, change)
        if self._metrics is not None:
            self._metrics.breaker(route, mch_id, change)

    def _on_reload(self, old: ShimConfig, new: ShimConfig) -> None:
        """Consumers of the config follow a swapped snapshot (on the reloading thread).

        Breakers of removed merchants go (with their metric series), the others and the
        shadow runner take the new settings; cached answers are dropped. Routing, retry,
        upstream, merchants and mapping are read from each call's snapshot.
        """
        with self._breaker_lock:
            gone = [k for k in self._breakers if k[1] not in new.merchants]
            for key in gone:
                del self._breakers[key]  # a removed merchant's breakers go with it
            kept = list(self._breakers.values())
        for breaker in kept:
            breaker.reconfigure(new.breaker)  # the others follow the reloaded settings
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.reconfigure(new.shadow)
        # Cached answers were verified and mapped under the old snapshot: start afresh.
        self._cache.resize(new.cache.max_entries)
        self._cache.clear()
        if self._metrics is not None:
            self._metrics.reload(applied=True)
            for route, mch_id in gone:
                self._metrics.breaker_forgotten(route, mch_id)

    def _on_reload_failed(self, why: str) -> None:
        if self._metrics is not None:
            self._metrics.reload(applied=False)

    def _table(self, snapshot: ShimConfig) -> MappingTable:
        """The mapping of the snapshot in force (loaded with it; edits arrive by reload)."""
        table = snapshot.mapping
        if table is not None:
            return table
        cached = self._mapping
        if cached is None or cached[0] is not snapshot:
            cached = self._mapping = (snapshot, load_mapping(snapshot.mapping_dir))
        return cached[1]

    def _flag_mode(self, snapshot: ShimConfig, mch_id: str, stock_id: str, bucket_by: str) -> Any:
        if snapshot.routing.flag_source != "openfeature":
            return None
        source, wanted = self._flag_source, snapshot.routing.openfeature_flag
        if source is None or (self._owns_flag_source and source.flag_key != wanted):
            # built here, so it follows a reloaded routing.openfeature_flag
            source = self._flag_source = OpenFeatureRouteSource(flag_key=wanted)
            self._owns_flag_source = True
        return source.mode_for(mch_id, stock_id, routing_key(bucket_by, mch_id, stock_id))

    def _validated(self, values: dict[str, Any]) -> tuple[v2.V2Request, dict[str, str]]:
        """The validated request and its fields, memoised for plain-string arguments.

        Validation is a pure function of the arguments, and hot traffic repeats them; the memo
        is bounded (cleared when full) and never holds a rejected argument.
        """
        key = tuple([values.get(name) for name in v2.REQUEST_FIELDS])
        if values.keys() <= _REQUEST_FIELD_SET and all(type(v) is str or v is None for v in key):
            hit = self._valid.get(key)
            if hit is None:
                request = v2.validate_request(values)
                if len(self._valid) >= _MEMO_SIZE:
                    self._valid.clear()
                hit = self._valid[key] = (request, request._asdict())
            return hit
        request = v2.validate_request(values)
        return request, request._asdict()

    def _prepare(
        self, values: dict[str, Any], xml: Mapping[str, Any] | None, *, route: Route | None = None
    ) -> _Call:
        started = self._clock()
        if xml is not None:
            if any(v is not None for v in values.values()):
                raise InputError("pass either xml={...} or the fields, not both", field="xml")
            if not isinstance(xml, Mapping):
                raise InputError("must be a dict of v2 request fields", field="xml")
            values = {k: v for k, v in xml.items() if k not in _IGNORED_PAYLOAD_KEYS}
        snapshot = self._live.current()
        mch_id = values.get("mch_id")
        appid = values.get("appid")
        if (appid is None or (isinstance(appid, str) and not appid)) and v2.is_plausible_id(mch_id):
            # left out: the merchant's own (an unknown merchant is named as such, not as a
            # missing appid); a falsy non-string appid is the caller's error, not "left out"
            values["appid"] = snapshot.merchant(mch_id).appid
        request, request_fields = self._validated(values)
        merchant = snapshot.merchant(request.mch_id)
        routing = snapshot.routing
        if route is not None:
            decision = Decision(route, None, "explicit")
        else:
            bucket_by = merchant.bucket_by or routing.bucket_by
            decision = decide(
                routing,
                mch_id=request.mch_id,
                coupon_stock_id=request.coupon_stock_id,
                kill_switch=kill_switch_on(routing, self._env),
                bucket_by=merchant.bucket_by,
                flag_mode=self._flag_mode(
                    snapshot, request.mch_id, request.coupon_stock_id, bucket_by
                ),
            )
            if merchant.v3 is None and (decision.serve == "v3" or decision.shadow == "v3"):
                decision = Decision("legacy", None, _NO_V3, decision.bucket)
        ctx = CallContext(
            config=snapshot,
            merchant=merchant,
            mapping=self._table(snapshot),
            request=request,
            request_fields=request_fields,
            breakers=self.breaker,
            deadline=started + snapshot.upstream.budget_s,
            attempts=snapshot.retry.attempts,
            clock=self._clock,
            wall=self._wall,
            nonce=self._nonce,
        )
        return _Call(ctx, decision, started)

    # ------------------------------------------------------------------ cache, single-flight

    def _cache_key(self, call: _Call) -> tuple[Any, ...]:
        """Same merchant, stock, request fields, serving route and upstream."""
        up, serve = call.ctx.config.upstream, call.decision.serve
        return (serve, up.v3_base_url if serve == "v3" else up.v2_base_url, call.ctx.request)

    def _flight_key(self, call: _Call) -> tuple[Any, ...]:
        return (*self._cache_key(call), call.decision.shadow)

    def _from_cache(self, call: _Call) -> tuple[Any, CallOutcome | None]:
        """(cache key or None when the cache is off, the outcome of a hit or None)."""
        ttl = call.ctx.config.cache.ttl_s
        if ttl <= 0:
            return None, None
        key = self._cache_key(call)
        entry: Entry | None = self._cache.get(key, self._clock())
        call.tags = {"cache": "hit" if entry is not None else "miss"}
        if entry is None:
            return key, None
        route: Route = "v3" if entry.route == "v3" else "legacy"
        result = RouteResult(resign(call.ctx, entry.fields), route, 0, entry.unmapped)
        return key, CallOutcome(result, route, False)

    def _remember(self, call: _Call, key: Any, outcome: CallOutcome) -> None:
        if key is not None and not outcome.fallback and not outcome.result.credentials_refused:
            self._cache.put(
                key,
                outcome.result.answer,
                route=outcome.served_by,
                unmapped=outcome.result.unmapped,
                expires=self._clock() + call.ctx.config.cache.ttl_s,
            )

    def _follower(self, call: _Call, outcome: CallOutcome) -> CallOutcome:
        """A coalesced caller's own copy of the shared outcome: its own nonce and sign."""
        call.tags = {**(call.tags or {}), "coalesced": True}
        result = outcome.result
        return replace(outcome, result=replace(result, answer=resign(call.ctx, result.answer)))

    def _fresh(self, call: _Call) -> Callable[[CallOutcome], bool]:
        """Whether a shared outcome was produced during this call (its reply came after)."""
        return lambda outcome: outcome.result.received_at >= call.started

    def _remaining(self, call: _Call) -> Callable[[], float]:
        return lambda: call.ctx.deadline - self._clock()

    def _expired(self, call: _Call) -> Callable[[], ShimError]:
        return lambda: UpstreamError(
            "the call's time budget ran out waiting for an identical call in flight",
            route=call.decision.serve,
            kind="budget",
        )

    def _flow(self, call: _Call) -> Flow[CallOutcome]:
        merchant = call.ctx.merchant
        return call_flow(
            call.ctx, call.decision, can_serve=lambda r: r == "legacy" or merchant.v3 is not None
        )

    def _shadow_ctx(self, call: _Call, submitted: float) -> CallContext:
        snap = call.ctx.config
        return replace(call.ctx, deadline=submitted + snap.shadow.timeout_s, attempts=1)

    def _record(
        self,
        call: _Call,
        *,
        outcome: CallOutcome | None = None,
        error: ShimError | None = None,
        shadow: ShadowOutcome | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Build the call's one record and hand it to every observer."""
        req = call.ctx.request
        record = CallRecord(
            req.mch_id,
            req.coupon_stock_id,
            call.decision,
            latency_ms if latency_ms is not None else (self._clock() - call.started) * 1000.0,
            outcome,
            error,
            shadow,
            call.tags,
        )
        self._events.call(record)
        if self._metrics is not None:
            self._metrics.call(record)
        for observer in self._observers:
            try:
                observer(record)
            except Exception:  # noqa: S112 - an observer must never break a call
                continue

    def _prepare_via(self, route: Route, fields: dict[str, Any]) -> _Call:
        if route not in ("legacy", "v3"):
            shown = repr(route) if isinstance(route, str) else type(route).__name__
            raise InputError(f"must be 'legacy' or 'v3', got {shown[:24]}", field="route")
        xml = fields.pop("xml", None)
        values = _values(*(fields.pop(k, None) for k in v2.REQUEST_FIELDS))
        if fields:
            raise InputError("is not a field of query_coupon_stock", field=sorted(fields)[0])
        return self._prepare(values, xml, route=route)

    def _served(self, call: _Call, outcome: CallOutcome) -> dict[str, str]:
        """After serving: hand the other side to the shadow runner, or record the call.

        A coalesced or cached answer is not compared again (its exchange was, or was not,
        compared when it was made).
        """
        tags = call.tags
        if (
            call.decision.shadow is None
            or outcome.fallback
            or (tags and (tags.get("coalesced") or tags.get("cache") == "hit"))
        ):
            self._record(call, outcome=outcome)
        else:
            latency_ms = (self._clock() - call.started) * 1000.0
            metrics = self._metrics

            def done(shadow: ShadowOutcome) -> None:
                if metrics is not None:
                    metrics.shadow_in_flight(-1)
                self._record(call, outcome=outcome, shadow=shadow, latency_ms=latency_ms)

            if metrics is not None:
                metrics.shadow_in_flight(1)
            self._submit_shadow(call, outcome, done)
        return outcome.result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        raise NotImplementedError  # pragma: no cover - each twin runs shadows its own way

    def _shadow_flow(self, call: _Call, submitted: float) -> Flow[RouteResult]:
        """The other side of a shadowed call: one attempt within the shadow time budget,
        counted from the job's submission (time queued for a worker counts)."""
        assert call.decision.shadow is not None
        return route_flow(self._shadow_ctx(call, submitted), call.decision.shadow)

    def _shadow_outcome(
        self, call: _Call, outcome: CallOutcome, started: float, other: RouteResult | ShimError
    ) -> ShadowOutcome:
        latency_ms = (self._clock() - started) * 1000.0
        if isinstance(other, ClosedError):
            return ShadowOutcome("dropped", latency_ms=latency_ms)  # cut by close()
        if isinstance(other, ShimError):
            return ShadowOutcome.from_error(other, latency_ms=latency_ms)
        return compare_answers(
            outcome.result.answer,
            other.answer,
            ignore=call.ctx.config.shadow.ignore_fields,
            latency_ms=latency_ms,
        )


def _values(
    coupon_stock_id: Any,
    appid: Any,
    mch_id: Any,
    op_user_id: Any,
    device_info: Any,
    version: Any,
    type_: Any,
) -> dict[str, Any]:
    return {
        "coupon_stock_id": coupon_stock_id,
        "appid": appid,
        "mch_id": mch_id,
        "op_user_id": op_user_id,
        "device_info": device_info,
        "version": version,
        "type": type_,
    }


class CouponStockShim(_ShimCore):
    """The v2 ``query_coupon_stock`` call, routed to v2 or v3 (blocking twin).

    Args:
        config: a :class:`ShimConfig`, a :class:`LiveConfig`, or the path of a TOML file
            (then watched and reloaded when it changes).
        client: your own ``httpx.Client`` (not closed by :meth:`close`); by default the shim
            builds one pooled client for its lifetime.
        transport: an httpx transport for the shim's own client (e.g. the emulator's
            in-process ``MockTransport``).
        flag_source: an OpenFeature route source (``routing.flag_source = "openfeature"``).
        env: environment for the kill switch and overrides (default ``os.environ``).
        registry: the ``prometheus_client.CollectorRegistry`` to record metrics into
            (default: ``prometheus_client.REGISTRY`` when the package is installed).
        metrics: False to record no metrics at all.

    Example:
        >>> shim = CouponStockShim.from_file("shim.toml")  # doctest: +SKIP
        >>> shim.query_coupon_stock("1757", "wx5edab3bdfba3dc1c", "10000098")  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._owns_client = client is None
        self._transport = transport
        self._client = client or self._new_client()
        self._gate = Admission(self._live.current().upstream.max_in_flight)
        self._runner: ThreadShadowRunner | None = None
        self._runner_lock = threading.Lock()
        self._flights: ThreadFlights[CallOutcome] = ThreadFlights()

    def _new_client(self) -> httpx.Client:
        limits = _limits(self._live.current().upstream.max_in_flight)
        if self._transport is not None:
            return httpx.Client(transport=self._transport, limits=limits, follow_redirects=False)
        # Environment proxies, as httpx's default would honour them (it ignores them once a
        # transport is given), each on the deadline backend too.
        return httpx.Client(
            transport=DeadlineTransport(limits=limits),
            mounts=proxy_mounts(limits=limits),
            limits=limits,
            follow_redirects=False,
        )

    def _after_fork(self) -> None:
        """First use in a forked child: a pool, gate and shadow runner of its own."""
        with _FORK_LOCK:
            if self._pid == _PID:
                return
            self._fresh_after_fork()
            if self._owns_client:
                _ABANDONED.append(self._client)  # the parent's sockets: never used, never closed
                self._client = self._new_client()
            self._gate = Admission(self._live.current().upstream.max_in_flight)
            self._runner = None  # its threads did not survive the fork
            self._runner_lock = threading.Lock()
            self._flights = ThreadFlights()  # a leader in a parent thread never finishes here
            self._pid = _PID

    def _enter(self) -> None:
        if self._pid != _PID:
            self._after_fork()
        if self._closed:
            raise ClosedError(_CLOSED_MESSAGE)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> CouponStockShim:
        """Build a shim from a TOML config file (watched for changes)."""
        return cls(Path(path), **kwargs)  # watched, with the shim's own env

    @scrubs_locals
    def query_coupon_stock(
        self,
        coupon_stock_id: str | None = None,
        appid: str | None = None,
        mch_id: str | None = None,
        op_user_id: str | None = None,
        device_info: str | None = None,
        version: str | None = None,
        type: str | None = None,
        *,
        xml: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """Query a coupon stock with the v2 call signature; returns the v2 answer dict.

        Business failures (``result_code=FAIL`` with an ``err_code``) are answers, returned as
        dicts exactly as v2 gave them. ``appid`` defaults to the merchant's configured one.

        Raises:
            InputError: an argument is invalid (no request is sent).
            UpstreamError: no usable answer (after retries and any configured fallback).
            SignatureError: an answer failed verification and was refused.
            MappingError: a v3 answer could not be mapped and no fallback served the call.
            ConfigError: the merchant's configuration cannot serve the chosen route.
        """
        self._enter()
        values = _values(coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type)
        call = self._prepare(values, xml)
        self._gate.limit = call.ctx.config.upstream.max_in_flight
        try:
            outcome = self._serve(call)
        except ShimError as err:
            self._record(call, error=err)
            raise
        return self._served(call, outcome)

    def _serve(self, call: _Call) -> CallOutcome:
        """The cache, then single-flight, then the call's own flow."""
        key, hit = self._from_cache(call)
        if hit is not None:
            return hit
        ran = False

        def run() -> CallOutcome:
            nonlocal ran
            ran = True
            return run_sync(self._flow(call), self._client, self._clock, self._gate)

        if not call.ctx.config.single_flight.enabled:
            outcome = run()
        else:
            try:
                outcome, coalesced = self._flights.run(
                    self._flight_key(call),
                    run,
                    fresh=self._fresh(call),
                    remaining=self._remaining(call),
                    expired=self._expired(call),
                )
            except ShimError:
                if not ran:
                    call.tags = {**(call.tags or {}), "coalesced": True}
                raise
            if coalesced:
                return self._follower(call, outcome)
        self._remember(call, key, outcome)
        return outcome

    @scrubs_locals
    def query_via(self, route: Route, **fields: Any) -> dict[str, str]:
        """Query one route directly (no routing, fallback or shadow); used by ``compare``.

        The call is recorded like any other (event, metrics) with reason ``explicit``.
        """
        self._enter()
        call = self._prepare_via(route, fields)
        try:
            result: RouteResult = run_sync(
                route_flow(call.ctx, route), self._client, self._clock, self._gate
            )
        except ShimError as err:
            self._record(call, error=err)
            raise
        self._record(call, outcome=CallOutcome(result, route, False))
        return result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        submitted = self._clock()

        def job() -> ShadowOutcome:
            started = self._clock()
            if started >= submitted + call.ctx.config.shadow.timeout_s:
                return ShadowOutcome("dropped")  # waited out its whole budget in the queue
            try:
                other: RouteResult | ShimError = run_sync(
                    self._shadow_flow(call, submitted), self._client, self._clock, self._gate
                )
            except ShimError as err:
                other = err
            return self._shadow_outcome(call, outcome, started, other)

        self._shadow_runner().submit(job, done)

    def _shadow_runner(self) -> ThreadShadowRunner:
        runner = self._runner
        if runner is None:
            with self._runner_lock:
                if self._runner is None:
                    self._runner = ThreadShadowRunner(self._live.current().shadow, self._stats)
                runner = self._runner
        return runner

    def wait_for_shadows(self, timeout: float = 10.0) -> bool:
        """Block until no shadow comparison is in flight (for tests, scripts and shutdown)."""
        end = time.monotonic() + timeout
        while self._runner is not None and self._runner.in_flight:
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Refuse new calls, finish queued and running shadow comparisons, then close.

        Each comparison ends by its own ``[shadow] timeout_s`` (from its submission), so
        this returns within about that long; a comparison it still cuts is counted as
        dropped. Calls still running when the client closes end with
        :class:`~shim._errors.ClosedError`; later calls raise it at once. Closing never
        counts against a circuit breaker. A client you passed in is not closed.
        """
        if self._pid != _PID:
            self._after_fork()  # a child closes its own pool, never the parent's
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            timeout = self._live.current().shadow.timeout_s + CLOSE_GRACE_S
            self._runner.close(wait=True, timeout=timeout)
        self._gate.close()
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> CouponStockShim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncCouponStockShim(_ShimCore):
    """The v2 ``query_coupon_stock`` call, routed to v2 or v3 (asyncio twin).

    Same arguments as :class:`CouponStockShim`, with ``httpx.AsyncClient`` /
    ``httpx.AsyncBaseTransport``. Use ``async with`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._owns_client = client is None
        self._transport = transport
        self._client = client or self._new_client()
        self._gate = AsyncAdmission(self._live.current().upstream.max_in_flight)
        self._runner: AsyncShadowRunner | None = None
        self._flights: AsyncFlights[CallOutcome] = AsyncFlights()

    def _new_client(self) -> httpx.AsyncClient:
        limits = _limits(self._live.current().upstream.max_in_flight)
        return httpx.AsyncClient(transport=self._transport, limits=limits, follow_redirects=False)

    def _after_fork(self) -> None:
        """First use in a forked child: a pool, gate and shadow runner of its own."""
        with _FORK_LOCK:
            if self._pid == _PID:
                return
            self._fresh_after_fork()
            if self._owns_client:
                _ABANDONED.append(self._client)  # the parent's sockets: never used, never closed
                self._client = self._new_client()
            self._gate = AsyncAdmission(self._live.current().upstream.max_in_flight)
            self._runner = None  # its tasks belong to the parent's event loop
            self._flights = AsyncFlights()
            self._pid = _PID

    def _enter(self) -> None:
        if self._pid != _PID:
            self._after_fork()
        if self._closed:
            raise ClosedError(_CLOSED_MESSAGE)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> AsyncCouponStockShim:
        """Build a shim from a TOML config file (watched for changes)."""
        return cls(Path(path), **kwargs)  # watched, with the shim's own env

    @scrubs_locals_async
    async def query_coupon_stock(
        self,
        coupon_stock_id: str | None = None,
        appid: str | None = None,
        mch_id: str | None = None,
        op_user_id: str | None = None,
        device_info: str | None = None,
        version: str | None = None,
        type: str | None = None,
        *,
        xml: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """Query a coupon stock with the v2 call signature; see :class:`CouponStockShim`."""
        self._enter()
        values = _values(coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type)
        call = self._prepare(values, xml)
        self._gate.limit = call.ctx.config.upstream.max_in_flight
        try:
            outcome = await self._serve(call)
        except ShimError as err:
            self._record(call, error=err)
            raise
        return self._served(call, outcome)

    async def _serve(self, call: _Call) -> CallOutcome:
        """The cache, then single-flight, then the call's own flow."""
        key, hit = self._from_cache(call)
        if hit is not None:
            return hit
        ran = False

        async def run() -> CallOutcome:
            nonlocal ran
            ran = True
            return await run_async(self._flow(call), self._client, self._clock, self._gate)

        if not call.ctx.config.single_flight.enabled:
            outcome = await run()
        else:
            try:
                outcome, coalesced = await self._flights.run(
                    self._flight_key(call),
                    run,
                    fresh=self._fresh(call),
                    remaining=self._remaining(call),
                    expired=self._expired(call),
                )
            except ShimError:
                if not ran:
                    call.tags = {**(call.tags or {}), "coalesced": True}
                raise
            if coalesced:
                return self._follower(call, outcome)
        self._remember(call, key, outcome)
        return outcome

    @scrubs_locals_async
    async def query_via(self, route: Route, **fields: Any) -> dict[str, str]:
        """Query one route directly (no routing, fallback or shadow); recorded as ``explicit``."""
        self._enter()
        call = self._prepare_via(route, fields)
        try:
            result: RouteResult = await run_async(
                route_flow(call.ctx, route), self._client, self._clock, self._gate
            )
        except ShimError as err:
            self._record(call, error=err)
            raise
        self._record(call, outcome=CallOutcome(result, route, False))
        return result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        submitted = self._clock()

        async def job() -> ShadowOutcome:
            started = self._clock()
            try:
                other: RouteResult | ShimError = await run_async(
                    self._shadow_flow(call, submitted), self._client, self._clock, self._gate
                )
            except ShimError as err:
                other = err
            return self._shadow_outcome(call, outcome, started, other)

        if self._runner is None:
            self._runner = AsyncShadowRunner(self._live.current().shadow, self._stats)
        self._runner.submit(job, done)

    async def wait_for_shadows(self, timeout: float = 10.0) -> bool:
        """Wait until no shadow comparison is in flight."""
        end = time.monotonic() + timeout
        while self._runner is not None and self._runner.in_flight:
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.005)
        return True

    async def aclose(self) -> None:
        """Refuse new calls, finish running shadow comparisons, then close.

        Each comparison ends by its own ``[shadow] timeout_s``, so this returns within about
        that long. Calls still running when the client closes end with
        :class:`~shim._errors.ClosedError`; later calls raise it at once. Closing never
        counts against a circuit breaker. A client you passed in is not closed.
        """
        if self._pid != _PID:
            self._after_fork()  # a child closes its own pool, never the parent's
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            await self._runner.aclose(wait=True)
        self._gate.close()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncCouponStockShim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
