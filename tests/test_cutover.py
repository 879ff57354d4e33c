"""Cutover routing at the facade, through both twins: modes, overrides, kill switch, fallback.

Which side served is read three ways: the emulator's request counts, the ``coupon_stock.query``
event, and the answer itself (the divergent stock's v2 view differs from its v3 view in
``DIVERGENT_FIELDS``, so its answer tells the two sides apart).

Fallback policy as found (``shim._policy.fallback_cause``): only transient upstream
failures fall back (timeouts, connection failures, 429/5xx, open breaker, budget) and mapping
errors. A malformed (unparseable) v3 body is a *protocol* error: not transient, so it is
neither retried nor served by the other side; nor are business answers or signature failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the event names and schema the assertions read
from shim._events import EVENT

# private: the pure routing decision, driven directly
from shim._routing import bucket_of
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, SandboxState, seeded_stocks
from tests.conftest import MD5_MCH, Twin

DIV = DIVERGENT_STOCK_ID
DIV_KEY = f"{MD5_MCH}:{DIV}"
LEGACY_VIEW = seeded_stocks()[DIV].v2_fields()
V3_VIEW = seeded_stocks()[DIV].mapped_from_v3()
KILL = "COUPON_SHIM_KILL_SWITCH"


async def one_call(
    twin: Twin, stock: str = DIV, mch_id: str = MD5_MCH
) -> tuple[dict[str, str], dict[str, Any]]:
    """Call once (waiting for any shadow), return the answer and the call's single event."""
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id=stock, mch_id=mch_id)
        assert await twin.wait_for_shadows()
    events = [e for e in logs if e["event"] == EVENT]
    assert len(events) == 1, events
    return answer, events[0]


async def failing_call(
    twin: Twin, exc: type[Exception], stock: str = DIV
) -> tuple[Exception, dict[str, Any]]:
    """Call once expecting ``exc``; return it and the call's single event."""
    with capture_logs() as logs, pytest.raises(exc) as info:
        await twin.query(coupon_stock_id=stock, mch_id=MD5_MCH)
    events = [e for e in logs if e["event"] == EVENT]
    assert len(events) == 1, events
    return info.value, events[0]


def side_of(answer: dict[str, str]) -> str:
    """Which side produced the divergent stock's answer."""
    legacy = all(answer[f] == LEGACY_VIEW[f] for f in DIVERGENT_FIELDS)
    v3 = all(answer[f] == V3_VIEW[f] for f in DIVERGENT_FIELDS)
    assert legacy != v3
    return "legacy" if legacy else "v3"


def counts(emulator: Emulator) -> dict[str, int]:
    c = emulator.request_counts
    return {"legacy": c["v2"], "v3": c["v3"]}


# (id, mode, [routing] overrides, served, shadowed, reason, bucket of the key or None)
MODE_CASES = [
    ("legacy", "legacy", {}, "legacy", None, "mode", None),
    ("v3", "v3", {}, "v3", None, "mode", None),
    ("shadow-serve-legacy", "shadow", {}, "legacy", "v3", "mode", None),
    ("shadow-serve-v3", "shadow", {"shadow_serve": "v3"}, "v3", "legacy", "mode", None),
    # the divergent key's bucket is 7495: in below 74.96 %, out at 74.95 % (the boundary)
    ("canary-in", "canary", {"canary_percent": 74.96}, "v3", None, "canary_in", 7495),
    ("canary-out", "canary", {"canary_percent": 74.95}, "legacy", None, "canary_out", 7495),
    (
        "canary-in-shadow",
        "canary",
        {"canary_percent": 74.96, "canary_shadow": True},
        "v3",
        "legacy",
        "canary_in",
        7495,
    ),
    (
        "canary-out-shadow",
        "canary",
        {"canary_percent": 74.95, "canary_shadow": True},
        "legacy",
        "v3",
        "canary_out",
        7495,
    ),
]


def test_divergent_key_bucket_is_what_the_canary_cases_assume() -> None:
    """The canary cases' percentages straddle the divergent key's bucket (7495)."""
    assert bucket_of(DIV_KEY) == 7495


@pytest.mark.parametrize(
    ("mode", "routing", "served", "shadowed", "reason", "bucket"),
    [c[1:] for c in MODE_CASES],
    ids=[c[0] for c in MODE_CASES],
)
async def test_each_mode_serves_and_shadows_the_right_side(
    make_shim: Callable[..., Twin],
    emulator: Emulator,
    sandbox_state: SandboxState,
    mode: str,
    routing: dict[str, Any],
    served: str,
    shadowed: str | None,
    reason: str,
    bucket: int | None,
) -> None:
    """Each mode: the answer, request counts and event agree on who served and who shadowed."""
    twin = make_shim(mode, via="inprocess", routing=routing)
    answer, event = await one_call(twin)
    merchant = sandbox_state.merchants[MD5_MCH]
    v2.verify_answer(answer, key=merchant.v2_key, sign_type=merchant.v2_sign_type)
    assert side_of(answer) == served
    expected = {"legacy": 0, "v3": 0, served: 1}
    if shadowed:
        expected[shadowed] = 1
    assert counts(emulator) == expected
    assert event["route"] == served and event["reason"] == reason and event["bucket"] == bucket
    assert event["outcome"] == "success" and event["fallback"] is False
    assert event["attempts"] == 1 and "fallback_from" not in event
    if shadowed:
        assert event["shadow_route"] == shadowed and event["shadow"] == "mismatch"
        assert event["mismatch_fields"] == sorted(DIVERGENT_FIELDS)
    else:
        assert "shadow" not in event and "shadow_route" not in event


async def test_shadow_of_an_agreeing_stock_is_a_match(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Shadowing a stock both sides agree on gives shadow=match and no mismatch fields."""
    twin = make_shim("shadow", via="inprocess")
    _, event = await one_call(twin, "1757")
    assert event["shadow"] == "match" and "mismatch_fields" not in event
    assert counts(emulator) == {"legacy": 1, "v3": 1}
    assert twin.shim.shadow_totals().matches == 1


# (id, mode, [routing] overrides, stock queried, served, reason)
OVERRIDE_CASES = [
    ("force-v3-mch", "legacy", {"force_v3_mch_ids": [MD5_MCH]}, DIV, "v3", "force_v3_mch_id"),
    ("force-v3-stock", "legacy", {"force_v3_stock_ids": [DIV]}, DIV, "v3", "force_v3_stock_id"),
    ("force-v3-other-stock", "legacy", {"force_v3_stock_ids": ["1757"]}, DIV, "legacy", "mode"),
    (
        "force-legacy-mch",
        "v3",
        {"force_legacy_mch_ids": [MD5_MCH]},
        DIV,
        "legacy",
        "force_legacy_mch_id",
    ),
    (
        "force-legacy-stock",
        "v3",
        {"force_legacy_stock_ids": [DIV]},
        DIV,
        "legacy",
        "force_legacy_stock_id",
    ),
    (
        "force-legacy-beats-force-v3",
        "v3",
        {"force_legacy_mch_ids": [MD5_MCH], "force_v3_stock_ids": [DIV]},
        DIV,
        "legacy",
        "force_legacy_mch_id",
    ),
    (
        "forced-in-shadow-mode-is-not-shadowed",
        "shadow",
        {"force_v3_stock_ids": [DIV]},
        DIV,
        "v3",
        "force_v3_stock_id",
    ),
]


@pytest.mark.parametrize(
    ("mode", "routing", "stock", "served", "reason"),
    [c[1:] for c in OVERRIDE_CASES],
    ids=[c[0] for c in OVERRIDE_CASES],
)
async def test_force_lists_override_the_mode(
    make_shim: Callable[..., Twin],
    emulator: Emulator,
    mode: str,
    routing: dict[str, Any],
    stock: str,
    served: str,
    reason: str,
) -> None:
    """Force lists by mch_id and by stock id pick the side, legacy wins, and never shadow."""
    twin = make_shim(mode, via="inprocess", routing=routing)
    answer, event = await one_call(twin, stock)
    assert side_of(answer) == served
    assert counts(emulator) == {"legacy": 0, "v3": 0, served: 1}
    assert event["route"] == served and event["reason"] == reason and event["bucket"] is None
    assert "shadow" not in event


async def test_kill_switch_flips_routing_at_once_and_back(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Setting the kill switch in the shim's env sends the very next call to legacy, no reload."""
    env = {KILL: "0"}
    twin = make_shim("v3", via="inprocess", env=env, routing={"force_v3_stock_ids": [DIV]})
    answer, event = await one_call(twin)
    assert side_of(answer) == "v3" and event["reason"] == "force_v3_stock_id"
    for on in ("1", "true", " YES ", "on"):
        env[KILL] = on
        answer, event = await one_call(twin)
        assert side_of(answer) == "legacy" and event["route"] == "legacy"
        assert event["reason"] == "kill_switch"
    env[KILL] = "off"
    answer, event = await one_call(twin)
    assert side_of(answer) == "v3" and event["reason"] == "force_v3_stock_id"
    assert counts(emulator) == {"legacy": 4, "v3": 2}


async def test_kill_switch_stops_shadowing_and_honours_a_custom_variable(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """With a renamed kill_switch_env, setting it stops shadow calls too: only legacy is hit."""
    env = {"MY_KILL": ""}
    twin = make_shim(
        "shadow",
        via="inprocess",
        env=env,
        routing={"shadow_serve": "v3", "kill_switch_env": "MY_KILL"},
    )
    env[KILL] = "1"  # the default name means nothing now
    answer, event = await one_call(twin)
    assert side_of(answer) == "v3" and event["shadow_route"] == "legacy"
    emulator.reset_counts()
    env["MY_KILL"] = "1"
    answer, event = await one_call(twin)
    assert side_of(answer) == "legacy" and event["reason"] == "kill_switch"
    assert "shadow" not in event and counts(emulator) == {"legacy": 1, "v3": 0}


# ------------------------------------------------------------------------------- fallback

# (fault on v3, what the event names as the cause, v3 requests: 2 attempts each)
TRANSIENT_V3 = [
    ("http_503", "UpstreamError:http_status"),
    ("reset", "UpstreamError:connection"),
    ("delay", "UpstreamError:timeout"),
]


@pytest.mark.parametrize(("fault", "cause"), TRANSIENT_V3, ids=[f for f, _ in TRANSIENT_V3])
async def test_transient_v3_failure_falls_back_to_legacy(
    make_shim: Callable[..., Twin], emulator: Emulator, fault: str, cause: str
) -> None:
    """v3 failing transiently (after its retries) is served by legacy; the event says why."""
    emulator.set_fault("v3", DIV, fault, delay_s=1.0)
    twin = make_shim(
        "v3",
        upstream={"timeout_s": 0.3},
        retry={"attempts": 2, "backoff_initial_s": 0.01},
    )
    answer, event = await one_call(twin)
    assert side_of(answer) == "legacy"
    assert counts(emulator) == {"legacy": 1, "v3": 2}
    assert event["route"] == "legacy" and event["reason"] == "mode"
    assert event["fallback"] is True and event["fallback_from"] == "v3"
    assert event["fallback_cause"] == cause and event["outcome"] == "success"


async def test_no_fallback_when_fallback_to_legacy_is_off(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """With fallback_to_legacy = false a transient v3 failure is raised; legacy is not called."""
    emulator.set_fault("v3", DIV, "http_503")
    twin = make_shim(
        "v3", via="inprocess", retry={"attempts": 1}, routing={"fallback_to_legacy": False}
    )
    err, event = await failing_call(twin, UpstreamError)
    assert isinstance(err, UpstreamError) and err.status == 503 and err.route == "v3"
    assert counts(emulator) == {"legacy": 0, "v3": 1}
    assert event["outcome"] == "error" and event["fallback"] is False
    assert event["error_kind"] == "UpstreamError:http_status"


async def test_malformed_v3_answer_is_a_protocol_error_without_fallback(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A correctly signed but unparseable v3 body is kind=protocol: no retry, no fallback."""
    emulator.set_fault("v3", DIV, "malformed")
    twin = make_shim("v3", via="inprocess")
    err, event = await failing_call(twin, UpstreamError)
    assert isinstance(err, UpstreamError) and err.kind == "protocol" and not err.transient
    assert counts(emulator) == {"legacy": 0, "v3": 1}
    assert event["error_kind"] == "UpstreamError:protocol" and event["fallback"] is False


async def test_legacy_failure_falls_back_to_v3_when_enabled(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """With fallback_to_v3, a legacy 503 is served by v3; without it, the error is raised."""
    emulator.set_fault("v2", DIV, "http_503")
    twin = make_shim("legacy", via="inprocess", retry={"attempts": 1})
    _, event = await failing_call(twin, UpstreamError)
    assert counts(emulator) == {"legacy": 1, "v3": 0} and event["fallback"] is False
    emulator.reset_counts()
    twin = make_shim(
        "legacy", via="inprocess", retry={"attempts": 1}, routing={"fallback_to_v3": True}
    )
    answer, event = await one_call(twin)
    assert side_of(answer) == "v3" and counts(emulator) == {"legacy": 1, "v3": 1}
    assert event["route"] == "v3" and event["fallback"] is True
    assert event["fallback_from"] == "legacy" and event["fallback_cause"] == (
        "UpstreamError:http_status"
    )


async def test_kill_switch_never_falls_back_to_v3(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A call the kill switch sent to legacy raises legacy's failure; it never reaches v3."""
    emulator.set_fault("v2", DIV, "http_503")
    twin = make_shim(
        "v3",
        via="inprocess",
        env={KILL: "1"},
        retry={"attempts": 1},
        routing={"fallback_to_v3": True},
    )
    _, event = await failing_call(twin, UpstreamError)
    assert counts(emulator) == {"legacy": 1, "v3": 0}
    assert event["reason"] == "kill_switch" and event["fallback"] is False


async def test_both_sides_failing_raises_the_fallback_error(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """v3 then legacy failing raises legacy's error, chained to v3's; the event says fallback."""
    emulator.set_fault("v3", DIV, "http_503")
    emulator.set_fault("v2", DIV, "http_500")
    twin = make_shim("v3", via="inprocess", retry={"attempts": 1})
    err, event = await failing_call(twin, UpstreamError)
    assert isinstance(err, UpstreamError) and err.route == "legacy" and err.status == 500
    assert isinstance(err.__cause__, UpstreamError) and err.__cause__.route == "v3"
    assert event["outcome"] == "error" and event["fallback"] is True
    assert counts(emulator) == {"legacy": 1, "v3": 1}


async def test_v3_business_answer_never_falls_back(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A v3 404 is the v2 COUPON_STOCK_NOT_FOUND answer, served by v3, with no legacy request."""
    twin = make_shim("v3", via="inprocess")
    answer, event = await one_call(twin, "404404")
    assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "FAIL"
    assert answer["err_code"] == "COUPON_STOCK_NOT_FOUND"
    assert counts(emulator) == {"legacy": 0, "v3": 1}
    assert event["route"] == "v3" and event["outcome"] == "business_error"
    assert event["fallback"] is False and event["err_code"] == "COUPON_STOCK_NOT_FOUND"


@pytest.mark.parametrize(
    ("mode", "side", "routing"),
    [("v3", "v3", {}), ("legacy", "v2", {"fallback_to_v3": True})],
    ids=["v3-to-legacy", "legacy-to-v3"],
)
async def test_signature_failure_never_falls_back(
    make_shim: Callable[..., Twin],
    emulator: Emulator,
    mode: str,
    side: str,
    routing: dict[str, Any],
) -> None:
    """A forged answer is a SignatureError on the serving side: no retry and no fallback."""
    emulator.set_fault(side, DIV, "bad_signature")
    twin = make_shim(mode, via="inprocess", routing=routing)
    err, event = await failing_call(twin, SignatureError)
    assert isinstance(err, SignatureError) and err.route == mode
    assert emulator.request_counts == {side: 1}
    assert event["outcome"] == "error" and event["fallback"] is False
    assert event["error_kind"].startswith("SignatureError")


# ----------------------------------------------------------------------------- stickiness


async def test_canary_routes_are_sticky_across_shims_and_match_bucket_of(
    make_config: Callable[..., ShimConfig], emulator: Emulator
) -> None:
    """Canary 50 %: a sync and an async shim give each of 200 keys the route bucket_of says."""
    stocks = [str(7_000_000 + i) for i in range(200)]
    config = make_config("canary", routing={"canary_percent": 50.0})
    routes: list[dict[str, tuple[str, int]]] = []
    for twin in (
        Twin("sync", CouponStockShim(config, env={}, transport=emulator.mock_transport())),
        Twin("async", AsyncCouponStockShim(config, env={}, transport=emulator.mock_transport())),
    ):
        try:
            with capture_logs() as logs:
                for stock in stocks:
                    await twin.query(coupon_stock_id=stock, mch_id=MD5_MCH)
        finally:
            await twin.close()
        events = [e for e in logs if e["event"] == EVENT]
        routes.append({e["coupon_stock_id"]: (e["route"], e["bucket"]) for e in events})
    assert routes[0] == routes[1] and len(routes[0]) == len(stocks)
    for stock, (route, bucket) in routes[0].items():
        assert bucket == bucket_of(f"{MD5_MCH}:{stock}")
        assert route == ("v3" if bucket < 5000 else "legacy")
    on_v3 = sum(route == "v3" for route, _ in routes[0].values())
    assert 60 < on_v3 < 140
    assert counts(emulator) == {"legacy": 2 * (len(stocks) - on_v3), "v3": 2 * on_v3}
