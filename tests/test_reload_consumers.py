"""Live reload applies to every consumer of the config: one test per reloadable setting.

Each test starts a shim (both twins where the setting applies to both) on a watched file,
proves the old value is in force, edits the file, and proves the new value took effect without
a restart. The reload event names the keys that changed, never their values.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import LogCapture

from shim import (
    AsyncCouponStockShim,
    CallRecord,
    CouponStockShim,
    InputError,
    LiveConfig,
    OverloadError,
    UpstreamError,
)
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, INPROCESS_URL, MD5_MCH, FakeClock, Twin

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


class Watched:
    """A shim.toml on disk, edited key by key; ``apply()`` makes the shim's LiveConfig see it
    (the background watcher is off: ``check()`` runs the reload here, deterministically)."""

    def __init__(self, state: SandboxState, path: Path, mode: str) -> None:
        self.path = path
        state.write_config(path, v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL, mode=mode)
        self.text = path.read_text()
        self.set("retry", "backoff_initial_s", "0.0")
        self.write()
        self.live = LiveConfig(path, env={}, watch=False)

    def set(self, section: str, key: str, value: str) -> Watched:
        start = self.text.index(f"[{section}]\n")
        pattern = re.compile(rf"^{re.escape(key)} = .*$", re.MULTILINE)
        found = pattern.search(self.text, start)
        assert found is not None, (section, key)
        self.text = self.text[: found.start()] + f"{key} = {value}" + self.text[found.end() :]
        return self

    def add(self, section: str, key: str, value: str) -> Watched:
        """Add a key the sandbox's file does not write (its table is made when missing)."""
        header = f"[{section}]\n"
        if header in self.text:
            at = self.text.index(header) + len(header)
            self.text = self.text[:at] + f"{key} = {value}\n" + self.text[at:]
        else:
            self.text = self.text.rstrip("\n") + f"\n\n{header}{key} = {value}\n"
        return self

    def drop_merchant(self, mch_id: str) -> Watched:
        self.text = re.sub(
            rf'\n\[merchants\."{mch_id}"\]\n(?:[^\[\n].*\n?)*', "\n", self.text, flags=re.M
        )
        return self

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.text)
        os.replace(tmp, self.path)  # atomic, so the reload reads it at once

    def apply(self) -> None:
        self.write()
        assert self.live.check(), "the edit was not applied"


@pytest.fixture
async def watched(
    twin_kind: str, sandbox_state: SandboxState, emulator: Emulator, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[Watched, Twin]]]:
    """``watched(mode) -> (Watched, Twin)``: a shim of the test's twin on a watched file."""
    made: list[Twin] = []

    def build(mode: str = "legacy", **kwargs: Any) -> tuple[Watched, Twin]:
        w = Watched(sandbox_state, tmp_path / "shim.toml", mode)
        kw: dict[str, Any] = {"env": {}, "transport": emulator.mock_transport(), **kwargs}
        cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
        twin = Twin(twin_kind, cls(w.live, **kw))
        made.append(twin)
        return w, twin

    yield build
    for twin in made:
        await twin.close()


async def at_once(twin: Twin, *stocks: str) -> list[dict[str, str] | BaseException]:
    """One call per stock, all started together (threads for the sync twin)."""
    if isinstance(twin.shim, AsyncCouponStockShim):
        calls = [twin.shim.query_coupon_stock(s, mch_id=MD5_MCH) for s in stocks]
    else:
        sync = twin.shim
        calls = [asyncio.to_thread(sync.query_coupon_stock, s, mch_id=MD5_MCH) for s in stocks]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def records_of(twin: Twin) -> list[CallRecord]:
    got: list[CallRecord] = []
    twin.shim.subscribe(got.append)
    return got


# --------------------------------------------------------------------------- shadow


async def test_shadow_sample_ratio(watched: Callable[..., Any]) -> None:
    """[shadow] sample_ratio: 1 → 0 stops shadowing the next calls."""
    w, twin = watched("shadow")
    records = records_of(twin)
    await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    w.set("shadow", "sample_ratio", "0.0").apply()
    await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert [r.shadow.kind for r in records if r.shadow] == ["match", "sampled_out"]


async def test_shadow_max_in_flight(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[shadow] max_in_flight: lowered to 1, a second comparison while one runs is dropped."""
    w, twin = watched("shadow")
    records = records_of(twin)
    emulator.set_fault("v3", "1757", "delay", delay_s=0.4)
    for _ in range(2):
        await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert sorted(r.shadow.kind for r in records if r.shadow) == ["match", "match"]
    records.clear()
    w.set("shadow", "max_in_flight", "1").apply()
    for _ in range(2):
        await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert sorted(r.shadow.kind for r in records if r.shadow) == ["dropped", "match"]


async def test_shadow_timeout(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[shadow] timeout_s: lowered below the v3 delay, the comparison ends as a timeout."""
    w, twin = watched("shadow")
    records = records_of(twin)
    emulator.set_fault("v3", "1757", "delay", delay_s=0.6)
    await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    w.set("shadow", "timeout_s", "0.2").apply()
    await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    first, second = (r.shadow for r in records)
    assert first is not None and first.kind == "match"
    assert second is not None and second.kind == "error"
    assert second.error_kind in ("timeout", "budget")
    assert second.latency_ms is not None and second.latency_ms < 550


async def test_shadow_workers(
    watched: Callable[..., Any], emulator: Emulator, twin_kind: str
) -> None:
    """[shadow] workers (sync twin's pool): 4 → 1 runs every later comparison on one thread."""
    if twin_kind == "async":
        pytest.skip("the async twin runs shadows as tasks; workers sizes the sync pool")
    w, twin = watched("shadow")
    threads: set[str] = set()
    twin.shim.subscribe(lambda r: threads.add(threading.current_thread().name))
    emulator.set_fault("v3", "1757", "delay", delay_s=0.3)
    for _ in range(3):
        await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert len(threads) == 3  # three comparisons side by side on the 4-thread pool
    w.set("shadow", "workers", "1").apply()
    threads.clear()
    for _ in range(3):
        await twin.query("1757", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert len(threads) == 1


# ------------------------------------------------------------------- breaker and retry


async def test_breaker_failure_threshold(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[circuit_breaker] failure_threshold: lowered to 1, one failed call opens the breaker."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").set("retry", "attempts", "1").apply()
    emulator.set_fault("v3", "1757", "http_500")
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    assert twin.shim.breaker("v3", MD5_MCH).state == "closed"  # 1 of 5
    w.set("circuit_breaker", "failure_threshold", "1").apply()
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    assert twin.shim.breaker("v3", MD5_MCH).state == "open"


async def test_breaker_reset_after(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[circuit_breaker] reset_after_s: an open breaker (30 s) probes as soon as the reloaded,
    shorter reset time has passed (on the shim's clock, which the test moves)."""
    clock = FakeClock()
    w, twin = watched("v3", clock=clock)
    w.set("routing", "fallback_to_legacy", "false").set("retry", "attempts", "1")
    w.set("circuit_breaker", "failure_threshold", "1").apply()
    emulator.set_fault("v3", "1757", "http_500", times=1)
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    with pytest.raises(UpstreamError, match="circuit breaker"):
        await twin.query("1757", mch_id=MD5_MCH)
    w.set("circuit_breaker", "reset_after_s", "0.05").apply()
    clock.now += 0.1
    answer = await twin.query("1757", mch_id=MD5_MCH)
    assert answer["result_code"] == "SUCCESS"
    assert twin.shim.breaker("v3", MD5_MCH).state == "closed"


async def test_retry_attempts(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[retry] attempts: 3 → 1 sends one request per call instead of three."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").apply()
    emulator.set_fault("v3", "1757", "http_500")
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 3
    emulator.reset_counts()
    w.set("retry", "attempts", "1").apply()
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 1


async def test_upstream_timeout(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[upstream] timeout_s: lowered below the v3 delay, the call times out (typed)."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").set("retry", "attempts", "1").apply()
    emulator.set_fault("v3", "1757", "delay", delay_s=0.5)
    assert (await twin.query("1757", mch_id=MD5_MCH))["result_code"] == "SUCCESS"
    w.set("upstream", "timeout_s", "0.1").apply()
    with pytest.raises(UpstreamError) as info:
        await twin.query("1757", mch_id=MD5_MCH)
    assert info.value.kind == "timeout"


async def test_upstream_max_in_flight(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[upstream] max_in_flight (the admission gate): lowered to 1, of two calls at once on a
    stalled upstream one holds the slot and the other gets OverloadError within its budget
    (before, both were admitted and both ran out of budget upstream)."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").set("retry", "attempts", "1")
    w.set("upstream", "budget_s", "0.3").apply()
    for stock in ("1757", "9856030"):
        emulator.set_fault("v3", stock, "delay", delay_s=1.0)
    before = await at_once(twin, "1757", "9856030")
    assert all(type(r) is UpstreamError for r in before), before
    w.add("upstream", "max_in_flight", "1").apply()
    after = await at_once(twin, "1757", "9856030")
    assert sorted(type(r).__name__ for r in after) == ["OverloadError", "UpstreamError"], after
    assert all("max_in_flight" in str(r) for r in after if isinstance(r, OverloadError))


# ------------------------------------------------------------ cache and single-flight


async def test_cache_ttl(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[cache] ttl_s: 0 (off) → 60 s serves a repeated query from the cache."""
    w, twin = watched("v3")
    for _ in range(2):
        await twin.query("1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 2
    w.add("cache", "ttl_s", "60.0").apply()
    emulator.reset_counts()
    records = records_of(twin)
    for _ in range(2):
        await twin.query("1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 1
    assert [(r.tags or {}).get("cache") for r in records] == ["miss", "hit"]


async def test_cache_max_entries(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[cache] max_entries: 100 → 1 keeps only the latest answer (the earlier one is
    fetched again)."""
    w, twin = watched("v3")
    w.add("cache", "ttl_s", "60.0").add("cache", "max_entries", "100").apply()
    for stock in ("1757", "9856030", "1757"):
        await twin.query(stock, mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 2  # the second 1757 was a hit
    w.set("cache", "max_entries", "1").apply()
    emulator.reset_counts()
    for stock in ("1757", "9856030", "1757"):
        await twin.query(stock, mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 3  # 9856030 pushed 1757 out


async def test_single_flight_enabled(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[single_flight] enabled: false → true makes two identical calls at once share one
    upstream exchange (the follower's record says coalesced)."""
    w, twin = watched("v3")
    w.add("single_flight", "enabled", "false").apply()
    emulator.set_fault("v3", "1757", "delay", delay_s=0.3)
    answers = await at_once(twin, "1757", "1757")
    assert all(isinstance(a, dict) for a in answers), answers
    assert emulator.request_counts["v3"] == 2
    w.set("single_flight", "enabled", "true").apply()
    emulator.reset_counts()
    records = records_of(twin)
    answers = await at_once(twin, "1757", "1757")
    assert all(isinstance(a, dict) and a["result_code"] == "SUCCESS" for a in answers), answers
    assert emulator.request_counts["v3"] == 1
    assert sorted(bool((r.tags or {}).get("coalesced")) for r in records) == [False, True]


# ----------------------------------------------------------------- routing and mapping


async def test_routing_mode_and_force_lists(watched: Callable[..., Any]) -> None:
    """[routing] mode and force lists: legacy → v3, then a stock forced back to legacy."""
    w, twin = watched("legacy")
    records = records_of(twin)
    await twin.query("1757", mch_id=MD5_MCH)
    w.set("routing", "mode", '"v3"').apply()
    await twin.query("1757", mch_id=MD5_MCH)
    w.set("routing", "force_legacy_stock_ids", '["1757"]').apply()
    await twin.query("1757", mch_id=MD5_MCH)
    assert [(r.route, r.decision.reason) for r in records] == [
        ("legacy", "mode"),
        ("v3", "mode"),
        ("legacy", "force_legacy_stock_id"),
    ]


async def test_mapping_dir(watched: Callable[..., Any], tmp_path: Path) -> None:
    """[mapping] dir: pointing at an edited copy changes the mapped answer at once."""
    w, twin = watched("v3")
    assert "coupon_name" in await twin.query("1757", mch_id=MD5_MCH)
    folder = tmp_path / "my-mappings"
    shutil.copytree(MAPPINGS, folder)
    table = folder / "query_coupon_stock.toml"
    text = table.read_text()
    assert 'v2 = "coupon_name"' in text
    table.write_text(text.replace('v2 = "coupon_name"', 'v2 = "coupon_title"'))
    w.set("mapping", "dir", f'"{folder.as_posix()}"').apply()
    answer = await twin.query("1757", mch_id=MD5_MCH)
    assert "coupon_title" in answer and "coupon_name" not in answer


# ------------------------------------------------------------------------- merchants


async def test_merchants_removed_and_added(
    watched: Callable[..., Any], sandbox_state: SandboxState
) -> None:
    """[merchants]: a removed merchant is refused before any I/O (and its breakers dropped);
    adding it back serves it again."""
    w, twin = watched("legacy")
    await twin.query("9856099", mch_id=HMAC_MCH)
    full = w.text
    w.drop_merchant(HMAC_MCH).apply()
    appid = sandbox_state.merchants[HMAC_MCH].appid
    with pytest.raises(InputError, match="no merchant entry"):
        await twin.query("9856099", appid=appid, mch_id=HMAC_MCH)
    assert all(mch != HMAC_MCH for _, mch in twin.shim._breakers)
    w.text = full
    w.apply()
    assert (await twin.query("9856099", mch_id=HMAC_MCH))["result_code"] == "SUCCESS"


# -------------------------------------------------------------------- the reload event


def test_reload_event_names_changed_keys_never_values(
    sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """coupon_shim.config_reloaded lists the dotted keys that changed; a changed secret is
    named, its value never appears."""
    w = Watched(sandbox_state, tmp_path / "shim.toml", "legacy")
    key_file = tmp_path / "new-v2.key"
    secret = "Z" * 32
    key_file.write_text(secret)
    cap = LogCapture()
    structlog.configure(processors=[cap])
    w.set("shadow", "sample_ratio", "0.5").set("circuit_breaker", "reset_after_s", "5.0")
    w.set("routing", "mode", '"canary"').set("routing", "canary_percent", "12.5")
    w.set(f'merchants."{MD5_MCH}"', "v2_key", f'"file:{key_file.name}"')
    w.apply()
    (event,) = [e for e in cap.entries if e["event"] == "coupon_shim.config_reloaded"]
    assert event["changed"] == [
        "circuit_breaker.reset_after_s",
        "routing.mode",
        "routing.canary_percent",
        "shadow.sample_ratio",
        f'merchants."{MD5_MCH}".v2_key',
    ]
    assert secret not in repr(cap.entries)


# ------------------------------------------------------------ more keys, one test each


async def test_shadow_ignore_fields(watched: Callable[..., Any]) -> None:
    """[shadow] ignore_fields: adding the divergent stock's two fields turns its mismatch
    into a match."""
    w, twin = watched("shadow")
    records = records_of(twin)
    await twin.query("9000000001", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    w.set("shadow", "ignore_fields", '["nonce_str", "sign", "coupon_total", "is_send_num"]')
    w.apply()
    await twin.query("9000000001", mch_id=MD5_MCH)
    assert await twin.wait_for_shadows()
    assert [r.shadow.kind for r in records if r.shadow] == ["mismatch", "match"]


async def test_upstream_budget(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[upstream] budget_s: lowered below one slow answer, the call ends within it (typed)."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").apply()
    emulator.set_fault("v3", "1757", "delay", delay_s=0.4)
    assert (await twin.query("1757", mch_id=MD5_MCH))["result_code"] == "SUCCESS"
    w.set("upstream", "budget_s", "0.15").apply()
    with pytest.raises(UpstreamError) as info:
        await twin.query("1757", mch_id=MD5_MCH)
    assert info.value.kind in ("timeout", "budget")


class _Recording(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The emulator's in-process transport, noting the host each request was sent to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hosts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.netloc.decode())
        return self.inner.handle_request(request)  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.netloc.decode())
        return await self.inner.handle_async_request(request)  # type: ignore[no-any-return]


async def test_upstream_base_url(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[upstream] v3_base_url: the next v3 request goes to the reloaded host."""
    transport = _Recording(emulator.mock_transport())
    w, twin = watched("v3", transport=transport)
    await twin.query("1757", mch_id=MD5_MCH)
    w.set("upstream", "v3_base_url", '"http://v3.example.test:8443"').apply()
    await twin.query("1757", mch_id=MD5_MCH)
    assert transport.hosts == ["wechatpay.emulator", "v3.example.test:8443"]


async def test_routing_fallback_to_legacy(watched: Callable[..., Any], emulator: Emulator) -> None:
    """[routing] fallback_to_legacy: on, a failing v3 is served by legacy; off, it raises."""
    w, twin = watched("v3")
    w.set("retry", "attempts", "1").apply()
    records = records_of(twin)
    emulator.set_fault("v3", "1757", "http_500")
    await twin.query("1757", mch_id=MD5_MCH)
    assert records[-1].route == "legacy" and records[-1].first_error is not None
    w.set("routing", "fallback_to_legacy", "false").apply()
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)


async def test_routing_canary_percent(watched: Callable[..., Any]) -> None:
    """[routing] canary_percent: 0 → 100 moves every key to v3 (reason canary_in)."""
    w, twin = watched("canary")
    records = records_of(twin)
    await twin.query("1757", mch_id=MD5_MCH)
    w.set("routing", "canary_percent", "100.0").apply()
    await twin.query("1757", mch_id=MD5_MCH)
    assert [(r.route, r.decision.reason) for r in records] == [
        ("legacy", "canary_out"),
        ("v3", "canary_in"),
    ]


async def test_upstream_max_body_bytes(watched: Callable[..., Any]) -> None:
    """[upstream] max_body_bytes: lowered to the minimum, a v3 answer above it is refused."""
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").apply()
    await twin.query("9856030", mch_id=MD5_MCH)  # the stock with every optional field
    w.set("upstream", "max_body_bytes", "1024").apply()
    with pytest.raises(UpstreamError) as info:
        await twin.query("9856030", mch_id=MD5_MCH)
    assert info.value.kind == "protocol" and "cap" in str(info.value)


async def test_retry_backoff(
    watched: Callable[..., Any], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[retry] backoff_initial_s / backoff_max_s: 0 → 0.2 s makes the retries wait, capped."""
    import asyncio
    import time

    # private: the transports' internals (deadline streams, limits)
    import shim._transport as transport

    waits: list[float] = []
    real_asleep = asyncio.sleep

    class Recording:
        """The driver module's view of ``time`` / ``asyncio``: sleeps are recorded, not
        waited (only shim._transport sees it; other threads keep the real modules)."""

        def __init__(self, module: Any) -> None:
            self._module = module

        def __getattr__(self, name: str) -> Any:
            return getattr(self._module, name)

    class Time(Recording):
        def sleep(self, seconds: float) -> None:
            waits.append(seconds)

    class Asyncio(Recording):
        async def sleep(self, seconds: float) -> None:
            waits.append(seconds)
            await real_asleep(0)

    monkeypatch.setattr(transport, "time", Time(time))
    monkeypatch.setattr(transport, "asyncio", Asyncio(asyncio))
    w, twin = watched("v3")
    w.set("routing", "fallback_to_legacy", "false").apply()
    emulator.set_fault("v3", "1757", "http_500")
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    assert emulator.request_counts["v3"] == 3
    assert all(s == 0 for s in waits), waits  # backoff_initial_s = 0: no wait
    waits.clear()
    w.set("retry", "backoff_initial_s", "0.2").set("retry", "backoff_max_s", "0.2").apply()
    with pytest.raises(UpstreamError):
        await twin.query("1757", mch_id=MD5_MCH)
    backoffs = [s for s in waits if s > 0]
    assert len(backoffs) == 2, waits  # one wait before each of the two retries
    assert all(0 < s <= 0.2 for s in backoffs), waits  # full jitter under the new cap


def test_reload_check_interval(sandbox_state: SandboxState, tmp_path: Path) -> None:
    """[reload] check_interval_s: 2 → 30 s spaces the next look at the file 30 s out."""
    now = [1000.0]
    w = Watched(sandbox_state, tmp_path / "shim.toml", "legacy")
    live = LiveConfig(w.path, env={}, watch=False, clock=lambda: now[0])
    assert live.current().reload_interval_s == 2.0
    w.set("reload", "check_interval_s", "30.0").write()
    assert live.check()
    assert live.current().reload_interval_s == 30.0
    # _due_in is what the watcher thread sleeps on; reading it here keeps the test clockless
    assert live._due_in() == pytest.approx(30.0)
    now[0] += 29.0
    assert live._due_in() == pytest.approx(1.0)
