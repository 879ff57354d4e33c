"""Running the gateway: uvicorn on a socket we bind, one process or several workers.

``run`` is what ``coupon-shim serve`` calls. It checks the whole config first (so a broken
file fails with one line, before anything listens), binds the socket itself (loopback unless
told otherwise; ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on accepted connections), then
serves until SIGTERM or SIGINT, drains and returns 0. With ``workers > 1`` uvicorn's
supervisor spawns the workers; each builds its app with :func:`worker_app` from the
environment the parent set, and Prometheus samples go to a shared multiprocess folder.

``running`` serves an app from a background thread, for tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from shim._events import configure_cli_logging
from shim._loader import load_config
from shim._redaction import redact_text
from shim.gateway._app import GatewayApp
from shim.gateway._metrics import MULTIPROC_ENV
from shim.gateway._settings import GatewaySettings, check_tls, load_gateway_settings

__all__ = ["RunningGateway", "run", "running", "worker_app"]

CONFIG_ENV = "COUPON_SHIM_GATEWAY_CONFIG"
OVERRIDES_ENV = "COUPON_SHIM_GATEWAY_OVERRIDES"
LOG_ENV = "COUPON_SHIM_GATEWAY_LOG"
_START_TIMEOUT_S = 15.0


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _whole_lines() -> None:
    """Write each event with one ``write`` call, so workers sharing stderr never interleave
    halves of their lines (``print`` writes the text and the newline separately)."""
    import structlog

    structlog.configure(logger_factory=structlog.WriteLoggerFactory(sys.stderr))


def _route_server_logs(level: int) -> None:
    """uvicorn's own messages (start-up, errors) to stderr, through the redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting("%(levelname)s %(name)s: %(message)s"))
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "uvicorn" else []
        logger.setLevel(max(level, logging.WARNING))
        logger.propagate = name != "uvicorn"


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Corked:
    """A transport whose writes within one event-loop turn leave as one ``write``.

    uvicorn writes a response's status line and headers, then its body, as two writes:
    two sends, two segments and often two wake-ups of the caller per answer. Held until
    the end of the loop turn (or a ``close``), they go out together.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


try:  # httptools is in the gateway extra
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttp
except ImportError:  # pragma: no cover - without it, uvicorn's h11 protocol
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornHttp  # type: ignore[assignment]


class CorkedHttpProtocol(_UvicornHttp):
    """uvicorn's HTTP protocol (httptools when installed, else h11) on a corked transport
    (:class:`_Corked`). A module-level class: uvicorn pickles its config for workers."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.transport = _Corked(transport, self.loop)  # type: ignore[assignment]


def _uvicorn_config(app: Any, settings: GatewaySettings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=CorkedHttpProtocol,
        loop="auto",  # uvloop when installed
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,  # the gateway emits its own access events, redacted
        server_header=False,
        date_header=True,
        proxy_headers=False,
        backlog=2048,
        timeout_keep_alive=int(settings.keep_alive_s),
        timeout_graceful_shutdown=int(max(1.0, settings.drain_timeout_s)),
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_keyfile_password=settings.ssl_keyfile_password,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        **extra,
    )


def _ignore(sig: int, frame: Any) -> None:
    return None


def _log_settings() -> tuple[str, int]:
    raw = os.environ.get(LOG_ENV, "console:20")
    fmt, _, level = raw.partition(":")
    return fmt, int(level) if level.isdigit() else 20


def worker_app() -> GatewayApp:
    """The app of one worker process (uvicorn's factory), built from the parent's settings."""
    fmt, level = _log_settings()
    configure_cli_logging(fmt, level=level)
    _whole_lines()
    _route_server_logs(level)
    path = os.environ[CONFIG_ENV]
    overrides = json.loads(os.environ.get(OVERRIDES_ENV, "{}"))
    settings = load_gateway_settings(path).with_overrides(**overrides)
    return GatewayApp(path, settings)


def run(
    config: str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | None = None,
    log_format: str = "console",
    log_level: int = 20,
    print_fn: Callable[[str], object] = print,
) -> int:
    """Serve the gateway until SIGTERM/SIGINT, then drain. Returns the exit status.

    Args:
        config: the ``shim.toml`` path.
        overrides: command-line values (host, port, workers, ssl_*) over ``[gateway]``.
        log_format: ``console`` or ``json`` (events to stderr, always redacted).
        log_level: the minimum level of events.
        print_fn: where the one "listening on" line goes.

    Raises:
        ConfigError: the config file (or its ``[gateway]`` table) is wrong.
        OSError: the address cannot be bound.
    """
    path = Path(config).resolve()
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    settings = load_gateway_settings(path).with_overrides(**over)
    check_tls(settings)
    load_config(path)  # the whole file, keys included: fail now, with one line, not in a worker
    configure_cli_logging(log_format, level=log_level)
    _whole_lines()
    _route_server_logs(log_level)
    sock = _bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls else "http"
    workers = settings.workers
    print_fn(
        f"coupon-shim gateway listening on {scheme}://{shown}:{port} "
        f"({workers} worker{'s' if workers > 1 else ''}; Ctrl+C or SIGTERM drains and stops)"
    )
    originals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    made_dir: str | None = None
    if os.environ.get(MULTIPROC_ENV):
        _wipe_samples(Path(os.environ[MULTIPROC_ENV]))
    try:
        if workers == 1:
            for sig in originals:
                # uvicorn re-raises the signal it stopped on after restoring the handler it
                # found: finding this one makes a drained stop exit 0, not die of SIGTERM.
                signal.signal(sig, _ignore)
            app = GatewayApp(path, settings)
            server = uvicorn.Server(_uvicorn_config(app, settings))
            server.run(sockets=[sock])
            return 0 if server.started else 3
        from uvicorn.supervisors import Multiprocess

        if not os.environ.get(MULTIPROC_ENV):
            made_dir = tempfile.mkdtemp(prefix="coupon-shim-metrics-")
            os.environ[MULTIPROC_ENV] = made_dir
        os.environ[CONFIG_ENV] = str(path)
        os.environ[OVERRIDES_ENV] = json.dumps(over)
        os.environ[LOG_ENV] = f"{log_format}:{log_level}"
        uv = _uvicorn_config(
            "shim.gateway._server:worker_app", settings, factory=True, workers=workers
        )
        Multiprocess(uv, sockets=[sock]).run()
        return 0
    finally:
        sock.close()
        for sig, handler in originals.items():
            signal.signal(sig, handler)
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def _wipe_samples(folder: Path) -> None:
    """prometheus_client's rule: the multiprocess folder starts empty on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunningGateway:
    """A gateway served from a background thread: ``base_url`` and its ``app``."""

    base_url: str
    port: int
    app: GatewayApp


@contextlib.contextmanager
def running(
    config: str | os.PathLike[str],
    settings: GatewaySettings | None = None,
    *,
    shim_kwargs: Mapping[str, Any] | None = None,
    **uvicorn_options: Any,
) -> Iterator[RunningGateway]:
    """Serve a gateway on 127.0.0.1 (a free port unless ``settings.port``) in a thread.

    On exit the server drains (``drain_timeout_s``), the shim closes, the thread is joined.

    Raises:
        RuntimeError: the server did not start (e.g. the config failed to load).
    """
    settings = settings or dataclasses.replace(load_gateway_settings(config), port=0)
    app = GatewayApp(config, settings, shim_kwargs=shim_kwargs)
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(app, settings, **uvicorn_options))
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"coupon-shim-gateway-{port}",
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start (see the events logged)")
            time.sleep(0.005)
        scheme = "https" if settings.tls else "http"
        yield RunningGateway(f"{scheme}://127.0.0.1:{port}", port, app)
    finally:
        app.begin_drain()
        server.should_exit = True
        thread.join(settings.drain_timeout_s + 15.0)
        if thread.is_alive():  # pragma: no cover - last resort
            server.force_exit = True
            thread.join(5.0)
        sock.close()
