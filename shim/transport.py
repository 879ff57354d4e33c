"""The two drivers of a flow: they only do I/O (send, read with a cap, sleep).

``run_sync`` drives a flow with an ``httpx.Client``, ``run_async`` with an
``httpx.AsyncClient``. Everything they decide is in :class:`_BodyReader` and
:func:`_failure`, shared by both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from shim.flow import Flow, HttpRequest, HttpResponse, Sleep, T, TransportFailure
from shim.wire import parse_uint

__all__ = ["run_async", "run_sync"]


def _timeout(req: HttpRequest, now: float) -> httpx.Timeout | None:
    remaining = req.deadline - now
    if remaining <= 0:
        return None
    read = min(req.timeout_s, remaining)
    return httpx.Timeout(read, connect=min(req.connect_timeout_s, remaining), pool=read)


def _failure(exc: Exception) -> TransportFailure:
    """Classify only the httpx errors we mean; nothing else is swallowed."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure("timeout", f"timed out ({name})")
    if isinstance(exc, (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return TransportFailure("connection", f"connection failed ({name})")
    if isinstance(exc, httpx.RemoteProtocolError):
        # The peer closed the connection before a whole answer ("server disconnected without
        # sending a response", a body shorter than its Content-Length) or broke HTTP framing:
        # nothing usable arrived, and this read-only query is safe to send again.
        return TransportFailure("connection", f"connection broken mid-answer ({name})")
    return TransportFailure("protocol", f"broken HTTP exchange ({name})")


_BUDGET = TransportFailure("budget", "the call's time budget is spent")


class _BodyReader:
    """Accumulate a body under the size cap and the deadline."""

    __slots__ = ("buf", "clock", "req")

    def __init__(self, req: HttpRequest, clock: Callable[[], float]) -> None:
        self.req = req
        self.clock = clock
        self.buf = bytearray()

    def check_length(self, headers: httpx.Headers) -> TransportFailure | None:
        declared = headers.get("content-length", "")
        length = parse_uint(declared) if declared else 0
        if length is None:
            return TransportFailure("protocol", "answer's Content-Length is not ASCII digits")
        if length > self.req.max_body_bytes:
            return TransportFailure(
                "protocol",
                f"answer declares {declared} bytes, over the {self.req.max_body_bytes}-byte cap",
            )
        return None

    def feed(self, chunk: bytes) -> TransportFailure | None:
        self.buf += chunk
        if len(self.buf) > self.req.max_body_bytes:
            return TransportFailure(
                "protocol", f"answer exceeds the {self.req.max_body_bytes}-byte cap"
            )
        if self.clock() > self.req.deadline:
            return _BUDGET
        return None


_ERRORS = (httpx.TransportError, httpx.DecodingError)


def _send_sync(
    client: httpx.Client, req: HttpRequest, clock: Callable[[], float]
) -> HttpResponse | TransportFailure:
    timeout = _timeout(req, clock())
    if timeout is None:
        return _BUDGET
    reader = _BodyReader(req, clock)
    try:
        with client.stream(
            req.method, req.url, headers=req.headers, content=req.body or None, timeout=timeout
        ) as resp:
            failure = reader.check_length(resp.headers)
            if not failure:
                for chunk in resp.iter_bytes():
                    failure = reader.feed(chunk)
                    if failure:
                        break
            return failure or HttpResponse(resp.status_code, resp.headers, bytes(reader.buf))
    except _ERRORS as exc:
        return _failure(exc)


async def _send_async(
    client: httpx.AsyncClient, req: HttpRequest, clock: Callable[[], float]
) -> HttpResponse | TransportFailure:
    timeout = _timeout(req, clock())
    if timeout is None:
        return _BUDGET
    reader = _BodyReader(req, clock)
    try:
        async with client.stream(
            req.method, req.url, headers=req.headers, content=req.body or None, timeout=timeout
        ) as resp:
            failure = reader.check_length(resp.headers)
            if not failure:
                async for chunk in resp.aiter_bytes():
                    failure = reader.feed(chunk)
                    if failure:
                        break
            return failure or HttpResponse(resp.status_code, resp.headers, bytes(reader.buf))
    except _ERRORS as exc:
        return _failure(exc)


def run_sync(flow: Flow[T], client: httpx.Client, clock: Callable[[], float] = time.monotonic) -> T:
    """Drive ``flow`` to its result with blocking I/O."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = flow.send(None)
            else:
                step = flow.send(_send_sync(client, step, clock))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()  # abandoned (e.g. cancelled): the flow's cleanup runs now, not at GC


async def run_async(
    flow: Flow[T], client: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
) -> T:
    """Drive ``flow`` to its result with asyncio I/O."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = flow.send(None)
            else:
                step = flow.send(await _send_async(client, step, clock))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()  # abandoned (e.g. cancelled): the flow's cleanup runs now, not at GC
