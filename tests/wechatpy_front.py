"""The emulator behind a loopback front that also plays the v2 endpoints it does not serve.

The emulator only speaks the coupon stock APIs. A wechatpy script also calls other API groups
(``order.query`` → ``POST /pay/orderquery``) and may run against WeChat Pay's v2 sandbox
(``/sandboxnew/…`` with a key from ``/sandboxnew/pay/getsignkey``). This front serves those
itself — checking request signatures as strictly as the emulator — and passes everything else
to the emulator's own ASGI app, on one real uvicorn server.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shim.sandbox import (
    Emulator,
    RunningServer,
    SandboxState,
    parse_request_xml,
    render_xml,
    serve,
    v2_sign,
)

ORDER_PATH = "/pay/orderquery"
SANDBOX_PREFIX = "/sandboxnew"
SIGNKEY_PATH = "/sandboxnew/pay/getsignkey"


@dataclass
class FrontLog:
    """What the front served itself (paths in order)."""

    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str) -> None:
        with self.lock:
            self.paths.append(path)

    def clear(self) -> None:
        with self.lock:
            self.paths.clear()


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _xml_reply(send: Any, fields: dict[str, str], status: int = 200) -> None:
    body = render_xml(fields)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/xml; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Front:
    """ASGI: ``/pay/orderquery`` and the sandbox key here, the rest to the emulator."""

    def __init__(self, emulator: Emulator, state: SandboxState) -> None:
        self.emulator = emulator
        self.state = state
        self.asgi_app = self  # what shim.sandbox.serve() serves
        self.log = FrontLog()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.emulator.asgi_app(scope, receive, send)
            return
        path = scope["path"]
        if path == ORDER_PATH:
            self.log.add(path)
            await self._order_query(await _body(receive), send)
            return
        if path == SIGNKEY_PATH:
            self.log.add(path)
            fields = parse_request_xml(await _body(receive))
            merchant = self.state.merchants[fields["mch_id"]]
            # The sandbox's own key: the one the emulator checks v2 signatures with.
            answer = {"return_code": "SUCCESS", "return_msg": "ok", "mch_id": merchant.mchid}
            answer["sandbox_signkey"] = merchant.v2_key
            await _xml_reply(send, answer)
            return
        if path.startswith(SANDBOX_PREFIX + "/"):
            self.log.add(path)
            inner = path[len(SANDBOX_PREFIX) :]
            scope = dict(scope, path=inner, raw_path=inner.encode("latin-1"))
        await self.emulator.asgi_app(scope, receive, send)

    async def _order_query(self, body: bytes, send: Any) -> None:
        fields = parse_request_xml(body)
        merchant = self.state.merchants.get(fields.get("mch_id", ""))
        expected = v2_sign(fields, merchant.v2_key) if merchant else ""
        if merchant is None or not hmac.compare_digest(fields.get("sign", ""), expected):
            await _xml_reply(send, {"return_code": "FAIL", "return_msg": "签名错误"})
            return
        answer = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": fields["appid"],
            "mch_id": merchant.mchid,
            "nonce_str": "f4ke0rd3rn0nce",
            "result_code": "SUCCESS",
            "out_trade_no": fields.get("out_trade_no", ""),
            "trade_state": "SUCCESS",
        }
        answer["sign"] = v2_sign(answer, merchant.v2_key)
        await _xml_reply(send, answer)


@contextmanager
def serve_front(emulator: Emulator, state: SandboxState) -> Iterator[tuple[RunningServer, Front]]:
    """The front on a real loopback uvicorn server."""
    front = Front(emulator, state)
    with serve(front) as running:  # type: ignore[arg-type]
        yield running, front
