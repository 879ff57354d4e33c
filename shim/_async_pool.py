"""The async twin's own upstream connections: HTTP/1.1 on asyncio, framed by h11.

The async driver spends most of a call's CPU in the layers of ``httpx.AsyncClient`` that
the shim does not use (URL merging, cookies, auth, redirects, the response model) and in
anyio's per-operation cancel scopes under httpcore. When the shim owns its client and the
environment names no proxy, :class:`AsyncPool` replaces it: one request is one socket write,
the answer is parsed by ``h11`` (httpcore's own HTTP/1.1 parser, with httpcore's header-size
limit) and its body goes raw into the driver's capped :class:`~shim._transport._BodyReader`.

The bounds are the driver's, kept per socket operation:

- **Time.** Connecting (DNS, TCP, TLS) waits at most the request's ``connect_timeout_s``,
  every read at most its ``timeout_s``, and neither past the call's deadline; the driver's
  whole-exchange timeout stays on top as a backstop.
- **Memory.** At most :data:`_READ_AHEAD` bytes are buffered before the socket stops being
  read; h11 refuses a header block over :data:`MAX_HEADER_BYTES`; the body reader caps the
  rest.
- **Reuse.** A connection returns to the pool only after a whole answer with nothing after
  it and both sides willing to keep it open; an idle connection the peer closed, wrote to
  or left idle past ``keepalive_expiry`` is dropped, never reused.
- **Close.** :meth:`AsyncPool.aclose` aborts every connection, idle or busy: a call waiting
  on one ends as ``closed``. A call cancelled mid-exchange (by its caller or the backstop)
  aborts its connection on the way out.

Failures are classified, and worded, as the httpx path classifies its exceptions.

The codec is shared with the sync twin's pool (``shim._transport.SyncPool``): the request
writer, the sans-IO answer reader (:func:`read_answer`, driven with each pool's own I/O),
the reuse rule (:func:`reusable`) and :class:`PoolBase`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx

from shim._flow import HttpRequest, TransportFailure, header_map

try:  # llhttp, the parser uvicorn uses (the gateway and bench extras): the fast reader
    import httptools
except ImportError:  # pragma: no cover - the tests force h11 by setting this to None
    httptools = None  # type: ignore[assignment]

__all__ = [
    "MAX_HEADER_BYTES",
    "Answer",
    "AsyncPool",
    "PoolBase",
    "fast_reader",
    "read_answer",
    "reusable",
]

#: The largest header block accepted (httpcore's limit for h11).
MAX_HEADER_BYTES = 100 * 1024
_READ_AHEAD = 64 * 1024  # bytes buffered before the socket is paused
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLOSE_WAIT_S = 1.0  # how long aclose() lets aborted sockets finish closing


class _Closed(Exception):
    """The pool was closed while a call used one of its connections."""


class _Timeout(Exception):
    """A socket operation waited its whole timeout."""


class _Conn(asyncio.Protocol):
    """One upstream connection: a byte buffer the exchange reads with a deadline."""

    __slots__ = (
        "_buffer",
        "_paused",
        "_waiter",
        "_write_waiter",
        "closed",
        "eof",
        "error",
        "h11",
        "idle_since",
        "loop",
        "lost",
        "transport",
        "writable",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buffer = bytearray()
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.eof = False
        self.error: Exception | None = None  # why the connection was lost (a reset)
        self.closed = False  # by us (aborted) or by the pool
        self.writable = True
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()  # set once the socket closed

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _READ_AHEAD and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what an exchange uses

    def reusable(self, now: float, expiry: float | None) -> bool:
        """Idle and sound: no bytes nor EOF from the peer since its last answer."""
        if self.closed or self.eof or self._buffer or self.transport is None:
            return False
        if self.transport.is_closing():
            return False
        return expiry is None or now - self.idle_since < expiry

    async def _wait(self, fut: asyncio.Future[None], seconds: float) -> None:
        if seconds <= 0:
            raise _Timeout
        timer = self.loop.call_later(seconds, _expire, fut)
        try:
            await fut
        finally:
            timer.cancel()

    async def write(self, data: bytes, seconds: float) -> None:
        if self.closed or self.transport is None:
            raise _Closed
        self.transport.write(data)
        while not self.writable and not self.closed:
            fut = self._write_waiter = self.loop.create_future()
            await self._wait(fut, seconds)
        if self.closed:
            raise _Closed

    async def read(self, seconds: float) -> bytes:
        """What arrived (b"" at EOF), waiting at most ``seconds`` for the first byte."""
        while not self._buffer and not self.eof:
            if self.closed:
                raise _Closed
            fut = self._waiter = self.loop.create_future()
            await self._wait(fut, seconds)
        if self.closed:
            raise _Closed
        if not self._buffer and self.error is not None:
            raise OSError(str(self.error))
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def abort(self) -> None:
        """Drop the connection now (and wake whoever waits on it)."""
        self.closed = True
        if self.transport is not None:
            try:
                self.transport.abort()
            except RuntimeError:  # its event loop is closed: finish the close it cannot
                finish = getattr(self.transport, "_call_connection_lost", None)
                if finish is not None:  # (asyncio's selector transport: closes the socket)
                    with contextlib.suppress(RuntimeError):  # (a waiter of the closed loop)
                        finish(None)
        self._wake()
        self.resume_writing()


def _abandon(task: asyncio.Future[tuple[asyncio.Transport, _Conn]]) -> None:
    """Give up on a connection attempt: cancel it, and close what it makes all the same."""
    task.cancel()
    task.add_done_callback(_close_made)


def _close_made(task: asyncio.Future[tuple[asyncio.Transport, _Conn]]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:  # (also marks a failure as retrieved)
        task.result()[1].abort()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(_Timeout())


def _timed_out(name: str) -> TransportFailure:
    return TransportFailure("timeout", f"timed out ({name})")


def _broken(name: str) -> TransportFailure:
    return TransportFailure("connection", f"connection failed ({name})")


_MID_ANSWER = TransportFailure("connection", "connection broken mid-answer (RemoteProtocolError)")
_CLOSED = TransportFailure("closed", "the shim is closed")


class _Origin:
    """Where a URL's request goes and what its request line and Host header say."""

    __slots__ = ("host", "host_header", "key", "port", "scheme", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
            raise ValueError(url[:60])
        self.host = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[self.scheme]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == _DEFAULT_PORTS[self.scheme]
        self.host_header = shown if default else f"{shown}:{self.port}"
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.key = (self.scheme, self.host, self.port)


def _request_headers(
    req: HttpRequest,
    origin: _Origin,
    extra: tuple[str, str],
    given: set[str] | None = None,
) -> list[tuple[str, str]]:
    """The request's headers as httpx sends them: its defaults (unless the call gives its
    own), then the call's, then the body's length."""
    if given is None:
        given = {name.lower() for name, _ in req.headers}
    headers: list[tuple[str, str]] = [("Host", origin.host_header)]
    for name, value in (
        ("Accept", "*/*"),
        extra,
        ("Connection", "keep-alive"),
        ("User-Agent", f"python-httpx/{httpx.__version__}"),
    ):
        if name.lower() not in given:
            headers.append((name, value))
    headers.extend(header for header in req.headers if header[0].lower() != "host")
    if req.body:
        headers.append(("Content-Length", str(len(req.body))))
    return headers


def _request_bytes(
    conn: h11.Connection, req: HttpRequest, origin: _Origin, extra: tuple[str, str]
) -> bytes:
    """The whole request as httpx would frame it: its default headers, then the call's."""
    headers = _request_headers(req, origin, extra)
    out = conn.send(h11.Request(method=req.method, target=origin.target, headers=headers))
    if req.body:
        out += conn.send(h11.Data(data=req.body))
    out += conn.send(h11.EndOfMessage())
    return out


def _headers(raw: Any) -> Mapping[str, str]:
    """h11's (lower-cased) header pairs as the flow takes them (:func:`header_map`)."""
    return header_map((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)


# -- the fast codec: requests written directly, answers read by httptools (llhttp)

_TCHAR = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]"  # h11's token: a method's or header name's characters
_VCHAR = r"[^\x00\s]"  # h11's field-vchar (ASCII \s: space, \t, \n, \r, \f, \v)
_METHOD = re.compile(_TCHAR + "+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_HEADER_LINE = re.compile(f"{_TCHAR}+: (?:{_VCHAR}+(?:[ \t]+{_VCHAR}+)*)?", re.ASCII)
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_CHUNKED_END = b"0\r\n\r\n"


class _BadRequest(Exception):
    """A request the fast writer refuses to frame (as h11's ``LocalProtocolError``)."""


def _fast_request_bytes(req: HttpRequest, origin: _Origin, extra: tuple[str, str]) -> bytes | None:
    """The request :func:`_request_bytes` frames, byte for byte, written directly with
    h11's checks of the method, the target and every header name and value; ``None`` when
    the call's own headers frame the body (then h11 writes and reads the exchange)."""
    given = {name.lower() for name, _ in req.headers}
    if given & _FRAMING:
        return None
    headers = _request_headers(req, origin, extra, given)
    if _METHOD.fullmatch(req.method) is None or _TARGET.fullmatch(origin.target) is None:
        raise _BadRequest
    lines = [f"{req.method} {origin.target} HTTP/1.1"]
    line_ok = _HEADER_LINE.fullmatch
    for name, value in headers:
        line = f"{name}: {value}"
        if line_ok(line) is None:
            raise _BadRequest
        lines.append(line)
    lines += ("", "")
    try:
        head = "\r\n".join(lines).encode("ascii")
    except UnicodeEncodeError:  # (h11 would raise it uncaught)
        raise _BadRequest from None
    return head + req.body if req.body else head


class _Broken(Exception):
    """The peer's bytes are no valid HTTP/1.1 answer (as h11's ``RemoteProtocolError``)."""


class _Lenient(Exception):
    """llhttp refused a head that h11 may accept (bare LF line ends, folded header lines):
    h11 reads this answer instead, from its first byte."""


class _FastAnswer:
    """One answer read by httptools: its head, its body pieces, and whether the connection
    may carry another exchange.

    llhttp frames the answer as h11 does (one Content-Length, never with another transfer
    coding than chunked); where it is stricter than h11, in the head, the answer is handed
    to h11 (:class:`_Lenient`), so both readers accept the same answers. What h11 tracks as
    state is kept here by counting bytes: the connection is reusable only when the answer
    ended exactly where the bytes read so far end (its head plus its Content-Length, or a
    chunked body's final ``0\\r\\n\\r\\n``; llhttp silently skips CR and LF between
    answers, so a stray CRLF is found by the count, any other byte by llhttp starting a
    next answer).
    """

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "dirty",
        "fed",
        "handed_over",
        "head",
        "head_done",
        "headers",
        "interim",
        "keep_alive",
        "length",
        "parser",
        "status",
        "tail",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head = bytearray()  # the head's bytes so far (capped) until it is complete
        self.head_done = False
        self.complete = False
        self.interim = False  # a 1xx answer is being read (skipped; the real one follows)
        self.dirty = False  # the connection must not carry another exchange
        self.keep_alive = False
        self.chunked = False
        self.length: int | None = None  # the answer's whole size in bytes, when declared
        self.fed = 0
        self.tail = b""
        self.handed_over = False  # h11 read this answer (see _Lenient)

    # -- llhttp callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.dirty = True  # bytes after the answer: never read as the next one

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self.parser.get_status_code()
        if self.status < 200:
            self.interim, self.dirty = True, True  # (101 is refused with the rest below)
            return
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        declared = None
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                declared = value.strip()
            elif lowered == b"transfer-encoding":
                if not value.strip().lower().endswith(b"chunked"):
                    raise _Broken  # h11 frames no other transfer coding either
                self.chunked = True
        end = bytes(self.head).find(b"\r\n\r\n")
        if self.chunked or end < 0 or self.status in (204, 304):
            if end < 0:
                self.dirty = True
            if self.status in (204, 304):
                self.length = end + 4
        elif declared is not None and declared.isdigit():
            self.length = end + 4 + int(declared)
        elif declared is None:
            self.dirty = True  # read until the peer closes: never reusable
        self.head = bytearray()

    def on_body(self, body: bytes) -> None:
        if body and not self.complete:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.interim:  # the real answer follows on the same bytes
            if self.status == 101:
                raise _Broken
            self.interim = False
            self.headers = []
            self.head = bytearray()
            return
        self.complete = True

    # -- what the exchange uses

    def feed(self, data: bytes) -> None:
        """Parse what arrived (``b""``: the peer closed)."""
        if not data:
            if self.complete:
                return
            if self.head_done and not self.chunked and self.length is None:
                self.complete = True  # its body ran until the peer closed
                return
            raise _Broken
        if not self.complete:
            self.fed += len(data)
            if not self.head_done:
                self.head += data[: MAX_HEADER_BYTES + 4 - len(self.head)]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:
                self.dirty = True  # garbage after a whole answer
            elif self.head_done or isinstance(exc, httptools.HttpParserCallbackError):
                raise _Broken from None
            else:
                raise _Lenient from None
        if not self.complete and not self.head_done and self.fed > MAX_HEADER_BYTES:
            raise _Broken  # a head that never ends (h11's max_incomplete_event_size)
        self.tail = (self.tail + data)[-len(_CHUNKED_END) :]

    def reusable(self) -> bool:
        """A whole answer, nothing after it, and both sides willing to keep the connection."""
        if not self.complete or self.dirty or not self.keep_alive:
            return False
        if self.chunked:
            return self.tail == _CHUNKED_END
        return self.length == self.fed


Answer = Generator[None, bytes, "tuple[int, Mapping[str, str]] | TransportFailure"]
"""A sans-IO answer reader: it takes each read's bytes (``b""`` at EOF) by ``send`` and
returns the status and headers once the body ended (or the failure ``feed``/``chunk``
returned); a broken answer raises :class:`_Broken` or ``h11.RemoteProtocolError``."""


def fast_reader(req: HttpRequest) -> _FastAnswer | None:
    """httptools' reader for ``req``'s answer when installed (else None: h11 reads it).
    A HEAD answer's framing needs the request, which h11 knows: h11 reads it."""
    return _FastAnswer() if httptools is not None and req.method != "HEAD" else None


def read_answer(
    h: h11.Connection,
    fast: _FastAnswer | None,
    req: HttpRequest,
    feed: Callable[[Mapping[str, str]], TransportFailure | None],
    chunk: Callable[[bytes], TransportFailure | None],
) -> Answer:
    """Read one answer with httptools (``fast``) or, without it, with ``h`` (h11).

    Both pools drive it, each with its own I/O: ``feed`` gets the headers, ``chunk`` each
    raw body piece, in the same calls whichever parser reads."""
    if fast is None:
        return (yield from _h11_answer(h, feed, chunk))
    headers: Mapping[str, str] | None = None
    while True:
        if headers is None and fast.head_done:
            headers = header_map(
                (name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
                for name, value in fast.headers
            )
            failure = feed(headers)
            if failure:
                return failure
        if fast.body:
            pieces, fast.body = fast.body, []
            for piece in pieces:
                failure = chunk(piece)
                if failure:
                    return failure
        if fast.complete and headers is not None:
            return fast.status, headers
        data = yield
        try:
            fast.feed(data)
        except _Lenient:
            if fast.fed > MAX_HEADER_BYTES or fast.interim or fast.dirty:
                raise _Broken from None
            fast.handed_over = True  # h11 reads it all, from the head's first byte
            # (idle: this connection's exchanges were all read by httptools)
            h.send(h11.Request(method=req.method, target="/", headers=[("Host", "-")]))
            h.send(h11.EndOfMessage())
            h.receive_data(bytes(fast.head))
            return (yield from _h11_answer(h, feed, chunk))


def _h11_answer(
    h: h11.Connection,
    feed: Callable[[Mapping[str, str]], TransportFailure | None],
    chunk: Callable[[bytes], TransportFailure | None],
) -> Answer:
    status = 0
    headers: Mapping[str, str] = {}
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            h.receive_data((yield))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = _headers(event.headers)
            failure = feed(headers)
            if failure:
                return failure
        elif isinstance(event, h11.Data):
            failure = chunk(bytes(event.data))
            if failure:
                return failure
        elif isinstance(event, h11.EndOfMessage):
            return status, headers
        elif isinstance(event, h11.ConnectionClosed):
            return _MID_ANSWER
        # an InformationalResponse (1xx) is skipped; the real answer follows


def reusable(h: h11.Connection, fast: _FastAnswer | None) -> bool:
    """After a whole answer: may its connection carry the next exchange? (h11's state is
    readied for it when so.)"""
    if fast is not None and not fast.handed_over:
        return fast.reusable()
    if h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]:
        h.start_next_cycle()
        return True
    return False


class PoolBase:
    """What both twins' pools keep besides their connections: the parsed origins, the TLS
    context and the keep-alive limits.

    Args:
        limits: ``max_keepalive_connections`` and ``keepalive_expiry`` apply; the number of
            busy connections is bounded by the driver's admission gate.
        ssl_context: for ``https://`` upstreams (default: httpx's, built on first use, which
            honours ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
    """

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        self._origins: dict[str, _Origin] = {}
        self._keep = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._ssl = ssl_context
        self.is_closed = False

    def _origin(self, url: str) -> _Origin:
        base = url.split("?", 1)[0]
        origin = self._origins.get(base) if "?" not in url else None
        if origin is None:
            origin = _Origin(url)
            if "?" not in url and len(self._origins) < 256:
                self._origins[base] = origin
        return origin

    def _where(self, req: HttpRequest) -> _Origin | TransportFailure:
        """Where ``req`` goes, or why it cannot go (the pool is closed, the URL unusable)."""
        if self.is_closed:
            return _CLOSED
        try:
            return self._origin(req.url)
        except ValueError:
            return TransportFailure("protocol", "broken HTTP exchange (UnsupportedProtocol)")

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl


class AsyncPool(PoolBase):
    """Pooled HTTP/1.1 connections for the async twin (used instead of an httpx client);
    arguments as :class:`PoolBase`'s."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits, ssl_context)
        self._idle: collections.defaultdict[tuple[str, str, int], list[_Conn]] = (
            collections.defaultdict(list)
        )
        self._busy: set[_Conn] = set()

    def _checkout(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        while idle:
            conn = idle.pop()
            if conn.loop is loop and conn.reusable(now, self._expiry):
                return conn
            conn.abort()
        return None

    def _checkin(self, key: tuple[str, str, int], conn: _Conn) -> None:
        idle = self._idle[key]
        if self.is_closed or (self._keep is not None and len(idle) >= self._keep):
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, origin: _Origin, seconds: float) -> _Conn:
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if origin.scheme == "https" else None
        if seconds <= 0:
            raise _Timeout
        connecting = loop.create_connection(
            lambda: _Conn(loop),
            origin.host,
            origin.port,
            ssl=tls,
            server_hostname=origin.host if tls is not None else None,
            ssl_handshake_timeout=seconds if tls is not None else None,
        )
        # Name lookup, TCP and TLS together, as a task of its own: a connection it makes as
        # the call gives up (the wait times out, or the call is cancelled) is closed, never
        # dropped with its socket open (Python 3.11's wait_for loses such a result).
        task = asyncio.ensure_future(connecting)
        try:
            done, _ = await asyncio.wait((task,), timeout=seconds)
        except BaseException:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            await asyncio.wait((task,))  # let it wind down (it closes its own socket)
            raise _Timeout
        try:
            _, conn = task.result()
        except (TimeoutError, asyncio.TimeoutError):
            raise _Timeout from None
        return conn

    async def exchange(
        self,
        req: HttpRequest,
        feed: Callable[[Mapping[str, str]], TransportFailure | None],
        chunk: Callable[[bytes], TransportFailure | None],
        clock: Callable[[], float],
    ) -> tuple[int, Mapping[str, str]] | TransportFailure:
        """Send ``req`` and stream its answer: ``feed`` gets the headers, ``chunk`` each raw
        body piece (either may refuse the answer). Returns the status and headers once the
        body ended, or the failure."""
        origin = self._where(req)
        if isinstance(origin, TransportFailure):
            return origin
        conn = self._checkout(origin.key)
        phase = "ConnectTimeout"
        fast = fast_reader(req)
        try:
            if conn is None:
                left = req.deadline - clock()
                conn = await self._connect(origin, min(req.connect_timeout_s, left))
            self._busy.add(conn)
            phase = "WriteTimeout"
            extra = ("Accept-Encoding", "identity")
            data = _fast_request_bytes(req, origin, extra) if fast is not None else None
            if data is None:
                fast = None
                data = _request_bytes(conn.h11, req, origin, extra)
            await conn.write(data, min(req.timeout_s, req.deadline - clock()))
            phase = "ReadTimeout"
            answer = read_answer(conn.h11, fast, req, feed, chunk)
            try:
                next(answer)
                while True:
                    answer.send(await conn.read(min(req.timeout_s, req.deadline - clock())))
            except StopIteration as done:
                reply: tuple[int, Mapping[str, str]] | TransportFailure = done.value
        except _Timeout:
            reply = _timed_out(phase)
        except _Closed:
            reply = _CLOSED
        except (h11.RemoteProtocolError, _Broken):
            reply = _MID_ANSWER
        except (h11.LocalProtocolError, _BadRequest):
            reply = TransportFailure("protocol", "broken HTTP exchange (LocalProtocolError)")
        except ssl.SSLError:
            reply = _broken("ConnectError" if phase == "ConnectTimeout" else "ReadError")
        except OSError:
            reply = _broken("ConnectError" if phase == "ConnectTimeout" else "ReadError")
        except BaseException:  # cancelled (by the caller or a backstop): the socket goes too
            if conn is not None:
                conn.abort()
            raise
        finally:
            if conn is not None:
                self._busy.discard(conn)
        if conn is not None:
            if isinstance(reply, TransportFailure) or conn.closed:
                conn.abort()
            elif reusable(conn.h11, fast):
                self._checkin(origin.key, conn)
            else:
                conn.abort()
        if self.is_closed and isinstance(reply, TransportFailure):
            return _CLOSED
        return reply

    async def aclose(self) -> None:
        """Abort every connection; calls using one end as ``closed``."""
        self.is_closed = True
        conns = [conn for idle in self._idle.values() for conn in idle]
        conns += self._busy
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn.abort()
        loop = asyncio.get_running_loop()
        pending = [c.lost for c in conns if c.loop is loop and not c.lost.done()]
        if pending:  # the sockets close on the loop's next turns: let them, briefly
            await asyncio.wait(pending, timeout=_CLOSE_WAIT_S)
