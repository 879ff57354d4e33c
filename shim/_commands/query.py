"""``coupon-shim query``: one query through the shim; the v2 dict as JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys

from shim._commands import Command, ExitCode


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the shim.toml to use")
    p.add_argument("--mch-id", required=True, metavar="MCH_ID", help="the merchant to query as")
    p.add_argument("--appid", help="the appid to send (default: the merchant's configured appid)")
    p.add_argument("--device-info", help="the v2 device_info field (default: none)")
    p.add_argument(
        "--route",
        choices=("legacy", "v3"),
        help="query this route directly, bypassing routing (default: route as configured)",
    )
    p.add_argument("coupon_stock_id", metavar="STOCK_ID", help="the coupon stock id to query")


def _run(args: argparse.Namespace) -> int:
    from shim._client import CouponStockShim
    from shim._observe import CallRecord, describe_route

    records: list[CallRecord] = []
    with CouponStockShim.from_file(args.config) as shim:
        shim.subscribe(records.append)  # to say which route served and why
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
    if records and args.log_format == "console" and not args.quiet:
        print(f"coupon-shim: served by {describe_route(records[-1])}", file=sys.stderr)
    return ExitCode.OK


COMMAND = Command(
    name="query",
    help="query one stock through the shim; prints the v2 dict as JSON",
    description=(
        "Query one coupon stock through the shim, routed as the config says (or by --route), "
        "and print the v2 answer dict as JSON on stdout. Business errors "
        "(result_code=FAIL) are answers and exit 0. The call's coupon_stock.query event (and, "
        "in console format, a last line on stderr) says which route served and why."
    ),
    epilog="example:\n  coupon-shim query --config shim.toml --mch-id 10000098 1757",
    add_arguments=_add_arguments,
    run=_run,
)
