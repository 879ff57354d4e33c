"""The gateway's side of the v2 protocol, pure: read a caller's request, answer in v2 shapes.

A caller's request is a flat ``<xml>`` document signed with its merchant's v2 key. It is
parsed safely (no DTD, no entities, a flat root of text elements), its ``sign`` checked in
constant time with the key and sign type it names, and its required fields checked, all
before anything is sent upstream. Refusals are v2 ``return_code=FAIL`` answers: unsigned (an
answer signed for a caller who could not sign would make the gateway a signing oracle for
the merchant's key) and typed by :class:`Refusal` (also sent as ``X-Coupon-Shim-Error``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from xml.parsers import expat
from xml.parsers.expat import ExpatError

from shim import _v2 as v2
from shim._errors import (
    ConfigError,
    InputError,
    MappingError,
    ShimError,
    SignatureError,
    UpstreamError,
)
from shim._flatxml import read_flat

__all__ = [
    "REFUSALS",
    "XML_CONTENT_TYPE",
    "GatewayRefusal",
    "Refusal",
    "check_signed_request",
    "fail_body",
    "parse_request",
    "refusal_for_error",
    "resign",
]

XML_CONTENT_TYPE: Final = "text/xml; charset=utf-8"
SIGN_TYPES: Final = ("MD5", "HMAC-SHA256")
#: Fields the v2 protocol itself requires of every signed request of this API.
REQUIRED: Final = ("appid", "mch_id", "nonce_str", "sign", "coupon_stock_id")
_FORBIDDEN = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One kind of ``return_code=FAIL`` answer: its HTTP status and its ``return_msg`` head."""

    kind: str
    status: int
    message: str


#: Every refusal the gateway gives, by kind (documented in the README's gateway section).
REFUSALS: Final[Mapping[str, Refusal]] = {
    r.kind: r
    for r in (
        Refusal("not_found", 404, "接口不存在 (no such API on this gateway)"),
        Refusal("method_not_allowed", 405, "请使用post方法 (use POST)"),
        Refusal("too_large", 413, "XML格式错误 (request body too large)"),
        Refusal("bad_xml", 200, "XML格式错误"),
        Refusal("missing_field", 200, "缺少参数"),
        Refusal("unknown_merchant", 200, "商户号不存在 (mch_id is not served by this gateway)"),
        Refusal("bad_sign_type", 200, "签名类型错误 (sign_type must be MD5 or HMAC-SHA256)"),
        Refusal("bad_sign", 200, "签名错误"),
        Refusal("bad_input", 200, "参数错误"),
        Refusal("overloaded", 503, "系统繁忙,请稍后再试 (gateway overloaded; retry later)"),
        Refusal("upstream_timeout", 504, "系统超时 (upstream did not answer in time)"),
        Refusal("upstream_unavailable", 503, "系统繁忙 (upstream unavailable; retry later)"),
        Refusal("upstream_error", 502, "系统错误 (upstream failed)"),
        Refusal("upstream_signature", 502, "系统错误 (upstream answer failed verification)"),
        Refusal("mapping", 502, "系统错误 (the v3 answer could not be mapped)"),
        Refusal("config", 500, "系统错误 (gateway configuration cannot serve this call)"),
        Refusal("internal", 500, "系统错误 (internal error)"),
    )
}


class GatewayRefusal(Exception):
    """A request the gateway refuses; carries the :class:`Refusal` and a safe detail."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.refusal = REFUSALS[kind]
        self.detail = detail
        super().__init__(self.return_msg)

    @property
    def return_msg(self) -> str:
        """The v2 ``return_msg``: the kind's text, then the detail."""
        head = self.refusal.message
        return f"{head}: {self.detail}" if self.detail else head


def fail_body(return_msg: str) -> bytes:
    """A v2 ``return_code=FAIL`` answer (unsigned, as v2's are)."""
    return v2.to_xml({"return_code": "FAIL", "return_msg": return_msg})


class _Flat:
    __slots__ = ("bad", "depth", "fields", "name", "root", "text")

    def __init__(self) -> None:
        self.depth = 0
        self.root: str | None = None
        self.fields: dict[str, str] = {}
        self.name = ""
        self.text: list[str] = []
        self.bad: str | None = None

    def start(self, name: str, attrs: list[str]) -> None:
        self.depth += 1
        if attrs and self.bad is None:
            self.bad = "attributes are not allowed"
        if self.depth == 1:
            self.root = name
        elif self.depth == 2:
            self.name, self.text = name, []
        elif self.bad is None:
            self.bad = f"field {name[:32]!r} is nested; v2 fields are plain text elements"

    def end(self, name: str) -> None:
        if self.depth == 2:
            if self.name in self.fields and self.bad is None:
                self.bad = f"field {self.name[:32]!r} appears twice"
            self.fields[self.name] = "".join(self.text).strip()
        self.depth -= 1

    def chars(self, data: str) -> None:
        if self.depth == 2:
            self.text.append(data)
        elif self.depth == 1 and data.strip() and self.bad is None:
            self.bad = "text outside the fields"


def _refuse_entity(*_: object) -> int:
    return 0  # an external entity reference: never fetched, parsing stops with an error


def parse_request(body: bytes, *, max_bytes: int) -> dict[str, str]:
    """Parse a caller's v2 request body into flat string fields.

    Raises:
        GatewayRefusal: ``too_large`` or ``bad_xml`` (with a safe detail).
    """
    if len(body) > max_bytes:
        raise GatewayRefusal("too_large", f"over {max_bytes} bytes")
    if not body.strip():
        raise GatewayRefusal("bad_xml", "empty request body")
    if _FORBIDDEN.search(body):
        raise GatewayRefusal("bad_xml", "DTD and entity declarations are not allowed")
    fields = read_flat(body)  # the plain shape every v2 SDK sends: a fast, strict reader
    if fields is not None:
        return fields
    return _parse_full(body)


def _parse_full(body: bytes) -> dict[str, str]:
    """Every document the fast reader stepped aside for, with all the checks."""
    doc = _Flat()
    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.buffer_text = True
    parser.StartElementHandler = doc.start
    parser.EndElementHandler = doc.end
    parser.CharacterDataHandler = doc.chars
    parser.ExternalEntityRefHandler = _refuse_entity
    parser.StartDoctypeDeclHandler = _doctype
    try:
        parser.Parse(body, True)
    except (ExpatError, ValueError):
        raise GatewayRefusal("bad_xml", "the body is not well-formed XML") from None
    if doc.root != "xml":
        raise GatewayRefusal("bad_xml", "the root element must be <xml>")
    if doc.bad is not None:
        raise GatewayRefusal("bad_xml", doc.bad)
    return doc.fields


def _doctype(*_: object) -> None:
    raise ValueError("DTD")  # belt and braces: the byte scan above already refused it


def check_signed_request(
    fields: Mapping[str, str], *, key_for: Mapping[str, str]
) -> tuple[str, str]:
    """Check a parsed request's merchant, sign type, required fields and signature.

    Args:
        fields: the request fields.
        key_for: the v2 key of every merchant the gateway serves, by ``mch_id``.

    Returns:
        ``(mch_id, sign_type)``.

    Raises:
        GatewayRefusal: ``missing_field``, ``unknown_merchant``, ``bad_sign_type`` or
            ``bad_sign``; the merchant and the sign are checked before the other fields.
    """
    mch_id = fields.get("mch_id", "")
    if not mch_id:
        raise GatewayRefusal("missing_field", "mch_id")
    key = key_for.get(mch_id)
    if key is None:
        raise GatewayRefusal("unknown_merchant")
    sign_type = fields.get("sign_type") or "MD5"
    if sign_type not in SIGN_TYPES:
        raise GatewayRefusal("bad_sign_type")
    given = fields.get("sign", "")
    if not given:
        raise GatewayRefusal("missing_field", "sign (the request is not signed)")
    expected = v2.sign(fields, key, sign_type)
    if not hmac.compare_digest(given.upper().encode(), expected.encode()):
        raise GatewayRefusal(
            "bad_sign", f"the sign does not verify with the merchant's v2 key ({sign_type})"
        )
    for name in REQUIRED:
        if not fields.get(name):
            raise GatewayRefusal("missing_field", name)
    return mch_id, sign_type


def resign(answer: Mapping[str, str], *, key: str, sign_type: str) -> dict[str, str]:
    """The answer signed with ``sign_type`` (the caller's), when the shim signed it otherwise."""
    out = dict(answer)
    if "sign" in out:
        out["sign"] = v2.sign(out, key, sign_type)
    return out


def refusal_for_error(error: ShimError) -> GatewayRefusal:
    """The FAIL answer for an error the shim raised (its text is secret-free by contract)."""
    if isinstance(error, InputError):
        return GatewayRefusal("bad_input", str(error))
    if isinstance(error, SignatureError):
        return GatewayRefusal("upstream_signature", f"[{error.route}]")
    if isinstance(error, UpstreamError):
        detail = f"[{error.route}] {error.kind}"
        if error.status is not None:
            detail += f" (HTTP {error.status})"
        if error.request_id:
            detail += f", Request-ID {error.request_id[:64]}"
        if error.kind in ("timeout", "budget"):
            return GatewayRefusal("upstream_timeout", detail)
        if error.kind == "circuit_open":
            return GatewayRefusal("upstream_unavailable", detail)
        return GatewayRefusal("upstream_error", detail)
    if isinstance(error, MappingError):
        return GatewayRefusal("mapping", error.v2_key or "")
    if isinstance(error, ConfigError):
        return GatewayRefusal("config")
    return GatewayRefusal("internal")
