"""Tests of the declarative v3 → v2 mapping (shim._mapping and mappings/query_coupon_stock.toml)."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from shim import ConfigError, MappingError

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.apply import map_error, map_success

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import clear_mapping_cache, default_mapping_dir, load_mapping

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.model import KNOWN_V3_ENUMS, ErrorOutcome, MappingTable, MapResult, Unmapped

REPO_MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"

REQUEST = {
    "coupon_stock_id": "1717",
    "appid": "wx5edab3bdfba3dc1c",
    "mch_id": "10000098",
    "op_user_id": "10000098",
    "nonce_str": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
}

# A v3 answer carrying the official v2 success sample's values.
SAMPLE_BODY: dict[str, Any] = {
    "stock_id": "1717",
    "stock_creator_mchid": "10000098",
    "stock_name": "微信支付代金券",
    "status": "running",
    "create_time": "2031-08-06T20:57:00+08:00",
    "description": "满10元减5元",
    "stock_use_rule": {
        "max_coupons": 100,
        "max_amount": 500,
        "max_amount_by_day": 500,
        "fixed_normal_coupon": {"coupon_amount": 5, "transaction_minimum": 10},
        "max_coupons_per_user": 0,
        "coupon_type": "NORMAL",
        "goods_tag": ["123321"],
        "trade_type": ["JSAPI"],
        "combine_use": False,
    },
    "available_begin_time": "2031-08-06T12:58:03.120Z",
    "available_end_time": "2031-08-06T20:58:10+08:00",
    "distributed_coupons": 4,
    "no_cash": False,
    "singleitem": False,
    "stock_type": "NORMAL",
}

SAMPLE_V2: dict[str, str] = {
    "return_code": "SUCCESS",
    "return_msg": "OK",
    "appid": "wx5edab3bdfba3dc1c",
    "mch_id": "10000098",
    "result_code": "SUCCESS",
    "coupon_stock_id": "1717",
    "coupon_name": "微信支付代金券",
    "coupon_value": "5",
    "coupon_mininumn": "10",
    "coupon_stock_status": "4",
    "coupon_total": "100",
    "max_quota": "0",
    "is_send_num": "4",
    "begin_time": "1943787483",
    "end_time": "1943787490",
    "create_time": "1943787420",
    "coupon_budget": "500",
    "begin_time_t": "20310806205803",
    "end_time_t": "20310806205810",
    "create_time_t": "20310806205700",
}

FILE_ORDER = [
    "return_code",
    "return_msg",
    "appid",
    "mch_id",
    "device_info",
    "result_code",
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
]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Every test starts and ends with an empty mapping cache."""
    clear_mapping_cache()
    yield
    clear_mapping_cache()


@pytest.fixture
def table() -> MappingTable:
    """The repository's default mapping."""
    return load_mapping(REPO_MAPPINGS)


def body(**changes: Any) -> dict[str, Any]:
    """SAMPLE_BODY with top-level changes (a value of DROP removes the key)."""
    out = copy.deepcopy(SAMPLE_BODY)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


DROP = object()


def rule(**changes: Any) -> dict[str, Any]:
    """SAMPLE_BODY's stock_use_rule with changes (DROP removes a key)."""
    out = copy.deepcopy(SAMPLE_BODY["stock_use_rule"])
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def without(*keys: str) -> dict[str, str]:
    """SAMPLE_V2 without some keys."""
    return {k: v for k, v in SAMPLE_V2.items() if k not in keys}


# --- golden table: v3 body in, v2 dict and unmapped list out --------------------------------

RULE_KEYS = ("coupon_value", "coupon_mininumn", "coupon_total", "max_quota", "coupon_budget")

GOLDEN: list[tuple[str, dict[str, Any], dict[str, str], list[tuple[str, str, str]]]] = [
    ("official-sample", body(), SAMPLE_V2, []),
    (
        "no-stock_use_rule",
        body(stock_use_rule=DROP),
        without(*RULE_KEYS),
        [(k, "absent", "stock_use_rule absent") for k in RULE_KEYS],
    ),
    (
        "no-fixed_normal_coupon",
        body(stock_type="DISCOUNT_CUT", stock_use_rule=rule(fixed_normal_coupon=DROP)),
        without("coupon_value", "coupon_mininumn"),
        [
            ("coupon_value", "absent", "stock_use_rule.fixed_normal_coupon absent"),
            ("coupon_mininumn", "absent", "stock_use_rule.fixed_normal_coupon absent"),
        ],
    ),
    (
        "half-fixed_normal_coupon",
        body(stock_use_rule=rule(fixed_normal_coupon={"coupon_amount": 5})),
        without("coupon_mininumn"),
        [
            (
                "coupon_mininumn",
                "absent",
                "stock_use_rule.fixed_normal_coupon.transaction_minimum absent",
            )
        ],
    ),
    (
        "unknown-extra-fields",
        body(
            brand_new={"nested": [1, 2]},
            stock_use_rule=rule(
                new_limit=7,
                fixed_normal_coupon={"coupon_amount": 5, "transaction_minimum": 10, "x": 1},
            ),
        ),
        SAMPLE_V2,
        [],
    ),
    (
        "null-values-are-absent",
        body(stock_name=None, stock_use_rule=rule(fixed_normal_coupon=None)),
        without("coupon_name", "coupon_value", "coupon_mininumn"),
        [
            ("coupon_name", "absent", "stock_name is null"),
            ("coupon_value", "absent", "stock_use_rule.fixed_normal_coupon is null"),
            ("coupon_mininumn", "absent", "stock_use_rule.fixed_normal_coupon is null"),
        ],
    ),
    (
        "invalid-values-left-out",
        body(
            distributed_coupons="12a",
            create_time="1969-07-20T20:17:40Z",
            stock_use_rule=rule(max_coupons=True, max_amount=12.5),
        ),
        without("is_send_num", "create_time", "create_time_t", "coupon_total", "coupon_budget"),
        [
            (
                "coupon_total",
                "invalid",
                "stock_use_rule.max_coupons: expected an integer, got boolean True",
            ),
            (
                "is_send_num",
                "invalid",
                "distributed_coupons: expected a canonical decimal integer, got string '12a'",
            ),
            ("create_time", "invalid", "create_time: instant before 1970-01-01T00:00:00Z"),
            (
                "coupon_budget",
                "invalid",
                "stock_use_rule.max_amount: expected an integer, got number 12.5",
            ),
            ("create_time_t", "invalid", "create_time: instant before 1970-01-01T00:00:00Z"),
        ],
    ),
    (
        "wrong-object-types",
        body(stock_use_rule=["not", "an", "object"]),
        without(*RULE_KEYS),
        [(k, "invalid", "stock_use_rule is not an object") for k in RULE_KEYS],
    ),
    (
        "ints-as-strings",
        body(distributed_coupons="4", stock_use_rule=rule(max_coupons="100")),
        SAMPLE_V2,
        [],
    ),
    (
        "times-in-utc-with-micros",
        body(
            create_time="2031-08-06T12:57:00.000001Z",
            available_begin_time="2031-08-06T12:58:03Z",
            available_end_time="2031-08-06T12:58:10.5Z",
        ),
        SAMPLE_V2,
        [],
    ),
    (
        "huge-name-is-not-echoed-in-details",
        body(stock_name="\x00" + "x" * 100_000),
        without("coupon_name"),
        [("coupon_name", "invalid", "stock_name: string holds characters XML cannot carry")],
    ),
]


@pytest.mark.parametrize(
    ("v3_body", "expected", "unmapped"),
    [pytest.param(b, e, u, id=name) for name, b, e, u in GOLDEN],
)
def test_golden(
    table: MappingTable,
    v3_body: dict[str, Any],
    expected: dict[str, str],
    unmapped: list[tuple[str, str, str]],
) -> None:
    """Golden table: each v3 body maps to exactly this v2 dict and this unmapped list."""
    result = map_success(table, v3_body, REQUEST)
    assert result.fields == expected
    assert list(result.fields) == [k for k in FILE_ORDER if k in expected]
    assert [(u.v2_key, u.reason, u.detail) for u in result.unmapped] == unmapped


@pytest.mark.parametrize(
    ("status", "number"),
    [("unactivated", "1"), ("audit", "2"), ("running", "4"), ("stoped", "8"), ("paused", "16")],
)
def test_every_status(table: MappingTable, status: str, number: str) -> None:
    """Every v3 status maps to its v2 coupon_stock_status number."""
    result = map_success(table, body(status=status), REQUEST)
    assert result.fields["coupon_stock_status"] == number
    assert result.unmapped == ()


def test_known_status_vocabulary_matches_the_spec() -> None:
    """The loader's known v3 status vocabulary is the spec's five values."""
    assert KNOWN_V3_ENUMS["status"] == {"unactivated", "audit", "running", "stoped", "paused"}


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({**REQUEST, "device_info": "1000"}, {"device_info": "1000"}),
        ({**REQUEST, "device_info": ""}, {}),
        (REQUEST, {}),
    ],
)
def test_device_info_echoed_only_when_non_empty(
    table: MappingTable, request_fields: dict[str, str], expected: dict[str, str]
) -> None:
    """device_info is echoed after mch_id when sent non-empty, and left out otherwise."""
    fields = map_success(table, body(), request_fields).fields
    assert {k: v for k, v in fields.items() if k == "device_info"} == expected
    assert list(fields) == [k for k in FILE_ORDER if k in fields]


def test_missing_appid_in_request_is_left_out_not_recorded(table: MappingTable) -> None:
    """Request echoes are not v3 data: an absent appid is left out and not 'unmapped'."""
    result = map_success(table, body(), {"mch_id": "1"})
    assert "appid" not in result.fields and result.unmapped == ()


def test_result_never_has_nonce_or_sign(table: MappingTable) -> None:
    """nonce_str and sign are left to the signer, even when the body or request has them."""
    fields = map_success(table, body(nonce_str="x", sign="y"), REQUEST).fields
    assert "nonce_str" not in fields and "sign" not in fields


# --- required keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v3_body", "v2_key", "match"),
    [
        (body(stock_id=DROP), "coupon_stock_id", "stock_id absent"),
        (body(stock_id=None), "coupon_stock_id", "stock_id is null"),
        (body(stock_id=1717), "coupon_stock_id", "expected a string"),
        (body(status=DROP), "coupon_stock_status", "status absent"),
        (body(status="archived"), "coupon_stock_status", "not in the table"),
        (body(status="RUNNING"), "coupon_stock_status", "not in the table"),
        (body(status=4), "coupon_stock_status", "expected a string"),
    ],
)
def test_required_keys_fail_the_call(
    table: MappingTable, v3_body: dict[str, Any], v2_key: str, match: str
) -> None:
    """An absent or unconvertible required key raises MappingError naming the v2 key."""
    with pytest.raises(MappingError, match=match) as info:
        map_success(table, v3_body, REQUEST)
    assert info.value.v2_key == v2_key


@pytest.mark.parametrize(
    "v3_body", [[], "{}", None, 17, b"{}", ("stock_id", "1")], ids=lambda v: type(v).__name__
)
def test_body_not_an_object(table: MappingTable, v3_body: Any) -> None:
    """A body that is not a JSON object raises MappingError."""
    with pytest.raises(MappingError, match="not a JSON object"):
        map_success(table, v3_body, REQUEST)


# --- hostile input ------------------------------------------------------------------------


class ExplodingMapping(Mapping[str, Any]):
    """A Mapping whose every read raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")


class ReadOnlyMapping(Mapping[str, Any]):
    """A well-behaved Mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _deep(levels: int) -> Any:
    node: Any = {}
    for _ in range(levels):
        node = {"stock_use_rule": node}
    return node


HOSTILE: list[tuple[str, Any, Mapping[str, Any]]] = [
    ("empty-object", {}, REQUEST),
    ("only-required", {"stock_id": "1", "status": "audit"}, REQUEST),
    ("deeply-nested", {**body(), "stock_use_rule": _deep(10_000)}, REQUEST),
    ("exploding-body", ExplodingMapping(), REQUEST),
    ("exploding-nested", body(stock_use_rule=ExplodingMapping()), REQUEST),
    ("exploding-request", body(), ExplodingMapping()),
    ("request-not-mapping", body(), ["appid"]),  # type: ignore[list-item]
    ("request-int-value", body(), {"appid": 5}),
    (
        "huge-ints",
        body(distributed_coupons=10**5000, stock_use_rule=rule(max_coupons=-(10**400))),
        REQUEST,
    ),
    ("huge-strings", body(stock_id="9" * 1_000_000, create_time="2" * 1_000_000), REQUEST),
    ("surrogates", body(stock_id="\udcff", status="\ud800"), REQUEST),
    ("list-values", body(stock_id=["1"], status=["running"]), REQUEST),
    ("bytes-keys", {b"stock_id": "1", 1: 2, None: 3, "status": "running"}, REQUEST),
    ("non-dict-mapping", ReadOnlyMapping(body()), REQUEST),
]


@pytest.mark.parametrize(
    ("v3_body", "request_fields"), [pytest.param(b, r, id=n) for n, b, r in HOSTILE]
)
def test_hostile_input_gives_a_result_or_mapping_error(
    table: MappingTable, v3_body: Any, request_fields: Any
) -> None:
    """map_success returns a MapResult of strings or raises MappingError, nothing else."""
    try:
        result = map_success(table, v3_body, request_fields)
    except MappingError as exc:
        assert len(str(exc)) < 300
        return
    assert all(type(k) is str and type(v) is str for k, v in result.fields.items())
    assert all(len(u.detail) < 300 for u in result.unmapped)


def test_non_dict_mapping_maps_like_a_dict(table: MappingTable) -> None:
    """A Mapping that is not a dict (also nested) is read like a dict."""
    nested = body(stock_use_rule=ReadOnlyMapping(rule()))
    assert map_success(table, ReadOnlyMapping(nested), REQUEST).fields == SAMPLE_V2


@pytest.mark.parametrize(
    ("status", "code", "request_fields"),
    [
        ("404", "RESOURCE_NOT_EXISTS", REQUEST),
        (404.0, "RESOURCE_NOT_EXISTS", REQUEST),
        (True, "RESOURCE_NOT_EXISTS", REQUEST),
        (None, None, REQUEST),
        (404, "RESOURCE_NOT_EXISTS", ["x"]),
        (404, "RESOURCE_NOT_EXISTS", {"appid": b"wx"}),
        (404, "RESOURCE_NOT_EXISTS", ExplodingMapping()),
    ],
)
def test_map_error_hostile_input_raises_mapping_error(
    table: MappingTable, status: Any, code: Any, request_fields: Any
) -> None:
    """map_error raises MappingError (only) for a non-int status or an unusable request."""
    with pytest.raises(MappingError):
        map_error(table, status, code, request_fields)


# --- the error table ----------------------------------------------------------------------

BUSINESS = [
    (404, "RESOURCE_NOT_EXISTS", "COUPON_STOCK_NOT_FOUND", "批次信息不存在"),
    (400, "PARAM_ERROR", "COUPON_STOCK_ID_NOT_VALID", "批次ID不正确"),
    (400, "INVALID_REQUEST", "COUPON_STOCK_ID_NOT_VALID", "批次ID不正确"),
    (400, "MCH_NOT_EXISTS", "CODE_2_ID_ERR", "商户号不存在"),
    (400, "APPID_MCHID_NOT_MATCH", "CODE_2_ID_ERR", "appid与商户号不匹配"),
    (403, "NO_AUTH", "COUPON_STOCK_ID_NOT_VALID", "批次不属于该商户或无权限"),
    (403, "REQUEST_BLOCKED", "COUPON_STOCK_ID_NOT_VALID", "请求被拦截"),
    (403, "USER_ACCOUNT_ABNORMAL", "COUPON_STOCK_ID_NOT_VALID", "商户账户异常"),
]


@pytest.mark.parametrize(("status", "code", "err_code", "des"), BUSINESS)
def test_business_error_rows(
    table: MappingTable, status: int, code: str, err_code: str, des: str
) -> None:
    """Each business row gives the exact v2 business-error dict, echoing the request."""
    outcome = map_error(table, status, code, {**REQUEST, "device_info": "1000"})
    assert outcome.kind == "business"
    assert outcome.fields == {
        "return_code": "SUCCESS",
        "return_msg": "OK",
        "appid": "wx5edab3bdfba3dc1c",
        "mch_id": "10000098",
        "device_info": "1000",
        "result_code": "FAIL",
        "err_code": err_code,
        "err_code_des": des,
    }
    assert outcome.rule is not None and (outcome.rule.status, outcome.rule.code) == (status, code)


def test_sign_error_is_a_return_fail_blaming_the_shim(table: MappingTable) -> None:
    """v3 401 SIGN_ERROR gives return_code=FAIL with a return_msg naming the shim's credentials."""
    outcome = map_error(table, 401, "SIGN_ERROR", REQUEST)
    assert outcome.kind == "return_fail"
    assert list(outcome.fields) == ["return_code", "return_msg", "appid", "mch_id"]
    assert outcome.fields["return_code"] == "FAIL"
    assert "shim" in outcome.fields["return_msg"] and "v3" in outcome.fields["return_msg"]
    assert "result_code" not in outcome.fields


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "FREQUENCY_LIMIT_EXCEED"),
        (429, "RATELIMIT_EXCEEDED"),
        (500, "SYSTEM_ERROR"),
        (502, "SERVICE_UNAVAILABLE"),
        (503, "SERVICE_UNAVAILABLE"),
    ],
)
def test_transient_rows(table: MappingTable, status: int, code: str) -> None:
    """Rate limits and server errors are transient, with no v2 fields."""
    outcome = map_error(table, status, code, REQUEST)
    assert outcome == ErrorOutcome("transient", {}, table.errors[(status, code)])


def test_every_error_row_is_tested(table: MappingTable) -> None:
    """The tests above cover every row of the shipped error table."""
    tested = {(s, c) for s, c, _, _ in BUSINESS} | {(401, "SIGN_ERROR")}
    tested |= {
        (429, "FREQUENCY_LIMIT_EXCEED"),
        (429, "RATELIMIT_EXCEEDED"),
        (500, "SYSTEM_ERROR"),
        (502, "SERVICE_UNAVAILABLE"),
        (503, "SERVICE_UNAVAILABLE"),
    }
    assert set(table.errors) == tested


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (418, "TEAPOT", "unmapped"),
        (400, "BRAND_NEW_CODE", "unmapped"),
        (401, "OTHER_AUTH", "unmapped"),
        (404, None, "unmapped"),
        (404, "PARAM_ERROR", "unmapped"),  # known code, other status: not guessed
        (429, None, "transient"),
        (429, "SOMETHING", "transient"),
        (500, None, "transient"),
        (504, "GATEWAY_TIMEOUT", "transient"),
        (599, "X", "transient"),
        (500, 12, "transient"),  # a non-string code counts as no code
        (302, None, "unmapped"),
        (200, None, "unmapped"),
        (0, None, "unmapped"),
        (-1, None, "unmapped"),
        (10**6, None, "unmapped"),
    ],
)
def test_unknown_codes_by_status_class(
    table: MappingTable, status: int, code: Any, kind: str
) -> None:
    """Unknown pairs: 429/5xx transient, other statuses unmapped; never a v2 code."""
    outcome = map_error(table, status, code, REQUEST)
    assert (outcome.kind, outcome.fields, outcome.rule) == (kind, {}, None)


# --- loading and validation ---------------------------------------------------------------

MINIMAL = """
format = 1

[[fields]]
v2 = "return_code"
const = "SUCCESS"

[[fields]]
v2 = "appid"
request = "appid"

[[fields]]
v2 = "coupon_stock_id"
v3 = "stock_id"
convert = "text"
required = true

[[fields]]
v2 = "coupon_stock_status"
v3 = "status"
convert = "enum"
enum = "stock_status"

[enums.stock_status]
unactivated = "1"
audit = "2"
running = "4"
stoped = "8"
paused = "16"

[[errors]]
status = 404
code = "RESOURCE_NOT_EXISTS"
outcome = "business"
err_code = "COUPON_STOCK_NOT_FOUND"
err_code_des = "批次不存在"

[unknown_errors]
"5xx" = "transient"
"""


def write_mapping(folder: Path, text: str, name: str = "query_coupon_stock") -> Path:
    """Write a mapping file into folder; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_mapping_loads(tmp_path: Path) -> None:
    """The minimal test mapping is valid and maps a body."""
    write_mapping(tmp_path, MINIMAL)
    table = load_mapping(tmp_path)
    result = map_success(table, {"stock_id": "7", "status": "audit"}, {"appid": "wx1"})
    assert result == MapResult(
        {
            "return_code": "SUCCESS",
            "appid": "wx1",
            "coupon_stock_id": "7",
            "coupon_stock_status": "2",
        },
        (),
    )


BROKEN: list[tuple[str, str, str, str | None, str]] = [
    # (id, old text, new text, expected key, message fragment)
    (
        "unknown-converter",
        'convert = "text"',
        'convert = "txt"',
        "fields.coupon_stock_id",
        "convert must be",
    ),
    ("missing-converter", 'convert = "text"\n', "", "fields.coupon_stock_id", "convert must be"),
    ("duplicate-v2-key", 'v2 = "appid"', 'v2 = "return_code"', "fields.return_code", "duplicate"),
    (
        "bad-path-double-dot",
        'v3 = "stock_id"',
        'v3 = "stock_use_rule..max"',
        "fields.coupon_stock_id",
        "bad v3 path",
    ),
    (
        "bad-path-index",
        'v3 = "stock_id"',
        'v3 = "goods_tag[0]"',
        "fields.coupon_stock_id",
        "bad v3 path",
    ),
    ("bad-path-empty", 'v3 = "stock_id"', 'v3 = ""', "fields.coupon_stock_id", "bad v3 path"),
    ("bad-path-type", 'v3 = "stock_id"', "v3 = 5", "fields.coupon_stock_id", "dotted path"),
    (
        "enum-missing-table",
        'enum = "stock_status"',
        'enum = "statuses"',
        "fields.coupon_stock_status",
        "enum must name",
    ),
    (
        "enum-missing-status",
        'paused = "16"\n',
        "",
        "fields.coupon_stock_status",
        "misses v3 value(s): paused",
    ),
    (
        "enum-on-text",
        'convert = "text"',
        'convert = "text"\nenum = "stock_status"',
        "fields.coupon_stock_id",
        "enum only applies",
    ),
    (
        "enum-value-not-string",
        'audit = "2"',
        "audit = 2",
        "enums.stock_status.audit",
        "must be a non-empty string",
    ),
    (
        "unknown-top-level-key",
        "format = 1",
        'format = 1\nversion = "2"',
        "version",
        "unknown top-level key",
    ),
    ("format-missing", "format = 1", "", "format", "must be 1"),
    ("format-2", "format = 1", "format = 2", "format", "must be 1"),
    (
        "typo-in-field-key",
        "required = true",
        "requried = true",
        "fields.coupon_stock_id",
        "unknown key 'requried'",
    ),
    (
        "required-not-bool",
        "required = true",
        'required = "yes"',
        "fields.coupon_stock_id",
        "required must be",
    ),
    ("nonce-mapped", 'v2 = "return_code"', 'v2 = "nonce_str"', "fields.nonce_str", "signer"),
    ("sign-mapped", 'v2 = "return_code"', 'v2 = "sign"', "fields.sign", "signer"),
    (
        "two-sources",
        'request = "appid"',
        'request = "appid"\nconst = "x"',
        "fields.appid",
        "exactly one source",
    ),
    ("no-source", 'request = "appid"\n', "", "fields.appid", "exactly one source"),
    (
        "convert-on-request",
        'request = "appid"',
        'request = "appid"\nconvert = "text"',
        "fields.appid",
        "only applies to v3",
    ),
    ("const-empty", 'const = "SUCCESS"', 'const = ""', "fields.return_code", "non-empty string"),
    ("bad-v2-key", 'v2 = "appid"', 'v2 = "app id"', "fields[1]", "v2 must be"),
    (
        "error-bad-outcome",
        'outcome = "business"',
        'outcome = "fail"',
        "errors[404 RESOURCE_NOT_EXISTS]",
        "outcome must be",
    ),
    (
        "error-no-err-code",
        'err_code = "COUPON_STOCK_NOT_FOUND"\n',
        "",
        "errors[404 RESOURCE_NOT_EXISTS]",
        "needs err_code",
    ),
    (
        "error-no-des",
        'err_code_des = "批次不存在"\n',
        "",
        "errors[404 RESOURCE_NOT_EXISTS]",
        "err_code_des",
    ),
    (
        "error-status-2xx",
        "status = 404",
        "status = 200",
        "errors[200 RESOURCE_NOT_EXISTS]",
        "400-599",
    ),
    ("error-status-text", "status = 404", 'status = "404"', "errors[0]", "400-599"),
    (
        "error-code-lowercase",
        'code = "RESOURCE_NOT_EXISTS"',
        'code = "resource"',
        "errors[404 resource]",
        "v3 error code",
    ),
    (
        "error-return-msg-on-business",
        'outcome = "business"',
        'outcome = "business"\nreturn_msg = "x"',
        "errors[404 RESOURCE_NOT_EXISTS]",
        "does not apply",
    ),
    (
        "error-typo-key",
        'outcome = "business"',
        'outcome = "business"\nerr_desc = "x"',
        "errors[404 RESOURCE_NOT_EXISTS]",
        "unknown key 'err_desc'",
    ),
    (
        "unknown-errors-business",
        '"5xx" = "transient"',
        '"5xx" = "business"',
        "unknown_errors.5xx",
        "no v2 code is invented",
    ),
    (
        "unknown-errors-bad-class",
        '"5xx" = "transient"',
        '"2xx" = "transient"',
        "unknown_errors.2xx",
        "keys are",
    ),
    ("fields-not-array", '[[fields]]\nv2 = "return_code"\nconst = "SUCCESS"\n', "", None, ""),
]


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [pytest.param(o, n, k, f, id=i) for i, o, n, k, f in BROKEN],
)
def test_loader_rejects_broken_files_naming_file_and_entry(
    tmp_path: Path, old: str, new: str, key: str | None, fragment: str
) -> None:
    """Each broken mapping raises ConfigError naming the file and the entry at fault."""
    assert old in MINIMAL
    path = write_mapping(tmp_path, MINIMAL.replace(old, new, 1))
    if key is None:  # dropping the first field still leaves a valid file
        load_mapping(tmp_path)
        return
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        load_mapping(tmp_path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("format = 1\nfields = []\n", "fields", "non-empty array"),
        ("format = 1\nfields = 3\n", "fields", "non-empty array"),
        (
            "format = 1\nerrors = 3\n" + MINIMAL.split("format = 1", 1)[1].split("[[errors]]")[0],
            "errors",
            "array of tables",
        ),
        ("format = 1\nenums = 3\n", "enums", "table of tables"),
        ("format = 1\n[enums.e]\n", "enums.e", "non-empty table"),
        ("format = 1\n[[fields]]\nv2 = 5\n", "fields[0]", "v2 must be"),
    ],
)
def test_loader_rejects_bad_shapes(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    """Wrong shapes of the top-level sections raise ConfigError naming the section."""
    path = write_mapping(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_mapping(tmp_path)
    assert (info.value.source, info.value.key) == (str(path), key)


def test_loader_rejects_bad_toml_and_encoding(tmp_path: Path) -> None:
    """A TOML syntax error or a non-UTF-8 file raises ConfigError naming the file."""
    path = write_mapping(tmp_path / "a", "format = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_mapping(tmp_path / "a")
    assert info.value.source == str(path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "query_coupon_stock.toml").write_bytes(b"format = 1\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_mapping(tmp_path / "b")


def test_loader_missing_file_and_bad_name(tmp_path: Path) -> None:
    """A missing file or a name that is not a plain stem raises ConfigError."""
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_mapping(tmp_path)
    assert info.value.source == str(tmp_path / "query_coupon_stock.toml")
    for name in ("../query_coupon_stock", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError, match="plain file stem"):
            load_mapping(tmp_path, name)


def test_other_mapping_names_load(tmp_path: Path) -> None:
    """load_mapping(dir, name) reads <dir>/<name>.toml."""
    write_mapping(tmp_path, MINIMAL, name="other")
    assert load_mapping(tmp_path, "other").name == "other"


def test_shipped_mapping_validates_and_matches_the_spec(table: MappingTable) -> None:
    """The shipped file loads, lists the spec's v2 keys in order, and has the status table."""
    assert [f.v2_key for f in table.fields] == FILE_ORDER
    assert dict(table.enums["stock_status"]) == {
        "unactivated": "1",
        "audit": "2",
        "running": "4",
        "stoped": "8",
        "paused": "16",
    }
    required = {f.v2_key for f in table.fields if f.required}
    assert required == {"coupon_stock_id", "coupon_stock_status"}


def test_default_directory_is_the_packaged_or_repository_mappings() -> None:
    """The default folder is the packaged copy if installed, else the repository's mappings/."""
    import shim

    packaged = Path(shim.__file__).resolve().parent / "mappings"
    expected = packaged if packaged.is_dir() else REPO_MAPPINGS
    assert default_mapping_dir() == expected
    assert load_mapping().fields == load_mapping(REPO_MAPPINGS).fields


def test_table_is_frozen(table: MappingTable) -> None:
    """The loaded table cannot be changed in place."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.fields = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.enums["stock_status"]["running"] = "999"  # type: ignore[index]
    with pytest.raises(TypeError):
        table.errors[(404, "X")] = table.errors[(404, "RESOURCE_NOT_EXISTS")]  # type: ignore[index]


def test_editing_a_copied_mapping_changes_output_without_code_change(tmp_path: Path) -> None:
    """Changing one entry in a copied mapping folder changes the mapped answer."""
    folder = tmp_path / "my-mappings"
    shutil.copytree(REPO_MAPPINGS, folder)
    file = folder / "query_coupon_stock.toml"
    text = file.read_text(encoding="utf-8")
    old = 'v3 = "stock_use_rule.max_amount"\n'
    assert text.count(old) == 1
    file.write_text(text.replace(old, 'v3 = "stock_use_rule.max_amount_by_day"\n'), "utf-8")
    v3_body = body(stock_use_rule=rule(max_amount_by_day=123))
    shipped = map_success(load_mapping(REPO_MAPPINGS), v3_body, REQUEST)
    edited = map_success(load_mapping(folder), v3_body, REQUEST)
    assert shipped.fields["coupon_budget"] == "500"
    assert edited.fields["coupon_budget"] == "123"
    assert {k: v for k, v in edited.fields.items() if k != "coupon_budget"} == {
        k: v for k, v in shipped.fields.items() if k != "coupon_budget"
    }


def test_editing_the_error_table_changes_the_outcome(tmp_path: Path) -> None:
    """Turning USER_ACCOUNT_ABNORMAL into 'unmapped' in a copy changes map_error's outcome."""
    folder = tmp_path / "m"
    shutil.copytree(REPO_MAPPINGS, folder)
    file = folder / "query_coupon_stock.toml"
    text = file.read_text(encoding="utf-8")
    old = (
        'code = "USER_ACCOUNT_ABNORMAL"\noutcome = "business"\n'
        'err_code = "COUPON_STOCK_ID_NOT_VALID"\nerr_code_des = "商户账户异常"\n'
    )
    assert old in text
    file.write_text(
        text.replace(old, 'code = "USER_ACCOUNT_ABNORMAL"\noutcome = "unmapped"\n'), "utf-8"
    )
    outcome = map_error(load_mapping(folder), 403, "USER_ACCOUNT_ABNORMAL", REQUEST)
    assert (outcome.kind, outcome.fields) == ("unmapped", {})


# --- the cache ----------------------------------------------------------------------------


def test_repeated_loads_return_the_same_table(tmp_path: Path) -> None:
    """A second load of the same folder and name returns the cached object."""
    write_mapping(tmp_path, MINIMAL)
    first = load_mapping(tmp_path)
    assert load_mapping(tmp_path) is first
    assert load_mapping(str(tmp_path)) is first


def test_cache_key_is_the_resolved_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative, absolute and symlinked spellings of one folder share one cached table."""
    folder = tmp_path / "maps"
    write_mapping(folder, MINIMAL)
    first = load_mapping(folder)
    monkeypatch.chdir(tmp_path)
    assert load_mapping(Path("maps")) is first
    assert load_mapping(Path("maps") / ".." / "maps") is first
    if hasattr(os, "symlink"):
        (tmp_path / "link").symlink_to(folder, target_is_directory=True)
        assert load_mapping(tmp_path / "link") is first


def test_cache_separates_folders_and_names(tmp_path: Path) -> None:
    """Different folders or names are different cache entries."""
    write_mapping(tmp_path / "a", MINIMAL)
    write_mapping(tmp_path / "b", MINIMAL)
    write_mapping(tmp_path / "a", MINIMAL, name="other")
    a = load_mapping(tmp_path / "a")
    assert load_mapping(tmp_path / "b") is not a
    assert load_mapping(tmp_path / "a", "other") is not a
    assert load_mapping(tmp_path / "b").fields == a.fields


def test_cache_picks_up_an_edited_file_and_can_be_cleared(tmp_path: Path) -> None:
    """An edited file is reloaded on the next load; clear_mapping_cache forces a reload."""
    path = write_mapping(tmp_path, MINIMAL)
    first = load_mapping(tmp_path)
    path.write_text(MINIMAL.replace('const = "SUCCESS"', 'const = "SUCCESS!"'), "utf-8")
    os.utime(path, ns=(1, 1))  # a distinct mtime, whatever the file system's granularity
    second = load_mapping(tmp_path)
    assert second is not first
    assert (
        map_success(second, {"stock_id": "1", "status": "audit"}, {}).fields["return_code"]
        == "SUCCESS!"
    )
    clear_mapping_cache()
    third = load_mapping(tmp_path)
    assert third is not second and third.fields == second.fields


def test_a_broken_edit_is_not_cached_and_the_fix_loads(tmp_path: Path) -> None:
    """A broken file raises each time it is loaded; once fixed, it loads."""
    path = write_mapping(tmp_path, MINIMAL.replace('convert = "text"', 'convert = "nope"'))
    for _ in range(2):
        with pytest.raises(ConfigError):
            load_mapping(tmp_path)
    path.write_text(MINIMAL, "utf-8")
    os.utime(path, ns=(2, 2))
    assert load_mapping(tmp_path).name == "query_coupon_stock"


def test_unmapped_and_results_are_values() -> None:
    """Unmapped and MapResult compare by value (usable in logs and golden tests)."""
    assert Unmapped("a", "absent", "x") == Unmapped("a", "absent", "x")
    assert MapResult({"a": "1"}, ()) == MapResult({"a": "1"}, ())
