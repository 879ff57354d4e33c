"""The OpenFeature route source with the real flagd provider (``openfeature-provider-flagd``).

The provider runs in its in-process mode reading a flagd flag-definition file (``resolver:
file``): the same JSON a flagd server serves, evaluated locally by flagd's own engine
(JsonLogic, ``fractional`` bucketing). The shim passes the routing key as the targeting key,
so ``fractional`` splits routing keys, sticky per key. Editing the file flips the route of
running shims without a restart (the provider polls the file).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from shim import (
    AsyncCouponStockShim,
    CallRecord,
    CouponStockShim,
    OpenFeatureRouteSource,
    ShimConfig,
)
from shim.sandbox import Emulator
from tests.conftest import MD5_MCH, Twin
from tests.wait import wait_until

FLAG = "coupon-shim-route"
DOMAIN = "coupon-shim-flagd-test"
STOCKS = [str(n) for n in range(5000, 5040)]  # unknown stocks: both routes answer NOT_FOUND


def definition(targeting: dict[str, Any] | None, default: str = "legacy") -> dict[str, Any]:
    flag: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {m: m for m in ("legacy", "shadow", "canary", "v3")},
        "defaultVariant": default,
    }
    if targeting is not None:
        flag["targeting"] = targeting
    return {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {FLAG: flag}}


#: half the routing keys on v3, half on legacy, by flagd's own sticky hash of the key
FRACTIONAL = {"fractional": [{"var": "targetingKey"}, ["v3", 50], ["legacy", 50]]}


def write_flags(path: Path, doc: dict[str, Any]) -> None:
    """Write the flag file so the provider's mtime poll sees a change."""
    previous = path.stat().st_mtime if path.exists() else 0.0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    stamp = max(previous + 1.0, time.time())
    os.utime(path, (stamp, stamp))


@pytest.fixture
def flag_file(tmp_path: Path) -> Iterator[Path]:
    """A flagd definition file, served by a real FlagdProvider in file (in-process) mode."""
    path = tmp_path / "flags.json"
    write_flags(path, definition(FRACTIONAL))
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(path), deadline_ms=100
    )
    api.set_provider_and_wait(provider, domain=DOMAIN)
    yield path
    provider.shutdown()
    api.clear_providers()


def flagd_says(key: str) -> str:
    """flagd's own evaluation for a routing key (the oracle)."""
    client = api.get_client(domain=DOMAIN)
    return client.get_string_value(FLAG, "", EvaluationContext(targeting_key=key))


@pytest.fixture
def flag_shim(
    twin_kind: str, make_config: Callable[..., ShimConfig], emulator: Emulator
) -> Iterator[tuple[Twin, list[CallRecord]]]:
    config = make_config("legacy", routing={"flag_source": "openfeature", "openfeature_flag": FLAG})
    source = OpenFeatureRouteSource(flag_key=FLAG, domain=DOMAIN)
    kwargs: dict[str, Any] = {
        "env": {},
        "flag_source": source,
        "transport": emulator.mock_transport(),
    }
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls(config, **kwargs))
    records: list[CallRecord] = []
    twin.shim.subscribe(records.append)
    yield twin, records


async def routes(twin: Twin, records: list[CallRecord], stocks: list[str]) -> dict[str, str]:
    records.clear()
    for stock in stocks:
        answer = await twin.query(stock, mch_id=MD5_MCH)
        assert answer["err_code"] == "COUPON_STOCK_NOT_FOUND"
    assert [r.coupon_stock_id for r in records] == stocks
    assert all(r.decision.reason == "flag" for r in records)
    return {r.coupon_stock_id: r.route for r in records}


async def test_fractional_targeting_splits_routing_keys(
    flag_file: Path, flag_shim: tuple[Twin, list[CallRecord]]
) -> None:
    """flagd's fractional rule on the targeting key decides each routing key's route, the
    same way on every call; both sides get keys."""
    twin, records = flag_shim
    try:
        first = await routes(twin, records, STOCKS)
        assert first == {s: flagd_says(f"{MD5_MCH}:{s}") for s in STOCKS}
        share = sum(route == "v3" for route in first.values()) / len(STOCKS)
        assert 0.2 < share < 0.8, share
        assert await routes(twin, records, STOCKS) == first  # sticky per key
    finally:
        await twin.close()


async def test_editing_the_flag_file_flips_running_shims(
    flag_file: Path, flag_shim: tuple[Twin, list[CallRecord]]
) -> None:
    """Rewriting the definition (everything to v3, then everything back to legacy) takes
    effect in the running shim within the provider's poll, no restart."""
    twin, records = flag_shim
    try:
        before = await routes(twin, records, STOCKS[:10])
        assert "legacy" in before.values()
        for target in ("v3", "legacy"):
            write_flags(flag_file, definition(None, default=target))
            wait_until(
                lambda target=target: all(
                    flagd_says(f"{MD5_MCH}:{s}") == target for s in STOCKS[:10]
                ),
                "the provider never saw the edit",
                interval=0.05,
            )
            assert set((await routes(twin, records, STOCKS[:10])).values()) == {target}
    finally:
        await twin.close()


async def test_targeting_a_merchant_by_attribute(
    flag_file: Path, flag_shim: tuple[Twin, list[CallRecord]]
) -> None:
    """A flagd rule on the mch_id attribute (not the key) moves that merchant as a whole."""
    twin, records = flag_shim
    rule = {"if": [{"==": [{"var": "mch_id"}, MD5_MCH]}, "v3", "legacy"]}
    write_flags(flag_file, definition(rule))
    client = api.get_client(domain=DOMAIN)
    ctx = EvaluationContext(targeting_key=f"{MD5_MCH}:1", attributes={"mch_id": MD5_MCH})
    wait_until(
        lambda: client.get_string_value(FLAG, "", ctx) == "v3",
        "the provider never saw the edit",
        interval=0.05,
    )
    try:
        assert set((await routes(twin, records, STOCKS[:5])).values()) == {"v3"}
    finally:
        await twin.close()


def test_the_readme_flag_definition_works(tmp_path: Path) -> None:
    """The flagd definition shown in the README loads in flagd's engine and does what it says:
    merchant 10000099 stays on legacy, about 10 % of the other keys go to v3."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**With flagd**") :]
    block = section[
        section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))
    ]
    path = tmp_path / "readme-flags.json"
    path.write_text(block)
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(path), deadline_ms=100
    )
    api.set_provider_and_wait(provider, domain=DOMAIN)
    try:
        client = api.get_client(domain=DOMAIN)

        def mode(mch: str, stock: str) -> str:
            ctx = EvaluationContext(targeting_key=f"{mch}:{stock}", attributes={"mch_id": mch})
            details = client.get_string_details(FLAG, "", ctx)
            assert details.error_code is None, details
            return details.value

        assert {mode("10000099", str(n)) for n in range(200)} == {"legacy"}
        on_v3 = sum(mode("10000098", str(n)) == "v3" for n in range(1000))
        assert 50 < on_v3 < 150, on_v3
    finally:
        provider.shutdown()
        api.clear_providers()
