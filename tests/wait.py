"""Bounded waits for a condition: the one way tests poll.

A test that needs something to happen in another thread or process (a server listening, a
reload seen, a request in flight) waits with :func:`wait_until` / :func:`await_until`: the
condition is checked every ``interval`` until it holds, and after ``timeout`` the test fails
with ``message``. Such a wait asserts a condition, not a duration — the generous timeout
only turns a hang into a clear failure — so it does not make a test wall-clock-bound
(``tests/wallclock.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Deadline", "await_until", "wait_until"]


def wait_until(
    condition: Callable[[], object], message: str, *, timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Return once ``condition()`` is true; fail with ``message`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= end:
            raise AssertionError(f"{message} (waited {timeout} s)")
        time.sleep(interval)


async def await_until(
    condition: Callable[[], object], message: str, *, timeout: float = 10.0, interval: float = 0.01
) -> None:
    """:func:`wait_until` for a coroutine: sleeps on the event loop between checks."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= end:
            raise AssertionError(f"{message} (waited {timeout} s)")
        await asyncio.sleep(interval)


class Deadline:
    """A bound for a wait that is not a single condition (reading lines until one matches):
    ``left(message)`` is the time remaining, and fails with ``message`` once there is none."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._end = time.monotonic() + timeout

    def left(self, message: str) -> float:
        """Seconds remaining; raises ``AssertionError(message)`` when the bound has passed."""
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{message} (waited {self.timeout} s)")
        return remaining
