"""``coupon-shim report``: an offline HTML readiness report and a terminal summary.

The command's options and runner; the work is in :mod:`shim._report`."""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from shim._commands import Command
from shim._report.collect import aggregate_paths
from shim._report.model import (
    Thresholds,
)
from shim._report.terminal import render_summary
from shim._report.verdict import judge

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "command"]


DESCRIPTION: Final = (
    "Read JSON-lines events (--log-format json, or an application's structlog JSON; many "
    "files, .gz accepted) and/or compare --json output, print a one-screen summary and write "
    "one self-contained HTML readiness report (charts and a verdict; nothing is fetched when "
    "it is viewed). Exit status: 0 written (1 with --fail-not-ready when not ready), 2 an "
    "input cannot be read or the report extra is missing."
)
EPILOG: Final = (
    "example:\n  coupon-shim report logs/*.jsonl.gz compare.json -o readiness.html --fail-not-ready"
)


def add_arguments(r: argparse.ArgumentParser) -> None:
    """Add ``report``'s options to its parser."""
    r.add_argument(
        "inputs", nargs="+", metavar="FILE", help="JSON-lines event logs or compare --json output"
    )
    r.add_argument(
        "-o",
        "--output",
        default="coupon-shim-report.html",
        metavar="FILE",
        help="the HTML file to write (default: coupon-shim-report.html)",
    )
    r.add_argument("--no-html", action="store_true", help="only the terminal summary")
    r.add_argument("--title", default="coupon-shim readiness report", help="the report's title")
    r.add_argument(
        "--min-match-rate",
        type=float,
        default=99.5,
        metavar="PCT",
        help="shadow and compare match rate needed to be ready (default 99.5)",
    )
    r.add_argument(
        "--min-comparisons",
        type=int,
        default=100,
        metavar="N",
        help="comparisons (shadow + compare) needed before judging (default 100)",
    )
    r.add_argument(
        "--max-error-rate",
        type=float,
        default=1.0,
        metavar="PCT",
        help="highest share of calls that may fail (default 1)",
    )
    r.add_argument(
        "--max-fallback-rate",
        type=float,
        default=1.0,
        metavar="PCT",
        help="highest share of calls that may fall back to the other route (default 1)",
    )
    r.add_argument(
        "--max-v3-p99-ms",
        type=float,
        default=None,
        metavar="MS",
        help="highest v3 p99 latency allowed (default: not checked)",
    )
    r.add_argument(
        "--fail-not-ready", action="store_true", help="exit 1 when the verdict is not ready"
    )


def command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``coupon-shim report``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import rich  # noqa: F401

        if not args.no_html:
            import plotly  # noqa: F401
    except ImportError as exc:
        err.write(
            f"coupon-shim report: needs the 'report' extra ({exc.name} is missing): "
            "pip install 'coupon-shim[report]'\n"
        )
        return 2
    started = time.monotonic()
    try:
        agg = aggregate_paths(args.inputs)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        name = getattr(exc, "filename", None)
        where = f"{Path(name).name}: " if name else ""
        err.write(f"coupon-shim report: cannot read {where}{reason}\n")
        return 2
    limits = Thresholds(
        min_match_percent=args.min_match_rate,
        min_comparisons=args.min_comparisons,
        max_error_percent=args.max_error_rate,
        max_fallback_percent=args.max_fallback_rate,
        max_v3_p99_ms=args.max_v3_p99_ms,
    )
    verdict = judge(agg, limits)
    out.write(render_summary(agg, verdict))
    if not args.no_html:
        from shim._report.html import render_html

        html = render_html(agg, verdict, title=args.title, limits=limits)
        Path(args.output).write_text(html, encoding="utf-8")
        elapsed = time.monotonic() - started
        out.write(
            f"wrote {args.output} ({len(html.encode('utf-8')) / 1e6:.1f} MB, "
            f"{agg.calls:,} calls, {elapsed:.1f} s)\n"
        )
    if agg.skipped_lines:
        err.write(f"coupon-shim report: {agg.skipped_lines} line(s) were not JSON; skipped\n")
    return 1 if args.fail_not_ready and not verdict.ready else 0


COMMAND = Command(
    name="report",
    help="an offline HTML readiness report (charts, verdict) from events and compare runs",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=command,
)
