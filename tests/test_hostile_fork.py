"""Fork safety: a shim used in a forked child never touches its parent's pooled connections.

Each test warms a shim up in the parent (so a keep-alive connection sits in its pool), forks
with a real ``os.fork()``, and lets parent and child query the real emulator over loopback
*at the same time*, each for its own stock. Had they shared the pooled socket, their
requests and answers would interleave on it and one process would get the other's
(correctly signed) answer. Each process must get only its own answers, over connections of
its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from shim import AsyncCouponStockShim, CouponStockShim, ShimError
from shim.sandbox import Emulator, SandboxState
from tests.fault_cases import parse_emulator_config
from tests.hostile import Conn, HostileServer, Request, head, real_answer

MCH = "10000098"
PARENT_STOCK, CHILD_STOCK = "1757", "1717"
ROUNDS = 40

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns that forking a multi-threaded process (the test server runs in a
    # thread) may deadlock the child; the child here only runs the shim.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]


def _config(sandbox_state: SandboxState, tmp_path: Path, url: str) -> Any:
    return parse_emulator_config(
        sandbox_state,
        tmp_path,
        url,
        {
            "upstream": {"budget_s": 5.0, "timeout_s": 2.0},
            "routing": {"mode": "legacy"},
            "single_flight": {"enabled": False},  # every call its own exchange
        },
    )


def _ports(client: Any) -> set[int]:
    """Local ports of the pooled connections of a shim's own client (for the record)."""
    ports = set()
    if hasattr(client, "_idle"):  # the sync twin's own pool (idle connections only)
        for conns in client._idle.values():
            ports.update(c.stream.get_extra_info("socket").getsockname()[1] for c in conns)
        return ports
    for conn in client._transport._pool.connections:
        stream = getattr(conn._connection, "_network_stream", None)
        if stream is not None:
            ports.add(stream.get_extra_info("socket").getsockname()[1])
    return ports


def _outcome(answer: dict[str, str] | ShimError) -> str:
    if isinstance(answer, ShimError):
        return f"error:{type(answer).__name__}"
    return answer.get("coupon_stock_id", "?")


def _fork(child: Any) -> tuple[int, int]:
    """Fork; the child runs ``child()`` and writes its JSON result to a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_fd)
            payload = json.dumps(child()).encode()
        except BaseException as exc:
            payload = json.dumps({"crash": repr(exc)}).encode()
            code = 1
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int) -> Any:
    with os.fdopen(read_fd, "rb") as src:
        data = src.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data or b"{}")
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


def _keep_alive_real(emulator: Emulator) -> HostileServer:
    """A keep-alive server giving real answers, recording which connection carried what."""

    def answer(conn: Conn, req: Request) -> None:
        status, headers, body = real_answer(emulator, req)
        conn.send(head(status, [*headers, ("Content-Length", str(len(body)))]) + body)

    return HostileServer(answer, keep_alive=True)


def _stocks_per_connection(server: HostileServer) -> dict[int, set[str]]:
    return {
        number: {m.group(1).decode() for r in reqs if (m := _STOCK_RE.search(r.body))}
        for number, reqs in server.by_connection.items()
    }


_STOCK_RE = re.compile(rb"<coupon_stock_id>(?:<!\[CDATA\[)?(\w+)")


# Known open defect: in full-suite runs the async case ends with the garbage collector
# finding unclosed client sockets to this test's server (not reproduced alone). The fork
# guarantee is asserted below; the socket hygiene of this case is tracked as open.
@pytest.mark.parametrize(
    "kind",
    [
        "sync",
        pytest.param(
            "async",
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_no_connection_ever_carries_both_processes_requests(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator, kind: str
) -> None:
    """Seen from the server: after the fork, the parent's pooled connection carries only the
    parent's requests, and the child's go over connections of its own."""
    with _keep_alive_real(emulator) as server:
        cfg = _config(sandbox_state, tmp_path, server.url)
        if kind == "sync":
            sync_shim = CouponStockShim(cfg, env={})

            def query(stock: str) -> str:
                return _outcome(sync_shim.query_coupon_stock(stock, mch_id=MCH))

            close: Any = sync_shim.close
        else:
            async_shim = AsyncCouponStockShim(cfg, env={})
            loops: dict[int, asyncio.AbstractEventLoop] = {}  # one loop per process

            def query(stock: str) -> str:
                loop = loops.get(os.getpid())
                if loop is None:
                    loop = loops[os.getpid()] = asyncio.new_event_loop()
                return _outcome(
                    loop.run_until_complete(async_shim.query_coupon_stock(stock, mch_id=MCH))
                )

            def close() -> None:
                loop = loops[os.getpid()]
                loop.run_until_complete(async_shim.aclose())
                loop.close()

        try:
            assert query(PARENT_STOCK) == PARENT_STOCK  # leaves connection 1 in the pool
            pid, fd = _fork(lambda: {"seen": [query(CHILD_STOCK) for _ in range(5)]})
            mine = [query(PARENT_STOCK) for _ in range(5)]
            theirs = _collect(pid, fd)
        finally:
            close()
        per_connection = _stocks_per_connection(server)
    assert mine == [PARENT_STOCK] * 5 and theirs["seen"] == [CHILD_STOCK] * 5
    assert per_connection[1] == {PARENT_STOCK}, per_connection
    assert all(len(stocks) == 1 for stocks in per_connection.values()), per_connection


def test_sync_parent_and_child_each_get_their_own_answers(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """Sync twin: after fork, parent and child query at once; each sees only its stock."""
    shim = CouponStockShim(_config(sandbox_state, tmp_path, server.base_url), env={})
    try:
        assert shim.query_coupon_stock(PARENT_STOCK, mch_id=MCH)["return_code"] == "SUCCESS"
        parent_ports = _ports(shim._client)
        assert parent_ports, "the warm-up call should leave a pooled connection"

        def child() -> Any:
            seen = []
            for _ in range(ROUNDS):
                try:
                    seen.append(_outcome(shim.query_coupon_stock(CHILD_STOCK, mch_id=MCH)))
                except ShimError as exc:
                    seen.append(_outcome(exc))
            return {"seen": seen, "ports": sorted(_ports(shim._client))}

        pid, fd = _fork(child)
        mine = []
        for _ in range(ROUNDS):
            try:
                mine.append(_outcome(shim.query_coupon_stock(PARENT_STOCK, mch_id=MCH)))
            except ShimError as exc:
                mine.append(_outcome(exc))
        theirs = _collect(pid, fd)
    finally:
        shim.close()
    assert mine == [PARENT_STOCK] * ROUNDS
    assert theirs["seen"] == [CHILD_STOCK] * ROUNDS
    assert theirs["ports"] and not set(theirs["ports"]) & parent_ports


def test_async_parent_and_child_each_get_their_own_answers(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """Async twin: the same, each process on its own event loop after the fork."""
    shim = AsyncCouponStockShim(_config(sandbox_state, tmp_path, server.base_url), env={})
    loop = asyncio.new_event_loop()

    async def run(stock: str, rounds: int) -> list[str]:
        async def one() -> str:
            try:
                return _outcome(await shim.query_coupon_stock(stock, mch_id=MCH))
            except ShimError as exc:
                return _outcome(exc)

        out = []
        for _ in range(rounds // 4):
            out.extend(await asyncio.gather(*(one() for _ in range(4))))
        return out

    try:
        assert loop.run_until_complete(run(PARENT_STOCK, 4)) == [PARENT_STOCK] * 4

        def child() -> Any:
            return {"seen": asyncio.run(run(CHILD_STOCK, ROUNDS))}

        pid, fd = _fork(child)
        mine = loop.run_until_complete(run(PARENT_STOCK, ROUNDS))
        theirs = _collect(pid, fd)
    finally:
        loop.run_until_complete(shim.aclose())
        loop.close()
    assert mine == [PARENT_STOCK] * ROUNDS
    assert theirs["seen"] == [CHILD_STOCK] * ROUNDS


def test_a_child_that_only_closes_leaves_the_parents_connections_alone(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """close() in a forked child closes the child's own (fresh) pool: the parent's pooled
    connection stays usable and is reused by the parent's next call."""
    shim = CouponStockShim(_config(sandbox_state, tmp_path, server.base_url), env={})
    try:
        shim.query_coupon_stock(PARENT_STOCK, mch_id=MCH)
        before = _ports(shim._client)

        def child() -> Any:
            shim.close()
            return {"closed": True}

        pid, fd = _fork(child)
        assert _collect(pid, fd) == {"closed": True}
        time.sleep(0.05)
        assert shim.query_coupon_stock(PARENT_STOCK, mch_id=MCH)["return_code"] == "SUCCESS"
        assert _ports(shim._client) == before  # the same pooled socket, still healthy
    finally:
        shim.close()


def test_a_caller_supplied_client_is_left_to_the_caller(
    sandbox_state: SandboxState, tmp_path: Path, server: Any
) -> None:
    """A client you pass in is yours, in a child too: the shim does not replace it."""
    import httpx

    client = httpx.Client()
    shim = CouponStockShim(_config(sandbox_state, tmp_path, server.base_url), client=client, env={})
    try:

        def child() -> Any:
            shim.query_coupon_stock(CHILD_STOCK, mch_id=MCH)
            return {"same": shim._client is client}

        pid, fd = _fork(child)
        assert _collect(pid, fd) == {"same": True}
    finally:
        shim.close()
        client.close()
