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
from shim._wire import ascii_token, parse_uint

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
_SERIAL: Final = re.compile(r"[0-9A-Za-z_]+")
_NONCE: Final = re.compile(r"[\x21-\x7e]+")
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
    return ascii_token(headers.get("request-id"), _NONCE, max_len=128)


def verify_answer(
    creds: V3Credentials,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    status: int,
) -> None:
    """Verify a v3 answer's signature and freshness; fail closed.

    ``headers`` must be case-insensitive (``httpx.Headers``) or lower-case keyed.

    Raises:
        SignatureError: a header is missing, the signature type is unknown, the signature is a
            ``WECHATPAY/SIGNTEST/`` probe, the serial is unknown, the timestamp is 5 minutes or
            more off, or the signature does not verify.
    """
    request_id = request_id_of(headers)

    def refuse(why: str) -> SignatureError:
        return SignatureError(
            f"v3 answer refused: {why}", route="v3", status=status, request_id=request_id
        )

    signature = headers.get("wechatpay-signature")
    timestamp = headers.get("wechatpay-timestamp")
    nonce = headers.get("wechatpay-nonce")
    serial = headers.get("wechatpay-serial")
    for name, value in (
        ("Wechatpay-Signature", signature),
        ("Wechatpay-Timestamp", timestamp),
        ("Wechatpay-Nonce", nonce),
        ("Wechatpay-Serial", serial),
    ):
        if not value:
            raise refuse(f"missing {name} header")
    assert signature and timestamp and nonce and serial
    sig_type = headers.get("wechatpay-signature-type", SIGNATURE_TYPE)
    if sig_type != SIGNATURE_TYPE:
        raise refuse("unsupported Wechatpay-Signature-Type")
    if signature.startswith("WECHATPAY/SIGNTEST/"):
        raise refuse("signature is a WECHATPAY/SIGNTEST/ probe")
    if ascii_token(signature, _BASE64, max_len=2048) is None:
        raise refuse("Wechatpay-Signature is not Base64")
    if ascii_token(nonce, _NONCE, max_len=64) is None:
        raise refuse("Wechatpay-Nonce is not 1-64 printable ASCII characters")
    if ascii_token(serial, _SERIAL, max_len=64) is None:
        raise refuse("Wechatpay-Serial is not an ASCII serial")
    public_key = creds.verifiers.get(serial) or creds.verifiers.get(serial.upper())
    if public_key is None:
        raise refuse("Wechatpay-Serial is not a configured WeChat Pay key or certificate")
    sent_at = parse_uint(timestamp, max_digits=12)
    if sent_at is None:
        raise refuse("Wechatpay-Timestamp is not a Unix time in ASCII digits")
    if abs(now - sent_at) >= FRESHNESS_S:
        raise refuse("Wechatpay-Timestamp is 5 minutes or more away from local time")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("body is not UTF-8") from None
    if not rsa_verify(timestamp, nonce, text, signature, public_key):
        raise refuse("signature does not verify")


def parse_json_object(body: bytes, *, status: int, request_id: str | None) -> dict[str, Any]:
    """Parse a verified 2xx v3 body, which must be a JSON object.

    Raises:
        UpstreamError: kind ``protocol`` when it is not.
    """
    try:
        data = json.loads(body)
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
