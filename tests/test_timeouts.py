"""Time and retries end to end: retries that heal, the circuit breaker, the call's time budget.

Every test runs through both twins over the emulator's in-process transport. Retries are
counted with ``emulator.request_counts``; breaker timing uses an injected clock, so nothing
waits for ``reset_after_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from shim import AsyncCouponStockShim, ShimConfig, SignatureError, UpstreamError
from shim.sandbox import Emulator, SandboxState
from tests.conftest import INPROCESS_URL, FakeClock, Twin
from tests.fault_cases import build_twin, case_config, parse_emulator_config

STOCK = "1757"
MCH = "10000098"
OTHER_MCH = "10000099"


@pytest.fixture(scope="module")
def base_config(
    sandbox_state: SandboxState, tmp_path_factory: pytest.TempPathFactory
) -> ShimConfig:
    """The emulator's config over the in-process transport, parsed once for the module."""
    return parse_emulator_config(
        sandbox_state, tmp_path_factory.mktemp("timeouts"), INPROCESS_URL, {}
    )


@pytest.fixture
async def shim_with(
    twin_kind: str, base_config: ShimConfig, emulator: Emulator
) -> AsyncIterator[Callable[..., Twin]]:
    """``shim_with(mode, upstream={...}, retry={...}, breaker={...}, routing={...}, **kw)``."""
    made: list[Twin] = []

    def build(
        mode: str,
        *,
        upstream: dict[str, Any] | None = None,
        retry: dict[str, Any] | None = None,
        breaker: dict[str, Any] | None = None,
        routing: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Twin:
        cfg = case_config(base_config, mode, **(routing or {}))
        cfg = replace(
            cfg,
            upstream=replace(
                cfg.upstream,
                **{"timeout_s": 0.2, "budget_s": 2.0, **(upstream or {})},
            ),
            retry=replace(
                cfg.retry,
                **{
                    "attempts": 3,
                    "backoff_initial_s": 0.01,
                    "backoff_max_s": 0.02,
                    **(retry or {}),
                },
            ),
            breaker=replace(cfg.breaker, **(breaker or {})),
        )
        twin = build_twin(twin_kind, cfg, emulator, inprocess=True, **kwargs)
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()


@pytest.mark.parametrize(
    "fault", ["http_500", "http_503", "http_429", "reset", "truncated", "delay"]
)
@pytest.mark.parametrize("times", [1, 2])
async def test_transient_faults_that_heal_are_retried(
    fault: str, times: int, shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """A transient fault on the first N attempts is retried on the same route until it heals."""
    twin = shim_with("v3", routing={"fallback_to_legacy": False})
    emulator.set_fault("v3", STOCK, fault, times=times, delay_s=1.0)
    answer = await twin.query(STOCK, mch_id=MCH)
    assert answer["result_code"] == "SUCCESS"
    assert emulator.request_counts["v3"] == times + 1
    assert emulator.request_counts["v2"] == 0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("bad_signature", SignatureError),
        ("stale_signature", SignatureError),
        ("malformed", UpstreamError),
        ("v3_error:403:SOME_NEW_CODE", UpstreamError),
    ],
)
async def test_non_transient_failures_are_not_retried(
    fault: str, error: type[Exception], shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """A signature failure, a protocol error or a 4xx is tried once, even if it would heal."""
    twin = shim_with("v3", routing={"fallback_to_legacy": True})
    emulator.set_fault("v3", STOCK, fault, times=1)
    with pytest.raises(error) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert type(caught.value) is error
    assert emulator.request_counts["v3"] == 1
    assert emulator.request_counts["v2"] == 0


async def test_retries_stop_at_the_attempt_limit(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """A fault that outlasts the attempts gives the typed error after exactly ``attempts`` tries."""
    twin = shim_with("v3", retry={"attempts": 3}, routing={"fallback_to_legacy": False})
    emulator.set_fault("v3", STOCK, "http_503", times=3)
    with pytest.raises(UpstreamError) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert (caught.value.kind, caught.value.status) == ("http_status", 503)
    assert emulator.request_counts["v3"] == 3


async def test_breaker_opens_and_then_fails_fast_without_a_request(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """Repeated failures open the breaker; then calls fail with circuit_open, sending nothing."""
    clock = FakeClock()
    twin = shim_with(
        "v3",
        retry={"attempts": 1},
        breaker={"failure_threshold": 3, "reset_after_s": 30.0},
        routing={"fallback_to_legacy": False},
        clock=clock,
    )
    emulator.set_fault("v3", STOCK, "http_503")
    for _ in range(3):
        with pytest.raises(UpstreamError) as caught:
            await twin.query(STOCK, mch_id=MCH)
        assert caught.value.kind == "http_status"
    assert twin.shim.breaker("v3", MCH).state == "open"
    sent = emulator.request_counts["v3"]
    with pytest.raises(UpstreamError) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert caught.value.kind == "circuit_open"
    assert caught.value.transient
    assert emulator.request_counts["v3"] == sent == 3


async def test_open_breaker_falls_back_to_legacy(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """With fallback on, an open v3 breaker sends the call straight to legacy."""
    twin = shim_with(
        "v3",
        retry={"attempts": 1},
        breaker={"failure_threshold": 2},
        routing={"fallback_to_legacy": True},
        clock=FakeClock(),
    )
    emulator.set_fault("v3", STOCK, "reset")
    for _ in range(2):
        assert (await twin.query(STOCK, mch_id=MCH))["result_code"] == "SUCCESS"
    assert twin.shim.breaker("v3", MCH).state == "open"
    before = emulator.request_counts
    assert (await twin.query(STOCK, mch_id=MCH))["result_code"] == "SUCCESS"
    after = emulator.request_counts
    assert after["v3"] == before["v3"]
    assert after["v2"] == before["v2"] + 1


async def test_breaker_probes_then_closes_or_reopens(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """After reset_after_s one probe goes out: failure re-opens, success closes the breaker."""
    clock = FakeClock()
    twin = shim_with(
        "v3",
        retry={"attempts": 1},
        breaker={"failure_threshold": 2, "reset_after_s": 30.0},
        routing={"fallback_to_legacy": False},
        clock=clock,
    )
    breaker = twin.shim.breaker("v3", MCH)
    emulator.set_fault("v3", STOCK, "http_502")
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await twin.query(STOCK, mch_id=MCH)
    assert breaker.state == "open"

    clock.now += 31.0  # the probe fails: open again, and fast failures resume
    with pytest.raises(UpstreamError) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert caught.value.kind == "http_status"
    assert breaker.state == "open"
    with pytest.raises(UpstreamError) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert caught.value.kind == "circuit_open"
    assert emulator.request_counts["v3"] == 3

    emulator.clear_faults()
    clock.now += 31.0  # the probe succeeds: closed
    assert (await twin.query(STOCK, mch_id=MCH))["result_code"] == "SUCCESS"
    assert breaker.state == "closed"
    assert (await twin.query(STOCK, mch_id=MCH))["result_code"] == "SUCCESS"
    assert emulator.request_counts["v3"] == 5


async def test_breaker_is_per_route_and_merchant(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """One merchant's open v3 breaker leaves its legacy route and other merchants alone."""
    twin = shim_with(
        "v3",
        retry={"attempts": 1},
        breaker={"failure_threshold": 1},
        routing={"fallback_to_legacy": False},
        clock=FakeClock(),
    )
    emulator.set_fault("v3", STOCK, "http_500", times=1)
    with pytest.raises(UpstreamError):
        await twin.query(STOCK, mch_id=MCH)
    assert twin.shim.breaker("v3", MCH).state == "open"
    assert twin.shim.breaker("legacy", MCH).state == "closed"
    assert twin.shim.breaker("v3", OTHER_MCH).state == "closed"
    await twin.query(STOCK, mch_id=OTHER_MCH)  # an answer (a business one: not its stock)
    assert emulator.request_counts["v3"] == 2
    assert (await twin.query_via("legacy", coupon_stock_id=STOCK, mch_id=MCH))[
        "result_code"
    ] == "SUCCESS"


async def test_a_spent_budget_sends_nothing(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """When the budget is already spent before an attempt, the error is kind budget, no request."""
    ticks = iter([1000.0])

    def clock() -> float:  # the call starts at 1000; every later reading is past the budget
        return next(ticks, 2000.0)

    twin = shim_with("v3", routing={"fallback_to_legacy": False}, clock=clock)
    with pytest.raises(UpstreamError) as caught:
        await twin.query(STOCK, mch_id=MCH)
    assert caught.value.kind == "budget"
    assert caught.value.transient
    assert sum(emulator.request_counts.values()) == 0


@pytest.mark.parametrize("twin_kind", ["async"])  # only asyncio can abandon a call mid-request
async def test_a_cancelled_probe_does_not_wedge_the_breaker(
    shim_with: Callable[..., Twin], emulator: Emulator
) -> None:
    """A half-open probe abandoned by the caller (cancelled) lets a later probe through."""
    clock = FakeClock()
    twin = shim_with(
        "v3",
        retry={"attempts": 1},
        breaker={"failure_threshold": 1, "reset_after_s": 30.0},
        routing={"fallback_to_legacy": False},
        clock=clock,
    )
    shim = twin.shim
    assert isinstance(shim, AsyncCouponStockShim)
    emulator.set_fault("v3", STOCK, "http_503", times=1)
    with pytest.raises(UpstreamError):
        await shim.query_coupon_stock(STOCK, mch_id=MCH)
    clock.now += 31.0
    emulator.set_fault("v3", STOCK, "delay", times=1, delay_s=5.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(shim.query_coupon_stock(STOCK, mch_id=MCH), 0.05)
    clock.now += 31.0
    answer = await shim.query_coupon_stock(STOCK, mch_id=MCH)
    assert answer["result_code"] == "SUCCESS"
    assert shim.breaker("v3", MCH).state == "closed"
