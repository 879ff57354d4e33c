"""The v3 protocol, pure: request signing and answer verification for the stock query.

RSA goes through ``wechatpayv3.utils`` (``rsa_sign``, ``rsa_verify``); nothing here is
hand-rolled crypto. Time and nonce are passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

from wechatpayv3.utils import rsa_sign, rsa_verify

from shim._errors import InputError, SignatureError, UpstreamError
from shim._values import V3Credentials
from shim._wire import ascii_token, parse_uint, printable_token

__all__ = [
    "FRESHNESS_S",
    "SIGNATURE_TYPE",
    "authorization",
    "parse_error_body",
    "parse_json_object",
    "request_id_of",
    "stock_path",
    "verify_answer",
]

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
#: Answers whose ``Wechatpay-Timestamp`` is this many seconds or more away from now are refused.
FRESHNESS_S = 300

# What each answer header may hold (ASCII only; anything else is refused, typed).
# What each answer header may hold (ASCII only; anything else is refused, typed). The nonce
# and Request-ID, printable ASCII without spaces, are read by shim._wire.printable_token.
_SERIAL: Final = re.compile(r"[0-9A-Za-z_]+")
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_CODE: Final = re.compile(r"[A-Za-z0-9_]+")


def stock_path(stock_id: str, creator_mchid: str) -> str:
    """The path-with-query of the stock query, exactly as it is signed and sent.

    Raises:
        InputError: an id is outside v3's 1-20 character limit.
    """
    if not 1 <= len(stock_id) <= 20:
        raise InputError("v3 accepts 1-20 characters", field="coupon_stock_id")
    if not 1 <= len(creator_mchid) <= 20:
        raise InputError("v3 accepts 1-20 characters", field="stock_creator_mchid")
    return (
        f"/v3/marketing/favor/stocks/{quote(stock_id, safe='')}"
        f"?stock_creator_mchid={quote(creator_mchid, safe='')}"
    )


def authorization(
    creds: V3Credentials,
    *,
    mch_id: str,
    method: str,
    path: str,
    body: str,
    timestamp: int,
    nonce: str,
) -> str:
    """The ``Authorization`` header value for one request."""
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n"
    signature = rsa_sign(creds.private_key, message)
    return (
        f'{SIGNATURE_TYPE} mchid="{mch_id}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{creds.cert_serial}"'
    )


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The answer's ``Request-ID`` when it is 1-128 printable ASCII characters, else None."""
    return printable_token(headers.get("request-id"), max_len=128)


def _refused(why: str, headers: Mapping[str, str], status: int) -> SignatureError:
    return SignatureError(
        f"v3 answer refused: {why}", route="v3", status=status, request_id=request_id_of(headers)
    )


def verify_answer(
    creds: V3Credentials,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    status: int,
) -> str:
    """Verify a v3 answer's signature and freshness; fail closed.

    ``headers`` must be case-insensitive (``httpx.Headers``) or lower-case keyed.

    Returns:
        The body as text (it is UTF-8, checked here), for :func:`parse_json_object`.

    Raises:
        SignatureError: a header is missing, the signature type is unknown, the signature is a
            ``WECHATPAY/SIGNTEST/`` probe, the serial is unknown, the timestamp is 5 minutes or
            more off, or the signature does not verify.
    """
    get = headers.get
    signature = get("wechatpay-signature")
    timestamp = get("wechatpay-timestamp")
    nonce = get("wechatpay-nonce")
    serial = get("wechatpay-serial")
    if not (signature and timestamp and nonce and serial):
        for name, value in (
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Timestamp", timestamp),
            ("Wechatpay-Nonce", nonce),
            ("Wechatpay-Serial", serial),
        ):
            if not value:
                raise _refused(f"missing {name} header", headers, status)
    assert signature and timestamp and nonce and serial
    if get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
        raise _refused("unsupported Wechatpay-Signature-Type", headers, status)
    if signature.startswith("WECHATPAY/SIGNTEST/"):
        raise _refused("signature is a WECHATPAY/SIGNTEST/ probe", headers, status)
    if ascii_token(signature, _BASE64, max_len=2048) is None:
        raise _refused("Wechatpay-Signature is not Base64", headers, status)
    if printable_token(nonce, max_len=64) is None:
        raise _refused("Wechatpay-Nonce is not 1-64 printable ASCII characters", headers, status)
    if ascii_token(serial, _SERIAL, max_len=64) is None:
        raise _refused("Wechatpay-Serial is not an ASCII serial", headers, status)
    public_key = creds.verifiers.get(serial) or creds.verifiers.get(serial.upper())
    if public_key is None:
        raise _refused(
            "Wechatpay-Serial is not a configured WeChat Pay key or certificate", headers, status
        )
    sent_at = parse_uint(timestamp, max_digits=12)
    if sent_at is None:
        raise _refused("Wechatpay-Timestamp is not a Unix time in ASCII digits", headers, status)
    if abs(now - sent_at) >= FRESHNESS_S:
        raise _refused(
            "Wechatpay-Timestamp is 5 minutes or more away from local time", headers, status
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _refused("body is not UTF-8", headers, status) from None
    if not rsa_verify(timestamp, nonce, text, signature, public_key):
        raise _refused("signature does not verify", headers, status)
    return text


_DECODER: Final = json.JSONDecoder()


def parse_json_object(body: bytes | str, *, status: int, request_id: str | None) -> dict[str, Any]:
    """Parse a verified 2xx v3 body, which must be a JSON object.

    Args:
        body: the answer's bytes, or its text as :func:`verify_answer` returned it (the
            same result, without decoding the body a second time).

    Raises:
        UpstreamError: kind ``protocol`` when it is not.
    """
    # The common case read directly: an object and nothing after it. A text that starts with
    # "{" and parses is read by json.loads(bytes) as UTF-8 too (only a NUL in the first two
    # bytes or a byte-order mark would make it guess another encoding, and neither parses
    # here); anything else takes json.loads' own path below.
    if type(body) is str and body[:1] == "{":
        try:
            data, end = _DECODER.raw_decode(body)
        except (ValueError, RecursionError):
            pass
        else:
            if end == len(body):
                return data  # type: ignore[no-any-return]
    try:
        data = json.loads(body.encode("utf-8") if type(body) is str else body)
    except (ValueError, RecursionError):
        raise UpstreamError(
            "v3 answer is not valid JSON",
            route="v3",
            kind="protocol",
            status=status,
            request_id=request_id,
        ) from None
    if not isinstance(data, dict):
        raise UpstreamError(
            "v3 answer is not a JSON object",
            route="v3",
            kind="protocol",
            status=status,
            request_id=request_id,
        )
    return data


def parse_error_body(body: bytes) -> str | None:
    """The ``code`` of a v3 error body, or None when there is no readable one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return ascii_token(code, _CODE, max_len=64)
