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

__all__ = ["await_until", "wait_until"]


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
