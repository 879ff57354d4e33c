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
against, costs about 4.1x this reader, and the full expat parser 1.7x.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["read_flat"]

_ROOT: Final = re.compile(r"[ \t\n]*<xml>(.*)</xml>[ \t\n]*", re.DOTALL)
_ELEMENT: Final = re.compile(
    r"[ \t\n]*<([A-Za-z_][A-Za-z0-9_.\-]{0,63})>"
    # one CDATA section (anything without "]]>", read a run at a time), or plain text
    r"(?:<!\[CDATA\[((?:[^\]]++|\](?!\]>))*+)\]\]>|([^<&\]]*+))"
    r"</\1>",
    re.DOTALL,
)
_GAP: Final = re.compile(r"[ \t\n]*")
# Characters XML 1.0 cannot carry, and CR (see above): any of these -> the full parser.
_REFUSED: Final = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def read_flat(body: bytes) -> dict[str, str] | None:
    """The fields of a flat v2 answer, or ``None`` when the full parser must decide.

    Args:
        body: the answer's bytes (already within the size cap).

    Returns:
        The fields in document order, values stripped, or ``None``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _REFUSED.search(text) is not None:
        return None
    root = _ROOT.fullmatch(text)
    if root is None:
        return None
    inner = root.group(1)
    fields: dict[str, str] = {}
    pos, end = 0, len(inner)
    match = _ELEMENT.match
    while True:
        found = match(inner, pos)
        if found is None:
            break
        name, cdata, plain = found.groups()
        if name in fields:
            return None  # repeated: the full parser refuses it
        fields[name] = (cdata if cdata is not None else plain).strip()
        pos = found.end()
    if _GAP.fullmatch(inner, pos, end) is None:
        return None
    if not fields:
        return None
    return fields
