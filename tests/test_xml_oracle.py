"""shim._v2.parse_xml agrees with xmltodict, the reference v2 parser, on every input."""

from __future__ import annotations

from typing import Any

import xmltodict
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

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


PROLOGS = [
    "",
    '<?xml version="1.0"?>',
    '<?xml version="1.0" encoding="utf-8"?>',
    '<?xml version="1.0" encoding="ISO-8859-1"?>',
    "<!DOCTYPE xml>",
    '<!DOCTYPE xml [<!ENTITY e "v">]>',
    "<!--" + "x" * 5000 + "--><!DOCTYPE xml>",
    '<!DOCTYPE xml [<!ATTLIST xml k CDATA "&#38;">]>',
]
_REFUSED_PROLOG = ("<!DOCTYPE", "ISO-8859-1")


@st.composite
def hostile_documents(draw: Any) -> bytes:
    prolog = draw(st.sampled_from(PROLOGS))
    body = draw(documents()).decode()
    if draw(st.booleans()):
        body = body.replace("</xml>", "<r>&e;</r></xml>", 1)
    text = prolog + body
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-16-le"])))


def _hostile_oracle(body: bytes) -> dict[str, str] | None:
    """xmltodict's answer, except that any DOCTYPE and any encoding but UTF-8 are refusals."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text or any(marker in text for marker in _REFUSED_PROLOG):
        return None
    return _oracle(body)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(hostile_documents())
def test_parse_xml_matches_xmltodict_on_hostile_prologs(body: bytes) -> None:
    """With DOCTYPEs, entities, declared encodings and UTF-16 in the mix, the parser accepts
    exactly what xmltodict accepts once DTDs and non-UTF-8 documents are ruled out."""
    expected = _hostile_oracle(body)
    try:
        got: dict[str, str] | None = v2.parse_xml(body)
    except UpstreamError:
        got = None
    assert got == expected


@settings(max_examples=400)
@given(documents())
def test_the_fast_flat_reader_agrees_with_the_full_parser(doc: bytes) -> None:
    """read_flat gives exactly parse_xml's fields, or None (then the full parser decides)."""
    # private: the v2 XML reader, compared with its oracle
    from shim._flatxml import read_flat

    fast = read_flat(doc)
    if fast is None:
        return
    assert fast == v2.parse_xml(doc)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
        st.text(max_size=12),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_the_fast_reader_takes_v2_answers_as_wechat_pay_writes_them(
    fields: dict[str, str], cdata: bool
) -> None:
    """CDATA or bare values, any text: fast and full parsers agree, or fast steps aside."""
    # private: the v2 XML reader, compared with its oracle
    from shim._flatxml import read_flat

    def value(v: str) -> str:
        return v2._cdata(v) if cdata else _escape(v)

    doc = (
        "<xml>" + "".join(f"<{k}>{value(v)}</{k}>" for k, v in fields.items()) + "</xml>"
    ).encode()
    try:
        full: dict[str, str] | None = v2.parse_xml(doc)
    except UpstreamError:
        full = None
    fast = read_flat(doc)
    assert fast is None or fast == full


def test_the_fast_reader_steps_aside_for_everything_unusual() -> None:
    """DOCTYPE, entities, declarations, BOM, CR, attributes, nesting, repeats: not read fast."""
    # private: the v2 XML reader, compared with its oracle
    from shim._flatxml import read_flat

    for doc in (
        b'<!DOCTYPE xml [<!ENTITY a "b">]><xml><a>&a;</a></xml>',
        b'<?xml version="1.0"?><xml><a>1</a></xml>',
        b"\xef\xbb\xbf<xml><a>1</a></xml>",
        b"<xml><a>1\r\n</a></xml>",
        b'<xml><a k="v">1</a></xml>',
        b"<xml><a><b>1</b></a></xml>",
        b"<xml><a>1</a><a>2</a></xml>",
        b"<xml><a>&#65;</a></xml>",
        b"<xml><a/></xml>",
        b"<xml><a>1</a>junk</xml>",
        b"<xml><a>1</a><!-- c --></xml>",
        b"<xml><a>\x01</a></xml>",
        "<xml><a>1</a></xml>".encode("utf-16"),
        b"<other><a>1</a></other>",
    ):
        assert read_flat(doc) is None, doc
    assert read_flat(b"<xml>\n<a><![CDATA[x ]]]></a>\n<b>12</b>\n</xml>\n") == {
        "a": "x ]",
        "b": "12",
    }
