"""The live config: the snapshot in force, reloaded in the background when its file changes.

:class:`LiveConfig` holds the current :class:`~shim._values.ShimConfig` of a file and swaps
it atomically when the file (or an environment override, or the mapping file) changes. The
checks (``stat``, reading, TOML, keys, the mapping) run on one watcher thread per process,
at most every ``[reload] check_interval_s`` seconds, never on a caller's thread or an event
loop. An invalid new file keeps the last good snapshot and logs why.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from shim._changes import config_changes
from shim._environ import apply_env_overrides, env_fingerprint
from shim._errors import ConfigError
from shim._loader import load_file, parse_config, with_mapping
from shim._logs import get_logger
from shim._mapping.load import load_mapping
from shim._redaction import scrubs_locals
from shim._toml import TomlPieces, decode_toml
from shim._values import ShimConfig

__all__ = ["PAUSE_EVERY_S", "PAUSE_S", "SETTLE_S", "LiveConfig"]

_log = get_logger("shim.config")


#: A changed file is read only once its modification time is this old, so that a file being
#: written in place (truncated, then written in pieces) is not read half-way.
SETTLE_S = 0.25
_MIN_SLEEP_S = 0.01


#: A reload holds the GIL for at most about this long at a stretch (CPU work between pauses)...
PAUSE_EVERY_S = 0.001
#: ...and then sleeps this long, so that a thread waiting for the GIL gets it at once rather
#: than after the interpreter's switch interval (5 ms): a call that hands the GIL over for
#: I/O waits at most one stretch to get it back, not 5 ms each time.
PAUSE_S = 0.0001


class _Pause:
    """Called often by a reload on the watcher thread; sleeps briefly once a stretch is over."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due = time.perf_counter() + PAUSE_EVERY_S

    def __call__(self) -> None:
        if time.perf_counter() >= self._due:
            time.sleep(PAUSE_S)
            self._due = time.perf_counter() + PAUSE_EVERY_S


class _NotYet(Exception):
    """The file is still changing; look again shortly (internal)."""


class _Watcher:
    """One daemon thread for the process that checks every :class:`LiveConfig` when due.

    Reloads (stat, read, parse, key checks) happen here, never on a caller's thread or an
    event loop; callers only ever read the snapshot attribute. Live configs are held weakly,
    so a shim that is dropped stops being watched. After ``fork`` the child starts its own
    thread on the next registration or check.
    """

    def __init__(self) -> None:
        self._lives: weakref.WeakSet[LiveConfig] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, live: LiveConfig) -> None:
        with self._lock:
            self._lives.add(live)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="coupon-shim-config-watcher", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def discard(self, live: LiveConfig) -> None:
        with self._lock:
            self._lives.discard(live)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if len(self._lives):
            self.add(next(iter(self._lives)))

    def _run(self) -> None:
        while True:
            with self._lock:
                lives = list(self._lives)
                if not lives:
                    self._thread = None
                    return
            sleep = 1.0
            for live in lives:
                try:
                    sleep = min(sleep, live._due_in())
                    if sleep <= 0:
                        live.check()
                        sleep = min(1.0, live._due_in())
                except Exception:  # never let one config's surprise stop the others' reloads
                    _log.exception("coupon_shim.config_watcher_error")
            del lives
            self._wake.wait(max(_MIN_SLEEP_S, sleep))
            self._wake.clear()


_WATCHER = _Watcher()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_WATCHER._after_fork)


class LiveConfig:
    """The current :class:`ShimConfig` of a file, reloaded in the background when it changes.

    :meth:`current` is on the hot path and only returns the snapshot in force. A background
    thread looks for changes every ``[reload] check_interval_s`` (the file's modification
    time and size, the environment overrides and the mapping file), builds the new snapshot
    off the call path (keys already seen are not parsed again) and swaps it in with one
    assignment, so no call waits on a reload.

    A reload is refused, and the last good snapshot kept with a
    ``coupon_shim.config_reload_failed`` warning that says why, when the new file does not
    validate, is empty, would drop every merchant, or is still being written (it changed
    while it was read). A file is read only once it has not changed for ``SETTLE_S``; write
    it atomically (a temporary file, then ``os.replace``) to have it picked up at once.

    Args:
        path: the TOML file to watch (or ``config`` for a fixed snapshot whose environment
            overrides and mapping file are still watched).
        config: a ready snapshot.
        env: environment for ``env:`` references and the overrides (default ``os.environ``).
        clock: the monotonic clock the check interval is measured on.
        wall: the clock file modification times are compared with.
        watch: check in the background thread (default); with ``False`` nothing reloads
            unless :meth:`check` is called (tests, or an application with its own loop).
    """

    @scrubs_locals
    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        config: ShimConfig | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        watch: bool = True,
    ) -> None:
        if (path is None) == (config is None):
            raise TypeError("give exactly one of path or config")
        self._env = os.environ if env is None else env
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._path = Path(path) if path is not None else None
        self._stamp: tuple[int, int, int] | None = None
        self._envprint = env_fingerprint(self._env)
        self._pieces = TomlPieces()  # the file's merchant tables, re-parsed only if changed
        if self._path is not None:
            self._stamp = self._stat()
            self._config = load_file(self._path, env=self._env, pieces=self._pieces)
        else:
            assert config is not None
            self._config = with_mapping(config)
        self._base_routing = self._config.routing
        self._next_check = clock() + self._config.reload_interval_s
        self._listeners: list[Callable[[], Callable[[ShimConfig, ShimConfig], None] | None]] = []
        self._refusal_listeners: list[Callable[[], Callable[[str], None] | None]] = []
        self.reloads = 0
        self.reload_failures = 0
        self._watched = watch
        if watch:
            _WATCHER.add(self)

    @property
    def path(self) -> Path | None:
        """The watched file, if any."""
        return self._path

    def current(self) -> ShimConfig:
        """The snapshot in force (never blocks, never does I/O)."""
        return self._config

    def on_reload(self, listener: Callable[[ShimConfig, ShimConfig], None]) -> None:
        """Call ``listener(old, new)`` after each swap (on the reloading thread; keep it short).

        A bound method is held weakly, so a listening shim can still be garbage collected.
        """
        if inspect.ismethod(listener):
            self._listeners.append(weakref.WeakMethod(listener))
        else:
            self._listeners.append(lambda: listener)

    def on_reload_failed(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(why)`` when a reload is refused (held like :meth:`on_reload`'s)."""
        if inspect.ismethod(listener):
            self._refusal_listeners.append(weakref.WeakMethod(listener))
        else:
            self._refusal_listeners.append(lambda: listener)

    def close(self) -> None:
        """Stop watching (the snapshot in force stays readable)."""
        if self._watched:
            self._watched = False
            _WATCHER.discard(self)

    def _due_in(self) -> float:
        return self._next_check - self._clock()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refuse(self, why: str, **fields: Any) -> bool:
        self.reload_failures += 1
        _log.warning(
            "coupon_shim.config_reload_failed",
            error=why,
            action="kept the last good configuration",
            **fields,
        )
        for ref in list(self._refusal_listeners):
            listener = ref()
            if listener is not None:
                with contextlib.suppress(Exception):  # an observer never breaks a reload
                    listener(why)
        return False

    def _read_settled(self, stamp: tuple[int, int, int]) -> bytes:
        """The file's bytes, once it has stopped changing; raises :class:`_NotYet` if not.

        A file replaced by another (a new inode: ``os.replace``) is whole and read at once;
        one edited in place is read once it is ``SETTLE_S`` old, and must not change while
        it is read.
        """
        assert self._path is not None
        age = self._wall() - stamp[0] / 1e9
        replaced = self._stamp is None or stamp[2] != self._stamp[2]
        if not replaced and 0 <= age < SETTLE_S:
            raise _NotYet(SETTLE_S - age)
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"config file cannot be read ({type(exc).__name__})", source=str(self._path)
            ) from None
        if self._stat() != stamp or len(raw) != stamp[1]:
            raise _NotYet(SETTLE_S)
        return raw

    def _load(self, stamp: tuple[int, int, int]) -> ShimConfig:
        assert self._path is not None
        raw = self._read_settled(stamp)
        source = str(self._path)
        pause = _Pause()
        data = decode_toml(raw, source=source, empty_ok=False, pieces=self._pieces, pause=pause)
        config = parse_config(
            data,
            source=source,
            base_dir=self._path.resolve().parent,
            env=self._env,
            path=self._path,
            previous=self._config.merchants,
            pause=pause,
            pieces=self._pieces,
        )
        return with_mapping(config)

    def _fresh_mapping(self, config: ShimConfig) -> ShimConfig:
        """``config`` with its mapping file re-read if that file changed (cached otherwise)."""
        if config.mapping is None:
            return config
        try:
            table = load_mapping(config.mapping_dir)
        except ConfigError as exc:
            _log.warning(
                "coupon_shim.mapping_reload_failed",
                error=str(exc),
                action="kept the last good mapping",
            )
            return config
        if table is config.mapping or table == config.mapping:
            return config
        return replace(config, mapping=table)

    def check(self) -> bool:
        """Look for a changed file, environment or mapping now; reload if so.

        Runs on the watcher thread (or the caller's, when called directly). Returns True when
        a new snapshot was swapped in.
        """
        if not self._lock.acquire(blocking=False):
            return False  # another thread is checking; keep serving the current snapshot
        try:
            self._next_check = self._clock() + self._config.reload_interval_s
            old = self._config
            envprint = env_fingerprint(self._env)
            stamp = self._stat() if self._path is not None else None
            try:
                if self._path is not None and stamp != self._stamp:
                    if stamp is None:
                        self._stamp = stamp
                        return self._refuse("the config file is missing or unreadable")
                    new = self._load(stamp)
                    if old.merchants and not new.merchants:
                        self._stamp, self._envprint = stamp, envprint
                        return self._refuse(
                            "the new file has no merchants (a partial write?); every call "
                            "would fail"
                        )
                elif envprint != self._envprint:
                    if self._path is not None:
                        assert stamp is not None
                        new = self._load(stamp)
                    else:
                        new = replace(
                            old, routing=apply_env_overrides(self._base_routing, self._env)
                        )
                else:
                    new = old
            except _NotYet as wait:
                # still being written: look again once it has settled; nothing is swapped
                self._next_check = self._clock() + max(_MIN_SLEEP_S, float(wait.args[0]))
                return False
            except ConfigError as exc:
                self._stamp, self._envprint = stamp, envprint  # not retried until it changes
                return self._refuse(str(exc))
            self._stamp, self._envprint = stamp, envprint
            new = self._fresh_mapping(new)
            if new is old:
                return False
            self._config = new
            self._next_check = self._clock() + new.reload_interval_s
            self.reloads += 1
            for ref in list(self._listeners):
                listener = ref()
                if listener is None:
                    self._listeners.remove(ref)
                    continue
                try:
                    listener(old, new)
                except Exception:
                    _log.exception("coupon_shim.config_reload_listener_failed")
            _log.info(
                "coupon_shim.config_reloaded",
                mode=new.routing.mode,
                changed=list(config_changes(old, new)),  # dotted keys, never values
            )
            return True
        finally:
            self._lock.release()
