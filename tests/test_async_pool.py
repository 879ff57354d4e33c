"""The async twin's own connection pool (``shim._async_pool``) against real loopback servers.

The hostile suites (time, memory, close, fork, overload) run the async twin through this
pool already; these tests pin what is the pool's own: which connections it reuses and which
it never does, so that no answer is ever read off a connection a previous answer left dirty.
Every test here runs with both answer readers: httptools (installed with the gateway and
bench extras) and h11 (the pure-Python one used without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

# private: the pool's answer readers and request writer, switched and compared directly
from shim import AsyncCouponStockShim, ShimError, UpstreamError, _async_pool

# The pool and the factory are private: these tests pin the driver's choice of client.
# private: the async twin's connection pool, tested directly
from shim._async_pool import MAX_HEADER_BYTES, AsyncPool

# private: the transports' internals (deadline streams, limits)
from shim._transport import new_async_client
from shim.sandbox import Emulator, SandboxState
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request, head, real_answer
from tests.wait import await_until, wait_until

STOCK = "1757"
MCH = "10000098"


@pytest.fixture(autouse=True, params=["httptools", "h11"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which parser reads the answers: httptools when installed, else h11."""
    if request.param == "h11":
        monkeypatch.setattr(_async_pool, "httptools", None)
    else:
        assert _async_pool.httptools is not None, "the dev extra installs httptools"
    return str(request.param)


def pool_tables(**upstream: Any) -> dict[str, Any]:
    """The pool tests' config: one attempt, legacy routing, short timeouts (or ``upstream``)."""
    timeouts = {"timeout_s": 2.0, "connect_timeout_s": 2.0, "budget_s": 3.0}
    return {
        "upstream": {**timeouts, **upstream},
        "retry": {"attempts": 1},
        "routing": {"mode": "legacy"},
    }


@pytest.fixture
async def make_shim(
    sandbox_state: SandboxState, tmp_path: Path
) -> AsyncIterator[Callable[..., AsyncCouponStockShim]]:
    made: list[AsyncCouponStockShim] = []

    def build(url: str, **upstream: Any) -> AsyncCouponStockShim:
        shim = AsyncCouponStockShim(
            parse_emulator_config(sandbox_state, tmp_path, url, pool_tables(**upstream)), env={}
        )
        made.append(shim)
        return shim

    yield build
    for shim in made:
        await shim.aclose()


def answering(emulator: Emulator, extra: bytes = b"", close: bool = False) -> Any:
    """A script giving the emulator's real answer (then ``extra`` bytes, if any)."""

    def script(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        headers = [*headers, ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        conn.send(head(status, headers) + body + extra)

    return script


async def query(shim: AsyncCouponStockShim) -> dict[str, str] | ShimError:
    try:
        return await shim.query_coupon_stock(STOCK, mch_id=MCH)
    except ShimError as exc:
        return exc


def test_the_shims_own_client_is_the_pool_unless_a_proxy_or_transport_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert isinstance(new_async_client(limits), AsyncPool)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # hosts that go direct: no proxy
    assert isinstance(new_async_client(limits), AsyncPool)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert isinstance(new_async_client(limits, mock), httpx.AsyncClient)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert isinstance(new_async_client(limits), httpx.AsyncClient)


async def test_calls_in_turn_share_one_kept_alive_connection(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator
) -> None:
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(3):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
    assert server.connections == 1
    assert len(server.requests) == 3
    sent = server.requests[0]
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.headers["host"] == f"127.0.0.1:{server.port}"
    assert sent.headers["content-length"] == str(len(sent.body))


async def test_bytes_after_an_answer_are_never_read_as_the_next_answer(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator
) -> None:
    """A server that appends a forged second answer: the connection is dropped, the next
    call gets a fresh one and the genuine answer."""
    forged = head(200, [("Content-Type", "text/xml"), ("Content-Length", "27")])
    forged += b"<xml><forged>1</forged></xml>"[:27]
    with HostileServer(answering(emulator, extra=forged), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
            assert "forged" not in answer
    assert server.connections == 2


async def test_an_answer_that_closes_its_connection_is_not_reused(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator
) -> None:
    with HostileServer(answering(emulator, close=True), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
    assert server.connections == 2


async def test_a_connection_the_peer_closed_while_idle_is_not_reused(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator
) -> None:
    """The server closes every connection after its answer without saying so: the next
    call notices before sending and connects again (no failed call)."""
    with HostileServer(answering(emulator), keep_alive=False) as server:
        shim = make_shim(server.url)
        first = await query(shim)
        assert isinstance(first, dict), first
        pool = shim._client
        assert isinstance(pool, AsyncPool)
        await await_until(
            lambda: all(c.eof for idle in pool._idle.values() for c in idle),
            "the server's FIN reached the idle connection",
        )
        second = await query(shim)
        assert isinstance(second, dict) and second["result_code"] == "SUCCESS", second
    assert server.connections == 2


async def test_a_header_block_over_the_cap_is_a_typed_connection_error(
    make_shim: Callable[..., AsyncCouponStockShim],
) -> None:
    """Headers that never end: refused once the unfinished block passes the cap, long
    before the read timeout, with bounded memory."""

    def endless_headers(conn: Conn, req: Request) -> None:
        line = b"X-Filler: " + b"y" * 1000 + b"\r\n"
        conn.send(b"HTTP/1.1 200 X\r\n" + line * (2 * MAX_HEADER_BYTES // len(line)))
        conn.hold(3.0)

    with HostileServer(endless_headers) as server:
        shim = make_shim(server.url)
        result = await query(shim)
    assert isinstance(result, UpstreamError), result
    assert result.kind == "connection", result  # refused by the cap, not by a timeout


async def test_a_refused_connection_is_a_typed_connection_error(
    make_shim: Callable[..., AsyncCouponStockShim],
) -> None:
    with HostileServer(lambda conn, req: None) as server:
        url = server.url
    shim = make_shim(url)  # nothing listens there any more
    result = await query(shim)
    assert isinstance(result, UpstreamError), result
    assert result.kind == "connection"


@pytest.fixture(scope="module")
def tls_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Any]]:
    """The emulator over TLS (a throwaway CA): its URL, the CA file and its state."""
    import socket

    import trustme

    folder = tmp_path_factory.mktemp("pool-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    state = SandboxState.load_or_create(folder / "state")
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        Emulator(state).asgi_app,
        http="h11",
        lifespan="off",
        log_config=None,
        access_log=False,
        ssl_certfile=str(folder / "cert.pem"),
        ssl_keyfile=str(folder / "key.pem"),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the TLS emulator started")
    assert server.started, "the TLS emulator did not start"
    yield f"https://127.0.0.1:{sock.getsockname()[1]}", str(folder / "ca.pem"), state
    server.should_exit = True
    thread.join(10)
    sock.close()


async def test_https_upstreams_are_verified_and_answered(
    tls_emulator: tuple[str, str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS through the pool: the CA from SSL_CERT_FILE (as httpx honours it) is trusted,
    the real answer verifies; without that CA the certificate is refused, typed."""
    url, ca_file, state = tls_emulator
    tables = pool_tables(timeout_s=3.0, connect_timeout_s=3.0, budget_s=5.0)
    cfg = parse_emulator_config(state, tmp_path, url, tables)
    untrusted = AsyncCouponStockShim(cfg, env={})
    try:
        refused = await query(untrusted)
    finally:
        await untrusted.aclose()
    assert isinstance(refused, UpstreamError) and refused.kind == "connection", refused
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    shim = AsyncCouponStockShim(cfg, env={})
    try:
        assert isinstance(shim._client, AsyncPool)
        for _ in range(2):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
    finally:
        await shim.aclose()


async def test_close_aborts_kept_alive_connections_and_refuses_later_calls(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator
) -> None:
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = make_shim(server.url)
        assert isinstance(await query(shim), dict)
        pool = shim._client
        assert isinstance(pool, AsyncPool)
        await shim.aclose()
        assert pool.is_closed
        await await_until(
            lambda: not any(t.is_alive() for t in server._threads[1:]),
            "the server saw its kept-alive connection end",
        )
        late = await query(shim)
    assert isinstance(late, ShimError) and type(late).__name__ == "ClosedError", late


def framed(emulator: Emulator, framing: str, extra: bytes = b"") -> Any:
    """The emulator's real answer framed by Content-Length, chunks, or the close of the
    connection, optionally after a 100 Continue and followed by ``extra`` bytes."""

    def script(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" if framing == "interim" else b""
        if framing == "chunked":
            cut = len(body) // 2
            payload = b"".join(
                b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:cut], body[cut:])
            )
            conn.send(head(status, [*headers, ("Transfer-Encoding", "chunked")]))
            conn.send(payload + b"0\r\n\r\n" + extra)
        elif framing == "close":
            conn.send(head(status, [*headers, ("Connection", "close")]) + body + extra)
            conn.close()
        else:
            headers = [*headers, ("Content-Length", str(len(body)))]
            conn.send(interim + head(status, headers) + body + extra)

    return script


#: (framing, bytes after the answer, connections two calls take) — with httptools; h11 keeps
#: the connection after a 1xx (it knows where one ends).
FRAMINGS = [
    ("length", b"", 1),
    ("length", b"\r\n", 2),  # a stray line end after the answer
    ("chunked", b"", 1),
    ("chunked", b"\r\n", 2),
    ("chunked", b"junk", 2),
    ("interim", b"", 2),  # answered after the 100; the connection is not kept
    ("close", b"", 2),
]


@pytest.mark.parametrize(("framing", "extra", "connections"), FRAMINGS)
async def test_each_framing_is_answered_and_reused_only_when_clean(
    make_shim: Callable[..., AsyncCouponStockShim],
    emulator: Emulator,
    framing: str,
    extra: bytes,
    connections: int,
    reader: str,
) -> None:
    """Whatever the framing, the genuine answer; the connection carries the next call
    only when the answer ended exactly where the bytes did (h11's rule, kept by byte count
    with httptools)."""
    if reader == "h11" and framing == "interim":
        connections = 1  # h11 knows where a 1xx ends and keeps the connection
    with HostileServer(framed(emulator, framing, extra), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
    assert server.connections == connections


#: Answers no reader may accept: each is a typed connection error, "broken mid-answer".
BROKEN_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # cut short by the close
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nx",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
]


def sending(answer: bytes) -> Any:
    """A script that sends ``answer`` and closes the connection."""

    def script(conn: Conn, req: Request) -> None:
        conn.send(answer)
        conn.close()

    return script


QUIRKS = ["bare LF", "folded header"]


def quirky(emulator: Emulator, quirk: str) -> Any:
    """The real answer with a head h11 accepts and llhttp refuses (``bare LF`` line ends
    or a ``folded header``)."""

    def script(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        raw = head(status, [*headers, ("Content-Length", str(len(body)))])
        if quirk == "bare LF":
            raw = raw.replace(b"\r\n", b"\n")
        else:
            raw = raw.replace(b"\r\n\r\n", b"\r\nX-Folded: a\r\n b\r\n\r\n")
        conn.send(raw + body)

    return script


@pytest.mark.parametrize("answer", BROKEN_ANSWERS)
async def test_broken_answers_are_typed_connection_errors(
    make_shim: Callable[..., AsyncCouponStockShim], answer: bytes
) -> None:
    with HostileServer(sending(answer)) as server:
        shim = make_shim(server.url)
        result = await query(shim)
    assert isinstance(result, UpstreamError), result
    assert result.kind == "connection", result
    assert "broken mid-answer" in str(result), result


@pytest.mark.parametrize("quirk", QUIRKS)
async def test_heads_h11_accepts_are_answered_by_both_readers(
    make_shim: Callable[..., AsyncCouponStockShim], emulator: Emulator, quirk: str
) -> None:
    """llhttp is stricter than h11 in the head (bare LF line ends, obs-fold header lines):
    such an answer is read by h11 instead, so it is answered whichever reader is installed."""
    with HostileServer(quirky(emulator, quirk), keep_alive=True) as server:
        shim = make_shim(server.url)
        for _ in range(2):
            answer = await query(shim)
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer


def test_the_fast_writer_frames_as_h11_and_refuses_what_h11_refuses() -> None:
    """Byte for byte h11's request; a header that could split the request is refused."""
    import h11

    # private: the request value the drivers send
    from shim._flow import HttpRequest

    def req(headers: tuple[tuple[str, str], ...], method: str = "POST") -> HttpRequest:
        return HttpRequest(
            method, "http://127.0.0.1:8080/a/b?c=1", headers, b"<xml/>", "legacy", 1, 1, 1e9, 1
        )

    origin = _async_pool._Origin("http://127.0.0.1:8080/a/b?c=1")
    extra = ("Accept-Encoding", "identity")
    good = req((("Content-Type", "text/xml"), ("Authorization", "WECHATPAY2 a=1,\tb=2")))
    expected = _async_pool._request_bytes(h11.Connection(h11.CLIENT), good, origin, extra)
    assert _async_pool._fast_request_bytes(good, origin, extra) == expected
    for bad in (
        req((("X-A", "1\r\nX-Injected: 1"),)),
        req((("X-A", "1\n"),)),
        req((("X A", "1"),)),
        req((("X-A", "\u4e2d"),)),
        req((("X-A", "1\x00"),)),
        req((("X-A", " 1"),)),
        req((), method="PO ST"),
    ):
        with pytest.raises(_async_pool._BadRequest):
            _async_pool._fast_request_bytes(bad, origin, extra)
        with pytest.raises((h11.LocalProtocolError, UnicodeEncodeError)):  # (h11: uncaught)
            _async_pool._request_bytes(h11.Connection(h11.CLIENT), bad, origin, extra)
    framing = req((("Content-Length", "6"),))
    assert _async_pool._fast_request_bytes(framing, origin, extra) is None  # h11 frames it


async def test_a_cancelled_call_closes_the_connection_it_was_using(
    make_shim: Callable[..., AsyncCouponStockShim],
) -> None:
    """A call cancelled while it waits for its answer (by its caller, or by the driver's
    backstop scope) takes its connection with it: the socket is closed at once, neither
    pooled nor left open for the garbage collector to find."""
    peer_closed = threading.Event()

    def silent(conn: Conn, req: Request) -> None:
        while conn.read_request() is not None:  # no answer; returns once the peer closed
            pass
        peer_closed.set()

    with HostileServer(silent) as server:
        shim = make_shim(server.url)
        task = asyncio.ensure_future(query(shim))
        await await_until(lambda: server.requests, "the request reached the server")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await await_until(peer_closed.is_set, "the server saw the connection closed")
        pool = shim._client
        assert isinstance(pool, AsyncPool)
        assert not pool._busy and not any(pool._idle.values())


async def test_a_connection_made_as_its_call_is_cancelled_is_closed(
    make_shim: Callable[..., AsyncCouponStockShim],
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connect step finishes just as its call is cancelled (here: it ignores the
    cancellation and connects anyway): the connection it made is closed at once, never
    dropped with its socket open."""
    loop = asyncio.get_running_loop()
    real_connect = loop.create_connection
    entered = asyncio.Event()
    made: list[asyncio.BaseTransport] = []

    async def stubborn(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # ... and connect all the same
            await asyncio.Event().wait()  # until cancelled
        transport, protocol = await real_connect(*args, **kwargs)
        made.append(transport)
        return transport, protocol

    with HostileServer(answering(emulator)) as server:
        shim = make_shim(server.url)
        monkeypatch.setattr(loop, "create_connection", stubborn)
        task = asyncio.ensure_future(query(shim))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await await_until(lambda: made and made[0].is_closing(), "the late connection closed")
        await await_until(
            lambda: not any(t.is_alive() for t in server._threads[1:]),
            "the server saw the late connection end",
        )
        pool = shim._client
        assert isinstance(pool, AsyncPool)
        assert not pool._busy and not any(pool._idle.values())


def test_a_connection_left_by_a_closed_event_loop_is_closed_when_dropped(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> None:
    """Two ``asyncio.run`` calls on one shim: the second loop cannot reuse the first loop's
    kept-alive connection, and dropping it closes its socket although its loop is gone."""
    tables = {"upstream": {"budget_s": 3.0}, "routing": {"mode": "legacy"}}
    with HostileServer(answering(emulator), keep_alive=True) as server:
        shim = AsyncCouponStockShim(
            parse_emulator_config(sandbox_state, tmp_path, server.url, tables), env={}
        )
        for _ in range(2):
            answer = asyncio.run(query(shim))
            assert isinstance(answer, dict) and answer["result_code"] == "SUCCESS", answer
        wait_until(
            lambda: not server._threads[1].is_alive(),
            "the server saw the first loop's connection end",
        )
        asyncio.run(shim.aclose())
    assert server.connections == 2
