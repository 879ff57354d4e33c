"""The field-level diff of two v2 answers (pure: no I/O, no clock, no threads).

One home for "do these two answers agree": the shadow comparison
(:mod:`shim._shadow.outcome`) and ``coupon-shim compare`` (:mod:`shim._compare.classify`)
both diff with :func:`diff_answers`, leaving out the same ignore list (``[shadow]
ignore_fields``; by default ``nonce_str`` and ``sign``, which always differ). Values of
secret-bearing fields are shown as :data:`REDACTED`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shim._redaction import REDACTED, is_secret_name

__all__ = ["REDACTED", "FieldDiff", "diff_answers", "is_secret_field", "normalise"]


def is_secret_field(name: str) -> bool:
    """True for fields whose values must never be shown: ``sign`` and key/secret-like names
    (one rule for the whole shim: :func:`shim._redaction.is_secret_name`)."""
    return is_secret_name(name)


def normalise(value: str) -> str:
    """Canonical form of one v2 value for comparison.

    Surrounding whitespace is stripped; a value made only of ASCII digits is read as a
    non-negative integer, so ``"05"`` and ``"5"`` compare equal (``"000"`` -> ``"0"``).
    Anything else (signs, decimals, times, text) is compared as the stripped string.

    Args:
        value: the raw value.

    Returns:
        The normalised value.
    """
    s = str(value).strip()
    if s.isascii() and s.isdigit():
        return str(int(s))
    return s


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field whose values differ. ``None`` means the field is missing on that side.

    Values of secret-bearing fields are :data:`REDACTED`.
    """

    field: str
    served: str | None
    other: str | None

    def as_dict(self) -> dict[str, str | None]:
        """The diff as a JSON-ready dict."""
        return {"field": self.field, "served": self.served, "other": self.other}


def _shown(name: str, value: object | None) -> str | None:
    if value is None:
        return None
    return REDACTED if is_secret_field(name) else str(value)


def diff_answers(
    served: Mapping[str, str], other: Mapping[str, str], *, ignore: frozenset[str]
) -> tuple[FieldDiff, ...]:
    """Diff two v2 dicts field by field.

    Args:
        served: the answer the caller got.
        other: the other route's answer.
        ignore: fields left out (by default ``nonce_str`` and ``sign``, which always differ).

    Returns:
        The differing fields sorted by name, after :func:`normalise`. A key present on one
        side only is a diff with ``None`` on the other side. Shown values are the raw ones
        (secret fields redacted).
    """
    diffs: list[FieldDiff] = []
    for name in sorted((served.keys() | other.keys()) - ignore):
        a = served.get(name)
        b = other.get(name)
        if a is None or b is None:
            if a is None and b is None:
                continue
        elif normalise(a) == normalise(b):
            continue
        diffs.append(FieldDiff(name, _shown(name, a), _shown(name, b)))
    return tuple(diffs)
