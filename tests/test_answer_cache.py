"""The opt-in answer cache, through both twins: what is kept, for how long, for whom."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the answer cache, tested directly
from shim._cache import AnswerCache, cacheable

# private: the event names and schema the assertions read
from shim._events import EVENT
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH, Twin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cached_shim(make_shim: Callable[..., Twin], mode: str, clock: Clock, **tables: Any) -> Twin:
    twin = make_shim(
        mode, via="inprocess", cache={"ttl_s": 1.0, **tables.pop("cache", {})}, **tables
    )
    twin.shim._clock = clock
    return twin


def query_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == EVENT]


async def test_off_by_default(make_shim: Callable[..., Twin], emulator: Emulator) -> None:
    """ttl_s = 0 (the default): every call goes upstream and events carry no cache field."""
    twin = make_shim("v3", via="inprocess")
    with capture_logs() as logs:
        for _ in range(3):
            await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 3
    assert all("cache" not in e for e in query_events(logs))


@pytest.mark.parametrize("mode", ["v3", "legacy"])
async def test_a_hit_is_served_for_ttl_s_with_its_own_nonce_and_sign(
    make_shim: Callable[..., Twin], emulator: Emulator, sandbox_state: SandboxState, mode: str
) -> None:
    """Within ttl_s a second call is a hit (re-signed, fresh nonce); after it, upstream again."""
    clock = Clock()
    twin = cached_shim(make_shim, mode, clock)
    side = "v3" if mode == "v3" else "v2"
    with capture_logs() as logs:
        first = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        clock.now += 0.9
        second = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        clock.now += 0.2  # 1.1 s after the first: expired
        third = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert emulator.request_counts[side] == 2
    key = sandbox_state.merchants[MD5_MCH].v2_key
    for answer in (first, second, third):
        v2.verify_answer(answer, key=key, sign_type="MD5")
    assert second["nonce_str"] != first["nonce_str"]
    strip = ("nonce_str", "sign")
    assert {k: v for k, v in second.items() if k not in strip} == {
        k: v for k, v in first.items() if k not in strip
    }
    assert [e["cache"] for e in query_events(logs)] == ["miss", "hit", "miss"]
    hit = query_events(logs)[1]
    assert hit["route"] == mode and hit["attempts"] == 0 and hit["outcome"] == "success"


async def test_not_found_answers_are_cached_other_business_errors_are_not(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """COUPON_STOCK_NOT_FOUND is kept; SYSTEMERROR (a business error) is not."""
    clock = Clock()
    twin = cached_shim(make_shim, "legacy", clock)
    for _ in range(2):
        answer = await twin.query(coupon_stock_id="424242", mch_id=MD5_MCH)
    assert answer["err_code"] == "COUPON_STOCK_NOT_FOUND"
    assert emulator.request_counts["v2"] == 1
    emulator.set_fault("v2", "1717", "err_code:SYSTEMERROR")
    for _ in range(2):
        answer = await twin.query(coupon_stock_id="1717", mch_id=MD5_MCH)
    assert answer["err_code"] == "SYSTEMERROR"
    assert emulator.request_counts["v2"] == 3


async def test_typed_errors_are_never_cached(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A failed call leaves nothing behind: the next call goes upstream and succeeds."""
    clock = Clock()
    twin = cached_shim(
        make_shim,
        "v3",
        clock,
        retry={"attempts": 1},
        routing={"fallback_to_legacy": False},
    )
    emulator.set_fault("v3", "1757", "http_500", times=1)
    with pytest.raises(Exception, match="HTTP 500"):
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert answer["result_code"] == "SUCCESS" and emulator.request_counts["v3"] == 2


async def test_never_shared_across_merchants(
    make_shim: Callable[..., Twin], emulator: Emulator, sandbox_state: SandboxState
) -> None:
    """Two merchants asking about the same stock id each get their own upstream answer."""
    clock = Clock()
    twin = cached_shim(make_shim, "legacy", clock)
    mine = await twin.query(coupon_stock_id="9856099", mch_id=HMAC_MCH)
    other = await twin.query(coupon_stock_id="9856099", mch_id=MD5_MCH)
    assert emulator.request_counts["v2"] == 2
    assert mine["mch_id"] == HMAC_MCH and other["mch_id"] == MD5_MCH
    v2.verify_answer(mine, key=sandbox_state.merchants[HMAC_MCH].v2_key, sign_type="HMAC-SHA256")


async def test_a_cache_hit_is_not_shadowed(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Shadow mode: the miss is compared; the hit brings no new upstream answer to compare."""
    clock = Clock()
    twin = cached_shim(make_shim, "shadow", clock)
    await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    if twin.kind == "async":
        await twin.shim.wait_for_shadows(10)  # type: ignore[misc]
    else:
        twin.shim.wait_for_shadows(10)
    assert twin.shim.shadow_totals().calls == 1
    assert emulator.request_counts == {"v2": 1, "v3": 1}


def test_bounded_least_recently_used_first() -> None:
    """max_entries bounds the cache; the least recently used entry goes first."""
    cache = AnswerCache(max_entries=2)
    ok = {"return_code": "SUCCESS", "result_code": "SUCCESS", "nonce_str": "n", "sign": "s"}
    for key in ("a", "b"):
        cache.put(key, ok, route="v3", unmapped=(), expires=10)
    assert cache.get("a", 0) is not None  # a is now the most recent
    cache.put("c", ok, route="v3", unmapped=(), expires=10)
    assert cache.get("b", 0) is None and cache.get("a", 0) and cache.get("c", 0)
    assert len(cache) == 2
    entry = cache.get("a", 0)
    assert entry is not None and "sign" not in entry.fields and "nonce_str" not in entry.fields


def test_only_success_and_not_found_are_cacheable() -> None:
    """The cacheable answers, exactly."""
    assert cacheable({"return_code": "SUCCESS", "result_code": "SUCCESS"})
    assert cacheable(
        {"return_code": "SUCCESS", "result_code": "FAIL", "err_code": "COUPON_STOCK_NOT_FOUND"}
    )
    assert not cacheable(
        {"return_code": "SUCCESS", "result_code": "FAIL", "err_code": "SYSTEMERROR"}
    )
    assert not cacheable({"return_code": "FAIL", "return_msg": "SIGNERROR"})
    assert not cacheable({"return_code": "SUCCESS", "result_code": "SUCCESS", "err_code": "X"})


async def test_a_reload_empties_the_cache(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Answers cached under the old snapshot are not served after a reload."""
    clock = Clock()
    twin = cached_shim(make_shim, "v3", clock)
    await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert len(twin.shim._cache) == 1
    old = twin.shim.config
    twin.shim._on_reload(old, old)
    assert len(twin.shim._cache) == 0
    await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 2


def test_cache_config_is_validated(make_config: Callable[..., Any]) -> None:
    """[cache] ttl_s must be >= 0 and max_entries >= 1; unknown keys are refused."""
    from shim import ConfigError

    assert make_config("v3").cache.ttl_s == 0
    with pytest.raises(ConfigError, match=r"cache\.ttl_s"):
        make_config("v3", cache={"ttl_s": -1})
    with pytest.raises(ConfigError, match=r"cache\.max_entries"):
        make_config("v3", cache={"max_entries": 0})
    with pytest.raises(ConfigError, match=r"cache\.size"):
        make_config("v3", cache={"size": 3})
    with pytest.raises(ConfigError, match=r"single_flight\.enabled"):
        make_config("v3", single_flight={"enabled": "yes"})
