"""``coupon-shim sandbox``: the WeChat Pay emulator on loopback, for people."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from shim._commands import Command, CommandError, ExitCode

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
    from shim.sandbox import SandboxBindError, SandboxStateError, run_forever

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
