"""The facades: the v2 call signature, sync and async, over one flow.

``CouponStockShim`` and ``AsyncCouponStockShim`` share :class:`_ShimCore`: the wiring of the
parts (each idea in its own module) and every decision of serving a call (cache, single-flight,
settlement, shadow hand-off). The twins differ only in their I/O: the driver that runs the
sans-IO flow, the httpx client, the admission gate, the single-flight group and the shadow
runner of their kind.
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

from shim._cache import AnswerCache, Entry
from shim._environ import kill_switch_on
from shim._errors import ClosedError, ConfigError, Route, ShimError, UpstreamError
from shim._flags import OpenFeatureRouteSource, RouteFlags
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
from shim._mapping.model import MappingTable
from shim._nonces import pooled_nonce
from shim._observe import CallObservers, CallRecord
from shim._policy import CircuitBreaker
from shim._redaction import scrubs_locals, scrubs_locals_async
from shim._request import Requests, call_values, via_values
from shim._routing import Decision, decide
from shim._shadow.outcome import ShadowOutcome
from shim._shadow.runners import AsyncShadowRunner, ThreadShadowRunner
from shim._shadow.totals import ShadowTotals
from shim._shadowing import ShadowJob, Shadows
from shim._singleflight import AsyncFlights, ThreadFlights
from shim._transport import (
    Admission,
    AsyncAdmission,
    AsyncPool,
    SyncPool,
    new_async_client,
    new_sync_client,
    run_async,
    run_sync,
)
from shim._v2 import REQUEST_FIELDS, V2Request
from shim._values import MerchantConfig, ShimConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from shim.metrics import ShimMetrics

__all__ = ["AsyncCouponStockShim", "CouponStockShim"]

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


#: A call's answer-cache key and single-flight key (see :meth:`_ShimCore._plan`).
_Keys = tuple[tuple[Any, ...], tuple[Any, ...]]
#: What a call's arguments resolve to under one snapshot (:meth:`_ShimCore._resolve`):
#: request, its fields, merchant, mapping, decision (None: decided per call) and its keys.
_Static = tuple[
    V2Request,
    Mapping[str, str],
    MerchantConfig,
    "MappingTable | None",
    "Decision | None",
    "_Keys | None",
]
#: Argument types a snapshot's memo of resolved calls keeps (anything else is validated anew).
_MEMO_TYPES: frozenset[type] = frozenset({str, type(None)})
#: Resolved argument tuples one snapshot's memo keeps before it starts afresh.
_MEMO_SIZE = 4096
_REQUEST_FIELD_SET = frozenset(REQUEST_FIELDS)


def _cache_key_of(snapshot: ShimConfig, serve: Route, request: V2Request) -> tuple[Any, ...]:
    """Same merchant, stock, request fields, serving route and upstream."""
    up = snapshot.upstream
    return (serve, up.v3_base_url if serve == "v3" else up.v2_base_url, request)


@dataclass(slots=True)
class _Call:
    """One call, and how :class:`_ShimCore` serves it when the cache did not answer.

    :meth:`_ShimCore._plan` sets the plan: the answer-cache key (``cache_key``, None with the
    cache off) and the single-flight key (``flight``, None with single-flight off). The twin
    runs the call's flow (through single-flight when ``flight`` is a key), calling :meth:`ran`
    from the work it hands to the group, then gives the outcome to :meth:`_ShimCore._settle`
    (or, for a ShimError, calls :meth:`_ShimCore._unserved`).
    """

    ctx: CallContext
    decision: Decision
    started: float
    #: event fields of how the call was served: ``coalesced`` (single-flight), ``cache``
    tags: dict[str, Any] | None = None
    #: the cache and single-flight keys of ``decision``, when resolved with the arguments
    keys: _Keys | None = None
    cache_key: Any = None
    flight: Any = None
    did_run: bool = False

    def ran(self) -> None:
        self.did_run = True


#: How a call is served (see :class:`_Call`): the call itself, with its plan set.
_Plan = _Call


class _ShimCore:
    """What the two twins share: the wiring of config, requests, routing, breakers, cache,
    single-flight, shadows and observers; and every decision of serving a call.

    Each idea lives in its own module (request normalisation in :mod:`shim._request`, flag
    source in :mod:`shim._flags`, records and their observers in :mod:`shim._observe`,
    shadow wiring in :mod:`shim._shadowing`, the call itself in the sans-IO
    :mod:`shim._flow`); the twins add only the I/O: the driver, the client, the admission
    gate, the single-flight group and the shadow runner of their kind. Everything built from
    the config follows a reloaded snapshot (:meth:`_on_reload`).
    """

    _gate: Any  # the twin's Admission or AsyncAdmission (its ``limit`` follows reloads)
    _shadows: Shadows[Any]

    @scrubs_locals
    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        flag_source: OpenFeatureRouteSource | None,
        env: Mapping[str, str] | None,
        clock: Callable[[], float],
        wall: Callable[[], float],
        nonce: Callable[[], str],
        logger: Any,
        registry: CollectorRegistry | None,
        metrics: bool,
    ) -> None:
        self._env = os.environ if env is None else env
        if isinstance(config, LiveConfig):
            self._live = config
        elif isinstance(config, ShimConfig):
            self._live = LiveConfig(config=config, env=self._env)
        else:
            self._live = LiveConfig(config, env=self._env)
        self._flags = RouteFlags(flag_source)
        self._clock, self._wall, self._nonce = clock, wall, nonce
        self._breakers: dict[tuple[Route, str], CircuitBreaker] = {}
        self._breaker_lock = threading.Lock()
        # Observers of call records and breaker changes: events always, metrics when
        # prometheus_client is installed (see shim._observe, shim.metrics).
        # The public metrics module is imported when a shim is built, not by ``import shim``.
        from shim.metrics import metrics_for

        self._observers = CallObservers(metrics_for(registry) if metrics else None, logger)
        self._cache = AnswerCache(self._live.current().cache.max_entries)
        self._requests = Requests()
        # the snapshot in force and its memo of resolved calls (see _prepare_args)
        self._memo: tuple[ShimConfig | None, dict[tuple[Any, ...], _Static]] = (None, {})
        self._live.on_reload(self._on_reload)
        self._live.on_reload_failed(self._on_reload_failed)
        self._pid = _PID
        self._closed = False

    def subscribe(self, observer: Callable[[CallRecord], None]) -> None:
        """Call ``observer`` with the :class:`~shim._observe.CallRecord` of every finished call.

        It runs on the thread (or task) that finished the call; its exceptions are swallowed.
        """
        self._observers.subscribe(observer)

    def unsubscribe(self, observer: Callable[[CallRecord], None]) -> None:
        """Stop calling ``observer``."""
        self._observers.unsubscribe(observer)

    @property
    def metrics(self) -> ShimMetrics | None:
        """The metrics this shim records into (None without ``prometheus_client``)."""
        return self._observers.metrics

    @property
    def _runner(self) -> Any:
        """The shadow runner, if one was built (read-only, for tests and the load bench)."""
        return self._shadows.running

    def _enter(self) -> None:
        """Before each call: a forked child rebuilds its own state; a closed shim refuses."""
        if self._pid != _PID:
            self._after_fork()
        if self._closed:
            raise ClosedError(_CLOSED_MESSAGE)

    def _after_fork(self) -> None:
        """A twin's own pool, gate and flights, anew in a forked child (see the twins)."""
        raise NotImplementedError

    def _fresh_after_fork(self) -> None:
        """In a forked child: state no thread of the parent may hold a lock on, anew."""
        self._breakers = {}
        self._breaker_lock = threading.Lock()
        self._shadows.after_fork()  # the child's own totals, no runner
        self._cache = AnswerCache(self._live.current().cache.max_entries)

    @property
    def config(self) -> ShimConfig:
        """The configuration snapshot in force."""
        return self._live.current()

    def shadow_totals(self) -> ShadowTotals:
        """Running shadow totals: calls, matches, mismatches per field, errors, dropped."""
        return self._shadows.totals()

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
                        listener=lambda change: self._observers.breaker(route, mch_id, change),
                    )
                    self._observers.breaker_known(route, mch_id)
        return found

    def _on_reload(self, old: ShimConfig, new: ShimConfig) -> None:
        """Consumers of the config follow a swapped snapshot (on the reloading thread).

        Breakers of removed merchants go (with their metric series), the others take the new
        settings, as do the shadow runner, the admission limit, the answer cache's size and
        the flag source; cached answers are dropped. Routing, retry and backoff, upstream,
        single-flight, merchants and mapping are read from each call's snapshot.
        """
        with self._breaker_lock:
            gone = [k for k in self._breakers if k[1] not in new.merchants]
            for key in gone:
                del self._breakers[key]  # a removed merchant's breakers go with it
            kept = list(self._breakers.values())
        for breaker in kept:
            breaker.reconfigure(new.breaker)  # the others follow the reloaded settings
        self._shadows.reconfigure(new.shadow)
        gate = getattr(self, "_gate", None)  # (None while the twin is still being built)
        if gate is not None:
            gate.limit = new.upstream.max_in_flight
        self._flags.reconfigure(new.routing)
        # Cached answers were verified and mapped under the old snapshot: start afresh.
        self._cache.resize(new.cache.max_entries)
        self._cache.clear()
        self._memo = (None, {})  # calls resolve anew under the new snapshot
        self._observers.reload(applied=True)
        self._observers.breakers_forgotten(gone)

    def _on_reload_failed(self, why: str) -> None:
        self._observers.reload(applied=False)

    def _table(self, snapshot: ShimConfig) -> MappingTable:
        """The mapping of the snapshot in force (loaded with it; edits arrive by reload)."""
        table = snapshot.mapping
        if table is None:  # LiveConfig loads the mapping with every snapshot it holds
            raise ConfigError(
                "the config snapshot has no mapping loaded (build it with load_config)"
            )
        return table

    def _prepare(
        self, values: dict[str, Any], xml: Mapping[str, Any] | None, *, route: Route | None = None
    ) -> _Call:
        """Validate the call, pick the merchant, decide the route, build the context."""
        started = self._clock()
        snapshot = self._live.current()
        request, request_fields, merchant, mapping, decision, keys = self._resolve(
            values, xml, snapshot, decide_route=route is None
        )
        if route is not None:
            decision, keys = Decision(route, None, "explicit"), None
        elif decision is None or kill_switch_on(snapshot.routing, self._env):
            decision, keys = self._decide(snapshot, request, merchant), None
        if mapping is None:
            mapping = self._table(snapshot)
        return self._call(
            snapshot, started, request, request_fields, merchant, mapping, decision, keys
        )

    def _begin(self, args: tuple[Any, ...], xml: Mapping[str, Any] | None) -> _Call:
        """A call of the v2 signature (``args`` positional, as :meth:`_prepare_args` takes
        them), once the shim is usable: refused when closed, rebuilt in a forked child."""
        self._enter()
        if xml is None:
            return self._prepare_args(args)
        return self._prepare(call_values(*args), xml)

    def _prepare_args(self, args: tuple[Any, ...]) -> _Call:
        """:meth:`_prepare` of the positional v2 call signature (``args`` in the order of
        :data:`shim._v2.REQUEST_FIELDS`), through the snapshot's memo of resolved calls."""
        started = self._clock()
        snapshot = self._live.current()
        memo = self._memo
        if memo[0] is not snapshot:  # a reloaded snapshot: its own memo
            memo = self._memo = (snapshot, {})
        # Only plain strings and None are memoised (a str subclass or any other object goes
        # through validation on every call).
        static = memo[1].get(args) if {*map(type, args)} <= _MEMO_TYPES else None
        if static is None:
            static = self._resolve(dict(zip(REQUEST_FIELDS, args, strict=True)), None, snapshot)
        request, request_fields, merchant, mapping, decision, keys = static
        # the kill switch is read on every call (the environment may change at any time)
        if decision is None or kill_switch_on(snapshot.routing, self._env):
            decision, keys = self._decide(snapshot, request, merchant), None
        if mapping is None:
            mapping = self._table(snapshot)
        return self._call(
            snapshot, started, request, request_fields, merchant, mapping, decision, keys
        )

    def _resolve(
        self,
        values: dict[str, Any],
        xml: Mapping[str, Any] | None,
        snapshot: ShimConfig,
        *,
        decide_route: bool = True,
    ) -> _Static:
        """What a call's arguments resolve to under ``snapshot``, whatever the call's time:
        the validated request, the merchant, the mapping and, unless a flag source decides
        each call, the routing decision without the kill switch with its cache and
        single-flight keys. Kept in the snapshot's memo when the arguments are memoisable
        (plain strings or None), never when any step raises. ``decide_route=False``
        (``query_via``): no routing decision, nothing memoised."""
        memo_key = None
        if decide_route and xml is None and values.keys() <= _REQUEST_FIELD_SET:
            memo_key = tuple([values.get(name) for name in REQUEST_FIELDS])
        request, request_fields = self._requests.normalise(values, xml, snapshot)
        merchant = snapshot.merchant(request.mch_id)
        decision: Decision | None = None
        keys: _Keys | None = None
        if decide_route and snapshot.routing.flag_source != "openfeature":
            decision = self._decide(snapshot, request, merchant, kill_switch=False)
            cache_key = _cache_key_of(snapshot, decision.serve, request)
            keys = (cache_key, (*cache_key, decision.shadow))
        # (a flag source decides each call: the mapping is checked after that decision)
        mapping = snapshot.mapping if decision is None else self._table(snapshot)
        static = (request, request_fields, merchant, mapping, decision, keys)
        if memo_key is not None and {*map(type, memo_key)} <= _MEMO_TYPES:
            memo = self._memo
            if memo[0] is snapshot:
                if len(memo[1]) >= _MEMO_SIZE:
                    memo[1].clear()
                memo[1][memo_key] = static
        return static

    def _decide(
        self,
        snapshot: ShimConfig,
        request: V2Request,
        merchant: MerchantConfig,
        *,
        kill_switch: bool | None = None,
    ) -> Decision:
        """The routing decision of one call (the kill switch read now unless given)."""
        routing = snapshot.routing
        mch_id, stock_id = request.mch_id, request.coupon_stock_id
        bucket_by = merchant.bucket_by
        return decide(
            routing,
            mch_id=mch_id,
            coupon_stock_id=stock_id,
            kill_switch=(
                kill_switch_on(routing, self._env) if kill_switch is None else kill_switch
            ),
            v3_available=merchant.v3 is not None,
            bucket_by=bucket_by,
            flag_mode=self._flags.mode_for(
                routing, mch_id, stock_id, bucket_by or routing.bucket_by
            ),
        )

    def _call(
        self,
        snapshot: ShimConfig,
        started: float,
        request: V2Request,
        request_fields: Mapping[str, str],
        merchant: MerchantConfig,
        mapping: MappingTable,
        decision: Decision,
        keys: _Keys | None,
    ) -> _Call:
        ctx = CallContext(
            snapshot,
            merchant,
            mapping,
            request,
            self.breaker,
            started + snapshot.upstream.budget_s,
            snapshot.retry.attempts,
            self._clock,
            self._wall,
            self._nonce,
            request_fields=request_fields,
        )
        return _Call(ctx, decision, started, keys=keys)

    def _prepare_via(self, route: Route, fields: dict[str, Any]) -> _Call:
        values, xml = via_values(route, fields)
        return self._prepare(values, xml, route=route)

    # ------------------------------------------------------------------ serving: the decisions

    def _plan(self, call: _Call) -> _Plan | CallOutcome:
        """The cache's answer, or the call with its plan set (with or without single-flight)."""
        snapshot = call.ctx.config
        keys = call.keys
        key = None
        if snapshot.cache.ttl_s > 0:
            key = keys[0] if keys is not None else self._cache_key(call)
            entry: Entry | None = self._cache.get(key, self._clock())
            call.tags = {"cache": "hit" if entry is not None else "miss"}
            if entry is not None:
                route: Route = "v3" if entry.route == "v3" else "legacy"
                result = RouteResult(resign(call.ctx, entry.fields), route, 0, entry.unmapped)
                return CallOutcome(result, route, False)
            call.cache_key = key
        if snapshot.single_flight.enabled:
            if keys is not None:
                call.flight = keys[1]
            else:
                call.flight = (*(key or self._cache_key(call)), call.decision.shadow)
        return call

    def _cache_key(self, call: _Call) -> tuple[Any, ...]:
        """Same merchant, stock, request fields, serving route and upstream."""
        return _cache_key_of(call.ctx.config, call.decision.serve, call.ctx.request)

    def _waits(self, call: _Call) -> dict[str, Any]:
        """A follower's terms in single-flight: which shared outcome may serve it (one whose
        reply came after it started), how long it may wait, and its error if that runs out."""
        return {
            "fresh": lambda outcome: outcome.result.received_at >= call.started,
            "remaining": lambda: call.ctx.deadline - self._clock(),
            "expired": lambda: UpstreamError(
                "the call's time budget ran out waiting for an identical call in flight",
                route=call.decision.serve,
                kind="budget",
            ),
        }

    def _settle(
        self, call: _Call, plan: _Plan, outcome: CallOutcome, coalesced: bool
    ) -> CallOutcome:
        """After the flow (or the flight) served: a follower's own copy, or the cache fed."""
        if coalesced:
            # a coalesced caller's own copy of the shared outcome: its own nonce and sign
            call.tags = {**(call.tags or {}), "coalesced": True}
            result = outcome.result
            return replace(outcome, result=replace(result, answer=resign(call.ctx, result.answer)))
        key = plan.cache_key
        if key is not None and not outcome.fallback and not outcome.result.credentials_refused:
            self._cache.put(
                key,
                outcome.result.answer,
                route=outcome.served_by,
                unmapped=outcome.result.unmapped,
                expires=self._clock() + call.ctx.config.cache.ttl_s,
            )
        return outcome

    def _unserved(self, call: _Call, plan: _Plan) -> None:
        """The flow (or the flight) raised: a follower's error is tagged as coalesced."""
        if plan.flight is not None and not plan.did_run:
            call.tags = {**(call.tags or {}), "coalesced": True}

    def _flow(self, call: _Call) -> Flow[CallOutcome]:
        return call_flow(call.ctx, call.decision)

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
        self._observers.call(
            CallRecord(
                req.mch_id,
                req.coupon_stock_id,
                call.decision,
                latency_ms if latency_ms is not None else (self._clock() - call.started) * 1000.0,
                outcome,
                error,
                shadow,
                call.tags,
            )
        )

    def _served(self, call: _Call, outcome: CallOutcome) -> dict[str, str]:
        """After serving: hand the other side to the shadow runner, or record the call.

        A coalesced or cached answer is not compared again (its exchange was, or was not,
        compared when it was made).
        """
        tags = call.tags
        shadow = call.decision.shadow
        if (
            shadow is None
            or outcome.fallback
            or (tags and (tags.get("coalesced") or tags.get("cache") == "hit"))
        ):
            self._record(call, outcome=outcome)
        else:
            latency_ms = (self._clock() - call.started) * 1000.0
            observers = self._observers

            def done(result: ShadowOutcome) -> None:
                observers.shadow_in_flight(-1)
                self._record(call, outcome=outcome, shadow=result, latency_ms=latency_ms)

            observers.shadow_in_flight(1)
            job = ShadowJob(
                call.ctx, shadow, outcome.result.answer, self._clock(), queued=self._QUEUED
            )
            self._submit_shadow(job, done)
        return outcome.result.answer

    #: whether the twin's shadow runner queues jobs (see :class:`shim._shadowing.ShadowJob`)
    _QUEUED = False

    def _submit_shadow(self, job: ShadowJob, done: Callable[[ShadowOutcome], None]) -> None:
        raise NotImplementedError  # pragma: no cover - each twin runs shadows its own way


class CouponStockShim(_ShimCore):
    """The v2 ``query_coupon_stock`` call, routed to v2 or v3 (blocking twin).

    Args:
        config: a :class:`ShimConfig`, a :class:`LiveConfig`, or the path of a TOML file
            (then watched and reloaded when it changes).
        client: your own ``httpx.Client`` (not closed by :meth:`close`); by default the shim
            builds one connection pool for its lifetime (its own HTTP/1.1 pool, or an
            ``httpx.Client`` on :class:`DeadlineTransport` when the environment names a
            proxy).
        transport: an httpx transport for the shim's own client (e.g. the emulator's
            in-process ``MockTransport``).
        flag_source: an OpenFeature route source (``routing.flag_source = "openfeature"``);
            by default the shim builds one reading ``routing.openfeature_flag`` from the
            global OpenFeature API when the config asks for it.
        env: environment for the kill switch and overrides (default ``os.environ``).
        clock: the monotonic clock of budgets, backoff, breakers and the cache (seconds).
        wall: the wall clock of v3 request timestamps (seconds since the epoch).
        nonce: makes each request's and answer's ``nonce_str``.
        logger: where the shim's events go (default: the library's ``shim`` logger, silent
            unless the application configures logging or structlog; see :mod:`shim._logs`).
        registry: the ``prometheus_client.CollectorRegistry`` to record metrics into
            (default: ``prometheus_client.REGISTRY`` when the package is installed).
        metrics: False to record no metrics at all.

    Example:
        >>> shim = CouponStockShim.from_file("shim.toml")  # doctest: +SKIP
        >>> shim.query_coupon_stock("1757", "wx5edab3bdfba3dc1c", "10000098")  # doctest: +SKIP
    """

    _QUEUED = True  # the thread pool queues jobs beyond its workers
    _gate: Admission
    _shadows: Shadows[ThreadShadowRunner]

    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        flag_source: OpenFeatureRouteSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[], str] = pooled_nonce,
        logger: Any = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> None:
        self._shadows = Shadows(ThreadShadowRunner, lambda: self._live.current().shadow)
        super().__init__(
            config,
            flag_source=flag_source,
            env=env,
            clock=clock,
            wall=wall,
            nonce=nonce,
            logger=logger,
            registry=registry,
            metrics=metrics,
        )
        self._owns_client = client is None
        self._transport = transport
        self._client: httpx.Client | SyncPool = client or self._new_client()
        self._gate = Admission(self._live.current().upstream.max_in_flight)
        self._flights: ThreadFlights[CallOutcome] = ThreadFlights()

    def _new_client(self) -> httpx.Client | SyncPool:
        limits = _limits(self._live.current().upstream.max_in_flight)
        return new_sync_client(limits, self._transport)

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
            self._flights = ThreadFlights()  # a leader in a parent thread never finishes here
            self._pid = _PID

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        flag_source: OpenFeatureRouteSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[], str] = pooled_nonce,
        logger: Any = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> CouponStockShim:
        """Build a shim from a TOML config file (watched for changes); the other arguments
        are the constructor's."""
        return cls(  # watched, with the shim's own env
            Path(path),
            client=client,
            transport=transport,
            flag_source=flag_source,
            env=env,
            clock=clock,
            wall=wall,
            nonce=nonce,
            logger=logger,
            registry=registry,
            metrics=metrics,
        )

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
        call = self._begin(
            (coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type), xml
        )
        try:
            outcome = self._serve(call)
        except ShimError as err:
            self._record(call, error=err)
            raise
        return self._served(call, outcome)

    def _serve(self, call: _Call) -> CallOutcome:
        """The cache, then single-flight, then the call's own flow (decided by the core)."""
        plan = self._plan(call)
        if not isinstance(plan, _Plan):
            return plan  # a cache hit
        key = plan.flight
        try:
            if key is None:
                plan.did_run = True
                outcome = run_sync(self._flow(call), self._client, self._clock, self._gate)
                coalesced = False
            else:
                flights = self._flights
                flight = flights.lead(key)
                if flight is not None:  # no identical call in flight: this one leads
                    plan.did_run = True
                    try:
                        outcome = run_sync(self._flow(call), self._client, self._clock, self._gate)
                    except BaseException as err:
                        flights.land(key, flight, error=err)
                        raise
                    flights.land(key, flight, outcome)
                    coalesced = False
                else:

                    def run() -> CallOutcome:
                        plan.ran()
                        return run_sync(self._flow(call), self._client, self._clock, self._gate)

                    outcome, coalesced = flights.run(key, run, **self._waits(call))
        except ShimError:
            self._unserved(call, plan)
            raise
        return self._settle(call, plan, outcome, coalesced)

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

    def _submit_shadow(self, job: ShadowJob, done: Callable[[ShadowOutcome], None]) -> None:
        def run() -> ShadowOutcome:
            flow = job.begin()
            if isinstance(flow, ShadowOutcome):
                return flow
            try:
                other: RouteResult | ShimError = run_sync(
                    flow, self._client, self._clock, self._gate
                )
            except ShimError as err:
                other = err
            return job.end(other)

        self._shadows.runner().submit(run, done)

    def wait_for_shadows(self, timeout: float = 10.0) -> bool:
        """Block until no shadow comparison is in flight (for tests, scripts and shutdown)."""
        end = time.monotonic() + timeout
        while self._shadows.in_flight():
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
        runner = self._shadows.running
        if runner is not None:
            timeout = self._live.current().shadow.timeout_s + CLOSE_GRACE_S
            runner.close(wait=True, timeout=timeout)
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

    _gate: AsyncAdmission
    _shadows: Shadows[AsyncShadowRunner]

    def __init__(
        self,
        config: ShimConfig | LiveConfig | str | os.PathLike[str],
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        flag_source: OpenFeatureRouteSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[], str] = pooled_nonce,
        logger: Any = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> None:
        self._shadows = Shadows(AsyncShadowRunner, lambda: self._live.current().shadow)
        super().__init__(
            config,
            flag_source=flag_source,
            env=env,
            clock=clock,
            wall=wall,
            nonce=nonce,
            logger=logger,
            registry=registry,
            metrics=metrics,
        )
        self._owns_client = client is None
        self._transport = transport
        self._client: httpx.AsyncClient | AsyncPool = client or self._new_client()
        self._gate = AsyncAdmission(self._live.current().upstream.max_in_flight)
        self._flights: AsyncFlights[CallOutcome] = AsyncFlights()

    def _new_client(self) -> httpx.AsyncClient | AsyncPool:
        limits = _limits(self._live.current().upstream.max_in_flight)
        return new_async_client(limits, self._transport)

    def _after_fork(self) -> None:
        """First use in a forked child: a pool, gate and shadow runner of its own."""
        with _FORK_LOCK:
            if self._pid == _PID:
                return
            self._fresh_after_fork()  # its shadow tasks belong to the parent's event loop
            if self._owns_client:
                _ABANDONED.append(self._client)  # the parent's sockets: never used, never closed
                self._client = self._new_client()
            self._gate = AsyncAdmission(self._live.current().upstream.max_in_flight)
            self._flights = AsyncFlights()
            self._pid = _PID

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        flag_source: OpenFeatureRouteSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[], str] = pooled_nonce,
        logger: Any = None,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
    ) -> AsyncCouponStockShim:
        """Build a shim from a TOML config file (watched for changes); the other arguments
        are the constructor's."""
        return cls(  # watched, with the shim's own env
            Path(path),
            client=client,
            transport=transport,
            flag_source=flag_source,
            env=env,
            clock=clock,
            wall=wall,
            nonce=nonce,
            logger=logger,
            registry=registry,
            metrics=metrics,
        )

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
        call = self._begin(
            (coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type), xml
        )
        try:
            outcome = await self._serve(call)
        except ShimError as err:
            self._record(call, error=err)
            raise
        return self._served(call, outcome)

    async def _serve(self, call: _Call) -> CallOutcome:
        """The cache, then single-flight, then the call's own flow (decided by the core)."""
        plan = self._plan(call)
        if not isinstance(plan, _Plan):
            return plan  # a cache hit

        async def run() -> CallOutcome:
            plan.ran()
            return await run_async(self._flow(call), self._client, self._clock, self._gate)

        try:
            if plan.flight is None:
                outcome, coalesced = await run(), False
            else:
                outcome, coalesced = await self._flights.run(plan.flight, run, **self._waits(call))
        except ShimError:
            self._unserved(call, plan)
            raise
        return self._settle(call, plan, outcome, coalesced)

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

    def _submit_shadow(self, job: ShadowJob, done: Callable[[ShadowOutcome], None]) -> None:
        async def run() -> ShadowOutcome:
            flow = job.begin()
            if isinstance(flow, ShadowOutcome):
                return flow
            try:
                other: RouteResult | ShimError = await run_async(
                    flow, self._client, self._clock, self._gate
                )
            except ShimError as err:
                other = err
            return job.end(other)

        self._shadows.runner().submit(run, done)

    async def wait_for_shadows(self, timeout: float = 10.0) -> bool:
        """Wait until no shadow comparison is in flight."""
        end = time.monotonic() + timeout
        while self._shadows.in_flight():
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
        runner = self._shadows.running
        if runner is not None:
            await runner.aclose(wait=True)
        self._gate.close()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncCouponStockShim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
