"""Tests of the mapping's value converters (shim._mapping.converters)."""

from __future__ import annotations

import calendar
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

import pytest

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.converters import (
    CONVERTER_NAMES,
    CONVERTERS,
    MAX_INTEGER,
    ConversionError,
    beijing_time,
    describe,
    epoch_seconds,
    integer,
    make_enum,
    text,
)

# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["9856888", "", "微信支付代金券", "tab\tnew\nline\rok", "emoji 🎟", "a" * 5000, "\ue000"],
)
def test_text_returns_strings_unchanged(value: str) -> None:
    """Any XML-safe string, ASCII or not, empty or long, passes through unchanged."""
    assert text(value) == value


@pytest.mark.parametrize("value", ["nul\x00", "bell\x07", "\ud800 lone surrogate", "\uffff"])
def test_text_refuses_characters_xml_cannot_carry(value: str) -> None:
    """Control characters, lone surrogates and non-characters are invalid, not passed on."""
    with pytest.raises(ConversionError, match="XML"):
        text(value)


@pytest.mark.parametrize("value", [1757, 17.5, True, None, ["a"], {"a": 1}, b"bytes"])
def test_text_refuses_non_strings(value: object) -> None:
    """A number, bool, null, array, object or bytes is not text: never stringified."""
    with pytest.raises(ConversionError, match="expected a string"):
        text(value)


def test_text_accepts_a_str_subclass_as_plain_str() -> None:
    """A str subclass is returned as a plain str."""

    class Sub(str):
        pass

    result = text(Sub("abc\x01x"[:3]))
    assert result == "abc" and type(result) is str


# --- integer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (5, "5"),
        (500, "500"),
        (MAX_INTEGER, "9223372036854775807"),
        ("0", "0"),
        ("1717", "1717"),
        ("9223372036854775807", "9223372036854775807"),
        (5.0, "5"),
        (-0.0, "0"),
        (float(2**53), str(2**53)),
    ],
)
def test_integer_accepts_ints_canonical_strings_and_integral_floats(
    value: object, expected: str
) -> None:
    """JSON ints, canonical decimal strings and exact integral floats become decimal text."""
    assert integer(value) == expected


@pytest.mark.parametrize("number", [0, 1, 9, 10, 99, 12345, 2**31, 2**32, MAX_INTEGER])
def test_integer_text_round_trip(number: int) -> None:
    """integer(n) parses back to n, and converting its own output is a fixed point."""
    out = integer(number)
    assert int(out) == number
    assert integer(out) == out


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, "expected an integer"),
        (False, "expected an integer"),
        (1.5, "expected an integer"),
        (float("nan"), "expected an integer"),
        (float("inf"), "expected an integer"),
        (float(2**53 + 2), "too large"),
        (-1, "negative"),
        (-1.0, "negative"),
        (MAX_INTEGER + 1, "out of range"),
        pytest.param(10**5000, "out of range", id="huge-int"),
        (None, "expected an integer"),
        ([1], "expected an integer"),
        ({"v": 1}, "expected an integer"),
    ],
)
def test_integer_refuses_bools_fractions_and_out_of_range(value: object, match: str) -> None:
    """Bools, fractions, NaN/inf, negatives, >2**63-1 and non-numbers are invalid."""
    with pytest.raises(ConversionError, match=match):
        integer(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "007",
        "00",
        "+5",
        "-5",
        "-0",
        " 5",
        "5 ",
        "5\n",
        "1_000",
        "1e3",
        "5.0",
        "0x10",
        "٣",  # Arabic-Indic digit three: int() would accept it
        "５",  # fullwidth five
        "9223372036854775808",
        pytest.param("9" * 5000, id="5000-digits"),
    ],
)
def test_integer_strings_must_be_canonical_decimal(value: str) -> None:
    """Decided: no sign, whitespace, leading zeros, separators or non-ASCII digits in strings."""
    with pytest.raises(ConversionError):
        integer(value)


def test_integer_error_details_never_echo_huge_values() -> None:
    """A huge int or long string is described by size, not echoed, in the error detail."""
    for value in (10**5000, "9" * 5000):
        with pytest.raises(ConversionError) as info:
            integer(value)
        assert len(str(info.value)) < 100


# --- epoch_seconds / beijing_time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "epoch", "beijing"),
    [
        ("2015-05-20T13:29:35.120+08:00", "1432099775", "20150520132935"),
        ("2015-05-20T13:29:35+08:00", "1432099775", "20150520132935"),
        ("2015-05-20T05:29:35Z", "1432099775", "20150520132935"),
        ("2015-05-20T05:29:35.999999Z", "1432099775", "20150520132935"),
        ("2015-05-20T05:29:35.123456789z", "1432099775", "20150520132935"),
        ("2015-05-20t05:29:35z", "1432099775", "20150520132935"),
        ("2015-05-19T23:29:35-06:00", "1432099775", "20150520132935"),
        ("2024-03-01T17:30:00Z", "1709314200", "20240302013000"),
        ("2024-02-29T16:00:00Z", "1709222400", "20240301000000"),
        ("2024-12-31T16:00:00Z", "1735660800", "20250101000000"),
        ("1970-01-01T00:00:00Z", "0", "19700101080000"),
        ("1970-01-01T08:00:00+08:00", "0", "19700101080000"),
        ("2038-01-19T03:14:07Z", "2147483647", "20380119111407"),
        ("2038-01-19T03:14:08Z", "2147483648", "20380119111408"),
        ("2106-02-07T06:28:16Z", "4294967296", "21060207142816"),
        ("9999-12-31T15:59:59Z", "253402271999", "99991231235959"),
    ],
)
def test_times_known_instants(value: str, epoch: str, beijing: str) -> None:
    """Known instants: Z vs offsets, fractions (dropped), UTC+8 crossing midnight, 2038+."""
    assert epoch_seconds(value) == epoch
    assert beijing_time(value) == beijing


@pytest.mark.parametrize("seconds", [0, 1, 86399, 951782400, 1432099775, 2**31, 2**32, 4102444800])
def test_epoch_rfc3339_epoch_round_trip(seconds: int) -> None:
    """epoch → RFC 3339 (UTC and +08:00, with and without ms) → epoch is the identity."""
    for tz in (timezone.utc, timezone(timedelta(hours=8))):
        instant = datetime.fromtimestamp(seconds, tz)
        for spec in ("seconds", "milliseconds"):
            iso = instant.isoformat(timespec=spec)
            assert epoch_seconds(iso) == str(seconds)
            assert epoch_seconds(iso.replace("+00:00", "Z")) == str(seconds)


@pytest.mark.parametrize("seconds", [0, 1432099775, 1709314200, 2**31, 4102444800])
def test_beijing_time_agrees_with_the_epoch(seconds: int) -> None:
    """beijing_time is the epoch read in UTC+8 (checked against the stdlib)."""
    iso = datetime.fromtimestamp(seconds, timezone.utc).isoformat()
    bj = beijing_time(iso)
    parsed = datetime.strptime(bj, "%Y%m%d%H%M%S").replace(tzinfo=timezone(timedelta(hours=8)))
    assert calendar.timegm(parsed.utctimetuple()) == seconds


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1969-12-31T23:59:59Z", "before 1970"),
        ("1970-01-01T07:59:59+08:00", "before 1970"),
        ("0001-01-01T00:00:00Z", "before 1970"),
        ("0000-01-01T00:00:00Z", "not a calendar date"),
        ("2023-02-29T00:00:00Z", "not a calendar date"),
        ("2024-13-01T00:00:00Z", "not a calendar date"),
        ("2024-03-01T24:00:00Z", "out of range"),
        ("2016-12-31T23:59:60Z", "leap seconds"),
        ("2024-03-01T17:30:00+24:00", "offset"),
        ("2024-03-01T17:30:00+08:60", "offset"),
        ("2024-03-01T17:30:00", "RFC 3339"),  # no offset
        ("2024-03-01 17:30:00Z", "RFC 3339"),  # space separator
        ("2024-03-01", "RFC 3339"),
        ("20240301T173000Z", "RFC 3339"),
        ("2024-03-01T17:30Z", "RFC 3339"),
        ("2024-03-01T17:30:00.Z", "RFC 3339"),
        ("2024-03-01T17:30:00.1234567890Z", "RFC 3339"),
        ("2024-03-01T17:30:00+0800", "RFC 3339"),
        ("2024-03-01T17:30:00Z\n", "RFC 3339"),
        (" 2024-03-01T17:30:00Z", "RFC 3339"),
        ("２０２４-03-01T17:30:00Z", "RFC 3339"),  # fullwidth digits
        pytest.param("x" * 10_000, "RFC 3339", id="10k-chars"),
        ("", "RFC 3339"),
    ],
)
def test_times_refuse_bad_or_pre_1970_values(value: str, match: str) -> None:
    """Decided: pre-1970, leap seconds, impossible dates and non-RFC 3339 text are invalid."""
    with pytest.raises(ConversionError, match=match):
        epoch_seconds(value)
    with pytest.raises(ConversionError, match=match):
        beijing_time(value)


@pytest.mark.parametrize("value", [1432099775, 1432099775.0, True, None, {"t": 1}, ["x"]])
def test_times_refuse_non_strings(value: object) -> None:
    """An epoch number (or anything not a string) is not accepted as a time."""
    with pytest.raises(ConversionError, match="expected an RFC 3339 string"):
        epoch_seconds(value)
    with pytest.raises(ConversionError, match="expected an RFC 3339 string"):
        beijing_time(value)


def test_beijing_time_past_year_9999_is_invalid_but_epoch_is_not() -> None:
    """9999-12-31T23:00Z is year 10000 in Beijing: invalid there, still a valid epoch."""
    value = "9999-12-31T23:00:00Z"
    assert epoch_seconds(value) == "253402297200"
    with pytest.raises(ConversionError, match="9999"):
        beijing_time(value)


def test_times_give_the_same_answer_cached_and_repeated() -> None:
    """Repeated conversions (memoised) give identical results and identical errors."""
    for _ in range(3):
        assert epoch_seconds("2024-03-01T17:30:00Z") == "1709314200"
        with pytest.raises(ConversionError, match="before 1970"):
            beijing_time("1960-01-01T00:00:00Z")


def test_time_error_detail_never_echoes_a_long_value() -> None:
    """A long bogus time string is described by its length, not echoed."""
    with pytest.raises(ConversionError) as info:
        epoch_seconds("2024-03-01T17:30:00Z" + "9" * 1000)
    assert "9999" not in str(info.value) and len(str(info.value)) < 100


# --- enum -----------------------------------------------------------------------------------

STATUS = {"unactivated": "1", "audit": "2", "running": "4", "stoped": "8", "paused": "16"}


@pytest.mark.parametrize(("v3", "v2"), list(STATUS.items()))
def test_enum_maps_every_status(v3: str, v2: str) -> None:
    """Every v3 status maps to its v2 number."""
    assert make_enum(STATUS)(v3) == v2


@pytest.mark.parametrize(
    "value", ["RUNNING", "stopped", "", "running ", 4, None, True, ["running"]]
)
def test_enum_refuses_unknown_values_and_types(value: object) -> None:
    """Unknown values (case-sensitive), and non-strings, are invalid: never guessed."""
    with pytest.raises(ConversionError):
        make_enum(STATUS)(value)


def test_enum_copies_its_table() -> None:
    """Changing the source table after building the converter has no effect."""
    table = OrderedDict(STATUS)
    convert = make_enum(table)
    table["running"] = "999"
    assert convert("running") == "4"


# --- registry and helpers -----------------------------------------------------------------


def test_registry_names() -> None:
    """The converter names a mapping file may use."""
    assert set(CONVERTERS) == {"text", "integer", "epoch_seconds", "beijing_time"}
    assert {*CONVERTERS, "enum"} == CONVERTER_NAMES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "string 'abc'"),
        ("x" * 100, "string of 100 chars"),
        (12, "integer 12"),
        (10**30, "integer (huge)"),
        (True, "boolean True"),
        (None, "null"),
        ({}, "object"),
        ([], "array"),
        (1.5, "number 1.5"),
        (b"x", "bytes value"),
    ],
)
def test_describe_is_short(value: object, expected: str) -> None:
    """Error details describe values briefly by JSON type."""
    assert describe(value) == expected
