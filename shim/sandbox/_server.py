"""The socket plug: uvicorn in a background thread, and the CLI's ``run_forever``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from ._asgi import STOPPING_SCOPE_KEY
from ._emulator import ADMIN_FAULTS_PATH, V2_PATH, V3_STOCK_PREFIX, Emulator
from ._state import SandboxState
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


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
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
) -> None:
    """Serve the emulator until Ctrl+C (or ``stop_event``), for ``coupon-shim sandbox``.

    Creates or reuses the state in ``state_dir``, starts the server, writes
    ``state_dir/shim.toml`` pointing at it, and prints where everything is and the seeded
    stocks. Prints no secret.

    Args:
        state_dir: the state folder.
        host: the address to bind.
        port: the port (0: any free port).
        print_fn: where lines go (``print``, ``click.echo``...).
        mode: the routing mode written into the config.
        stop_event: when set, the server stops (tests); Ctrl+C stops it too.
    """
    state_dir = Path(state_dir)
    state = SandboxState.load_or_create(state_dir)
    emulator = Emulator(state)
    with serve(emulator, host, port) as server:
        config_path = state.write_config(
            state_dir / "shim.toml",
            v2_base_url=server.base_url,
            v3_base_url=server.base_url,
            mode=mode,
        )
        base = server.base_url
        print_fn(f"WeChat Pay sandbox listening on {base}")
        print_fn(f"  v2    POST {base}{V2_PATH}")
        print_fn(f"  v3    GET  {base}{V3_STOCK_PREFIX}{{stock_id}}?stock_creator_mchid=...")
        print_fn(f"  admin POST/GET/DELETE {base}{ADMIN_FAULTS_PATH} (loopback only)")
        print_fn(f"state folder: {state_dir}")
        print_fn(f"shim config:  {config_path}")
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
        waiter = stop_event or threading.Event()
        try:
            while not waiter.wait(0.2):
                pass
        except KeyboardInterrupt:
            print_fn("stopping")
