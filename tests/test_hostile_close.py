"""Closing: typed errors after and during close, breakers untouched, shadows finished.

Calls after ``close()``/``aclose()`` raise :class:`~shim._errors.ClosedError` (not httpx's
``RuntimeError``); a call stuck on a silent upstream when the shim closes ends promptly with
``ClosedError`` and never counts against its breaker; close finishes queued and running
shadow comparisons (six with four workers: all six compared) within the shadow timeout and
counts as dropped only what that timeout cuts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shim import AsyncCouponStockShim, ClosedError, CouponStockShim, ShimConfig, ShimError
from shim.sandbox import Emulator, SandboxState
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request, head, real_answer

STOCK = "1757"
MCH = "10000098"


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


def silent(conn: Conn, req: Request) -> None:
    """Take the request and never answer."""
    conn.hold()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_calls_after_close_raise_closed_error(
    sandbox_state: SandboxState, tmp_path: Path, server: Any, kind: str
) -> None:
    """After close()/aclose(), query_coupon_stock and query_via raise ClosedError (a
    ShimError, not RuntimeError) before any I/O; closing twice is fine."""
    cfg = config(sandbox_state, tmp_path, server.base_url)
    if kind == "sync":
        shim = CouponStockShim(cfg, env={})
        shim.query_coupon_stock(STOCK, mch_id=MCH)
        shim.close()
        shim.close()
        with pytest.raises(ClosedError, match="closed"):
            shim.query_coupon_stock(STOCK, mch_id=MCH)
        with pytest.raises(ClosedError):
            shim.query_via("legacy", coupon_stock_id=STOCK, mch_id=MCH)
    else:
        ashim = AsyncCouponStockShim(cfg, env={})
        await ashim.query_coupon_stock(STOCK, mch_id=MCH)
        await ashim.aclose()
        await ashim.aclose()
        with pytest.raises(ClosedError, match="closed"):
            await ashim.query_coupon_stock(STOCK, mch_id=MCH)
        with pytest.raises(ClosedError):
            await ashim.query_via("legacy", coupon_stock_id=STOCK, mch_id=MCH)
    assert issubclass(ClosedError, ShimError) and not issubclass(ClosedError, RuntimeError)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_call_interrupted_by_close_gets_closed_error_and_spares_the_breaker(
    sandbox_state: SandboxState, tmp_path: Path, kind: str
) -> None:
    """A call waiting on a silent upstream (10 s budget) when the shim closes ends within
    0.5 s of close with ClosedError; the breaker (threshold 1) stays closed."""
    with HostileServer(silent) as hostile:
        cfg = config(
            sandbox_state,
            tmp_path,
            hostile.url,
            upstream={"budget_s": 10.0, "timeout_s": 8.0},
            circuit_breaker={"failure_threshold": 1},
        )
        outcome: list[Any] = []
        if kind == "sync":
            shim = CouponStockShim(cfg, env={})

            def call() -> None:
                try:
                    outcome.append(shim.query_coupon_stock(STOCK, mch_id=MCH))
                except ShimError as exc:
                    outcome.append(exc)
                outcome.append(time.monotonic())

            worker = threading.Thread(target=call)
            worker.start()
            await asyncio.sleep(0.3)
            closed_at = time.monotonic()
            shim.close()
            worker.join(timeout=5)
            state = shim.breaker("legacy", MCH).state
        else:
            ashim = AsyncCouponStockShim(cfg, env={})

            async def acall() -> None:
                try:
                    outcome.append(await ashim.query_coupon_stock(STOCK, mch_id=MCH))
                except ShimError as exc:
                    outcome.append(exc)
                outcome.append(time.monotonic())

            task = asyncio.create_task(acall())
            await asyncio.sleep(0.3)
            closed_at = time.monotonic()
            await ashim.aclose()
            await asyncio.wait_for(task, 5)
            state = ashim.breaker("legacy", MCH).state
    error, ended = outcome
    assert isinstance(error, ClosedError), error
    assert ended - closed_at <= 0.5, f"ended {ended - closed_at:.2f} s after close"
    assert state == "closed"


def _slow_real(emulator: Emulator, delay: float) -> Any:
    def script(conn: Conn, req: Request) -> None:
        conn.hold(delay)
        status, headers, body = real_answer(emulator, req)
        headers = [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]
        conn.send(head(status, headers) + body)

    return script


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_close_finishes_queued_and_running_shadow_comparisons(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator, server: Any, kind: str
) -> None:
    """Six shadow comparisons, four workers, each v3 answer 0.3 s late: close() right after
    the sixth call finishes all six (six matches, none dropped) within the shadow timeout."""
    shadow_timeout = 2.0
    with HostileServer(_slow_real(emulator, 0.3)) as hostile:
        cfg = config(
            sandbox_state,
            tmp_path,
            server.base_url,
            routing={"mode": "shadow"},
            shadow={"workers": 4, "max_in_flight": 8, "timeout_s": shadow_timeout},
        )
        cfg = replace(cfg, upstream=replace(cfg.upstream, v3_base_url=hostile.url))
        if kind == "sync":
            shim = CouponStockShim(cfg, env={})
            for _ in range(6):
                shim.query_coupon_stock(STOCK, mch_id=MCH)
            start = time.monotonic()
            shim.close()
            took = time.monotonic() - start
            totals = shim.shadow_totals()
        else:
            ashim = AsyncCouponStockShim(cfg, env={})
            for _ in range(6):
                await ashim.query_coupon_stock(STOCK, mch_id=MCH)
            start = time.monotonic()
            await ashim.aclose()
            took = time.monotonic() - start
            totals = ashim.shadow_totals()
    assert totals.calls == 6 and totals.matches == 6 and totals.dropped == 0, totals
    assert took <= shadow_timeout, f"close took {took:.2f} s"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_close_is_bounded_by_the_shadow_timeout_against_a_stalled_shadow_side(
    sandbox_state: SandboxState, tmp_path: Path, server: Any, kind: str
) -> None:
    """The shadowed side never answers: close() returns within [shadow] timeout_s (+ grace
    and 0.5 s), every comparison is accounted for (errors by budget or timeout, dropped
    only what was cut), and the serving route's breaker is untouched."""
    shadow_timeout = 0.6
    with HostileServer(silent) as hostile:
        cfg = config(
            sandbox_state,
            tmp_path,
            server.base_url,
            routing={"mode": "shadow"},
            shadow={"workers": 2, "max_in_flight": 8, "timeout_s": shadow_timeout},
            circuit_breaker={"failure_threshold": 100},
        )
        cfg = replace(cfg, upstream=replace(cfg.upstream, v3_base_url=hostile.url))
        if kind == "sync":
            shim = CouponStockShim(cfg, env={})
            for _ in range(4):
                shim.query_coupon_stock(STOCK, mch_id=MCH)
            start = time.monotonic()
            shim.close()
            took = time.monotonic() - start
            totals = shim.shadow_totals()
            state = shim.breaker("legacy", MCH).state
        else:
            ashim = AsyncCouponStockShim(cfg, env={})
            for _ in range(4):
                await ashim.query_coupon_stock(STOCK, mch_id=MCH)
            start = time.monotonic()
            await ashim.aclose()
            took = time.monotonic() - start
            totals = ashim.shadow_totals()
            state = ashim.breaker("legacy", MCH).state
    assert took <= shadow_timeout + 0.25 + 0.5, f"close took {took:.2f} s"
    assert totals.calls == 4, totals
    assert totals.errors + totals.dropped == 4, totals
    assert set(totals.errors_by_kind) <= {"budget", "timeout"}, totals
    assert state == "closed"


def test_close_from_another_thread_during_many_calls_never_raises_untyped(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """Eight threads calling in a loop while another thread closes the shim: every call
    either answers or raises ClosedError — never RuntimeError or an httpx error."""
    shim = CouponStockShim(config(sandbox_state, tmp_path, server.base_url), env={})
    seen: list[str] = []
    lock = threading.Lock()

    def loop() -> None:
        for _ in range(200):
            try:
                shim.query_coupon_stock(STOCK, mch_id=MCH)
                kind = "ok"
            except ClosedError:
                kind = "closed"
            except Exception as exc:  # the test's point: nothing else may come out
                kind = f"untyped:{type(exc).__name__}"
            with lock:
                seen.append(kind)
            if kind == "closed":
                return

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(loop) for _ in range(8)]
        time.sleep(0.3)
        shim.close()
        for f in futures:
            f.result()
    assert set(seen) <= {"ok", "closed"}, sorted(set(seen))
    assert "closed" in seen
