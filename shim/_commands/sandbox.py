"""``coupon-shim sandbox``: the WeChat Pay emulator on loopback, for people.

:func:`run_forever` serves it (``shim.sandbox.serve``) until Ctrl+C or SIGTERM and prints where
everything is: the banner, notes about a kept config, the seeded stocks, the request log.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from shim._commands import Command, CommandError, ExitCode
from shim._extras import require

if TYPE_CHECKING:  # imported when the command runs, not each time the CLI starts
    from shim.sandbox import ConfigWrite, Emulator, SandboxState

DEFAULT_STATE_DIR = ".coupon-shim-sandbox"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port",
        type=int,
        default=8765,
        help="the port to listen on; 0 picks a free one (default: 8765)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default: 127.0.0.1; anything else exposes the emulator)",
    )
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=(
            "where keys and shim.toml are created once and reused; an existing shim.toml is "
            f"never overwritten (default: {DEFAULT_STATE_DIR})"
        ),
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="rewrite DIR/shim.toml for this sandbox (the old one is kept as shim.toml.bak)",
    )
    p.add_argument(
        "--log-requests",
        action="store_true",
        help="print one line per request: method, path, merchant, stock, fault, status, answer",
    )


def _run(args: argparse.Namespace) -> int:
    from shim.sandbox import SandboxBindError, SandboxStateError

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port {args.port}: must be 0-65535")
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run_forever(
            Path(args.state_dir),
            host=args.host,
            port=args.port,
            print_fn=lambda line: print(line, flush=True),
            stop_event=stop,
            reset=args.reset,
            log_requests=args.log_requests,
        )
    except SandboxBindError as exc:
        raise CommandError(str(exc), ExitCode.UNAVAILABLE) from None
    except SandboxStateError as exc:
        raise CommandError(str(exc), ExitCode.CONFIG) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ExitCode.OK


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
        MissingExtraError: the ``sandbox`` extra (uvicorn, starlette) is not installed.
        SandboxStateError: the state folder cannot be used.
        SandboxBindError: the address cannot be bound.
    """
    require("sandbox", "the emulator's HTTP server", "uvicorn", "starlette")
    from shim.sandbox import Emulator, RequestLogger, SandboxState, serve

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
    from shim.sandbox import V2_PATH, V3_STOCK_PREFIX, describe_stocks
    from shim.sandbox._messages import ADMIN_FAULTS_PATH

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


COMMAND = Command(
    name="sandbox",
    help="run the WeChat Pay emulator (v2 and v3) on loopback",
    description=(
        "Run the WeChat Pay emulator (v2 and v3, signatures checked as strictly as WeChat "
        "Pay) until Ctrl+C or SIGTERM (exit 0). Keys and a ready shim.toml live in the state "
        "folder; a shim.toml you edited is kept across restarts."
    ),
    epilog=(
        "examples:\n"
        "  coupon-shim sandbox --log-requests\n"
        "  coupon-shim query --config .coupon-shim-sandbox/shim.toml --mch-id 10000098 1757\n"
        "  curl -s http://127.0.0.1:8765/__admin/faults    # armed faults and request counts"
    ),
    add_arguments=_add_arguments,
    run=_run,
)
