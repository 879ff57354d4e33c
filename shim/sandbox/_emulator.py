"""The emulator's one request handler: WeChat Pay v2 and v3 behind a transport-free API.

:meth:`Emulator.handle` takes a :class:`SandboxRequest` and returns a :class:`SandboxReply`
(status, headers, body, plus a delay and a "drop the connection" instruction). The plugs
(:meth:`Emulator.mock_transport`, :attr:`Emulator.asgi_app`, ``serve``) only do I/O.

Decisions the spec leaves open (documented here once):

* v2: an unparseable body (bad XML, DTD/entities, over 64 KiB, not POST) gets the unsigned
  ``return_code=FAIL`` answer. A request WeChat Pay cannot tie to a merchant key (no
  ``mch_id``, an unknown ``mch_id``) gets the unsigned ``return_code=FAIL`` answer too, its
  ``return_msg`` naming the problem (``MCH_ID_EMPTY`` / ``CODE_2_ID_ERR``): v2 signs every
  ``return_code=SUCCESS`` answer, and without a key there is nothing to sign with. Every other
  error is a business error (``return_code=SUCCESS, result_code=FAIL, err_code,
  err_code_des``), signed with the merchant's v2 key in the request's sign type.
  Checks run in this order: mch_id present, mch_id known, sign, appid/nonce_str present
  (``REQ_PARAM_XML_ERR``), appid belongs to mch_id (``CODE_2_ID_ERR``), coupon_stock_id present,
  id is 1-32 digits (``COUPON_STOCK_ID_NOT_VALID``), stock exists (``COUPON_STOCK_NOT_FOUND``),
  stock created by mch_id (``COUPON_STOCK_ID_NOT_VALID``).
* v3: authentication first (401 ``SIGN_ERROR``, **unsigned**: WeChat Pay signs an answer
  only when the request's own signature verified), then the ``Accept`` header (missing, or
  not admitting ``application/json``: a signed 400 ``INVALID_REQUEST``; WeChat Pay requires
  ``Accept: application/json`` and the code it answers is not documented), then parameters
  (400 ``PARAM_ERROR``), then the stock. A ``stock_creator_mchid`` that did not create the
  stock gets 404 ``RESOURCE_NOT_EXISTS`` (not 403): the stock does not exist for that
  creator. The calling merchant need not be the creator. Other error bodies are signed like
  success bodies.
* v3 answer key: a request carrying ``Wechatpay-Serial: PUB_KEY_ID_…`` equal to the emulator's
  id is answered with the WeChat Pay public-key pair and that id; any other ``PUB_KEY_ID_…`` is
  a 400 ``PARAM_ERROR``; otherwise the platform certificate's key and serial sign.
* Faults only apply to the two stock-query routes (never to ``/v3/certificates`` or admin).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from wechatpayv3.utils import rsa_sign

from shim._extras import require

from . import _faults as F
from ._faults import Fault, FaultTable, make_fault
from ._state import Merchant, SandboxState
from ._stocks import SeededStock, seeded_stocks
from ._v2 import (
    SIGN_TYPE_MD5,
    V2_SIGN_TYPES,
    V2XmlError,
    billion_laughs_xml,
    parse_request_xml,
    render_xml,
    v2_sign,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

V2_PATH = "/mmpaymkttransfers/query_coupon_stock"
V3_STOCK_PREFIX = "/v3/marketing/favor/stocks/"
V3_CERTIFICATES_PATH = "/v3/certificates"
ADMIN_FAULTS_PATH = "/__admin/faults"

#: Allowed clock skew of a v3 request timestamp, seconds.
V3_TIMESTAMP_WINDOW_S = 300
#: Size of a ``huge_body`` answer.
DEFAULT_HUGE_BODY_BYTES = 5 * 1024 * 1024
#: What an ``encoding_bomb`` answer inflates to (``stacked_encodings``: 4 times that).
DEFAULT_BOMB_BYTES = 64 * 1024 * 1024
#: ``oversized_headers``: this many extra headers of this many bytes each.
OVERSIZED_HEADER_COUNT = 64
OVERSIZED_HEADER_BYTES = 4096
#: The merchant id / appid an answer names under ``wrong_merchant`` / ``wrong_appid``.
OTHER_MCH_ID = "1900000109"
OTHER_APPID = "wxd678efh567hg6787"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"

_XML_CT = "text/xml; charset=utf-8"
_JSON_CT = "application/json"
_HTML_CT = "text/html; charset=utf-8"
_V3_ID = re.compile(r"^[0-9A-Za-z]{1,20}$")
_MCHID = re.compile(r"^[0-9]{1,20}$")
_AUTH_ITEM = re.compile(r'\s*([A-Za-z_]+)="([^"]*)"\s*(,|$)')
_AUTH_KEYS = frozenset({"mchid", "nonce_str", "signature", "timestamp", "serial_no"})

#: Short Chinese descriptions of the v2 err_codes, in the v2 style.
V2_ERR_CODE_DES: Mapping[str, str] = {
    "COUPON_STOCK_ID_NOT_VALID": "批次ID无效或不属于该商户",
    "SIGN_ERROR": "签名错误",
    "REQ_PARAM_XML_ERR": "请求参数错误",
    "COUPON_STOCK_ID_EMPTY": "批次ID为空",
    "MCH_ID_EMPTY": "商户号为空",
    "CODE_2_ID_ERR": "商户号错误",
    "GET_COUPON_STOCK_FAIL": "获取批次信息失败",
    "COUPON_STOCK_NOT_FOUND": "批次信息不存在",
    "SYSTEMERROR": "系统错误，请稍后重试",
    "NOAUTH": "商户无此接口权限",
}

_V3_TRANSIENT: Mapping[str, tuple[int, str, str]] = {
    F.HTTP_500: (500, "SYSTEM_ERROR", "系统错误"),
    F.HTTP_502: (502, "SERVICE_UNAVAILABLE", "服务不可用"),
    F.HTTP_503: (503, "SERVICE_UNAVAILABLE", "服务不可用"),
    F.HTTP_429: (429, "FREQUENCY_LIMIT_EXCEED", "频率超限"),
}
_HTTP_FAULT_STATUS = {F.HTTP_500: 500, F.HTTP_502: 502, F.HTTP_503: 503, F.HTTP_429: 429}


#: Faults that change how an answer travels, not what it says (both sides alike).
_WIRE_FAULTS = frozenset(
    {F.HEADER_DRIP, F.BODY_DRIP, F.ENCODING_BOMB, F.STACKED_ENCODINGS, F.OVERSIZED_HEADERS}
)
_V2_ENVELOPE = frozenset(
    {"return_code", "return_msg", "appid", "mch_id", "device_info", "nonce_str"}
)


def _accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``application/json`` (a missing one does not)."""
    if not accept:
        return False
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return True
    return False


@dataclass(frozen=True)
class SandboxRequest:
    """A request as the emulator sees it.

    Attributes:
        method: upper-case HTTP method.
        target: path and query exactly as sent (``/v3/...?a=b``), bytes.
        headers: header names lower-cased.
        body: the raw body.
        client_host: the peer address, or None when unknown.
        body_too_large: the transport stopped reading an over-long body.
    """

    method: str
    target: bytes
    headers: Mapping[str, str]
    body: bytes = b""
    client_host: str | None = None
    body_too_large: bool = False


@dataclass(frozen=True)
class SandboxReply:
    """What to send back.

    Attributes:
        status: HTTP status.
        headers: header pairs, ``content-length`` included.
        body: the bytes to send (for ``drop="truncate"``: the bytes sent before closing).
        delay_s: wait this long before answering.
        drop: ``"reset"``: drop the connection without an answer; ``"truncate"``: send the
            headers and ``body`` (shorter than content-length), then close.
        drip: ``"headers"``: send the status line and headers one byte at a time, every
            ``drip_interval_s``; ``"body"``: the headers at once, then the body that way.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay_s: float = 0.0
    drop: Literal["reset", "truncate"] | None = None
    drip: Literal["headers", "body"] | None = None
    drip_interval_s: float = 0.0

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received (for tests)."""

    side: str
    method: str
    path: str
    stock_id: str | None
    fault: str | None


@dataclass
class _V2Answer:
    fields: list[tuple[str, str]]
    key: str | None
    sign_type: str


@dataclass
class _V3Answer:
    status: int
    payload: Any
    private_key: rsa.RSAPrivateKey
    serial: str
    signed: bool = True


def _reply(
    status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> SandboxReply:
    headers = (("content-type", content_type), *extra, ("content-length", str(len(body))))
    return SandboxReply(status, headers, body)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@functools.lru_cache(maxsize=4)
def _gzip_zeros(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed, built in chunks (never ``size`` bytes at once)."""
    import io

    out = io.BytesIO()
    chunk = bytes(1 << 20)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def _stacked_zeros(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed twice (``Content-Encoding: gzip, gzip``)."""
    return gzip.compress(_gzip_zeros(size), compresslevel=9, mtime=0)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    return host in ("::1", "localhost") or host.startswith(("127.", "::ffff:127."))


def _wire_fault(fault: Fault, reply: SandboxReply, bomb_bytes: int) -> SandboxReply:
    """Apply a transport-level fault to a rendered answer."""
    kind = fault.kind
    if kind in (F.HEADER_DRIP, F.BODY_DRIP):
        return SandboxReply(
            reply.status,
            reply.headers,
            reply.body,
            drip="headers" if kind == F.HEADER_DRIP else "body",
            drip_interval_s=fault.delay_s,
        )
    if kind == F.OVERSIZED_HEADERS:
        filler = tuple(
            (f"x-sandbox-filler-{i}", "x" * OVERSIZED_HEADER_BYTES)
            for i in range(OVERSIZED_HEADER_COUNT)
        )
        return SandboxReply(reply.status, filler + reply.headers, reply.body)
    if kind == F.ENCODING_BOMB:
        body, encoding = _gzip_zeros(bomb_bytes), "gzip"
    else:
        body, encoding = _stacked_zeros(bomb_bytes * 4), "gzip, gzip"
    kept = tuple((k, v) for k, v in reply.headers if k.lower() != "content-length")
    headers = (*kept, ("content-encoding", encoding), ("content-length", str(len(body))))
    return SandboxReply(reply.status, headers, body)


class Emulator:
    """WeChat Pay (v2 ``query_coupon_stock`` and v3 stock detail) for tests and people.

    Args:
        state: keys and certificates (see :class:`SandboxState`).
        stocks: the stock table; the seeded table by default.
        clock: seconds since the epoch; checks request timestamps and stamps answers.
        huge_body_bytes: size of a ``huge_body`` answer.
        bomb_bytes: what an ``encoding_bomb`` answer inflates to.

    Attributes:
        stocks: id → stock; may be changed by tests.
        clock: replaceable at any time.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        stocks: Mapping[str, SeededStock] | None = None,
        clock: Callable[[], float] = time.time,
        huge_body_bytes: int = DEFAULT_HUGE_BODY_BYTES,
        bomb_bytes: int = DEFAULT_BOMB_BYTES,
    ) -> None:
        self.state = state
        self.bomb_bytes = bomb_bytes
        self.stocks: dict[str, SeededStock] = dict(seeded_stocks() if stocks is None else stocks)
        self.clock = clock
        self.huge_body_bytes = huge_body_bytes
        self._faults = FaultTable()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._log: deque[RecordedRequest] = deque(maxlen=1000)
        self._merchant_keys: dict[str, rsa.RSAPublicKey] = {
            mchid: m.public_key for mchid, m in state.merchants.items()
        }
        self._pub_private = state.pub_private_key
        self._platform_private = state.platform_private_key
        self._asgi_app: Starlette | None = None

    # ------------------------------------------------------------------ public API

    def set_fault(
        self,
        side: str,
        stock_id: str,
        fault: str,
        times: int | None = None,
        delay_s: float = 1.0,
    ) -> Fault:
        """Arm a fault for requests on one side for one stock (or ``"*"`` for any).

        Args:
            side: ``"v2"`` or ``"v3"``.
            stock_id: the stock id, or ``"*"``.
            fault: one of :data:`FAULT_KINDS` (``err_code:<CODE>``, ``v3_error:<S>:<CODE>``).
            times: apply to the next N matching requests only; None = until cleared.
            delay_s: the wait of a ``delay`` fault.

        Returns:
            The armed fault.

        Raises:
            ValueError: unknown kind, bad arguments, or a kind meaningless on that side.
        """
        armed = make_fault(side, stock_id, fault, times, delay_s)
        # Build a bomb when it is armed, not when it is served: compressing hundreds of MiB
        # takes a while, and the answer must not be late because of it.
        if armed.kind == F.ENCODING_BOMB:
            _gzip_zeros(self.bomb_bytes)
        elif armed.kind == F.STACKED_ENCODINGS:
            _stacked_zeros(self.bomb_bytes * 4)
        self._faults.set(armed)
        return armed

    def clear_faults(self, side: str | None = None, stock_id: str | None = None) -> None:
        """Disarm all faults (or those of one side and/or stock)."""
        self._faults.clear(side, stock_id)

    @property
    def faults(self) -> list[Fault]:
        """The armed faults."""
        return list(self._faults)

    @property
    def request_counts(self) -> Counter[str]:
        """Requests received per side (``"v2"``, ``"v3"``; admin calls are not counted)."""
        with self._lock:
            return Counter(self._counts)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last (up to 1000) requests received, oldest first."""
        with self._lock:
            return list(self._log)

    def reset_counts(self) -> None:
        """Forget counted and recorded requests."""
        with self._lock:
            self._counts.clear()
            self._log.clear()

    def mock_transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client`` and ``httpx.AsyncClient``."""
        from ._transport import SandboxTransport

        return SandboxTransport(self)

    @property
    def asgi_app(self) -> Starlette:
        """The emulator as a Starlette (ASGI) application.

        Raises:
            MissingExtraError: the ``sandbox`` extra (starlette) is not installed.
        """
        if self._asgi_app is None:
            require("sandbox", "the emulator's ASGI app", "starlette")
            from ._asgi import build_asgi_app

            self._asgi_app = build_asgi_app(self)
        return self._asgi_app

    def handle(self, request: SandboxRequest) -> SandboxReply:
        """Answer one request (the single handler behind every plug)."""
        path = request.target.partition(b"?")[0].decode("latin-1")
        if path == ADMIN_FAULTS_PATH:
            status, payload = self.admin(
                request.method, request.body, request.client_host, request.target
            )
            return _reply(status, _JSON_CT, _json_bytes(payload))
        if path.startswith("/mmpaymkttransfers/"):
            return self._handle_v2(request, path)
        if path.startswith("/v3/"):
            return self._handle_v3(request, path)
        return _reply(404, "text/plain; charset=utf-8", b"not found")

    def admin(
        self, method: str, body: bytes, client_host: str | None, target: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        """The ``/__admin/faults`` endpoint (loopback clients only).

        ``POST`` a JSON object ``{"side", "stock_id", "fault", "times"?, "delay_s"?}`` to arm a
        fault; ``DELETE`` (optional query ``side``, ``stock_id``) to clear; ``GET`` to list
        armed faults and request counts.

        Returns:
            (HTTP status, JSON object).
        """
        if not _is_loopback(client_host):
            return 403, {"code": "NO_AUTH", "message": "admin endpoint is loopback-only"}
        if method == "GET":
            return 200, {
                "faults": [f.to_json() for f in self._faults],
                "request_counts": dict(self.request_counts),
            }
        if method == "DELETE":
            query = parse_qs(target.partition(b"?")[2].decode("utf-8", "replace"))
            side = query.get("side", [None])[0]
            stock = query.get("stock_id", [None])[0]
            before = len(self._faults)
            self._faults.clear(side, stock)
            return 200, {"cleared": before - len(self._faults)}
        if method != "POST":
            return 405, {"code": "INVALID_REQUEST", "message": "use GET, POST or DELETE"}
        try:
            spec = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return 400, {"code": "PARAM_ERROR", "message": "body must be a JSON object"}
        if not isinstance(spec, dict) or not {"side", "stock_id", "fault"} <= spec.keys():
            return 400, {"code": "PARAM_ERROR", "message": "need side, stock_id and fault"}
        unknown = set(spec) - {"side", "stock_id", "fault", "times", "delay_s"}
        if unknown:
            return 400, {"code": "PARAM_ERROR", "message": f"unknown keys: {sorted(unknown)}"}
        try:
            armed = self.set_fault(
                str(spec["side"]),
                str(spec["stock_id"]),
                str(spec["fault"]),
                spec.get("times"),
                spec.get("delay_s", 1.0),
            )
        except ValueError as exc:
            return 400, {"code": "PARAM_ERROR", "message": str(exc)}
        return 201, {"armed": armed.to_json()}

    # ------------------------------------------------------------------ bookkeeping

    def _record(
        self, side: str, request: SandboxRequest, path: str, stock: str | None, fault: Fault | None
    ) -> None:
        with self._lock:
            self._counts[side] += 1
            self._log.append(
                RecordedRequest(side, request.method, path, stock, fault.fault if fault else None)
            )

    # ------------------------------------------------------------------ v2

    def _handle_v2(self, request: SandboxRequest, path: str) -> SandboxReply:
        fields: dict[str, str] | None = None
        xml_error: str | None = None
        if path != V2_PATH:
            xml_error = "接口不存在 (unknown v2 path)"
        elif request.method != "POST":
            xml_error = "请使用post方法"
        elif request.body_too_large:
            xml_error = "XML格式错误 (request body too large)"
        else:
            try:
                fields = parse_request_xml(request.body)
            except V2XmlError as exc:
                xml_error = f"XML格式错误 ({exc})"
        stock_id = (fields or {}).get("coupon_stock_id") or None
        fault = self._faults.take("v2", stock_id) if path == V2_PATH else None
        self._record("v2", request, path, stock_id, fault)

        if fault is not None:
            early = self._v2_early_fault(fault, fields)
            if early is not None:
                return early
        answer = self._v2_answer(fields, xml_error)
        if fault is None:
            return self._v2_render(answer)
        return self._v2_mutate(fault, answer)

    def _v2_envelope(self, fields: Mapping[str, str]) -> list[tuple[str, str]]:
        out = [("return_code", "SUCCESS"), ("return_msg", "OK")]
        for name in ("appid", "mch_id", "device_info"):
            if fields.get(name):
                out.append((name, fields[name]))
        out.append(("nonce_str", secrets.token_hex(16)))
        return out

    def _v2_error(
        self, fields: Mapping[str, str], code: str, key: str | None, sign_type: str
    ) -> _V2Answer:
        out = self._v2_envelope(fields)
        out += [
            ("result_code", "FAIL"),
            ("err_code", code),
            ("err_code_des", V2_ERR_CODE_DES.get(code, code)),
        ]
        return _V2Answer(out, key, sign_type)

    def _v2_answer(self, fields: dict[str, str] | None, xml_error: str | None) -> _V2Answer:
        if fields is None:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", xml_error or "XML格式错误")],
                None,
                SIGN_TYPE_MD5,
            )
        mch_id = fields.get("mch_id", "")
        if not mch_id:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", "MCH_ID_EMPTY: 商户号为空")],
                None,
                SIGN_TYPE_MD5,
            )
        merchant = self.state.merchants.get(mch_id)
        if merchant is None:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", "CODE_2_ID_ERR: 商户号错误 (不存在)")],
                None,
                SIGN_TYPE_MD5,
            )
        req_sign_type = fields.get("sign_type") or SIGN_TYPE_MD5
        sign_type = req_sign_type if req_sign_type in V2_SIGN_TYPES else SIGN_TYPE_MD5
        key = merchant.v2_key
        given = fields.get("sign", "")
        expected = v2_sign(fields, key, sign_type)
        if (
            req_sign_type not in V2_SIGN_TYPES
            or not given
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            return self._v2_error(fields, "SIGN_ERROR", key, sign_type)
        if not fields.get("appid") or not fields.get("nonce_str"):
            return self._v2_error(fields, "REQ_PARAM_XML_ERR", key, sign_type)
        if fields["appid"] != merchant.appid:
            return self._v2_error(fields, "CODE_2_ID_ERR", key, sign_type)
        stock_id = fields.get("coupon_stock_id", "")
        if not stock_id:
            return self._v2_error(fields, "COUPON_STOCK_ID_EMPTY", key, sign_type)
        if not (stock_id.isascii() and stock_id.isdigit() and len(stock_id) <= 32):
            return self._v2_error(fields, "COUPON_STOCK_ID_NOT_VALID", key, sign_type)
        stock = self.stocks.get(stock_id)
        if stock is None:
            return self._v2_error(fields, "COUPON_STOCK_NOT_FOUND", key, sign_type)
        if stock.creator_mchid != mch_id:
            return self._v2_error(fields, "COUPON_STOCK_ID_NOT_VALID", key, sign_type)
        out = self._v2_envelope(fields)
        out.append(("result_code", "SUCCESS"))
        out += list(stock.v2_fields().items())
        return _V2Answer(out, key, sign_type)

    def _v2_merchant_key(self, fields: Mapping[str, str] | None) -> tuple[str | None, str]:
        if not fields:
            return None, SIGN_TYPE_MD5
        merchant = self.state.merchants.get(fields.get("mch_id", ""))
        sign_type = fields.get("sign_type") or SIGN_TYPE_MD5
        if sign_type not in V2_SIGN_TYPES:
            sign_type = SIGN_TYPE_MD5
        return (merchant.v2_key if merchant else None), sign_type

    def _v2_early_fault(self, fault: Fault, fields: dict[str, str] | None) -> SandboxReply | None:
        if fault.kind in _HTTP_FAULT_STATUS:
            status = _HTTP_FAULT_STATUS[fault.kind]
            page = f"<html><body><h1>{status}</h1>sandbox fault {fault.kind}</body></html>"
            return _reply(status, _HTML_CT, page.encode())
        if fault.kind == F.RESET:
            return SandboxReply(0, (), b"", drop="reset")
        if fault.kind == F.BILLION_LAUGHS:
            return _reply(200, _XML_CT, billion_laughs_xml())
        if fault.kind == F.ERR_CODE:
            key, sign_type = self._v2_merchant_key(fields)
            return self._v2_render(self._v2_error(fields or {}, fault.args[0], key, sign_type))
        return None

    def _v2_signed(self, answer: _V2Answer) -> list[tuple[str, str]]:
        if answer.key is None:
            return list(answer.fields)
        sign = v2_sign(dict(answer.fields), answer.key, answer.sign_type)
        return [*answer.fields, ("sign", sign)]

    def _v2_render(self, answer: _V2Answer, delay_s: float = 0.0) -> SandboxReply:
        body = render_xml(self._v2_signed(answer))
        reply = _reply(200, _XML_CT, body)
        return SandboxReply(reply.status, reply.headers, reply.body, delay_s=delay_s)

    def _other_stock(self, stock_id: str | None, creator: str | None) -> SeededStock:
        """Another stock than ``stock_id`` (one of ``creator``'s when there is one)."""
        others = [st for sid, st in sorted(self.stocks.items()) if sid != stock_id]
        mine = [st for st in others if st.creator_mchid == creator]
        return (mine or others)[0]

    def _v2_replaced(self, answer: _V2Answer, **values: str) -> _V2Answer:
        fields = [(k, values.get(k, v)) for k, v in answer.fields]
        names = {k for k, _ in fields}
        fields += [(k, v) for k, v in values.items() if k not in names]
        return _V2Answer(fields, answer.key, answer.sign_type)

    def _v2_mutate(self, fault: Fault, answer: _V2Answer) -> SandboxReply:
        kind = fault.kind
        if kind in _WIRE_FAULTS:
            return _wire_fault(fault, self._v2_render(answer), self.bomb_bytes)
        sent = dict(answer.fields)
        if kind == F.WRONG_STOCK:
            another = self._other_stock(sent.get("coupon_stock_id"), sent.get("mch_id"))
            envelope = [(k, v) for k, v in answer.fields if k in _V2_ENVELOPE]
            fields = [*envelope, ("result_code", "SUCCESS"), *another.v2_fields().items()]
            return self._v2_render(_V2Answer(fields, answer.key, answer.sign_type))
        if kind == F.WRONG_MERCHANT:
            return self._v2_render(self._v2_replaced(answer, mch_id=OTHER_MCH_ID))
        if kind == F.WRONG_APPID:
            return self._v2_render(self._v2_replaced(answer, appid=OTHER_APPID))
        if kind == F.UNSIGNED_FAIL:
            stock = self.stocks.get(sent.get("coupon_stock_id", "")) or self._other_stock(
                None, sent.get("mch_id")
            )
            forged = [
                ("return_code", "FAIL"),
                ("return_msg", "系统繁忙,请稍后再试"),
                *[(k, v) for k, v in answer.fields if k in ("appid", "mch_id", "nonce_str")],
                ("result_code", "SUCCESS"),
                *{**stock.v2_fields(), "coupon_value": "999999"}.items(),
            ]
            return _reply(200, _XML_CT, render_xml(forged))
        if kind == F.DELAY:
            return self._v2_render(answer, delay_s=fault.delay_s)
        if kind == F.HUGE_BODY:
            answer.fields.append(("padding", "x" * self.huge_body_bytes))
            return self._v2_render(answer)
        signed = self._v2_signed(answer)
        if kind == F.TRUNCATED:
            full = render_xml(signed)
            return SandboxReply(
                200,
                (("content-type", _XML_CT), ("content-length", str(len(full)))),
                full[: len(full) // 2],
                drop="truncate",
            )
        if kind == F.MALFORMED:
            body = render_xml(signed)
            return _reply(200, _XML_CT, body[: -len(b"</xml>")] + b"<coupon_name>")
        if kind == F.WRONG_CONTENT_TYPE:
            return _reply(200, _HTML_CT, render_xml(signed))
        if kind == F.MISSING_SIGNATURE:
            return _reply(200, _XML_CT, render_xml(answer.fields))
        if kind == F.BAD_SIGNATURE:
            if answer.key is not None:
                other = [(k, v + "0" if k == "nonce_str" else v) for k, v in answer.fields]
                bad = v2_sign(dict(other), answer.key, answer.sign_type)
            else:
                bad = secrets.token_hex(16).upper()
            return _reply(200, _XML_CT, render_xml([*answer.fields, ("sign", bad)]))
        if kind == F.TAMPERED_BODY:
            names = [k for k, _ in signed]
            target = "coupon_name" if "coupon_name" in names else "return_msg"
            tampered = [(k, v + "(改)" if k == target else v) for k, v in signed]
            return _reply(200, _XML_CT, render_xml(tampered))
        raise AssertionError(f"unhandled v2 fault {kind}")  # pragma: no cover

    # ------------------------------------------------------------------ v3

    def _v3_signer(self, request: SandboxRequest) -> tuple[rsa.RSAPrivateKey, str, bool]:
        serial = request.headers.get("wechatpay-serial", "")
        if serial.startswith("PUB_KEY_ID_"):
            if serial == self.state.pub_key_id:
                return self._pub_private, self.state.pub_key_id, True
            return self._platform_private, self.state.platform_serial, False
        return self._platform_private, self.state.platform_serial, True

    def _handle_v3(self, request: SandboxRequest, path: str) -> SandboxReply:
        is_stock = path.startswith(V3_STOCK_PREFIX) and "/" not in path[len(V3_STOCK_PREFIX) :]
        stock_id = unquote(path[len(V3_STOCK_PREFIX) :]) if is_stock else None
        fault = self._faults.take("v3", stock_id or None) if is_stock else None
        self._record("v3", request, path, stock_id, fault)
        key, serial, serial_ok = self._v3_signer(request)

        if fault is not None:
            if fault.kind in _V3_TRANSIENT:
                status, code, message = _V3_TRANSIENT[fault.kind]
                return self._v3_render(
                    _V3Answer(status, {"code": code, "message": message}, key, serial)
                )
            if fault.kind == F.V3_ERROR:
                status, code = int(fault.args[0]), fault.args[1]
                payload = {"code": code, "message": f"sandbox fault {code}"}
                # a 401 means the request's signature did not verify: WeChat Pay signs nothing
                return self._v3_render(_V3Answer(status, payload, key, serial, status != 401))
            if fault.kind == F.RESET:
                return SandboxReply(0, (), b"", drop="reset")

        answer = self._v3_answer(request, path, key, serial, serial_ok, stock_id, is_stock)
        if fault is None or (not answer.signed and fault.kind not in _WIRE_FAULTS):
            return self._v3_render(answer)
        return self._v3_mutate(fault, answer, request)

    def _v3_error(
        self, status: int, code: str, message: str, key: rsa.RSAPrivateKey, serial: str
    ) -> _V3Answer:
        return _V3Answer(status, {"code": code, "message": message}, key, serial)

    def _v3_answer(
        self,
        request: SandboxRequest,
        path: str,
        key: rsa.RSAPrivateKey,
        serial: str,
        serial_ok: bool,
        stock_id: str | None,
        is_stock: bool,
    ) -> _V3Answer:
        merchant, problem = self._v3_authenticate(request)
        if merchant is None:
            refused = self._v3_error(401, "SIGN_ERROR", f"签名错误: {problem}", key, serial)
            refused.signed = False  # the request's signature did not verify: no answer signature
            return refused
        if not _accepts_json(request.headers.get("accept")):
            return self._v3_error(
                400,
                "INVALID_REQUEST",
                "HTTP头缺少 Accept: application/json (Accept header missing or not JSON)",
                key,
                serial,
            )
        if not serial_ok:
            return self._v3_error(
                400, "PARAM_ERROR", "Wechatpay-Serial 不是该商户的微信支付公钥ID", key, serial
            )
        if path == V3_CERTIFICATES_PATH and request.method == "GET":
            return self._v3_certificates(merchant)
        if not is_stock:
            return self._v3_error(404, "NOT_FOUND", "请求的资源不存在 (unknown path)", key, serial)
        if request.method != "GET":
            return self._v3_error(405, "INVALID_REQUEST", "请使用GET方法", key, serial)
        query = parse_qs(
            request.target.partition(b"?")[2].decode("utf-8", "replace"), keep_blank_values=True
        )
        creators = query.get("stock_creator_mchid", [])
        if len(creators) != 1 or not _MCHID.match(creators[0]):
            return self._v3_error(
                400, "PARAM_ERROR", "stock_creator_mchid 缺失或格式错误", key, serial
            )
        if stock_id is None or not _V3_ID.match(stock_id):
            return self._v3_error(400, "PARAM_ERROR", "stock_id 缺失或格式错误", key, serial)
        stock = self.stocks.get(stock_id)
        if stock is None or stock.creator_mchid != creators[0]:
            return self._v3_error(404, "RESOURCE_NOT_EXISTS", "批次不存在", key, serial)
        return _V3Answer(200, stock.v3_view(), key, serial)

    def _v3_authenticate(self, request: SandboxRequest) -> tuple[Merchant | None, str]:
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
        merchant = self.state.merchants.get(items["mchid"])
        if merchant is None:
            return None, "unknown mchid"
        if items["serial_no"] != merchant.cert_serial:
            return None, "serial_no is not the merchant certificate serial"
        ts = items["timestamp"]
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
            return None, "bad timestamp"
        if abs(self.clock() - int(ts)) > V3_TIMESTAMP_WINDOW_S:
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

    def _v3_certificates(self, merchant: Merchant) -> _V3Answer:
        cert = self.state.platform_cert_pem
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
                    "serial_no": self.state.platform_serial,
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
        return _V3Answer(200, payload, self._platform_private, self.state.platform_serial)

    def _v3_headers(
        self,
        body: bytes,
        key: rsa.RSAPrivateKey,
        serial: str,
        *,
        timestamp: int | None = None,
        content_type: str = _JSON_CT,
        signature: str | None = None,
        omit_signature: bool = False,
        sign_body: bytes | None = None,
    ) -> tuple[tuple[str, str], ...]:
        ts = str(int(self.clock()) if timestamp is None else timestamp)
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

    def _v3_render(self, answer: _V3Answer, delay_s: float = 0.0) -> SandboxReply:
        body = _json_bytes(answer.payload)
        if not answer.signed:
            headers: tuple[tuple[str, str], ...] = (
                ("content-type", _JSON_CT),
                ("request-id", uuid.uuid4().hex.upper() + "-0"),
                ("content-length", str(len(body))),
            )
        else:
            headers = self._v3_headers(body, answer.private_key, answer.serial)
        return SandboxReply(answer.status, headers, body, delay_s=delay_s)

    def _v3_mutate(self, fault: Fault, answer: _V3Answer, request: SandboxRequest) -> SandboxReply:
        kind = fault.kind
        key, serial = answer.private_key, answer.serial
        if kind in _WIRE_FAULTS:
            return _wire_fault(fault, self._v3_render(answer), self.bomb_bytes)
        if kind == F.WRONG_STOCK:
            asked = unquote(request.target.partition(b"?")[0].decode("latin-1"))
            asked_id = asked.rsplit("/", 1)[-1]
            creator = parse_qs(request.target.partition(b"?")[2].decode("latin-1")).get(
                "stock_creator_mchid", [None]
            )[0]
            other = self._other_stock(asked_id, creator)
            return self._v3_render(_V3Answer(200, other.v3_view(), key, serial))
        if kind == F.WRONG_MERCHANT:
            payload = dict(answer.payload)
            if "stock_creator_mchid" in payload:
                payload["stock_creator_mchid"] = OTHER_MCH_ID
            return self._v3_render(_V3Answer(answer.status, payload, key, serial))
        if kind == F.DELAY:
            return self._v3_render(answer, delay_s=fault.delay_s)
        if kind == F.HUGE_BODY:
            payload = dict(answer.payload)
            payload["padding"] = "x" * self.huge_body_bytes
            return self._v3_render(_V3Answer(answer.status, payload, key, serial))
        body = _json_bytes(answer.payload)
        if kind == F.TRUNCATED:
            headers = self._v3_headers(body, key, serial)
            return SandboxReply(answer.status, headers, body[: len(body) // 2], drop="truncate")
        if kind == F.MALFORMED:
            broken = body[: len(body) // 2]
            return SandboxReply(answer.status, self._v3_headers(broken, key, serial), broken)
        if kind == F.WRONG_CONTENT_TYPE:
            headers = self._v3_headers(body, key, serial, content_type=_HTML_CT)
            return SandboxReply(answer.status, headers, body)
        if kind == F.MISSING_SIGNATURE:
            headers = self._v3_headers(body, key, serial, omit_signature=True)
            return SandboxReply(answer.status, headers, body)
        if kind == F.BAD_SIGNATURE:
            wrong = body + b" "
            headers = self._v3_headers(body, key, serial, sign_body=wrong)
            return SandboxReply(answer.status, headers, body)
        if kind == F.STALE_SIGNATURE:
            headers = self._v3_headers(body, key, serial, timestamp=int(self.clock()) - 600)
            return SandboxReply(answer.status, headers, body)
        if kind == F.UNKNOWN_SERIAL:
            if serial.startswith("PUB_KEY_ID_"):
                unknown = "PUB_KEY_ID_" + "0" * 34
            else:
                unknown = format(secrets.randbits(156) | (1 << 156), "X")
            headers = self._v3_headers(body, key, unknown)
            return SandboxReply(answer.status, headers, body)
        if kind == F.SIGNTEST:
            probe = "WECHATPAY/SIGNTEST/" + base64.b64encode(secrets.token_bytes(256)).decode()
            headers = self._v3_headers(body, key, serial, signature=probe)
            return SandboxReply(answer.status, headers, body)
        if kind == F.TAMPERED_BODY:
            payload = dict(answer.payload)
            if isinstance(payload.get("distributed_coupons"), int):
                payload["distributed_coupons"] += 1
            else:
                payload["message"] = str(payload.get("message", "")) + "(改)"
            tampered = _json_bytes(payload)
            headers = self._v3_headers(tampered, key, serial, sign_body=body)
            return SandboxReply(answer.status, headers, tampered)
        raise AssertionError(f"unhandled v3 fault {kind}")  # pragma: no cover


__all__ = [
    "Emulator",
    "RecordedRequest",
    "SandboxReply",
    "SandboxRequest",
]
