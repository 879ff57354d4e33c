"""Value converters of the v3 → v2 mapping.

A converter is a pure function from one decoded JSON value (any Python type ``json.loads``
can produce, or anything hostile) to the v2 string. It either returns that string or raises
:class:`ConversionError`, whose ``detail`` is short and never echoes a long value. Converters
never guess: a value that is not exactly what the converter expects is refused.

Converters (the names used in ``mappings/*.toml``):

``text``
    A JSON string, returned unchanged (empty allowed). Characters XML 1.0 cannot carry
    (control characters other than tab/LF/CR, lone surrogates, U+FFFE/U+FFFF) are refused,
    so the v2 answer can always be written as v2 XML.
``integer``
    A JSON integer, or an integral float up to 2**53 (exact), or an integer written as a
    canonical decimal string (``0`` or ``[1-9][0-9]*``: no sign, no whitespace, no leading
    zeros, ASCII digits only) → its decimal string. Booleans, fractions, NaN/infinity,
    negatives and values above 2**63-1 are refused.
``epoch_seconds``
    An RFC 3339 date-time (``T``/``t`` separator, ``Z``/``z`` or ``±HH:MM`` offset, optional
    fraction of 1–9 digits) → Unix seconds as a decimal string, fraction dropped. Instants
    before 1970-01-01T00:00:00Z, leap seconds (``:60``) and impossible dates are refused.
``beijing_time``
    The same input → ``yyyyMMddHHmmss`` in UTC+8 (China has had no daylight saving since
    1991). Refused as above, and when the Beijing year would exceed 9999.
``enum``
    Built per table with :func:`make_enum`: a JSON string found (case-sensitively) in the
    table → the table's v2 string. Anything else is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date
from functools import lru_cache
from types import MappingProxyType
from typing import Final

__all__ = [
    "CONVERTERS",
    "CONVERTER_NAMES",
    "MAX_INTEGER",
    "MAX_TIME_LEN",
    "ConversionError",
    "Converter",
    "beijing_time",
    "describe",
    "epoch_seconds",
    "integer",
    "make_enum",
    "parsed_times",
    "text",
]

#: A converter: one JSON value in, one v2 string out (or :class:`ConversionError`).
Converter = Callable[[object], str]

#: Largest integer the ``integer`` converter accepts (int64, the v3 SDKs' type).
MAX_INTEGER: Final = 2**63 - 1
_MAX_EXACT_FLOAT: Final = 2**53
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_BEIJING_OFFSET_S: Final = 8 * 3600
# Longest valid RFC 3339 text we accept: "2015-05-20T13:29:35.123456789+08:00" (35 chars).
_MAX_TIME_LEN: Final = 35

_INT_TEXT: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# Characters XML 1.0 cannot carry (surrogates included: they only appear unpaired in str).
_XML_BAD: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class ConversionError(ValueError):
    """A value cannot be converted.

    Attributes:
        detail: a short reason, safe to log (long values are never echoed).
    """

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


_JSON_TYPE_NAMES: Final = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def describe(value: object) -> str:
    """Describe a value briefly for error details: its JSON type and, when short, the value.

    Args:
        value: any value.

    Returns:
        e.g. ``string 'abc'``, ``string of 5000 chars``, ``integer 12``, ``object``.
    """
    kind = _JSON_TYPE_NAMES.get(type(value))
    if kind is None:
        return f"{type(value).__name__} value"
    if isinstance(value, str):
        return f"string {value!r}" if len(value) <= 24 else f"string of {len(value)} chars"
    if isinstance(value, bool) or value is None:
        return f"{kind} {value!r}" if value is not None else "null"
    if isinstance(value, int):
        return f"integer {value}" if -(10**20) < value < 10**20 else "integer (huge)"
    if isinstance(value, float):
        return f"number {value!r}"
    return kind


def text(value: object) -> str:
    """``text``: a JSON string, unchanged. See the module docstring."""
    if type(value) is str and value.isprintable():  # fast path: printable ⊂ XML-safe
        return value
    if type(value) is not str and not isinstance(value, str):
        raise ConversionError(f"expected a string, got {describe(value)}")
    if _XML_BAD.search(value) is not None:
        raise ConversionError("string holds characters XML cannot carry")
    return str(value)


def integer(value: object) -> str:
    """``integer``: a JSON integer (or canonical decimal string) → decimal string."""
    kind = type(value)
    if kind is int:
        number: int = value  # type: ignore[assignment]
        if 0 <= number <= MAX_INTEGER:  # fast path
            return str(number)
    elif isinstance(value, str):
        if _INT_TEXT.fullmatch(value) is None:
            raise ConversionError(f"expected a canonical decimal integer, got {describe(value)}")
        number = int(value)
    elif isinstance(value, bool):
        raise ConversionError(f"expected an integer, got {describe(value)}")
    elif isinstance(value, int):
        number = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ConversionError(f"expected an integer, got {describe(value)}")
        if abs(value) > _MAX_EXACT_FLOAT:
            raise ConversionError("number too large to be an exact integer")
        number = int(value)
    else:
        raise ConversionError(f"expected an integer, got {describe(value)}")
    if number < 0:
        raise ConversionError("negative integer")
    if number > MAX_INTEGER:
        raise ConversionError("integer out of range (above 2**63-1)")
    return str(number)


def _parse_epoch(value: str) -> int | str:
    """Unix seconds of a short RFC 3339 string (fraction dropped), or an error detail."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return f"expected an RFC 3339 date-time, got {describe(value)}"
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    h, m, sec = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or sec > 59:
        return "time of day out of range (leap seconds are not accepted)"
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return "UTC offset out of range"
        offset = oh * 3600 + om * 60 if sign == "+" else -(oh * 3600 + om * 60)
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return "not a calendar date"
    seconds = days * 86400 + h * 3600 + m * 60 + sec - offset
    if seconds < 0:
        return "instant before 1970-01-01T00:00:00Z"
    return seconds


def _beijing_of_epoch(seconds: int) -> str:
    """``yyyyMMddHHmmss`` in UTC+8 of a non-negative Unix time, or "" past year 9999."""
    days, rest = divmod(seconds + _BEIJING_OFFSET_S, 86400)
    try:
        day = date.fromordinal(days + _EPOCH_ORDINAL)
    except (ValueError, OverflowError):
        return ""
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{day.year:04d}{day.month:02d}{day.day:02d}{hour:02d}{minute:02d}{second:02d}"


@lru_cache(maxsize=4096)
def _times(value: str) -> tuple[str, str] | str:
    """(Unix seconds text, Beijing text or "") of a short string, or an error detail.

    Memoised (the function is pure, and the same stocks' times recur call after call); the
    callers bound the key length, so the cache stays small.
    """
    seconds = _parse_epoch(value)
    if isinstance(seconds, str):
        return seconds
    return (str(seconds), _beijing_of_epoch(seconds))


#: The times of a short string, memoised (for the compiled mapper, which inlines the time
#: converters): ``(Unix seconds text, Beijing text or "")``, or an error detail.
parsed_times: Final = _times

#: Longest text the time converters parse; longer is refused unread.
MAX_TIME_LEN: Final = _MAX_TIME_LEN


def _times_of(value: object) -> tuple[str, str]:
    if type(value) is not str:
        if not isinstance(value, str):
            raise ConversionError(f"expected an RFC 3339 string, got {describe(value)}")
        value = str(value)  # a str subclass: use its plain text
    if len(value) > _MAX_TIME_LEN:
        raise ConversionError(f"expected an RFC 3339 date-time, got {describe(value)}")
    result = _times(value)
    if type(result) is str:
        raise ConversionError(result)
    return result  # type: ignore[return-value]


def epoch_seconds(value: object) -> str:
    """``epoch_seconds``: RFC 3339 → Unix seconds as a decimal string (fraction dropped)."""
    return _times_of(value)[0]


def beijing_time(value: object) -> str:
    """``beijing_time``: RFC 3339 → ``yyyyMMddHHmmss`` in UTC+8."""
    result = _times_of(value)[1]
    if not result:
        raise ConversionError("Beijing time past year 9999")
    return result


def make_enum(table: Mapping[str, str]) -> Converter:
    """Build the ``enum`` converter of one table.

    Args:
        table: v3 string → v2 string. Copied, so later changes to it have no effect.

    Returns:
        A converter that looks a JSON string up in the table, case-sensitively.
    """
    frozen = dict(table)

    def enum(value: object) -> str:
        if type(value) is str:
            found = frozen.get(value)
            if found is not None:
                return found
            raise ConversionError(f"value not in the table: {describe(value)}")
        raise ConversionError(f"expected a string, got {describe(value)}")

    return enum


#: The plain converters by name (``enum`` is built per table with :func:`make_enum`).
CONVERTERS: Final[Mapping[str, Converter]] = MappingProxyType(
    {
        "text": text,
        "integer": integer,
        "epoch_seconds": epoch_seconds,
        "beijing_time": beijing_time,
    }
)

#: Every converter name a mapping file may use.
CONVERTER_NAMES: Final = frozenset({*CONVERTERS, "enum"})
