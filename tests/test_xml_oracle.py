"""shim.v2.parse_xml agrees with xmltodict, the reference v2 parser, on every input."""

from __future__ import annotations

from typing import Any

import xmltodict
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import v2
from shim.errors import UpstreamError

NAMES = st.sampled_from(["return_code", "sign", "a", "b", "coupon_name", "xml", "x-y"])
TEXT = st.text(alphabet=st.sampled_from(list("ab 1<>&\"'中\n\t]")), max_size=8)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def documents(draw: Any) -> bytes:
    root = draw(st.sampled_from(["xml", "xml", "xml", "other"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(NAMES)
        kind = draw(st.sampled_from(["text", "cdata", "empty", "nested", "attr"]))
        text = draw(TEXT)
        if kind == "text":
            parts.append(f"<{name}>{_escape(text)}</{name}>")
        elif kind == "cdata":
            parts.append(f"<{name}><![CDATA[{text.replace(']]>', '')}]]></{name}>")
        elif kind == "empty":
            parts.append(f"<{name}/>")
        elif kind == "nested":
            parts.append(f"<{name}><i>{_escape(text)}</i></{name}>")
        else:
            parts.append(f'<{name} k="v">{_escape(text)}</{name}>')
    tail = draw(st.sampled_from(["", " ", "junk", "<!-- c -->"]))
    return f"<{root}>{''.join(parts)}{tail}</{root}>".encode()


def _oracle(body: bytes) -> dict[str, str] | None:
    """What the v2 rules say, computed with xmltodict: a flat dict, or None for a refusal."""
    try:
        doc = xmltodict.parse(body, disable_entities=True)
    except Exception:  # any parse failure is a refusal
        return None
    if not isinstance(doc, dict) or "xml" not in doc:
        return None
    root = doc["xml"] or {}
    if not isinstance(root, dict):
        return None
    out = {}
    for k, v in root.items():
        v = "" if v is None else v
        if not isinstance(v, str) or k.startswith(("@", "#")):
            return None
        out[k] = v
    return out


@settings(max_examples=300, derandomize=True, deadline=None)
@given(documents())
def test_parse_xml_matches_xmltodict(body: bytes) -> None:
    """The fast flat parser accepts exactly what xmltodict accepts, with the same values."""
    expected = _oracle(body)
    try:
        got: dict[str, str] | None = v2.parse_xml(body)
    except UpstreamError:
        got = None
    assert got == expected
