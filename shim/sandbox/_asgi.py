"""The ASGI plug: a Starlette application in front of the emulator's handler.

``/__admin/faults`` is an ordinary Starlette route (loopback clients only). Every other HTTP
request goes straight to :meth:`Emulator.handle` through a raw ASGI path, because two faults
need the connection itself:

* ``reset``: under uvicorn (h11) the emulator reaches the connection's transport, sets
  ``SO_LINGER`` to 0 and aborts it, so the peer gets a TCP RST and no byte of an answer
  (httpx: ``ReadError``/``RemoteProtocolError``; requests: ``ConnectionError``). Under any other
  ASGI server it raises :class:`SandboxConnectionDropped` before starting a response, and the
  server decides (uvicorn would send a 500; ``httpx.ASGITransport`` re-raises it).
* ``truncated``: the headers (with the full Content-Length) and half the body are sent, then the
  connection is closed; elsewhere the exception is raised after the partial body.
* ``header_drip``: under uvicorn the emulator writes the status line and headers on the raw
  connection one byte per interval, then the body, then closes; elsewhere it drips the body.
  ``body_drip`` sends the headers, then one body byte per interval. Both stop when the client
  goes away or the server stops.

``delay`` sleeps with ``anyio.sleep`` in short steps, so other requests are served meanwhile
and a stopping ``serve()`` cuts the wait short.

Needs the ``sandbox`` extra (starlette); :attr:`Emulator.asgi_app` checks it first.
"""

from __future__ import annotations

import socket
import struct
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._faults import SandboxConnectionDropped
from ._messages import ADMIN_FAULTS_PATH, SandboxReply, SandboxRequest
from ._server import STOPPING_SCOPE_KEY

if TYPE_CHECKING:
    from ._emulator import Emulator

#: Request bodies beyond this are not read (the v2 side then answers "too large").
MAX_READ_BYTES = 1024 * 1024


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_READ_BYTES:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _uvicorn_cycle(send: Send) -> tuple[Any, Any] | None:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return None
    return cycle, transport


async def _wait_disconnected(cycle: Any) -> None:
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await anyio.sleep(0.005)


async def _sleep(delay_s: float, scope: Scope) -> None:
    stopping = scope.get(STOPPING_SCOPE_KEY)
    deadline = anyio.current_time() + delay_s
    while True:
        left = deadline - anyio.current_time()
        if left <= 0:
            return
        if isinstance(stopping, threading.Event) and stopping.is_set():
            return
        await anyio.sleep(min(left, 0.02))


def _raw_head(reply: SandboxReply) -> bytes:
    """The status line and headers of ``reply`` as HTTP/1.1 bytes."""
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {reason}", *(f"{k}: {v}" for k, v in reply.headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _gone(cycle: Any, transport: Any, scope: Scope) -> bool:
    stopping = scope.get(STOPPING_SCOPE_KEY)
    return (
        bool(getattr(cycle, "disconnected", False))
        or transport.is_closing()
        or (isinstance(stopping, threading.Event) and stopping.is_set())
    )


async def _drip_headers(reply: SandboxReply, send: Send, scope: Scope) -> None:
    """Write the whole answer on the raw connection, head one byte at a time, then close."""
    found = _uvicorn_cycle(send)
    if found is None:  # not uvicorn: the best an ASGI app can do is drip the body
        await _drip_body(reply, send, scope)
        return
    cycle, transport = found
    for i, byte in enumerate(_raw_head(reply)):
        if _gone(cycle, transport, scope):
            break
        if i:
            await _sleep(reply.drip_interval_s, scope)
        transport.write(bytes((byte,)))
    else:
        transport.write(reply.body)
    transport.close()
    await _wait_disconnected(cycle)


async def _drip_body(reply: SandboxReply, send: Send, scope: Scope) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    found = _uvicorn_cycle(send)
    for i in range(len(reply.body)):
        if found is not None and _gone(*found, scope):
            return
        if i:
            await _sleep(reply.drip_interval_s, scope)
        await send({"type": "http.response.body", "body": reply.body[i : i + 1], "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_reply(reply: SandboxReply, send: Send, scope: Scope | None = None) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if reply.drip == "headers":
        await _drip_headers(reply, send, scope or {})
        return
    if reply.drip == "body":
        await _drip_body(reply, send, scope or {})
        return
    if reply.drop == "reset":
        found = _uvicorn_cycle(send)
        if found is None:
            raise SandboxConnectionDropped("sandbox fault: connection reset")
        cycle, transport = found
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await _wait_disconnected(cycle)
        return
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if reply.drop == "truncate":
        await send({"type": "http.response.body", "body": reply.body, "more_body": True})
        found = _uvicorn_cycle(send)
        if found is None:
            raise SandboxConnectionDropped("sandbox fault: truncated answer")
        cycle, transport = found
        transport.close()
        await _wait_disconnected(cycle)
        return
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


class SandboxApp(Starlette):
    """The emulator as a Starlette application (admin routes + raw protocol path)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(
            routes=[Route(ADMIN_FAULTS_PATH, self._admin, methods=["GET", "POST", "DELETE"])]
        )

    async def _admin(self, request: Request) -> Response:
        host = request.client.host if request.client else None
        body = await request.body()
        target = request.url.path.encode() + (
            b"?" + request.url.query.encode() if request.url.query else b""
        )
        status, payload = self.emulator.admin(request.method, body, host, target)
        return JSONResponse(payload, status_code=status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == ADMIN_FAULTS_PATH:
            await super().__call__(scope, receive, send)
            return
        body, too_large = await _read_body(receive)
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = raw_path + (b"?" + query if query else b"")
        client = scope.get("client")
        request = SandboxRequest(
            method=scope["method"],
            target=target,
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            client_host=client[0] if client else None,
            body_too_large=too_large,
        )
        reply = self.emulator.handle(request)
        if reply.delay_s > 0:
            await _sleep(reply.delay_s, scope)
        await _send_reply(reply, send, scope)


def build_asgi_app(emulator: Emulator) -> SandboxApp:
    """Build the Starlette application serving ``emulator``."""
    return SandboxApp(emulator)
