"""The sync twin's own connection pool (``shim._transport.SyncPool``) against real loopback
servers.

The hostile suites (time, memory, close, fork, overload, decoding) run the sync twin through
this pool already; these tests pin what is the pool's own, as ``tests/test_async_pool.py``
does for the async twin's: which connections it reuses and which it never does, that both
answer readers (httptools and h11) accept the same answers, and that it is safe to share
between threads. Every test runs with both readers (the autouse ``reader`` fixture).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim import CouponStockShim, ShimError, UpstreamError

# private: the pool's header cap
from shim._async_pool import MAX_HEADER_BYTES

# private: the sync twin's connection pool and the factory that picks it
from shim._transport import SyncPool, new_sync_client
from shim.sandbox import Emulator, SandboxState
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request, head

# The scripts, the TLS emulator and the reader switch are the async pool's tests' own.
from tests.test_async_pool import (
    BROKEN_ANSWERS,
    FRAMINGS,
    QUIRKS,
    answering,
    framed,
    pool_tables,
    quirky,
    reader,
    sending,
    tls_emulator,
)
from tests.wait import wait_until

__all__ = ["reader", "tls_emulator"]  # fixtures used here by name

STOCK = "1757"
MCH = "10000098"


@pytest.fixture
def make_shim(
    sandbox_state: SandboxState, tmp_path: Path
) -> Iterator[Callable[..., CouponStockShim]]:
    made: list[CouponStockShim] = []

    def build(url: str, **upstream: Any) -> CouponStockShim:
        tables = pool_tables(**upstream)
        shim = CouponStockShim(parse_emulator_config(sandbox_state, tmp_path, url, tables), env={})
        assert isinstance(shim._client, SyncPool)
        made.append(shim)
        return shim

    yield build
    for shim in made:
        shim.close()


def query(shim: CouponStockShim, stock: str = STOCK) -> dict[str, str] | ShimError:
    try:
        return shim.query_coupon_stock(stock, mch_id=MCH)
    except ShimError as exc:
        return exc


def succeeds(answer: dict[str, str] | ShimError) -> bool:
    return isinstance(answer, dict) and answer["result_code"] == "SUCCESS"


def test_the_shims_own_client_is_the_pool_unless_a_proxy_or_transport_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert isinstance(new_sync_client(limits), SyncPool)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # hosts that go direct: no proxy
    assert isinstance(new_sync_client(limits), SyncPool)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert isinstance(new_sync_client(limits, mock), httpx.Client)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert isinstance(new_sync_client(limits), httpx.Client)


def test_calls_in_turn_share_one_kept_alive_connection_with_the_async_pools_bytes(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator
) -> None:
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(3):
            answer = query(shim)
            assert succeeds(answer), answer
    assert server.connections == 1
    assert len(server.requests) == 3
    sent = server.requests[0]
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.headers["host"] == f"127.0.0.1:{server.port}"
    assert sent.headers["content-length"] == str(len(sent.body))
    assert sent.headers["user-agent"].startswith("coupon-shim/")  # the call's own, not httpx's


def test_bytes_after_an_answer_are_never_read_as_the_next_answer(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator
) -> None:
    forged = head(200, [("Content-Type", "text/xml"), ("Content-Length", "27")])
    forged += b"<xml><forged>1</forged></xml>"[:27]
    with HostileServer(answering(emulator, extra=forged), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = query(shim)
            assert succeeds(answer) and "forged" not in answer, answer
    assert server.connections == 2


def test_a_connection_the_peer_closed_while_idle_is_not_reused(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator
) -> None:
    """The server closes each connection after its answer without saying so: the next call
    notices at checkout (the socket reads EOF) and connects again, with no failed call."""
    with HostileServer(answering(emulator), keep_alive=False) as server:
        shim = make_shim(server.url)
        assert succeeds(query(shim))
        pool = shim._client
        assert isinstance(pool, SyncPool)
        idle = [c for conns in pool._idle.values() for c in conns]
        assert len(idle) == 1
        wait_until(
            lambda: idle[0].stream.get_extra_info("is_readable"),
            "the server's FIN reached the idle connection",
        )
        answer = query(shim)
        assert succeeds(answer), answer
    assert server.connections == 2


def test_a_connection_idle_past_keepalive_expiry_is_not_reused(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator
) -> None:
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = make_shim(server.url)
        pool = shim._client
        assert isinstance(pool, SyncPool)
        pool._expiry = 0.0  # every idle connection has expired by its next checkout
        for _ in range(2):
            assert succeeds(query(shim))
    assert server.connections == 2


@pytest.mark.parametrize(("framing", "extra", "connections"), FRAMINGS)
def test_each_framing_is_answered_and_reused_only_when_clean(
    make_shim: Callable[..., CouponStockShim],
    emulator: Emulator,
    framing: str,
    extra: bytes,
    connections: int,
    reader: str,
) -> None:
    if reader == "h11" and framing == "interim":
        connections = 1  # h11 knows where a 1xx ends and keeps the connection
    with HostileServer(framed(emulator, framing, extra), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = query(shim)
            assert succeeds(answer), answer
    assert server.connections == connections


@pytest.mark.parametrize("answer", BROKEN_ANSWERS)
def test_broken_answers_are_typed_connection_errors(
    make_shim: Callable[..., CouponStockShim], answer: bytes
) -> None:
    with HostileServer(sending(answer)) as server:
        result = query(make_shim(server.url))
    assert isinstance(result, UpstreamError) and result.kind == "connection", result
    assert "broken mid-answer" in str(result), result


@pytest.mark.parametrize("quirk", QUIRKS)
def test_heads_h11_accepts_are_answered_by_both_readers(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator, quirk: str
) -> None:
    with HostileServer(quirky(emulator, quirk), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = query(shim)
            assert succeeds(answer), answer


def test_a_header_block_over_the_cap_is_a_typed_connection_error(
    make_shim: Callable[..., CouponStockShim],
) -> None:
    """Headers that never end: refused once the unfinished block passes the cap, long
    before the read timeout."""

    def endless_headers(conn: Conn, req: Request) -> None:
        line = b"X-Filler: " + b"y" * 1000 + b"\r\n"
        conn.send(b"HTTP/1.1 200 X\r\n" + line * (2 * MAX_HEADER_BYTES // len(line)))
        conn.hold(3.0)

    with HostileServer(endless_headers) as server:
        result = query(make_shim(server.url))
    assert isinstance(result, UpstreamError) and result.kind == "connection", result


def test_a_refused_connection_is_a_typed_connection_error(
    make_shim: Callable[..., CouponStockShim],
) -> None:
    with HostileServer(lambda conn, req: None) as server:
        url = server.url
    result = query(make_shim(url))  # nothing listens there any more
    assert isinstance(result, UpstreamError) and result.kind == "connection", result


def test_https_upstreams_are_verified_and_answered(
    tls_emulator: tuple[str, str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS through the pool: the CA from SSL_CERT_FILE (as httpx honours it) is trusted and
    one TLS connection carries both calls; without that CA the certificate is refused."""
    url, ca_file, state = tls_emulator
    tables = pool_tables(timeout_s=3.0, connect_timeout_s=3.0, budget_s=5.0)
    cfg = parse_emulator_config(state, tmp_path, url, tables)
    with CouponStockShim(cfg, env={}) as untrusted:
        refused = query(untrusted)
    assert isinstance(refused, UpstreamError) and refused.kind == "connection", refused
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    with CouponStockShim(cfg, env={}) as shim:
        pool = shim._client
        assert isinstance(pool, SyncPool)
        for _ in range(2):
            answer = query(shim)
            assert succeeds(answer), answer
        assert sum(len(conns) for conns in pool._idle.values()) == 1


def test_close_wakes_a_call_blocked_on_its_answer_and_refuses_later_calls(
    make_shim: Callable[..., CouponStockShim],
) -> None:
    """close() in one thread ends a read blocked in another at once, as ``closed``."""

    def silent(conn: Conn, req: Request) -> None:
        conn.hold(5.0)

    with HostileServer(silent) as server:
        shim = make_shim(server.url, timeout_s=5.0, budget_s=6.0)
        got: list[dict[str, str] | ShimError] = []
        caller = threading.Thread(target=lambda: got.append(query(shim)))
        caller.start()
        wait_until(lambda: server.requests, "the request reached the server")
        shim.close()
        caller.join(3.0)
        assert not caller.is_alive(), "close() did not wake the blocked read"
        late = query(shim)
    assert isinstance(shim._client, SyncPool) and shim._client.is_closed
    assert isinstance(got[0], ShimError) and type(got[0]).__name__ == "ClosedError", got
    assert isinstance(late, ShimError) and type(late).__name__ == "ClosedError", late


def test_threads_sharing_the_pool_each_get_their_own_answer(
    make_shim: Callable[..., CouponStockShim], emulator: Emulator
) -> None:
    """16 threads at once over a few kept-alive connections: every caller gets the answer
    to its own stock, and every pooled connection is idle and sound afterwards."""
    seeded = ("1717", "1757", "9856000", "9856001")  # the emulator's stocks of this merchant
    stocks = [seeded[i % 4] for i in range(160)]
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = make_shim(server.url)
        with ThreadPoolExecutor(16) as workers:
            answers = list(workers.map(lambda stock: (stock, query(shim, stock)), stocks))
        pool = shim._client
        assert isinstance(pool, SyncPool)
        idle = [c for conns in pool._idle.values() for c in conns]
    for stock, answer in answers:
        assert succeeds(answer), (stock, answer)
        assert isinstance(answer, dict) and answer["coupon_stock_id"] == stock, (stock, answer)
    assert 1 <= len(idle) <= 16
    assert server.connections <= 16
