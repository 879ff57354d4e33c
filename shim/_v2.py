"""The v2 protocol, pure: request validation, signing, XML in and out, answer verification.

No I/O, no clock, no randomness: the nonce is passed in. These functions are shared by the
legacy route (request out, answer in) and the v3 route (its synthesized v2 answer is signed
here with the merchant's v2 key).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypeGuard
from xml.parsers import expat
from xml.parsers.expat import ExpatError

from shim._errors import InputError, Route, SignatureError, UpstreamError
from shim._values import DEFAULT_MAX_BODY_BYTES

__all__ = [
    "BOUND_FIELDS",
    "QUERY_COUPON_STOCK_PATH",
    "REQUEST_FIELDS",
    "V2Request",
    "build_request_fields",
    "checked_answer",
    "parse_xml",
    "sign",
    "signed_request_xml",
    "to_xml",
    "validate_request",
    "verify_answer",
]

QUERY_COUPON_STOCK_PATH = "/mmpaymkttransfers/query_coupon_stock"

#: The v2 call signature, in positional order.
REQUEST_FIELDS = (
    "coupon_stock_id",
    "appid",
    "mch_id",
    "op_user_id",
    "device_info",
    "version",
    "type",
)

_ID = re.compile(r"[0-9A-Za-z_\-]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]*")


class V2Request(NamedTuple):
    """A validated v2 request (all strings; optional ones may be empty)."""

    coupon_stock_id: str
    appid: str
    mch_id: str
    op_user_id: str
    device_info: str
    version: str
    type: str


# field: (required, max length, pattern, what it must be)
_RULES: dict[str, tuple[bool, int, re.Pattern[str], str]] = {
    # Stock ids are shared by v2 and v3; v3 caps them at 20 characters, so the shim does too
    # on every route: a caller's answer never depends on which side its canary bucket picks.
    "coupon_stock_id": (True, 20, _ID, "ASCII letters, digits, '-' or '_'"),
    # mch_id before appid: a bad merchant id is the first thing to say
    "mch_id": (True, 32, _ID, "ASCII letters, digits, '-' or '_'"),
    "appid": (True, 32, _ID, "ASCII letters, digits, '-' or '_'"),
    "op_user_id": (False, 32, _PRINTABLE, "printable ASCII without spaces"),
    "device_info": (False, 32, _PRINTABLE, "printable ASCII without spaces"),
    "version": (False, 8, re.compile(r"1\.0"), '"1.0"'),
    "type": (False, 8, re.compile(r"XML"), '"XML"'),
}


def is_plausible_id(value: object) -> TypeGuard[str]:
    """True for a string that passes the ``mch_id``/``appid`` rule (1-32 of ``[0-9A-Za-z_-]``)."""
    return isinstance(value, str) and 0 < len(value) <= 32 and _ID.fullmatch(value) is not None


def _describe(value: str) -> str:
    """A safe short description of a rejected value (never the whole of a long one)."""
    shown = value if len(value) <= 16 else value[:13] + "..."
    return repr(shown)


def validate_request(values: Mapping[str, Any]) -> V2Request:
    """Check every v2 request field against the API's limits, before any network call.

    ``None`` means "not given". ``op_user_id`` defaults to ``mch_id``.

    Raises:
        InputError: a field is missing, not a string, too long or holds characters the API
            does not accept; the message names the field and the rule.
    """
    unknown = [k for k in values if not isinstance(k, str) or k not in REQUEST_FIELDS]
    if unknown:
        name = min(unknown, key=str)
        if not isinstance(name, str):
            raise InputError(f"field names must be strings, got {type(name).__name__}", field="xml")
        raise InputError("is not a field of query_coupon_stock", field=name[:40])
    clean: dict[str, str] = {}
    for name, (required, limit, pattern, what) in _RULES.items():
        value = values.get(name)
        if value is None:
            value = ""
        if isinstance(value, int) and not isinstance(value, bool) and name == "coupon_stock_id":
            if not 0 <= value < 10**limit:
                raise InputError(
                    f"as an integer must be between 0 and {limit} digits long", field=name
                )
            value = str(value)
        if not isinstance(value, str):
            raise InputError(f"must be a string, got {type(value).__name__}", field=name)
        if not value:
            if required:
                raise InputError("is required and must not be empty", field=name)
            clean[name] = ""
            continue
        if len(value) > limit:
            raise InputError(f"must be at most {limit} characters, got {len(value)}", field=name)
        if not pattern.fullmatch(value):
            raise InputError(f"must be {what}, got {_describe(value)}", field=name)
        clean[name] = value
    if not clean["op_user_id"]:
        clean["op_user_id"] = clean["mch_id"]
    return V2Request(**clean)


# The key sets signed are few (one per answer shape and request shape), so their sorted
# order is memoised by the keys in the order given; bounded, cleared when full.
_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}
_ORDERS_MAX: Final = 512


def _sorted_keys(params: Mapping[str, str]) -> tuple[str, ...]:
    keys = tuple(params)
    order = _ORDERS.get(keys)
    if order is None:
        order = tuple(sorted(keys))
        if len(_ORDERS) >= _ORDERS_MAX:
            _ORDERS.clear()
        _ORDERS[keys] = order
    return order


def sign(params: Mapping[str, str], key: str, sign_type: str) -> str:
    """The v2 signature of ``params`` (every non-empty field but ``sign``), upper-case hex.

    Args:
        params: the fields to sign; empty values and ``sign`` itself take no part.
        key: the merchant's v2 API key.
        sign_type: ``"MD5"`` or ``"HMAC-SHA256"``.
    """
    # Keys are unique, so sorting the keys orders the pairs as sorting the items would.
    order = _sorted_keys(params)
    string_a = "&".join([f"{k}={v}" for k in order if (v := params[k]) and k != "sign"])
    temp = f"{string_a}&key={key}".encode()
    if sign_type == "HMAC-SHA256":
        return hmac.digest(key.encode(), temp, "sha256").hex().upper()
    if sign_type == "MD5":
        return hashlib.md5(temp, usedforsecurity=False).hexdigest().upper()
    raise ValueError(f"unknown v2 sign type {sign_type!r}")


def build_request_fields(
    request: V2Request, *, key: str, sign_type: str, nonce: str
) -> dict[str, str]:
    """The signed v2 request fields for ``query_coupon_stock``."""
    fields = {k: v for k, v in zip(REQUEST_FIELDS, request, strict=True) if v}
    fields["nonce_str"] = nonce
    if sign_type == "HMAC-SHA256":
        fields["sign_type"] = "HMAC-SHA256"
    fields["sign"] = sign(fields, key, sign_type)
    return fields


class _RequestTemplate(NamedTuple):
    """What a signed request's XML and sign string hold besides the nonce and the sign."""

    sign_head: str  # the sorted pairs before nonce_str, each followed by "&"
    sign_tail: str  # the sorted pairs after nonce_str, each preceded by "&"
    xml_head: str  # "<xml>" and the request's elements
    xml_middle: str  # the elements between nonce_str and sign (sign_type)


_TEMPLATES: dict[tuple[V2Request, str], _RequestTemplate] = {}
_TEMPLATES_MAX: Final = 1024


def _request_template(request: V2Request, sign_type: str) -> _RequestTemplate:
    found = _TEMPLATES.get((request, sign_type))
    if found is not None:
        return found
    fields = {k: v for k, v in zip(REQUEST_FIELDS, request, strict=True) if v}
    extra = {"sign_type": "HMAC-SHA256"} if sign_type == "HMAC-SHA256" else {}
    pairs = sorted({**fields, **extra}.items())
    before = [f"{k}={v}" for k, v in pairs if k < "nonce_str"]
    after = [f"{k}={v}" for k, v in pairs if k > "nonce_str"]
    found = _RequestTemplate(
        "".join(f"{pair}&" for pair in before),
        "".join(f"&{pair}" for pair in after),
        "<xml>" + "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in fields.items()),
        "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in extra.items()),
    )
    if len(_TEMPLATES) >= _TEMPLATES_MAX:
        _TEMPLATES.clear()
    _TEMPLATES[(request, sign_type)] = found
    return found


def signed_request_xml(request: V2Request, *, key: str, sign_type: str, nonce: str) -> bytes:
    """``to_xml(build_request_fields(...))``, byte for byte, from a per-request template.

    A request's fields and their sorted order are the same on every call for it: only the
    nonce and the sign differ, so the rest is kept (bounded memo, no keys in it).
    """
    if not nonce or sign_type not in ("MD5", "HMAC-SHA256"):
        return to_xml(build_request_fields(request, key=key, sign_type=sign_type, nonce=nonce))
    t = _request_template(request, sign_type)
    temp = f"{t.sign_head}nonce_str={nonce}{t.sign_tail}&key={key}".encode()
    if sign_type == "HMAC-SHA256":
        signature = hmac.digest(key.encode(), temp, "sha256").hex().upper()
    else:
        signature = hashlib.md5(temp, usedforsecurity=False).hexdigest().upper()
    return (
        f"{t.xml_head}<nonce_str>{_cdata(nonce)}</nonce_str>{t.xml_middle}"
        f"<sign><![CDATA[{signature}]]></sign></xml>"
    ).encode()


def _cdata(value: str) -> str:
    # "]]>" cannot stand inside CDATA: split it across two sections.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def to_xml(fields: Mapping[str, str]) -> bytes:
    """Serialize flat v2 fields as ``<xml><k><![CDATA[v]]></k>…</xml>`` (UTF-8)."""
    # _cdata inlined: "]]>" is split across two sections.
    elements = "".join(
        [f"<{k}><![CDATA[{v.replace(']]>', ']]]]><![CDATA[>')}]]></{k}>" for k, v in fields.items()]
    )
    return f"<xml>{elements}</xml>".encode()


_BAD: Final = object()  # a field that is not a plain text element (nested, attributes, repeated)


class _FlatXml:
    """expat handlers that collect a flat ``<root><k>text</k>…</root>`` document.

    The result is exactly what ``xmltodict.parse(body, disable_entities=True)`` gives for the
    documents v2 accepts (text stripped of surrounding whitespace, first-occurrence order)
    and marks everything else (attributes, nested or repeated elements, root text) as bad,
    in the same order xmltodict would have listed it; it avoids building dicts for every
    element, which made xmltodict most of the legacy route's CPU.
    """

    __slots__ = ("child", "child_bad", "child_text", "depth", "fields", "root", "root_text")

    def __init__(self) -> None:
        self.depth = 0
        self.root: str | None = None
        self.root_text: list[str] = []
        self.fields: dict[str, object] = {}
        self.child = ""
        self.child_bad = False
        self.child_text: list[str] = []

    def start(self, name: str, attrs: list[str]) -> None:
        self.depth += 1
        depth = self.depth
        if depth == 2:
            self.child = name
            self.child_bad = bool(attrs)
            self.child_text = []
        elif depth == 1:
            self.root = name
            for i in range(0, len(attrs), 2):
                self.fields.setdefault("@" + attrs[i], _BAD)
        else:
            self.child_bad = True

    def end(self, name: str) -> None:
        if self.depth == 2:
            fields = self.fields
            if self.child_bad or self.child in fields:
                fields[self.child] = _BAD
            else:
                fields[self.child] = "".join(self.child_text).strip()
        self.depth -= 1

    def text(self, data: str) -> None:
        if self.depth == 2:
            self.child_text.append(data)
        elif self.depth == 1:
            self.root_text.append(data)


class _Refused(Exception):
    """Raised from inside expat to stop a document the v2 rules refuse."""


def _refuse_doctype(*_: object) -> None:
    raise _Refused("carries a DOCTYPE")


def _refuse_entity_decl(*_: object) -> None:
    raise _Refused("declares an entity")


def _refuse_entity_ref(*_: object) -> None:
    raise _Refused("references an entity")


def _refuse_markup_decl(*_: object) -> None:
    raise _Refused("carries a DTD declaration")


def _check_declared_encoding(_version: str, encoding: str | None, _standalone: int) -> None:
    if encoding is not None and encoding.strip().lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise _Refused("declares a non-UTF-8 encoding")


def _external_entity(*_: object) -> int:
    raise _Refused("references an external entity")


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def _protocol(why: str, route: Route) -> UpstreamError:
    return UpstreamError(f"v2 answer {why}; refused", route=route, kind="protocol")


def parse_xml(
    body: bytes, *, route: Route = "legacy", max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> dict[str, str]:
    """Parse a v2 XML answer into ``dict[str, str]``, safely.

    The parser itself refuses (wherever they appear, in any encoding) a DOCTYPE, any entity,
    element, attribute-list or notation declaration, and any reference to a general entity
    other than XML's five predefined ones; it reads the document as UTF-8 whatever it declares,
    and refuses a declared encoding other than UTF-8 and UTF-16/32 byte-order marks or NUL
    bytes. A size cap applies; only a flat ``<xml>`` root of text elements is accepted. Empty
    elements become ``""``; text is stripped of surrounding whitespace.

    Raises:
        UpstreamError: kind ``protocol``, for anything that is not a flat, safe v2 document.
    """
    if len(body) > max_bytes:
        raise UpstreamError(
            f"v2 answer of {len(body)} bytes exceeds the {max_bytes}-byte cap",
            route=route,
            kind="protocol",
        )
    if body.startswith(_UTF16_32_BOMS) or b"\x00" in body:
        raise _protocol("is not UTF-8 (UTF-16/32 byte-order mark or NUL bytes)", route)
    doc = _FlatXml()
    # The encoding argument overrides whatever the document declares: bytes are read as UTF-8.
    parser = expat.ParserCreate("UTF-8")
    parser.ordered_attributes = True
    parser.buffer_text = True
    parser.XmlDeclHandler = _check_declared_encoding
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity_decl
    parser.UnparsedEntityDeclHandler = _refuse_entity_decl
    parser.ElementDeclHandler = _refuse_markup_decl
    parser.AttlistDeclHandler = _refuse_markup_decl
    parser.NotationDeclHandler = _refuse_markup_decl
    parser.SkippedEntityHandler = _refuse_entity_ref
    parser.ExternalEntityRefHandler = _external_entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = doc.start
    parser.EndElementHandler = doc.end
    parser.CharacterDataHandler = doc.text
    try:
        parser.Parse(body, True)
    except _Refused as refused:
        raise _protocol(str(refused), route) from None
    except (ExpatError, ValueError) as exc:
        raise UpstreamError(
            f"v2 answer is not well-formed XML ({type(exc).__name__})", route=route, kind="protocol"
        ) from None
    if doc.root != "xml":
        raise UpstreamError("v2 answer has no <xml> root", route=route, kind="protocol")
    fields = doc.fields
    if "".join(doc.root_text).strip():
        if not fields:
            raise UpstreamError(
                "v2 answer has no <xml> root with fields", route=route, kind="protocol"
            )
        fields["#text"] = _BAD
    for k, v in fields.items():
        if v is _BAD:
            raise UpstreamError(
                f"v2 answer field {k[:40]!r} is not a plain text element",
                route=route,
                kind="protocol",
            )
    return fields  # type: ignore[return-value]  # every value is a str here


def verify_answer(
    answer: Mapping[str, str],
    *,
    key: str,
    sign_type: str,
    route: Route = "legacy",
    mch_id: str | None = None,
) -> None:
    """Fail closed on a v2 answer's signature.

    A ``return_code=SUCCESS`` answer must carry a valid ``sign`` of the merchant's sign type.
    A ``return_code=FAIL`` answer carries no data; if it is signed the sign must still verify.

    Args:
        answer: the parsed v2 answer.
        key: the merchant's v2 key.
        sign_type: the merchant's configured sign type.
        route: the route whose answer this is (for the error).
        mch_id: the merchant, so a mismatch names it and its config keys (never the key).

    Raises:
        SignatureError: the sign is missing (on SUCCESS), of the wrong type, or does not match;
            the message names the merchant, its config keys and the likely causes.
        UpstreamError: the answer has no ``return_code``.
    """
    code = answer.get("return_code")
    if code not in ("SUCCESS", "FAIL"):
        raise UpstreamError("v2 answer has no valid return_code", route=route, kind="protocol")
    got = answer.get("sign", "")
    if not got:
        if code == "SUCCESS":
            raise SignatureError("v2 answer has no sign; refused (fail closed)", route=route)
        return
    expected_len = 64 if sign_type == "HMAC-SHA256" else 32
    if len(got) == expected_len and hmac.compare_digest(got.upper(), sign(answer, key, sign_type)):
        return
    who = f"merchant {mch_id}" if mch_id else "the merchant"
    table = f'merchants."{mch_id}"' if mch_id else "merchants.<mch_id>"
    if len(got) != expected_len:
        other = {32: "MD5", 64: "HMAC-SHA256"}.get(len(got))
        looks = f"looks {other}" if other else "is neither MD5 nor HMAC-SHA256"
        raise SignatureError(
            f"v2 answer sign {looks} (length {len(got)}), but {table}.v2_sign_type is "
            f"{sign_type}; refused. Likely cause: v2_sign_type does not match the sign type "
            f"{who} uses",
            route=route,
        )
    # The sign is of the right length but does not match.
    refused = answer.get("err_code") in ("SIGN_ERROR", "SIGNERROR") or (
        code == "FAIL" and "签名" in answer.get("return_msg", "")
    )
    hint = (
        "WeChat Pay also says it refused the request's sign (SIGN_ERROR), so the key is "
        "almost certainly wrong. "
        if refused
        else ""
    )
    raise SignatureError(
        f"v2 answer sign does not verify with the v2 key of {who} ({table}.v2_key, "
        f"{sign_type}); refused. {hint}Likely causes: {table}.v2_key is not the API key "
        "set in the WeChat Pay merchant platform (wrong key, or another merchant's), or "
        f"{table}.v2_sign_type is not the sign type the merchant uses; if both are right, "
        "the answer was altered on the way",
        route=route,
    )


#: The fields of a v2 answer that name the request it answers.
BOUND_FIELDS = ("coupon_stock_id", "mch_id", "appid")


def checked_answer(
    answer: Mapping[str, str],
    request: V2Request,
    *,
    key: str,
    sign_type: str,
    route: Route = "legacy",
    mch_id: str | None = None,
) -> dict[str, str]:
    """A parsed v2 answer, verified, reduced and bound to ``request``; fail closed.

    1. The sign is verified (:func:`verify_answer`; ``mch_id`` names the merchant in a
       mismatch).
    2. An unsigned ``return_code=FAIL`` answer is reduced to ``return_code`` and
       ``return_msg``: nothing else in it is vouched for, so nothing else is passed on.
    3. The answer must be about this request: a ``coupon_stock_id``, ``mch_id`` or ``appid``
       it carries must be the request's, and a successful answer (``result_code=SUCCESS``
       without ``err_code``) must name the stock.

    Raises:
        SignatureError: the sign is missing (on SUCCESS), of the wrong type, or does not match.
        UpstreamError: kind ``protocol``: no valid ``return_code``, or an answer naming another
            stock, merchant or appid than the request (a mixed-up or replayed answer).
    """
    verify_answer(answer, key=key, sign_type=sign_type, route=route, mch_id=mch_id)
    if answer.get("return_code") == "FAIL" and not answer.get("sign"):
        return {"return_code": "FAIL", "return_msg": answer.get("return_msg", "")}
    for name in BOUND_FIELDS:
        got = answer.get(name)
        if got is not None and got != getattr(request, name):
            raise UpstreamError(
                f"v2 answer names another {name} than the request; refused "
                "(a mixed-up or replayed answer)",
                route=route,
                kind="protocol",
            )
    succeeded = answer.get("result_code") == "SUCCESS" and not answer.get("err_code")
    if answer.get("return_code") == "SUCCESS" and succeeded and "coupon_stock_id" not in answer:
        raise UpstreamError(
            "v2 success answer does not name its coupon_stock_id; refused",
            route=route,
            kind="protocol",
        )
    return dict(answer)
