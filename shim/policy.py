"""Retry and circuit-breaker policies: pure decisions, clock and randomness injected.

The retry loop itself lives in the flow (``shim.flow``) so that the sync and async drivers
share it: the flow asks these predicates whether to try again and how long to sleep, and
yields a :class:`~shim.flow.Sleep` for the driver to carry out. (A library such as tenacity
wraps a callable per driver; here the loop must stay inside one sans-IO generator, so the
policy is a few pure functions in the style of stripe's ``_should_retry``.)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shim.config import BreakerConfig, RetryConfig
from shim.errors import ShimError, UpstreamError

__all__ = [
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "backoff_delay",
    "should_retry",
]

BreakerState = Literal["closed", "open", "half_open"]


def should_retry(error: ShimError, *, attempt: int, attempts: int) -> bool:
    """Whether a failed ``attempt`` (1-based) of ``attempts`` of this idempotent query should
    be tried again.

    Only transient upstream failures are retried (connection errors, timeouts, 429, 5xx);
    never 4xx answers, signature failures, an open circuit or input/config/mapping errors.
    """
    if attempt >= attempts or not isinstance(error, UpstreamError):
        return False
    return error.transient and error.kind != "circuit_open" and error.kind != "budget"


def backoff_delay(attempt: int, cfg: RetryConfig, rand: float) -> float:
    """Exponential backoff with full jitter: ``rand * min(max, initial * 2**(attempt-1))``."""
    ceiling = min(cfg.backoff_max_s, cfg.backoff_initial_s * float(2 ** (attempt - 1)))
    return max(0.0, min(1.0, rand)) * ceiling


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change of a :class:`CircuitBreaker`, as its listener receives it.

    Attributes:
        previous: the state before.
        state: the state now.
        cause: why, from a fixed vocabulary: ``consecutive_failures`` (closed -> open),
            ``reset_elapsed`` (open -> half_open: one probe let through), ``probe_succeeded``
            (half_open -> closed), ``probe_failed`` and ``probe_abandoned`` (half_open ->
            open), ``answered`` (open -> closed: a call that started before the breaker
            opened got an answer).
        failures: consecutive transient failures counted so far.
        error_kind: the kind of the failure that caused an opening (``timeout``,
            ``connection``, ``http_status`` …), when known.
        reset_after_s: how long the breaker stays open before the next probe.
    """

    previous: BreakerState
    state: BreakerState
    cause: str
    failures: int
    error_kind: str | None
    reset_after_s: float


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive transient failures; after
    ``reset_after_s`` one probe is let through (half-open): success closes, failure re-opens.

    Thread-safe; the time is passed in by the caller. ``listener`` is called (outside the
    lock, on the thread that caused it) with a :class:`BreakerTransition` on every state
    change; its exceptions are swallowed. :meth:`reconfigure` applies new settings (a config
    reload) and keeps the state.
    """

    def __init__(
        self,
        cfg: BreakerConfig,
        *,
        listener: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._listener = listener
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state (``half_open`` while a probe is out)."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing else "open"

    def reconfigure(self, cfg: BreakerConfig) -> None:
        """Use new settings from now on (threshold and reset time); the state is kept."""
        with self._lock:
            self.cfg = cfg

    def _notify(
        self,
        previous: BreakerState,
        state: BreakerState,
        cause: str,
        failures: int,
        error_kind: str | None,
    ) -> None:
        listener = self._listener
        if listener is None:
            return
        change = BreakerTransition(
            previous, state, cause, failures, error_kind, self.cfg.reset_after_s
        )
        with contextlib.suppress(Exception):  # an observer must never break a call
            listener(change)

    def allow(self, now: float) -> bool:
        """Whether a request may go out now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or now - self._opened_at < self.cfg.reset_after_s:
                return False
            self._probing = True
            failures = self._failures
        self._notify("open", "half_open", "reset_elapsed", failures, None)
        return True

    def record_success(self) -> None:
        """An answer arrived (any verified answer, business errors included)."""
        with self._lock:
            previous = self.state
            self._failures = 0
            self._opened_at = None
            self._probing = False
        if previous != "closed":
            cause = "probe_succeeded" if previous == "half_open" else "answered"
            self._notify(previous, "closed", cause, 0, None)

    def abandon_probe(self) -> None:
        """The request let through never reached the upstream (local congestion, closing):
        no success, no failure; if it was the half-open probe, the next call may probe."""
        with self._lock:
            previous = self.state
            self._probing = False
            failures = self._failures
        if previous == "half_open":
            self._notify(previous, "open", "probe_not_sent", failures, None)

    def record_failure(self, now: float, kind: str | None = None) -> None:
        """A transient failure happened (``kind``: its error kind, or ``abandoned`` for a
        call given up mid-request)."""
        with self._lock:
            previous = self.state
            self._failures += 1
            failures = self._failures
            if self._probing or self._failures >= self.cfg.failure_threshold:
                self._opened_at = now
                self._probing = False
            state = self.state
        if previous == "half_open":
            cause = "probe_abandoned" if kind == "abandoned" else "probe_failed"
            self._notify(previous, state, cause, failures, kind)
        elif previous == "closed" and state == "open":
            self._notify(previous, state, "consecutive_failures", failures, kind)
