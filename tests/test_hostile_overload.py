"""Overload: an admission limit in front of the pool, typed overload errors, no breaker trips.

A thousand concurrent async calls (and hundreds of threads on the sync twin) against the
real emulator over loopback all end within their budget and mostly succeed; calls that
cannot get an admission slot (``[upstream] max_in_flight``) or a pooled connection within
their budget fail with :class:`~shim.errors.OverloadError`, and local congestion never
counts against a circuit breaker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import AsyncCouponStockShim, CouponStockShim
from shim.config import ShimConfig
from shim.errors import OverloadError, ShimError, UpstreamError
from shim.sandbox import SandboxState
from shim.transport import DeadlineTransport
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request

STOCK = "1757"
MCH = "10000098"
SLACK = 0.5


def config(sandbox_state: SandboxState, tmp_path: Path, url: str, **tables: Any) -> ShimConfig:
    """The emulator's config at ``url`` with ``tables`` merged in."""
    base: dict[str, Any] = {"routing": {"mode": "legacy"}, "retry": {"attempts": 1}}
    for name, table in tables.items():
        base.setdefault(name, {}).update(table)
    return parse_emulator_config(sandbox_state, tmp_path, url, base)


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
    within budget_s, nearly all succeed, the breaker stays closed, the loop keeps ticking."""
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

    tick = asyncio.create_task(ticker())
    try:
        start = time.monotonic()
        results = await asyncio.gather(
            *(
                _timed_async(lambda: shim.query_coupon_stock(STOCK, mch_id=MCH))
                for _ in range(1000)
            )
        )
        wall = time.monotonic() - start
    finally:
        stop.set()
        await tick
        await shim.aclose()
    kinds = _kinds(results)
    slowest = max(t for t, _ in results)
    assert slowest <= budget + SLACK, f"slowest call {slowest:.2f} s; {kinds}"
    assert kinds.get("ok", 0) >= 950, kinds
    assert shim.breaker("legacy", MCH).state == "closed"
    print(f"1000 async calls: {wall:.2f} s wall, slowest {slowest:.2f} s, {kinds}, "
          f"max loop lag {max(lags, default=0):.3f} s")


def test_many_threads_on_the_sync_twin_end_within_budget(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """200 threads on one sync shim with max_in_flight = 16: every call ends within budget,
    nearly all succeed, the breaker stays closed."""
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
    """Your own client with one pooled connection: the calls waiting for it get
    OverloadError within budget, and the breaker (threshold 1) does not count them."""
    budget = 0.5
    limits = httpx.Limits(max_connections=1)
    with HostileServer(silent) as hostile:
        cfg = config(
            sandbox_state,
            tmp_path,
            hostile.url,
            upstream={"budget_s": budget, "timeout_s": 5.0},
            circuit_breaker={"failure_threshold": 2},
        )
        if kind == "async":
            aclient = httpx.AsyncClient(limits=limits)
            ashim = AsyncCouponStockShim(cfg, client=aclient, env={})
            results = await asyncio.gather(
                *(
                    _timed_async(lambda: ashim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(4)
                )
            )
            state = ashim.breaker("legacy", MCH).state
            await ashim.aclose()
            await aclient.aclose()
        else:
            client = httpx.Client(transport=DeadlineTransport(limits=limits))
            sshim = CouponStockShim(cfg, client=client, env={})
            with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                futures = [
                    pool.submit(_timed_sync, lambda: sshim.query_coupon_stock(STOCK, mch_id=MCH))
                    for _ in range(4)
                ]
                results = [f.result() for f in futures]
            state = sshim.breaker("legacy", MCH).state
            sshim.close()
            client.close()
    kinds = _kinds(results)
    assert kinds.get("OverloadError:", 0) == 3, kinds
    assert max(t for t, _ in results) <= budget + SLACK
    assert state == "closed", kinds
