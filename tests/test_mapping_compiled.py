"""The compiled mapper (one function per table, generated at load) gives exactly what the
interpreted walk of the table's steps gives: the same v2 fields in the same order, the same
unmapped records, the same MappingError."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import MappingError

# private: the two ways of applying a table, held to each other
from shim._mapping.apply import map_success, map_success_interpreted

# private: the mapping's loader, to build tables of every converter kind
from shim._mapping.load import load_mapping, parse_mapping

# private: the mapping's model, tested below the facade
from shim._mapping.model import MappingTable
from tests.test_mapping import HOSTILE, REPO_MAPPINGS, REQUEST, SAMPLE_BODY

Outcome = tuple[str, Any, Any]


def _outcome(fn: Any, table: MappingTable, body: Any, request: Any) -> Outcome:
    """What a mapper did, in a comparable form (field order included)."""
    try:
        result = fn(table, body, request)
    except MappingError as exc:
        return ("error", str(exc), exc.v2_key)
    return ("ok", list(result.fields.items()), result.unmapped)


def _agree(table: MappingTable, body: Any, request: Any) -> Outcome:
    compiled = _outcome(map_success, table, body, request)
    assert compiled == _outcome(map_success_interpreted, table, body, request)
    return compiled


@pytest.fixture(scope="module")
def table() -> MappingTable:
    return load_mapping(REPO_MAPPINGS)


def test_the_shipped_table_is_compiled_and_maps_the_sample(table: MappingTable) -> None:
    kind, fields, unmapped = _agree(table, copy.deepcopy(SAMPLE_BODY), REQUEST)
    assert kind == "ok" and unmapped == ()
    keys = [k for k, _ in fields]
    assert keys[:4] == ["return_code", "return_msg", "appid", "mch_id"]
    assert keys[4:6] == ["result_code", "coupon_stock_id"]


@pytest.mark.parametrize(("body", "request_fields"), [(b, r) for _, b, r in HOSTILE])
def test_the_mapping_corpus_maps_alike(table: MappingTable, body: Any, request_fields: Any) -> None:
    """Every hostile body and request of the mapping tests: the same outcome both ways."""
    _agree(table, body, request_fields)


# Values a v3 answer might hold where the mapper reads, good and bad.
JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from(
        [0, 1, 2**63 - 1, 2**63, -1, 5.0, 2.5, float("nan"), float("inf"), 2**53 + 2.0]
    ),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(
        [
            "",
            "running",
            "RUNNING",
            "audit",
            "paused",
            "NORMAL",
            "007",
            "12",
            "2024-01-15T00:00:00.000Z",
            "2024-01-15T00:00:00+08:00",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "2024-02-30T00:00:00Z",
            "2024-01-15T00:00:60Z",
            "2024-01-15 00:00:00Z",
            "2024-01-15T00:00:00.1234567890Z",
            "x" * 40,
            "tab\tok",
            "bell\x07",
            "\ud800",
            "\uffff",
            "满100减10",
        ]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

PATHS = [
    ("stock_id",),
    ("stock_name",),
    ("status",),
    ("create_time",),
    ("available_begin_time",),
    ("available_end_time",),
    ("distributed_coupons",),
    ("stock_use_rule",),
    ("stock_use_rule", "max_coupons"),
    ("stock_use_rule", "max_amount"),
    ("stock_use_rule", "max_coupons_per_user"),
    ("stock_use_rule", "fixed_normal_coupon"),
    ("stock_use_rule", "fixed_normal_coupon", "coupon_amount"),
    ("stock_use_rule", "fixed_normal_coupon", "transaction_minimum"),
]
DROP = object()


@st.composite
def answers(draw: Any) -> dict[str, Any]:
    """The sample answer with some mapped values replaced by anything, or removed."""
    out = copy.deepcopy(SAMPLE_BODY)
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=5)):
        value = draw(st.one_of(JSONISH, st.just(DROP)))
        node: Any = out
        for part in path[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        else:
            if isinstance(node, dict):
                if value is DROP:
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    return out


REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "appid": st.one_of(st.none(), st.just(""), st.text(max_size=4), st.integers()),
        "mch_id": st.one_of(st.none(), st.just(""), st.just("10000098"), st.binary(max_size=2)),
        "device_info": st.one_of(st.none(), st.just(""), st.just("013467007045764")),
    },
)


@settings(max_examples=600, deadline=None)
@given(answers(), REQUESTS)
def test_any_answer_maps_alike(body: dict[str, Any], request_fields: dict[str, Any]) -> None:
    """Random values at every path the shipped table reads: the same outcome both ways."""
    _agree(load_mapping(REPO_MAPPINGS), body, request_fields)


EVERY_KIND = """
format = 1

[enums.level]
low = "1"
high = "2"

[[fields]]
v2 = "k_const"
const = "it's \\"quoted\\" \\n and {braces} ') ; import os #"

[[fields]]
v2 = "k_echo"
request = "who"

[[fields]]
v2 = "k_text"
v3 = "a.b.c"
convert = "text"

[[fields]]
v2 = "k_int"
v3 = "a.b.n"
convert = "integer"
required = true

[[fields]]
v2 = "k_enum"
v3 = "a.level"
convert = "enum"
enum = "level"

[[fields]]
v2 = "k_epoch"
v3 = "t"
convert = "epoch_seconds"

[[fields]]
v2 = "k_beijing"
v3 = "t"
convert = "beijing_time"

[[fields]]
v2 = "k_deep"
v3 = "a.b"
convert = "text"

[[fields]]
v2 = "k_top"
v3 = "a"
convert = "integer"
"""


@pytest.fixture(scope="module")
def every_kind() -> MappingTable:
    return parse_mapping(EVERY_KIND, source="every_kind.toml", name="every_kind")


def test_constants_never_become_code(every_kind: MappingTable) -> None:
    """A constant with quotes, braces and code-like text is a value, nothing else."""
    kind, fields, unmapped = _agree(every_kind, {"a": {"b": {"n": 3}}}, {"who": "me"})
    assert kind == "ok"
    assert dict(fields)["k_const"] == "it's \"quoted\" \n and {braces} ') ; import os #"
    left_out = [u.v2_key for u in unmapped]
    assert left_out == ["k_text", "k_enum", "k_epoch", "k_beijing", "k_deep", "k_top"]


NESTED = st.recursive(
    JSONISH,
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "c", "n", "level", "t"]), inner),
    max_leaves=8,
)


@settings(max_examples=600, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "t", "x"]), NESTED, max_size=3),
    st.dictionaries(st.sampled_from(["who", "other"]), JSONISH, max_size=2),
)
def test_every_converter_kind_and_shared_prefix_maps_alike(
    body: dict[str, Any], request_fields: dict[str, Any]
) -> None:
    """A table with each converter, nested and shared paths, a required key: alike."""
    _agree(
        parse_mapping(EVERY_KIND, source="every_kind.toml", name="every_kind"), body, request_fields
    )


def test_every_kind_maps_its_plain_values(every_kind: MappingTable) -> None:
    body = {"a": {"b": {"c": "x", "n": 7}, "level": "high"}, "t": "2024-01-15T00:00:00Z"}
    kind, fields, unmapped = _agree(every_kind, body, {"who": "me"})
    assert kind == "ok"
    assert [(u.v2_key, u.reason) for u in unmapped] == [("k_deep", "invalid"), ("k_top", "invalid")]
    assert fields == [
        ("k_const", "it's \"quoted\" \n and {braces} ') ; import os #"),
        ("k_echo", "me"),
        ("k_text", "x"),
        ("k_int", "7"),
        ("k_enum", "2"),
        ("k_epoch", "1705276800"),
        ("k_beijing", "20240115080000"),
    ]


def test_a_required_key_fails_alike(every_kind: MappingTable) -> None:
    kind, message, v2_key = _agree(every_kind, {"a": {"b": {"n": -1}}}, {})
    assert (kind, v2_key) == ("error", "k_int")
    assert "negative" in message
