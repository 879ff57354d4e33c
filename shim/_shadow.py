"""Shadow comparison: run the other route off the latency path and diff the two v2 answers.

Pieces:

- :func:`normalise` and :func:`diff_answers`: a pure field-by-field diff of two v2 dicts.
- :class:`ShadowOutcome` and :class:`ShadowStats`: one comparison's result and thread-safe
  running totals (:meth:`ShadowStats.snapshot` gives an immutable :class:`ShadowTotals`).
- :class:`ThreadShadowRunner` (sync twin) and :class:`AsyncShadowRunner` (async twin):
  bounded background workers. ``submit`` never blocks and never raises because of a job:
  sampling is decided first, then at most ``max_in_flight`` jobs may be running or queued;
  anything beyond is dropped and counted, never queued without bound. A job that raises is
  recorded as an error. The served answer is never delayed or changed.

Both runners take new settings with ``reconfigure`` (a config reload): the sample ratio, the
in-flight cap and the timeout apply to the next job; a changed ``workers`` count gets a new
thread pool for new jobs while the old pool finishes what it holds. The sync runner runs each
job and its callback in a copy of the submitting thread's context, so structlog context
variables (``request_id`` …) reach the shadowed call's event.

Timeouts: the async runner wraps each job in ``asyncio.wait_for(job(), cfg.timeout_s)``.
A thread cannot be interrupted, so the sync runner relies on the job itself to respect the
shadow time budget: the facade gives each job ``timeout_s`` from its submission as its
deadline, which the shim's transport enforces on the socket, so a job ends (and frees its
``max_in_flight`` slot) by then even against a peer that drips bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal

from shim._errors import (
    ConfigError,
    InputError,
    MappingError,
    ShimError,
    SignatureError,
    UpstreamError,
)
from shim._redaction import REDACTED, is_secret_name
from shim._values import ShadowConfig

__all__ = [
    "REDACTED",
    "AsyncShadowRunner",
    "FieldDiff",
    "OutcomeKind",
    "ShadowOutcome",
    "ShadowStats",
    "ShadowTotals",
    "ThreadShadowRunner",
    "compare_answers",
    "diff_answers",
    "error_kind_of",
    "is_secret_field",
    "normalise",
]

OutcomeKind = Literal["match", "mismatch", "error", "dropped", "sampled_out"]


def is_secret_field(name: str) -> bool:
    """True for fields whose values must never be shown: ``sign`` and key/secret-like names
    (one rule for the whole shim: :func:`shim._redaction.is_secret_name`)."""
    return is_secret_name(name)


def normalise(value: str) -> str:
    """Canonical form of one v2 value for comparison.

    Surrounding whitespace is stripped; a value made only of ASCII digits is read as a
    non-negative integer, so ``"05"`` and ``"5"`` compare equal (``"000"`` -> ``"0"``).
    Anything else (signs, decimals, times, text) is compared as the stripped string.

    Args:
        value: the raw value.

    Returns:
        The normalised value.
    """
    s = str(value).strip()
    if s.isascii() and s.isdigit():
        return str(int(s))
    return s


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field whose values differ. ``None`` means the field is missing on that side.

    Values of secret-bearing fields are :data:`REDACTED`.
    """

    field: str
    served: str | None
    other: str | None

    def as_dict(self) -> dict[str, str | None]:
        """The diff as a JSON-ready dict."""
        return {"field": self.field, "served": self.served, "other": self.other}


def _shown(name: str, value: object | None) -> str | None:
    if value is None:
        return None
    return REDACTED if is_secret_field(name) else str(value)


def diff_answers(
    served: Mapping[str, str], other: Mapping[str, str], *, ignore: frozenset[str]
) -> tuple[FieldDiff, ...]:
    """Diff two v2 dicts field by field.

    Args:
        served: the answer the caller got.
        other: the other route's answer.
        ignore: fields left out (by default ``nonce_str`` and ``sign``, which always differ).

    Returns:
        The differing fields sorted by name, after :func:`normalise`. A key present on one
        side only is a diff with ``None`` on the other side. Shown values are the raw ones
        (secret fields redacted).
    """
    diffs: list[FieldDiff] = []
    for name in sorted((served.keys() | other.keys()) - ignore):
        a = served.get(name)
        b = other.get(name)
        if a is None or b is None:
            if a is None and b is None:
                continue
        elif normalise(a) == normalise(b):
            continue
        diffs.append(FieldDiff(name, _shown(name, a), _shown(name, b)))
    return tuple(diffs)


def error_kind_of(exc: BaseException) -> str:
    """A short, secret-free label for a shadow failure, used in the stats.

    ``signature``, the :class:`UpstreamError` kind (``timeout``, ``connection``,
    ``http_status``, ...), ``mapping``, ``input``, ``config``, ``shim``, ``timeout`` for a
    built-in :class:`TimeoutError`, else ``unexpected``.
    """
    if isinstance(exc, SignatureError):
        return "signature"
    if isinstance(exc, UpstreamError):
        return exc.kind
    if isinstance(exc, MappingError):
        return "mapping"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, ShimError):
        return "shim"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "unexpected"


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """The result of one shadow comparison (or of not running it).

    Attributes:
        kind: ``match``, ``mismatch``, ``error``, ``dropped`` (over ``max_in_flight``, or
            not finished because the runner was closed) or ``sampled_out``.
        diffs: the differing fields, for ``mismatch``.
        error_kind: see :func:`error_kind_of`, for ``error``.
        latency_ms: how long the shadow job ran, when it ran.
    """

    kind: OutcomeKind
    diffs: tuple[FieldDiff, ...] = ()
    error_kind: str | None = None
    latency_ms: float | None = None

    @classmethod
    def from_diffs(
        cls, diffs: tuple[FieldDiff, ...], *, latency_ms: float | None = None
    ) -> ShadowOutcome:
        """``match`` when ``diffs`` is empty, else ``mismatch``."""
        return cls("mismatch" if diffs else "match", diffs, None, latency_ms)

    @classmethod
    def from_error(cls, exc: BaseException, *, latency_ms: float | None = None) -> ShadowOutcome:
        """An ``error`` outcome labelled with :func:`error_kind_of`."""
        return cls("error", (), error_kind_of(exc), latency_ms)


def compare_answers(
    served: Mapping[str, str],
    other: Mapping[str, str],
    *,
    ignore: frozenset[str],
    latency_ms: float | None = None,
) -> ShadowOutcome:
    """Diff two answers into a ``match``/``mismatch`` outcome (a shadow job's last step)."""
    return ShadowOutcome.from_diffs(
        diff_answers(served, other, ignore=ignore), latency_ms=latency_ms
    )


_DROPPED: Final = ShadowOutcome("dropped")
_SAMPLED_OUT: Final = ShadowOutcome("sampled_out")


@dataclass(frozen=True, slots=True)
class ShadowTotals:
    """An immutable snapshot of the shadow totals.

    ``calls == matches + mismatches + errors + dropped + sampled_out`` and
    ``compared == matches + mismatches``.
    """

    calls: int = 0
    compared: int = 0
    matches: int = 0
    mismatches: int = 0
    mismatches_by_field: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    dropped: int = 0
    sampled_out: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The totals as a JSON-ready dict (per-field and per-kind counts sorted by name)."""
        return {
            "calls": self.calls,
            "compared": self.compared,
            "matches": self.matches,
            "mismatches": self.mismatches,
            "mismatches_by_field": dict(sorted(self.mismatches_by_field.items())),
            "errors": self.errors,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "dropped": self.dropped,
            "sampled_out": self.sampled_out,
        }


class ShadowStats:
    """Thread-safe running totals of shadow outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._by_field: Counter[str] = Counter()
        self._by_kind: Counter[str] = Counter()

    def record(self, outcome: ShadowOutcome) -> None:
        """Add one outcome to the totals."""
        with self._lock:
            self._counts[outcome.kind] += 1
            if outcome.kind == "mismatch":
                self._by_field.update(d.field for d in outcome.diffs)
            elif outcome.kind == "error":
                self._by_kind[outcome.error_kind or "unexpected"] += 1

    def snapshot(self) -> ShadowTotals:
        """A consistent, immutable copy of the totals."""
        with self._lock:
            c = self._counts
            return ShadowTotals(
                calls=sum(c.values()),
                compared=c["match"] + c["mismatch"],
                matches=c["match"],
                mismatches=c["mismatch"],
                mismatches_by_field=MappingProxyType(dict(self._by_field)),
                errors=c["error"],
                errors_by_kind=MappingProxyType(dict(self._by_kind)),
                dropped=c["dropped"],
                sampled_out=c["sampled_out"],
            )


def _notify(on_done: Callable[[ShadowOutcome], None] | None, outcome: ShadowOutcome) -> None:
    if on_done is None:
        return
    with contextlib.suppress(Exception):  # a broken callback must never reach the caller
        on_done(outcome)


def _sampled_out(cfg: ShadowConfig, rng: Callable[[], float]) -> bool:
    return cfg.sample_ratio < 1.0 and rng() >= cfg.sample_ratio


class ThreadShadowRunner:
    """Runs sync shadow jobs on a small thread pool, bounded by ``max_in_flight``.

    Args:
        cfg: the shadow config (``workers``, ``max_in_flight``, ``sample_ratio``).
        stats: where outcomes are recorded.
        rng: returns floats in [0, 1) for sampling (inject a fixed one in tests).
    """

    def __init__(
        self,
        cfg: ShadowConfig,
        stats: ShadowStats,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._cfg = cfg
        self._stats = stats
        self._rng = rng
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.workers, thread_name_prefix="coupon-shim-shadow"
        )

    @property
    def in_flight(self) -> int:
        """Jobs running or queued right now."""
        with self._lock:
            return self._in_flight

    def reconfigure(self, cfg: ShadowConfig) -> None:
        """Apply new shadow settings to the next jobs (see the module docstring)."""
        old_pool = None
        with self._lock:
            if cfg.workers != self._cfg.workers and not self._closed:
                old_pool = self._pool
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=cfg.workers, thread_name_prefix="coupon-shim-shadow"
                )
            self._cfg = cfg
        if old_pool is not None:
            old_pool.shutdown(wait=False)  # its queued and running jobs still finish

    def _finish(
        self, outcome: ShadowOutcome, on_done: Callable[[ShadowOutcome], None] | None
    ) -> None:
        self._stats.record(outcome)
        _notify(on_done, outcome)

    def _drop(self, on_done: Callable[[ShadowOutcome], None] | None) -> bool:
        self._finish(_DROPPED, on_done)
        return False

    def submit(
        self,
        job: Callable[[], ShadowOutcome],
        on_done: Callable[[ShadowOutcome], None] | None = None,
    ) -> bool:
        """Schedule ``job`` in the background, unless sampled out or over capacity.

        Never blocks and never raises because of the job. ``on_done`` gets the outcome
        (also the ``dropped``/``sampled_out`` ones, synchronously in that case).

        Args:
            job: runs the other route and compares; returns the outcome. It must respect the
                shadow time budget itself.
            on_done: called with the outcome (e.g. to log it); its errors are swallowed.

        Returns:
            True when the job was scheduled.
        """
        if _sampled_out(self._cfg, self._rng):
            self._finish(_SAMPLED_OUT, on_done)
            return False
        context = contextvars.copy_context()
        with self._lock:
            if self._closed or self._in_flight >= self._cfg.max_in_flight:
                refused = True
            else:
                refused = False
                self._in_flight += 1
                try:
                    fut = self._pool.submit(context.run, self._run, job, on_done)
                except RuntimeError:  # pragma: no cover - pool shut down under us
                    self._in_flight -= 1
                    refused = True
                else:
                    self._futures.add(fut)
        if refused:
            return self._drop(on_done)
        fut.add_done_callback(lambda f: self._done(f, on_done, context))
        return True

    def _run(
        self, job: Callable[[], ShadowOutcome], on_done: Callable[[ShadowOutcome], None] | None
    ) -> None:
        start = time.perf_counter()
        # The slot is released only after the outcome is recorded and reported, so that
        # ``in_flight == 0`` means every submitted job's totals and event are in.
        try:
            try:
                outcome = job()
                if not isinstance(outcome, ShadowOutcome):
                    raise TypeError("a shadow job must return a ShadowOutcome")
            except Exception as exc:
                outcome = ShadowOutcome.from_error(exc)
            if outcome.latency_ms is None and outcome.kind in ("match", "mismatch", "error"):
                outcome = replace(outcome, latency_ms=(time.perf_counter() - start) * 1000.0)
            self._finish(outcome, on_done)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _done(
        self,
        fut: concurrent.futures.Future[None],
        on_done: Callable[[ShadowOutcome], None] | None,
        context: contextvars.Context,
    ) -> None:
        with self._lock:
            self._futures.discard(fut)
        if fut.cancelled():  # never started: close() cancelled it
            self._release()
            context.run(self._finish, _DROPPED, on_done)

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop accepting jobs; finish the queued and running ones (``wait``) or drop them.

        Args:
            wait: let queued and running jobs finish, up to ``timeout``; what is still
                queued then is cancelled and counted as dropped (threads cannot be
                interrupted: a running job ends by its own time budget).
            timeout: with ``wait``, give up waiting after this many seconds.
        """
        with self._lock:
            self._closed = True
            pending = list(self._futures)
        if wait:
            concurrent.futures.wait(pending, timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ThreadShadowRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncShadowRunner:
    """Runs ``async`` shadow jobs as tasks on the running loop, bounded by ``max_in_flight``.

    Each job runs under ``asyncio.wait_for(job(), cfg.timeout_s)``; a timeout is an error of
    kind ``timeout``. Strong references to the tasks are kept until they finish.

    Args:
        cfg: the shadow config.
        stats: where outcomes are recorded.
        rng: returns floats in [0, 1) for sampling.
    """

    def __init__(
        self,
        cfg: ShadowConfig,
        stats: ShadowStats,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._cfg = cfg
        self._stats = stats
        self._rng = rng
        self._tasks: set[asyncio.Task[ShadowOutcome]] = set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Jobs running right now."""
        return len(self._tasks)

    def reconfigure(self, cfg: ShadowConfig) -> None:
        """Apply new shadow settings to the next jobs (sample ratio, cap, timeout)."""
        self._cfg = cfg

    def _finish(
        self, outcome: ShadowOutcome, on_done: Callable[[ShadowOutcome], None] | None
    ) -> None:
        self._stats.record(outcome)
        _notify(on_done, outcome)

    def submit(
        self,
        job: Callable[[], Awaitable[ShadowOutcome]],
        on_done: Callable[[ShadowOutcome], None] | None = None,
    ) -> bool:
        """Start ``job`` as a background task, unless sampled out or over capacity.

        Must be called from a coroutine (it uses the running loop); without one, or after
        :meth:`aclose`, the job is dropped and counted. Never raises because of the job.

        Returns:
            True when a task was created.
        """
        if _sampled_out(self._cfg, self._rng):
            self._finish(_SAMPLED_OUT, on_done)
            return False
        if self._closed or len(self._tasks) >= self._cfg.max_in_flight:
            self._finish(_DROPPED, on_done)
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finish(_DROPPED, on_done)
            return False
        task = loop.create_task(self._run(job), name="coupon-shim-shadow")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, on_done))
        return True

    async def _run(self, job: Callable[[], Awaitable[ShadowOutcome]]) -> ShadowOutcome:
        start = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(job(), self._cfg.timeout_s)
            if not isinstance(outcome, ShadowOutcome):
                raise TypeError("a shadow job must return a ShadowOutcome")
        except asyncio.TimeoutError:
            outcome = ShadowOutcome("error", (), "timeout")
        except Exception as exc:
            outcome = ShadowOutcome.from_error(exc)
        if outcome.latency_ms is None:
            outcome = replace(outcome, latency_ms=(time.perf_counter() - start) * 1000.0)
        return outcome

    def _done(
        self, task: asyncio.Task[ShadowOutcome], on_done: Callable[[ShadowOutcome], None] | None
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # aclose(wait=False): not compared, like a dropped job
            self._finish(_DROPPED, on_done)
        else:
            self._finish(task.result(), on_done)

    async def aclose(self, wait: bool = True) -> None:
        """Stop accepting jobs; await the running ones (``wait``) or cancel them.

        Awaiting is bounded: every job has ``cfg.timeout_s``. Cancelled jobs are counted as
        ``dropped``.
        """
        self._closed = True
        tasks = list(self._tasks)
        if not wait:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
