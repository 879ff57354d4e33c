"""The socket plug: uvicorn in a background thread, and the CLI's ``run_forever``."""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from starlette.types import Receive, Scope, Send

from ._asgi import STOPPING_SCOPE_KEY
from ._emulator import ADMIN_FAULTS_PATH, V2_PATH, V3_STOCK_PREFIX, Emulator
from ._requestlog import RequestLogger
from ._state import ConfigWrite, SandboxState
from ._stocks import describe_stocks

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningServer:
    """A started emulator server.

    Attributes:
        host: the bound address.
        port: the bound port (the real one when 0 was asked).
        base_url: ``http://host:port`` (no trailing slash).
        emulator: the emulator it serves.
    """

    host: str
    port: int
    base_url: str
    emulator: Emulator


class _StoppableApp:
    """Passes the server's "stopping" event to the app through the ASGI scope."""

    def __init__(self, app: Any, stopping: threading.Event) -> None:
        self._app = app
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        scope[STOPPING_SCOPE_KEY] = self._stopping
        await self._app(scope, receive, send)


class SandboxBindError(OSError):
    """The emulator could not listen where it was asked (port in use, no permission, bad host).

    The message is one line naming the address and what to do.
    """


def _bind(host: str, port: int) -> socket.socket:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SandboxBindError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is in use (another sandbox?); stop it or choose another --port"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges); choose another --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = "this machine has no such address; check --host"
        else:
            reason = exc.strerror or type(exc).__name__
        error = SandboxBindError(f"cannot listen on {where}: {reason}")
        error.errno = exc.errno
        raise error from None
    return sock


@contextmanager
def serve(emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningServer]:
    """Run ``emulator`` on a real socket (uvicorn, h11) in a background thread.

    The context waits until the server listens, and on exit stops it, cuts pending ``delay``
    faults short, joins the thread and closes the socket.

    Args:
        emulator: what to serve.
        host: the address to bind (loopback by default).
        port: the port; 0 picks a free one.

    Yields:
        The :class:`RunningServer` (``.base_url``).

    Raises:
        SandboxBindError: the address cannot be bound (port in use, …).
        RuntimeError: the server did not start.
    """
    stopping = threading.Event()
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        _StoppableApp(emulator.asgi_app, stopping),
        http="h11",
        loop="asyncio",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"coupon-shim-sandbox-{bound_port}",
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.005)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningServer(bound_host, bound_port, f"http://{shown}:{bound_port}", emulator)
    finally:
        stopping.set()
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():  # pragma: no cover - last resort
            server.force_exit = True
            thread.join(_STOP_TIMEOUT_S)
        sock.close()


def run_forever(
    state_dir: Path,
    host: str,
    port: int,
    print_fn: Callable[[str], object],
    *,
    mode: str = "legacy",
    stop_event: threading.Event | None = None,
    reset: bool = False,
    log_requests: bool = False,
) -> None:
    """Serve the emulator until Ctrl+C (or ``stop_event``), for ``coupon-shim sandbox``.

    Creates or reuses the state in ``state_dir`` and starts the server. ``state_dir/shim.toml``
    is written only when it is absent (or with ``reset``, which keeps the old one as
    ``shim.toml.bak``): a config the user edited survives restarts. Prints where everything
    is, which of those it did, and the seeded stocks; with ``log_requests`` one line per
    request. Prints no secret.

    Args:
        state_dir: the state folder.
        host: the address to bind.
        port: the port (0: any free port).
        print_fn: where lines go (``print``, ``click.echo``...).
        mode: the routing mode written into a new config.
        stop_event: when set, the server stops (tests); Ctrl+C stops it too.
        reset: rewrite an existing ``shim.toml``.
        log_requests: print one line per request (see :mod:`shim.sandbox._requestlog`).

    Raises:
        SandboxStateError: the state folder cannot be used.
        SandboxBindError: the address cannot be bound.
    """
    state_dir = Path(state_dir)
    state = SandboxState.load_or_create(state_dir)
    emulator = Emulator(state)
    logger = RequestLogger(emulator, print_fn) if log_requests else None
    try:
        with serve(emulator, host, port) as server:
            try:  # Ctrl+C at any point once serving (even during the banner) stops cleanly
                base = server.base_url
                written = state.ensure_config(
                    v2_base_url=base, v3_base_url=base, mode=mode, reset=reset
                )
                _print_banner(print_fn, state, emulator, base, written)
                if logger is not None:
                    print_fn("request log (UTC): method path side mch stock fault status answer")
                waiter = stop_event or threading.Event()
                while not waiter.wait(0.2):
                    pass
            except KeyboardInterrupt:
                pass
            print_fn("stopping")
    finally:
        if logger is not None:
            logger.uninstall()


def _config_notes(written: ConfigWrite, base: str) -> list[str]:
    """Lines about a kept config that would not reach this server, or does not load."""
    from shim._errors import ConfigError
    from shim._loader import load_config

    notes: list[str] = []
    try:
        with written.path.open("rb") as fh:
            upstream = tomllib.load(fh).get("upstream", {})
    except (OSError, tomllib.TOMLDecodeError):
        upstream = {}
    if isinstance(upstream, dict):
        for key in ("v2_base_url", "v3_base_url"):
            url = upstream.get(key)
            if isinstance(url, str) and url.rstrip("/") != base:
                notes.append(
                    f"note: [upstream] {key} = {url!r} is not this sandbox ({base}); "
                    "edit it, or restart with --reset"
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a literal key is the user's choice here
            load_config(written.path)
    except ConfigError as exc:
        notes.append(f"note: {written.path.name} does not load: {exc}")
    return notes


def _print_banner(
    print_fn: Callable[[str], object],
    state: SandboxState,
    emulator: Emulator,
    base: str,
    written: ConfigWrite,
) -> None:
    state_dir = state.state_dir
    print_fn(f"WeChat Pay sandbox listening on {base}")
    print_fn(f"  v2    POST {base}{V2_PATH}")
    print_fn(f"  v3    GET  {base}{V3_STOCK_PREFIX}{{stock_id}}?stock_creator_mchid=...")
    print_fn(f"  admin POST/GET/DELETE {base}{ADMIN_FAULTS_PATH} (loopback only; see the README)")
    print_fn(f"state folder: {state_dir}")
    if written.action == "kept":
        print_fn(
            f"shim config:  {written.path} (kept: your file, not overwritten; --reset rewrites it)"
        )
        for note in _config_notes(written, base):
            print_fn(f"  {note}")
    elif written.action == "reset":
        print_fn(
            f"shim config:  {written.path} (rewritten by --reset; the old one is {written.backup})"
        )
    else:
        print_fn(f"shim config:  {written.path} (written: new file pointing at this sandbox)")
    print_fn(f"merchant keys: {state_dir / 'keys'}   platform certificates: {state.certs_dir}")
    for m in state.merchants.values():
        verify = (
            f"public-key mode ({state.pub_key_id})"
            if m.v3_verify_mode == "public_key"
            else f"platform-certificate mode (serial {state.platform_serial})"
        )
        print_fn(
            f"merchant {m.mchid}: appid {m.appid}, v2 {m.v2_sign_type}, "
            f"cert serial {m.cert_serial}, v3 {verify}"
        )
    print_fn("seeded stocks:")
    for line in describe_stocks(emulator.stocks):
        print_fn(f"  {line}")
    print_fn("Press Ctrl+C to stop.")
