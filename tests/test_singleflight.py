"""Single-flight: identical concurrent calls share one upstream exchange, through both twins."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the event names and schema the assertions read
from shim._events import EVENT

# private: the sans-IO flow, driven directly with scripted answers
from shim._flow import CallOutcome, RouteResult

# private: single-flight's structures, tested directly
from shim._singleflight import AsyncFlights, ThreadFlights
from shim.sandbox import Emulator, SandboxState
from tests.conftest import MD5_MCH, Twin
from tests.wait import await_until, wait_until

N = 8
SLOW_S = 0.4


async def together(twin: Twin, n: int = N, **fields: Any) -> list[dict[str, str] | BaseException]:
    """``n`` identical calls at once (threads for the sync twin, tasks for the async one)."""
    fields = {"coupon_stock_id": "1757", "mch_id": MD5_MCH, **fields}
    if twin.kind == "async":
        return list(
            await asyncio.gather(
                *(twin.shim.query_coupon_stock(**fields) for _ in range(n)),  # type: ignore[misc]
                return_exceptions=True,
            )
        )
    out: list[dict[str, str] | BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            answer: dict[str, str] | BaseException = twin.shim.query_coupon_stock(**fields)  # type: ignore[assignment]
        except BaseException as exc:
            answer = exc
        with lock:
            out.append(answer)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == EVENT]


@pytest.mark.parametrize("mode", ["v3", "legacy"])
async def test_identical_concurrent_calls_share_one_exchange_with_answers_of_their_own(
    make_shim: Callable[..., Twin], emulator: Emulator, sandbox_state: SandboxState, mode: str
) -> None:
    """N overlapping identical calls: one upstream request; N answers, each signed anew."""
    side = "v3" if mode == "v3" else "v2"
    emulator.set_fault(side, "1757", "delay", delay_s=SLOW_S)
    twin = make_shim(mode, via="inprocess")
    with capture_logs() as logs:
        answers = await together(twin)
    assert emulator.request_counts[side] == 1
    assert all(isinstance(a, dict) for a in answers)
    key = sandbox_state.merchants[MD5_MCH].v2_key
    nonces = set()
    for answer in answers:
        assert isinstance(answer, dict)
        assert answer["result_code"] == "SUCCESS"
        v2.verify_answer(answer, key=key, sign_type="MD5")  # its own valid sign
        nonces.add(answer["nonce_str"])
    assert len(nonces) == N  # its own nonce
    bare = [{k: v for k, v in a.items() if k not in ("nonce_str", "sign")} for a in answers]  # type: ignore[union-attr]
    assert all(b == bare[0] for b in bare)
    evs = events(logs)
    assert len(evs) == N
    assert sum(1 for e in evs if e.get("coalesced")) == N - 1
    assert all(e["outcome"] == "success" and e["route"] == mode for e in evs)


async def test_single_flight_can_be_switched_off(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """[single_flight] enabled = false: every caller sends its own request."""
    emulator.set_fault("v3", "1757", "delay", delay_s=SLOW_S)
    twin = make_shim("v3", via="inprocess", single_flight={"enabled": False})
    with capture_logs() as logs:
        answers = await together(twin, n=4)
    assert all(isinstance(a, dict) for a in answers)
    assert emulator.request_counts["v3"] == 4
    assert not any(e.get("coalesced") for e in events(logs))


async def test_different_requests_are_not_coalesced(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Another device_info (a request field) or another stock is another exchange."""
    emulator.set_fault("v3", "*", "delay", delay_s=SLOW_S)
    twin = make_shim("v3", via="inprocess")
    calls = [
        {"coupon_stock_id": "1757", "mch_id": MD5_MCH},
        {"coupon_stock_id": "1757", "mch_id": MD5_MCH, "device_info": "dev1"},
        {"coupon_stock_id": "1717", "mch_id": MD5_MCH},
    ]
    if twin.kind == "async":
        answers = await asyncio.gather(*(twin.shim.query_coupon_stock(**c) for c in calls))  # type: ignore[misc]
    else:
        results: list[Any] = [None] * 3

        def run(i: int) -> None:
            results[i] = twin.shim.query_coupon_stock(**calls[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        answers = results
    assert emulator.request_counts["v3"] == 3
    assert answers[1].get("device_info") == "dev1" and "device_info" not in answers[0]


async def test_the_shared_exchange_error_reaches_every_caller(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A failing shared exchange: every caller gets the same typed error, from one request."""
    emulator.set_fault("v3", "1757", "delay", delay_s=1.0)
    twin = make_shim(
        "v3",
        via="inprocess",
        upstream={"timeout_s": 0.3, "budget_s": 2.0},
        retry={"attempts": 1},
        routing={"fallback_to_legacy": False},
    )
    with capture_logs() as logs:
        answers = await together(twin)
    assert all(isinstance(a, UpstreamError) and a.kind == "timeout" for a in answers)
    assert emulator.request_counts["v3"] == 1
    evs = events(logs)
    assert len(evs) == N and all(e["outcome"] == "error" for e in evs)
    assert sum(1 for e in evs if e.get("coalesced")) == N - 1
    # one upstream failure, counted once: the breaker saw one failure, not N
    assert twin.shim.breaker("v3", MD5_MCH)._failures == 1


async def test_async_leader_cancelled_followers_still_get_answers(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Cancelling the leading task gives its followers an answer, never a CancelledError."""
    emulator.set_fault("v3", "1757", "delay", delay_s=SLOW_S)
    shim = AsyncCouponStockShim(
        make_shim("v3", via="inprocess").shim.config,
        transport=emulator.mock_transport(),
        env={},
    )
    try:
        leader = asyncio.create_task(shim.query_coupon_stock("1757", mch_id=MD5_MCH))
        await asyncio.sleep(0.05)  # the leader's request is in flight
        followers = [
            asyncio.create_task(shim.query_coupon_stock("1757", mch_id=MD5_MCH)) for _ in range(4)
        ]
        await asyncio.sleep(0.05)
        leader.cancel()
        results = await asyncio.gather(*followers, return_exceptions=True)
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert all(isinstance(r, dict) and r["result_code"] == "SUCCESS" for r in results)
        # the followers ran the call again (one of them leading), once
        assert emulator.request_counts["v3"] == 2
        assert len(shim._flights) == 0
    finally:
        await shim.aclose()


async def test_shadowed_calls_coalesce_and_only_the_leader_is_compared(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Shadow mode: one served and one shadow exchange; followers are not compared again."""
    emulator.set_fault("v2", "1757", "delay", delay_s=SLOW_S)
    twin = make_shim("shadow", via="inprocess")
    with capture_logs() as logs:
        answers = await together(twin)
        if twin.kind == "async":
            await twin.shim.wait_for_shadows(10)  # type: ignore[misc]
        else:
            twin.shim.wait_for_shadows(10)
    assert all(isinstance(a, dict) and a["result_code"] == "SUCCESS" for a in answers)
    assert emulator.request_counts == {"v2": 1, "v3": 1}
    totals = twin.shim.shadow_totals()
    assert totals.calls == 1 and totals.matches == 1
    evs = events(logs)
    assert len(evs) == N
    (compared,) = [e for e in evs if "shadow" in e]
    assert compared["shadow"] == "match" and not compared.get("coalesced")
    assert sum(1 for e in evs if e.get("coalesced")) == N - 1


# ------------------------------------------------------------------ the groups, unit level


def _outcome(received_at: float) -> CallOutcome:
    return CallOutcome(
        RouteResult({"return_code": "SUCCESS"}, "v3", 1, received_at=received_at), "v3", False
    )


def _budget() -> UpstreamError:
    return UpstreamError("spent", route="v3", kind="budget")


def test_a_follower_never_takes_an_answer_older_than_its_call() -> None:
    """A shared answer whose reply arrived before the follower started: it runs its own."""
    flights: ThreadFlights[CallOutcome] = ThreadFlights()
    release, waiting = threading.Event(), threading.Event()
    follower_started = 10.0

    def leader() -> CallOutcome:
        release.wait(5)
        return _outcome(received_at=5.0)  # arrived before the follower's call began

    got: list[Any] = []
    t = threading.Thread(
        target=lambda: got.append(
            flights.run("k", leader, fresh=lambda o: True, remaining=lambda: 5, expired=_budget)
        )
    )
    t.start()
    wait_until(lambda: len(flights) == 1, "the leader never took off")
    own = _outcome(received_at=11.0)
    follower: list[Any] = []
    f = threading.Thread(
        target=lambda: follower.append(
            flights.run(
                "k",
                lambda: own,
                fresh=lambda o: o.result.received_at >= follower_started,
                remaining=lambda: (waiting.set(), 5)[1],
                expired=_budget,
            )
        )
    )
    f.start()
    wait_until(waiting.is_set, "the follower never joined the flight")
    release.set()
    t.join(5)
    f.join(5)
    assert follower == [(own, False)]
    assert flights.stats.retried == 1 and len(flights) == 0


def test_a_follower_waits_no_longer_than_its_own_budget() -> None:
    """A follower whose budget ends while the leader is still out gets a typed budget error."""
    flights: ThreadFlights[CallOutcome] = ThreadFlights()
    release = threading.Event()
    t = threading.Thread(
        target=lambda: flights.run(
            "k",
            lambda: (release.wait(5), _outcome(1.0))[1],
            fresh=lambda o: True,
            remaining=lambda: 5,
            expired=_budget,
        )
    )
    t.start()
    wait_until(lambda: len(flights) == 1, "the leader never took off")
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        flights.run(
            "k", lambda: _outcome(2.0), fresh=lambda o: True, remaining=lambda: 0.1, expired=_budget
        )
    assert info.value.kind == "budget" and time.monotonic() - started < 1.0
    release.set()
    t.join(5)


def test_a_leader_that_dies_of_a_bug_abandons_the_flight() -> None:
    """A leader ending in a non-shim exception: followers run the call themselves."""
    flights: ThreadFlights[CallOutcome] = ThreadFlights()
    release, waiting = threading.Event(), threading.Event()

    def broken() -> CallOutcome:
        release.wait(5)
        raise RuntimeError("bug")

    errors: list[BaseException] = []

    def lead() -> None:
        try:
            flights.run("k", broken, fresh=lambda o: True, remaining=lambda: 5, expired=_budget)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=lead)
    t.start()
    wait_until(lambda: len(flights) == 1, "the leader never took off")
    out: list[Any] = []
    f = threading.Thread(
        target=lambda: out.append(
            flights.run(
                "k",
                lambda: _outcome(3.0),
                fresh=lambda o: True,
                remaining=lambda: (waiting.set(), 5)[1],
                expired=_budget,
            )
        )
    )
    f.start()
    wait_until(waiting.is_set, "the follower never joined the flight")
    release.set()
    t.join(5)
    f.join(5)
    assert len(errors) == 1 and out and out[0][1] is False


async def test_async_group_is_empty_after_errors_and_cancellations() -> None:
    """The async group holds only calls in flight, whatever way they ended."""
    flights: AsyncFlights[CallOutcome] = AsyncFlights()
    joined: list[int] = []

    def remaining() -> float:  # a follower asks just before it waits for the flight
        joined.append(1)
        return 5

    async def fail() -> CallOutcome:
        await await_until(lambda: len(joined) == 4, "the followers never joined", interval=0)
        raise _budget()

    results = await asyncio.gather(
        *(
            flights.run("k", fail, fresh=lambda o: True, remaining=remaining, expired=_budget)
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, UpstreamError) for r in results)
    assert flights.stats.led == 1 and flights.stats.coalesced == 4
    assert len(flights) == 0


async def test_coalesced_calls_and_cache_lookups_are_counted_in_the_metrics(
    twin_kind: str, make_config: Callable[..., Any], emulator: Emulator
) -> None:
    """A Prometheus scrape counts the coalesced calls and the cache's hits and misses."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    emulator.set_fault("v3", "1757", "delay", delay_s=SLOW_S)
    cls = AsyncCouponStockShim if twin_kind == "async" else CouponStockShim
    shim = cls(
        make_config("v3", cache={"ttl_s": 60.0}),
        transport=emulator.mock_transport(),
        env={},
        registry=registry,
    )
    twin = Twin(twin_kind, shim)
    try:
        await together(twin, n=4)  # one leader (a miss), three coalesced (misses too)
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)  # a hit
    finally:
        await twin.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("coupon_shim_coalesced_calls_total", (("route", "v3"),))] == 3
    assert samples[("coupon_shim_answer_cache_total", (("result", "miss"),))] == 4
    assert samples[("coupon_shim_answer_cache_total", (("result", "hit"),))] == 1
    assert emulator.request_counts["v3"] == 1
