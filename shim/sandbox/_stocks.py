"""The seeded coupon stocks: one model per stock, rendered as a v3 JSON view and a v2 view.

Both views come from the same :class:`SeededStock`. The v2 view follows the meaning of the
fields given in the spec's section 3 (computed here, independently of the shim), then adds
the values the real v2 API had but v3 has no source for (``v2_only``), then applies the
deliberate divergences (``v2_divergence``). So, by construction:

* ``mapped_from_v3()`` is what an honest v3→v2 mapping must produce (no guesses);
* ``v2_fields()`` is what the legacy v2 endpoint answers.

They differ only where a stock says so: ``v2_only`` keys (stocks without ``fixed_normal_coupon``
or without ``stock_use_rule``) and the two ``DIVERGENT_FIELDS`` of ``DIVERGENT_STOCK_ID``.

Seeded table (creator mchid in brackets):

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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

MCH_A = "10000098"
MCH_B = "10000099"


def _rule(
    total: int,
    amount: int,
    minimum: int | None,
    *,
    per_user: int = 1,
    **kw: Any,
) -> StockUseRule:
    fnc = FixedNormalCoupon(amount, minimum) if minimum is not None else None
    return StockUseRule(
        max_coupons=total,
        max_amount=total * amount,
        max_amount_by_day=total * amount,
        max_coupons_per_user=per_user,
        fixed_normal_coupon=fnc,
        **kw,
    )


SEEDED_STOCKS: tuple[SeededStock, ...] = (
    SeededStock(
        stock_id="1717",
        creator_mchid=MCH_A,
        stock_name="官方示例批次",
        status="running",
        create_time="2031-08-06T20:57:00+08:00",
        description="matches the official v2 success sample",
        available_begin_time="2031-08-06T20:58:03+08:00",
        available_end_time="2031-08-06T20:58:10+08:00",
        distributed_coupons=0,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="official v2 sample: value 5, minimum 10, status 4, total 100, budget 500",
        stock_use_rule=StockUseRule(
            max_coupons=100,
            max_amount=500,
            max_amount_by_day=500,
            max_coupons_per_user=1,
            fixed_normal_coupon=FixedNormalCoupon(5, 10),
            coupon_type="NORMAL",
        ),
    ),
    SeededStock(
        stock_id="1757",
        creator_mchid=MCH_A,
        stock_name="满100减10",
        status="running",
        create_time="2024-01-10T02:00:00.120Z",
        description="新用户专享",
        available_begin_time="2024-01-15T00:00:00.000Z",
        available_end_time="2030-12-31T15:59:59.999Z",
        distributed_coupons=1234,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="running; Z times with milliseconds; start_time",
        stock_use_rule=_rule(10000, 1000, 10000, per_user=3),
        start_time="2024-01-15T00:00:00.000Z",
    ),
    SeededStock(
        stock_id="9856000",
        creator_mchid=MCH_A,
        stock_name="未激活批次",
        status="unactivated",
        create_time="2024-02-01T10:00:00+08:00",
        description="not activated yet",
        available_begin_time="2024-03-01T00:00:00+08:00",
        available_end_time="2024-03-31T23:59:59+08:00",
        distributed_coupons=0,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="unactivated (1); minimal, no optional field",
        stock_use_rule=_rule(500, 200, 1000),
    ),
    SeededStock(
        stock_id="9856001",
        creator_mchid=MCH_A,
        stock_name="审核中批次",
        status="audit",
        create_time="2015-05-20T13:29:35.120+08:00",
        description="under approval",
        available_begin_time="2015-05-21T00:00:00.500+08:00",
        available_end_time="2015-06-20T23:59:59.999+08:00",
        distributed_coupons=0,
        no_cash=True,
        singleitem=False,
        stock_type="NORMAL",
        covers="audit (2); +08:00 times with milliseconds",
        stock_use_rule=_rule(300, 500, 0),
    ),
    SeededStock(
        stock_id="9856002",
        creator_mchid=MCH_A,
        stock_name="已停止批次",
        status="stoped",
        create_time="2023-06-01T09:00:00+08:00",
        description="stopped",
        available_begin_time="2023-06-02T00:00:00+08:00",
        available_end_time="2023-12-31T23:59:59+08:00",
        distributed_coupons=800,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="stoped (8); start_time and stop_time",
        stock_use_rule=_rule(800, 300, 3000, per_user=2),
        start_time="2023-06-02T00:00:00+08:00",
        stop_time="2023-09-30T18:00:00+08:00",
    ),
    SeededStock(
        stock_id="9856003",
        creator_mchid=MCH_A,
        stock_name="暂停发放批次",
        status="paused",
        create_time="2024-04-01T08:00:00Z",
        description="issuing paused",
        available_begin_time="2024-04-02T00:00:00Z",
        available_end_time="2025-04-01T00:00:00Z",
        distributed_coupons=42,
        no_cash=False,
        singleitem=True,
        stock_type="NORMAL",
        covers="paused (16); max_coupons_per_user 0 (unlimited)",
        stock_use_rule=_rule(1000, 100, 500, per_user=0),
    ),
    SeededStock(
        stock_id="9856010",
        creator_mchid=MCH_A,
        stock_name="单品立减至批次",
        status="running",
        create_time="2024-05-01T12:00:00+08:00",
        description="cut-to price, no fixed_normal_coupon",
        available_begin_time="2024-05-02T00:00:00+08:00",
        available_end_time="2026-05-01T23:59:59+08:00",
        distributed_coupons=17,
        no_cash=False,
        singleitem=True,
        stock_type="DISCOUNT_CUT",
        covers="stock_use_rule without fixed_normal_coupon; v2 had coupon_value/mininumn",
        stock_use_rule=StockUseRule(
            max_coupons=200,
            max_amount=20000,
            max_amount_by_day=5000,
            max_coupons_per_user=1,
            coupon_type="CUT_TO",
        ),
        cut_to_message=CutToMessage(single_price_max=2000, cut_to_price=990),
        v2_only=MappingProxyType({"coupon_value": "100", "coupon_mininumn": "2000"}),
    ),
    SeededStock(
        stock_id="9856011",
        creator_mchid=MCH_A,
        stock_name="无使用规则批次",
        status="running",
        create_time="2024-06-01T00:00:00Z",
        description="no stock_use_rule",
        available_begin_time="2024-06-01T00:00:00Z",
        available_end_time="2027-01-01T00:00:00Z",
        distributed_coupons=5,
        no_cash=True,
        singleitem=False,
        stock_type="OTHER",
        covers="no stock_use_rule at all; v2 had value/minimum/total/quota/budget",
        v2_only=MappingProxyType(
            {
                "coupon_value": "300",
                "coupon_mininumn": "0",
                "coupon_total": "50",
                "max_quota": "1",
                "coupon_budget": "15000",
            }
        ),
    ),
    SeededStock(
        stock_id="9856020",
        creator_mchid=MCH_A,
        stock_name="跨零点批次",
        status="running",
        create_time="2024-03-01T17:30:00Z",
        description="created at 01:30 Beijing time on the next day",
        available_begin_time="2024-03-01T16:00:00.000Z",
        available_end_time="2024-03-31T23:59:59+08:00",
        distributed_coupons=9,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="create_time 2024-03-01T17:30:00Z is 20240302013000 in UTC+8; mixed Z/+08:00",
        stock_use_rule=_rule(100, 800, 5000),
    ),
    SeededStock(
        stock_id="9856030",
        creator_mchid=MCH_A,
        stock_name="全字段批次",
        status="running",
        create_time="2024-07-01T10:00:00.001+08:00",
        description="every optional field and unknown extras",
        available_begin_time="2024-07-02T00:00:00+08:00",
        available_end_time="2029-07-01T23:59:59+08:00",
        distributed_coupons=77,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="unknown extra fields; card_id, goods_tag, trade_type, combine_use, start/stop",
        stock_use_rule=_rule(
            700,
            1500,
            9900,
            per_user=2,
            coupon_type="NORMAL",
            goods_tag=("123321", "456654"),
            trade_type=("MICROAPP", "APPPAY"),
            combine_use=False,
            extra=MappingProxyType(
                {"available_merchants": ["10000098"], "prevent_api_abuse": True}
            ),
        ),
        start_time="2024-07-02T00:00:00+08:00",
        stop_time="2029-07-01T23:59:59+08:00",
        cut_to_message=CutToMessage(single_price_max=10000, cut_to_price=100),
        card_id="pIJMr5MMiIkO_93VtPyIiEk2DZ4w",
        extra=MappingProxyType(
            {
                "future_field": "tolerate me",
                "future_object": {"nested": [1, 2, 3], "flag": True},
                "available_week": {"week_day": [1, 2, 3]},
            }
        ),
    ),
    SeededStock(
        stock_id=DIVERGENT_STOCK_ID,
        creator_mchid=MCH_A,
        stock_name="数据不一致批次",
        status="running",
        create_time="2024-08-01T09:00:00+08:00",
        description="legacy and v3 disagree in coupon_total and is_send_num",
        available_begin_time="2024-08-01T10:00:00+08:00",
        available_end_time="2028-08-01T10:00:00+08:00",
        distributed_coupons=250,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="DIVERGENT: v2 coupon_total 1200 vs v3 1000, is_send_num 260 vs v3 250",
        stock_use_rule=_rule(1000, 500, 2000, per_user=5),
        v2_divergence=MappingProxyType({"coupon_total": "1200", "is_send_num": "260"}),
    ),
    SeededStock(
        stock_id="9856099",
        creator_mchid=MCH_B,
        stock_name="HMAC商户批次",
        status="running",
        create_time="2024-09-01T00:00:00Z",
        description="owned by the HMAC-SHA256 merchant",
        available_begin_time="2024-09-01T00:00:00Z",
        available_end_time="2030-09-01T00:00:00Z",
        distributed_coupons=3,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="running, owned by 10000099 (HMAC-SHA256 merchant)",
        stock_use_rule=_rule(60, 1000, 5000, per_user=1),
    ),
    SeededStock(
        stock_id="9856098",
        creator_mchid=MCH_B,
        stock_name="HMAC商户已停止批次",
        status="stoped",
        create_time="2022-01-01T08:00:00.250+08:00",
        description="stopped, owned by the HMAC-SHA256 merchant",
        available_begin_time="2022-01-02T00:00:00.000+08:00",
        available_end_time="2022-12-31T23:59:59.999+08:00",
        distributed_coupons=60,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="stoped, owned by 10000099; +08:00 with milliseconds",
        stock_use_rule=_rule(60, 200, 1000, per_user=1),
        stop_time="2022-06-30T12:00:00+08:00",
    ),
    SeededStock(
        stock_id="12345678901234567890",
        creator_mchid=MCH_B,
        stock_name="长批次号",
        status="running",
        create_time="2024-10-01T00:00:00+08:00",
        description="a 20-character stock id",
        available_begin_time="2024-10-01T00:00:00+08:00",
        available_end_time="2031-10-01T00:00:00+08:00",
        distributed_coupons=0,
        no_cash=False,
        singleitem=False,
        stock_type="NORMAL",
        covers="a 20-character stock id, owned by 10000099",
        stock_use_rule=_rule(10, 100, 100, per_user=1),
    ),
)


def seeded_stocks() -> dict[str, SeededStock]:
    """A fresh id → stock table of :data:`SEEDED_STOCKS`."""
    return {s.stock_id: s for s in SEEDED_STOCKS}


def describe_stocks(stocks: Mapping[str, SeededStock] | None = None) -> list[str]:
    """One printable line per stock (the seeded table by default); no secrets."""
    table = seeded_stocks() if stocks is None else stocks
    return [s.describe() for s in table.values()]
