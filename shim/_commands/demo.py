"""``coupon-shim demo``: the shim against its embedded WeChat Pay emulator, on one screen.

Seven calls go through every route (legacy MD5 and HMAC-SHA256 merchants, v3 mapped and
re-signed, business errors, shadow mode on the deliberately divergent stock). The summary is
one table built from each call's ``coupon_stock.query`` event and the answer's own v2 sign
check; then the shadow diff as legacy vs v3 values, and what to run next. ``--verbose`` adds,
per scenario, the v2 answer and the events that call emitted, grouped under it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from shim._commands import Command, ExitCode


@dataclass(frozen=True)
class Scenario:
    """One demo call."""

    title: str
    mode: str
    mch_id: str
    stock_id: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("legacy · MD5 merchant", "legacy", "10000098", "1757"),
    Scenario("legacy · HMAC-SHA256 merchant", "legacy", "10000099", "9856099"),
    Scenario("legacy · unknown stock", "legacy", "10000098", "404404"),
    Scenario("v3 · mapped, re-signed", "v3", "10000098", "1757"),
    Scenario("v3 · no fixed_normal_coupon", "v3", "10000098", "9856010"),
    Scenario("v3 · a v3 404", "v3", "10000098", "404404"),
    Scenario("shadow · divergent stock", "shadow", "10000098", "9000000001"),
)


@dataclass
class Row:
    """What one scenario gave."""

    scenario: Scenario
    answer: dict[str, str] | None = None
    error: str | None = None
    sign: str = "-"
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def call_event(self) -> dict[str, Any]:
        """The scenario's ``coupon_stock.query`` event (empty if none was seen)."""
        for event in self.events:
            if event.get("event") == "coupon_stock.query":
                return event
        return {}

    def served_by(self) -> str:
        return str(self.call_event.get("route", "?"))

    def outcome(self) -> str:
        if self.error:
            return f"error: {self.error}"
        event = self.call_event
        if event.get("err_code"):
            return str(event["err_code"])
        return str(event.get("outcome", "?"))

    def gaps(self) -> str:
        event = self.call_event
        parts = []
        if event.get("unmapped"):
            parts.append("unmapped: " + ", ".join(event["unmapped"]))
        if event.get("shadow"):
            fields = event.get("mismatch_fields") or []
            parts.append(f"v3 {event['shadow']}" + (": " + ", ".join(fields) if fields else ""))
        return "; ".join(parts) or "-"

    @property
    def ok(self) -> bool:
        return self.error is None and self.sign == "verified" and bool(self.call_event)


class EventTap(io.TextIOBase):
    """A text stream for the CLI's JSON event renderer that files each event under the
    scenario running when it was emitted (shadow events arrive from worker threads)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._pending = ""
        self.section: list[dict[str, Any]] | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                if line.strip() and self.section is not None:
                    try:
                        self.section.append(json.loads(line))
                    except ValueError:
                        self.section.append({"event": line})
        return len(text)


def _run_scenarios(rows: list[Row], tap: EventTap, out: TextIO) -> tuple[str, list[Any]]:
    """Run every scenario against a fresh emulator; returns its URL and the shadow diff."""
    from shim._client import CouponStockShim
    from shim._diff import diff_answers
    from shim._errors import ShimError
    from shim._v2 import verify_answer
    from shim.sandbox import Emulator, SandboxState, serve

    with tempfile.TemporaryDirectory(prefix="coupon-shim-demo-") as tmp:
        out.write("Starting the WeChat Pay emulator (new test keys)...\n")
        out.flush()
        state = SandboxState.load_or_create(Path(tmp) / "state")
        with serve(Emulator(state)) as server:
            shims: dict[str, CouponStockShim] = {}
            diff: list[Any] = []
            try:
                for row in rows:
                    sc = row.scenario
                    shim = shims.get(sc.mode)
                    if shim is None:
                        path = state.write_config(
                            Path(tmp) / f"shim-{sc.mode}.toml",
                            v2_base_url=server.base_url,
                            v3_base_url=server.base_url,
                            mode=sc.mode,
                        )
                        shim = shims[sc.mode] = CouponStockShim.from_file(path)
                    tap.section = row.events
                    try:
                        row.answer = shim.query_coupon_stock(
                            coupon_stock_id=sc.stock_id, mch_id=sc.mch_id
                        )
                        shim.wait_for_shadows(5.0)
                    except ShimError as exc:
                        row.error = f"{type(exc).__name__}: {exc}"
                        continue
                    finally:
                        tap.section = None
                    merchant = shim.config.merchant(sc.mch_id)
                    try:
                        verify_answer(
                            row.answer,
                            key=merchant.v2_key.reveal(),
                            sign_type=merchant.v2_sign_type,
                        )
                        row.sign = "verified"
                    except ShimError as exc:
                        row.sign = f"NOT verified: {exc}"
                    if sc.mode == "shadow":
                        other = shim.query_via("v3", coupon_stock_id=sc.stock_id, mch_id=sc.mch_id)
                        diff = list(
                            diff_answers(row.answer, other, ignore=shim.config.shadow.ignore_fields)
                        )
            finally:
                for shim in shims.values():
                    shim.close()
            return server.base_url, diff


def _width(out: TextIO) -> int | None:
    """The console width: the terminal's, or ``$COLUMNS`` (default 120) when piped."""
    if out.isatty():
        return None
    try:
        return max(60, int(os.environ.get("COLUMNS", "120")))
    except ValueError:
        return 120


def _table(title: str, columns: list[str], rows: list[list[str]], out: TextIO) -> None:
    """A table with rich when installed (the ``cli`` extra), else aligned plain text."""
    out.write(f"{title}\n")
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - exercised without the cli extra
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for line in [columns, *rows]:
            out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
            out.write("\n")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i < len(columns) - 1)
    for r in rows:
        table.add_row(*r)
    Console(file=out, width=_width(out), highlight=False, emoji=False).print(table)


def _render_event(event: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(event, ensure_ascii=False)
    rest = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("event", "timestamp", "level")
    )
    return f"[{event.get('level', 'info')}] {event.get('event')} {rest}"


def _next_steps(out: TextIO) -> None:
    from shim.cli import load_commands

    names = {c.name for c in load_commands()}
    cfg = ".coupon-shim-sandbox/shim.toml"
    compare = f"coupon-shim compare --config {cfg} --mch-id 10000098"
    steps = [
        ("coupon-shim sandbox --log-requests", f"run the emulator yourself; edit {cfg}"),
        (f"coupon-shim query --config {cfg} --mch-id 10000098 1757", ""),
        (f"{compare} 1757 9856010 9000000001", ""),
    ]
    if "report" in names:
        steps += [
            (f"{compare} --json 1757 9856010 9000000001 > compare.json", ""),
            ("coupon-shim report compare.json", "an HTML readiness report with a verdict"),
        ]
    steps.append(("MIGRATION.md", "the cutover playbook: legacy -> shadow -> canary -> v3"))
    out.write("\nnext:\n")
    for command, what in steps:
        out.write(f"  {command:<36}  {what}".rstrip() + "\n")


def _demo(args: argparse.Namespace) -> int:
    from shim._events import configure_cli_logging

    out = sys.stdout
    rows = [Row(sc) for sc in SCENARIOS]
    tap = EventTap()
    configure_cli_logging("json", stream=cast(TextIO, tap), level=10 if args.verbose else 20)
    try:
        base_url, diff = _run_scenarios(rows, tap, out)
    finally:
        configure_cli_logging(args.log_format, level=30 if args.quiet else 20)

    out.write(f"coupon-shim demo: {len(rows)} calls through the shim to the WeChat Pay ")
    out.write(f"emulator at {base_url} (v2 and v3, loopback)\n\n")
    _table(
        "Every answer is a v2 dict whose sign is checked with the merchant's v2 key:",
        ["#", "mode · scenario", "stock", "route", "outcome", "v2 sign", "unmapped / mismatching"],
        [
            [
                str(i),
                r.scenario.title,
                r.scenario.stock_id,
                r.served_by(),
                r.outcome(),
                r.sign,
                r.gaps(),
            ]
            for i, r in enumerate(rows, 1)
        ],
        out,
    )
    out.write(
        "route: the side that served.  outcome: success, or the v2 err_code of a business "
        "error.\nunmapped: v2 keys v3 has no value for (left out, never guessed).\n"
        "mismatching: fields where the shadowed v3 answer differs from the served one.\n"
    )
    shadow = next((r for r in rows if r.scenario.mode == "shadow"), None)
    if shadow is not None and diff:
        out.write("\n")
        _table(
            f"Shadow diff of stock {shadow.scenario.stock_id}: legacy served, v3 was compared "
            "off the latency path:",
            ["field", "legacy (served)", "v3"],
            [[d.field, str(d.served), str(d.other)] for d in diff],
            out,
        )
    if args.verbose:
        for i, r in enumerate(rows, 1):
            out.write(f"\n== {i}. {r.scenario.title} (mode {r.scenario.mode})\n")
            if r.answer:
                width = max(len(k) for k in r.answer)
                for k, v in r.answer.items():
                    out.write(f"   {k:<{width}}  {'<signature>' if k == 'sign' else v}\n")
            for event in r.events:
                out.write(f"   event: {_render_event(event, args.log_format)}\n")
    else:
        out.write("\nEach row is one call's coupon_stock.query event; --verbose shows each ")
        out.write("answer and its events.\n")
    _next_steps(out)
    failed = [i for i, r in enumerate(rows, 1) if not r.ok]
    if failed:
        out.write(f"\nscenario(s) {', '.join(map(str, failed))} did not go as expected\n")
        return ExitCode.FINDINGS
    return ExitCode.OK


def _add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # the demo has only the global options (--verbose: answers and events per scenario)


COMMAND = Command(
    name="demo",
    help="run the shim against its embedded WeChat Pay emulator (one screen)",
    description=(
        "Start the WeChat Pay emulator on loopback with fresh test keys, send seven calls "
        "through every route and show one summary table, the shadow diff and what to run "
        "next. --verbose adds each answer and its events."
    ),
    add_arguments=_add_arguments,
    run=_demo,
)
