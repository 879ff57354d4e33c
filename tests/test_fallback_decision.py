"""One pure fallback decision (issue 15 point 14) and v3 refusing the shim's own credentials
as a fallback cause (issue 14 point 4), through both twins over the loopback emulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, SignatureError

# private: the pure routing decision, driven directly
from shim import _routing as routing

# private: the event names and schema the assertions read
from shim._events import CREDENTIALS_REFUSED_EVENT, EVENT
from shim.sandbox import Emulator
from tests.conftest import HMAC_MCH, MD5_MCH, Twin

STOCK = "1757"
# A delay the full budget survives (read timeout 2.8 s), but not the budget minus the
# fallback's share (3.0 - min(2.8, 1.5) = 1.5 s): margins of 0.8 s either way.
SLOW = {"timeout_s": 2.8, "connect_timeout_s": 1.0, "budget_s": 3.0}
DELAY_S = 2.0


def test_routing_no_longer_decides_fallback() -> None:
    """The second decider is gone: only shim._policy says whether a fallback is possible."""
    assert not hasattr(routing, "fallback_route")
    assert not hasattr(routing, "is_fallback_worthy")


@pytest.mark.parametrize("fallback", [True, False])
async def test_budget_is_reserved_only_when_a_fallback_is_possible(
    fallback: bool, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """v3 answering in 2.0 s of a 3.0 s budget: with fallback_to_legacy the serving route
    leaves the fallback its share (v3 is cut, legacy serves); without, v3 has it all."""
    emulator.set_fault("v3", STOCK, "delay", delay_s=DELAY_S)
    twin = make_shim(
        "v3", upstream=SLOW, retry={"attempts": 1}, routing={"fallback_to_legacy": fallback}
    )
    with capture_logs() as logs:
        answer = await twin.query(STOCK, mch_id=MD5_MCH)
    event = next(e for e in logs if e["event"] == EVENT)
    assert answer["coupon_stock_id"] == STOCK
    assert event["route"] == ("legacy" if fallback else "v3")
    assert event["fallback"] is fallback


# ----------------------------------------------------------------- credentials refused


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.parametrize("mode", ["v3", "canary"])
async def test_v3_refusing_credentials_falls_back_loudly(
    mode: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """An unsigned 401 SIGN_ERROR (as WeChat Pay sends it) with fallback_to_legacy: legacy
    serves, the event says cause credentials_refused, and a WARNING event says what to fix.
    v3 is not retried."""
    emulator.set_fault("v3", STOCK, "v3_error:401:SIGN_ERROR")
    twin = make_shim(mode, routing={"canary_percent": 100.0, "fallback_to_legacy": True})
    with capture_logs() as logs:
        answer = await twin.query(STOCK, mch_id=MD5_MCH)
    assert answer["return_code"] == "SUCCESS" and answer["coupon_stock_id"] == STOCK
    assert emulator.request_counts == {"v3": 1, "v2": 1}
    (event,) = _events(logs, EVENT)
    assert event["route"] == "legacy" and event["fallback"] is True
    assert event["fallback_from"] == "v3" and event["fallback_kind"] == "credentials_refused"
    assert event["fallback_cause"] == "UpstreamError:http_status"
    (warning,) = _events(logs, CREDENTIALS_REFUSED_EVENT)
    assert warning["log_level"] == "warning"
    assert warning["mch_id"] == MD5_MCH and warning["status"] == 401
    assert warning["code"] == "SIGN_ERROR" and warning["served_by"] == "legacy"
    assert "v3_private_key" in warning["hint"]


async def test_a_wrong_private_key_is_refused_by_the_emulator_and_falls_back(
    twin_kind: str, make_config: Callable[..., ShimConfig], emulator: Emulator
) -> None:
    """The real cause: the shim signs with a key WeChat Pay does not know. The emulator
    answers an unsigned 401; legacy serves with cause credentials_refused."""
    config = make_config("v3", via="loopback", routing={"fallback_to_legacy": True})
    merchants = dict(config.merchants)
    other = merchants[HMAC_MCH].v3
    mine = merchants[MD5_MCH].v3
    assert other is not None and mine is not None
    wrong = dataclasses.replace(mine, private_key=other.private_key)
    merchants[MD5_MCH] = dataclasses.replace(merchants[MD5_MCH], v3=wrong)
    config = dataclasses.replace(config, merchants=merchants)
    shim: Any = (
        AsyncCouponStockShim(config, env={}) if twin_kind == "async" else CouponStockShim(config)
    )
    twin = Twin(twin_kind, shim)
    try:
        with capture_logs() as logs:
            answer = await twin.query(STOCK, mch_id=MD5_MCH)
    finally:
        await twin.close()
    assert answer["coupon_stock_id"] == STOCK
    (event,) = _events(logs, EVENT)
    assert event["fallback_kind"] == "credentials_refused"
    assert _events(logs, CREDENTIALS_REFUSED_EVENT)


async def test_credentials_refused_is_its_own_metrics_cause(
    twin_kind: str, make_config: Callable[..., ShimConfig], emulator: Emulator
) -> None:
    """coupon_shim_fallbacks_total counts the fallback with cause="credentials_refused"."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    config = make_config("v3", via="loopback", routing={"fallback_to_legacy": True})
    emulator.set_fault("v3", STOCK, "v3_error:401:SIGN_ERROR")
    cls: Any = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls(config, env={}, registry=registry))
    try:
        await twin.query(STOCK, mch_id=MD5_MCH)
    finally:
        await twin.close()
    value = registry.get_sample_value(
        "coupon_shim_fallbacks_total", {"from_route": "v3", "cause": "credentials_refused"}
    )
    assert value == 1.0


async def test_without_fallback_the_refusal_is_a_fail_answer_and_still_loud(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """fallback_to_legacy off: the mapping's return_code=FAIL answer for 401 SIGN_ERROR (built
    by the shim, nothing of the unsigned body in it), and the WARNING event still fires."""
    emulator.set_fault("v3", STOCK, "v3_error:401:SIGN_ERROR")
    twin = make_shim("v3", routing={"fallback_to_legacy": False})
    with capture_logs() as logs:
        answer = await twin.query(STOCK, mch_id=MD5_MCH)
    assert answer["return_code"] == "FAIL" and "v3 credentials were refused" in answer["return_msg"]
    assert "sandbox fault" not in repr(answer)  # the unsigned body's message is not used
    assert emulator.request_counts == {"v3": 1}
    (warning,) = _events(logs, CREDENTIALS_REFUSED_EVENT)
    assert warning["served_by"] == "v3" and "not served" in warning["action"]


@pytest.mark.parametrize("fault", ["bad_signature", "tampered_body", "unknown_serial"])
async def test_a_bad_signature_on_an_answer_stays_loud_and_unserved(
    fault: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A forged or broken answer is not a credential refusal: SignatureError, no fallback."""
    emulator.set_fault("v3", STOCK, fault)
    twin = make_shim("v3", routing={"fallback_to_legacy": True})
    with capture_logs() as logs, pytest.raises(SignatureError):
        await twin.query(STOCK, mch_id=MD5_MCH)
    assert emulator.request_counts == {"v3": 1}
    assert not _events(logs, CREDENTIALS_REFUSED_EVENT)


async def test_shadowed_v3_refusing_credentials_is_recorded(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """In shadow mode the refusal is the shadowed side's FAIL answer (a mismatch against
    legacy's); legacy serves, and the WARNING event says v3 refused the credentials."""
    emulator.set_fault("v3", STOCK, "v3_error:401:SIGN_ERROR")
    twin = make_shim("shadow")
    with capture_logs() as logs:
        answer = await twin.query(STOCK, mch_id=MD5_MCH)
        assert answer["coupon_stock_id"] == STOCK
        assert await twin.wait_for_shadows(5.0)
    totals = twin.shim.shadow_totals()
    assert totals.mismatches == 1 and "return_code" in totals.mismatches_by_field
    (event,) = _events(logs, EVENT)
    assert event["shadow"] == "mismatch"
