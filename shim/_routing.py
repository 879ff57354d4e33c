"""Cutover routing: which upstream serves a call, and which one is shadowed.

Everything here is pure: no I/O, no clock, no randomness, no global state. The facade
passes in the environment (for the kill switch and overrides) and an optional flag value,
and gets back an immutable :class:`Decision`. :func:`decide` runs on every call, so it only
does set lookups, and one SHA-256 of a short key when the decision depends on a bucket.

Precedence (first match wins)::

    kill switch            -> legacy                       reason "kill_switch"
    force_legacy_mch_ids   -> legacy                       reason "force_legacy_mch_id"
    force_legacy_stock_ids -> legacy                       reason "force_legacy_stock_id"
    force_v3_mch_ids       -> v3                           reason "force_v3_mch_id"
    force_v3_stock_ids     -> v3                           reason "force_v3_stock_id"
    flag_mode (if given)   -> that mode, as below          reason "flag" (or canary_in/out)
    cfg.mode               -> legacy | v3                  reason "mode"
                              shadow: serve shadow_serve, shadow the other side
                              canary: bucket < canary_buckets -> v3 ("canary_in"),
                                      else legacy ("canary_out"); with canary_shadow the
                                      other side is shadowed

Forced decisions (kill switch, force lists) never shadow: an operator who pins a merchant
or a stock to one side wants exactly that side called, and nothing else.

A stock or merchant listed in both a force-legacy and a force-v3 list goes to legacy; this is
allowed on purpose, so that adding an entry to a force-legacy list during an incident always
works without first editing the other list.

Sticky bucketing (:func:`bucket_of`): ``int.from_bytes(sha256(key_utf8)[:8], "big") % 10000``.
Callers in other languages can reproduce it exactly. The key is ``"{mch_id}:{coupon_stock_id}"``
(``bucket_by = "mch_id:coupon_stock_id"``, the default) or ``"{mch_id}"`` (``bucket_by =
"mch_id"``). A key is on v3 in canary mode when its bucket is below ``canary_buckets =
canary_percent * 100``, so raising the percentage only ever adds keys to v3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

from shim._errors import ConfigError, Route
from shim._logs import get_logger

__all__ = [
    "BUCKETS",
    "BUCKET_BY_VALUES",
    "DEFAULT_ROUTING",
    "DEFAULT_SHADOW",
    "ENV_CANARY_PERCENT",
    "ENV_MODE",
    "MODES",
    "BucketBy",
    "Decision",
    "FlagSource",
    "Mode",
    "RoutingConfig",
    "ShadowConfig",
    "apply_env_overrides",
    "bucket_of",
    "decide",
    "kill_switch_on",
    "parse_mode",
    "parse_routing",
    "parse_shadow",
    "routing_key",
]

Mode = Literal["legacy", "shadow", "canary", "v3"]
BucketBy = Literal["mch_id:coupon_stock_id", "mch_id"]
FlagSource = Literal["config", "openfeature"]

#: Number of canary buckets: one bucket is 0.01 %.
BUCKETS: Final = 10_000
MODES: Final[frozenset[str]] = frozenset(get_args(Mode))
BUCKET_BY_VALUES: Final[frozenset[str]] = frozenset(get_args(BucketBy))
_ROUTES: Final[frozenset[str]] = frozenset(get_args(Route))
_FLAG_SOURCES: Final[frozenset[str]] = frozenset(get_args(FlagSource))

ENV_MODE: Final = "COUPON_SHIM_MODE"
ENV_CANARY_PERCENT: Final = "COUPON_SHIM_CANARY_PERCENT"
_TRUE_VALUES: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_VALUES: Final = frozenset({"", "0", "false", "no", "off"})
#: (variable, value) pairs already warned about (one warning per distinct value).
_WARNED_KILL_VALUES: set[tuple[str, str]] = set()
_log = get_logger("shim.routing")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Invalid(ValueError):
    """A value failed validation (internal; turned into ConfigError with source and key)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def _percent_to_buckets(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(key, f"must be a number from 0 to 100, got {type(value).__name__}")
    p = float(value)
    if not math.isfinite(p) or not 0.0 <= p <= 100.0:
        raise _Invalid(key, f"must be from 0 to 100, got {value!r}")
    buckets = round(p * 100)
    if abs(p * 100 - buckets) > 1e-6:
        raise _Invalid(key, f"must be a multiple of 0.01, got {value!r}")
    return buckets


def _choice(value: object, allowed: frozenset[str], key: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        shown = " | ".join(sorted(allowed))
        raise _Invalid(key, f"must be one of {shown}, got {value!r}")
    return value


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(key, f"must be true or false, got {value!r}")
    return value


def _str_set(value: object, key: str, what: str = "ids") -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _Invalid(key, f"must be a list of {what} (strings)")
    out: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise _Invalid(key, f"must contain non-empty strings only, got {item!r}")
        out.add(item.strip())
    return frozenset(out)


def _percent(value: object, key: str) -> float:
    _percent_to_buckets(value, key)
    return float(cast(float, value))


def _non_empty_str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(key, f"must be a non-empty string, got {value!r}")
    return value


def _int_at_least(value: object, minimum: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Invalid(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _positive_float(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(key, f"must be a number, got {value!r}")
    f = float(value)
    if not math.isfinite(f) or f <= 0:
        raise _Invalid(key, f"must be a finite number > 0, got {value!r}")
    return f


def _ratio(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(key, f"must be a number from 0 to 1, got {value!r}")
    f = float(value)
    if not 0.0 <= f <= 1.0:  # also false for NaN
        raise _Invalid(key, f"must be from 0 to 1, got {value!r}")
    return f


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingConfig:
    """The ``[routing]`` table, validated. Immutable; swap the whole value to reload.

    Attributes:
        mode: ``legacy`` | ``shadow`` | ``canary`` | ``v3``.
        canary_percent: share of routing keys served by v3 in canary mode (0..100, 0.01 steps).
        canary_buckets: ``canary_percent`` as a count of the 10,000 buckets (derived).
        bucket_by: routing key, ``mch_id:coupon_stock_id`` or ``mch_id``.
        shadow_serve: the side that serves in shadow mode; the other side is compared.
        canary_shadow: in canary mode, also run the other side as a shadow.
        fallback_to_legacy: serving v3 failed transiently -> serve legacy.
        fallback_to_v3: serving legacy failed transiently -> serve v3.
        force_v3_mch_ids, force_legacy_mch_ids, force_v3_stock_ids, force_legacy_stock_ids:
            override lists (see the module docstring for precedence).
        kill_switch_env: name of the environment variable that forces legacy when true.
        flag_source: ``config`` or ``openfeature``.
        openfeature_flag: the OpenFeature string flag holding the mode.

    Raises:
        ConfigError: a value is invalid (``key`` names it; ``source`` is None here, see
            :func:`parse_routing`).
    """

    mode: Mode = "legacy"
    canary_percent: float = 0.0
    bucket_by: BucketBy = "mch_id:coupon_stock_id"
    shadow_serve: Route = "legacy"
    canary_shadow: bool = False
    fallback_to_legacy: bool = True
    fallback_to_v3: bool = False
    force_v3_mch_ids: frozenset[str] = frozenset()
    force_legacy_mch_ids: frozenset[str] = frozenset()
    force_v3_stock_ids: frozenset[str] = frozenset()
    force_legacy_stock_ids: frozenset[str] = frozenset()
    kill_switch_env: str = "COUPON_SHIM_KILL_SWITCH"
    flag_source: FlagSource = "config"
    openfeature_flag: str = "coupon-shim-route"
    canary_buckets: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            buckets = self._validate()
        except _Invalid as exc:
            raise ConfigError(exc.message, key=exc.key) from None
        object.__setattr__(self, "canary_buckets", buckets)

    def _validate(self) -> int:
        _choice(self.mode, MODES, "routing.mode")
        buckets = _percent_to_buckets(self.canary_percent, "routing.canary_percent")
        _choice(self.bucket_by, BUCKET_BY_VALUES, "routing.bucket_by")
        _choice(self.shadow_serve, _ROUTES, "routing.shadow_serve")
        for name in ("canary_shadow", "fallback_to_legacy", "fallback_to_v3"):
            _bool(getattr(self, name), f"routing.{name}")
        for name in (
            "force_v3_mch_ids",
            "force_legacy_mch_ids",
            "force_v3_stock_ids",
            "force_legacy_stock_ids",
        ):
            if not isinstance(getattr(self, name), frozenset):
                raise _Invalid(f"routing.{name}", "must be a frozenset of strings")
        if not isinstance(self.kill_switch_env, str) or not _ENV_NAME.match(self.kill_switch_env):
            raise _Invalid(
                "routing.kill_switch_env",
                f"must be an environment variable name, got {self.kill_switch_env!r}",
            )
        _choice(self.flag_source, _FLAG_SOURCES, "routing.flag_source")
        _non_empty_str(self.openfeature_flag, "routing.openfeature_flag")
        return buckets


@dataclass(frozen=True, kw_only=True, slots=True)
class ShadowConfig:
    """The ``[shadow]`` table, validated.

    Attributes:
        timeout_s: time budget of one shadow call (> 0).
        max_in_flight: cap on shadow comparisons running or queued (>= 1); excess is dropped.
        workers: size of the sync twin's thread pool (>= 1).
        sample_ratio: share of eligible calls that are shadowed (0..1).
        ignore_fields: v2 fields left out of the comparison.

    Raises:
        ConfigError: a value is invalid.
    """

    timeout_s: float = 5.0
    max_in_flight: int = 32
    workers: int = 4
    sample_ratio: float = 1.0
    ignore_fields: frozenset[str] = frozenset({"nonce_str", "sign"})

    def __post_init__(self) -> None:
        try:
            _positive_float(self.timeout_s, "shadow.timeout_s")
            _int_at_least(self.max_in_flight, 1, "shadow.max_in_flight")
            _int_at_least(self.workers, 1, "shadow.workers")
            _ratio(self.sample_ratio, "shadow.sample_ratio")
            if not isinstance(self.ignore_fields, frozenset):
                raise _Invalid("shadow.ignore_fields", "must be a frozenset of strings")
        except _Invalid as exc:
            raise ConfigError(exc.message, key=exc.key) from None


DEFAULT_ROUTING: Final = RoutingConfig()
DEFAULT_SHADOW: Final = ShadowConfig()

_ROUTING_PARSERS: Final[dict[str, Any]] = {
    "mode": lambda v, k: _choice(v, MODES, k),
    "canary_percent": _percent,
    "bucket_by": lambda v, k: _choice(v, BUCKET_BY_VALUES, k),
    "shadow_serve": lambda v, k: _choice(v, _ROUTES, k),
    "canary_shadow": _bool,
    "fallback_to_legacy": _bool,
    "fallback_to_v3": _bool,
    "force_v3_mch_ids": _str_set,
    "force_legacy_mch_ids": _str_set,
    "force_v3_stock_ids": _str_set,
    "force_legacy_stock_ids": _str_set,
    "kill_switch_env": _non_empty_str,
    "flag_source": lambda v, k: _choice(v, _FLAG_SOURCES, k),
    "openfeature_flag": _non_empty_str,
}

_SHADOW_PARSERS: Final[dict[str, Any]] = {
    "timeout_s": _positive_float,
    "max_in_flight": lambda v, k: _int_at_least(v, 1, k),
    "workers": lambda v, k: _int_at_least(v, 1, k),
    "sample_ratio": _ratio,
    "ignore_fields": lambda v, k: _str_set(v, k, "field names"),
}


def _parse_table(
    table: Mapping[str, Any], parsers: Mapping[str, Any], prefix: str, source: str
) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{prefix}] must be a table", source=source, key=prefix)
    values: dict[str, Any] = {}
    for name, raw in table.items():
        key = f"{prefix}.{name}"
        parser = parsers.get(name)
        if parser is None:
            known = ", ".join(sorted(parsers))
            raise ConfigError(f"unknown key (known keys: {known})", source=source, key=key)
        try:
            values[name] = parser(raw, key)
        except _Invalid as exc:
            raise ConfigError(exc.message, source=source, key=exc.key) from None
    return values


def parse_routing(table: Mapping[str, Any], *, source: str) -> RoutingConfig:
    """Validate a ``[routing]`` table (as read from TOML) into a :class:`RoutingConfig`.

    Missing keys take their defaults.

    Args:
        table: the table's keys and values.
        source: where it came from (a file name), for error messages.

    Returns:
        The immutable routing config.

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, with ``source`` and
            ``key="routing.<key>"``.
    """
    values = _parse_table(table, _ROUTING_PARSERS, "routing", source)
    try:
        return RoutingConfig(**values)
    except ConfigError as exc:  # pragma: no cover - the parsers check everything first
        raise ConfigError(str(exc), source=source, key=exc.key) from None


def parse_shadow(table: Mapping[str, Any], *, source: str) -> ShadowConfig:
    """Validate a ``[shadow]`` table into a :class:`ShadowConfig`.

    Args:
        table: the table's keys and values.
        source: where it came from (a file name), for error messages.

    Returns:
        The immutable shadow config.

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, with ``source`` and
            ``key="shadow.<key>"``.
    """
    values = _parse_table(table, _SHADOW_PARSERS, "shadow", source)
    try:
        return ShadowConfig(**values)
    except ConfigError as exc:  # pragma: no cover - the parsers check everything first
        raise ConfigError(str(exc), source=source, key=exc.key) from None


def parse_mode(value: str) -> Mode | None:
    """Return ``value`` (stripped, case-insensitive) as a :data:`Mode`, or None if it is not one."""
    v = value.strip().lower()
    return cast(Mode, v) if v in MODES else None


def apply_env_overrides(cfg: RoutingConfig, env: Mapping[str, str]) -> RoutingConfig:
    """Apply ``COUPON_SHIM_MODE`` and ``COUPON_SHIM_CANARY_PERCENT`` from ``env``.

    An unset or blank variable changes nothing. The mode is case-insensitive.

    Args:
        cfg: the routing config from the file.
        env: the environment (e.g. ``os.environ``).

    Returns:
        ``cfg`` itself when nothing applies, otherwise a new config.

    Raises:
        ConfigError: an invalid value, with ``source="environment"`` and ``key`` the
            variable's name (the value is repeated: these variables hold no secrets).
    """
    changes: dict[str, Any] = {}
    raw_mode = env.get(ENV_MODE, "")
    if raw_mode.strip():
        mode = parse_mode(raw_mode)
        if mode is None:
            raise ConfigError(
                f"must be one of {' | '.join(sorted(MODES))}, got {raw_mode!r}",
                source="environment",
                key=ENV_MODE,
            )
        changes["mode"] = mode
    raw_pct = env.get(ENV_CANARY_PERCENT, "")
    if raw_pct.strip():
        try:
            pct = float(raw_pct.strip())
            _percent_to_buckets(pct, ENV_CANARY_PERCENT)
        except (ValueError, _Invalid):
            raise ConfigError(
                f"must be a number from 0 to 100 in 0.01 steps, got {raw_pct!r}",
                source="environment",
                key=ENV_CANARY_PERCENT,
            ) from None
        changes["canary_percent"] = pct
    return dataclasses.replace(cfg, **changes) if changes else cfg


def kill_switch_on(cfg: RoutingConfig, env: Mapping[str, str]) -> bool:
    """Whether the kill switch ``env[cfg.kill_switch_env]`` is on.

    ``1``/``true``/``yes``/``on`` turn it on; unset, empty, ``0``/``false``/``no``/``off``
    leave it off (case-insensitive, trimmed). Any other value (``Y``, ``enabled``) is taken as
    ON, the safe side, with a ``coupon_shim.kill_switch_unrecognised`` WARNING event (once per
    distinct value and process).
    """
    raw = env.get(cfg.kill_switch_env)
    if not raw:
        return False
    value = raw.strip().lower()
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    _warn_unrecognised_kill_switch(cfg.kill_switch_env, raw)
    return True


def _warn_unrecognised_kill_switch(name: str, raw: str) -> None:
    key = (name, raw)
    if key in _WARNED_KILL_VALUES:
        return
    if len(_WARNED_KILL_VALUES) < 64:  # bounded, whatever the environment holds
        _WARNED_KILL_VALUES.add(key)
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    _log.warning(
        "coupon_shim.kill_switch_unrecognised",
        variable=name,
        value=shown,
        treated_as="on",
        hint=f"{name}: use 1/true/yes/on to turn the kill switch on, 0/false/no/off or unset "
        "to turn it off; every call goes to legacy until then",
    )


def bucket_of(key: str) -> int:
    """Return the sticky bucket (0..9999) of a routing key.

    Definition, to reproduce in any language: encode ``key`` as UTF-8, take the SHA-256
    digest, read its first 8 bytes as an unsigned big-endian 64-bit integer, and take it
    modulo 10,000. Unlike Python's ``hash()``, this is the same in every process and on
    every machine.

    Test vectors::

        bucket_of("10000098:1757") == 7092   # sha256 starts e2b938149fb72894
        bucket_of("10000098") == 7740

    Args:
        key: the routing key (see :func:`routing_key`).

    Returns:
        The bucket, ``0 <= bucket < BUCKETS``.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def routing_key(bucket_by: str, mch_id: str, coupon_stock_id: str) -> str:
    """Build the routing key: ``"mch_id:coupon_stock_id"`` or ``"mch_id"``.

    Raises:
        ConfigError: ``bucket_by`` is not one of :data:`BUCKET_BY_VALUES`.
    """
    if bucket_by == "mch_id:coupon_stock_id":
        return f"{mch_id}:{coupon_stock_id}"
    if bucket_by == "mch_id":
        return mch_id
    raise ConfigError(
        f"must be one of {' | '.join(sorted(BUCKET_BY_VALUES))}, got {bucket_by!r}",
        key="routing.bucket_by",
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one call goes.

    Attributes:
        serve: the route whose answer the caller gets.
        shadow: the route run in the background and compared, or None.
        reason: ``kill_switch``, ``force_legacy_mch_id``, ``force_legacy_stock_id``,
            ``force_v3_mch_id``, ``force_v3_stock_id``, ``mode`` (from the config),
            ``flag`` (from the flag source), ``canary_in``, ``canary_out``, or
            ``no_v3_credentials`` (v3 was chosen, to serve or to shadow, for a merchant
            without v3 credentials: legacy serves alone).
        bucket: the routing key's bucket when the decision depended on it (canary), else None.
        v3_available: whether the merchant has v3 credentials (False: no route of this call,
            fallbacks included, is v3).
    """

    serve: Route
    shadow: Route | None
    reason: str
    bucket: int | None = None
    v3_available: bool = True


_ROUTE_PAIR: Final[tuple[Route, Route]] = ("legacy", "v3")
_OTHER: Final[dict[Route, Route]] = {"legacy": "v3", "v3": "legacy"}
_KILL: Final = Decision("legacy", None, "kill_switch")
_FORCE_LEGACY_MCH: Final = Decision("legacy", None, "force_legacy_mch_id")
_FORCE_LEGACY_STOCK: Final = Decision("legacy", None, "force_legacy_stock_id")
_FORCE_V3_MCH: Final = Decision("v3", None, "force_v3_mch_id")
_FORCE_V3_STOCK: Final = Decision("v3", None, "force_v3_stock_id")
_PLAIN: Final[dict[tuple[str, str, str | None], Decision]] = {
    (serve, reason, shadow): Decision(serve, shadow, reason)
    for serve in _ROUTE_PAIR
    for reason in ("mode", "flag")
    for shadow in (None, *_ROUTE_PAIR)
    if shadow != serve
}


def decide(
    cfg: RoutingConfig,
    *,
    mch_id: str,
    coupon_stock_id: str,
    kill_switch: bool,
    v3_available: bool = True,
    bucket_by: str | None = None,
    flag_mode: Mode | None = None,
) -> Decision:
    """Decide which route serves a call and which (if any) is shadowed.

    Precedence: kill switch > force-legacy lists > force-v3 lists > ``flag_mode`` >
    ``cfg.mode``. Forced decisions never shadow. See the module docstring.

    Args:
        cfg: the routing config (with environment overrides already applied).
        mch_id: the caller's merchant id.
        coupon_stock_id: the stock queried.
        kill_switch: the result of :func:`kill_switch_on`.
        v3_available: whether the merchant has v3 credentials. This is the one place that
            knows a merchant has none: a decision that would serve or shadow v3 becomes
            legacy alone (reason ``no_v3_credentials``, the bucket kept), and every decision
            carries it (``Decision.v3_available``) so that the fallback policy never picks v3.
        bucket_by: a per-merchant override of ``cfg.bucket_by`` (validated by the config
            loader; an invalid value raises ConfigError when a bucket is needed).
        flag_mode: the mode from a flag source (e.g. OpenFeature), or None to use ``cfg.mode``.

    Returns:
        The decision.
    """
    decision = _decide(cfg, mch_id, coupon_stock_id, kill_switch, bucket_by, flag_mode)
    if v3_available:
        return decision
    if decision.serve == "v3" or decision.shadow == "v3":
        return Decision("legacy", None, _NO_V3, decision.bucket, v3_available=False)
    return dataclasses.replace(decision, v3_available=False)


_NO_V3: Final = "no_v3_credentials"


def _decide(
    cfg: RoutingConfig,
    mch_id: str,
    coupon_stock_id: str,
    kill_switch: bool,
    bucket_by: str | None,
    flag_mode: Mode | None,
) -> Decision:
    if kill_switch:
        return _KILL
    if mch_id in cfg.force_legacy_mch_ids:
        return _FORCE_LEGACY_MCH
    if coupon_stock_id in cfg.force_legacy_stock_ids:
        return _FORCE_LEGACY_STOCK
    if mch_id in cfg.force_v3_mch_ids:
        return _FORCE_V3_MCH
    if coupon_stock_id in cfg.force_v3_stock_ids:
        return _FORCE_V3_STOCK
    if flag_mode is None:
        mode: str = cfg.mode
        reason = "mode"
    else:
        mode = flag_mode
        reason = "flag"
    if mode == "legacy" or mode == "v3":
        return _PLAIN[(mode, reason, None)]
    if mode == "shadow":
        serve = cfg.shadow_serve
        return _PLAIN[(serve, reason, _OTHER[serve])]
    if mode == "canary":
        bucket = bucket_of(routing_key(bucket_by or cfg.bucket_by, mch_id, coupon_stock_id))
        if bucket < cfg.canary_buckets:
            return Decision("v3", "legacy" if cfg.canary_shadow else None, "canary_in", bucket)
        return Decision("legacy", "v3" if cfg.canary_shadow else None, "canary_out", bucket)
    # An invalid flag_mode slipped past typing: the config decides.
    return _decide(cfg, mch_id, coupon_stock_id, False, bucket_by, None)
