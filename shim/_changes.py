"""Which keys a config reload changed: dotted TOML key names, never values.

Used by :class:`shim._live.LiveConfig` for the ``coupon_shim.config_reloaded`` event's
``changed`` list.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shim._values import MerchantConfig, ShimConfig

__all__ = ["config_changes"]

_SECTIONS = (
    ("upstream", "upstream"),
    ("retry", "retry"),
    ("breaker", "circuit_breaker"),
    ("routing", "routing"),
    ("shadow", "shadow"),
    ("cache", "cache"),
    ("single_flight", "single_flight"),
)
_MERCHANT_FIELDS = (
    "appid",
    "v2_key",
    "v2_sign_type",
    "stock_creator_mchid",
    "stock_creator_mchids",
    "bucket_by",
)


def _section_changes(prefix: str, old: Any, new: Any) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(old):
        if not f.compare:
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            out.append(f"{prefix}.{f.name}")
    return out


def _key_fingerprint(key: Any) -> Any:
    try:
        return key.public_key().public_numbers()
    except AttributeError:  # pragma: no cover - not an RSA private key
        return id(key)


def _merchant_changes(mch_id: str, old: MerchantConfig, new: MerchantConfig) -> list[str]:
    prefix = f'merchants."{mch_id}"'
    out = [
        f"{prefix}.{name}" for name in _MERCHANT_FIELDS if getattr(old, name) != getattr(new, name)
    ]
    a, b = old.v3, new.v3
    if (a is None) != (b is None):
        out.append(f"{prefix}.v3_private_key")
    elif a is not None and b is not None:
        if a.cert_serial != b.cert_serial:
            out.append(f"{prefix}.v3_cert_serial")
        if _key_fingerprint(a.private_key) != _key_fingerprint(b.private_key):
            out.append(f"{prefix}.v3_private_key")
        if a.public_key_id != b.public_key_id:
            out.append(f"{prefix}.wechatpay_public_key_id")
        old_keys = {k: v.public_numbers() for k, v in a.verifiers.items()}
        new_keys = {k: v.public_numbers() for k, v in b.verifiers.items()}
        if old_keys != new_keys:
            out.append(f"{prefix}.wechatpay_public_key")
    return out


def config_changes(old: ShimConfig, new: ShimConfig) -> tuple[str, ...]:
    """The dotted keys whose values differ between two snapshots (names only, never values).

    Section keys are named as in the TOML file (``shadow.sample_ratio``,
    ``circuit_breaker.reset_after_s``, ``mapping.dir``, ``reload.check_interval_s``); a
    merchant added or removed is ``merchants."<mch_id>"``, a changed merchant key
    ``merchants."<mch_id>".<key>`` (for secrets too: the name says a key changed, nothing
    says what it is). An environment override that changes the routing shows as the routing
    key it overrides.
    """
    out: list[str] = []
    for attr, prefix in _SECTIONS:
        a, b = getattr(old, attr, None), getattr(new, attr, None)
        if a is not None and b is not None and a is not b:
            out += _section_changes(prefix, a, b)
    if old.mapping_dir != new.mapping_dir:
        out.append("mapping.dir")
    elif getattr(old, "mapping", None) is not getattr(new, "mapping", None):
        out.append("mapping")  # the mapping file's content changed
    if old.reload_interval_s != new.reload_interval_s:
        out.append("reload.check_interval_s")
    for mch_id in sorted(old.merchants.keys() | new.merchants.keys()):
        a, b = old.merchants.get(mch_id), new.merchants.get(mch_id)
        if a is None or b is None:
            out.append(f'merchants."{mch_id}"')
        elif a is not b:
            out += _merchant_changes(mch_id, a, b)
    return tuple(out)
