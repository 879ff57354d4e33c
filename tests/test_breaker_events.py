"""The circuit breaker made visible: an event and metrics on every state change, and recovery.

Unit tests drive :class:`CircuitBreaker` with an injected clock; the end-to-end tests open a
real breaker against the emulator through both twins, clear the fault and watch it recover
within ``reset_after_s`` plus one successful probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import LogCapture

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, UpstreamError

# private: the pure retry and fallback policy, driven directly
from shim._policy import BreakerTransition, CircuitBreaker

# private: config value types, built directly instead of from a file
from shim._values import BreakerConfig
from shim.sandbox import Emulator
from tests.conftest import MD5_MCH, FakeClock, Twin


def test_listener_sees_every_transition() -> None:
    """closed → open → half_open → open → half_open → closed, each with its cause."""
    seen: list[BreakerTransition] = []
    b = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_after_s=10), listener=seen.append)
    b.record_failure(0.0, "timeout")
    assert seen == []  # 1 of 2
    b.record_failure(1.0, "timeout")
    assert not b.allow(5.0)
    assert b.allow(11.0)  # the probe
    b.record_failure(11.5, "http_status")
    assert b.allow(21.5)
    b.record_success()
    assert [(t.previous, t.state, t.cause, t.error_kind) for t in seen] == [
        ("closed", "open", "consecutive_failures", "timeout"),
        ("open", "half_open", "reset_elapsed", None),
        ("half_open", "open", "probe_failed", "http_status"),
        ("open", "half_open", "reset_elapsed", None),
        ("half_open", "closed", "probe_succeeded", None),
    ]
    assert seen[0].failures == 2 and seen[0].reset_after_s == 10


def test_abandoned_probe_and_late_answer() -> None:
    """An abandoned probe re-opens (probe_abandoned); an answer to a call sent before the
    breaker opened closes it (answered)."""
    seen: list[BreakerTransition] = []
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_after_s=1), listener=seen.append)
    b.record_failure(0.0, "connection")
    assert b.allow(2.0)
    b.record_failure(2.0, "abandoned")
    b.record_success()  # a call that was already out gets its answer
    assert [(t.previous, t.state, t.cause) for t in seen] == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "reset_elapsed"),
        ("half_open", "open", "probe_abandoned"),
        ("open", "closed", "answered"),
    ]


def test_a_broken_listener_never_breaks_the_breaker() -> None:
    """A listener that raises is ignored; the state machine goes on."""

    def boom(_: BreakerTransition) -> None:
        raise RuntimeError("observer bug")

    b = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_after_s=1), listener=boom)
    b.record_failure(0.0, "timeout")
    assert b.state == "open"
    assert b.allow(1.5)
    b.record_success()
    assert b.state == "closed"


def test_reconfigure_keeps_state() -> None:
    """New settings apply to an open breaker without closing it."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_after_s=30))
    b.record_failure(0.0, "timeout")
    b.reconfigure(BreakerConfig(failure_threshold=3, reset_after_s=1))
    assert b.state == "open" and b.allow(1.5)


@pytest.mark.parametrize("via", ["inprocess", "loopback"])
async def test_breaker_opens_and_recovers_with_events_and_metrics(
    make_config: Callable[..., ShimConfig], twin_kind: str, emulator: Emulator, via: str
) -> None:
    """v3 fails: the breaker opens (event + gauge 1); after the fault clears it recovers
    within reset_after_s plus one successful probe (half_open, closed events; gauge 0).
    The shim runs on a clock the test moves, so the recovery time is exact, not waited."""
    cap = LogCapture()
    structlog.configure(processors=[cap])
    reset = 0.25  # exact in binary: the fake clock lands on it
    registry = CollectorRegistry()
    config = make_config(
        "v3",
        via=via,
        routing={"fallback_to_legacy": False},
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 2, "reset_after_s": reset},
    )
    clock = FakeClock()
    kwargs: dict[str, Any] = {"env": {}, "registry": registry, "clock": clock}
    if via == "inprocess":
        kwargs["transport"] = emulator.mock_transport()
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls(config, **kwargs))
    try:
        await _open_and_recover(twin, emulator, registry, cap, reset, clock)
    finally:
        await twin.close()


async def _open_and_recover(
    twin: Twin,
    emulator: Emulator,
    registry: CollectorRegistry,
    cap: LogCapture,
    reset: float,
    clock: FakeClock,
) -> None:
    emulator.set_fault("v3", "1757", "http_500")
    for _ in range(2):
        with pytest.raises(UpstreamError) as info:
            await twin.query("1757", mch_id=MD5_MCH)
        assert info.value.kind == "http_status"
    opened_at = clock.now
    gauge = ("coupon_shim_circuit_breaker_open", {"route": "v3", "mch_id": MD5_MCH})
    assert registry.get_sample_value(gauge[0], gauge[1]) == 1
    emulator.clear_faults()
    emulator.reset_counts()
    with pytest.raises(UpstreamError) as info:
        await twin.query("1757", mch_id=MD5_MCH)  # still open: not sent at all
    assert info.value.kind == "circuit_open"
    assert emulator.request_counts["v3"] == 0
    clock.now = opened_at + reset - 0.01
    with pytest.raises(UpstreamError) as info:
        await twin.query("1757", mch_id=MD5_MCH)  # just before reset_after_s: still open
    assert info.value.kind == "circuit_open"
    clock.now = opened_at + reset
    answer = await twin.query("1757", mch_id=MD5_MCH)  # at reset_after_s: the one probe
    assert answer["result_code"] == "SUCCESS"
    assert emulator.request_counts["v3"] == 1
    assert clock.now - opened_at == reset  # reset_after_s plus one probe
    assert registry.get_sample_value(gauge[0], gauge[1]) == 0
    changes = [e for e in cap.entries if e["event"] == "coupon_shim.circuit_breaker"]
    assert [(e["state"], e["cause"]) for e in changes] == [
        ("open", "consecutive_failures"),
        ("half_open", "reset_elapsed"),
        ("closed", "probe_succeeded"),
    ]
    assert all(e["route"] == "v3" and e["mch_id"] == MD5_MCH for e in changes)
    assert changes[0]["log_level"] == "warning" and changes[0]["error_kind"] == "http_status"
    for state in ("open", "half_open", "closed"):
        assert (
            registry.get_sample_value(
                "coupon_shim_circuit_breaker_transitions_total",
                {"route": "v3", "mch_id": MD5_MCH, "state": state},
            )
            == 1
        )


async def test_failed_probe_reopens_with_an_event(
    make_config: Callable[..., ShimConfig], twin_kind: str, emulator: Emulator
) -> None:
    """A probe that fails re-opens the breaker: event cause probe_failed, gauge stays 1."""
    cap = LogCapture()
    structlog.configure(processors=[cap])
    config = make_config(
        "v3",
        routing={"fallback_to_legacy": False},
        retry={"attempts": 1},
        circuit_breaker={"failure_threshold": 1, "reset_after_s": 30.0},
    )
    clock = FakeClock()
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls(config, env={}, transport=emulator.mock_transport(), clock=clock))
    emulator.set_fault("v3", "1757", "http_503")
    try:
        with pytest.raises(UpstreamError):
            await twin.query("1757", mch_id=MD5_MCH)
        clock.now += 30.0
        with pytest.raises(UpstreamError) as info:
            await twin.query("1757", mch_id=MD5_MCH)
    finally:
        await twin.close()
    assert info.value.kind == "http_status"
    changes = [
        (e["state"], e["cause"]) for e in cap.entries if e["event"] == "coupon_shim.circuit_breaker"
    ]
    assert changes == [
        ("open", "consecutive_failures"),
        ("half_open", "reset_elapsed"),
        ("open", "probe_failed"),
    ]
