"""Strict, ASCII-only reading of protocol values (header values, codes, serials, lengths).

``str.isdigit()`` accepts ``²`` and Arabic-Indic digits, ``int()`` accepts ``"٣"``, ``" 7"``,
``"+7"`` and ``"1_000"``, and ``str.upper()`` folds ``ß`` into ``SS``: none of that may decide
how a protocol value is read. Every function here either gives the value or None; callers
turn None into their typed error. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ascii_token", "parse_uint", "printable_token"]

_DIGITS: Final = re.compile(r"[0-9]{1,20}", re.ASCII)


def parse_uint(text: object, *, max_digits: int = 20) -> int | None:
    """``text`` as a non-negative integer written in 1..``max_digits`` ASCII digits, or None.

    No sign, no whitespace, no underscores, no other script's digits.
    """
    if not isinstance(text, str) or not 0 < len(text) <= max_digits:
        return None
    if _DIGITS.fullmatch(text) is None:
        return None
    return int(text)


def ascii_token(text: object, pattern: re.Pattern[str], *, max_len: int) -> str | None:
    """``text`` when it is ASCII, at most ``max_len`` long and fully matches ``pattern``."""
    if not isinstance(text, str) or not 0 < len(text) <= max_len or not text.isascii():
        return None
    return text if pattern.fullmatch(text) else None


def printable_token(text: object, *, max_len: int) -> str | None:
    """``text`` when it is 1..``max_len`` characters of ``[\x21-\x7e]`` (printable ASCII
    without the space), else None: :func:`ascii_token` with that pattern, in ``str`` methods
    (every v3 answer's nonce and ``Request-ID`` are read with it)."""
    if not isinstance(text, str) or not 0 < len(text) <= max_len or not text.isascii():
        return None
    # For ASCII text, isprintable() is exactly [\x20-\x7e]; the space is the one to refuse.
    return text if text.isprintable() and " " not in text else None
