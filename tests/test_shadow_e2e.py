"""Shadow mode at the facade, through both twins: off the latency path, bounded, and counted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import ShadowTotals

# private: the event names and schema the assertions read
from shim._events import EVENT
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, seeded_stocks
from tests.conftest import MD5_MCH, Twin

DELAY_S = 0.6


def events_of(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == EVENT]


def add_up(t: ShadowTotals) -> bool:
    """The totals' invariants."""
    return (
        t.calls == t.matches + t.mismatches + t.errors + t.dropped + t.sampled_out
        and t.compared == t.matches + t.mismatches
    )


async def timed_query(twin: Twin, stock: str) -> tuple[dict[str, str], float]:
    start = time.perf_counter()
    answer = await twin.query(coupon_stock_id=stock, mch_id=MD5_MCH)
    return answer, time.perf_counter() - start


async def test_slow_v3_shadow_does_not_slow_the_served_answer(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A 0.6 s v3 delay in shadow mode: the legacy answer comes back well under the delay."""
    twin = make_shim("shadow")
    with capture_logs() as logs:
        _, baseline = await timed_query(twin, "1757")  # also warms the pool
        assert await twin.wait_for_shadows()
        emulator.set_fault("v3", "1757", "delay", delay_s=DELAY_S)
        answer, served = await timed_query(twin, "1757")
        assert answer["coupon_stock_id"] == "1757" and answer["result_code"] == "SUCCESS"
        assert served < 0.5 * DELAY_S, (served, baseline)
        assert await twin.wait_for_shadows()
    totals = twin.shim.shadow_totals()
    assert totals.calls == 2 and totals.matches == 2 and add_up(totals)
    slow = events_of(logs)[-1]
    assert slow["shadow"] == "match" and slow["route"] == "legacy"
    assert slow["shadow_latency_ms"] >= DELAY_S * 1000 * 0.9
    assert slow["latency_ms"] < slow["shadow_latency_ms"] * 0.5


async def test_excess_comparisons_are_dropped_and_counted(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """max_in_flight=1 and a slow v3: further calls are served, their comparisons dropped."""
    emulator.set_fault("v3", "1757", "delay", delay_s=0.3)
    twin = make_shim("shadow", shadow={"max_in_flight": 1, "workers": 1})
    with capture_logs() as logs:
        for _ in range(5):
            answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
            assert answer["result_code"] == "SUCCESS"
        assert await twin.wait_for_shadows()
    totals = twin.shim.shadow_totals()
    assert totals.calls == 5 and totals.dropped >= 1 and totals.matches >= 1
    assert add_up(totals)
    assert emulator.request_counts["v2"] == 5
    assert emulator.request_counts["v3"] == 5 - totals.dropped
    kinds = sorted(e["shadow"] for e in events_of(logs))
    assert kinds == sorted(["match"] * totals.matches + ["dropped"] * totals.dropped)


@pytest.mark.parametrize("serve", ["legacy", "v3"])
async def test_divergent_stock_is_a_mismatch_in_exactly_its_fields(
    make_shim: Callable[..., Twin], emulator: Emulator, serve: str
) -> None:
    """The divergent stock is reported as a mismatch in exactly DIVERGENT_FIELDS, either way."""
    twin = make_shim("shadow", via="inprocess", routing={"shadow_serve": serve})
    with capture_logs() as logs:
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        answer = await twin.query(coupon_stock_id=DIVERGENT_STOCK_ID, mch_id=MD5_MCH)
        assert await twin.wait_for_shadows()
    stock = seeded_stocks()[DIVERGENT_STOCK_ID]
    view = stock.v2_fields() if serve == "legacy" else stock.mapped_from_v3()
    assert all(answer[f] == view[f] for f in DIVERGENT_FIELDS)
    totals = twin.shim.shadow_totals()
    assert totals.calls == 2 and totals.matches == 1 and totals.mismatches == 1
    assert dict(totals.mismatches_by_field) == dict.fromkeys(DIVERGENT_FIELDS, 1)
    assert add_up(totals)
    event = next(e for e in events_of(logs) if e["coupon_stock_id"] == DIVERGENT_STOCK_ID)
    assert event["shadow"] == "mismatch" and event["route"] == serve
    assert event["mismatch_fields"] == sorted(DIVERGENT_FIELDS)


async def test_failing_shadow_is_an_error_and_never_reaches_the_caller(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A 503 on the shadow side is counted as a shadow error; it is tried once, not retried."""
    emulator.set_fault("v3", "1757", "http_503")
    twin = make_shim("shadow", via="inprocess")
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert await twin.wait_for_shadows()
    assert answer["result_code"] == "SUCCESS"
    totals = twin.shim.shadow_totals()
    assert totals.errors == 1 and dict(totals.errors_by_kind) == {"http_status": 1}
    assert emulator.request_counts == {"v2": 1, "v3": 1}
    (event,) = events_of(logs)
    assert event["outcome"] == "success" and event["shadow"] == "error"
    assert event["shadow_error"] == "http_status"


async def test_sampled_out_calls_send_no_shadow_request(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """sample_ratio = 0: every call is counted as sampled_out and v3 is never called."""
    twin = make_shim("shadow", via="inprocess", shadow={"sample_ratio": 0.0})
    with capture_logs() as logs:
        for _ in range(3):
            await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert await twin.wait_for_shadows()
    totals = twin.shim.shadow_totals()
    assert totals.calls == 3 == totals.sampled_out and add_up(totals)
    assert emulator.request_counts == {"v2": 3}
    assert [e["shadow"] for e in events_of(logs)] == ["sampled_out"] * 3


async def test_fallback_call_is_not_shadowed(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Shadow serving v3 that fell back to legacy compares nothing (legacy already answered)."""
    emulator.set_fault("v3", "1757", "http_503")
    twin = make_shim(
        "shadow", via="inprocess", retry={"attempts": 1}, routing={"shadow_serve": "v3"}
    )
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert await twin.wait_for_shadows()
    assert answer["result_code"] == "SUCCESS"
    (event,) = events_of(logs)
    assert event["route"] == "legacy" and event["fallback"] is True and "shadow" not in event
    assert twin.shim.shadow_totals().calls == 0
    assert emulator.request_counts == {"v2": 1, "v3": 1}


async def test_close_finishes_in_flight_comparisons(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Closing the shim waits (bounded) for a running comparison, which is then counted."""
    emulator.set_fault("v3", "1757", "delay", delay_s=0.2)
    twin = make_shim("shadow")
    await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    await twin.close()
    totals = twin.shim.shadow_totals()
    assert totals.calls == 1 and totals.matches == 1
