"""Shared fixtures: one emulator state per session, a loopback server, shims of both twins.

``make_shim`` builds a shim of either twin over real loopback HTTP (``via="loopback"``) or the
emulator's in-process transport (``via="inprocess"``), with any config table overridden.
``Twin`` gives tests one awaitable call shape for both twins, so a contract test is written
once and parametrised over ``sync`` and ``async``.
"""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig

# private: the config loader's steps, tested one by one
from shim._loader import parse_config

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import clear_mapping_cache
from shim.sandbox import Emulator, SandboxState, serve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MD5_MCH = "10000098"
HMAC_MCH = "10000099"
INPROCESS_URL = "http://wechatpay.emulator"
ENV_VARS = ("COUPON_SHIM_MODE", "COUPON_SHIM_CANARY_PERCENT", "COUPON_SHIM_KILL_SWITCH")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every item whose code measures elapsed time or waits on a real delay
    ``wallclock`` (``tests/wallclock.py``), so the count of clock-bound items stays true."""
    from tests.wallclock import clock_reason

    for item in items:
        if item.get_closest_marker("wallclock") is None and clock_reason(item) is not None:
            item.add_marker(pytest.mark.wallclock)


@pytest.fixture(scope="session")
def sandbox_state(tmp_path_factory: pytest.TempPathFactory) -> SandboxState:
    """Keys, certificates and v2 keys, created once per test session."""
    return SandboxState.load_or_create(tmp_path_factory.mktemp("sandbox-state"))


@pytest.fixture(scope="session")
def _session_emulator(sandbox_state: SandboxState) -> Emulator:
    return Emulator(sandbox_state)


@pytest.fixture(scope="session")
def server(_session_emulator: Emulator) -> Iterator[Any]:
    """The emulator served by uvicorn on 127.0.0.1 (a free port), for the whole session."""
    with serve(_session_emulator) as running:
        yield running


@pytest.fixture
def emulator(_session_emulator: Emulator) -> Iterator[Emulator]:
    """The session emulator, with faults, counts, stocks and clock reset after each test.

    Counts are also cleared before the test: tests that use only ``server`` (or a shim built
    on the session emulator) do not reset them, and a test counting requests must see its own.
    """
    import time

    stocks = dict(_session_emulator.stocks)
    _session_emulator.reset_counts()
    yield _session_emulator
    _session_emulator.clear_faults()
    _session_emulator.reset_counts()
    _session_emulator.stocks = stocks
    _session_emulator.clock = time.time


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No routing override leaks in from the environment or between tests."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    clear_mapping_cache()
    yield
    structlog.reset_defaults()


@pytest.fixture
def base_config(sandbox_state: SandboxState, tmp_path: Path) -> dict[str, Any]:
    """The emulator's own shim.toml as data, pointing nowhere yet (see make_config)."""
    path = sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL
    )
    with path.open("rb") as f:
        return tomllib.load(f)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_config(
    base_config: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., ShimConfig]:
    """Build a ShimConfig for the emulator: ``make_config(mode, via=..., routing={...}, ...)``."""

    def build(
        mode: str = "legacy",
        *,
        via: str = "inprocess",
        env: dict[str, str] | None = None,
        **tables: dict[str, Any],
    ) -> ShimConfig:
        url = INPROCESS_URL if via == "inprocess" else request.getfixturevalue("server").base_url
        data = _merge(
            base_config,
            {"upstream": {"v2_base_url": url, "v3_base_url": url}, "routing": {"mode": mode}},
        )
        data = _merge(data, tables)
        return parse_config(data, source="test-shim.toml", base_dir=tmp_path, env=env or {})

    return build


class FakeClock:
    """A monotonic clock the test moves by hand (``clock=`` of a shim, a flow's context)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Twin:
    """One awaitable call shape over either twin."""

    def __init__(self, kind: str, shim: CouponStockShim | AsyncCouponStockShim) -> None:
        self.kind = kind
        self.shim = shim

    async def query(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        if isinstance(self.shim, AsyncCouponStockShim):
            return await self.shim.query_coupon_stock(*args, **kwargs)
        return self.shim.query_coupon_stock(*args, **kwargs)

    async def query_via(self, route: str, **kwargs: Any) -> dict[str, str]:
        if isinstance(self.shim, AsyncCouponStockShim):
            return await self.shim.query_via(route, **kwargs)  # type: ignore[arg-type]
        return self.shim.query_via(route, **kwargs)  # type: ignore[arg-type]

    async def wait_for_shadows(self, timeout: float = 10.0) -> bool:
        if isinstance(self.shim, AsyncCouponStockShim):
            return await self.shim.wait_for_shadows(timeout)
        return await asyncio.to_thread(self.shim.wait_for_shadows, timeout)

    async def close(self) -> None:
        if isinstance(self.shim, AsyncCouponStockShim):
            await self.shim.aclose()
        else:
            self.shim.close()


@pytest.fixture(params=["sync", "async"])
def twin_kind(request: pytest.FixtureRequest) -> str:
    """Each contract test runs through both twins."""
    return str(request.param)


@pytest.fixture
async def make_shim(
    twin_kind: str, make_config: Callable[..., ShimConfig], emulator: Emulator
) -> AsyncIterator[Callable[..., Twin]]:
    """``make_shim(mode, via="loopback"|"inprocess", env=..., **tables) -> Twin`` (closed after)."""
    made: list[Twin] = []

    def build(
        mode: str = "legacy",
        *,
        via: str = "loopback",
        env: dict[str, str] | None = None,
        **tables: dict[str, Any],
    ) -> Twin:
        config = make_config(mode, via=via, env=env, **tables)
        kwargs: dict[str, Any] = {"env": env if env is not None else {}}
        if twin_kind == "async":
            if via == "inprocess":
                kwargs["transport"] = emulator.mock_transport()
            shim: CouponStockShim | AsyncCouponStockShim = AsyncCouponStockShim(config, **kwargs)
        else:
            if via == "inprocess":
                kwargs["transport"] = emulator.mock_transport()
            shim = CouponStockShim(config, **kwargs)
        twin = Twin(twin_kind, shim)
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()
