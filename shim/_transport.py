"""The two drivers of a flow: they only do I/O (send, read with a cap, sleep).

``run_sync`` drives a flow with the sync twin's own :class:`SyncPool` or an ``httpx.Client``,
``run_async`` with the async twin's :class:`~shim._async_pool.AsyncPool` or an
``httpx.AsyncClient`` (httpx when the caller passes a client or transport, or the environment
names a proxy). What they decide is shared: :class:`_BodyReader` (size cap and decoding),
:func:`_failure` (which httpx errors mean what) and the :class:`Admission` gate. Both pools
write requests and read answers with the same codec (``shim._async_pool``).

Bounds every exchange keeps, whatever the peer does:

- **Time.** An exchange ends by its request's ``deadline`` in every phase: admission, pool
  wait, DNS, connect, TLS, write, status line, headers, chunk-size lines, body, trailers and
  decoding. The async driver runs the whole exchange under one asyncio timeout. The sync
  driver cannot interrupt a blocking read from outside, so the sockets themselves obey the
  deadline: a :class:`DeadlineBackend`, under the shim's own :class:`SyncPool` and under
  :class:`DeadlineTransport` (httpcore's pool, for proxies and clients you build), makes
  every socket operation wait at most what is left of the call's deadline (a context
  variable set around the exchange), not a fresh per-read timeout.
  Environment proxies (:func:`proxy_mounts`) run on the same backend: the proxy's connect,
  its ``CONNECT`` answer and the TLS tunnelled through it are bounded alike.
- **Memory.** The body is read raw (``iter_raw``) and inflated here, under the cap: the raw
  bytes, every decoding layer's output and the decoded body each stay within
  ``max_body_bytes``, so a compression bomb (``gzip``, ``deflate``, stacked up to
  :data:`MAX_ENCODINGS` deep) costs at most a small multiple of the cap. The shim asks for
  ``Accept-Encoding: identity``; any other coding than ``gzip``/``deflate`` is refused.
- **Admission.** At most ``[upstream] max_in_flight`` exchanges run at once per shim; beyond
  that an exchange waits for a slot within its deadline, then fails as ``overload``. Local
  congestion (this wait, httpx pool timeouts) is reported as ``overload`` and a closed shim
  as ``closed``: the flow turns both into :class:`~shim._errors.LocalError`, which never
  counts against a circuit breaker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import importlib.util
import queue
import select
import socket
import ssl
import sys
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import h11
import httpcore
import httpx

from shim._async_pool import (
    _MID_ANSWER,
    MAX_HEADER_BYTES,
    AsyncPool,
    PoolBase,
    _BadRequest,
    _Broken,
    _fast_request_bytes,
    _Origin,
    _request_bytes,
    fast_reader,
    read_answer,
    reusable,
)
from shim._flow import (
    Flow,
    HttpRequest,
    HttpResponse,
    Sleep,
    T,
    TransportFailure,
    header_map,
)
from shim._wire import parse_uint

__all__ = [
    "MAX_ENCODINGS",
    "Admission",
    "AsyncAdmission",
    "AsyncPool",
    "DeadlineBackend",
    "DeadlineTransport",
    "SyncPool",
    "new_async_client",
    "new_sync_client",
    "proxy_mounts",
    "run_async",
    "run_sync",
]

#: The deepest stack of ``Content-Encoding`` codings accepted (``gzip, gzip`` is 2).
MAX_ENCODINGS = 3
_DECODE_STEP = 16 * 1024  # most bytes one inflate step may produce
_ACCEPT_ENCODING = ("Accept-Encoding", "identity")
_BACKSTOP_S = 0.1  # the async twin's whole-exchange timeout, past the per-phase ones
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}
_POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=32)


def _timeout(req: HttpRequest, remaining: float) -> httpx.Timeout:
    read = min(req.timeout_s, remaining)
    return httpx.Timeout(read, connect=min(req.connect_timeout_s, remaining), pool=remaining)


def _failure(exc: Exception) -> TransportFailure:
    """Classify only the httpx errors we mean; nothing else is swallowed."""
    name = type(exc).__name__
    if isinstance(exc, httpx.PoolTimeout):
        # Local congestion: every pooled connection stayed busy. Not the upstream's fault.
        return TransportFailure("overload", f"no pooled connection came free ({name})")
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
_CLOSED = TransportFailure("closed", "the shim is closed")
_OVERLOAD = TransportFailure(
    "overload",
    "no admission slot came free within the call's budget ([upstream] max_in_flight)",
)
_TOO_LATE = TransportFailure(
    "overload",
    "the budget left after waiting for an admission slot is shorter than an exchange "
    "takes now ([upstream] max_in_flight)",
)
_EXCHANGE_WEIGHT = 0.125  # of the latest exchange in AsyncAdmission.exchange_s


class _BodyReader:
    """Accumulate a body under the size cap and the deadline, inflating it under the cap.

    ``Content-Encoding`` codings are undone in reverse order of application, one bounded
    step at a time: no layer's output, and not the raw bytes either, may exceed the cap
    (intermediate layers get a small allowance for compression overhead).
    """

    __slots__ = ("body", "clock", "layer_caps", "layer_out", "layers", "raw", "req", "wbits")

    def __init__(self, req: HttpRequest, clock: Callable[[], float]) -> None:
        self.req = req
        self.clock = clock
        self.body = bytearray()
        self.raw = 0
        self.layers: list[Any] = []  # zlib decompress objects, outermost coding first
        self.layer_out: list[int] = []
        self.layer_caps: list[int] = []
        self.wbits: list[int] = []

    def start(self, headers: Mapping[str, str]) -> TransportFailure | None:
        """Check the declared length and set up decoding; a failure refuses the answer."""
        cap = self.req.max_body_bytes
        declared = headers.get("content-length", "")
        length = parse_uint(declared) if declared else 0
        if length is None:
            return TransportFailure("protocol", "answer's Content-Length is not ASCII digits")
        if length > cap:
            return TransportFailure(
                "protocol", f"answer declares {declared} bytes, over the {cap}-byte cap"
            )
        raw = headers.get("content-encoding", "")
        codings = [c.strip().lower() for c in raw.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if not codings:
            return None
        if len(codings) > MAX_ENCODINGS:
            return TransportFailure(
                "protocol",
                f"answer stacks {len(codings)} content encodings (at most {MAX_ENCODINGS})",
            )
        for coding in codings:
            if coding not in _ZLIB_WBITS:
                return TransportFailure(
                    "protocol", f"answer has content encoding {coding[:20]!r} (not supported)"
                )
        slack = cap + cap // 8 + 4096  # a compressed layer may be a little larger than its data
        for i, coding in enumerate(reversed(codings)):  # the last coding applied is undone first
            self.wbits.append(_ZLIB_WBITS[coding])
            self.layers.append(zlib.decompressobj(self.wbits[-1]))
            self.layer_out.append(0)
            self.layer_caps.append(cap if i == len(codings) - 1 else slack)
        return None

    def _store(self, data: bytes) -> TransportFailure | None:
        self.body += data
        if len(self.body) > self.req.max_body_bytes:
            return TransportFailure(
                "protocol", f"answer exceeds the {self.req.max_body_bytes}-byte cap"
            )
        return None

    def _inflate(self, level: int, data: bytes) -> TransportFailure | None:
        if level == len(self.layers):
            return self._store(data)
        decoder = self.layers[level]
        while True:
            try:
                out = decoder.decompress(data, _DECODE_STEP)
            except zlib.error:
                return TransportFailure("protocol", "answer's content encoding is corrupt")
            data = decoder.unconsumed_tail
            if decoder.eof and decoder.unused_data:
                # another member follows (RFC 1952 allows several gzip members)
                data = decoder.unused_data + data
                decoder = self.layers[level] = zlib.decompressobj(self.wbits[level])
            if out:
                self.layer_out[level] += len(out)
                if self.layer_out[level] > self.layer_caps[level]:
                    return TransportFailure(
                        "protocol",
                        f"answer inflates past the {self.req.max_body_bytes}-byte cap",
                    )
                failure = self._inflate(level + 1, out)
                if failure:
                    return failure
            if self.clock() > self.req.deadline:
                return _BUDGET
            if not data and len(out) < _DECODE_STEP:
                return None

    def feed(self, chunk: bytes) -> TransportFailure | None:
        """Take one raw chunk off the wire."""
        self.raw += len(chunk)
        if self.raw > self.req.max_body_bytes:
            return TransportFailure(
                "protocol", f"answer exceeds the {self.req.max_body_bytes}-byte cap"
            )
        failure = self._inflate(0, chunk) if self.layers else self._store(chunk)
        if failure:
            return failure
        if self.clock() > self.req.deadline:
            return _BUDGET
        return None

    def whole(self, content: bytes) -> TransportFailure | None:
        """An answer a transport handed over whole and already decoded (in-process)."""
        self.layers.clear()
        return self.feed(content)

    def finish(self) -> TransportFailure | None:
        """The raw body ended: every decoding layer must have reached its end."""
        for decoder in self.layers:
            if not decoder.eof:
                return TransportFailure("protocol", "answer's content encoding ends early")
        return None


# -- admission -----------------------------------------------------------------------------


class Admission:
    """The admission gate of a sync shim: at most ``limit`` exchanges at once.

    ``limit`` may change at any time (a reloaded ``[upstream] max_in_flight``); it applies
    to the next admissions. ``closed`` is set by the shim's ``close()``.

    The slots are tokens in a :class:`queue.SimpleQueue`, whose ``get`` and ``put`` are C
    code: taking a free slot or giving one back takes no Python-level lock, and a waiting
    thread sleeps on one C lock (without the GIL) until a token arrives. With many threads
    this keeps the gate from becoming a lock convoy: a ``threading.Condition`` made every
    admission and release contend for one lock and every hand-over wake a thread twice.
    """

    def __init__(self, limit: int) -> None:
        self.closed = False
        self._tokens: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._lock = threading.Lock()  # for limit changes only
        self._limit = 0
        self._debt = 0  # tokens to retire as they come back (the limit was lowered)
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        with self._lock:
            more = value - self._limit
            self._limit = value
            if more >= 0:
                kept = min(more, self._debt)  # slots not yet retired are kept instead
                self._debt -= kept
                for _ in range(more - kept):
                    self._tokens.put(True)
                return
            self._debt -= more
            while self._debt:  # retire idle slots now; busy ones as they come back
                try:
                    self._tokens.get_nowait()
                except queue.Empty:
                    break
                self._debt -= 1

    def try_acquire(self) -> bool:
        """Take a free slot without waiting, if there is one."""
        try:
            self._tokens.get_nowait()
        except queue.Empty:
            return False
        return True

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most ``timeout`` seconds; False if none came free (or
        the gate closed)."""
        if self.closed:
            return False
        try:
            self._tokens.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if self.closed:
            self._tokens.put(True)  # pass the wake-up on to the next waiter
            return False
        return True

    def release(self) -> None:
        """Give a slot back."""
        if self._debt:
            with self._lock:
                if self._debt:
                    self._debt -= 1
                    return
        self._tokens.put(True)

    def close(self) -> None:
        """Refuse further exchanges and wake every waiter (each wakes the next)."""
        self.closed = True
        self._tokens.put(True)


class AsyncAdmission:
    """The admission gate of an async shim: FIFO, at most ``limit`` exchanges at once.

    ``exchange_s`` follows how long an admitted exchange that got its answer takes (a
    moving average): a call that waited for its slot and has less budget left than that is
    refused as overload at once, not sent to end past its budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False
        self.busy = 0
        self.exchange_s = 0.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a free slot without waiting, if there is one."""
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting as long as the caller's timeout scope allows."""
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed over just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back (straight to the longest waiter, when there is one)."""
        if self.busy <= self.limit:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(None)  # the slot passes on; ``busy`` is unchanged
                    return
        self.busy -= 1

    def close(self) -> None:
        """Refuse further exchanges and wake every waiter."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(_GateClosed())


class _GateClosed(Exception):
    """Raised into admission waiters when the shim closes."""


# -- the sync deadline backend -----------------------------------------------------------

#: When the current exchange must end, on the ``time.monotonic`` clock (None: no deadline).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "coupon_shim_deadline", default=None
)


def _left(timeout: float | None, exc: type[Exception]) -> float | None:
    """The timeout for the next socket operation: ``timeout`` cut to the deadline."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise exc("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


def _readable(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover - no poll()


class _BackendStream(httpcore.NetworkStream):
    """A stream on one of a :class:`DeadlineBackend`'s sockets: registered with the backend
    while open, so the shim's ``close()`` can interrupt a read blocked on it."""

    def __init__(self, sock: socket.socket, backend: DeadlineBackend) -> None:
        self._sock = sock
        self._backend = backend
        backend._streams.add(self)

    def close(self) -> None:
        self._backend._streams.discard(self)
        self._sock.close()

    def interrupt(self) -> None:
        """Wake a read blocked in another thread (the shim is closing)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


class _DeadlineStream(_BackendStream):
    """A socket stream whose every operation ends by the exchange's deadline."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        left = _left(timeout, httpcore.ReadTimeout)
        try:
            self._sock.settimeout(left)
            # One recv returns as soon as any bytes arrive; on a TLS socket CPython bounds
            # the whole record read by the socket timeout (a deadline, not per byte).
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            while view:
                self._sock.settimeout(_left(timeout, httpcore.WriteTimeout))
                sent = self._sock.send(view)
                view = view[sent:]
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        if isinstance(self._sock, ssl.SSLSocket):
            # TLS to the upstream inside a tunnel through an https:// proxy.
            self._backend._streams.discard(self)
            return _TunnelTLSStream(
                self._sock, ssl_context, server_hostname, timeout, self._backend
            )
        try:
            self._sock.settimeout(_left(timeout, httpcore.ConnectTimeout))
            # The handshake as a whole is bounded by the socket timeout (CPython keeps one
            # deadline across its reads and writes).
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except TimeoutError as exc:
            self.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            self.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            self.close()
            raise
        self._backend._streams.discard(self)
        return _DeadlineStream(tls, self._backend)

    def get_extra_info(self, info: str) -> Any:
        sock = self._sock
        if info == "ssl_object" and isinstance(sock, ssl.SSLSocket):
            return sock._sslobj  # type: ignore[attr-defined]
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "socket":
            return sock
        if info == "is_readable":
            return _readable(sock)
        return None


class _TunnelTLSStream(_BackendStream):
    """TLS inside a TLS connection (an ``https://`` proxy's ``CONNECT`` tunnel).

    ``SSLContext.wrap_socket`` cannot wrap an ``SSLSocket``, so the inner TLS runs on an
    ``ssl.SSLObject`` over memory buffers; every read and write of the outer socket waits at
    most what is left of the exchange's deadline, as in :class:`_DeadlineStream`.
    """

    _RECORD = 16384

    def __init__(
        self,
        sock: ssl.SSLSocket,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float | None,
        backend: DeadlineBackend,
    ) -> None:
        super().__init__(sock, backend)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ssl_context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        try:
            self._io(
                self._tls.do_handshake, timeout, httpcore.ConnectTimeout, httpcore.ConnectError
            )
        except BaseException:
            self.close()
            raise

    def _io(
        self,
        step: Callable[[], Any],
        timeout: float | None,
        late: type[Exception],
        broken: type[Exception],
    ) -> Any:
        try:
            while True:
                wants_read = result_ready = False
                result: Any = None
                try:
                    result = step()
                except ssl.SSLWantReadError:
                    wants_read = True
                except ssl.SSLWantWriteError:
                    pass  # the outgoing buffer is flushed below, then the step runs again
                else:
                    result_ready = True
                view = memoryview(self._outgoing.read())
                while view:
                    self._sock.settimeout(_left(timeout, late))
                    view = view[self._sock.send(view) :]
                if wants_read:
                    self._sock.settimeout(_left(timeout, late))
                    data = self._sock.recv(self._RECORD)
                    if data:
                        self._incoming.write(data)
                    else:
                        self._incoming.write_eof()
                elif result_ready:
                    return result
        except TimeoutError as exc:
            raise late(str(exc)) from exc
        except ssl.SSLZeroReturnError:
            return b""  # the upstream closed its TLS session cleanly
        except OSError as exc:  # ssl.SSLError included
            raise broken(str(exc)) from exc

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        step = functools.partial(self._tls.read, max_bytes)
        data = self._io(step, timeout, httpcore.ReadTimeout, httpcore.ReadError)
        return bytes(data)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            step = functools.partial(self._tls.write, view)
            sent = self._io(step, timeout, httpcore.WriteTimeout, httpcore.WriteError)
            view = view[sent:]

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - httpcore never nests three layers
        raise httpcore.ConnectError("TLS is already nested inside a TLS tunnel")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _readable(self._sock)
        return None


def _resolve(host: str, port: int, timeout: float | None) -> list[Any]:
    """``getaddrinfo`` bounded by the deadline (a name lookup runs on a helper thread)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not an address literal
    result: list[Any] = []
    error: list[BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            result.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="coupon-shim-dns", daemon=True).start()
    if not done.wait(_left(timeout, httpcore.ConnectTimeout)):
        raise httpcore.ConnectTimeout(f"name lookup of {host[:60]!r} timed out")
    if error:
        raise httpcore.ConnectError(f"name lookup of {host[:60]!r} failed") from error[0]
    return result


class DeadlineBackend(httpcore.NetworkBackend):
    """An httpcore network backend whose sockets obey the current exchange's deadline.

    The deadline is a context variable the sync driver sets around each exchange, so a
    pooled connection reused by another call obeys that call's deadline.
    """

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[_BackendStream] = weakref.WeakSet()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        infos = _resolve(host, port, timeout)
        last: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address is not None:
                    sock.bind((local_address, 0))
                sock.settimeout(_left(timeout, httpcore.ConnectTimeout))
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except TimeoutError as exc:
                sock.close()
                raise httpcore.ConnectTimeout(str(exc)) from exc
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return _DeadlineStream(sock, self)
        raise httpcore.ConnectError(str(last) if last else f"no address for {host[:60]!r}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - the shim speaks TCP only
        raise httpcore.ConnectError("unix sockets are not supported")

    def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore retries only
        time.sleep(seconds)

    def interrupt_all(self) -> None:
        """Wake every read blocked on this backend's sockets (used by ``close()``)."""
        for stream in list(self._streams):
            stream.interrupt()


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP/1.1 transport on a :class:`DeadlineBackend`: every socket operation
    waits at most what is left of the shim call's deadline.

    The shim's own sync client uses it when the environment names a proxy (otherwise its
    lean :class:`SyncPool`, on the same backend). If you pass the sync shim your own
    ``httpx.Client``, build it with this transport to keep the guarantee that no call
    outlives its budget::

        httpx.Client(transport=DeadlineTransport(verify=my_ca_context))

    With ``proxy`` it goes through that proxy the way ``httpx.HTTPTransport(proxy=...)``
    does (``http://``/``https://`` proxies: absolute-form requests for ``http://`` targets,
    a ``CONNECT`` tunnel for ``https://`` ones; ``socks5://``/``socks5h://`` with the
    ``socksio`` package), and the connection to the proxy, the tunnel and the TLS inside it
    obey the same deadline. :func:`proxy_mounts` builds these from the environment, as the
    shim's own client does.

    Args:
        verify: as for ``httpx.HTTPTransport`` (True, False or an ``ssl.SSLContext``).
        cert: a client certificate, as for ``httpx.HTTPTransport``.
        trust_env: read ``SSL_CERT_FILE``/``SSL_CERT_DIR``.
        limits: the pool's limits.
        proxy: a proxy URL or ``httpx.Proxy`` (default: none, connect directly).
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits = _POOL_LIMITS,
        proxy: httpx.Proxy | httpx.URL | str | None = None,
    ) -> None:
        # httpx (0.28) builds its pool in __init__ without a way to pass a network backend,
        # so this builds the same pool (or proxy pool) with ours instead of calling
        # super().__init__.
        self.backend = DeadlineBackend()
        ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        pool: dict[str, Any] = {
            "ssl_context": ssl_context,
            "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry,
            "http1": True,
            "http2": False,
            "network_backend": self.backend,
        }
        proxy = httpx.Proxy(url=proxy) if isinstance(proxy, (str, httpx.URL)) else proxy
        self.proxy = proxy
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**pool)
            return
        proxy_url = httpcore.URL(
            scheme=proxy.url.raw_scheme,
            host=proxy.url.raw_host,
            port=proxy.url.port,
            target=proxy.url.raw_path,
        )
        if proxy.url.scheme in ("http", "https"):
            self._pool = httpcore.HTTPProxy(
                proxy_url=proxy_url,
                proxy_auth=proxy.raw_auth,
                proxy_headers=proxy.headers.raw,
                proxy_ssl_context=proxy.ssl_context,
                **pool,
            )
        elif proxy.url.scheme in ("socks5", "socks5h"):
            if importlib.util.find_spec("socksio") is None:
                raise ImportError(
                    "a socks5:// proxy needs the 'socksio' package (pip install 'httpx[socks]')"
                )
            self._pool = httpcore.SOCKSProxy(proxy_url=proxy_url, proxy_auth=proxy.raw_auth, **pool)
        else:
            raise ValueError(
                "a proxy URL must start with http://, https://, socks5:// or socks5h://, "
                f"not {proxy.url.scheme[:20]!r}://"
            )

    def close(self) -> None:
        self.backend.interrupt_all()
        super().close()


def proxy_mounts(
    *,
    verify: ssl.SSLContext | bool = True,
    cert: Any = None,
    limits: httpx.Limits = _POOL_LIMITS,
) -> dict[str, DeadlineTransport | None]:
    """The proxies the environment asks for, as ``httpx.Client(mounts=...)`` takes them.

    The same rules httpx applies by default (``trust_env``): ``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` (either case; the system settings on macOS and Windows)
    become a :class:`DeadlineTransport` through that proxy for ``http://``, ``https://`` or
    every URL, and each ``NO_PROXY`` entry (hosts, ``.domain`` suffixes, IP addresses,
    ``*``) a direct route (``None``: the client's own transport). Read when called, from
    ``os.environ``, as httpx does.
    """
    # httpx's own reading of the environment, so the rules cannot drift from what an
    # httpx.Client without a transport does (a test compares the two).
    from httpx._utils import get_environment_proxies

    return {
        pattern: None
        if url is None
        else DeadlineTransport(verify=verify, cert=cert, limits=limits, proxy=url)
        for pattern, url in get_environment_proxies().items()
    }


class _Pooled:
    """One of a :class:`SyncPool`'s connections: a deadline-bound stream and its h11 state
    (used when httptools is missing, or an answer needs h11's leniency)."""

    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.idle_since = 0.0

    def sound(self, now: float, expiry: float | None) -> bool:
        """Idle and usable: the peer neither closed it nor wrote to it since its last answer."""
        if expiry is not None and now - self.idle_since >= expiry:
            return False
        return not self.stream.get_extra_info("is_readable")


_READ_SIZE = 64 * 1024  # bytes asked of one socket read (httpcore's read size)


class SyncPool(PoolBase):
    """Pooled HTTP/1.1 connections for the sync twin (used instead of an ``httpx.Client``).

    The sync twin's counterpart of :class:`~shim._async_pool.AsyncPool`, with the same
    request writer and answer readers (httptools, else h11), so both twins put the same
    bytes on the wire and accept the same answers. Its sockets are a
    :class:`DeadlineBackend`'s: connecting, TLS, every write and every read wait at most
    what is left of the call's deadline (and the request's own connect and read timeouts),
    and :meth:`close` wakes a read blocked in another thread. A connection goes back to the
    pool only after a whole answer with nothing after it, both sides willing to keep it;
    an idle connection the peer closed or wrote to, or one idle past ``keepalive_expiry``,
    is dropped at checkout, never reused. Thread-safe.

    Arguments as :class:`~shim._async_pool.PoolBase`'s.
    """

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits, ssl_context)
        self.backend = DeadlineBackend()
        self._idle: dict[tuple[str, str, int], list[_Pooled]] = {}
        self._lock = threading.Lock()

    def _checkout(self, key: tuple[str, str, int]) -> _Pooled | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
            if conn.sound(now, self._expiry):
                return conn
            conn.stream.close()

    def _checkin(self, key: tuple[str, str, int], conn: _Pooled) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if not self.is_closed:
                idle = self._idle.setdefault(key, [])
                if self._keep is None or len(idle) < self._keep:
                    idle.append(conn)
                    return
        conn.stream.close()

    def _connect(self, origin: _Origin, timeout: float) -> _Pooled:
        stream = self.backend.connect_tcp(origin.host, origin.port, timeout)
        if origin.scheme == "https":
            stream = stream.start_tls(self._ssl_context(), origin.host, timeout)
        return _Pooled(stream)

    def exchange(
        self,
        req: HttpRequest,
        feed: Callable[[Mapping[str, str]], TransportFailure | None],
        chunk: Callable[[bytes], TransportFailure | None],
    ) -> tuple[int, Mapping[str, str]] | TransportFailure:
        """Send ``req`` and stream its answer (under the driver's deadline): ``feed`` gets
        the headers, ``chunk`` each raw body piece (either may refuse the answer). Returns
        the status and headers once the body ended, or the failure."""
        origin = self._where(req)
        if isinstance(origin, TransportFailure):
            return origin
        conn = self._checkout(origin.key)
        fast = fast_reader(req)
        try:
            if conn is None:
                conn = self._connect(origin, req.connect_timeout_s)
            data = _fast_request_bytes(req, origin, _ACCEPT_ENCODING) if fast else None
            if data is None:
                fast = None
                data = _request_bytes(conn.h11, req, origin, _ACCEPT_ENCODING)
            conn.stream.write(data, req.timeout_s)
            answer = read_answer(conn.h11, fast, req, feed, chunk)
            try:
                next(answer)
                while True:
                    answer.send(conn.stream.read(_READ_SIZE, req.timeout_s))
            except StopIteration as done:
                reply: tuple[int, Mapping[str, str]] | TransportFailure = done.value
        except httpcore.TimeoutException as exc:
            reply = TransportFailure("timeout", f"timed out ({type(exc).__name__})")
        except httpcore.NetworkError as exc:
            reply = TransportFailure("connection", f"connection failed ({type(exc).__name__})")
        except (h11.RemoteProtocolError, _Broken):
            reply = _MID_ANSWER
        except (h11.LocalProtocolError, _BadRequest):
            reply = TransportFailure("protocol", "broken HTTP exchange (LocalProtocolError)")
        except BaseException:
            if conn is not None:
                conn.stream.close()
            raise
        if conn is not None:
            if not isinstance(reply, TransportFailure) and reusable(conn.h11, fast):
                self._checkin(origin.key, conn)
            else:
                conn.stream.close()
        if self.is_closed and isinstance(reply, TransportFailure):
            return _CLOSED
        return reply

    def close(self) -> None:
        """Close every idle connection and wake every busy one: calls using one end as
        ``closed``."""
        with self._lock:
            self.is_closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.stream.close()
        self.backend.interrupt_all()


def new_sync_client(
    limits: httpx.Limits, transport: httpx.BaseTransport | None = None
) -> httpx.Client | SyncPool:
    """The sync twin's own client: the lean :class:`SyncPool`, unless a transport is given
    or the environment names a proxy (then an ``httpx.Client`` on :class:`DeadlineTransport`
    with :func:`proxy_mounts`, which honours it)."""
    if transport is not None:
        return httpx.Client(transport=transport, limits=limits, follow_redirects=False)
    if not _environment_proxies():
        return SyncPool(limits)
    # Environment proxies, as httpx's default would honour them (it ignores them once a
    # transport is given), each on the deadline backend too.
    return httpx.Client(
        transport=DeadlineTransport(limits=limits),
        mounts=proxy_mounts(limits=limits),
        limits=limits,
        follow_redirects=False,
    )


def new_async_client(
    limits: httpx.Limits, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient | AsyncPool:
    """The async twin's own client: the lean :class:`AsyncPool`, unless a transport is given
    or the environment names a proxy (then an ``httpx.AsyncClient``, which honours it).
    ``NO_PROXY`` entries alone name no proxy: they only say which hosts go direct."""
    if transport is None and not _environment_proxies():
        return AsyncPool(limits)
    return httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False)


def _environment_proxies() -> list[str]:
    """The proxy URLs the environment names (as :func:`proxy_mounts` reads them)."""
    from httpx._utils import get_environment_proxies

    return [url for url in get_environment_proxies().values() if url is not None]


# -- the drivers ---------------------------------------------------------------------------


def _queued_out(reply: TransportFailure, req: HttpRequest, left: float) -> TransportFailure:
    """A deadline cut after waiting for admission, with less than one attempt's timeout
    left, is local congestion (the shim's own queue ate the budget), not the upstream's
    failure: it must not count against a breaker."""
    if reply.kind == "budget" and left < req.timeout_s:
        return TransportFailure(
            "overload",
            "the call's budget ran out after waiting for an admission slot "
            "([upstream] max_in_flight)",
        )
    return reply


def _gated_failure(
    reply: TransportFailure,
    gate: Admission | AsyncAdmission,
    waited: bool,
    req: HttpRequest,
    left: float,
) -> TransportFailure:
    """A failed exchange through the admission gate: closed while it ran, or a budget cut
    after queueing (:func:`_queued_out`); otherwise the failure as it came."""
    if gate.closed:
        return _CLOSED
    if waited:
        return _queued_out(reply, req, left)
    return reply


def _finish(
    resp: httpx.Response, reader: _BodyReader, failure: TransportFailure | None
) -> HttpResponse | TransportFailure:
    failure = failure or reader.finish()
    if failure:
        return failure
    # One plain, immutable, lower-case keyed mapping, built here: httpx stays in the driver.
    return HttpResponse(
        resp.status_code, header_map(resp.headers.multi_items()), bytes(reader.body)
    )


def _late(req: HttpRequest, clock: Callable[[], float]) -> bool:
    return clock() >= req.deadline - 0.002


def _exchange_sync(
    client: httpx.Client, req: HttpRequest, clock: Callable[[], float], remaining: float
) -> HttpResponse | TransportFailure:
    reader = _BodyReader(req, clock)
    token = _DEADLINE.set(time.monotonic() + remaining)
    try:
        with client.stream(
            req.method,
            req.url,
            headers=(*req.headers, _ACCEPT_ENCODING),
            content=req.body or None,
            timeout=_timeout(req, remaining),
        ) as resp:
            failure = reader.start(resp.headers)
            if failure:
                pass
            elif resp.is_stream_consumed:  # an in-memory answer (e.g. httpx.MockTransport)
                failure = reader.whole(resp.content)
            else:
                for chunk in resp.iter_raw():
                    failure = reader.feed(chunk)
                    if failure:
                        break
            return _finish(resp, reader, failure)
    except _ERRORS as exc:
        failure = _failure(exc)
        if failure.kind == "timeout" and _late(req, clock):
            return _BUDGET
        return failure
    finally:
        _DEADLINE.reset(token)


_ERRORS = (httpx.TransportError, httpx.DecodingError)


def _exchange_own(
    pool: SyncPool, req: HttpRequest, clock: Callable[[], float], remaining: float
) -> HttpResponse | TransportFailure:
    reader = _BodyReader(req, clock)
    token = _DEADLINE.set(time.monotonic() + remaining)
    try:
        got = pool.exchange(req, reader.start, reader.feed)
    finally:
        _DEADLINE.reset(token)
    if isinstance(got, TransportFailure):
        return _BUDGET if got.kind == "timeout" and _late(req, clock) else got
    return reader.finish() or HttpResponse(got[0], got[1], bytes(reader.body))


def _send_sync(
    client: httpx.Client | SyncPool,
    req: HttpRequest,
    clock: Callable[[], float],
    gate: Admission | None,
) -> HttpResponse | TransportFailure:
    remaining = req.deadline - clock()
    if remaining <= 0:
        return _BUDGET
    exchange = _exchange_own if isinstance(client, SyncPool) else _exchange_sync
    if gate is None:
        return exchange(client, req, clock, remaining)  # type: ignore[arg-type]
    if gate.closed:
        return _CLOSED
    waited = not gate.try_acquire()
    if waited and not gate.acquire(remaining):
        return _CLOSED if gate.closed else _OVERLOAD
    try:
        remaining = req.deadline - clock()
        if remaining <= 0:
            return _OVERLOAD  # the whole budget went on waiting for a slot
        try:
            reply = exchange(client, req, clock, remaining)  # type: ignore[arg-type]
        except RuntimeError:
            if client.is_closed:  # httpx: "the client has been closed"
                return _CLOSED
            raise
        if isinstance(reply, TransportFailure):
            return _gated_failure(reply, gate, waited, req, remaining)
        return reply
    finally:
        gate.release()


if sys.version_info >= (3, 11):
    _scope = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _scope(delay: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()


class _Unsigned:
    """Signing a request at send time raised: the driver raises it inside the flow, where
    signing before the request was yielded would have raised it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _sign(req: HttpRequest) -> _Unsigned | None:
    """Sign ``req`` now if it is signed at send time (see :class:`HttpRequest`)."""
    try:
        req.headers  # noqa: B018 - reading them signs
    except Exception as exc:  # whatever signing raised goes back into the flow
        return _Unsigned(exc)
    return None


async def _send_async(
    client: httpx.AsyncClient | AsyncPool,
    req: HttpRequest,
    clock: Callable[[], float],
    gate: AsyncAdmission | None,
) -> HttpResponse | TransportFailure | _Unsigned:
    remaining = req.deadline - clock()
    if remaining <= 0:
        return _BUDGET
    waited = False
    if gate is not None:
        if gate.closed:
            return _CLOSED
        if not gate.try_acquire():
            waited = True
            try:
                async with _scope(remaining):  # waiting for a slot counts against the budget
                    await gate.acquire()
            except TimeoutError:
                return _OVERLOAD
            except _GateClosed:
                return _CLOSED
    # Signed once admitted: a queued request costs no RSA work on the event loop and goes
    # with a fresh timestamp.
    unsigned = _sign(req)
    if unsigned is not None:
        if gate is not None:
            gate.release()
        return unsigned
    admitted = clock()
    remaining = req.deadline - admitted
    if remaining <= 0 or (waited and gate is not None and remaining < gate.exchange_s):
        if gate is not None:
            gate.release()
        if not waited:
            return _BUDGET
        # the queue ate the budget: what is left could not carry an exchange to its end
        return _OVERLOAD if remaining <= 0 else _TOO_LATE
    try:
        if isinstance(client, AsyncPool):
            reply = await _exchange_pool(client, req, clock, remaining)
        else:
            reply = await _exchange_httpx(client, req, clock, remaining)
    finally:
        if gate is not None:
            gate.release()
    if gate is not None:
        if isinstance(reply, TransportFailure):
            return _gated_failure(reply, gate, waited, req, remaining)
        gate.exchange_s += (clock() - admitted - gate.exchange_s) * _EXCHANGE_WEIGHT
    return reply


async def _exchange_pool(
    pool: AsyncPool, req: HttpRequest, clock: Callable[[], float], remaining: float
) -> HttpResponse | TransportFailure:
    reader = _BodyReader(req, clock)
    try:
        # The pool bounds each socket operation by the deadline itself; this scope is the
        # backstop, as on the httpx path.
        async with _scope(remaining + _BACKSTOP_S):
            got = await pool.exchange(req, reader.start, reader.feed, clock)
    except TimeoutError:
        return _BUDGET
    if isinstance(got, TransportFailure):
        return _BUDGET if got.kind == "timeout" and _late(req, clock) else got
    return reader.finish() or HttpResponse(got[0], got[1], bytes(reader.body))


async def _exchange_httpx(
    client: httpx.AsyncClient, req: HttpRequest, clock: Callable[[], float], remaining: float
) -> HttpResponse | TransportFailure:
    reader = _BodyReader(req, clock)
    try:
        # One timeout over the whole exchange. httpx's own (per-phase) timeouts, cut to the
        # deadline, fire first where they can and close cleanly; this scope, a hair later,
        # ends whatever a peer keeps alive one byte at a time.
        async with (
            _scope(remaining + _BACKSTOP_S),
            client.stream(
                req.method,
                req.url,
                headers=(*req.headers, _ACCEPT_ENCODING),
                content=req.body or None,
                timeout=_timeout(req, remaining),
            ) as resp,
        ):
            failure = reader.start(resp.headers)
            if failure:
                pass
            elif resp.is_stream_consumed:  # an in-memory answer (e.g. httpx.MockTransport)
                failure = reader.whole(resp.content)
            else:
                async for chunk in resp.aiter_raw():
                    failure = reader.feed(chunk)
                    if failure:
                        break
            return _finish(resp, reader, failure)
    except TimeoutError:
        return _BUDGET
    except _ERRORS as exc:
        reply = _failure(exc)
        return _BUDGET if reply.kind == "timeout" and _late(req, clock) else reply
    except RuntimeError:
        if not client.is_closed:
            raise
        return _CLOSED


def run_sync(
    flow: Flow[T],
    client: httpx.Client | SyncPool,
    clock: Callable[[], float] = time.monotonic,
    gate: Admission | None = None,
) -> T:
    """Drive ``flow`` to its result with blocking I/O (through ``gate``, when given)."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = flow.send(None)
            else:
                # The sync twin signs before it waits for a slot: a blocked thread costs the
                # others nothing, and a slot is not held through the RSA work.
                unsigned = _sign(step)
                if unsigned is not None:
                    step = flow.throw(unsigned.error)
                else:
                    step = flow.send(_send_sync(client, step, clock, gate))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()  # abandoned (e.g. cancelled): the flow's cleanup runs now, not at GC


async def run_async(
    flow: Flow[T],
    client: httpx.AsyncClient | AsyncPool,
    clock: Callable[[], float] = time.monotonic,
    gate: AsyncAdmission | None = None,
) -> T:
    """Drive ``flow`` to its result with asyncio I/O (through ``gate``, when given)."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = flow.send(None)
            else:
                reply = await _send_async(client, step, clock, gate)
                if isinstance(reply, _Unsigned):  # noqa: SIM108 - mypy narrows only this way
                    step = flow.throw(reply.error)
                else:
                    step = flow.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()  # abandoned (e.g. cancelled): the flow's cleanup runs now, not at GC
