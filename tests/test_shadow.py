"""Tests of shim._diff and shim._shadow: diffing, totals, the bounded thread and async runners."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shim import ShadowTotals, SignatureError, UpstreamError

# private: the answer diff, tested directly
from shim._diff import REDACTED, FieldDiff, diff_answers, is_secret_field, normalise

# private: the shadow runners, totals and outcomes, tested directly
from shim._shadow.outcome import ShadowOutcome, compare_answers, error_kind_of

# private: the shadow runners, totals and outcomes, tested directly
from shim._shadow.runners import AsyncShadowRunner, ThreadShadowRunner

# private: the shadow runners, totals and outcomes, tested directly
from shim._shadow.totals import ShadowStats

# private: config value types, built directly instead of from a file
from shim._values import ShadowConfig

IGNORE = frozenset({"nonce_str", "sign"})
WAIT = 10.0  # generous upper bound for thread hand-offs; never a timing assertion

SERVED = {
    "return_code": "SUCCESS",
    "coupon_value": "5",
    "coupon_name": "Stock A",
    "nonce_str": "aaa",
    "sign": "S1",
}


class Collector:
    """Collects outcomes from on_done and signals when ``n`` have arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.outcomes: list[ShadowOutcome] = []
        self._lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, outcome: ShadowOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            if len(self.outcomes) >= self.n:
                self.done.set()

    def kinds(self) -> list[str]:
        return sorted(o.kind for o in self.outcomes)


def _rng(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# --- diffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        (" 05 ", "5"),
        ("000", "0"),
        ("5", "5"),
        ("-05", "-05"),
        ("5.0", "5.0"),
        ("\tSUCCESS\n", "SUCCESS"),
        ("٥", "٥"),
        ("", ""),
    ],
)
def test_normalise(raw: str, norm: str) -> None:
    """Whitespace is stripped and only all-ASCII-digit strings become canonical integers."""
    assert normalise(raw) == norm


def test_diff_normalises_and_ignores() -> None:
    """Representation differences and ignored fields (nonce_str, sign) are not diffs."""
    other = dict(SERVED, coupon_value=" 005", nonce_str="bbb", sign="S2")
    assert diff_answers(SERVED, other, ignore=IGNORE) == ()
    assert compare_answers(SERVED, other, ignore=IGNORE).kind == "match"


def test_diff_reports_fields_sorted_with_missing_sides() -> None:
    """Differing and one-sided fields are reported, sorted, with None for the missing side."""
    other = {k: v for k, v in SERVED.items() if k != "coupon_name"}
    other.update(coupon_value="500", is_send_num="3")
    diffs = diff_answers(SERVED, other, ignore=IGNORE)
    assert diffs == (
        FieldDiff("coupon_name", "Stock A", None),
        FieldDiff("coupon_value", "5", "500"),
        FieldDiff("is_send_num", None, "3"),
    )
    outcome = compare_answers(SERVED, other, ignore=IGNORE, latency_ms=1.5)
    assert (outcome.kind, outcome.latency_ms, outcome.diffs) == ("mismatch", 1.5, diffs)


def test_diff_redacts_secret_fields() -> None:
    """Secret-bearing fields are compared but their values shown only as <redacted>."""
    a = {"sign": "AAAA", "v2_key": "k1", "api_secret": "x", "sign_type": "MD5"}
    b = {"sign": "BBBB", "v2_key": "k2", "api_secret": "y", "sign_type": "HMAC-SHA256"}
    diffs = {d.field: d for d in diff_answers(a, b, ignore=frozenset())}
    for name in ("sign", "v2_key", "api_secret"):
        assert diffs[name].served == REDACTED and diffs[name].other == REDACTED
    assert diffs["sign_type"] == FieldDiff("sign_type", "MD5", "HMAC-SHA256")
    assert "AAAA" not in repr(diffs) and "k1" not in repr(diffs)
    assert diff_answers({"sign": "A"}, {}, ignore=frozenset())[0].other is None
    assert is_secret_field("Authorization") and is_secret_field("wechatpay_signature")
    assert not is_secret_field("coupon_stock_id") and not is_secret_field("sign_type")


def test_error_kinds() -> None:
    """Shadow errors get short labels: upstream kind, signature, or unexpected."""
    assert error_kind_of(UpstreamError("x", route="v3", kind="connection")) == "connection"
    assert error_kind_of(SignatureError("x", route="v3")) == "signature"
    assert error_kind_of(TimeoutError()) == "timeout"
    assert error_kind_of(ValueError()) == "unexpected"


# --- stats -------------------------------------------------------------------------------


def test_stats_totals_add_up() -> None:
    """Every outcome kind is counted; calls is their sum; per-field and per-kind counts are kept."""
    stats = ShadowStats()
    assert stats.snapshot() == ShadowTotals()
    d1 = (FieldDiff("coupon_value", "5", "6"), FieldDiff("coupon_name", "a", "b"))
    d2 = (FieldDiff("coupon_value", "5", "7"),)
    for o in [
        ShadowOutcome("match"),
        ShadowOutcome("match"),
        ShadowOutcome.from_diffs(d1),
        ShadowOutcome.from_diffs(d2),
        ShadowOutcome.from_error(UpstreamError("t", route="v3", kind="timeout")),
        ShadowOutcome("dropped"),
        ShadowOutcome("sampled_out"),
        ShadowOutcome("sampled_out"),
    ]:
        stats.record(o)
    t = stats.snapshot()
    assert t.calls == 8
    assert t.calls == t.matches + t.mismatches + t.errors + t.dropped + t.sampled_out
    assert (t.compared, t.matches, t.mismatches, t.errors) == (4, 2, 2, 1)
    assert dict(t.mismatches_by_field) == {"coupon_value": 2, "coupon_name": 1}
    assert dict(t.errors_by_kind) == {"timeout": 1}
    d = t.as_dict()
    assert d["mismatches_by_field"] == {"coupon_name": 1, "coupon_value": 2}
    assert (d["dropped"], d["sampled_out"]) == (1, 2)
    with pytest.raises(TypeError):
        t.mismatches_by_field["x"] = 1  # type: ignore[index]
    stats.record(ShadowOutcome("match"))
    assert t.matches == 2  # the snapshot does not move


def test_stats_thread_safe() -> None:
    """Concurrent record() calls from many threads lose no counts."""
    stats = ShadowStats()
    outcome = ShadowOutcome.from_diffs((FieldDiff("f", "1", "2"),))

    def work() -> None:
        for _ in range(2000):
            stats.record(outcome)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert snap.mismatches == 16_000 and snap.mismatches_by_field["f"] == 16_000


# --- thread runner -----------------------------------------------------------------------


def _blocking_job(release: threading.Event, started: threading.Semaphore) -> ShadowOutcome:
    started.release()
    assert release.wait(WAIT)
    return ShadowOutcome("match")


def test_thread_runner_drops_excess_without_blocking() -> None:
    """Over max_in_flight, submit returns False at once, counts a drop and reports it to on_done."""
    stats = ShadowStats()
    release = threading.Event()
    started = threading.Semaphore(0)
    col = Collector(4)
    runner = ThreadShadowRunner(ShadowConfig(max_in_flight=3, workers=1), stats)
    try:
        job = lambda: _blocking_job(release, started)  # noqa: E731
        assert [runner.submit(job, col) for _ in range(3)] == [True, True, True]
        assert started.acquire(timeout=WAIT)  # one runs, two are queued: all three in flight
        assert runner.in_flight == 3
        assert runner.submit(job, col) is False  # returned while every job is still blocked
        assert not release.is_set()
        assert col.outcomes == [ShadowOutcome("dropped")]
        assert stats.snapshot().dropped == 1
        release.set()
        assert col.done.wait(WAIT)
    finally:
        release.set()
        runner.close()
    t = stats.snapshot()
    assert (t.calls, t.matches, t.dropped, runner.in_flight) == (4, 3, 1, 0)
    assert all(o.latency_ms is not None for o in col.outcomes if o.kind == "match")


def test_thread_runner_raising_job_is_an_error() -> None:
    """A job that raises (or returns junk) is recorded as an error and never reaches the caller."""
    stats = ShadowStats()
    col = Collector(3)

    def upstream() -> ShadowOutcome:
        raise UpstreamError("down", route="v3", kind="connection")

    def bug() -> ShadowOutcome:
        raise ZeroDivisionError

    def junk() -> Any:
        return {"not": "an outcome"}

    with ThreadShadowRunner(ShadowConfig(), stats) as runner:
        assert runner.submit(upstream, col) and runner.submit(bug, col)
        assert runner.submit(junk, col)
        assert col.done.wait(WAIT)
    t = stats.snapshot()
    assert t.errors == 3 and dict(t.errors_by_kind) == {"connection": 1, "unexpected": 2}


def test_thread_runner_on_done_errors_swallowed() -> None:
    """A raising on_done callback does not break the runner or the totals."""
    stats = ShadowStats()
    seen = threading.Event()

    def bad_callback(outcome: ShadowOutcome) -> None:
        seen.set()
        raise RuntimeError("callback bug")

    with ThreadShadowRunner(ShadowConfig(), stats) as runner:
        assert runner.submit(lambda: ShadowOutcome("match"), bad_callback)
        assert seen.wait(WAIT)
    assert runner.in_flight == 0
    assert stats.snapshot().matches == 1


def test_thread_runner_sampling_with_injected_rng() -> None:
    """With sample_ratio 0.5 only rng values below 0.5 run; the rest count as sampled out."""
    stats = ShadowStats()
    col = Collector(4)
    cfg = ShadowConfig(sample_ratio=0.5)
    with ThreadShadowRunner(cfg, stats, rng=_rng([0.1, 0.7, 0.5, 0.49])) as runner:
        results = [runner.submit(lambda: ShadowOutcome("match"), col) for _ in range(4)]
        assert col.done.wait(WAIT)
    assert results == [True, False, False, True]
    t = stats.snapshot()
    assert (t.matches, t.sampled_out, t.calls) == (2, 2, 4)


def test_thread_runner_close_cancels_queued_and_refuses_new() -> None:
    """close(wait=False) drops queued jobs that never started; later submits are dropped too."""
    stats = ShadowStats()
    release = threading.Event()
    started = threading.Semaphore(0)
    col = Collector(4)
    runner = ThreadShadowRunner(ShadowConfig(max_in_flight=3, workers=1), stats)
    job = lambda: _blocking_job(release, started)  # noqa: E731
    for _ in range(3):
        assert runner.submit(job, col)
    assert started.acquire(timeout=WAIT)
    runner.close(wait=False)
    assert runner.submit(job, col) is False
    release.set()
    assert col.done.wait(WAIT)
    assert col.kinds() == ["dropped", "dropped", "dropped", "match"]
    assert runner.in_flight == 0


# --- async runner ------------------------------------------------------------------------


async def test_async_runner_drops_excess_and_completes() -> None:
    """Over max_in_flight the async runner drops and counts; accepted jobs finish after release."""
    stats = ShadowStats()
    release = asyncio.Event()
    col = Collector(3)

    async def job() -> ShadowOutcome:
        await release.wait()
        return ShadowOutcome("match")

    runner = AsyncShadowRunner(ShadowConfig(max_in_flight=2), stats)
    assert runner.submit(job, col) and runner.submit(job, col)
    assert runner.submit(job, col) is False
    assert runner.in_flight == 2 and col.kinds() == ["dropped"]
    release.set()
    await runner.aclose()
    assert col.kinds() == ["dropped", "match", "match"]
    t = stats.snapshot()
    assert (t.calls, t.matches, t.dropped, runner.in_flight) == (3, 2, 1, 0)
    assert runner.submit(job, col) is False  # closed


async def test_async_runner_timeout_and_errors() -> None:
    """A job over timeout_s is an error of kind timeout; raising jobs are errors too."""
    stats = ShadowStats()
    never = asyncio.Event()

    async def slow() -> ShadowOutcome:
        await never.wait()
        return ShadowOutcome("match")

    async def failing() -> ShadowOutcome:
        raise SignatureError("bad", route="v3")

    async def junk() -> Any:
        return 42

    runner = AsyncShadowRunner(ShadowConfig(timeout_s=0.01), stats)
    for j in (slow, failing, junk):
        assert runner.submit(j)
    await runner.aclose(wait=True)
    t = stats.snapshot()
    assert t.errors == 3
    assert dict(t.errors_by_kind) == {"timeout": 1, "signature": 1, "unexpected": 1}


async def test_async_runner_aclose_without_wait_cancels() -> None:
    """aclose(wait=False) cancels running jobs and counts them as dropped."""
    stats = ShadowStats()
    never = asyncio.Event()
    col = Collector(2)
    started = asyncio.Event()

    async def job() -> ShadowOutcome:
        started.set()
        await never.wait()
        return ShadowOutcome("match")

    runner = AsyncShadowRunner(ShadowConfig(), stats)
    assert runner.submit(job, col) and runner.submit(job, col)
    await started.wait()  # one has started, the other may not have
    await runner.aclose(wait=False)
    assert col.kinds() == ["dropped", "dropped"]
    assert runner.in_flight == 0


async def test_async_runner_sampling() -> None:
    """The async runner samples with the injected rng before checking capacity."""
    stats = ShadowStats()

    async def job() -> ShadowOutcome:
        return ShadowOutcome("match")

    cfg = dataclasses.replace(ShadowConfig(), sample_ratio=0.25)
    runner = AsyncShadowRunner(cfg, stats, rng=_rng([0.2, 0.25, 0.9]))
    assert [runner.submit(job) for _ in range(3)] == [True, False, False]
    await runner.aclose()
    t = stats.snapshot()
    assert (t.matches, t.sampled_out) == (1, 2)


def test_async_runner_without_loop_drops() -> None:
    """Submitting outside a running loop drops the job instead of raising into the caller."""
    stats = ShadowStats()

    async def job() -> ShadowOutcome:
        return ShadowOutcome("match")

    assert AsyncShadowRunner(ShadowConfig(), stats).submit(job) is False
    assert stats.snapshot().dropped == 1
