"""The gateway's request parser: its fast path gives exactly what its full parser gives.

``parse_request`` reads the plain shape every v2 SDK sends with the strict fast reader
(``shim._flatxml.read_flat``) and leaves every other document to the full expat parser with
all its checks. These tests hold the two to the same fields and the same refusals.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# private: the fast v2 reader, compared with the gateway's full parser
from shim._flatxml import read_flat

# private: the gateway's pure request checks, tested without a server
from shim.gateway._protocol import GatewayRefusal, _parse_full, parse_request

NAMES = st.sampled_from(["appid", "mch_id", "sign", "a", "xml", "x-y", "n.1", "_u"])
TEXT = st.text(alphabet=st.sampled_from(list("ab 1<>&\"'中\n\t\r]\u3000")), max_size=8)
GAPS = st.sampled_from(["", " ", "\n", "\t", "\r\n", "\u3000"])


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def requests(draw: Any) -> bytes:
    root = draw(st.sampled_from(["xml", "xml", "xml", "other"]))
    parts = [draw(GAPS)]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(NAMES)
        kind = draw(st.sampled_from(["text", "text", "cdata", "empty", "nested", "attr"]))
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
        parts.append(draw(GAPS))
    tail = draw(st.sampled_from(["", " ", "junk", "<!-- c -->"]))
    prolog = draw(st.sampled_from(["", "", '<?xml version="1.0"?>', "\ufeff"]))
    return f"{prolog}<{root}>{''.join(parts)}{tail}</{root}>{draw(GAPS)}".encode()


def _full(body: bytes) -> dict[str, str] | str:
    try:
        return _parse_full(body)
    except GatewayRefusal as refusal:
        return refusal.return_msg


def _parsed(body: bytes) -> dict[str, str] | str:
    try:
        return parse_request(body, max_bytes=1 << 16)
    except GatewayRefusal as refusal:
        return refusal.return_msg


@settings(max_examples=500, derandomize=True, deadline=None)
@given(requests())
def test_the_fast_path_reads_exactly_what_the_full_parser_reads(body: bytes) -> None:
    """Where the fast reader takes a document, the full parser accepts it with the same
    fields in the same order; everything else gets the full parser's answer or refusal."""
    fast = read_flat(body)
    if fast is not None:
        full = _full(body)
        assert full == fast and list(full) == list(fast), body
    assert _parsed(body) == _full(body), body


def test_the_shape_v2_sdks_send_takes_the_fast_path() -> None:
    body = (
        b"<xml><appid>wx1</appid><mch_id><![CDATA[10000098]]></mch_id>\n"
        b"<nonce_str>n</nonce_str><sign>S</sign></xml>"
    )
    assert read_flat(body) is not None
    assert parse_request(body, max_bytes=1024) == {
        "appid": "wx1",
        "mch_id": "10000098",
        "nonce_str": "n",
        "sign": "S",
    }


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"<xml><a>1</a><a>2</a></xml>", "appears twice"),
        (b'<xml><a k="v">1</a></xml>', "attributes"),
        (b"<xml><a><b>1</b></a></xml>", "nested"),
        (b"<xml><a>1</a>junk</xml>", "text outside"),
        (b"<other><a>1</a></other>", "root element"),
        (b"<xml><a>1</a>", "not well-formed"),
        (b'<!DOCTYPE xml [<!ENTITY e "v">]><xml><a>&e;</a></xml>', "DTD"),
    ],
)
def test_documents_off_the_fast_path_keep_every_refusal(body: bytes, detail: str) -> None:
    with pytest.raises(GatewayRefusal) as caught:
        parse_request(body, max_bytes=1024)
    assert caught.value.refusal.kind == "bad_xml"
    assert detail in caught.value.return_msg
