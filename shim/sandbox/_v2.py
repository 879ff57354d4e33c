"""The v2 protocol as the emulator speaks it: signing and XML, written from the spec only.

Nothing here is shared with the shim's own v2 code on purpose: the emulator is a second,
independent reading of the protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict

SIGN_TYPE_MD5 = "MD5"
SIGN_TYPE_HMAC_SHA256 = "HMAC-SHA256"
V2_SIGN_TYPES = (SIGN_TYPE_MD5, SIGN_TYPE_HMAC_SHA256)

#: Requests larger than this are refused before parsing.
MAX_V2_REQUEST_BYTES = 64 * 1024

_FORBIDDEN_MARKUP = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class V2XmlError(ValueError):
    """A v2 request body is not the flat ``<xml>`` document the protocol expects."""


def v2_sign(params: Mapping[str, str | None], key: str, sign_type: str = SIGN_TYPE_MD5) -> str:
    """Sign v2 fields the way WeChat Pay does.

    Every field with a non-empty value except ``sign`` takes part, sorted by key (ASCII);
    ``&key=<v2 key>`` is appended; MD5 or HMAC-SHA256 (keyed with the v2 key), upper-case hex.

    Args:
        params: the fields (values may be None or empty: those are skipped).
        key: the merchant's 32-character v2 key.
        sign_type: ``"MD5"`` or ``"HMAC-SHA256"``.

    Returns:
        The upper-case hex signature.

    Raises:
        ValueError: for an unknown sign type.
    """
    items = sorted((k, v) for k, v in params.items() if k != "sign" and v is not None and v != "")
    string_a = "&".join(f"{k}={v}" for k, v in items)
    temp = f"{string_a}&key={key}".encode()
    if sign_type == SIGN_TYPE_MD5:
        return hashlib.md5(temp, usedforsecurity=False).hexdigest().upper()
    if sign_type == SIGN_TYPE_HMAC_SHA256:
        return hmac.new(key.encode(), temp, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown v2 sign type {sign_type!r}")


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render_xml(fields: Iterable[tuple[str, str]] | Mapping[str, str]) -> bytes:
    """Render flat fields as a v2 ``<xml>`` document (digits bare, other text as CDATA).

    Args:
        fields: ordered (name, value) pairs or a mapping; names must be plain XML names.

    Returns:
        UTF-8 bytes.
    """
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    out = ["<xml>"]
    for name, value in pairs:
        if not _XML_NAME.match(name):
            raise ValueError(f"not an XML element name: {name!r}")
        text = value if value.isdigit() and value.isascii() else _cdata(value)
        out.append(f"<{name}>{text}</{name}>")
    out.append("</xml>")
    return "".join(out).encode("utf-8")


def parse_request_xml(body: bytes, *, max_bytes: int = MAX_V2_REQUEST_BYTES) -> dict[str, str]:
    """Parse a v2 request body safely into flat string fields.

    DTDs and entity declarations are refused before parsing (and by the parser again),
    bodies over ``max_bytes`` are refused, and only a flat ``<xml>`` root of text
    elements is accepted.

    Args:
        body: the raw request body.
        max_bytes: the size cap.

    Returns:
        Field name to string value (empty elements give ``""``).

    Raises:
        V2XmlError: the body is not acceptable; the message is safe to return to a client.
    """
    if len(body) > max_bytes:
        raise V2XmlError("request body too large")
    if not body.strip():
        raise V2XmlError("empty request body")
    if _FORBIDDEN_MARKUP.search(body):
        raise V2XmlError("DTD and entity declarations are not allowed")
    try:
        doc: Any = xmltodict.parse(body, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise V2XmlError("request body is not well-formed XML") from exc
    if not isinstance(doc, dict) or list(doc) != ["xml"]:
        raise V2XmlError("root element must be <xml>")
    root = doc["xml"]
    if root is None:
        return {}
    if not isinstance(root, dict):
        raise V2XmlError("<xml> must contain elements")
    fields: dict[str, str] = {}
    for name, value in root.items():
        if name.startswith(("@", "#")):
            raise V2XmlError("attributes and mixed content are not allowed")
        if value is None:
            fields[name] = ""
        elif isinstance(value, str):
            fields[name] = value
        else:
            raise V2XmlError(f"field {name!r} must be a single text element")
    return fields


def billion_laughs_xml(levels: int = 10) -> bytes:
    """An entity-expansion ("billion laughs") document with a v2-looking root."""
    lines = ['<?xml version="1.0"?>', "<!DOCTYPE xml [", ' <!ENTITY lol0 "lol">']
    for i in range(1, levels):
        refs = f"&lol{i - 1};" * 10
        lines.append(f' <!ENTITY lol{i} "{refs}">')
    lines.append("]>")
    lines.append(
        f"<xml><return_code>SUCCESS</return_code><coupon_name>&lol{levels - 1};</coupon_name></xml>"
    )
    return "\n".join(lines).encode("utf-8")
