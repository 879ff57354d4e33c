"""``coupon-shim demo``: the shim against its embedded WeChat Pay emulator, every route."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from shim.commands import Command, ExitCode

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
    return ExitCode.OK


def _short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (0, {}, None))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # the demo has only the global options


COMMAND = Command(
    name="demo",
    help="run the shim against its embedded WeChat Pay emulator",
    add_arguments=_add_arguments,
    run=_demo,
)
