"""``coupon-shim sandbox``: the WeChat Pay emulator on loopback, for people."""

from __future__ import annotations

import argparse
from pathlib import Path

from shim.commands import Command, ExitCode

DEFAULT_STATE_DIR = ".coupon-shim-sandbox"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8765, help="the port to listen on (default: 8765)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where keys and shim.toml are created or reused (default: {DEFAULT_STATE_DIR})",
    )


def _run(args: argparse.Namespace) -> int:
    from shim.sandbox import run_forever

    run_forever(Path(args.state_dir), host=args.host, port=args.port, print_fn=print)
    return ExitCode.OK


COMMAND = Command(
    name="sandbox",
    help="run the WeChat Pay emulator (v2 and v3) on loopback",
    add_arguments=_add_arguments,
    run=_run,
)
