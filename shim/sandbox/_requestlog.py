"""One line per request for ``coupon-shim sandbox --log-requests``.

A line names what a person debugging their client needs: the method and path, the side, the
merchant and the stock the request was about, the fault that was armed for it, the HTTP status
and WeChat Pay's own verdict (the v2 ``result_code``/``err_code`` or the v3 error ``code``)::

    21:30:07 POST /mmpaymkttransfers/query_coupon_stock v2 mch=10000098 stock=1757 fault=-
        status=200 answer=FAIL:SIGN_ERROR

(one line when printed).

Values from the request are cut to a safe alphabet and length (a hostile client cannot forge
lines), and nothing secret (signs, keys, Authorization headers) is ever shown.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from ._emulator import Emulator
from ._messages import ADMIN_FAULTS_PATH, V3_STOCK_PREFIX, SandboxReply, SandboxRequest
from ._v2 import V2XmlError, parse_request_xml

__all__ = ["RequestLine", "RequestLogger"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:*/-]")
_MCHID_IN_AUTH = re.compile(r'mchid="([^"]{0,64})"')
_XML_FIELD = re.compile(rb"<(return_code|result_code|err_code)>(?:<!\[CDATA\[)?([^<\]]{0,64})")


def _safe(value: str | None, limit: int = 40) -> str:
    if not value:
        return "-"
    cleaned = _UNSAFE.sub("?", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass(frozen=True)
class RequestLine:
    """What one request was and how it was answered."""

    method: str
    path: str
    side: str
    merchant: str | None
    stock: str | None
    fault: str | None
    status: int | str
    answer: str | None
    at: float

    def render(self) -> str:
        """The line as printed (UTC time of day first)."""
        clock = time.strftime("%H:%M:%S", time.gmtime(self.at))
        return (
            f"{clock} {_safe(self.method, 8)} {_safe(self.path, 80)} {self.side} "
            f"mch={_safe(self.merchant)} stock={_safe(self.stock)} fault={_safe(self.fault)} "
            f"status={self.status} answer={_safe(self.answer, 60)}"
        )


def _v2_fields(body: bytes) -> dict[str, str]:
    try:
        return parse_request_xml(body)
    except (V2XmlError, ValueError):
        return {}


def _v2_answer(body: bytes) -> str | None:
    found: dict[str, str] = {
        k.decode(): v.decode("utf-8", "replace") for k, v in _XML_FIELD.findall(body[:65536])
    }
    if not found:
        return None
    if found.get("return_code") != "SUCCESS":
        return "return_code=" + found.get("return_code", "?")
    if found.get("result_code") == "SUCCESS":
        return "SUCCESS"
    return "FAIL:" + found.get("err_code", "?")


def _v3_answer(reply: SandboxReply) -> str | None:
    if reply.status < 400:
        return "ok"
    try:
        payload = json.loads(reply.body[:65536])
    except ValueError:
        return None
    return str(payload.get("code")) if isinstance(payload, dict) else None


def describe(
    request: SandboxRequest, reply: SandboxReply, fault: str | None, at: float
) -> RequestLine:
    """Describe one handled request (without any secret)."""
    path, _, query = request.target.decode("latin-1").partition("?")
    status: int | str = reply.drop or reply.status
    if path == ADMIN_FAULTS_PATH:
        return RequestLine(request.method, path, "admin", None, None, None, status, None, at)
    if path.startswith("/v3/"):
        found = _MCHID_IN_AUTH.search(request.headers.get("authorization", ""))
        merchant = found.group(1) if found else None
        merchant = merchant or parse_qs(query).get("stock_creator_mchid", [None])[0]
        stock = path[len(V3_STOCK_PREFIX) :] if path.startswith(V3_STOCK_PREFIX) else None
        answer = None if reply.drop else _v3_answer(reply)
        return RequestLine(request.method, path, "v3", merchant, stock, fault, status, answer, at)
    fields = _v2_fields(request.body) if request.body else {}
    answer = None if reply.drop else _v2_answer(reply.body)
    return RequestLine(
        request.method,
        path,
        "v2",
        fields.get("mch_id"),
        fields.get("coupon_stock_id"),
        fault,
        status,
        answer,
        at,
    )


class RequestLogger:
    """Calls ``emit`` with one rendered line per request the emulator handles.

    Wraps :meth:`Emulator.handle` of one emulator (``uninstall`` restores it). The armed fault
    a request met is read from the emulator's request record made during that call.
    """

    def __init__(self, emulator: Emulator, emit: Callable[[str], object]) -> None:
        self._emulator = emulator
        self._emit = emit
        self._handle_original = emulator.handle
        self._admin_original = emulator.admin
        self._lock = threading.Lock()
        emulator.handle = self._handle  # type: ignore[method-assign]
        emulator.admin = self._admin  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Stop logging: the emulator's own handlers are used again."""
        self._emulator.handle = self._handle_original  # type: ignore[method-assign]
        self._emulator.admin = self._admin_original  # type: ignore[method-assign]

    def _write(self, line: RequestLine) -> None:
        with contextlib.suppress(Exception):  # a broken log sink never breaks the emulator
            self._emit(line.render())

    def _handle(self, request: SandboxRequest) -> SandboxReply:
        with self._lock:  # one request at a time, so the record read is this request's
            before = self._emulator.requests[-1:]
            reply = self._handle_original(request)
            after = self._emulator.requests[-1:]
        is_new = bool(after) and (not before or after[0] is not before[0])
        fault = after[0].fault if is_new else None
        path = request.target.partition(b"?")[0].decode("latin-1")
        if path != ADMIN_FAULTS_PATH:  # admin calls are logged by _admin
            self._write(describe(request, reply, fault, time.time()))
        return reply

    def _admin(
        self, method: str, body: bytes, client_host: str | None, target: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        status, payload = self._admin_original(method, body, client_host, target)
        path = target.partition(b"?")[0].decode("latin-1") or ADMIN_FAULTS_PATH
        armed = payload.get("armed") if isinstance(payload, dict) else None
        stock = armed.get("stock_id") if isinstance(armed, dict) else None
        fault = armed.get("fault") if isinstance(armed, dict) else None
        side = armed.get("side") if isinstance(armed, dict) else None
        answer = f"armed:{side}" if side else None
        if isinstance(payload, dict) and "cleared" in payload:
            answer = f"cleared:{payload['cleared']}"
        line = RequestLine(method, path, "admin", None, stock, fault, status, answer, time.time())
        self._write(line)
        return status, payload
