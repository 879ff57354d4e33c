"""Tests for shim._routing: parsing, overrides, sticky buckets, decisions, fallback policy."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# private: the pure routing decision, driven directly
import shim._routing
from shim import ConfigError, InputError, MappingError, ShimError, SignatureError, UpstreamError

# private: the environment overrides, tested directly
from shim._environ import apply_env_overrides, kill_switch_on

# private: the pure retry and fallback policy, driven directly
from shim._policy import credentials_refused, fallback_cause, fallback_target

# private: the pure routing decision, driven directly
from shim._routing import Decision, bucket_of, decide, routing_key

# private: the config document reader, tested without files
from shim._toml import parse_routing, parse_shadow

# private: config value types, built directly instead of from a file
from shim._values import BUCKETS, DEFAULT_ROUTING, DEFAULT_SHADOW, RoutingConfig, ShadowConfig

KEYS = [f"{1_900_000_000 + i % 97}:{i}" for i in range(12_000)]


def _decide(cfg: RoutingConfig, mch: str = "m1", stock: str = "s1", **kw: Any) -> Decision:
    kw.setdefault("kill_switch", False)
    return decide(cfg, mch_id=mch, coupon_stock_id=stock, **kw)


# --- bucketing -----------------------------------------------------------------------------


def test_bucket_vectors() -> None:
    """The documented vectors hold: sha256, first 8 bytes big-endian, mod 10,000."""
    assert bucket_of("10000098:1757") == 7092
    assert bucket_of("10000098") == 7740
    assert "7092" in (bucket_of.__doc__ or "") and "7740" in (bucket_of.__doc__ or "")


def test_bucket_range_and_routing_key() -> None:
    """Buckets stay in 0..9999 and routing keys follow bucket_by."""
    assert all(0 <= bucket_of(k) < BUCKETS for k in KEYS[:2000])
    assert routing_key("mch_id:coupon_stock_id", "10000098", "1757") == "10000098:1757"
    assert routing_key("mch_id", "10000098", "1757") == "10000098"
    with pytest.raises(ConfigError) as ei:
        routing_key("stock", "10000098", "1757")
    assert ei.value.key == "routing.bucket_by"


def test_buckets_identical_in_other_processes() -> None:
    """10,000+ keys get the same buckets in fresh interpreters with different hash seeds."""
    local = [bucket_of(k) for k in KEYS]
    package_root = str(Path(shim._routing.__file__).resolve().parent.parent)
    code = (
        "import json, sys\n"
        "from shim._routing import bucket_of\n"
        "keys = json.load(sys.stdin)\n"
        "print(json.dumps([bucket_of(k) for k in keys]))\n"
    )
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(KEYS),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        assert json.loads(out.stdout) == local


def test_raising_percentage_only_adds_keys() -> None:
    """Going from a lower to a higher canary percentage never moves a key from v3 back to legacy."""
    steps = [0, 0.01, 1, 5, 12.34, 50, 99.99, 100]
    previous: set[str] = set()
    for pct in steps:
        cfg = RoutingConfig(mode="canary", canary_percent=pct)
        on_v3 = {
            k
            for k in KEYS
            if _decide(cfg, *k.split(":"), bucket_by="mch_id:coupon_stock_id").serve == "v3"
        }
        assert previous <= on_v3
        previous = on_v3
    assert len(previous) == len(KEYS)


@pytest.mark.parametrize("pct", [1, 10, 50])
def test_canary_share_close_to_target(pct: float) -> None:
    """Over 12,000 keys the v3 share is within one point of the canary percentage."""
    cfg = RoutingConfig(mode="canary", canary_percent=pct)
    served = [_decide(cfg, *k.split(":")).serve for k in KEYS]
    share = served.count("v3") * 100 / len(served)
    assert abs(share - pct) <= 1.0


def test_canary_bucket_by_merchant() -> None:
    """With bucket_by=mch_id (config or per-merchant) all of a merchant's stocks go one way."""
    cfg = RoutingConfig(mode="canary", canary_percent=50, bucket_by="mch_id")
    for mch in ("10000098", "10000099", "123"):
        routes = {_decide(cfg, mch, str(s)).serve for s in range(50)}
        assert len(routes) == 1
        assert _decide(cfg, mch, "1").bucket == bucket_of(mch)
    per_key = RoutingConfig(mode="canary", canary_percent=50)
    d = _decide(per_key, "10000098", "1757", bucket_by="mch_id")
    assert d.bucket == bucket_of("10000098")


# --- modes and precedence ----------------------------------------------------------------


def test_each_mode() -> None:
    """legacy, v3, shadow (either side serving) and canary (in/out, +/- shadow) route right."""
    assert _decide(RoutingConfig(mode="legacy")) == Decision("legacy", None, "mode")
    assert _decide(RoutingConfig(mode="v3")) == Decision("v3", None, "mode")
    assert _decide(RoutingConfig(mode="shadow")) == Decision("legacy", "v3", "mode")
    assert _decide(RoutingConfig(mode="shadow", shadow_serve="v3")) == Decision(
        "v3", "legacy", "mode"
    )
    b = bucket_of("10000098:1757")  # 7092
    inside = RoutingConfig(mode="canary", canary_percent=70.93)
    outside = RoutingConfig(mode="canary", canary_percent=70.92)
    assert _decide(inside, "10000098", "1757") == Decision("v3", None, "canary_in", b)
    assert _decide(outside, "10000098", "1757") == Decision("legacy", None, "canary_out", b)
    inside_s = dataclasses.replace(inside, canary_shadow=True)
    outside_s = dataclasses.replace(outside, canary_shadow=True)
    assert _decide(inside_s, "10000098", "1757") == Decision("v3", "legacy", "canary_in", b)
    assert _decide(outside_s, "10000098", "1757") == Decision("legacy", "v3", "canary_out", b)
    assert _decide(RoutingConfig(mode="canary", canary_percent=0), "a", "b").serve == "legacy"
    assert _decide(RoutingConfig(mode="canary", canary_percent=100), "a", "b").serve == "v3"


def test_precedence_kill_switch_force_lists_flag() -> None:
    """Kill switch > force-legacy > force-v3 > flag > mode; forced decisions never shadow."""
    cfg = RoutingConfig(
        mode="shadow",
        force_legacy_mch_ids=frozenset({"ML"}),
        force_legacy_stock_ids=frozenset({"SL"}),
        force_v3_mch_ids=frozenset({"MV", "ML"}),
        force_v3_stock_ids=frozenset({"SV", "SL"}),
    )
    assert _decide(cfg, "ML", "SV", kill_switch=True) == Decision("legacy", None, "kill_switch")
    assert _decide(cfg, "MV", "SV", kill_switch=True, flag_mode="v3").reason == "kill_switch"
    assert _decide(cfg, "ML", "SV") == Decision("legacy", None, "force_legacy_mch_id")
    assert _decide(cfg, "MV", "SL") == Decision("legacy", None, "force_legacy_stock_id")
    assert _decide(cfg, "MV", "x", flag_mode="legacy") == Decision("v3", None, "force_v3_mch_id")
    assert _decide(cfg, "x", "SV", flag_mode="legacy") == Decision("v3", None, "force_v3_stock_id")
    assert _decide(cfg, "x", "y", flag_mode="v3") == Decision("v3", None, "flag")
    assert _decide(cfg, "x", "y", flag_mode="shadow") == Decision("legacy", "v3", "flag")
    assert _decide(cfg, "x", "y") == Decision("legacy", "v3", "mode")
    canary = _decide(dataclasses.replace(cfg, canary_percent=100), "x", "y", flag_mode="canary")
    assert (canary.serve, canary.reason) == ("v3", "canary_in")


def test_invalid_flag_mode_falls_back_to_config() -> None:
    """A flag value that is not a mode (bypassing typing) leaves the decision to the config."""
    cfg = RoutingConfig(mode="v3")
    assert _decide(cfg, flag_mode="bogus") == Decision("v3", None, "mode")  # type: ignore[arg-type]


# --- config parsing ----------------------------------------------------------------------


def test_parse_full_tables() -> None:
    """Full [routing] and [shadow] tables parse into frozen configs with frozensets and buckets."""
    cfg = parse_routing(
        {
            "mode": "canary",
            "canary_percent": 12.34,
            "bucket_by": "mch_id",
            "shadow_serve": "v3",
            "canary_shadow": True,
            "fallback_to_legacy": False,
            "fallback_to_v3": True,
            "force_v3_mch_ids": ["1", "2"],
            "force_legacy_mch_ids": [],
            "force_v3_stock_ids": ["9"],
            "force_legacy_stock_ids": ["8"],
            "kill_switch_env": "MY_KILL",
            "flag_source": "openfeature",
            "openfeature_flag": "route",
        },
        source="shim.toml",
    )
    assert cfg.canary_buckets == 1234
    assert cfg.force_v3_mch_ids == frozenset({"1", "2"})
    assert cfg.flag_source == "openfeature"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "v3"  # type: ignore[misc]
    assert parse_routing({}, source="x") == DEFAULT_ROUTING
    assert DEFAULT_ROUTING.canary_buckets == 0
    sh = parse_shadow(
        {
            "timeout_s": 2,
            "max_in_flight": 1,
            "workers": 1,
            "sample_ratio": 0,
            "ignore_fields": ["nonce_str"],
        },
        source="shim.toml",
    )
    assert sh == ShadowConfig(
        timeout_s=2.0,
        max_in_flight=1,
        workers=1,
        sample_ratio=0.0,
        ignore_fields=frozenset({"nonce_str"}),
    )
    assert parse_shadow({}, source="x") == DEFAULT_SHADOW
    assert DEFAULT_SHADOW.ignore_fields == frozenset({"nonce_str", "sign"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mode", "blue"),
        ("mode", 3),
        ("canary_percent", 100.01),
        ("canary_percent", -1),
        ("canary_percent", 1.234),
        ("canary_percent", "5"),
        ("canary_percent", True),
        ("canary_percent", float("nan")),
        ("bucket_by", "stock"),
        ("shadow_serve", "both"),
        ("canary_shadow", "yes"),
        ("fallback_to_legacy", 1),
        ("force_v3_mch_ids", "10000098"),
        ("force_legacy_stock_ids", [1757]),
        ("force_v3_stock_ids", [""]),
        ("kill_switch_env", ""),
        ("kill_switch_env", "NOT A NAME"),
        ("flag_source", "unleash"),
        ("openfeature_flag", ""),
        ("colour", "red"),
    ],
)
def test_parse_routing_errors_name_source_and_key(key: str, value: object) -> None:
    """A bad [routing] value or unknown key raises ConfigError naming file and routing.<key>."""
    with pytest.raises(ConfigError) as ei:
        parse_routing({key: value}, source="shim.toml")
    assert ei.value.source == "shim.toml"
    assert ei.value.key == f"routing.{key}"
    assert str(ei.value).startswith(f"shim.toml: routing.{key}: ")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout_s", 0),
        ("timeout_s", "5"),
        ("timeout_s", float("inf")),
        ("max_in_flight", 0),
        ("max_in_flight", 2.0),
        ("workers", 0),
        ("workers", True),
        ("sample_ratio", 1.5),
        ("sample_ratio", -0.1),
        ("ignore_fields", "sign"),
        ("ignore_fields", [3]),
        ("queue", 10),
    ],
)
def test_parse_shadow_errors_name_source_and_key(key: str, value: object) -> None:
    """A bad [shadow] value or unknown key raises ConfigError naming file and shadow.<key>."""
    with pytest.raises(ConfigError) as ei:
        parse_shadow({key: value}, source="shim.toml")
    assert (ei.value.source, ei.value.key) == ("shim.toml", f"shadow.{key}")


def test_direct_construction_validates() -> None:
    """Building the dataclasses directly validates too (key named, no source)."""
    with pytest.raises(ConfigError) as ei:
        RoutingConfig(canary_percent=0.005)
    assert ei.value.key == "routing.canary_percent"
    with pytest.raises(ConfigError) as ei:
        ShadowConfig(workers=0)
    assert ei.value.key == "shadow.workers"


# --- environment -------------------------------------------------------------------------


def test_env_overrides_good() -> None:
    """COUPON_SHIM_MODE (any case) and COUPON_SHIM_CANARY_PERCENT replace the file's values."""
    cfg = RoutingConfig(mode="legacy")
    assert apply_env_overrides(cfg, {}) is cfg
    assert apply_env_overrides(cfg, {"COUPON_SHIM_MODE": "  "}) is cfg
    new = apply_env_overrides(
        cfg, {"COUPON_SHIM_MODE": " Canary ", "COUPON_SHIM_CANARY_PERCENT": "2.5"}
    )
    assert (new.mode, new.canary_percent, new.canary_buckets) == ("canary", 2.5, 250)
    assert cfg.mode == "legacy"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("COUPON_SHIM_MODE", "blue"),
        ("COUPON_SHIM_CANARY_PERCENT", "ten"),
        ("COUPON_SHIM_CANARY_PERCENT", "101"),
        ("COUPON_SHIM_CANARY_PERCENT", "0.001"),
        ("COUPON_SHIM_CANARY_PERCENT", "nan"),
        ("COUPON_SHIM_CANARY_PERCENT", "inf"),
    ],
)
def test_env_overrides_bad(var: str, value: str) -> None:
    """Invalid override values raise ConfigError with source=environment and key=the variable."""
    with pytest.raises(ConfigError) as ei:
        apply_env_overrides(DEFAULT_ROUTING, {var: value})
    assert (ei.value.source, ei.value.key) == ("environment", var)


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("", False),
        ("off", False),
        (" No ", False),
        ("2", True),  # unknown values are ON (the safe side), with a warning
        ("Y", True),
        ("enabled", True),
    ],
)
def test_kill_switch_values(value: str, on: bool) -> None:
    """1/true/yes/on turn the kill switch on, 0/false/no/off/empty leave it off, anything
    else is taken as on; read from the configured variable only."""
    cfg = RoutingConfig(kill_switch_env="MY_KILL")
    assert kill_switch_on(cfg, {"MY_KILL": value}) is on
    assert kill_switch_on(cfg, {"COUPON_SHIM_KILL_SWITCH": "1"}) is False
    assert kill_switch_on(DEFAULT_ROUTING, {}) is False


# --- fallback policy ---------------------------------------------------------------------

_ERRORS: dict[str, BaseException] = {
    "timeout": UpstreamError("t", route="v3", kind="timeout"),
    "connection": UpstreamError("c", route="v3", kind="connection"),
    "circuit_open": UpstreamError("o", route="v3", kind="circuit_open"),
    "budget": UpstreamError("b", route="v3", kind="budget"),
    "http_503": UpstreamError("h", route="v3", kind="http_status", status=503),
    "http_429": UpstreamError("h", route="v3", kind="http_status", status=429),
    "http_400": UpstreamError("h", route="v3", kind="http_status", status=400),
    "protocol": UpstreamError("p", route="v3", kind="protocol"),
    "signature": SignatureError("s", route="v3"),
    "mapping": MappingError("m", v2_key="coupon_value"),
    "input": InputError("i", field="mch_id"),
    "config": ConfigError("c", key="x"),
    "shim": ShimError("s"),
    "value": ValueError("v"),
    "keyboard": KeyboardInterrupt(),
}
_WORTHY = {"timeout", "connection", "circuit_open", "budget", "http_503", "http_429", "mapping"}
_ERRORS["http_401"] = UpstreamError("r", route="v3", kind="http_status", status=401)
_ERRORS["sign_error_400"] = UpstreamError(
    "r", route="v3", kind="http_status", status=400, code="SIGN_ERROR"
)
_REFUSED = {"http_401", "sign_error_400"}


def _fallback(cfg: RoutingConfig, decision: Decision, err: BaseException) -> str | None:
    target = fallback_target(cfg, decision)
    return target if fallback_cause(err, target) is not None else None


@pytest.mark.parametrize("name", sorted(_ERRORS))
@pytest.mark.parametrize("to_legacy", [True, False])
@pytest.mark.parametrize("to_v3", [True, False])
def test_fallback_policy_table(name: str, to_legacy: bool, to_v3: bool) -> None:
    """Fallback happens only for transient errors, mapping errors and (towards legacy) v3
    refusing the shim's credentials, in the direction the config enables."""
    err = _ERRORS[name]
    cfg = RoutingConfig(fallback_to_legacy=to_legacy, fallback_to_v3=to_v3)
    worthy = name in _WORTHY
    on_v3 = Decision("v3", None, "mode")
    on_legacy = Decision("legacy", None, "mode")
    assert _fallback(cfg, on_v3, err) == (
        "legacy" if (worthy or name in _REFUSED) and to_legacy else None
    )
    assert _fallback(cfg, on_legacy, err) == ("v3" if worthy and to_v3 else None)
    if name in _REFUSED and to_legacy:
        assert fallback_cause(err, "legacy") == "credentials_refused"
        assert credentials_refused(err)


@pytest.mark.parametrize(
    "reason", ["kill_switch", "force_legacy_mch_id", "force_legacy_stock_id", "no_v3_credentials"]
)
def test_demanded_legacy_never_falls_back_to_v3(reason: str) -> None:
    """Kill switch, force-legacy and no-v3 decisions have no fallback target at all (so no
    budget is reserved for one), even with fallback_to_v3; force-v3 still falls back."""
    cfg = RoutingConfig(fallback_to_v3=True)
    assert fallback_target(cfg, Decision("legacy", None, reason)) is None
    assert fallback_target(cfg, Decision("v3", None, "force_v3_mch_id")) == "legacy"
    assert fallback_target(cfg, Decision("legacy", None, "mode", v3_available=False)) is None
    assert fallback_target(cfg, Decision("legacy", None, "mode")) == "v3"


def test_unknown_kill_switch_value_is_a_loud_warning_once() -> None:
    """An unrecognised value is a WARNING event naming the variable and the value, once per
    distinct value; known values log nothing."""
    from structlog.testing import capture_logs

    # private: the environment overrides, tested directly
    from shim import _environ as environ

    environ._WARNED_KILL_VALUES.clear()
    cfg = RoutingConfig(kill_switch_env="MY_KILL")
    with capture_logs() as logs:
        assert kill_switch_on(cfg, {"MY_KILL": "enabled"}) is True
        assert kill_switch_on(cfg, {"MY_KILL": "enabled"}) is True
        assert kill_switch_on(cfg, {"MY_KILL": "Y"}) is True
        assert kill_switch_on(cfg, {"MY_KILL": "off"}) is False
        assert kill_switch_on(cfg, {"MY_KILL": "1"}) is True
    warnings = [e for e in logs if e["event"] == "coupon_shim.kill_switch_unrecognised"]
    assert [(e["log_level"], e["variable"], e["value"]) for e in warnings] == [
        ("warning", "MY_KILL", "enabled"),
        ("warning", "MY_KILL", "Y"),
    ]
    assert warnings[0]["treated_as"] == "on" and "0/false/no/off" in warnings[0]["hint"]
    assert len(logs) == 2


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("v3", "no_v3_credentials"), ("shadow", "no_v3_credentials"), ("legacy", "mode")],
)
def test_no_v3_credentials_is_decided_by_routing_alone(mode: str, reason: str) -> None:
    """decide() is the one place that knows a merchant has no v3: a decision that would serve
    or shadow v3 becomes legacy alone, and every decision says v3 is unavailable, so the
    fallback policy never picks v3 for that merchant."""
    cfg = RoutingConfig(mode=mode, fallback_to_v3=True)  # type: ignore[arg-type]
    d = decide(cfg, mch_id="M", coupon_stock_id="1", kill_switch=False, v3_available=False)
    assert (d.serve, d.shadow, d.reason, d.v3_available) == ("legacy", None, reason, False)
    assert fallback_target(cfg, d) is None
    with_v3 = decide(cfg, mch_id="M", coupon_stock_id="1", kill_switch=False)
    assert with_v3.v3_available and with_v3.reason == "mode"


def test_no_v3_credentials_keeps_the_canary_bucket() -> None:
    """A canary decision turned legacy for want of v3 credentials keeps its bucket."""
    cfg = RoutingConfig(mode="canary", canary_percent=100.0)
    d = decide(cfg, mch_id="M", coupon_stock_id="1", kill_switch=False, v3_available=False)
    assert d.reason == "no_v3_credentials" and d.bucket is not None
