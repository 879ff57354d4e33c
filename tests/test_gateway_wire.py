"""The gateway's own wire details: each answer leaves in one write; the fast parts are optional."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

# Private: the corked transport and the server settings are details these tests pin.
from shim.gateway import GatewaySettings, running

# private: gateway internals under test
from shim.gateway._server import CorkedHttpProtocol, _Corked, _uvicorn_config
from shim.sandbox import Emulator, SandboxState
from tests.gateway_support import (
    answer_verifies,
    parse_answer,
    request_fields,
    to_xml,
    write_config,
)

MD5_MCH = "10000098"
QUERY_PATH = "/mmpaymkttransfers/query_coupon_stock"


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_writes_in_one_loop_turn_leave_as_one() -> None:
    raw = _Transport()
    corked = _Corked(raw, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    corked.write(b"body")
    assert raw.writes == []  # held until the turn ends
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    corked.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"next"
    assert corked.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest passes through


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    raw = _Transport()
    corked = _Corked(raw, asyncio.get_running_loop())
    corked.write(b"last words")
    corked.close()
    assert raw.writes == [b"last words"] and raw.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more
    assert raw.writes == [b"last words"]
    raw = _Transport()
    corked = _Corked(raw, asyncio.get_running_loop())
    corked.write(b"never sent")
    corked.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.aborted


async def test_nothing_is_written_once_the_peer_has_gone() -> None:
    raw = _Transport()
    corked = _Corked(raw, asyncio.get_running_loop())
    corked.write(b"too late")
    raw.closed = True
    await asyncio.sleep(0)
    assert raw.writes == []


def test_answers_through_the_corked_server_are_whole_and_kept_alive(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> None:
    """The server the gateway runs uses the corked protocol; signed answers arrive whole,
    call after call, on one kept-alive caller connection."""
    settings_protocol = _uvicorn_config(None, GatewaySettings()).http
    assert settings_protocol is CorkedHttpProtocol
    cfg = write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)
    key = sandbox_state.merchants[MD5_MCH].v2_key
    with running(cfg) as gw, httpx.Client(base_url=gw.base_url, timeout=20) as http:
        ports = set()
        for stock in ("1757", "1717", "1757"):
            body = to_xml(request_fields(sandbox_state, MD5_MCH, stock))
            resp = http.post(QUERY_PATH, content=body)
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/xml; charset=utf-8"
            assert int(resp.headers["content-length"]) == len(resp.content)
            assert answer_verifies(parse_answer(resp.content), key)
            ports.add(resp.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert len(ports) == 1


_WITHOUT_FAST_PARTS = """
import importlib.abc, sys

class _Blocker(importlib.abc.MetaPathFinder):  # a gateway install without httptools, uvloop
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("httptools", "uvloop"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
from pathlib import Path

import httpx
from uvicorn.protocols.http.h11_impl import H11Protocol

from shim import _async_pool
from shim.gateway import running
from shim.gateway._server import CorkedHttpProtocol
from shim.sandbox import Emulator, SandboxState, serve
from tests.gateway_support import answer_verifies, parse_answer, request_fields, to_xml
from tests.gateway_support import write_config

assert issubclass(CorkedHttpProtocol, H11Protocol), CorkedHttpProtocol.__mro__
assert _async_pool.httptools is None
folder = Path(sys.argv[1])
state = SandboxState.load_or_create(folder / "state")
with serve(Emulator(state)) as upstream:
    cfg = write_config(state, folder / "shim.toml", upstream_url=upstream.base_url)
    key = state.merchants["10000098"].v2_key
    with running(cfg) as gw, httpx.Client(base_url=gw.base_url, timeout=20) as http:
        for stock in ("1757", "1717"):
            body = to_xml(request_fields(state, "10000098", stock))
            resp = http.post("/mmpaymkttransfers/query_coupon_stock", content=body)
            assert resp.status_code == 200, resp.text
            assert answer_verifies(parse_answer(resp.content), key), resp.text
            print("answered", stock)
"""


def test_the_gateway_serves_on_pure_python_parts_without_httptools_and_uvloop(
    tmp_path: Path,
) -> None:
    """httptools and uvloop are the gateway extra's fast parts; without them uvicorn's h11
    protocol (corked the same way), asyncio's loop and the pool's h11 reader serve the same
    signed answers."""
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FAST_PARTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answered = [line for line in proc.stdout.splitlines() if line.startswith("answered")]
    assert answered == ["answered 1757", "answered 1717"], proc.stdout[-3000:]
