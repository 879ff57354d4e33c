"""The call's budget bounds every phase of the exchange, against hostile servers on loopback.

Each hostile server (``tests/hostile.py``) stalls one phase — connect, TLS, status line,
headers, chunk-size lines, body, trailers, a body that inflates to nothing — keeping every
single read shorter than ``timeout_s``, so only a real deadline can end the call. Each test
runs through both twins and asserts the wall time against ``budget_s`` (+0.5 s) and the
typed outcome. Shadow jobs and fallbacks are held to their own budgets the same way.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shim import ShimError, UpstreamError
from shim.sandbox import Emulator, SandboxState
from tests.conftest import Twin
from tests.fault_cases import build_twin, parse_emulator_config
from tests.hostile import (
    Conn,
    Request,
    Script,
    Variant,
    bomb,
    head,
    real_answer,
    run_variants,
    serve_encoded,
    serving,
    stacked_bomb,
)

STOCK = "1757"
MCH = "10000098"
BUDGET = 0.6
SLACK = 0.5  # the bound: no call lives past budget_s + 0.5 s
DRIP = 0.02  # seconds between dripped bytes: every read is far shorter than timeout_s
SHADOW_TIMEOUT = 0.3  # [shadow] timeout_s of the shadow variants
TWINS = ("sync", "async")
PLACEHOLDER = "http://127.0.0.1:9"  # replaced by each variant's own server
BOMB_CAP = 256 * 1024  # [upstream] max_body_bytes of the bomb variants
BOMB_BUDGET = 1.0
BOMB_ENCODINGS = ("gzip", "deflate", "gzip, gzip", "gzip, gzip, gzip")


@functools.cache
def bombs(encoding: str) -> bytes:
    """A body in ``encoding`` that inflates to 64 MiB (256 times the cap)."""
    size = 64 * 1024 * 1024
    if encoding == "deflate":
        return bomb(size, wbits=zlib.MAX_WBITS)
    return stacked_bomb(size, encoding.count("gzip"))


class Configs:
    """Parsed configs for the variants, one per table set (parsing loads RSA keys: slow)."""

    def __init__(self, state: SandboxState, folder: Path) -> None:
        self.state, self.folder, self.cache = state, folder, {}  # type: ignore[var-annotated]

    def get(self, url: str, mode: str = "legacy", v3_url: str | None = None, **tables: Any) -> Any:
        """The emulator's config with ``tables``, at ``url`` (v3 at ``v3_url`` if given)."""
        upstream = {"timeout_s": 5.0, "connect_timeout_s": 5.0, "budget_s": BUDGET}
        upstream.update(tables.pop("upstream", {}))
        tables = {
            "upstream": upstream,
            "retry": {"attempts": 1},
            "routing": {"mode": mode, **tables.pop("routing", {})},
            **tables,
        }
        key = repr(sorted(tables.items()))
        if key not in self.cache:
            self.cache[key] = parse_emulator_config(self.state, self.folder, PLACEHOLDER, tables)
        return self.with_url(self.cache[key], url, v3_url)

    @staticmethod
    def with_url(cfg: Any, url: str, v3_url: str | None = None) -> Any:
        """``cfg`` with its upstream at ``url`` (v3 at ``v3_url`` if given)."""
        up = replace(cfg.upstream, v2_base_url=url, v3_base_url=v3_url or url)
        return replace(cfg, upstream=up)


@pytest.fixture
def configs(sandbox_state: SandboxState, tmp_path: Path) -> Configs:
    return Configs(sandbox_state, tmp_path)


async def timed(twin: Twin, **kwargs: Any) -> tuple[float, dict[str, str] | ShimError]:
    """Run one query; return its wall time and its answer or typed error."""
    start = time.monotonic()
    try:
        result: dict[str, str] | ShimError = await twin.query(STOCK, mch_id=MCH, **kwargs)
    except ShimError as exc:
        result = exc
    return time.monotonic() - start, result


@contextlib.asynccontextmanager
async def twin_of(kind: str, config: Any, emulator: Emulator) -> AsyncIterator[Twin]:
    """A twin of ``kind`` on real sockets, closed after."""
    twin = build_twin(kind, config, emulator, inprocess=False)
    try:
        yield twin
    finally:
        await twin.close()


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


def _bounded(name: str, elapsed: float, result: object, budget: float = BUDGET) -> str:
    """Assert a typed budget/timeout error within ``budget`` + SLACK; the report line."""
    assert isinstance(result, UpstreamError), result
    assert result.kind in ("budget", "timeout"), result
    assert elapsed <= budget + SLACK, f"{name}: {elapsed:.2f} s against a {budget} s budget"
    return f"{elapsed:.3f} s vs budget {budget} s -> {result.kind}"


@contextlib.contextmanager
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
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


@contextlib.contextmanager
def tls_dripping() -> Iterator[str]:
    """An https upstream that accepts, then drips handshake bytes (a record header that
    announces a long handshake message, then a byte per DRIP)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(5.0)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")
                for _ in range(int(5 / DRIP)):  # at most 5 s, a byte per DRIP
                    conn.sendall(b"\x02")
                    if stop.wait(DRIP):
                        break
            except OSError:
                pass

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        listener.close()
        worker.join(timeout=6.0)


def variants(configs: Configs, emulator: Emulator, legacy_url: str) -> dict[str, Variant]:
    """Every attack on time, through both twins and the shadow path: name -> variant."""
    out: dict[str, Variant] = {}

    def add(name: str) -> Callable[[Variant], Variant]:
        def register(variant: Variant) -> Variant:
            out[name] = variant
            return variant

        return register

    plain = configs.get(PLACEHOLDER)
    bomb_cfg = {
        mode: configs.get(
            PLACEHOLDER,
            mode,
            upstream={"budget_s": BOMB_BUDGET, "max_body_bytes": BOMB_CAP},
            routing={"fallback_to_legacy": False},
        )
        for mode in ("legacy", "v3")
    }
    slow_cfg = configs.get(PLACEHOLDER, upstream={"budget_s": 3.0})
    fb_cfg = configs.get(PLACEHOLDER, "v3", routing={"fallback_to_legacy": True})
    slots_cfg = configs.get(
        PLACEHOLDER,
        "shadow",
        shadow={"timeout_s": SHADOW_TIMEOUT, "max_in_flight": 2, "workers": 2},
    )

    for kind in TWINS:
        for phase, script in PHASES.items():
            for mode in ("legacy", "v3"):
                cfg = configs.get(PLACEHOLDER, mode, routing={"fallback_to_legacy": False})

                @add(f"drip {phase} {mode} {kind}")
                async def drip(kind: str = kind, script: Script = script, cfg: Any = cfg) -> str:
                    # Whatever phase the peer drips (every read shorter than timeout_s), the
                    # call ends by budget_s + 0.5 s with a typed budget/timeout error.
                    with serving(script) as server:
                        async with twin_of(kind, configs.with_url(cfg, server.url), emulator) as t:
                            elapsed, result = await timed(t)
                    return _bounded("drip", elapsed, result)

            shadow_cfg = configs.get(
                PLACEHOLDER, "shadow", shadow={"timeout_s": SHADOW_TIMEOUT, "workers": 1}
            )

            @add(f"drip {phase} shadow {kind}")
            async def shadow(
                kind: str = kind, script: Script = script, cfg: Any = shadow_cfg
            ) -> str:
                # The shadowed v3 side drips: legacy serves, the job ends by [shadow]
                # timeout_s (+0.5 s) as a budget/timeout error.
                with serving(script) as server:
                    cfg = configs.with_url(cfg, legacy_url, v3_url=server.url)
                    async with twin_of(kind, cfg, emulator) as t:
                        start = time.monotonic()
                        _, result = await timed(t)
                        assert isinstance(result, dict) and result["return_code"] == "SUCCESS"
                        assert await t.wait_for_shadows(timeout=SHADOW_TIMEOUT + SLACK + 1)
                        waited = time.monotonic() - start
                        totals = t.shim.shadow_totals()
                assert totals.errors == 1 and totals.dropped == 0, totals
                assert set(totals.errors_by_kind) <= {"budget", "timeout"}, totals
                assert waited <= SHADOW_TIMEOUT + SLACK, f"shadow job took {waited:.2f} s"
                return f"{waited:.3f} s vs shadow timeout {SHADOW_TIMEOUT} s"

        @add(f"connect {kind}")
        async def connect(kind: str = kind) -> str:
            # connect() against a full accept queue hangs; connect_timeout_s (5 s) is longer
            # than the budget, so only the deadline ends it.
            with unaccepting() as url:
                async with twin_of(kind, configs.with_url(plain, url), emulator) as t:
                    elapsed, result = await timed(t)
            assert isinstance(result, UpstreamError), result
            assert result.kind in ("budget", "timeout", "connection"), result
            assert elapsed <= BUDGET + SLACK, f"connect: {elapsed:.2f} s"
            return f"{elapsed:.3f} s vs budget {BUDGET} s -> {result.kind}"

        @add(f"tls {kind}")
        async def tls(kind: str = kind) -> str:
            # An https upstream that drips its handshake: the TLS phase is bounded.
            with tls_dripping() as url:
                async with twin_of(kind, configs.with_url(plain, url), emulator) as t:
                    elapsed, result = await timed(t)
            assert isinstance(result, UpstreamError), result
            assert elapsed <= BUDGET + SLACK, f"tls: {elapsed:.2f} s"
            return f"{elapsed:.3f} s vs budget {BUDGET} s -> {result.kind}"

        @add(f"slow but whole real answer {kind}")
        async def slow_real(kind: str = kind) -> str:
            # A genuine signed answer dripped in a few pieces inside the budget is served:
            # the deadline cuts stalls, not slow-but-finished answers.
            def slow(conn: Conn, req: Request) -> None:
                status, headers, body = real_answer(emulator, req)
                conn.drip(head(status, [*headers, ("Content-Length", str(len(body)))]), 0.01, 64)
                conn.drip(body, 0.01, 128)

            with serving(slow) as server:
                async with twin_of(kind, configs.with_url(slow_cfg, server.url), emulator) as t:
                    elapsed, result = await timed(t)
            assert isinstance(result, dict), result
            assert result["return_code"] == "SUCCESS" and result["coupon_stock_id"] == STOCK
            assert elapsed < 3.0
            return f"served in {elapsed:.3f} s"

        @add(f"fallback serves within budget {kind}")
        async def fallback(kind: str = kind) -> str:
            # v3 drips its headers; the fallback to legacy (the real emulator) still
            # serves, and the whole call stays within budget_s.
            with serving(drip_headers) as hostile:
                cfg = configs.with_url(fb_cfg, legacy_url, v3_url=hostile.url)
                async with twin_of(kind, cfg, emulator) as t:
                    elapsed, result = await timed(t)
            assert isinstance(result, dict), result
            assert result["return_code"] == "SUCCESS"
            assert elapsed <= BUDGET + SLACK, f"fallback: {elapsed:.2f} s"
            return f"served by fallback in {elapsed:.3f} s vs budget {BUDGET} s"

        @add(f"fallback that drips too {kind}")
        async def fallback_drips(kind: str = kind) -> str:
            # Both routes drip: serving route and fallback together stay within budget_s.
            with serving(drip_body) as hostile:
                async with twin_of(kind, configs.with_url(fb_cfg, hostile.url), emulator) as t:
                    elapsed, result = await timed(t)
            assert isinstance(result, UpstreamError), result
            assert elapsed <= BUDGET + SLACK, f"fallback drips: {elapsed:.2f} s"
            return f"{elapsed:.3f} s vs budget {BUDGET} s -> {result.kind}"

        for encoding in BOMB_ENCODINGS:
            for mode in ("legacy", "v3"):

                @add(f"bomb {encoding} {mode} {kind}")
                async def bombed(
                    kind: str = kind, encoding: str = encoding, mode: str = mode
                ) -> str:
                    # A compression bomb (256x the cap inflated) is refused as a protocol
                    # error within the budget (its memory bound: tests/test_hostile_memory.py).
                    payload = bombs(encoding)
                    script = serve_encoded(payload, encoding, chunked=len(payload) > BOMB_CAP)
                    with serving(script) as server:
                        cfg = configs.with_url(bomb_cfg[mode], server.url)
                        async with twin_of(kind, cfg, emulator) as t:
                            elapsed, result = await timed(t)
                    assert isinstance(result, UpstreamError), result
                    assert result.kind == "protocol", result
                    assert elapsed <= BOMB_BUDGET + SLACK, f"bomb: {elapsed:.2f} s"
                    return f"{elapsed:.3f} s vs budget {BOMB_BUDGET} s -> {result.kind}"

        @add(f"shadow slots are freed {kind}")
        async def shadow_slots(kind: str = kind) -> str:
            # Two shadow jobs drip: both end by [shadow] timeout_s as budget errors, their
            # max_in_flight slots are freed, and the next comparison runs (is not dropped).
            with serving(drip_headers) as hostile:
                cfg = configs.with_url(slots_cfg, legacy_url, v3_url=hostile.url)
                async with twin_of(kind, cfg, emulator) as t:
                    start = time.monotonic()
                    for _ in range(2):
                        _, result = await timed(t)
                        assert isinstance(result, dict) and result["return_code"] == "SUCCESS"
                    assert await t.wait_for_shadows(timeout=SHADOW_TIMEOUT + SLACK + 1)
                    waited = time.monotonic() - start
                    totals = t.shim.shadow_totals()
                    assert totals.errors == 2 and totals.dropped == 0, totals
                    assert set(totals.errors_by_kind) <= {"budget", "timeout"}, totals
                    assert waited <= SHADOW_TIMEOUT + SLACK + 0.3, f"shadow jobs: {waited:.2f} s"
                    await timed(t)
                    assert await t.wait_for_shadows(timeout=SHADOW_TIMEOUT + SLACK + 1)
                    assert t.shim.shadow_totals().dropped == 0
            return f"two jobs ended in {waited:.3f} s vs shadow timeout {SHADOW_TIMEOUT} s"

    return out


@pytest.mark.wallclock
def test_every_attack_on_time_ends_within_its_budget(
    configs: Configs, emulator: Emulator, server: Any
) -> None:
    """Every phase a peer can stall (status line, header bytes and lines, chunk-size lines,
    chunks, trailers, body, a body that inflates to nothing, no answer; connect; TLS), as the
    serving route in both modes and as the shadowed side; compression bombs of every coding;
    the fallback and shadow-slot cases; all through both twins. Each variant runs against
    its own hostile server, side by side with the others, and asserts its own wall time
    against its budget (+0.5 s) and its typed outcome.
    """
    for line in run_variants(variants(configs, emulator, server.base_url)):
        print("BOUND " + line)
