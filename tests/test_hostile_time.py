"""The call's budget bounds every phase of the exchange, against hostile servers on loopback.

Each hostile server (``tests/hostile.py``) stalls one phase — connect, TLS, status line,
headers, chunk-size lines, body, trailers, a body that inflates to nothing — keeping every
single read shorter than ``timeout_s``, so only a real deadline can end the call. Each test
runs through both twins and asserts the wall time against ``budget_s`` (+0.5 s) and the
typed outcome. Shadow jobs and fallbacks are held to their own budgets the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shim._errors import ShimError, UpstreamError
from shim.sandbox import Emulator, SandboxState
from tests.conftest import Twin
from tests.fault_cases import build_twin, parse_emulator_config
from tests.hostile import Conn, HostileServer, Request, head, real_answer

STOCK = "1757"
MCH = "10000098"
BUDGET = 0.6
SLACK = 0.5  # the bound: no call lives past budget_s + 0.5 s
DRIP = 0.02  # seconds between dripped bytes: every read is far shorter than timeout_s


@pytest.fixture
async def make_twin(
    twin_kind: str, sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> AsyncIterator[Callable[..., Twin]]:
    """``make_twin(url, mode="legacy", v3_url=None, **tables)``: a twin on real sockets."""
    made: list[Twin] = []

    def build(url: str, mode: str = "legacy", v3_url: str | None = None, **tables: Any) -> Twin:
        upstream = {"timeout_s": 5.0, "connect_timeout_s": 5.0, "budget_s": BUDGET}
        upstream.update(tables.pop("upstream", {}))
        tables = {
            "upstream": upstream,
            "retry": {"attempts": 1},
            "routing": {"mode": mode, **tables.pop("routing", {})},
            **tables,
        }
        cfg = parse_emulator_config(sandbox_state, tmp_path, url, tables)
        if v3_url is not None:
            cfg = replace(cfg, upstream=replace(cfg.upstream, v3_base_url=v3_url))
        twin = build_twin(twin_kind, cfg, emulator, inprocess=False)
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()


async def timed(twin: Twin, **kwargs: Any) -> tuple[float, dict[str, str] | ShimError]:
    """Run one query; return its wall time and its answer or typed error."""
    start = time.monotonic()
    try:
        result: dict[str, str] | ShimError = await twin.query(STOCK, mch_id=MCH, **kwargs)
    except ShimError as exc:
        result = exc
    return time.monotonic() - start, result


# -- scripts: each keeps one phase going, a byte at a time --------------------------------


def drip_status(conn: Conn, req: Request) -> None:
    """The status line, one byte per DRIP, never finished."""
    conn.drip(b"HTTP/1.1 200 " + b"O" * 5000, DRIP)


def drip_headers(conn: Conn, req: Request) -> None:
    """A whole status line, then one endless header, a byte at a time."""
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n")
    conn.drip(b"X-Slow: " + b"a" * 5000, DRIP)


def drip_many_headers(conn: Conn, req: Request) -> None:
    """Short headers, each one sent whole but slowly (each read gets something)."""
    conn.send(b"HTTP/1.1 200 OK\r\n")
    conn.drip_forever(b"X-A: b\r\n", DRIP)


def drip_chunk_size(conn: Conn, req: Request) -> None:
    """Chunked body whose first chunk-size line (an extension) never ends."""
    conn.send(head(200, [("Content-Type", "text/xml"), ("Transfer-Encoding", "chunked")]))
    conn.drip(b"5;ext=" + b"e" * 5000, DRIP)


def drip_chunks(conn: Conn, req: Request) -> None:
    """Chunked body of endless one-byte chunks."""
    conn.send(head(200, [("Content-Type", "text/xml"), ("Transfer-Encoding", "chunked")]))
    conn.drip_forever(b"1\r\n \r\n", DRIP)


def drip_trailers(conn: Conn, req: Request) -> None:
    """A whole chunked body, then a trailer section that never ends."""
    conn.send(head(200, [("Content-Type", "text/xml"), ("Transfer-Encoding", "chunked")]))
    conn.send(b"5\r\n<xml>\r\n0\r\n")
    conn.drip(b"X-Trailer: " + b"t" * 5000, DRIP)


def drip_body(conn: Conn, req: Request) -> None:
    """Content-Length 100000, delivered a byte per DRIP."""
    conn.send(head(200, [("Content-Type", "text/xml"), ("Content-Length", "100000")]))
    conn.drip(b" " * 100_000, DRIP)


def _empty_deflate_blocks() -> bytes:
    comp = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = comp.compress(b"")
    for _ in range(20):
        out += comp.flush(zlib.Z_FULL_FLUSH)  # an empty block each: output nothing
    return out


def inflates_to_nothing(conn: Conn, req: Request) -> None:
    """A gzip body of endless empty deflate blocks, dripped: it decodes to nothing."""
    conn.send(
        head(
            200,
            [
                ("Content-Type", "text/xml"),
                ("Content-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
    )
    start = _empty_deflate_blocks()
    conn.send(b"%x\r\n%s\r\n" % (len(start), start))
    block = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    block.compress(b"")
    empty = block.flush(zlib.Z_FULL_FLUSH)
    conn.drip_forever(b"%x\r\n%s\r\n" % (len(empty), empty), DRIP)


def silent(conn: Conn, req: Request) -> None:
    """Read the request, then say nothing."""
    conn.hold()


PHASES: dict[str, Callable[[Conn, Request], None]] = {
    "status_line": drip_status,
    "header_bytes": drip_headers,
    "header_lines": drip_many_headers,
    "chunk_size_line": drip_chunk_size,
    "chunks": drip_chunks,
    "trailers": drip_trailers,
    "body": drip_body,
    "decoding_to_nothing": inflates_to_nothing,
    "no_answer": silent,
}


@pytest.mark.parametrize("mode", ["legacy", "v3"])
@pytest.mark.parametrize("phase", sorted(PHASES))
async def test_a_dripping_phase_ends_within_the_budget(
    make_twin: Callable[..., Twin], phase: str, mode: str
) -> None:
    """Whatever phase the peer drips (every read shorter than timeout_s), the call ends by
    budget_s + 0.5 s with a typed budget/timeout error."""
    with HostileServer(PHASES[phase]) as server:
        twin = make_twin(server.url, mode, routing={"fallback_to_legacy": False})
        elapsed, result = await timed(twin)
    print(f"BOUND {phase} {mode}: {elapsed:.3f} s vs budget {BUDGET} s -> {result!r}")
    assert isinstance(result, UpstreamError), result
    assert result.kind in ("budget", "timeout"), result
    assert elapsed <= BUDGET + SLACK, f"{phase}: {elapsed:.2f} s against a {BUDGET} s budget"


@pytest.fixture
def unaccepting() -> Iterator[str]:
    """A listener whose accept queue is full and never drained: connect() hangs (SYNs dropped)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue (and the SYN queue's retries)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    for s in fillers:
        s.close()
    listener.close()


async def test_a_connect_that_hangs_ends_within_the_budget(
    make_twin: Callable[..., Twin], unaccepting: str
) -> None:
    """connect() against a full accept queue hangs; connect_timeout_s (5 s) is longer than
    the budget, so only the deadline ends it."""
    twin = make_twin(unaccepting)
    elapsed, result = await timed(twin)
    print(f"BOUND connect: {elapsed:.3f} s vs budget {BUDGET} s -> {result!r}")
    assert isinstance(result, UpstreamError), result
    assert result.kind in ("budget", "timeout", "connection"), result
    assert elapsed <= BUDGET + SLACK, f"connect: {elapsed:.2f} s"


def tls_drip(conn: Conn, req: Request) -> None:  # pragma: no cover - never gets a request
    raise AssertionError("a TLS client sends no plain HTTP request")


async def test_a_tls_handshake_that_drips_ends_within_the_budget(
    make_twin: Callable[..., Twin],
) -> None:
    """An https upstream that accepts and drips handshake bytes: the TLS phase is bounded."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = asyncio.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        # a TLS record header that announces a long handshake message, then a byte a DRIP
        conn.sendall(b"\x16\x03\x03\x40\x00")
        end = time.monotonic() + 5
        while time.monotonic() < end and not stop.is_set():
            try:
                conn.sendall(b"\x02")
            except OSError:
                break
            time.sleep(DRIP)
        conn.close()

    worker = asyncio.get_running_loop().run_in_executor(None, serve)
    try:
        twin = make_twin(f"https://127.0.0.1:{port}")
        elapsed, result = await timed(twin)
    finally:
        stop.set()
        listener.close()
        await worker
    print(f"BOUND tls: {elapsed:.3f} s vs budget {BUDGET} s -> {result!r}")
    assert isinstance(result, UpstreamError), result
    assert elapsed <= BUDGET + SLACK, f"tls: {elapsed:.2f} s"


async def test_a_slow_but_whole_real_answer_still_serves(
    make_twin: Callable[..., Twin], emulator: Emulator
) -> None:
    """A genuine signed answer dripped in a few pieces inside the budget is served: the
    deadline cuts stalls, not slow-but-finished answers."""

    def slow_real(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        conn.drip(head(status, [*headers, ("Content-Length", str(len(body)))]), 0.01, 64)
        conn.drip(body, 0.01, 128)

    with HostileServer(slow_real) as server:
        twin = make_twin(server.url, upstream={"budget_s": 3.0})
        elapsed, result = await timed(twin)
    assert isinstance(result, dict), result
    assert result["return_code"] == "SUCCESS" and result["coupon_stock_id"] == STOCK
    assert elapsed < 3.0


async def test_fallback_is_bounded_by_the_call_budget(
    make_twin: Callable[..., Twin], server: Any
) -> None:
    """v3 drips its headers; the fallback to legacy (the real emulator) still serves, and the
    whole call stays within budget_s."""
    with HostileServer(drip_headers) as hostile:
        twin = make_twin(
            server.base_url, "v3", v3_url=hostile.url, routing={"fallback_to_legacy": True}
        )
        elapsed, result = await timed(twin)
    assert isinstance(result, dict), result
    assert result["return_code"] == "SUCCESS"
    assert elapsed <= BUDGET + SLACK


async def test_fallback_that_drips_too_ends_within_the_budget(
    make_twin: Callable[..., Twin],
) -> None:
    """Both routes drip: serving route and fallback together stay within budget_s."""
    with HostileServer(drip_body) as hostile:
        twin = make_twin(hostile.url, "v3", routing={"fallback_to_legacy": True})
        elapsed, result = await timed(twin)
    assert isinstance(result, UpstreamError), result
    assert elapsed <= BUDGET + SLACK


async def test_shadow_jobs_end_by_the_shadow_timeout_and_free_their_slots(
    make_twin: Callable[..., Twin], server: Any
) -> None:
    """The shadowed v3 side drips its headers: every job ends by [shadow] timeout_s (as a
    budget error), its max_in_flight slot is freed, and the next comparison runs."""
    shadow_timeout = 0.5
    with HostileServer(drip_headers) as hostile:
        twin = make_twin(
            server.base_url,
            "shadow",
            v3_url=hostile.url,
            shadow={"timeout_s": shadow_timeout, "max_in_flight": 2, "workers": 2},
        )
        start = time.monotonic()
        for _ in range(2):
            _, result = await timed(twin)
            assert isinstance(result, dict) and result["return_code"] == "SUCCESS"
        assert await twin.wait_for_shadows(timeout=shadow_timeout + SLACK + 1)
        waited = time.monotonic() - start
        totals = twin.shim.shadow_totals()
        assert totals.errors == 2 and totals.dropped == 0, totals
        assert set(totals.errors_by_kind) <= {"budget", "timeout"}, totals
        assert waited <= shadow_timeout + SLACK + 0.3, f"shadow jobs took {waited:.2f} s"
        _, result = await timed(twin)  # the slots are free again: this one is not dropped
        assert await twin.wait_for_shadows(timeout=shadow_timeout + SLACK + 1)
        assert twin.shim.shadow_totals().dropped == 0
