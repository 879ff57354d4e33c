"""The socket plug: uvicorn in a background thread (``coupon-shim sandbox`` runs it).

Needs the ``sandbox`` extra (uvicorn, starlette), imported when a server starts: the emulator
itself and its in-process transport work without it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shim._extras import require

from ._emulator import Emulator

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

#: ASGI scope key under which ``serve()`` passes its "stopping" event to the app.
STOPPING_SCOPE_KEY = "coupon_shim.sandbox.stopping"
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
        MissingExtraError: the ``sandbox`` extra (uvicorn, starlette) is not installed.
        SandboxBindError: the address cannot be bound (port in use, …).
        RuntimeError: the server did not start.
    """
    require("sandbox", "the emulator's HTTP server", "uvicorn", "starlette")
    import uvicorn

    app = emulator.asgi_app
    stopping = threading.Event()
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        _StoppableApp(app, stopping),
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
