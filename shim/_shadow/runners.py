"""The bounded background runners of shadow jobs (threads for the sync twin, tasks for async).

:class:`ThreadShadowRunner` (sync twin) and :class:`AsyncShadowRunner` (async twin) sit beside
the drivers: they only schedule and bound work. ``submit`` never blocks and never raises
because of a job: sampling is decided first, then at most ``max_in_flight`` jobs may be running
or queued; anything beyond is dropped and counted, never queued without bound. A job that
raises is recorded as an error. The served answer is never delayed or changed.

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
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from shim._shadow.outcome import DROPPED, SAMPLED_OUT, ShadowOutcome
from shim._shadow.totals import ShadowStats

if TYPE_CHECKING:
    from shim._values import ShadowConfig

__all__ = ["AsyncShadowRunner", "ThreadShadowRunner"]


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
        self._finish(DROPPED, on_done)
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
            self._finish(SAMPLED_OUT, on_done)
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
            context.run(self._finish, DROPPED, on_done)

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
            self._finish(SAMPLED_OUT, on_done)
            return False
        if self._closed or len(self._tasks) >= self._cfg.max_in_flight:
            self._finish(DROPPED, on_done)
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finish(DROPPED, on_done)
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
            self._finish(DROPPED, on_done)
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
