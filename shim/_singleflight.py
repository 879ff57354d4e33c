"""Single-flight: identical concurrent queries share one upstream exchange.

Calls for the same merchant, stock, route and request fields that overlap in time are
coalesced: the first (the *leader*) runs the call; the others (*followers*) wait for its
outcome instead of sending their own request. The facade then gives every follower its own
answer (a fresh ``nonce_str`` and ``sign``), its own event (marked ``coalesced``) and, when
the shared exchange failed, the same typed error.

A follower takes an answer only if the upstream produced it during the follower's own call
(its reply arrived after the follower started); otherwise it runs the call itself. So
coalescing never hands a caller an answer older than its call, and never changes what it
would have received.

Two groups, one per twin:

* :class:`ThreadFlights` (blocking twin): the leader runs the call on its own thread;
  followers wait on an event, each bounded by its own deadline.
* :class:`AsyncFlights` (asyncio twin): the leader runs the call in its own task; followers
  wait on an event, each bounded by its own deadline. A cancelled leader abandons the flight
  and its followers run the call themselves: they get an answer or a typed error, never the
  leader's ``CancelledError``.

Only :class:`~shim._errors.ShimError` outcomes are shared. A leader that ends any other way (a
bug, ``KeyboardInterrupt``) abandons the flight, and its followers run the call themselves.
The groups hold only calls in flight, so their size is bounded by the calls in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shim._errors import ShimError

__all__ = ["AsyncFlights", "FlightStats", "ThreadFlights"]

T = TypeVar("T")


@dataclass
class FlightStats:
    """Running totals of one group (read them with :meth:`snapshot`).

    Attributes:
        led: calls that ran their own upstream exchange through the group.
        coalesced: calls served by another call's exchange.
        retried: followers that could not use the shared outcome (too old, or the leader was
            abandoned) and ran the call themselves.
    """

    led: int = 0
    coalesced: int = 0
    retried: int = 0

    def snapshot(self) -> dict[str, int]:
        return {"led": self.led, "coalesced": self.coalesced, "retried": self.retried}


class _Abandoned(Exception):
    """The leader ended without a ShimError or an outcome (internal)."""


class _Outcome(Generic[T]):
    """What a finished flight left for its followers; shared by both twins' groups."""

    __slots__ = ("error", "result")

    def __init__(self) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None

    def failed(self, error: BaseException) -> None:
        """The leader's side: its typed error is shared; anything else (cancelled, a bug,
        ``KeyboardInterrupt``) abandons the flight and the followers run the call themselves."""
        self.error = error if isinstance(error, ShimError) else _Abandoned()

    def for_follower(self, fresh: Callable[[T], bool], stats: FlightStats) -> T | None:
        """The follower's side, once the flight is done: the shared result (if ``fresh``),
        the shared typed error raised, or None: run the call yourself (too old, abandoned)."""
        error = self.error
        if error is None:
            result = self.result
            assert result is not None
            if fresh(result):
                stats.coalesced += 1
                return result
        elif isinstance(error, ShimError):
            stats.coalesced += 1
            raise error
        stats.retried += 1
        return None


class _Flight(_Outcome[T]):
    # ``done`` is made by the first follower (under the group's lock): a call nobody joins,
    # the common case, costs no Event.
    __slots__ = ("done",)

    def __init__(self) -> None:  # (the fields of _Outcome.__init__ set here: one call less)
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done: threading.Event | None = None


class ThreadFlights(Generic[T]):
    """The blocking twin's group: ``run(key, call, fresh, remaining)``."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}
        self._lock = threading.Lock()
        self.stats = FlightStats()

    def __len__(self) -> int:
        return len(self._flights)

    def run(
        self,
        key: Hashable,
        call: Callable[[], T],
        *,
        fresh: Callable[[T], bool],
        remaining: Callable[[], float],
        expired: Callable[[], ShimError],
    ) -> tuple[T, bool]:
        """Run ``call`` or join an identical one in flight; returns (outcome, coalesced).

        Args:
            key: what makes two calls identical.
            call: runs the call (the leader's work).
            fresh: whether a shared outcome may serve this caller (produced during its call).
            remaining: seconds left of this caller's budget.
            expired: the typed error for a follower whose budget ran out while waiting.

        Raises:
            ShimError: the shared exchange's error, or ``expired()``.
        """
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    self.stats.led += 1
                    done = None
                else:
                    done = flight.done
                    if done is None:
                        done = flight.done = threading.Event()
            if done is None:
                try:
                    led = call()
                except BaseException as err:
                    self.land(key, flight, error=err)
                    raise
                self.land(key, flight, led)
                return led, False
            if not done.wait(max(0.0, remaining())):
                raise expired()
            with self._lock:  # the totals are shared by threads
                result = flight.for_follower(fresh, self.stats)
            if result is not None:
                return result, True
            # too old, or abandoned: run it ourselves

    def lead(self, key: Hashable) -> _Flight[T] | None:
        """Lead the flight of ``key`` when none is in flight (the caller then runs the call
        and hands its outcome to :meth:`land`); None: an identical call is in flight (join it
        with :meth:`run`). The facade's fast path for a call nobody joins, as :meth:`run`
        would lead it."""
        with self._lock:
            if key in self._flights:
                return None
            flight = self._flights[key] = _Flight()
            self.stats.led += 1
        return flight

    def land(
        self,
        key: Hashable,
        flight: _Flight[T],
        result: T | None = None,
        *,
        error: BaseException | None = None,
    ) -> None:
        """The leader's outcome (``result``, or how it ended: ``error``) for the followers:
        the flight closes to newcomers, then its followers are woken."""
        if error is not None:
            flight.failed(error)
        else:
            flight.result = result
        with self._lock:  # closed to newcomers before anyone is woken
            if self._flights.get(key) is flight:
                del self._flights[key]
            done = flight.done
        if done is not None:
            done.set()


class _AsyncFlight(_Outcome[T]):
    __slots__ = ("done",)

    def __init__(self) -> None:
        super().__init__()
        self.done: asyncio.Event | None = None  # made by the first follower


class AsyncFlights(Generic[T]):
    """The asyncio twin's group; keyed per event loop.

    The leader runs the call in its own task. If it is cancelled, the flight is abandoned and
    its followers run the call themselves (one of them leads the new flight): a follower gets
    an answer or a typed error, never the leader's ``CancelledError``.
    """

    def __init__(self) -> None:
        self._flights: dict[tuple[int, Hashable], _AsyncFlight[T]] = {}
        self.stats = FlightStats()

    def __len__(self) -> int:
        return len(self._flights)

    async def run(
        self,
        key: Hashable,
        call: Callable[[], Awaitable[T]],
        *,
        fresh: Callable[[T], bool],
        remaining: Callable[[], float],
        expired: Callable[[], ShimError],
    ) -> tuple[T, bool]:
        """As :meth:`ThreadFlights.run`, for coroutines (``call`` runs in the leader's task)."""
        loop_key = (id(asyncio.get_running_loop()), key)
        while True:
            flight = self._flights.get(loop_key)
            if flight is None:
                flight = self._flights[loop_key] = _AsyncFlight()
                return await self._lead(loop_key, flight, call), False
            done = flight.done
            if done is None:
                done = flight.done = asyncio.Event()
            try:
                await asyncio.wait_for(done.wait(), max(0.0, remaining()))
            except asyncio.TimeoutError:
                raise expired() from None
            result = flight.for_follower(fresh, self.stats)
            if result is not None:
                return result, True
            # too old, or abandoned: run it ourselves

    async def _lead(
        self,
        loop_key: tuple[int, Hashable],
        flight: _AsyncFlight[T],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        self.stats.led += 1
        try:
            result = await call()
        except BaseException as err:
            flight.failed(err)
            raise
        else:
            flight.result = result
            return result
        finally:
            if self._flights.get(loop_key) is flight:
                del self._flights[loop_key]
            if flight.done is not None:
                flight.done.set()
