"""Retry and circuit-breaker policies: pure decisions, clock and randomness injected.

The retry loop itself lives in the flow (``shim.flow``) so that the sync and async drivers
share it: the flow asks these predicates whether to try again and how long to sleep, and
yields a :class:`~shim.flow.Sleep` for the driver to carry out. (A library such as tenacity
wraps a callable per driver; here the loop must stay inside one sans-IO generator, so the
policy is a few pure functions in the style of stripe's ``_should_retry``.)
"""

from __future__ import annotations

import threading
from typing import Literal

from shim.config import BreakerConfig, RetryConfig
from shim.errors import ShimError, UpstreamError

__all__ = ["CircuitBreaker", "backoff_delay", "should_retry"]


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


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive transient failures; after
    ``reset_after_s`` one probe is let through (half-open): success closes, failure re-opens.

    Thread-safe; the time is passed in by the caller.
    """

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """The current state (``half_open`` while a probe is out)."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing else "open"

    def allow(self, now: float) -> bool:
        """Whether a request may go out now."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or now - self._opened_at < self.cfg.reset_after_s:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        """An answer arrived (any verified answer, business errors included)."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def abandon_probe(self) -> None:
        """The request let through never reached the upstream (local congestion, closing):
        no success, no failure; if it was the half-open probe, the next call may probe."""
        with self._lock:
            self._probing = False

    def record_failure(self, now: float) -> None:
        """A transient failure happened."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.cfg.failure_threshold:
                self._opened_at = now
                self._probing = False
