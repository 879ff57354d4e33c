"""The in-process plug: an ``httpx.MockTransport`` that calls the emulator directly.

``delay`` sleeps with ``time.sleep`` for a sync client and ``anyio.sleep`` for an async one;
when the client's read timeout is shorter than the delay, it sleeps that long and raises
``httpx.ReadTimeout``, as a real socket would (a MockTransport is otherwise blind to timeouts);
``reset`` raises ``httpx.ReadError`` (what httpx raises on a connection reset);
``truncated`` streams the partial body then raises ``httpx.RemoteProtocolError`` (what httpx
raises when a peer closes before the promised Content-Length); ``body_drip`` streams the body
one byte per interval; ``header_drip`` waits as long as the head would take to drip (there is
no socket to drip on); an answer head over 100 KiB (``oversized_headers``) raises
``httpx.RemoteProtocolError`` as httpcore's parser does on a socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, NoReturn

import anyio
import httpx

from ._messages import SandboxReply, SandboxRequest

if TYPE_CHECKING:
    from ._emulator import Emulator


class _TruncatedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, partial: bytes, promised: str | None, request: httpx.Request) -> None:
        self._partial = partial
        self._promised = promised
        self._request = request

    def _fail(self) -> NoReturn:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body "
            f"(received {len(self._partial)} bytes, expected {self._promised})",
            request=self._request,
        )

    def __iter__(self) -> Iterator[bytes]:
        yield self._partial
        self._fail()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._partial
        self._fail()


class _DripStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body one byte per interval (``body_drip``)."""

    def __init__(self, body: bytes, interval_s: float) -> None:
        self._body = body
        self._interval_s = interval_s

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self._body)):
            if i:
                time.sleep(self._interval_s)
            yield self._body[i : i + 1]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(len(self._body)):
            if i:
                await anyio.sleep(self._interval_s)
            yield self._body[i : i + 1]


#: What httpcore's HTTP/1.1 parser accepts for a status line and headers (``h11``'s
#: ``max_incomplete_event_size`` as httpcore sets it); larger heads fail as on a socket.
MAX_HEAD_BYTES = 100 * 1024


def _head_bytes(reply: SandboxReply) -> int:
    return 20 + sum(len(k) + len(v) + 4 for k, v in reply.headers)


def _wait_for(reply: SandboxReply, request: httpx.Request) -> tuple[float, bool]:
    timeouts = request.extensions.get("timeout") or {}
    read = timeouts.get("read") if isinstance(timeouts, dict) else None
    if isinstance(read, (int, float)) and read < reply.delay_s:
        return float(read), True
    return reply.delay_s, False


def _unexpected(request: httpx.Request) -> httpx.Response:  # pragma: no cover
    raise AssertionError("SandboxTransport overrides both handle methods")


class SandboxTransport(httpx.MockTransport):
    """Serves requests from an :class:`Emulator` in-process (sync and async clients)."""

    def __init__(self, emulator: Emulator) -> None:
        super().__init__(_unexpected)
        self.emulator = emulator

    def _to_sandbox(self, request: httpx.Request) -> SandboxRequest:
        return SandboxRequest(
            method=request.method,
            target=request.url.raw_path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.content,
            client_host="127.0.0.1",
        )

    def _to_httpx(self, reply: SandboxReply, request: httpx.Request) -> httpx.Response:
        if _head_bytes(reply) > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("Receive buffer too long", request=request)
        if reply.drip == "body":
            return httpx.Response(
                reply.status,
                headers=list(reply.headers),
                stream=_DripStream(reply.body, reply.drip_interval_s),
                request=request,
            )
        if reply.drop == "reset":
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        if reply.drop == "truncate":
            stream = _TruncatedStream(reply.body, reply.header("content-length"), request)
            return httpx.Response(
                reply.status, headers=list(reply.headers), stream=stream, request=request
            )
        return httpx.Response(
            reply.status, headers=list(reply.headers), content=reply.body, request=request
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer a sync client's request."""
        request.read()
        reply = self.emulator.handle(self._to_sandbox(request))
        if reply.drip == "headers":
            time.sleep(_head_bytes(reply) * reply.drip_interval_s)
        if reply.delay_s > 0:
            wait, timed_out = _wait_for(reply, request)
            time.sleep(wait)
            if timed_out:
                raise httpx.ReadTimeout("timed out", request=request)
        return self._to_httpx(reply, request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer an async client's request without blocking the event loop."""
        await request.aread()
        reply = self.emulator.handle(self._to_sandbox(request))
        if reply.drip == "headers":
            await anyio.sleep(_head_bytes(reply) * reply.drip_interval_s)
        if reply.delay_s > 0:
            wait, timed_out = _wait_for(reply, request)
            await anyio.sleep(wait)
            if timed_out:
                raise httpx.ReadTimeout("timed out", request=request)
        return self._to_httpx(reply, request)
