"""The seeded coupon stocks: one model per stock, rendered as a v3 JSON view and a v2 view.

Both views come from the same :class:`SeededStock`. The v2 view follows the meaning of the
fields given in the spec's section 3 (computed here, independently of the shim), then adds
the values the real v2 API had but v3 has no source for (``v2_only``), then applies the
deliberate divergences (``v2_divergence``). So, by construction:

* ``mapped_from_v3()`` is what an honest v3→v2 mapping must produce (no guesses);
* ``v2_fields()`` is what the legacy v2 endpoint answers.

They differ only where a stock says so: ``v2_only`` keys (stocks without ``fixed_normal_coupon``
or without ``stock_use_rule``) and the two ``DIVERGENT_FIELDS`` of ``DIVERGENT_STOCK_ID``.

The seeded table is data: ``stocks.json`` beside this module (shipped in the package), read
once at import by :func:`stock_from_json`. Its stocks (creator mchid in brackets):

=================  ==========  =============================================================
stock id           creator     covers
=================  ==========  =============================================================
1717               10000098    the official v2 sample (value 5, minimum 10, status 4, total 100,
                               begin 1943787483, end 1943787490, create 1943787420, budget 500)
1757               10000098    running; ``Z`` times with milliseconds; optional start_time
9856000            10000098    unactivated (1); minimal: no optional field at all
9856001            10000098    audit (2); ``+08:00`` times with milliseconds
9856002            10000098    stoped (8); start_time and stop_time
9856003            10000098    paused (16); max_coupons_per_user 0 (unlimited)
9856010            10000098    stock_use_rule without fixed_normal_coupon (DISCOUNT_CUT,
                               cut_to_message); v2 had coupon_value/coupon_mininumn anyway
9856011            10000098    no stock_use_rule at all (stock_type OTHER); v2 had the values
9856020            10000098    create_time 2024-03-01T17:30:00Z crosses midnight in UTC+8
                               (create_time_t 20240302013000); mixed Z / +08:00 forms
9856030            10000098    unknown extra fields (top level and inside stock_use_rule) and
                               every optional field: card_id, goods_tag, trade_type,
                               coupon_type, combine_use, start_time, stop_time, cut_to_message
9000000001         10000098    DIVERGENT: its v2 view disagrees with the v3 mapping in exactly
                               ``coupon_total`` and ``is_send_num``
9856099            10000099    running, owned by the HMAC-SHA256 merchant
9856098            10000099    stoped, owned by the HMAC-SHA256 merchant; ``+08:00`` with ms
12345678901234567890 10000099  a 20-character id (the longest v3 allows)
=================  ==========  =============================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from types import MappingProxyType
from typing import Any

#: v3 status → v2 ``coupon_stock_status`` (spec §1 / §3).
V3_STATUS_TO_V2: Mapping[str, str] = MappingProxyType(
    {"unactivated": "1", "audit": "2", "running": "4", "stoped": "8", "paused": "16"}
)

_UTC8 = timezone(timedelta(hours=8))
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


#: The one stock whose v2 view deliberately disagrees with what its v3 view maps to.
DIVERGENT_STOCK_ID = "9000000001"
#: The v2 fields in which :data:`DIVERGENT_STOCK_ID` disagrees.
DIVERGENT_FIELDS: tuple[str, ...] = ("coupon_total", "is_send_num")


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 time (``Z`` or ``±HH:MM``, with or without a fraction).

    Raises:
        ValueError: not an RFC 3339 time with an offset.
    """
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"time without offset: {value!r}")
    return parsed


def epoch_seconds(value: str) -> str:
    """RFC 3339 → Unix epoch seconds as a decimal string (the fraction dropped)."""
    parsed = parse_rfc3339(value)
    delta = parsed - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return str(delta.days * 86400 + delta.seconds)


def beijing_compact(value: str) -> str:
    """RFC 3339 → ``yyyyMMddHHmmss`` in Beijing time (UTC+8)."""
    return parse_rfc3339(value).astimezone(_UTC8).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class FixedNormalCoupon:
    """``stock_use_rule.fixed_normal_coupon``: amounts in fen."""

    coupon_amount: int
    transaction_minimum: int


@dataclass(frozen=True)
class StockUseRule:
    """``stock_use_rule``; optional members are left out of the JSON when None."""

    max_coupons: int
    max_amount: int
    max_amount_by_day: int
    max_coupons_per_user: int
    fixed_normal_coupon: FixedNormalCoupon | None = None
    coupon_type: str | None = None
    goods_tag: tuple[str, ...] | None = None
    trade_type: tuple[str, ...] | None = None
    combine_use: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, in the documented key order, extras last."""
        out: dict[str, Any] = {
            "max_coupons": self.max_coupons,
            "max_amount": self.max_amount,
            "max_amount_by_day": self.max_amount_by_day,
        }
        if self.fixed_normal_coupon is not None:
            out["fixed_normal_coupon"] = {
                "coupon_amount": self.fixed_normal_coupon.coupon_amount,
                "transaction_minimum": self.fixed_normal_coupon.transaction_minimum,
            }
        out["max_coupons_per_user"] = self.max_coupons_per_user
        if self.coupon_type is not None:
            out["coupon_type"] = self.coupon_type
        if self.goods_tag is not None:
            out["goods_tag"] = list(self.goods_tag)
        if self.trade_type is not None:
            out["trade_type"] = list(self.trade_type)
        if self.combine_use is not None:
            out["combine_use"] = self.combine_use
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class CutToMessage:
    """``cut_to_message``: prices in fen."""

    single_price_max: int
    cut_to_price: int


@dataclass(frozen=True)
class SeededStock:
    """One coupon stock, the single source of both views.

    Attributes:
        covers: one line saying what this stock is in the table for.
        v2_only: v2 fields the real v2 API answered although v3 has no source for them.
        v2_divergence: v2 fields whose legacy value deliberately differs from the mapping.
        extra: unknown top-level v3 fields (a client must tolerate them).
    """

    stock_id: str
    creator_mchid: str
    stock_name: str
    status: str
    create_time: str
    description: str
    available_begin_time: str
    available_end_time: str
    distributed_coupons: int
    no_cash: bool
    singleitem: bool
    stock_type: str
    covers: str
    stock_use_rule: StockUseRule | None = None
    start_time: str | None = None
    stop_time: str | None = None
    cut_to_message: CutToMessage | None = None
    card_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)
    v2_only: Mapping[str, str] = field(default_factory=_empty)
    v2_divergence: Mapping[str, str] = field(default_factory=_empty)

    def v3_view(self) -> dict[str, Any]:
        """The v3 JSON object (``GET /v3/marketing/favor/stocks/{id}``), never with nulls."""
        out: dict[str, Any] = {
            "stock_id": self.stock_id,
            "stock_creator_mchid": self.creator_mchid,
            "stock_name": self.stock_name,
            "status": self.status,
            "create_time": self.create_time,
            "description": self.description,
        }
        if self.stock_use_rule is not None:
            out["stock_use_rule"] = self.stock_use_rule.to_json()
        out["available_begin_time"] = self.available_begin_time
        out["available_end_time"] = self.available_end_time
        out["distributed_coupons"] = self.distributed_coupons
        out["no_cash"] = self.no_cash
        if self.start_time is not None:
            out["start_time"] = self.start_time
        if self.stop_time is not None:
            out["stop_time"] = self.stop_time
        if self.cut_to_message is not None:
            out["cut_to_message"] = {
                "single_price_max": self.cut_to_message.single_price_max,
                "cut_to_price": self.cut_to_message.cut_to_price,
            }
        out["singleitem"] = self.singleitem
        out["stock_type"] = self.stock_type
        if self.card_id is not None:
            out["card_id"] = self.card_id
        out.update(self.extra)
        return out

    def mapped_from_v3(self) -> dict[str, str]:
        """The v2 coupon fields that the spec §3 meaning gives from the v3 view alone.

        Keys without a v3 source are absent (never guessed). Envelope fields
        (return_code, appid, nonce_str, sign...) are not included.
        """
        out: dict[str, str] = {
            "coupon_stock_id": self.stock_id,
            "coupon_name": self.stock_name,
        }
        rule = self.stock_use_rule
        if rule is not None and rule.fixed_normal_coupon is not None:
            out["coupon_value"] = str(rule.fixed_normal_coupon.coupon_amount)
            out["coupon_mininumn"] = str(rule.fixed_normal_coupon.transaction_minimum)
        out["coupon_stock_status"] = V3_STATUS_TO_V2[self.status]
        if rule is not None:
            out["coupon_total"] = str(rule.max_coupons)
            out["max_quota"] = str(rule.max_coupons_per_user)
        out["is_send_num"] = str(self.distributed_coupons)
        out["begin_time"] = epoch_seconds(self.available_begin_time)
        out["end_time"] = epoch_seconds(self.available_end_time)
        out["create_time"] = epoch_seconds(self.create_time)
        if rule is not None:
            out["coupon_budget"] = str(rule.max_amount)
        out["begin_time_t"] = beijing_compact(self.available_begin_time)
        out["end_time_t"] = beijing_compact(self.available_end_time)
        out["create_time_t"] = beijing_compact(self.create_time)
        return out

    def v2_fields(self) -> dict[str, str]:
        """The v2 coupon fields the legacy endpoint answers (mapping + v2_only + divergence)."""
        out = self.mapped_from_v3()
        for key, value in self.v2_only.items():
            out.setdefault(key, value)
        out.update(self.v2_divergence)
        return {k: out[k] for k in _V2_ORDER if k in out}

    def describe(self) -> str:
        """One printable line: id, creator, status and what the stock covers."""
        v2_status = V3_STATUS_TO_V2[self.status]
        return (
            f"{self.stock_id:<20}  creator={self.creator_mchid}  "
            f"{self.status}({v2_status})  {self.covers}"
        )


_V2_ORDER = (
    "coupon_stock_id",
    "coupon_name",
    "coupon_value",
    "coupon_mininumn",
    "coupon_stock_status",
    "coupon_total",
    "max_quota",
    "is_send_num",
    "begin_time",
    "end_time",
    "create_time",
    "coupon_budget",
    "begin_time_t",
    "end_time_t",
    "create_time_t",
)

#: The seeded table's data file, shipped in the package beside this module.
STOCKS_RESOURCE = "stocks.json"
_STOCKS_FORMAT = "coupon-shim.sandbox-stocks/1"


def _mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def stock_from_json(data: Mapping[str, Any]) -> SeededStock:
    """One stock from its JSON object: the :class:`SeededStock` fields, optional ones absent.

    Raises:
        TypeError: a field is missing or unknown.
    """
    fields = dict(data)
    rule = fields.pop("stock_use_rule", None)
    if rule is not None:
        rule = dict(rule)
        fnc = rule.pop("fixed_normal_coupon", None)
        if fnc is not None:
            rule["fixed_normal_coupon"] = FixedNormalCoupon(**fnc)
        for name in ("goods_tag", "trade_type"):
            if name in rule:
                rule[name] = tuple(rule[name])
        if "extra" in rule:
            rule["extra"] = _mapping(rule["extra"])
        fields["stock_use_rule"] = StockUseRule(**rule)
    cut = fields.pop("cut_to_message", None)
    if cut is not None:
        fields["cut_to_message"] = CutToMessage(**cut)
    for name in ("extra", "v2_only", "v2_divergence"):
        if name in fields:
            fields[name] = _mapping(fields[name])
    return SeededStock(**fields)


def _load_seeded() -> tuple[SeededStock, ...]:
    """The seeded table, read once from the package's :data:`STOCKS_RESOURCE`."""
    text = resources.files(__package__).joinpath(STOCKS_RESOURCE).read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc.get("format") != _STOCKS_FORMAT:  # pragma: no cover - a packaging mistake
        raise ValueError(f"{STOCKS_RESOURCE}: not a {_STOCKS_FORMAT} file")
    return tuple(stock_from_json(s) for s in doc["stocks"])


#: The seeded stocks, in table order (from :data:`STOCKS_RESOURCE`).
SEEDED_STOCKS: tuple[SeededStock, ...] = _load_seeded()


def seeded_stocks() -> dict[str, SeededStock]:
    """A fresh id → stock table of :data:`SEEDED_STOCKS`."""
    return {s.stock_id: s for s in SEEDED_STOCKS}


def describe_stocks(stocks: Mapping[str, SeededStock] | None = None) -> list[str]:
    """One printable line per stock (the seeded table by default); no secrets."""
    table = seeded_stocks() if stocks is None else stocks
    return [s.describe() for s in table.values()]


def another_stock(
    stocks: Mapping[str, SeededStock], stock_id: str | None, creator: str | None
) -> SeededStock:
    """Another stock than ``stock_id`` (one of ``creator``'s when there is one).

    The answer of a ``wrong_stock`` fault, and the stock an ``unsigned_fail`` forgery names.
    """
    others = [st for sid, st in sorted(stocks.items()) if sid != stock_id]
    mine = [st for st in others if st.creator_mchid == creator]
    return (mine or others)[0]
