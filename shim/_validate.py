"""One validation helper for every table the shim reads (config, routing, shadow, mapping).

Pure: no I/O, no logging. Two layers:

- **checks** (:func:`choice`, :func:`boolean`, :func:`number`, :func:`integer`,
  :func:`text`, :func:`string_set`, :func:`matching`, :func:`percent_to_buckets`, …) take
  a value and its full dotted key and return the typed value or raise :class:`Invalid`;
- :class:`Table` reads one table by key (required or optional, with a default), runs a
  check, remembers which keys were read so that :meth:`Table.finish` can refuse the
  unknown ones, and turns :class:`Invalid` into a :class:`~shim.ConfigError` naming the
  source (a file name) and the key.

The key in every message is the full dotted path (``merchants."1230000109".appid``,
``routing.canary_percent``, ``fields.coupon_stock_id``), never the value of a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

from shim._errors import ConfigError

__all__ = [
    "Invalid",
    "Table",
    "boolean",
    "choice",
    "integer",
    "matching",
    "non_empty_text",
    "number",
    "percent_to_buckets",
    "ratio",
    "string_set",
    "sub_table",
    "text",
]

T = TypeVar("T")


class Invalid(ValueError):
    """A value failed a check (carries the dotted ``key`` and the ``message``)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def as_config_error(self, source: str | None) -> ConfigError:
        """The :class:`~shim.ConfigError` that names ``source`` and this key."""
        return ConfigError(self.message, source=source, key=self.key)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def kind_name(kind: type | tuple[type, ...]) -> str:
    """How a message names a TOML type (``a number``, ``a string``, ``true or false``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a number", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(sorted({names.get(k, k.__name__) for k in kinds}))


def typed(value: object, kind: type | tuple[type, ...], key: str) -> Any:
    """``value`` if it is of ``kind`` (a boolean is never a number)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise Invalid(key, f"expected {kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise Invalid(key, f"expected {kind_name(kind)}, got {type(value).__name__}")
    return value


def choice(value: object, allowed: Iterable[str], key: str) -> str:
    """``value`` if it is one of ``allowed`` (the message lists them)."""
    allowed = frozenset(allowed)
    if not isinstance(value, str) or value not in allowed:
        shown = " | ".join(sorted(allowed))
        raise Invalid(key, f"must be one of {shown}, got {value!r}")
    return value


def boolean(value: object, key: str) -> bool:
    """``value`` if it is ``true`` or ``false``."""
    if not isinstance(value, bool):
        raise Invalid(key, f"must be true or false, got {value!r}")
    return value


def number(
    value: object,
    key: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    message: str | None = None,
) -> float:
    """A finite number within bounds (``positive``: strictly greater than 0).

    ``message`` replaces the default wording of a bound failure (the value is appended).
    """
    if not _is_number(value):
        raise Invalid(key, f"{message or 'must be a number'}, got {value!r}")
    f = float(value)  # type: ignore[arg-type]
    if (
        not math.isfinite(f)
        or (positive and f <= 0)
        or (minimum is not None and f < minimum)
        or (maximum is not None and f > maximum)
    ):
        if message is None:
            if positive:
                message = "must be a finite number > 0"
            elif minimum is not None and maximum is not None:
                message = f"must be from {minimum:g} to {maximum:g}"
            elif minimum is not None:
                message = f"must be a number of at least {minimum:g}"
            else:
                message = f"must be a number of at most {maximum:g}"
        raise Invalid(key, f"{message}, got {value!r}")
    return f


def integer(
    value: object, key: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer (never a boolean) within bounds."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        if minimum is not None and maximum is not None:
            bound = f" from {minimum} to {maximum}"
        elif minimum is not None:
            bound = f" >= {minimum}"
        elif maximum is not None:
            bound = f" <= {maximum}"
        else:
            bound = ""
        raise Invalid(key, f"must be an integer{bound}, got {value!r}")
    return value


def ratio(value: object, key: str) -> float:
    """A number from 0 to 1."""
    if not _is_number(value):
        raise Invalid(key, f"must be a number from 0 to 1, got {value!r}")
    f = float(value)  # type: ignore[arg-type]
    if not 0.0 <= f <= 1.0:  # also false for NaN
        raise Invalid(key, f"must be from 0 to 1, got {value!r}")
    return f


def percent_to_buckets(value: object, key: str) -> int:
    """A percentage (0..100 in 0.01 steps) as a count of 10,000 buckets."""
    if not _is_number(value):
        raise Invalid(key, f"must be a number from 0 to 100, got {type(value).__name__}")
    p = float(value)  # type: ignore[arg-type]
    if not math.isfinite(p) or not 0.0 <= p <= 100.0:
        raise Invalid(key, f"must be from 0 to 100, got {value!r}")
    buckets = round(p * 100)
    if abs(p * 100 - buckets) > 1e-6:
        raise Invalid(key, f"must be a multiple of 0.01, got {value!r}")
    return buckets


def text(
    value: object,
    key: str,
    what: str | None = None,
    *,
    empty_ok: bool = False,
    max_length: int | None = None,
) -> str:
    """A string (non-empty unless ``empty_ok``), at most ``max_length`` characters.

    ``what`` names the value in the message (``"note must be a string"``); without it the
    message is ``"must be a non-empty string, got …"``.
    """
    if not isinstance(value, str) or (not value and not empty_ok):
        if what is None:
            raise Invalid(key, f"must be a non-empty string, got {value!r}")
        raise Invalid(key, f"{what} must be a {'' if empty_ok else 'non-empty '}string")
    if max_length is not None and len(value) > max_length:
        raise Invalid(key, f"{what or 'the value'} is longer than {max_length} characters")
    return value


def non_empty_text(value: object, key: str) -> str:
    """A string that is not blank."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(key, f"must be a non-empty string, got {value!r}")
    return value


def matching(value: object, pattern: re.Pattern[str], key: str, message: str) -> str:
    """A string that matches ``pattern`` whole; ``message`` says what it should look like."""
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise Invalid(key, message)
    return value


def string_set(value: object, key: str, what: str = "ids") -> frozenset[str]:
    """A list of non-empty strings (stripped) as a frozenset."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise Invalid(key, f"must be a list of {what} (strings)")
    out: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise Invalid(key, f"must contain non-empty strings only, got {item!r}")
        out.add(item.strip())
    return frozenset(out)


def sub_table(
    root: Mapping[str, Any], name: str, source: str | None, key: str | None = None
) -> Mapping[str, Any]:
    """``root[name]`` if it is a table (missing: an empty one)."""
    value = root.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table", source=source, key=key or name)
    return value


_MISSING: Any = object()


class Table:
    """Typed readers for one table; errors are :class:`~shim.ConfigError` naming source and key.

    Args:
        table: the table's keys and values.
        prefix: the table's dotted path (``""`` for the document's root).
        source: how errors name the file.
        unknown: the message for a key no reader asked for (see :meth:`finish`).
    """

    def __init__(
        self,
        table: Mapping[str, Any],
        prefix: str,
        source: str | None,
        *,
        unknown: str = "unknown key (check the spelling; see the README)",
    ):
        self.table = table
        self.prefix = prefix
        self.source = source
        self.unknown = unknown
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        """The full dotted key of ``name``."""
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        """A ConfigError about key ``name`` of this table."""
        return ConfigError(message, source=self.source, key=self.key(name))

    def fail(self, name: str, message: str) -> NoReturn:
        """Raise :meth:`error`."""
        raise self.error(name, message)

    def read(self, name: str, check: Callable[[Any, str], T], default: T = _MISSING) -> T:
        """``check(value, dotted_key)`` of key ``name``; ``default`` if absent (else required)."""
        self.used.add(name)
        if name not in self.table:
            if default is _MISSING:
                raise self.error(name, "is required")
            return default
        try:
            return check(self.table[name], self.key(name))
        except Invalid as exc:
            raise exc.as_config_error(self.source) from None

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        """The value of ``name`` if of ``kind`` (``default`` if absent)."""
        return self.read(name, lambda v, k: typed(v, kind, k), default)

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        """A string (``required``: present and non-empty)."""
        value = self.get(name, str, default)
        if required and not value:
            raise self.error(name, "is required and must be a non-empty string")
        return value  # type: ignore[no-any-return]

    def number(self, name: str, default: float, *, minimum: float, positive: bool = True) -> float:
        """A finite number of at least ``minimum`` (``positive``: greater than 0)."""
        value = float(self.get(name, (int, float), default))
        if not math.isfinite(value) or value < minimum or (positive and value <= 0):
            bound = "greater than 0" if positive else f"at least {minimum}"
            raise self.error(name, f"must be a number {bound}, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        """An integer of at least ``minimum``."""
        value = self.get(name, int, default)
        if value < minimum:
            raise self.error(name, f"must be an integer of at least {minimum}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def choice(self, name: str, allowed: Iterable[str], default: str, *, message: str) -> str:
        """A string among ``allowed``; ``message`` says which (the value is appended)."""
        value = self.text(name, default)
        if value not in frozenset(allowed):
            raise self.error(name, f"{message}, got {value!r}")
        return value

    def finish(self, known: Iterable[str] | None = None) -> None:
        """Refuse the first (sorted) key no reader asked for."""
        allowed = self.used if known is None else set(known)
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            raise self.error(unknown[0], self.unknown)
