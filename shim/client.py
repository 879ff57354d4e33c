"""The facades: the v2 call signature, sync and async, over one flow.

``CouponStockShim`` and ``AsyncCouponStockShim`` share :class:`_ShimCore`, which validates
the call, picks the merchant, decides the route and builds the flow; the twins differ only in
the driver they run it with and the shadow runner they hand comparisons to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import structlog

from shim import v2
from shim.config import LiveConfig, ShimConfig
from shim.errors import ConfigError, InputError, Route, ShimError, UpstreamError
from shim.events import CREDENTIALS_REFUSED_EVENT, EVENT
from shim.flags import OpenFeatureRouteSource
from shim.flow import (
    CallContext,
    CallOutcome,
    Flow,
    RouteResult,
    call_flow,
    new_nonce,
    route_flow,
)
from shim.mapping import MappingTable, load_mapping
from shim.policy import CircuitBreaker, credentials_refused
from shim.redaction import scrubs_locals, scrubs_locals_async
from shim.routing import Decision, decide, kill_switch_on, routing_key
from shim.shadow import (
    AsyncShadowRunner,
    ShadowOutcome,
    ShadowStats,
    ShadowTotals,
    ThreadShadowRunner,
    compare_answers,
)
from shim.transport import run_async, run_sync

__all__ = ["AsyncCouponStockShim", "CouponStockShim"]

_log = structlog.get_logger("shim")
_IGNORED_PAYLOAD_KEYS = frozenset({"nonce_str", "sign", "sign_type"})
_NO_V3 = "no_v3_credentials"
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=32, keepalive_expiry=30
)


@dataclass(frozen=True, slots=True)
class _Call:
    ctx: CallContext
    decision: Decision
    started: float


def _outcome_of(answer: Mapping[str, str]) -> str:
    if answer.get("return_code") != "SUCCESS":
        return "fail"
    if answer.get("result_code") != "SUCCESS" or answer.get("err_code"):
        return "business_error"
    return "success"


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
        nonce: Callable[[], str] = new_nonce,
        logger: Any = None,
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
        self._log = logger if logger is not None else _log
        self._breakers: dict[tuple[Route, str], CircuitBreaker] = {}
        self._breaker_lock = threading.Lock()
        self._mapping: tuple[ShimConfig, MappingTable, float] | None = None
        self._stats = ShadowStats()

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
                found = self._breakers.setdefault(key, CircuitBreaker(self._live.current().breaker))
        return found

    def _table(self, snapshot: ShimConfig) -> MappingTable:
        """The mapping in force; its file is re-checked once per reload interval.

        An edited mapping file applies without a restart; one that no longer validates keeps
        the last good mapping and logs why.
        """
        cached = self._mapping
        now = self._clock()
        if cached is not None and cached[0] is snapshot and now < cached[2]:
            return cached[1]
        try:
            table = load_mapping(snapshot.mapping_dir)
        except ConfigError as exc:
            if cached is None or cached[0].mapping_dir != snapshot.mapping_dir:
                raise
            _log.warning(
                "coupon_shim.mapping_reload_failed",
                error=str(exc),
                action="kept the last good mapping",
            )
            table = cached[1]
        self._mapping = (snapshot, table, now + snapshot.reload_interval_s)
        return table

    def _flag_mode(self, snapshot: ShimConfig, mch_id: str, stock_id: str, bucket_by: str) -> Any:
        if snapshot.routing.flag_source != "openfeature":
            return None
        source, wanted = self._flag_source, snapshot.routing.openfeature_flag
        if source is None or (self._owns_flag_source and source.flag_key != wanted):
            # built here, so it follows a reloaded routing.openfeature_flag
            source = self._flag_source = OpenFeatureRouteSource(flag_key=wanted)
            self._owns_flag_source = True
        return source.mode_for(mch_id, stock_id, routing_key(bucket_by, mch_id, stock_id))

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
            # left out: the merchant's own (an unknown merchant says so, not "appid required")
            values["appid"] = snapshot.merchant(mch_id).appid
        request = v2.validate_request(values)
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
            request_fields=request._asdict(),
            breakers=self.breaker,
            deadline=started + snapshot.upstream.budget_s,
            attempts=snapshot.retry.attempts,
            clock=self._clock,
            wall=self._wall,
            nonce=self._nonce,
        )
        return _Call(ctx, decision, started)

    def _flow(self, call: _Call) -> Flow[CallOutcome]:
        merchant = call.ctx.merchant
        return call_flow(
            call.ctx, call.decision, can_serve=lambda r: r == "legacy" or merchant.v3 is not None
        )

    def _shadow_ctx(self, call: _Call) -> CallContext:
        snap = call.ctx.config
        return replace(call.ctx, deadline=self._clock() + snap.shadow.timeout_s, attempts=1)

    def _event(
        self,
        call: _Call,
        *,
        outcome: CallOutcome | None = None,
        error: ShimError | None = None,
        shadow: ShadowOutcome | None = None,
        latency_ms: float | None = None,
    ) -> None:
        log = _concrete(self._log)
        enabled = getattr(log, "is_enabled_for", None)
        if enabled is not None and not enabled(logging.INFO):
            return  # filtered out (e.g. an app at WARNING): build nothing
        d, req = call.decision, call.ctx.request
        fields: dict[str, Any] = {
            "mch_id": req.mch_id,
            "coupon_stock_id": req.coupon_stock_id,
            "route": outcome.served_by if outcome else d.serve,
            "reason": d.reason,
            "bucket": d.bucket,
            "latency_ms": round(
                latency_ms if latency_ms is not None else (self._clock() - call.started) * 1000.0, 3
            ),
        }
        if outcome is not None:
            result = outcome.result
            fields["outcome"] = _outcome_of(result.answer)
            fields["fallback"] = outcome.fallback
            fields["attempts"] = result.attempts
            if outcome.fallback_error is not None:
                fields["fallback_from"] = d.serve
                fields["fallback_cause"] = (
                    outcome.fallback_cause
                    if outcome.fallback_cause == "credentials_refused"
                    else _kind_of(outcome.fallback_error)
                )
            if result.unmapped:
                fields["unmapped"] = list(result.unmapped)
            if "err_code" in result.answer:
                fields["err_code"] = result.answer["err_code"]
        if error is not None:
            if isinstance(error, UpstreamError):
                fields["route"] = error.route  # the side that failed last
            fields["outcome"] = "error"
            fields["fallback"] = isinstance(error.__cause__, ShimError)
            fields["error_kind"] = _kind_of(error)
            fields["error"] = str(error)
        if shadow is not None:
            fields["shadow_route"] = d.shadow
            fields["shadow"] = shadow.kind
            if shadow.diffs:
                fields["mismatch_fields"] = [diff.field for diff in shadow.diffs]
            if shadow.error_kind:
                fields["shadow_error"] = shadow.error_kind
            if shadow.latency_ms is not None:
                fields["shadow_latency_ms"] = round(shadow.latency_ms, 3)
        log.info(EVENT, **fields)

    def _prepare_via(self, route: Route, fields: dict[str, Any]) -> _Call:
        if route not in ("legacy", "v3"):
            shown = repr(route) if isinstance(route, str) else type(route).__name__
            raise InputError(f"must be 'legacy' or 'v3', got {shown[:24]}", field="route")
        xml = fields.pop("xml", None)
        values = _values(*(fields.pop(k, None) for k in v2.REQUEST_FIELDS))
        if fields:
            raise InputError("is not a field of query_coupon_stock", field=sorted(fields)[0])
        return self._prepare(values, xml, route=route)

    def _credentials_refused(
        self, call: _Call, error: ShimError | None, served_by: Route | None
    ) -> None:
        """The loud event: v3 refused the shim's own credentials (whoever served the call)."""
        status = getattr(error, "status", None) or 401
        code = getattr(error, "code", None)
        _concrete(self._log).warning(
            CREDENTIALS_REFUSED_EVENT,
            mch_id=call.ctx.request.mch_id,
            coupon_stock_id=call.ctx.request.coupon_stock_id,
            route="v3",
            status=status,
            code=code,
            request_id=getattr(error, "request_id", None),
            served_by=served_by,
            action=(
                "served by legacy (fallback_to_legacy)"
                if served_by == "legacy"
                else "not served by legacy: fallback_to_legacy is off or not possible"
            ),
            hint="check the merchant's v3_private_key, v3_cert_serial and the host clock",
        )

    def _served(self, call: _Call, outcome: CallOutcome) -> dict[str, str]:
        """After serving: hand the other side to the shadow runner, or log the call's event."""
        if outcome.fallback_cause == "credentials_refused":
            self._credentials_refused(call, outcome.fallback_error, outcome.served_by)
        elif outcome.result.credentials_refused:
            self._credentials_refused(call, None, outcome.served_by)
        if call.decision.shadow is None or outcome.fallback:
            self._event(call, outcome=outcome)
        else:
            latency_ms = (self._clock() - call.started) * 1000.0

            def done(shadow: ShadowOutcome) -> None:
                self._event(call, outcome=outcome, shadow=shadow, latency_ms=latency_ms)

            self._submit_shadow(call, outcome, done)
        return outcome.result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        raise NotImplementedError  # pragma: no cover - each twin runs shadows its own way

    def _shadow_flow(self, call: _Call) -> Flow[RouteResult]:
        """The other side of a shadowed call: one attempt within the shadow time budget."""
        assert call.decision.shadow is not None
        return route_flow(self._shadow_ctx(call), call.decision.shadow)

    def _shadow_outcome(
        self, call: _Call, outcome: CallOutcome, started: float, other: RouteResult | ShimError
    ) -> ShadowOutcome:
        latency_ms = (self._clock() - started) * 1000.0
        if isinstance(other, ShimError):
            return ShadowOutcome.from_error(other, latency_ms=latency_ms)
        return compare_answers(
            outcome.result.answer,
            other.answer,
            ignore=call.ctx.config.shadow.ignore_fields,
            latency_ms=latency_ms,
        )


def _concrete(logger: Any) -> Any:
    """The concrete logger behind structlog's lazy proxy, resolved once per event."""
    bind = getattr(logger, "bind", None)
    return logger if bind is None else bind()


def _kind_of(error: ShimError) -> str:
    kind = getattr(error, "kind", None)
    name = type(error).__name__
    return f"{name}:{kind}" if kind else name


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
        self._client = client or httpx.Client(
            transport=transport, limits=DEFAULT_LIMITS, follow_redirects=False
        )
        self._runner: ThreadShadowRunner | None = None
        self._runner_lock = threading.Lock()

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
        values = _values(coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type)
        call = self._prepare(values, xml)
        try:
            outcome = run_sync(self._flow(call), self._client, self._clock)
        except ShimError as err:
            if credentials_refused(err):
                self._credentials_refused(call, err, None)
            self._event(call, error=err)
            raise
        return self._served(call, outcome)

    @scrubs_locals
    def query_via(self, route: Route, **fields: Any) -> dict[str, str]:
        """Query one route directly (no routing, fallback or shadow); used by ``compare``."""
        call = self._prepare_via(route, fields)
        result: RouteResult = run_sync(route_flow(call.ctx, route), self._client, self._clock)
        return result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        def job() -> ShadowOutcome:
            started = self._clock()
            try:
                other: RouteResult | ShimError = run_sync(
                    self._shadow_flow(call), self._client, self._clock
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
        """Finish in-flight shadow comparisons (bounded by the shadow timeout) and close."""
        if self._runner is not None:
            self._runner.close(wait=True, timeout=self._live.current().shadow.timeout_s)
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
        self._client = client or httpx.AsyncClient(
            transport=transport, limits=DEFAULT_LIMITS, follow_redirects=False
        )
        self._runner: AsyncShadowRunner | None = None

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
        values = _values(coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type)
        call = self._prepare(values, xml)
        try:
            outcome = await run_async(self._flow(call), self._client, self._clock)
        except ShimError as err:
            if credentials_refused(err):
                self._credentials_refused(call, err, None)
            self._event(call, error=err)
            raise
        return self._served(call, outcome)

    @scrubs_locals_async
    async def query_via(self, route: Route, **fields: Any) -> dict[str, str]:
        """Query one route directly (no routing, fallback or shadow)."""
        call = self._prepare_via(route, fields)
        result: RouteResult = await run_async(
            route_flow(call.ctx, route), self._client, self._clock
        )
        return result.answer

    def _submit_shadow(
        self, call: _Call, outcome: CallOutcome, done: Callable[[ShadowOutcome], None]
    ) -> None:
        async def job() -> ShadowOutcome:
            started = self._clock()
            try:
                other: RouteResult | ShimError = await run_async(
                    self._shadow_flow(call), self._client, self._clock
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
        """Finish in-flight shadow comparisons (bounded by the shadow timeout) and close."""
        if self._runner is not None:
            await self._runner.aclose(wait=True)
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncCouponStockShim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
