"""The body cap bounds what the shim holds in memory, whatever Content-Encoding claims.

Hostile servers on loopback send compression bombs (gzip, deflate, stacked ``gzip, gzip``
and triple gzip, a gzip body behind a ``Content-Length`` under the cap, chunked), unknown
or over-deep codings, and corrupt or truncated compressed bodies. Each runs through both
twins (and the shadow path); ``tracemalloc`` measures the call's peak memory growth, which
must stay within a small multiple of ``max_body_bytes``; the outcome must be a typed error.
A genuinely compressed, correctly signed answer is still inflated, verified and served.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
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
    HostileServer,
    Request,
    bomb,
    head,
    real_answer,
    serve_encoded,
    stacked_bomb,
)

STOCK = "1757"
MCH = "10000098"
CAP = 256 * 1024  # [upstream] max_body_bytes for these tests
PEAK_LIMIT = 4 * CAP  # "a small multiple of max_body_bytes"
BOMB = 64 * 1024 * 1024  # what each bomb inflates to: 256 times the cap


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """The compressed payloads, built once (each costs no memory to build)."""
    return {
        "gzip": bomb(BOMB),
        "deflate": bomb(BOMB, wbits=zlib.MAX_WBITS),
        "gzip, gzip": stacked_bomb(BOMB, 2),
        "gzip, gzip, gzip": stacked_bomb(BOMB, 3),
    }


@pytest.fixture
async def make_twin(
    twin_kind: str, sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> AsyncIterator[Callable[..., Twin]]:
    """``make_twin(url, mode="legacy", v3_url=None, **tables)``: a twin on real sockets."""
    made: list[Twin] = []

    def build(url: str, mode: str = "legacy", v3_url: str | None = None, **tables: Any) -> Twin:
        tables = {
            "upstream": {"budget_s": 3.0, "timeout_s": 2.0, "max_body_bytes": CAP},
            "retry": {"attempts": 1},
            "routing": {"mode": mode, "fallback_to_legacy": False},
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


async def measured(twin: Twin) -> tuple[int, dict[str, str] | ShimError]:
    """One query under tracemalloc: peak growth in bytes, and the answer or typed error.

    (The bound in time of these answers is asserted side by side with the other attacks on
    time, in ``tests/test_hostile_time.py``; tracemalloc is process-wide, so the memory
    bounds are measured here one call at a time.)"""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        try:
            result: dict[str, str] | ShimError = await twin.query(STOCK, mch_id=MCH)
        except ShimError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, result


@pytest.mark.parametrize("mode", ["legacy", "v3"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "gzip, gzip", "gzip, gzip, gzip"])
async def test_a_compression_bomb_costs_a_small_multiple_of_the_cap(
    make_twin: Callable[..., Twin], bombs: dict[str, bytes], encoding: str, mode: str
) -> None:
    """A bomb that inflates to 256x the cap (its compressed size under the cap) is refused
    as a protocol error, with peak memory growth within 4x max_body_bytes."""
    payload = bombs[encoding]
    assert len(payload) < CAP or encoding in ("gzip", "deflate")
    with HostileServer(serve_encoded(payload, encoding, chunked=len(payload) > CAP)) as server:
        twin = make_twin(server.url, mode)
        peak, result = await measured(twin)
    print(f"BOUND {encoding} {mode}: {peak / 2**20:.3f} MiB vs cap {CAP / 2**20:.2f} MiB")
    assert isinstance(result, UpstreamError), result
    assert result.kind == "protocol", result
    assert "cap" in str(result) or "exceeds" in str(result), result
    assert peak <= PEAK_LIMIT, f"{encoding}: peak growth {peak / 2**20:.2f} MiB vs cap 256 KiB"


async def test_a_tiny_triple_gzip_answer_of_a_gibibyte(make_twin: Callable[..., Twin]) -> None:
    """A triple-gzip answer of a few hundred bytes (1 GiB inflated) at the
    default 1 MiB cap: refused, peak growth within 4x the cap."""
    payload = stacked_bomb(1 << 30, 3)
    assert len(payload) < 2048

    with HostileServer(serve_encoded(payload, "gzip, gzip, gzip")) as server:
        twin = make_twin(server.url, upstream={"budget_s": 5.0, "timeout_s": 4.0})
        peak, result = await measured(twin)
    print(f"BOUND triple-gzip {len(payload)} B: {peak / 2**20:.3f} MiB vs cap 1 MiB -> {result!r}")
    assert isinstance(result, UpstreamError) and result.kind == "protocol", result
    assert peak <= 4 * (1 << 20), f"peak growth {peak / 2**20:.2f} MiB vs cap 1 MiB"


@pytest.mark.parametrize(
    ("encoding", "payload", "says"),
    [
        ("br", b"\x0b\x02\x80hello\x03", "not supported"),
        ("compress", b"\x1f\x9d\x90", "not supported"),
        ("gzip, gzip, gzip, gzip", gzip.compress(b"x"), "at most"),
        ("gzip", b"\x1f\x8b\x08\x00garbage-that-is-not-deflate", "corrupt"),
        ("gzip", gzip.compress(bytes(range(256)) * 64)[:200], "ends early"),
        ("deflate", b"not zlib at all", "corrupt"),
    ],
    ids=["br", "compress", "four_layers", "corrupt_gzip", "truncated_gzip", "corrupt_deflate"],
)
async def test_unsupported_or_broken_encodings_are_typed_errors(
    make_twin: Callable[..., Twin], encoding: str, payload: bytes, says: str
) -> None:
    """Unknown codings, stacks deeper than 3, corrupt or truncated compressed bodies are
    refused as protocol errors (never passed through, never an untyped crash)."""
    with HostileServer(serve_encoded(payload, encoding)) as server:
        twin = make_twin(server.url)
        _, result = await measured(twin)
    assert isinstance(result, UpstreamError) and result.kind == "protocol", result
    assert says in str(result), result


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "gzip, gzip", "identity"])
async def test_a_genuinely_compressed_signed_answer_is_served(
    make_twin: Callable[..., Twin], emulator: Emulator, encoding: str
) -> None:
    """A real signed v2 answer, compressed by the server, is inflated under the cap,
    verified and served; the shim asked for identity."""
    seen: list[str] = []

    def compressed(conn: Conn, req: Request) -> None:
        seen.append(req.headers.get("accept-encoding", ""))
        status, headers, body = real_answer(emulator, req)
        for coding in reversed([c.strip() for c in encoding.split(",")]):
            if coding == "gzip":
                body = gzip.compress(body)
            elif coding == "deflate":
                body = zlib.compress(body)
        headers = [*headers, ("Content-Encoding", encoding), ("Content-Length", str(len(body)))]
        conn.send(head(status, headers) + body)

    with HostileServer(compressed) as server:
        twin = make_twin(server.url)
        _, result = await measured(twin)
    assert isinstance(result, dict), result
    assert result["return_code"] == "SUCCESS" and result["coupon_stock_id"] == STOCK
    assert seen == ["identity"]


async def test_a_compressed_real_v3_answer_is_verified_after_inflating(
    make_twin: Callable[..., Twin], emulator: Emulator
) -> None:
    """v3 signs the entity: a gzip-encoded, correctly signed v3 answer verifies and maps."""

    def compressed(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        body = gzip.compress(body)
        headers = [*headers, ("Content-Encoding", "gzip"), ("Content-Length", str(len(body)))]
        conn.send(head(status, headers) + body)

    with HostileServer(compressed) as server:
        twin = make_twin(server.url, "v3")
        _, result = await measured(twin)
    assert isinstance(result, dict), result
    assert result["coupon_stock_id"] == STOCK


async def test_a_bomb_on_the_shadow_side_is_bounded_too(
    make_twin: Callable[..., Twin], bombs: dict[str, bytes], server: Any
) -> None:
    """Shadow mode, the shadowed v3 side sends a stacked bomb: the served answer is
    unaffected, the comparison is a protocol error, memory stays within 6x the cap."""
    with HostileServer(serve_encoded(bombs["gzip, gzip"], "gzip, gzip")) as hostile:
        twin = make_twin(server.base_url, "shadow", v3_url=hostile.url)
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            answer = await twin.query(STOCK, mch_id=MCH)
            assert await twin.wait_for_shadows(timeout=5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer["return_code"] == "SUCCESS"
    totals = twin.shim.shadow_totals()
    assert totals.errors == 1 and dict(totals.errors_by_kind) == {"protocol": 1}, totals
    print(f"BOUND shadow stacked bomb: {(peak - base) / 2**20:.3f} MiB vs cap {CAP / 2**20} MiB")
    assert peak - base <= PEAK_LIMIT, f"peak growth {(peak - base) / 2**20:.2f} MiB"
