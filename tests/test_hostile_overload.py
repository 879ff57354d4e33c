"""Overload: an admission limit in front of the pool, typed overload errors, no breaker trips.

A thousand concurrent async calls (and hundreds of threads on the sync twin) against the
real emulator over loopback all end within their budget and mostly succeed; calls that
cannot get an admission slot (``[upstream] max_in_flight``) or a pooled connection within
their budget fail with :class:`~shim._errors.OverloadError`, and local congestion never
counts against a circuit breaker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from shim import (
    AsyncCouponStockShim,
    CouponStockShim,
    DeadlineTransport,
    OverloadError,
    ShimConfig,
    ShimError,
    UpstreamError,
)

# private: the sans-IO flow's request and reply types, for one scripted request
from shim._flow import HttpRequest, HttpResponse, TransportFailure

# private: the async driver and its admission gate, driven with that request
from shim._transport import AsyncAdmission, run_async
from shim.sandbox import Emulator, SandboxState
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request
from tests.wait import await_until

STOCK = "1757"
MCH = "10000098"
SLACK = 0.5


def config(sandbox_state: SandboxState, tmp_path: Path, url: str, **tables: Any) -> ShimConfig:
    """The emulator's config at ``url`` with ``tables`` merged in."""
    base: dict[str, Any] = {
        "routing": {"mode": "legacy"},
        "retry": {"attempts": 1},
        # every call its own exchange: identical concurrent calls would share one otherwise
        "single_flight": {"enabled": False},
    }
    for name, table in tables.items():
        base.setdefault(name, {}).update(table)
    return parse_emulator_config(sandbox_state, tmp_path, url, base)


def quiet_events() -> None:
    """Events filtered at WARNING, as a production app runs (the test measures calls)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def silent(conn: Conn, req: Request) -> None:
    """Take the request and never answer."""
    conn.hold()


async def _timed_async(call: Callable[[], Any]) -> tuple[float, dict[str, str] | ShimError]:
    start = time.monotonic()
    try:
        result = await call()
    except ShimError as exc:
        result = exc
    return time.monotonic() - start, result


def _timed_sync(call: Callable[[], Any]) -> tuple[float, dict[str, str] | ShimError]:
    start = time.monotonic()
    try:
        result = call()
    except ShimError as exc:
        result = exc
    return time.monotonic() - start, result


def _kinds(results: list[tuple[float, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, r in results:
        key = "ok" if isinstance(r, dict) else f"{type(r).__name__}:{getattr(r, 'kind', '')}"
        out[key] = out.get(key, 0) + 1
    return out


async def test_a_thousand_concurrent_async_calls_end_within_budget(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """1,000 concurrent calls on one async shim (default max_in_flight): every call ends
    within budget_s, the breaker stays closed, and most of what this machine can serve in
    the budget is served (its capacity is measured first, one call at a time, because the
    shared CI host's speed varies); the rest are OverloadErrors within the budget."""
    quiet_events()
    budget = 10.0
    shim = AsyncCouponStockShim(
        config(sandbox_state, tmp_path, server.base_url, upstream={"budget_s": budget}), env={}
    )
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - before - 0.05)

    try:
        start = time.monotonic()
        for _ in range(30):
            await shim.query_coupon_stock(STOCK, mch_id=MCH)
        capacity = min(1000.0, 30 / (time.monotonic() - start) * budget)
        tick = asyncio.create_task(ticker())
        start = time.monotonic()
        results = await asyncio.gather(
            *(_timed_async(lambda: shim.query_coupon_stock(STOCK, mch_id=MCH)) for _ in range(1000))
        )
        wall = time.monotonic() - start
        stop.set()
        await tick
    finally:
        await shim.aclose()
    kinds = _kinds(results)
    slowest = max(t for t, _ in results)
    report = (
        f"1000 async calls: {wall:.2f} s wall, slowest {slowest:.2f} s (budget {budget} s), "
        f"{kinds}, capacity ~{capacity:.0f} calls per budget, "
        f"max loop lag {max(lags, default=0):.3f} s"
    )
    print(report)
    assert slowest <= budget + SLACK, report
    assert set(kinds) <= {"ok", "OverloadError:", "UpstreamError:budget"}, report
    assert kinds.get("ok", 0) >= 0.5 * capacity, report
    assert shim.breaker("legacy", MCH).state == "closed"


def test_many_threads_on_the_sync_twin_end_within_budget(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """200 threads on one sync shim with max_in_flight = 16: every call ends within budget,
    nearly all succeed, the breaker stays closed."""
    quiet_events()
    budget = 10.0
    shim = CouponStockShim(
        config(
            sandbox_state,
            tmp_path,
            server.base_url,
            upstream={"budget_s": budget, "max_in_flight": 16},
        ),
        env={},
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
            futures = [
                pool.submit(_timed_sync, lambda: shim.query_coupon_stock(STOCK, mch_id=MCH))
                for _ in range(400)
            ]
            results = [f.result() for f in futures]
    finally:
        shim.close()
    kinds = _kinds(results)
    slowest = max(t for t, _ in results)
    assert slowest <= budget + SLACK, f"slowest call {slowest:.2f} s; {kinds}"
    assert kinds.get("ok", 0) >= 380, kinds
    assert shim.breaker("legacy", MCH).state == "closed"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_calls_over_the_admission_limit_get_an_overload_error_within_budget(
    sandbox_state: SandboxState, tmp_path: Path, kind: str
) -> None:
    """max_in_flight = 2 and a silent upstream: the two admitted calls time out (upstream
    failures, counted), the eight waiting ones get OverloadError within the budget, and the
    breaker (threshold 3) never opens: the overloads are not counted."""
    budget = 0.5
    with HostileServer(silent) as hostile:
        cfg = config(
            sandbox_state,
            tmp_path,
            hostile.url,
            upstream={"budget_s": budget, "timeout_s": 5.0, "max_in_flight": 2},
            circuit_breaker={"failure_threshold": 3},
        )
        if kind == "async":
            ashim = AsyncCouponStockShim(cfg, env={})
            results = await asyncio.gather(
                *(
                    _timed_async(lambda: ashim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(10)
                )
            )
            state = ashim.breaker("legacy", MCH).state
            await ashim.aclose()
        else:
            sshim = CouponStockShim(cfg, env={})
            with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
                futures = [
                    pool.submit(_timed_sync, lambda: sshim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(10)
                ]
                results = [f.result() for f in futures]
            state = sshim.breaker("legacy", MCH).state
            sshim.close()
    overloads = [r for _, r in results if isinstance(r, OverloadError)]
    upstream = [r for _, r in results if isinstance(r, UpstreamError)]
    assert len(overloads) == 8 and len(upstream) == 2, _kinds(results)
    assert all(r.kind in ("budget", "timeout") for r in upstream)
    assert all(r.route == "legacy" and "max_in_flight" in str(r) for r in overloads)
    assert max(t for t, _ in results) <= budget + SLACK
    assert state == "closed"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_pool_timeout_is_local_congestion_not_an_upstream_failure(
    sandbox_state: SandboxState, tmp_path: Path, kind: str
) -> None:
    """Your own client with one pooled connection, shared by two shims: while a call of the
    first (3 s budget) holds it, the second shim's calls (0.5 s budget) wait for it and get
    OverloadError within their budget, and its breaker (threshold 1) does not count them."""
    budget = 0.5
    limits = httpx.Limits(max_connections=1)
    with HostileServer(silent) as hostile:

        def cfg(seconds: float) -> ShimConfig:
            return config(
                sandbox_state,
                tmp_path,
                hostile.url,
                upstream={"budget_s": seconds, "timeout_s": 5.0},
                circuit_breaker={"failure_threshold": 1},
            )

        if kind == "async":
            aclient = httpx.AsyncClient(limits=limits)
            holder = AsyncCouponStockShim(cfg(3.0), client=aclient, env={})
            ashim = AsyncCouponStockShim(cfg(budget), client=aclient, env={})
            hold = asyncio.create_task(
                _timed_async(lambda: holder.query_coupon_stock(STOCK, mch_id=MCH))
            )
            await asyncio.sleep(0.2)
            results = await asyncio.gather(
                *(
                    _timed_async(lambda: ashim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(3)
                )
            )
            state = ashim.breaker("legacy", MCH).state
            await hold
            await ashim.aclose()
            await holder.aclose()
            await aclient.aclose()
        else:
            client = httpx.Client(transport=DeadlineTransport(limits=limits))
            sholder = CouponStockShim(cfg(3.0), client=client, env={})
            sshim = CouponStockShim(cfg(budget), client=client, env={})
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                held = pool.submit(
                    _timed_sync, lambda: sholder.query_coupon_stock(STOCK, mch_id=MCH)
                )
                time.sleep(0.2)
                futures = [
                    pool.submit(_timed_sync, lambda: sshim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(3)
                ]
                results = [f.result() for f in futures]
                held.result()
            state = sshim.breaker("legacy", MCH).state
            sshim.close()
            sholder.close()
            client.close()
    kinds = _kinds(results)
    assert kinds == {"OverloadError:": 3}, kinds
    assert all("pooled connection" in str(r) for _, r in results)
    assert max(t for t, _ in results) <= budget + SLACK
    assert state == "closed", kinds


class _HoldFirst(httpx.AsyncBaseTransport):
    """The emulator in process, holding the first request until ``release`` is set."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.seen = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen == 1:
            await self.release.wait()
        return await self.inner.handle_async_request(request)


async def test_a_queued_async_call_signs_its_request_only_once_admitted(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> None:
    """max_in_flight = 1 on the v3 route: while one call holds the slot, a second waits
    unsigned (no RSA work on the event loop, no nonce drawn, no timestamp going stale) and
    is signed when it is admitted; both are served with verified answers."""
    nonces: list[str] = []

    def nonce() -> str:
        nonces.append(secrets.token_hex(16))
        return nonces[-1]

    cfg = config(
        sandbox_state,
        tmp_path,
        "http://emulator.test",
        routing={"mode": "v3", "fallback_to_legacy": False},
        upstream={"max_in_flight": 1, "budget_s": 10.0},
    )
    hold = _HoldFirst(emulator.mock_transport())
    shim = AsyncCouponStockShim(cfg, transport=hold, env={}, nonce=nonce)
    try:
        first = asyncio.create_task(shim.query_coupon_stock(STOCK, mch_id=MCH))
        await await_until(lambda: hold.seen == 1, "the first call reached the upstream")
        second = asyncio.create_task(shim.query_coupon_stock(STOCK, mch_id=MCH))
        for _ in range(50):  # let the second call run as far as it can
            await asyncio.sleep(0)
        assert not second.done()
        assert len(nonces) == 1, "a call waiting for admission signed its request"
        hold.release.set()
        answers = await asyncio.gather(first, second)
    finally:
        await shim.aclose()
    assert [a["result_code"] for a in answers] == ["SUCCESS", "SUCCESS"]
    assert hold.seen == 2
    assert len(nonces) == 4  # one per request, one per re-signed v2 answer


async def test_a_call_left_too_little_budget_by_the_queue_is_refused_unsent() -> None:
    """A call that waited for its admission slot and has less budget left than an exchange
    takes now (the gate's moving average) ends at once as overload, never sent: it could
    only end past its budget."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"{}")

    def one() -> Any:
        reply = yield HttpRequest(
            "GET", "http://upstream.test/x", (), b"", "v3", 5.0, 2.0, time.monotonic() + 5.0, 1024
        )
        return reply

    gate = AsyncAdmission(1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert isinstance(await run_async(one(), client, time.monotonic, gate), HttpResponse)
        assert 0 < gate.exchange_s < 5.0  # it learnt how long the exchange took
        assert gate.try_acquire()  # another call holds the only slot
        gate.exchange_s = 60.0  # exchanges take a minute now
        waiting = asyncio.create_task(run_async(one(), client, time.monotonic, gate))
        await await_until(lambda: gate._waiters, "the call queued for the slot")
        gate.release()
        reply = await waiting
        assert gate.try_acquire()  # the refused call gave its slot back
        gate.release()
        # a call that finds a free slot has not lost its budget to the queue: it is sent
        assert isinstance(await run_async(one(), client, time.monotonic, gate), HttpResponse)
    assert isinstance(reply, TransportFailure) and reply.kind == "overload", reply
    assert "shorter than an exchange takes" in reply.detail
    assert len(sent) == 2
