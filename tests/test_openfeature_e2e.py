"""The OpenFeature flag source at the facade, both twins, with the SDK's in-memory provider."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim

# private: the event names and schema the assertions read
from shim._events import EVENT

# private: the pure routing decision, driven directly
from shim._routing import bucket_of
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH, Twin
from tests.wait import await_until

FLAG = "coupon-shim-route"
VARIANTS = {m: m for m in ("legacy", "shadow", "canary", "v3", "purple")}
SEEN: list[EvaluationContext] = []


def flag(by_mch: dict[str, str], default: str = "legacy") -> InMemoryFlag[str]:
    """A string flag whose variant is chosen by the context's mch_id attribute."""

    def evaluate(f: InMemoryFlag[str], ctx: EvaluationContext) -> FlagResolutionDetails[str]:
        SEEN.append(ctx)
        mch_id = str(ctx.attributes.get("mch_id"))
        if by_mch.get(mch_id) == "boom":
            raise RuntimeError("the provider broke")
        variant = by_mch.get(mch_id, f.default_variant)
        return FlagResolutionDetails(
            value=f.variants[variant], variant=variant, reason=Reason.TARGETING_MATCH
        )

    return InMemoryFlag(default_variant=default, variants=VARIANTS, context_evaluator=evaluate)


@pytest.fixture(autouse=True)
def openfeature_state() -> Iterator[None]:
    """Each test starts with the in-memory provider (MD5 merchant on v3) and ends with none."""
    SEEN.clear()
    api.set_provider(InMemoryProvider({FLAG: flag({MD5_MCH: "v3"})}))
    yield
    api.shutdown()
    api.clear_providers()
    SEEN.clear()


OPENFEATURE = {"flag_source": "openfeature"}


async def call(
    twin: Twin, mch_id: str = MD5_MCH, stock: str = "1757"
) -> tuple[dict[str, str], dict[str, Any]]:
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id=stock, mch_id=mch_id)
        assert await twin.wait_for_shadows()
    (event,) = [e for e in logs if e["event"] == EVENT]
    return answer, event


async def test_flag_routes_each_merchant(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """The flag sends the MD5 merchant to v3 and the HMAC merchant to legacy (reason "flag")."""
    twin = make_shim("legacy", via="inprocess", routing=OPENFEATURE)
    _, event = await call(twin)
    assert event["route"] == "v3" and event["reason"] == "flag"
    _, event = await call(twin, HMAC_MCH, "9856099")
    assert event["route"] == "legacy" and event["reason"] == "flag"
    assert emulator.request_counts == {"v2": 1, "v3": 1}
    assert SEEN[0].targeting_key == f"{MD5_MCH}:1757"
    assert SEEN[0].attributes == {"mch_id": MD5_MCH, "coupon_stock_id": "1757"}


async def test_flag_shadow_and_canary_values_behave_like_the_modes(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A "shadow" value shadows (divergent stock mismatches); "canary" buckets by the key."""
    api.set_provider(InMemoryProvider({FLAG: flag({MD5_MCH: "shadow", HMAC_MCH: "canary"})}))
    twin = make_shim("legacy", via="inprocess", routing={**OPENFEATURE, "canary_percent": 100.0})
    _, event = await call(twin, MD5_MCH, DIVERGENT_STOCK_ID)
    assert event["route"] == "legacy" and event["shadow_route"] == "v3"
    assert event["shadow"] == "mismatch" and event["mismatch_fields"] == sorted(DIVERGENT_FIELDS)
    _, event = await call(twin, HMAC_MCH, "9856099")
    assert event["route"] == "v3" and event["reason"] == "canary_in"
    assert event["bucket"] == bucket_of(f"{HMAC_MCH}:9856099")


async def test_kill_switch_and_force_lists_beat_the_flag(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """The flag says v3, but the kill switch (set at once) and force-legacy lists win."""
    env = {"COUPON_SHIM_KILL_SWITCH": ""}
    twin = make_shim(
        "legacy",
        via="inprocess",
        env=env,
        routing={**OPENFEATURE, "force_legacy_stock_ids": ["9856000"]},
    )
    _, event = await call(twin, stock="9856000")
    assert event["route"] == "legacy" and event["reason"] == "force_legacy_stock_id"
    assert (await call(twin))[1]["reason"] == "flag"
    env["COUPON_SHIM_KILL_SWITCH"] = "1"
    _, event = await call(twin)
    assert event["route"] == "legacy" and event["reason"] == "kill_switch"
    assert emulator.request_counts == {"v2": 2, "v3": 1}


@pytest.mark.parametrize("value", ["boom", "purple"], ids=["provider-error", "not-a-mode"])
async def test_a_broken_flag_leaves_the_config_in_charge(
    make_shim: Callable[..., Twin], emulator: Emulator, value: str
) -> None:
    """A provider error or a value that is not a mode never breaks the call: the file decides."""
    api.set_provider(InMemoryProvider({FLAG: flag({MD5_MCH: value})}))
    twin = make_shim("v3", via="inprocess", routing=OPENFEATURE)
    answer, event = await call(twin)
    assert answer["result_code"] == "SUCCESS"
    assert event["route"] == "v3" and event["reason"] == "mode"


async def test_changing_the_flag_reroutes_the_next_call(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Swapping the provider's flag takes effect on the very next call, with no reload."""
    twin = make_shim("legacy", via="inprocess", routing=OPENFEATURE)
    assert (await call(twin))[1]["route"] == "v3"
    api.set_provider(InMemoryProvider({FLAG: flag({MD5_MCH: "legacy"})}))
    assert (await call(twin))[1]["route"] == "legacy"


async def test_a_custom_flag_key_is_used(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """routing.openfeature_flag names the flag read; the default flag is then ignored."""
    api.set_provider(
        InMemoryProvider({FLAG: flag({MD5_MCH: "legacy"}), "my-route": flag({MD5_MCH: "v3"})})
    )
    twin = make_shim(
        "legacy", via="inprocess", routing={**OPENFEATURE, "openfeature_flag": "my-route"}
    )
    _, event = await call(twin)
    assert event["route"] == "v3" and event["reason"] == "flag"


async def test_config_flag_source_ignores_openfeature(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """With flag_source = "config" the provider is never asked."""
    twin = make_shim("legacy", via="inprocess")
    _, event = await call(twin)
    assert event["route"] == "legacy" and event["reason"] == "mode" and not SEEN


async def test_reloaded_flag_key_is_followed(
    twin_kind: str, sandbox_state: SandboxState, emulator: Emulator, tmp_path: Path
) -> None:
    """Editing routing.openfeature_flag in a watched file makes the next calls read that flag."""
    api.set_provider(
        InMemoryProvider({FLAG: flag({MD5_MCH: "legacy"}), "my-route": flag({MD5_MCH: "v3"})})
    )
    path = sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url="http://unused", v3_base_url="http://unused"
    )
    text = path.read_text(encoding="utf-8").replace(
        'flag_source = "config"', 'flag_source = "openfeature"'
    )
    text = text.replace("check_interval_s = 2.0", "check_interval_s = 0")
    path.write_text(text, encoding="utf-8")
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls.from_file(path, transport=emulator.mock_transport()))
    try:
        assert (await call(twin))[1]["route"] == "legacy"
        path.write_text(text.replace(f'"{FLAG}"', '"my-route"'), encoding="utf-8")
        stamp = path.stat().st_mtime_ns - 5_000_000_000  # settled: not a write in progress
        os.utime(path, ns=(stamp, stamp))
        await await_until(  # the background watcher reloads within its interval
            lambda: twin.shim.config.routing.openfeature_flag == "my-route",
            "the watcher never reloaded the flag key",
            timeout=5,
        )
        _, event = await call(twin)
        assert event["route"] == "v3" and event["reason"] == "flag"
    finally:
        await twin.close()
