"""Retry and circuit-breaker policies: pure decisions, clock and randomness injected.

The retry loop itself lives in the flow (``shim._flow``) so that the sync and async drivers
share it: the flow asks these predicates whether to try again and how long to sleep, and
yields a :class:`~shim._flow.Sleep` for the driver to carry out. (A library such as tenacity
wraps a callable per driver; here the loop must stay inside one sans-IO generator, so the
policy is a few pure functions in the style of stripe's ``_should_retry``.)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from shim._errors import MappingError, Route, ShimError, SignatureError, UpstreamError
from shim._routing import Decision
from shim._values import BreakerConfig, RetryConfig, RoutingConfig

__all__ = [
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "FallbackCause",
    "backoff_delay",
    "credentials_refused",
    "fallback_cause",
    "fallback_target",
    "should_retry",
]

BreakerState = Literal["closed", "open", "half_open"]

#: Why a call was served by the other route.
FallbackCause = Literal["transient", "mapping", "credentials_refused"]

#: Decisions that demanded legacy: they never fall back to v3.
_LEGACY_DEMANDED: Final = frozenset(
    {"kill_switch", "force_legacy_mch_id", "force_legacy_stock_id", "no_v3_credentials"}
)


def fallback_target(routing: RoutingConfig, decision: Decision) -> Route | None:
    """The route a call may fall back to if its serving route fails, or None: the one place
    that decides whether a fallback is possible, before any I/O (and so whether the serving
    route must leave part of the budget for it).

    v3 -> legacy when ``fallback_to_legacy``. legacy -> v3 when ``fallback_to_v3``, the
    merchant has v3 credentials (``decision.v3_available``, set by routing) and routing did
    not demand legacy (kill switch, force-legacy lists, no v3 credentials).
    """
    if decision.serve == "v3":
        return "legacy" if routing.fallback_to_legacy else None
    if decision.reason in _LEGACY_DEMANDED or not decision.v3_available:
        return None
    return "v3" if routing.fallback_to_v3 else None


def credentials_refused(error: BaseException) -> bool:
    """True when v3 refused the shim's own request credentials (HTTP 401 or ``SIGN_ERROR``).

    That is WeChat Pay refusing *our request* (a wrong private key or serial, a skewed
    clock), not a forged answer: a bad signature on an answer is a
    :class:`~shim._errors.SignatureError` and never counts here.
    """
    return (
        isinstance(error, UpstreamError)
        and not isinstance(error, SignatureError)
        and error.route == "v3"
        and error.kind == "http_status"
        and (error.status == 401 or error.code == "SIGN_ERROR")
    )


def fallback_cause(error: BaseException, target: Route | None) -> FallbackCause | None:
    """Whether ``error`` on the serving route lets the call fall back to ``target``, and why.

    ``transient``: a transient upstream failure (timeouts, connection failures, open
    circuits, budget, 429 and 5xx). ``mapping``: a verified v3 answer the mapping could not
    express. ``credentials_refused``: v3 refused the shim's own credentials (only towards
    legacy). Never for a signature failure, a protocol error, an input or config error, or
    anything else; never when :func:`fallback_target` said no (``target`` is None).
    """
    if target is None or isinstance(error, SignatureError):
        return None
    if target == "legacy" and credentials_refused(error):
        return "credentials_refused"
    if isinstance(error, UpstreamError):
        return "transient" if error.transient else None
    if isinstance(error, MappingError):
        return "mapping"
    return None


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
        if self._opened_at is None:  # closed (read as the lock would: one attribute)
            return True
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
        if self._opened_at is None and self._failures == 0:
            # Closed with no failure counted: nothing to reset. (A failure counts before it
            # opens and a success resets both, so this is what taking the lock would find.)
            return
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
