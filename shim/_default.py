"""The process-wide default shim behind ``shim.query_coupon_stock`` (and its async twin).

For code that had its own ``query_coupon_stock`` helper: ``from shim import query_coupon_stock``
needs no object and no constructor. The shim behind it is built on first use from the file
named by ``COUPON_SHIM_CONFIG`` (else ``./shim.toml``) and then shared:

- **lazily**: importing :mod:`shim` reads no file and opens no connection;
- **thread-safe**: one :class:`~shim._client.CouponStockShim` per config file, built once under
  a lock and shared by every thread (the shim itself is thread-safe);
- **fork-safe**: a forked child never uses its parent's shim (whose pooled connections and
  shadow threads belong to the parent); it builds its own on first use. Both
  ``os.register_at_fork`` and a pid check guard this;
- **closed at exit**: an ``atexit`` hook closes every default shim of the process (finishing
  in-flight shadow comparisons, bounded by the shadow timeout);
- **per event loop** for the async twin: an :class:`~shim._client.AsyncCouponStockShim` belongs
  to the loop it was built in (its connections do), so each running loop gets its own, closed
  when the loop shuts down its async generators (``asyncio.run`` does) or at exit.

The same registry serves :mod:`shim.compat.wechatpy`, so a wechatpy drop-in and the module-level
function configured by the same file share one shim.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from shim._errors import ConfigError

if TYPE_CHECKING:
    from shim._client import AsyncCouponStockShim, CouponStockShim

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "aquery_coupon_stock",
    "close_default_shims",
    "default_config_path",
    "default_shim",
    "query_coupon_stock",
]

#: The environment variable naming the default shim's config file.
CONFIG_ENV = "COUPON_SHIM_CONFIG"
#: The file looked for in the working directory when ``COUPON_SHIM_CONFIG`` is not set.
DEFAULT_CONFIG_FILE = "shim.toml"

_log = structlog.get_logger("shim")


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the default shim's config file is: ``$COUPON_SHIM_CONFIG``, else ``./shim.toml``.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        The absolute path of an existing file.

    Raises:
        ConfigError: neither names an existing file; the message says where it looked.
    """
    env = os.environ if env is None else env
    named = env.get(CONFIG_ENV, "")
    if named:
        path = Path(named).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV} names a config file that does not exist ({path})", source=named
            )
        return path
    path = Path.cwd() / DEFAULT_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no shim config found: {CONFIG_ENV} is not set and there is no "
            f"{DEFAULT_CONFIG_FILE} in the working directory ({path.parent}); set "
            f"{CONFIG_ENV} to the path of your shim.toml"
        )
    return path


class _AsyncEntry:
    """One async shim of one loop, and the async generator that closes it with the loop."""

    __slots__ = ("closer", "shim")

    def __init__(self, shim: AsyncCouponStockShim) -> None:
        self.shim = shim
        self.closer: AsyncGenerator[None, None] | None = None


class ShimRegistry:
    """Shims shared per key within one process: sync ones per key, async ones per loop and key.

    Keys are opaque hashables chosen by the caller (``("file", "/abs/shim.toml")``, …); they
    are never logged. A forked child starts with an empty registry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._sync: dict[Hashable, CouponStockShim] = {}
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, _AsyncEntry]
        ] = weakref.WeakKeyDictionary()
        self._atexit = False

    def _after_fork(self) -> None:
        # The parent's shims (pooled sockets, shadow threads, maybe a held lock) are not ours:
        # forget them without closing (closing could disturb the parent's connections).
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._sync = {}
        self._async = weakref.WeakKeyDictionary()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. by C code)
            self._after_fork()

    def _register_atexit(self) -> None:
        if not self._atexit:
            self._atexit = True
            atexit.register(self.close_all)

    def sync(self, key: Hashable, factory: Callable[[], CouponStockShim]) -> CouponStockShim:
        """The sync shim for ``key``, built by ``factory`` on first use."""
        self._check_pid()
        found = self._sync.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._sync.get(key)
            if found is None:
                found = factory()
                self._sync[key] = found
                self._register_atexit()
        return found

    async def async_(
        self, key: Hashable, factory: Callable[[], AsyncCouponStockShim]
    ) -> AsyncCouponStockShim:
        """The async shim for ``key`` in the running loop, built by ``factory`` on first use."""
        self._check_pid()
        loop = asyncio.get_running_loop()
        per_loop = self._async.get(loop)
        entry = per_loop.get(key) if per_loop is not None else None
        if entry is not None:
            return entry.shim
        with self._lock:
            per_loop = self._async.setdefault(loop, {})
            entry = per_loop.get(key)
            created = entry is None
            if entry is None:
                entry = per_loop[key] = _AsyncEntry(factory())
                self._register_atexit()
        if created:
            # An async generator parked at its first yield: when the loop shuts down its
            # async generators (asyncio.run does, before closing), its finally block closes
            # the shim inside that loop.
            closer = self._closer(loop, key, entry)
            entry.closer = closer
            await closer.__anext__()
        return entry.shim

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, key: Hashable, entry: _AsyncEntry
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                per_loop = self._async.get(loop)
                if per_loop is not None and per_loop.get(key) is entry:
                    del per_loop[key]
                    if not per_loop:
                        del self._async[loop]
            entry.closer = None  # drop the cycle loop -> entry -> generator -> loop
            await entry.shim.aclose()

    def close_all(self) -> None:
        """Close every shim of this process (the ``atexit`` hook; safe to call twice).

        Async shims are closed in their loop when it is neither running nor closed; the others
        are left to their loop's shutdown.
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            sync = list(self._sync.values())
            self._sync.clear()
            loops = list(self._async.items())
            self._async = weakref.WeakKeyDictionary()
        for shim in sync:
            try:
                shim.close()
            except Exception as exc:  # at exit: report, never raise
                _log.warning("coupon_shim.default_close_failed", error=type(exc).__name__)
        for loop, entries in loops:
            if loop.is_closed() or loop.is_running():
                continue
            for entry in entries.values():
                closer, entry.closer = entry.closer, None
                try:
                    if closer is not None:
                        loop.run_until_complete(closer.aclose())
                    else:
                        loop.run_until_complete(entry.shim.aclose())
                except Exception as exc:  # at exit: report, never raise
                    _log.warning("coupon_shim.default_close_failed", error=type(exc).__name__)


REGISTRY = ShimRegistry()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=REGISTRY._after_fork)


def _file_key(path: Path) -> tuple[str, str]:
    return ("file", str(path))


_path_cache: tuple[str, Path] | None = None


def _default_path() -> Path:
    """:func:`default_config_path`, remembered while the variable (or the folder) is the same."""
    global _path_cache
    named = os.environ.get(CONFIG_ENV, "")
    token = named or "\0cwd:" + os.getcwd()
    cached = _path_cache
    if cached is not None and cached[0] == token:
        return cached[1]
    path = default_config_path()
    _path_cache = (token, path)
    return path


def default_shim() -> CouponStockShim:
    """The process-wide default :class:`~shim._client.CouponStockShim` (built on first use).

    Configured from ``$COUPON_SHIM_CONFIG``, else ``./shim.toml``; the file is watched and
    reloaded like any shim's. Use it for what the module-level function does not offer
    (``shadow_totals()``, ``query_via()``); do not close it (an ``atexit`` hook does).

    Raises:
        ConfigError: no config file was found (the message says where it looked), or it is
            invalid.
    """
    path = _default_path()

    def build() -> CouponStockShim:
        from shim._client import CouponStockShim

        return CouponStockShim.from_file(path)

    return REGISTRY.sync(_file_key(path), build)


async def _default_async_shim() -> AsyncCouponStockShim:
    path = _default_path()

    def build() -> AsyncCouponStockShim:
        from shim._client import AsyncCouponStockShim

        return AsyncCouponStockShim.from_file(path)

    return await REGISTRY.async_(_file_key(path), build)


def close_default_shims() -> None:
    """Close the default shims now (they are closed at exit anyway); the next call rebuilds."""
    REGISTRY.close_all()


def query_coupon_stock(
    coupon_stock_id: str | None = None,
    appid: str | None = None,
    mch_id: str | None = None,
    op_user_id: str | None = None,
    device_info: str | None = None,
    version: str | None = None,
    type: str | None = None,
    *,
    xml: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``CouponStockShim.query_coupon_stock`` on the process-wide default shim.

    Same arguments, answers and errors as
    :meth:`shim._client.CouponStockShim.query_coupon_stock`; the shim is configured from
    ``$COUPON_SHIM_CONFIG`` (else ``./shim.toml``).

    Example:
        >>> from shim import query_coupon_stock
        >>> query_coupon_stock("1757", mch_id="10000098")  # doctest: +SKIP

    Raises:
        ConfigError: no config file was found (naming where it looked) or it is invalid.
        InputError: an argument is invalid (no request is sent).
        UpstreamError: no usable answer.
        SignatureError: an answer failed verification.
        MappingError: a v3 answer could not be mapped and nothing else served the call.
    """
    return default_shim().query_coupon_stock(
        coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type, xml=xml
    )


async def aquery_coupon_stock(
    coupon_stock_id: str | None = None,
    appid: str | None = None,
    mch_id: str | None = None,
    op_user_id: str | None = None,
    device_info: str | None = None,
    version: str | None = None,
    type: str | None = None,
    *,
    xml: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The async twin of :func:`query_coupon_stock`: one default async shim per event loop.

    Raises:
        The same as :func:`query_coupon_stock`.
    """
    shim = await _default_async_shim()
    return await shim.query_coupon_stock(
        coupon_stock_id, appid, mch_id, op_user_id, device_info, version, type, xml=xml
    )
