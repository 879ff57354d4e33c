"""A fast reader for the one shape v2 answers take, in front of the full parser.

v2 answers are flat: ``<xml>`` holding text elements, each value either bare text or one
CDATA section (``<return_code><![CDATA[SUCCESS]]></return_code><total>100</total>``). Reading
that shape with a few regular expressions costs a fraction of a full XML parse with a Python
callback per element, which was most of the legacy route's CPU.

:func:`read_flat` accepts only a strict subset of XML and returns ``None`` for anything else,
so the full parser (:func:`shim._v2.parse_xml`) decides every other document, with all its
checks. The subset: UTF-8 without a byte-order mark or XML declaration; nothing but XML
whitespace (space, tab, LF; no CR, whose line-end normalisation the parser would apply) around
the elements; ASCII element names; no attributes, comments, processing instructions, DOCTYPE,
entity or character references (no ``&`` at all), nested, empty-tag or repeated elements;
no character XML forbids. What it returns for a document in that subset is exactly what the
full parser returns (values stripped of surrounding whitespace); a property test holds the two
to that.

Why it exists (``bench/v2xml.py``, CPU per answer of the emulator's signed answers, one run):
``xmltodict.parse`` alone, the design card's parser and the oracle both readers are tested
against, costs about 7x this reader, and the full expat parser about 3x.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["read_flat"]

_ROOT: Final = re.compile(r"[ \t\n]*<xml>(.*)</xml>[ \t\n]*", re.DOTALL)
# One element, without the whitespace before it: its name, the CDATA opener when the value is
# one CDATA section, and the raw value (a CDATA section's content, anything without "]]>",
# read a run at a time; or plain text without "<", "&" or "]").
_ELEMENT: Final = re.compile(
    r"<([A-Za-z_][A-Za-z0-9_.\-]{0,63})>(<!\[CDATA\[)?"
    r"((?(2)[^\]]*(?:\](?!\]>)[^\]]*)*|[^<&\]]*))(?(2)\]\]>)"
    r"</\1>",
    re.DOTALL,
)
# Every byte but those XML 1.0 cannot carry below 0x20, and CR (see above). Bytes left over
# after deleting these are refused; so are U+FFFE and U+FFFF, and strict UTF-8 decoding
# refuses surrogates: what is left is exactly XML's Char, less CR.
_ALLOWED_BYTES: Final = bytes([0x09, 0x0A, *range(0x20, 0x100)])
_BLANK: Final = " \t\n"


def read_flat(body: bytes) -> dict[str, str] | None:
    """The fields of a flat v2 answer, or ``None`` when the full parser must decide.

    Args:
        body: the answer's bytes (already within the size cap).

    Returns:
        The fields in document order, values stripped, or ``None``.
    """
    if body.translate(None, _ALLOWED_BYTES):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\ufffe" in text or "\uffff" in text:
        return None
    root = _ROOT.fullmatch(text)
    if root is None:
        return None
    # One pass: [gap, name, cdata opener, value, gap, name, ..., gap]. The matches tile the
    # content exactly when every gap between (and around) them is XML whitespace, and then
    # they are the elements an element-by-element reader would find, in order.
    parts = _ELEMENT.split(root.group(1))
    if len(parts) == 1 or "".join(parts[::4]).strip(_BLANK):
        return None  # no element, or something between the elements
    fields = dict(zip(parts[1::4], map(str.strip, parts[3::4]), strict=True))
    if 4 * len(fields) + 1 != len(parts):
        return None  # a repeated element: the full parser refuses it
    return fields
