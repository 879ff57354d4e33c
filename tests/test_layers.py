"""The layers hold at run time: plain headers into the core, no blocking I/O on a call's thread.

Imports the private flow and drivers on purpose: what is checked here is the boundary
between them (what the driver hands the sans-IO core), which users never see.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import tomllib

from shim import AsyncCouponStockShim, ConfigError, CouponStockShim

# private: the sans-IO flow, driven directly with scripted answers
from shim._flow import Flow, HttpRequest, HttpResponse, TransportFailure, header_map

# private: the config loader's steps, tested one by one
from shim._loader import parse_config

# private: the config document reader, tested without files
from shim._toml import parse_document

# private: the transports' internals (deadline streams, limits)
from shim._transport import run_async, run_sync
from shim.sandbox import Emulator, SandboxState
from tests.conftest import MD5_MCH, Twin


def test_header_map_lower_cases_names_joins_repeats_and_is_read_only() -> None:
    """Names are lower-cased, a repeated header is joined in order, the result is immutable."""
    headers = header_map(
        [("Content-Type", "text/xml"), ("Wechatpay-Signature", "a"), ("WECHATPAY-SIGNATURE", "b")]
    )
    assert dict(headers) == {"content-type": "text/xml", "wechatpay-signature": "a, b"}
    with pytest.raises(TypeError):
        headers["content-type"] = "text/html"  # type: ignore[index]


def _one_exchange() -> Flow[HttpResponse | TransportFailure | None]:
    reply = yield HttpRequest(
        method="GET",
        url="http://upstream.test/v3/marketing/favor/stocks/1",
        headers=(("Accept", "application/json"),),
        body=b"",
        route="v3",
        timeout_s=2.0,
        connect_timeout_s=1.0,
        deadline=time.monotonic() + 5.0,
        max_body_bytes=65_536,
    )
    return reply


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        headers=[("Content-Type", "application/json"), ("X-Twice", "1"), ("x-twice", "2")],
        content=b"{}",
    )


def _assert_plain(reply: object) -> None:
    assert isinstance(reply, HttpResponse), reply
    assert type(reply.headers) is MappingProxyType
    assert not isinstance(reply.headers, httpx.Headers)
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-twice"] == "1, 2"
    assert all(name == name.lower() for name in reply.headers)


def test_the_sync_driver_hands_the_core_a_plain_header_mapping() -> None:
    """run_sync turns httpx's headers into one immutable, lower-case keyed mapping."""
    with httpx.Client(transport=httpx.MockTransport(_answer)) as client:
        _assert_plain(run_sync(_one_exchange(), client))


async def test_the_async_driver_hands_the_core_a_plain_header_mapping() -> None:
    """run_async does the same: the flow never sees an httpx type."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(_answer)) as client:
        _assert_plain(await run_async(_one_exchange(), client))


class _BlockingIOGuard:
    """Records file-system and TOML work done on one thread while armed."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.armed = False
        self.seen: list[str] = []

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.armed and threading.get_ident() == self.thread_id:
                self.seen.append(f"{name}{args[:1]!r}")
            return real(*args, **kwargs)

        return guarded


@pytest.fixture
def io_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[_BlockingIOGuard]:
    """os.stat / open / scandir / listdir / tomllib.loads, watched on the test's thread."""
    guard = _BlockingIOGuard(threading.get_ident())
    for owner, name in (
        (os, "stat"),
        (os, "lstat"),
        (os, "scandir"),
        (os, "listdir"),
        (builtins, "open"),
        (io, "open"),
        (tomllib, "loads"),
    ):
        monkeypatch.setattr(owner, name, guard.wrap(name, getattr(owner, name)))
    yield guard
    guard.armed = False


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    os.replace(tmp, path)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


async def test_no_file_or_toml_work_runs_on_the_calling_thread(
    twin_kind: str,
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    io_guard: _BlockingIOGuard,
) -> None:
    """Calls through either twin (the event loop's thread for the async one) never stat,
    open or parse a file, even while the watched file is edited and reloaded: the watcher
    thread does that work. (``emulator`` resets the shared emulator's counts afterwards.)"""
    path = tmp_path / "shim.toml"
    scratch = sandbox_state.write_config(
        tmp_path / "scratch.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )
    text = scratch.read_text(encoding="utf-8").replace(
        "check_interval_s = 2.0", "check_interval_s = 0.01"
    )
    _write_atomically(path, text)
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls.from_file(path, env={}))
    try:
        io_guard.armed = True
        answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)  # the first call too
        assert answer["return_code"] == "SUCCESS"
        io_guard.armed = False
        _write_atomically(path, text.replace('mode = "legacy"', 'mode = "v3"'))
        io_guard.armed = True
        end = time.monotonic() + 10.0
        while twin.shim.config.routing.mode != "v3" and time.monotonic() < end:
            await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
            await asyncio.sleep(0.005)
        assert twin.shim.config.routing.mode == "v3", "the watcher never reloaded the file"
        answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert answer["return_code"] == "SUCCESS"
        io_guard.armed = False
    finally:
        io_guard.armed = False
        await twin.close()
    assert io_guard.seen == []


def test_parsing_a_document_reads_no_file_and_no_key(
    base_config: dict[str, Any], io_guard: _BlockingIOGuard, tmp_path: Path
) -> None:
    """The TOML reader checks every table, key files and folders included, without touching
    them: the secrets stay references until the loader resolves them."""
    data = dict(base_config)
    data["mapping"] = {"dir": str(tmp_path / "not-there")}
    io_guard.armed = True
    doc = parse_document(data, source="shim.toml")
    io_guard.armed = False
    assert io_guard.seen == []
    drafts = doc.merchants.values()
    assert all(d.v2_key_ref.startswith("file:") for d in drafts)
    assert any(d.v3_private_key_ref for d in drafts) and any(d.platform_cert_dir for d in drafts)
    assert doc.mapping_dir.endswith("not-there")
    assert all(d.v2_key_ref not in repr(d) for d in drafts)
    with pytest.raises(ConfigError) as info:  # the loader is the one that looks
        parse_config(data, source="shim.toml", base_dir=tmp_path, env={})
    assert info.value.key == "mapping.dir"
