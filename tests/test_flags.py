"""Tests for shim._flags: the OpenFeature route source, driven by the SDK's in-memory provider."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

from shim import ConfigError, OpenFeatureRouteSource

# private: the pure routing decision, driven directly
from shim._routing import decide, routing_key

# private: config value types, built directly instead of from a file
from shim._values import RoutingConfig

FLAG = "coupon-shim-route"
SEEN: list[EvaluationContext] = []


def _by_merchant(flag: InMemoryFlag[str], ctx: EvaluationContext) -> FlagResolutionDetails[str]:
    SEEN.append(ctx)
    variant = {"M_V3": "v3", "M_SHADOW": "shadow", "M_BAD": "purple"}.get(
        str(ctx.attributes.get("mch_id")), flag.default_variant
    )
    if ctx.attributes.get("mch_id") == "M_BOOM":
        raise RuntimeError("provider broke")
    return FlagResolutionDetails(
        value=flag.variants[variant], variant=variant, reason=Reason.TARGETING_MATCH
    )


def _route_flag() -> InMemoryFlag[str]:
    return InMemoryFlag(
        default_variant="legacy",
        variants={"legacy": "legacy", "v3": "v3", "shadow": "shadow", "purple": "purple"},
        context_evaluator=_by_merchant,
    )


@pytest.fixture(autouse=True)
def openfeature_state() -> Iterator[None]:
    """Give each test a fresh global OpenFeature API with the in-memory provider; reset after."""
    SEEN.clear()
    api.set_provider(
        InMemoryProvider({FLAG: _route_flag(), "numeric": InMemoryFlag("one", {"one": 1})})
    )
    yield
    api.shutdown()
    SEEN.clear()


def _mode(source: OpenFeatureRouteSource, mch: str, stock: str = "1757") -> Any:
    return source.mode_for(mch, stock, routing_key("mch_id:coupon_stock_id", mch, stock))


def test_flag_drives_decide_per_merchant() -> None:
    """The flag's per-merchant value becomes decide()'s flag_mode, with the context carrying ids."""
    source = OpenFeatureRouteSource()
    cfg = RoutingConfig(mode="legacy")
    results = {}
    for mch in ("M_V3", "M_SHADOW", "M_OTHER"):
        flag_mode = _mode(source, mch)
        results[mch] = decide(
            cfg, mch_id=mch, coupon_stock_id="1757", kill_switch=False, flag_mode=flag_mode
        )
    assert (results["M_V3"].serve, results["M_V3"].reason) == ("v3", "flag")
    assert (results["M_SHADOW"].serve, results["M_SHADOW"].shadow) == ("legacy", "v3")
    assert (results["M_OTHER"].serve, results["M_OTHER"].reason) == ("legacy", "flag")
    assert SEEN[0].targeting_key == "M_V3:1757"
    assert dict(SEEN[0].attributes) == {"mch_id": "M_V3", "coupon_stock_id": "1757"}
    assert (source.evaluations, source.errors) == (3, 0)


def test_kill_switch_beats_flag() -> None:
    """A flag saying v3 does not override the kill switch."""
    flag_mode = _mode(OpenFeatureRouteSource(), "M_V3")
    d = decide(
        RoutingConfig(), mch_id="M_V3", coupon_stock_id="1", kill_switch=True, flag_mode=flag_mode
    )
    assert (d.serve, d.reason) == ("legacy", "kill_switch")


def test_invalid_flag_value_gives_none() -> None:
    """A value that is not a mode yields None (config decides), counted as invalid."""
    source = OpenFeatureRouteSource()
    assert _mode(source, "M_BAD") is None
    assert (source.errors, source.invalid) == (1, 1)
    d = decide(
        RoutingConfig(mode="v3"),
        mch_id="M_BAD",
        coupon_stock_id="1",
        kill_switch=False,
        flag_mode=None,
    )
    assert (d.serve, d.reason) == ("v3", "mode")


def test_provider_errors_swallowed_and_counted() -> None:
    """A raising provider, a missing flag or a wrong flag type gives None and counts an error."""
    source = OpenFeatureRouteSource()
    assert _mode(source, "M_BOOM") is None
    missing = OpenFeatureRouteSource(flag_key="no-such-flag")
    assert _mode(missing, "M_V3") is None
    numeric = OpenFeatureRouteSource(flag_key="numeric")
    assert _mode(numeric, "M_V3") is None
    assert (source.errors, missing.errors, numeric.errors) == (1, 1, 1)
    assert source.invalid == missing.invalid == numeric.invalid == 0


def test_raising_client_never_raises_into_call() -> None:
    """Even a client object that raises from get_string_details only yields None and a count."""

    class Broken:
        def get_string_details(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("flag service down")

    source = OpenFeatureRouteSource(Broken())  # type: ignore[arg-type]
    assert _mode(source, "M_V3") is None
    assert source.errors == 1


def test_explicit_client_and_domain() -> None:
    """A client bound to a domain uses that domain's provider."""
    flag = InMemoryFlag("v3", {"v3": "v3"})
    api.set_provider(InMemoryProvider({FLAG: flag}), domain="payments")
    assert _mode(OpenFeatureRouteSource(domain="payments"), "M_OTHER") == "v3"
    client = api.get_client(domain="payments")
    assert _mode(OpenFeatureRouteSource(client), "M_OTHER") == "v3"
    assert _mode(OpenFeatureRouteSource(), "M_OTHER") == "legacy"


def test_missing_sdk_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without openfeature-sdk the source raises ConfigError telling how to install the extra."""
    monkeypatch.setitem(sys.modules, "openfeature", None)
    with pytest.raises(ConfigError) as ei:
        OpenFeatureRouteSource()
    assert "pip install 'coupon-shim[openfeature]'" in str(ei.value)
    assert ei.value.key == "routing.flag_source"


def test_route_flags_lifecycle() -> None:
    """RouteFlags builds its own source only when the config asks for OpenFeature, follows a
    reloaded flag key by dropping the source it built, and never replaces the caller's."""
    # private: the flag source's lifecycle, tested directly
    from shim._flags import RouteFlags

    config = RoutingConfig()
    openfeature = RoutingConfig(flag_source="openfeature")
    other_flag = RoutingConfig(flag_source="openfeature", openfeature_flag="other-flag")
    own = RouteFlags()
    assert own.mode_for(config, "M_V3", "1", "mch_id") is None and own.source is None
    assert own.mode_for(openfeature, "M_V3", "1", "mch_id") == "v3"
    built = own.source
    assert built is not None and built.flag_key == FLAG
    own.reconfigure(openfeature)
    assert own.source is built  # same flag: kept
    own.reconfigure(other_flag)
    assert own.source is None  # another flag: the next call builds a source for it
    assert own.mode_for(other_flag, "M_V3", "1", "mch_id") is None  # no such flag: config
    assert own.source is not None and own.source.flag_key == "other-flag"
    given = OpenFeatureRouteSource()
    theirs = RouteFlags(given)
    theirs.reconfigure(other_flag)
    assert theirs.source is given
    assert theirs.mode_for(other_flag, "M_V3", "1", "mch_id") == "v3"  # reads its own flag
