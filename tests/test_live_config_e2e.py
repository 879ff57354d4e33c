"""Live configuration at the facade, through both twins: file hot reload and env overrides."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim

# private: the event names and schema the assertions read
from shim._events import EVENT
from shim.sandbox import Emulator, SandboxState
from tests.conftest import MD5_MCH, Twin

INTERVAL_S = 0.05
POLL_LIMIT_S = 5.0


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step and give it an mtime no earlier write can share."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    os.replace(tmp, path)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def config_text(state: SandboxState, folder: Path, base_url: str, mode: str) -> str:
    scratch = state.write_config(
        folder / "scratch.toml", v2_base_url=base_url, v3_base_url=base_url, mode=mode
    )
    text = scratch.read_text(encoding="utf-8")
    scratch.unlink()
    assert "check_interval_s = 2.0" in text
    return text.replace("check_interval_s = 2.0", f"check_interval_s = {INTERVAL_S}")


@pytest.fixture
async def file_shim(
    twin_kind: str, sandbox_state: SandboxState, server: Any, tmp_path: Path
) -> AsyncIterator[tuple[Twin, Path, Callable[[str], str]]]:
    """A shim of either twin built with from_file on a watched shim.toml (legacy mode)."""
    path = tmp_path / "shim.toml"

    def text_for(mode: str) -> str:
        return config_text(sandbox_state, tmp_path, server.base_url, mode)

    write_atomically(path, text_for("legacy"))
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls.from_file(path))
    yield twin, path, text_for
    await twin.close()


async def poll(twin: Twin, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Call the shim until ``done(all events so far)``, bounded; return the events."""
    end = time.monotonic() + POLL_LIMIT_S
    with capture_logs() as logs:
        while True:
            await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
            if done(logs) or time.monotonic() > end:
                return list(logs)
            await asyncio.sleep(INTERVAL_S / 2)


def routes(logs: list[dict[str, Any]]) -> list[str]:
    return [e["route"] for e in logs if e["event"] == EVENT]


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_editing_the_file_switches_routing_and_a_bad_edit_keeps_the_last_good(
    file_shim: tuple[Twin, Path, Callable[[str], str]],
    emulator: Emulator,
    sandbox_state: SandboxState,
) -> None:
    """legacy -> v3 in the file reroutes later calls; an invalid file keeps v3 and logs why."""
    twin, path, text_for = file_shim
    logs = await poll(twin, lambda _: True)
    assert routes(logs) == ["legacy"] and emulator.request_counts == {"v2": 1}

    write_atomically(path, text_for("v3"))
    logs = await poll(twin, lambda ls: "v3" in routes(ls))
    assert routes(logs)[-1] == "v3"
    (reloaded,) = named(logs, "coupon_shim.config_reloaded")
    assert reloaded["mode"] == "v3"
    assert twin.shim.config.routing.mode == "v3"

    bad = text_for("v3").replace('mode = "v3"', 'mode = "sideways"')
    write_atomically(path, bad)
    logs = await poll(twin, lambda ls: bool(named(ls, "coupon_shim.config_reload_failed")))
    (failed,) = named(logs, "coupon_shim.config_reload_failed")
    assert "routing.mode" in failed["error"] and "sideways" in failed["error"]
    assert sandbox_state.merchants[MD5_MCH].v2_key not in repr(failed)
    more = await poll(twin, lambda ls: len(routes(ls)) >= 3)
    assert set(routes(logs) + routes(more)) == {"v3"}
    assert twin.shim.config.routing.mode == "v3"

    write_atomically(path, text_for("legacy"))
    logs = await poll(twin, lambda ls: "legacy" in routes(ls))
    assert routes(logs)[-1] == "legacy"


async def test_environment_mode_override_applies_on_the_next_check(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """COUPON_SHIM_MODE in the shim's env reroutes calls after the next background check; a
    bad value keeps the old."""
    env = {"UNRELATED": "1"}
    twin = make_shim("legacy", via="inprocess", env=env, reload={"check_interval_s": 0})
    assert routes(await poll(twin, lambda _: True)) == ["legacy"]
    env["COUPON_SHIM_MODE"] = "V3"
    assert routes(await poll(twin, lambda ls: "v3" in routes(ls)))[-1] == "v3"
    env["COUPON_SHIM_MODE"] = "sideways"
    logs = await poll(twin, lambda ls: bool(named(ls, "coupon_shim.config_reload_failed")))
    assert set(routes(logs)) == {"v3"}
    (failed,) = named(logs, "coupon_shim.config_reload_failed")
    assert "COUPON_SHIM_MODE" in failed["error"]
    del env["COUPON_SHIM_MODE"]
    assert routes(await poll(twin, lambda ls: "legacy" in routes(ls)))[-1] == "legacy"


async def test_canary_percent_override_from_the_environment(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """COUPON_SHIM_CANARY_PERCENT moves a key into the canary without touching the file."""
    env = {"UNRELATED": "1"}
    twin = make_shim("canary", via="inprocess", env=env, reload={"check_interval_s": 0})
    (event,) = named(await poll(twin, lambda _: True), EVENT)
    assert event["reason"] == "canary_out" and event["bucket"] == 7092
    env["COUPON_SHIM_CANARY_PERCENT"] = "70.93"
    events = named(await poll(twin, lambda ls: "v3" in routes(ls)), EVENT)
    assert events[-1]["reason"] == "canary_in" and events[-1]["route"] == "v3"


async def test_from_file_reads_overrides_from_the_env_it_is_given(
    twin_kind: str, sandbox_state: SandboxState, emulator: Emulator, tmp_path: Path
) -> None:
    """from_file(path, env=...) applies COUPON_SHIM_MODE from that env, not from os.environ."""
    path = sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url="http://unused", v3_base_url="http://unused"
    )
    env = {"COUPON_SHIM_MODE": "v3"}
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    twin = Twin(twin_kind, cls.from_file(path, env=env, transport=emulator.mock_transport()))
    try:
        assert twin.shim.config.routing.mode == "v3"
        assert routes(await poll(twin, lambda _: True)) == ["v3"]
    finally:
        await twin.close()


def test_mapping_edits_apply_live_and_a_broken_edit_keeps_the_last_good(
    make_config: Any, emulator: Any, tmp_path: Path
) -> None:
    """An edited mapping applies at the next reload check; an invalid edit keeps the old one."""
    import shutil

    from structlog.testing import capture_logs

    from shim import CouponStockShim

    # private: the mapping's model, loader and converters, tested below the facade
    from shim._mapping.load import default_mapping_dir

    folder = tmp_path / "live-mappings"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "query_coupon_stock.toml"
    original = path.read_text(encoding="utf-8")
    from shim import LiveConfig

    config = make_config("v3", mapping={"dir": str(folder)}, reload={"check_interval_s": 1.0})
    live = LiveConfig(config=config, env={}, watch=False)
    shim = CouponStockShim(live, transport=emulator.mock_transport(), env={})
    try:
        before = shim.query_coupon_stock("1757", mch_id="10000098")
        edited = original.replace(
            'v2 = "coupon_name"\nv3 = "stock_name"', 'v2 = "coupon_name"\nv3 = "description"'
        )
        assert edited != original
        path.write_text(edited, encoding="utf-8")
        os.utime(path, ns=(5, 5))
        assert (
            shim.query_coupon_stock("1757", mch_id="10000098")["coupon_name"]
            == before["coupon_name"]
        )
        assert live.check()  # what the background watcher does once per interval
        changed = shim.query_coupon_stock("1757", mch_id="10000098")["coupon_name"]
        assert changed != before["coupon_name"]
        path.write_text(
            original.replace('convert = "text"', 'convert = "nope"', 1), encoding="utf-8"
        )
        os.utime(path, ns=(9, 9))
        with capture_logs() as logs:
            assert not live.check()
            kept = shim.query_coupon_stock("1757", mch_id="10000098")["coupon_name"]
        assert kept == changed
        assert any(e["event"] == "coupon_shim.mapping_reload_failed" for e in logs)
    finally:
        shim.close()
