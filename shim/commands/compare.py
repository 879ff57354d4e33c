"""``coupon-shim compare``: both routes per stock, field-level diffs and a readiness summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from shim.commands import Command, CommandError, ExitCode
from shim.errors import Route


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the shim.toml to use")
    p.add_argument("--mch-id", required=True, metavar="MCH_ID", help="the merchant to query as")
    p.add_argument("--appid", help="the appid to send (default: the merchant's configured appid)")
    p.add_argument(
        "--ids-file",
        metavar="FILE",
        help="a file with one stock id per line (# comments allowed), added to STOCK_ID…",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("stock_ids", nargs="*", metavar="STOCK_ID", help="stock ids to compare")


def _run(args: argparse.Namespace) -> int:
    from shim.client import CouponStockShim
    from shim.compare import ProgressPrinter, read_ids_file, render_json, render_table, run_compare

    ids = list(args.stock_ids)
    if args.ids_file:
        ids += read_ids_file(Path(args.ids_file))
    if not ids:
        raise CommandError("give stock ids or --ids-file")
    with CouponStockShim.from_file(args.config) as shim:

        def query_via(route: str, stock_id: str) -> dict[str, str]:
            return shim.query_via(
                cast(Route, route),
                coupon_stock_id=stock_id,
                mch_id=args.mch_id,
                appid=args.appid,
            )

        report = run_compare(
            query_via,
            ids,
            ignore=shim.config.shadow.ignore_fields,
            progress=ProgressPrinter() if len(ids) > 1 else None,
        )
    print(render_json(report) if args.json else render_table(report))
    return ExitCode.OK


COMMAND = Command(
    name="compare",
    help="run both routes per stock and report field-level diffs",
    description=(
        "Query each stock on both routes (legacy and v3, bypassing routing) and print the "
        "field-level differences and a readiness summary."
    ),
    epilog="example:\n  coupon-shim compare --config shim.toml --mch-id 10000098 1757 9856000",
    add_arguments=_add_arguments,
    run=_run,
)
