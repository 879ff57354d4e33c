"""Hostile upstreams over real loopback sockets, for the adversarial suite.

:class:`HostileServer` is a raw TCP server on 127.0.0.1 (a free port) that reads each
HTTP/1.1 request off the socket and hands it, with the connection, to a *script*: a plain
function that writes whatever bytes it likes, as slowly as it likes, and may reset the
connection. Nothing in it is HTTP-correct on purpose unless a script makes it so.

Scripts get a :class:`Conn` (``send``, ``drip``, ``reset``, ``hold``) and a
:class:`Request`. :func:`real_answer` asks the WeChat Pay emulator for the genuine, correctly
signed answer to the request, so a script can deliver a real answer in a hostile way (byte by
byte, gzip-bombed, after a stall) and the test sees whether verification still holds.

Every wait in a script ends when the server stops or the peer goes away, so a test that
fails never leaves a thread dripping. Drips are capped (``DRIP_CAP_S``) so a shim that does
not enforce its deadline makes the test fail, not hang.

Example::

    def drip_status(conn, req):
        conn.drip(b"HTTP/1.1 200 OK\\r\\n" + b"X" * 10_000, interval=0.02)

    with HostileServer(drip_status) as server:
        ...  # point [upstream] v2_base_url / v3_base_url at server.url
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gzip
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from shim.sandbox import Emulator, SandboxRequest

#: No drip or hold lasts longer than this, whatever a script asks.
DRIP_CAP_S = 8.0

__all__ = [
    "DRIP_CAP_S",
    "Conn",
    "HostileServer",
    "Request",
    "Script",
    "bomb",
    "head",
    "real_answer",
    "run_variants",
    "serve_encoded",
    "serving",
    "stacked_bomb",
]


@dataclass(frozen=True)
class Request:
    """One request as read off the socket (header names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class _Gone(Exception):
    """The peer went away or the server is stopping."""


class Conn:
    """One accepted connection, as a script sees it."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self._stopping = stopping
        self._buf = b""
        self.closed = False

    def _wait(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Gone

    def send(self, data: bytes) -> None:
        """Send ``data`` at once."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _Gone from exc

    def drip(self, data: bytes, interval: float = 0.02, step: int = 1) -> None:
        """Send ``data`` ``step`` bytes at a time, ``interval`` seconds apart (capped)."""
        end = time.monotonic() + DRIP_CAP_S
        for i in range(0, len(data), step):
            if time.monotonic() > end:
                return
            self.send(data[i : i + step])
            self._wait(interval)

    def drip_forever(self, unit: bytes, interval: float = 0.02) -> None:
        """Send ``unit`` again and again, ``interval`` seconds apart (up to the cap)."""
        end = time.monotonic() + DRIP_CAP_S
        while time.monotonic() < end:
            self.send(unit)
            self._wait(interval)

    def hold(self, seconds: float = DRIP_CAP_S) -> None:
        """Keep the connection open and silent (up to the cap)."""
        self._wait(min(seconds, DRIP_CAP_S))

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        """Close the connection normally."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def read_request(self) -> Request | None:
        """The next request on this connection, or None when the peer closed it."""
        while b"\r\n\r\n" not in self._buf:
            chunk = self._recv()
            if not chunk:
                return None
            self._buf += chunk
        raw_head, _, rest = self._buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            chunk = self._recv()
            if not chunk:
                return None
            rest += chunk
        self._buf = rest[length:]
        return Request(method, target, headers, rest[:length])

    def _recv(self) -> bytes:
        while True:
            if self._stopping.is_set():
                return b""
            try:
                return self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b""


Script = Callable[[Conn, Request], None]


@dataclass
class HostileServer:
    """A loopback TCP server that answers every request with ``script``.

    After the script returns, the connection is closed unless ``keep_alive`` is set (then
    the next request on it goes to the script again). ``requests`` records what arrived,
    ``by_connection`` the same per accepted connection (numbered from 1); ``connections``
    counts accepted connections.
    """

    script: Script
    keep_alive: bool = False
    backlog: int = 64
    accept: bool = True
    requests: list[Request] = field(default_factory=list)
    by_connection: dict[int, list[Request]] = field(default_factory=dict)
    connections: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[Conn] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> HostileServer:
        """Listen and serve on a background thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(self.backlog)
        sock.settimeout(0.05)
        self._sock = sock
        self.port = sock.getsockname()[1]
        if self.accept:
            self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="hostile")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(0.05)
            conn = Conn(client, self._stopping)
            with self._lock:
                self.connections += 1
                number = self.connections
                self._conns.append(conn)
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: Conn, number: int) -> None:
        try:
            while not conn.closed:
                req = conn.read_request()
                if req is None:
                    break
                with self._lock:
                    self.requests.append(req)
                    self.by_connection.setdefault(number, []).append(req)
                self.script(conn, req)
                if not self.keep_alive:
                    break
        except _Gone:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop serving, close every connection and join the threads."""
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            conn.close()
        for thread in threads:
            thread.join(timeout=2.0)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def head(status: int, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> bytes:
    """A status line and header block, ready to send."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def real_answer(emulator: Emulator, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
    """The emulator's genuine (signed) answer to ``req``: status, headers, body.

    ``content-length`` and ``connection`` headers are left out, for the script to set.
    """
    reply = emulator.handle(
        SandboxRequest(
            method=req.method,
            target=req.target.encode("latin-1"),
            headers=req.headers,
            body=req.body,
            client_host="127.0.0.1",
        )
    )
    headers = [
        (k, v) for k, v in reply.headers if k.lower() not in ("content-length", "connection")
    ]
    return reply.status, headers, reply.body


@functools.cache
def bomb(size: int, *, wbits: int = 16 + zlib.MAX_WBITS) -> bytes:
    """``size`` zero bytes (a multiple of 1 MiB) compressed: gzip by default,
    ``zlib.MAX_WBITS`` for the zlib format of ``Content-Encoding: deflate``.

    Built fast and without the memory: after a full flush, every 1 MiB block of zeros
    compresses to the same bytes, so the stream is that block repeated, in its container.
    """
    mib = 1 << 20
    assert size % mib == 0 and size >= 2 * mib
    zeros = bytes(mib)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH) == block
    n = size // mib
    tail = comp.compress(zeros) + comp.flush()  # the last block, final
    deflate = block * (n - 1) + tail
    if wbits == zlib.MAX_WBITS:  # zlib container: header, data, Adler-32
        check = 1
        for _ in range(n):
            check = zlib.adler32(zeros, check)
        return b"\x78\xda" + deflate + struct.pack(">I", check)
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + deflate + struct.pack("<II", crc, size & 0xFFFFFFFF)


@functools.cache
def stacked_bomb(size: int, layers: int) -> bytes:
    """``size`` zero bytes gzipped ``layers`` times (``Content-Encoding: gzip, gzip, ...``)."""
    data = bomb(size)
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


def serve_encoded(payload: bytes, encoding: str, *, chunked: bool = False) -> Script:
    """A script answering ``payload`` as a body in ``encoding`` (chunked if asked), then
    holding the connection."""

    def script(conn: Conn, req: Request) -> None:
        headers = [("Content-Type", "text/xml"), ("Content-Encoding", encoding)]
        if chunked:
            conn.send(head(200, [*headers, ("Transfer-Encoding", "chunked")]))
            for i in range(0, len(payload), 8192):
                part = payload[i : i + 8192]
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\n\r\n")
        else:
            conn.send(head(200, [*headers, ("Content-Length", str(len(payload)))]) + payload)
        conn.hold(2.0)

    return script


@contextlib.contextmanager
def serving(script: Script, **kwargs: Any) -> Iterator[HostileServer]:
    """``with serving(script) as server:`` — a started :class:`HostileServer`."""
    server = HostileServer(script, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


#: A variant of an attack: a coroutine function that raises ``AssertionError`` when the
#: shim breaks a bound, and returns a line for the report (its measured bound) otherwise.
Variant = Callable[[], Coroutine[Any, Any, str]]


def run_variants(variants: dict[str, Variant], *, workers: int = 16) -> list[str]:
    """Run every variant at once, each in a thread and event loop of its own.

    Each variant builds its own hostile server and shim and times its own call, so running
    side by side does not blur the bound it asserts. Returns the variants' report lines
    (sorted by name); raises one ``AssertionError`` naming every variant that failed, with
    why, so one run shows every broken bound.
    """

    def one(name: str) -> tuple[str, str | None]:
        try:
            return f"{name}: {asyncio.run(variants[name]())}", None
        except Exception as exc:  # every failure is reported, by variant
            return name, f"{name}: {type(exc).__name__}: {exc}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, sorted(variants)))
    failures = [failed for _, failed in results if failed is not None]
    assert not failures, f"{len(failures)} of {len(variants)} variants failed:\n" + "\n".join(
        failures
    )
    return [line for line, _ in results]
