"""Cutover routing: which upstream serves a call, and which one is shadowed.

Everything here is pure: no I/O, no clock, no randomness, no global state. The facade
passes in the kill switch's state (read from the environment by ``_environ``) and an
optional flag value, and gets back an immutable :class:`Decision`. :func:`decide` runs
on every call, so it only does set lookups, and one SHA-256 of a short key when the
decision depends on a bucket.

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

import hashlib
from dataclasses import dataclass, replace
from typing import Final, cast

from shim._errors import ConfigError, Route
from shim._values import BUCKET_BY_VALUES, BUCKETS, MODES, Mode, RoutingConfig

__all__ = [
    "Decision",
    "bucket_of",
    "decide",
    "parse_mode",
    "routing_key",
]


def parse_mode(value: str) -> Mode | None:
    """Return ``value`` (stripped, case-insensitive) as a :data:`Mode`, or None if it is not one."""
    v = value.strip().lower()
    return cast(Mode, v) if v in MODES else None


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
    return replace(decision, v3_available=False)


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
