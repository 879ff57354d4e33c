"""Retry and circuit-breaker policies (pure, clock injected)."""

from __future__ import annotations

import pytest

from shim import ConfigError, InputError, MappingError, SignatureError, UpstreamError

# private: the pure retry and fallback policy, driven directly
from shim._policy import CircuitBreaker, backoff_delay, should_retry

# private: config value types, built directly instead of from a file
from shim._values import BreakerConfig, RetryConfig

CFG = RetryConfig(attempts=3, backoff_initial_s=0.1, backoff_max_s=0.3)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (UpstreamError("t", route="v3", kind="timeout"), True),
        (UpstreamError("c", route="v3", kind="connection"), True),
        (UpstreamError("5", route="v3", kind="http_status", status=503), True),
        (UpstreamError("429", route="v3", kind="http_status", status=429), True),
        (UpstreamError("404", route="v3", kind="http_status", status=404), False),
        (UpstreamError("p", route="v3", kind="protocol"), False),
        (UpstreamError("o", route="v3", kind="circuit_open"), False),
        (UpstreamError("b", route="v3", kind="budget"), False),
        (SignatureError("s", route="v3"), False),
        (MappingError("m"), False),
        (InputError("i"), False),
        (ConfigError("c"), False),
    ],
)
def test_should_retry_only_transient_failures(error: Exception, retry: bool) -> None:
    """Only connection errors, timeouts, 429 and 5xx are retried."""
    assert should_retry(error, attempt=1, attempts=CFG.attempts) is retry  # type: ignore[arg-type]


def test_should_retry_stops_at_the_attempt_limit() -> None:
    """The last attempt is never retried."""
    err = UpstreamError("t", route="legacy", kind="timeout")
    assert should_retry(err, attempt=2, attempts=CFG.attempts)
    assert not should_retry(err, attempt=3, attempts=CFG.attempts)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    """Full jitter scales a doubling ceiling that stops at backoff_max_s."""
    assert backoff_delay(1, CFG, 1.0) == pytest.approx(0.1)
    assert backoff_delay(2, CFG, 1.0) == pytest.approx(0.2)
    assert backoff_delay(5, CFG, 1.0) == pytest.approx(0.3)
    assert backoff_delay(2, CFG, 0.5) == pytest.approx(0.1)
    assert backoff_delay(2, CFG, 0.0) == 0.0


def test_breaker_opens_probes_and_closes() -> None:
    """Closed → open after the threshold; one probe after reset_after_s; success closes it."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_after_s=10))
    assert b.allow(0) and b.state == "closed"
    b.record_failure(0)
    assert b.allow(1)
    b.record_failure(1)
    assert b.state == "open" and not b.allow(5)
    assert b.allow(11) and b.state == "half_open"
    assert not b.allow(11.5)  # only one probe at a time
    b.record_success()
    assert b.state == "closed" and b.allow(12)


def test_breaker_reopens_when_the_probe_fails() -> None:
    """A failed probe re-opens the breaker for another reset period."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=1, reset_after_s=10))
    b.record_failure(0)
    assert b.allow(10)
    b.record_failure(10)
    assert b.state == "open" and not b.allow(15) and b.allow(20)


def test_success_resets_the_failure_count() -> None:
    """Failures must be consecutive to open the breaker."""
    b = CircuitBreaker(BreakerConfig(failure_threshold=2, reset_after_s=10))
    b.record_failure(0)
    b.record_success()
    b.record_failure(1)
    assert b.state == "closed"
