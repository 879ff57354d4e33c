"""The ``coupon-shim`` command: demo, query, compare, report, sandbox, migration-doc.

The CLI, unlike the library, configures structlog (JSON or console, always with the secret
redactor) and sends events to stderr so that stdout carries only answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from shim.errors import ShimError

__all__ = ["main"]

DEFAULT_STATE_DIR = ".coupon-shim-sandbox"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coupon-shim",
        description="Keep WeChat Pay v2 query_coupon_stock callers working while moving to v3.",
    )
    p.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="how events are written to stderr (default: console)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-call events on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("demo", help="run the shim against its embedded WeChat Pay emulator")

    q = sub.add_parser("query", help="query one stock through the shim; prints the v2 dict as JSON")
    q.add_argument("--config", required=True, help="the shim.toml to use")
    q.add_argument("--mch-id", required=True)
    q.add_argument("--appid", help="default: the merchant's configured appid")
    q.add_argument("--device-info")
    q.add_argument(
        "--route",
        choices=("legacy", "v3"),
        help="query this route directly, bypassing routing (default: route as configured)",
    )
    q.add_argument("coupon_stock_id")

    from shim import compare, report

    compare.register(sub)
    report.register(sub)

    s = sub.add_parser("sandbox", help="run the WeChat Pay emulator (v2 and v3) on loopback")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    s.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where keys and shim.toml are created or reused (default: {DEFAULT_STATE_DIR})",
    )

    m = sub.add_parser("migration-doc", help="regenerate MIGRATION.md's tables from the mapping")
    m.add_argument("--check", action="store_true", help="fail if MIGRATION.md is out of date")
    m.add_argument("--file", default="MIGRATION.md")
    m.add_argument("--mappings", help="a mappings folder (default: the packaged one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coupon-shim`` console script."""
    from shim.events import configure_cli_logging

    args = _parser().parse_args(argv)
    configure_cli_logging(args.log_format, level=40 if args.quiet else 20)
    handlers = {
        "demo": _demo,
        "query": _query,
        "compare": _compare,
        "report": _report,
        "sandbox": _sandbox,
        "migration-doc": _migration_doc,
    }
    try:
        return handlers[args.command](args)
    except ShimError as exc:
        print(f"coupon-shim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _query(args: argparse.Namespace) -> int:
    from shim.client import CouponStockShim

    with CouponStockShim.from_file(args.config) as shim:
        fields = {
            "coupon_stock_id": args.coupon_stock_id,
            "mch_id": args.mch_id,
            "appid": args.appid,
            "device_info": args.device_info,
        }
        if args.route:
            answer = shim.query_via(args.route, **fields)
        else:
            answer = shim.query_coupon_stock(**fields)
            shim.wait_for_shadows(shim.config.shadow.timeout_s)
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from shim.compare import command

    return command(args)


def _report(args: argparse.Namespace) -> int:
    from shim.report import command

    return command(args)


def _sandbox(args: argparse.Namespace) -> int:
    from shim.sandbox import run_forever

    run_forever(Path(args.state_dir), host=args.host, port=args.port, print_fn=print)
    return 0


def _migration_doc(args: argparse.Namespace) -> int:
    from shim.migration_doc import main as doc_main

    argv = ["--file", args.file]
    if args.check:
        argv.append("--check")
    if args.mappings:
        argv += ["--mappings", args.mappings]
    return doc_main(argv)


# ----------------------------------------------------------------------------------- demo

_DEMO_CALLS: tuple[tuple[str, str, str, str], ...] = (
    # (title, mode, mch_id, coupon_stock_id)
    ("legacy route, MD5 merchant", "legacy", "10000098", "1757"),
    ("legacy route, HMAC-SHA256 merchant", "legacy", "10000099", "9856099"),
    ("legacy route, business error (unknown stock)", "legacy", "10000098", "404404"),
    ("v3 route, mapped onto the v2 dict and re-signed", "v3", "10000098", "1757"),
    (
        "v3 route, stock without fixed_normal_coupon (unmapped keys left out)",
        "v3",
        "10000098",
        "9856010",
    ),
    ("v3 route, v3 404 mapped to the v2 err_code", "v3", "10000098", "404404"),
    (
        "shadow mode, the divergent stock (legacy serves, v3 compared)",
        "shadow",
        "10000098",
        "9000000001",
    ),
)


def _print_answer(title: str, answer: dict[str, str], out: TextIO) -> None:
    out.write(f"\n== {title}\n")
    width = max((len(k) for k in answer), default=0)
    for k, v in answer.items():
        shown = "<signature>" if k == "sign" else v
        out.write(f"   {k:<{width}}  {shown}\n")


def _demo(args: argparse.Namespace) -> int:
    from shim.client import CouponStockShim
    from shim.sandbox import Emulator, SandboxState, describe_stocks, serve
    from shim.v2 import verify_answer

    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="coupon-shim-demo-") as tmp:
        state = SandboxState.load_or_create(Path(tmp) / "state")
        emulator = Emulator(state)
        with serve(emulator) as server:
            out.write(f"WeChat Pay emulator listening on {server.base_url} (v2 and v3)\n")
            out.write("Seeded stocks:\n")
            for line in describe_stocks():
                out.write(f"   {line}\n")
            shims: dict[str, CouponStockShim] = {}
            try:
                for title, mode, mch_id, stock_id in _DEMO_CALLS:
                    shim = shims.get(mode)
                    if shim is None:
                        path = state.write_config(
                            Path(tmp) / f"shim-{mode}.toml",
                            v2_base_url=server.base_url,
                            v3_base_url=server.base_url,
                            mode=mode,
                        )
                        shim = shims[mode] = CouponStockShim.from_file(path)
                    answer = shim.query_coupon_stock(coupon_stock_id=stock_id, mch_id=mch_id)
                    merchant = shim.config.merchant(mch_id)
                    verify_answer(
                        answer, key=merchant.v2_key.reveal(), sign_type=merchant.v2_sign_type
                    )
                    _print_answer(f"{title}  [sign verified with the v2 key]", answer, out)
                    if mode == "shadow":
                        shim.wait_for_shadows(5.0)
                        totals = shim.shadow_totals()
                        out.write(f"   shadow totals: {_short(totals.as_dict())}\n")
            finally:
                for shim in shims.values():
                    shim.close()
    out.write(
        "\nDone: every answer above is a v2 dict whose sign verifies with the merchant's v2 key.\n"
    )
    return 0


def _short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (0, {}, None))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
