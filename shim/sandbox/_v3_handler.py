"""The emulator's v3 side: the stock detail and ``/v3/certificates``, JSON, RSA-signed.

:meth:`V3Handler.handle` authenticates the request (``WECHATPAY2-SHA256-RSA2048``: merchant,
serial, 5-minute window, signature), checks ``Accept`` and the parameters, and renders the
answer signed with the platform certificate's key or the WeChat Pay public key (chosen by the
request's ``Wechatpay-Serial``), or mutated by the armed fault. An answer to a request whose
signature did not verify is never signed, as WeChat Pay does.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from wechatpayv3.utils import rsa_sign

from . import _faults as F
from ._faults import Fault
from ._messages import (
    HTML_CT,
    JSON_CT,
    OTHER_MCH_ID,
    V3_CERTIFICATES_PATH,
    V3_STOCK_PREFIX,
    WIRE_FAULTS,
    SandboxReply,
    SandboxRequest,
    json_bytes,
    wire_fault,
)
from ._state import Merchant
from ._stocks import another_stock

if TYPE_CHECKING:
    from ._emulator import Emulator

#: Allowed clock skew of a v3 request timestamp, seconds.
V3_TIMESTAMP_WINDOW_S = 300
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"

_V3_ID = re.compile(r"^[0-9A-Za-z]{1,20}$")
_MCHID = re.compile(r"^[0-9]{1,20}$")
_AUTH_ITEM = re.compile(r'\s*([A-Za-z_]+)="([^"]*)"\s*(,|$)')
_AUTH_KEYS = frozenset({"mchid", "nonce_str", "signature", "timestamp", "serial_no"})

_V3_TRANSIENT: dict[str, tuple[int, str, str]] = {
    F.HTTP_500: (500, "SYSTEM_ERROR", "系统错误"),
    F.HTTP_502: (502, "SERVICE_UNAVAILABLE", "服务不可用"),
    F.HTTP_503: (503, "SERVICE_UNAVAILABLE", "服务不可用"),
    F.HTTP_429: (429, "FREQUENCY_LIMIT_EXCEED", "频率超限"),
}


def _accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``application/json`` (a missing one does not)."""
    if not accept:
        return False
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return True
    return False


@dataclass
class _V3Answer:
    status: int
    payload: Any
    private_key: rsa.RSAPrivateKey
    serial: str
    signed: bool = True


class V3Handler:
    """The v3 routes of one :class:`Emulator` (reads its state, stocks, clock and faults live)."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        state = emulator.state
        self._merchant_keys: dict[str, rsa.RSAPublicKey] = {
            mchid: m.public_key for mchid, m in state.merchants.items()
        }
        self._pub_private = state.pub_private_key
        self._platform_private = state.platform_private_key

    def _signer(self, request: SandboxRequest) -> tuple[rsa.RSAPrivateKey, str, bool]:
        serial = request.headers.get("wechatpay-serial", "")
        if serial.startswith("PUB_KEY_ID_"):
            if serial == self._emulator.state.pub_key_id:
                return self._pub_private, self._emulator.state.pub_key_id, True
            return self._platform_private, self._emulator.state.platform_serial, False
        return self._platform_private, self._emulator.state.platform_serial, True

    def handle(self, request: SandboxRequest, path: str) -> SandboxReply:
        is_stock = path.startswith(V3_STOCK_PREFIX) and "/" not in path[len(V3_STOCK_PREFIX) :]
        stock_id = unquote(path[len(V3_STOCK_PREFIX) :]) if is_stock else None
        fault = self._emulator._faults.take("v3", stock_id or None) if is_stock else None
        self._emulator._record("v3", request, path, stock_id, fault)
        key, serial, serial_ok = self._signer(request)

        if fault is not None:
            if fault.kind in _V3_TRANSIENT:
                status, code, message = _V3_TRANSIENT[fault.kind]
                return self._render(
                    _V3Answer(status, {"code": code, "message": message}, key, serial)
                )
            if fault.kind == F.V3_ERROR:
                status, code = int(fault.args[0]), fault.args[1]
                payload = {"code": code, "message": f"sandbox fault {code}"}
                # a 401 means the request's signature did not verify: WeChat Pay signs nothing
                return self._render(_V3Answer(status, payload, key, serial, status != 401))
            if fault.kind == F.RESET:
                return SandboxReply(0, (), b"", drop="reset")

        answer = self._answer(request, path, key, serial, serial_ok, stock_id, is_stock)
        if fault is None or (not answer.signed and fault.kind not in WIRE_FAULTS):
            return self._render(answer)
        return self._mutate(fault, answer, request)

    def _error(
        self, status: int, code: str, message: str, key: rsa.RSAPrivateKey, serial: str
    ) -> _V3Answer:
        return _V3Answer(status, {"code": code, "message": message}, key, serial)

    def _answer(
        self,
        request: SandboxRequest,
        path: str,
        key: rsa.RSAPrivateKey,
        serial: str,
        serial_ok: bool,
        stock_id: str | None,
        is_stock: bool,
    ) -> _V3Answer:
        merchant, problem = self._authenticate(request)
        if merchant is None:
            refused = self._error(401, "SIGN_ERROR", f"签名错误: {problem}", key, serial)
            refused.signed = False  # the request's signature did not verify: no answer signature
            return refused
        if not _accepts_json(request.headers.get("accept")):
            return self._error(
                400,
                "INVALID_REQUEST",
                "HTTP头缺少 Accept: application/json (Accept header missing or not JSON)",
                key,
                serial,
            )
        if not serial_ok:
            return self._error(
                400, "PARAM_ERROR", "Wechatpay-Serial 不是该商户的微信支付公钥ID", key, serial
            )
        if path == V3_CERTIFICATES_PATH and request.method == "GET":
            return self._certificates(merchant)
        if not is_stock:
            return self._error(404, "NOT_FOUND", "请求的资源不存在 (unknown path)", key, serial)
        if request.method != "GET":
            return self._error(405, "INVALID_REQUEST", "请使用GET方法", key, serial)
        query = parse_qs(
            request.target.partition(b"?")[2].decode("utf-8", "replace"), keep_blank_values=True
        )
        creators = query.get("stock_creator_mchid", [])
        if len(creators) != 1 or not _MCHID.match(creators[0]):
            return self._error(
                400, "PARAM_ERROR", "stock_creator_mchid 缺失或格式错误", key, serial
            )
        if stock_id is None or not _V3_ID.match(stock_id):
            return self._error(400, "PARAM_ERROR", "stock_id 缺失或格式错误", key, serial)
        stock = self._emulator.stocks.get(stock_id)
        if stock is None or stock.creator_mchid != creators[0]:
            return self._error(404, "RESOURCE_NOT_EXISTS", "批次不存在", key, serial)
        return _V3Answer(200, stock.v3_view(), key, serial)

    def _authenticate(self, request: SandboxRequest) -> tuple[Merchant | None, str]:
        header = request.headers.get("authorization")
        if not header:
            return None, "missing Authorization header"
        scheme, _, rest = header.partition(" ")
        if scheme != SIGNATURE_TYPE:
            return None, "unsupported Authorization scheme"
        items: dict[str, str] = {}
        pos = 0
        while pos < len(rest):
            match = _AUTH_ITEM.match(rest, pos)
            if match is None:
                return None, "malformed Authorization parameters"
            name, value = match.group(1), match.group(2)
            if name in items:
                return None, f"duplicate Authorization item {name}"
            items[name] = value
            pos = match.end()
            if not match.group(3) and pos < len(rest):
                return None, "malformed Authorization parameters"
        missing = _AUTH_KEYS - items.keys()
        if missing:
            return None, f"Authorization lacks {', '.join(sorted(missing))}"
        merchant = self._emulator.state.merchants.get(items["mchid"])
        if merchant is None:
            return None, "unknown mchid"
        if items["serial_no"] != merchant.cert_serial:
            return None, "serial_no is not the merchant certificate serial"
        ts = items["timestamp"]
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
            return None, "bad timestamp"
        if abs(self._emulator.clock() - int(ts)) > V3_TIMESTAMP_WINDOW_S:
            return None, "timestamp outside the 5-minute window"
        try:
            body = request.body.decode("utf-8")
            target = request.target.decode("utf-8")
            signature = base64.b64decode(items["signature"], validate=True)
        except ValueError:
            return None, "signature does not verify"
        message = f"{request.method}\n{target}\n{ts}\n{items['nonce_str']}\n{body}\n"
        try:
            self._merchant_keys[merchant.mchid].verify(
                signature, message.encode("utf-8"), padding.PKCS1v15(), SHA256()
            )
        except InvalidSignature:
            return None, "signature does not verify"
        return merchant, ""

    def _certificates(self, merchant: Merchant) -> _V3Answer:
        cert = self._emulator.state.platform_cert_pem
        nonce = secrets.token_hex(6)
        aad = "certificate"
        ciphertext = AESGCM(merchant.apiv3_key.encode()).encrypt(
            nonce.encode(), cert.encode(), aad.encode()
        )
        from cryptography import x509

        loaded = x509.load_pem_x509_certificate(cert.encode())
        fmt = "%Y-%m-%dT%H:%M:%S+00:00"
        payload = {
            "data": [
                {
                    "serial_no": self._emulator.state.platform_serial,
                    "effective_time": loaded.not_valid_before_utc.strftime(fmt),
                    "expire_time": loaded.not_valid_after_utc.strftime(fmt),
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM",
                        "nonce": nonce,
                        "associated_data": aad,
                        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
                    },
                }
            ]
        }
        return _V3Answer(200, payload, self._platform_private, self._emulator.state.platform_serial)

    def _headers(
        self,
        body: bytes,
        key: rsa.RSAPrivateKey,
        serial: str,
        *,
        timestamp: int | None = None,
        content_type: str = JSON_CT,
        signature: str | None = None,
        omit_signature: bool = False,
        sign_body: bytes | None = None,
    ) -> tuple[tuple[str, str], ...]:
        ts = str(int(self._emulator.clock()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(16).upper()
        if signature is None:
            signed = (body if sign_body is None else sign_body).decode("utf-8", "replace")
            signature = str(rsa_sign(key, f"{ts}\n{nonce}\n{signed}\n"))
        headers = [
            ("content-type", content_type),
            ("request-id", uuid.uuid4().hex.upper() + "-0"),
            ("wechatpay-nonce", nonce),
        ]
        if not omit_signature:
            headers.append(("wechatpay-signature", signature))
        headers += [
            ("wechatpay-timestamp", ts),
            ("wechatpay-serial", serial),
            ("wechatpay-signature-type", SIGNATURE_TYPE),
            ("content-length", str(len(body))),
        ]
        return tuple(headers)

    def _render(self, answer: _V3Answer, delay_s: float = 0.0) -> SandboxReply:
        body = json_bytes(answer.payload)
        if not answer.signed:
            headers: tuple[tuple[str, str], ...] = (
                ("content-type", JSON_CT),
                ("request-id", uuid.uuid4().hex.upper() + "-0"),
                ("content-length", str(len(body))),
            )
        else:
            headers = self._headers(body, answer.private_key, answer.serial)
        return SandboxReply(answer.status, headers, body, delay_s=delay_s)

    def _mutate(self, fault: Fault, answer: _V3Answer, request: SandboxRequest) -> SandboxReply:
        kind = fault.kind
        key, serial = answer.private_key, answer.serial
        if kind in WIRE_FAULTS:
            return wire_fault(fault, self._render(answer), self._emulator.bomb_bytes)
        if kind == F.WRONG_STOCK:
            asked = unquote(request.target.partition(b"?")[0].decode("latin-1"))
            asked_id = asked.rsplit("/", 1)[-1]
            creator = parse_qs(request.target.partition(b"?")[2].decode("latin-1")).get(
                "stock_creator_mchid", [None]
            )[0]
            other = another_stock(self._emulator.stocks, asked_id, creator)
            return self._render(_V3Answer(200, other.v3_view(), key, serial))
        if kind == F.WRONG_MERCHANT:
            payload = dict(answer.payload)
            if "stock_creator_mchid" in payload:
                payload["stock_creator_mchid"] = OTHER_MCH_ID
            return self._render(_V3Answer(answer.status, payload, key, serial))
        if kind == F.DELAY:
            return self._render(answer, delay_s=fault.delay_s)
        if kind == F.HUGE_BODY:
            payload = dict(answer.payload)
            payload["padding"] = "x" * self._emulator.huge_body_bytes
            return self._render(_V3Answer(answer.status, payload, key, serial))
        body = json_bytes(answer.payload)
        if kind == F.TRUNCATED:
            headers = self._headers(body, key, serial)
            return SandboxReply(answer.status, headers, body[: len(body) // 2], drop="truncate")
        if kind == F.MALFORMED:
            broken = body[: len(body) // 2]
            return SandboxReply(answer.status, self._headers(broken, key, serial), broken)
        if kind == F.WRONG_CONTENT_TYPE:
            headers = self._headers(body, key, serial, content_type=HTML_CT)
            return SandboxReply(answer.status, headers, body)
        if kind == F.MISSING_SIGNATURE:
            headers = self._headers(body, key, serial, omit_signature=True)
            return SandboxReply(answer.status, headers, body)
        if kind == F.BAD_SIGNATURE:
            wrong = body + b" "
            headers = self._headers(body, key, serial, sign_body=wrong)
            return SandboxReply(answer.status, headers, body)
        if kind == F.STALE_SIGNATURE:
            headers = self._headers(body, key, serial, timestamp=int(self._emulator.clock()) - 600)
            return SandboxReply(answer.status, headers, body)
        if kind == F.UNKNOWN_SERIAL:
            if serial.startswith("PUB_KEY_ID_"):
                unknown = "PUB_KEY_ID_" + "0" * 34
            else:
                unknown = format(secrets.randbits(156) | (1 << 156), "X")
            headers = self._headers(body, key, unknown)
            return SandboxReply(answer.status, headers, body)
        if kind == F.SIGNTEST:
            probe = "WECHATPAY/SIGNTEST/" + base64.b64encode(secrets.token_bytes(256)).decode()
            headers = self._headers(body, key, serial, signature=probe)
            return SandboxReply(answer.status, headers, body)
        if kind == F.TAMPERED_BODY:
            payload = dict(answer.payload)
            if isinstance(payload.get("distributed_coupons"), int):
                payload["distributed_coupons"] += 1
            else:
                payload["message"] = str(payload.get("message", "")) + "(改)"
            tampered = json_bytes(payload)
            headers = self._headers(tampered, key, serial, sign_body=body)
            return SandboxReply(answer.status, headers, tampered)
        raise AssertionError(f"unhandled v3 fault {kind}")  # pragma: no cover


__all__ = ["SIGNATURE_TYPE", "V3_TIMESTAMP_WINDOW_S", "V3Handler"]
