"""Shadow wiring: what a shadowed call hands to its twin's runner (beside the runners).

A shadowed call serves its caller on one route; then the other route runs in the background and
the two answers are compared. This module holds the decisions both twins share:

* :class:`Shadows`: one shim's runner and totals. The runner is built on first use from the
  config snapshot in force and follows every reload (:meth:`Shadows.reconfigure`); a forked
  child starts with none (its parent's threads and tasks did not come along).
* :class:`ShadowJob`: the sans-IO job of one comparison. :meth:`ShadowJob.begin` gives the
  flow to run (one attempt on the shadow route within ``[shadow] timeout_s`` counted from
  the submission, so time queued for a worker counts) or, for a job that waited out its whole
  budget in the queue, its ``dropped`` outcome; :meth:`ShadowJob.end` compares. Each twin's
  job only runs the flow with its own driver in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

from shim._errors import ClosedError, Route, ShimError
from shim._flow import CallContext, Flow, RouteResult, route_flow
from shim._shadow.outcome import ShadowOutcome, compare_answers
from shim._shadow.totals import ShadowStats, ShadowTotals
from shim._values import ShadowConfig

__all__ = ["ShadowJob", "Shadows"]


class _Runner(Protocol):
    @property
    def in_flight(self) -> int: ...

    def reconfigure(self, cfg: ShadowConfig) -> None: ...


R = TypeVar("R", bound=_Runner)


class Shadows(Generic[R]):
    """One shim's shadow runner (built on first use, following reloads) and its totals.

    Args:
        build: makes the twin's runner from shadow settings and the totals.
        settings: the shadow settings in force (read when the runner is built).
    """

    def __init__(
        self, build: Callable[[ShadowConfig, ShadowStats], R], settings: Callable[[], ShadowConfig]
    ) -> None:
        self._build = build
        self._settings = settings
        self.stats = ShadowStats()
        self._runner: R | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> R | None:
        """The runner, if one was built."""
        return self._runner

    def runner(self) -> R:
        """The runner, built now from the settings in force if there is none yet."""
        runner = self._runner
        if runner is None:
            with self._lock:
                runner = self._runner
                if runner is None:
                    runner = self._runner = self._build(self._settings(), self.stats)
        return runner

    def in_flight(self) -> int:
        """Comparisons running or queued."""
        runner = self._runner
        return 0 if runner is None else runner.in_flight

    def totals(self) -> ShadowTotals:
        return self.stats.snapshot()

    def reconfigure(self, cfg: ShadowConfig) -> None:
        """Follow reloaded ``[shadow]`` settings (a runner not built yet reads them when it is)."""
        runner = self._runner
        if runner is not None:
            runner.reconfigure(cfg)

    def after_fork(self) -> None:
        """In a forked child: own totals, no runner (its workers stayed in the parent)."""
        self.stats = ShadowStats()
        self._runner = None
        self._lock = threading.Lock()


class ShadowJob:
    """The sans-IO part of one background comparison (see the module docstring).

    Args:
        ctx: the served call's context.
        route: the shadow route.
        served: the answer the caller got.
        submitted: when the job was handed to the runner (the call's clock).
        queued: whether the runner may queue the job (the thread pool's can): a job that
            starts after its whole budget is spent is then dropped without a request.
    """

    __slots__ = ("_ctx", "_queued", "_route", "_served", "_started", "_submitted")

    def __init__(
        self,
        ctx: CallContext,
        route: Route,
        served: dict[str, str],
        submitted: float,
        *,
        queued: bool,
    ) -> None:
        self._ctx = ctx
        self._route = route
        self._served = served
        self._submitted = submitted
        self._queued = queued
        self._started = submitted

    def begin(self) -> Flow[RouteResult] | ShadowOutcome:
        """The flow to run now, or the outcome of a job that waited out its budget."""
        ctx = self._ctx
        self._started = started = ctx.clock()
        deadline = self._submitted + ctx.config.shadow.timeout_s
        if self._queued and started >= deadline:
            return ShadowOutcome("dropped")  # waited out its whole budget in the queue
        return route_flow(replace(ctx, deadline=deadline, attempts=1), self._route)

    def end(self, other: RouteResult | ShimError) -> ShadowOutcome:
        """The comparison of the served answer with the shadow route's (or its failure)."""
        latency_ms = (self._ctx.clock() - self._started) * 1000.0
        if isinstance(other, ClosedError):
            return ShadowOutcome("dropped", latency_ms=latency_ms)  # cut by close()
        if isinstance(other, ShimError):
            return ShadowOutcome.from_error(other, latency_ms=latency_ms)
        return compare_answers(
            self._served,
            other.answer,
            ignore=self._ctx.config.shadow.ignore_fields,
            latency_ms=latency_ms,
        )
