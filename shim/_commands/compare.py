"""``coupon-shim compare``: both routes per stock, classified, with a verdict.

The command's options and runner; the work is in :mod:`shim._compare`."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, TextIO

from shim._commands import Command
from shim._compare.collect import MAX_CONCURRENCY, Comparer, dedupe_ids, read_ids_file, run_compare
from shim._compare.render import render_json, render_table
from shim._errors import ConfigError, InputError

if TYPE_CHECKING:
    import httpx


__all__ = [
    "COMMAND",
    "DESCRIPTION",
    "EPILOG",
    "EXIT_BELOW_THRESHOLD",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_arguments",
    "command",
]


EXIT_OK: Final = 0
EXIT_BELOW_THRESHOLD: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 3
DESCRIPTION: Final = (
    "Query every stock on both routes (legacy and v3, bypassing routing, with compare's own "
    "client and circuit breakers) and classify it: match, expected_gap, value_differs, "
    "not_found_both (excluded from readiness) or error (grouped by cause). The last line is "
    "the verdict. Exit status: 0 ok, 1 readiness below --fail-under, 2 usage or invalid ids, "
    "3 config or credentials error (found before the list runs)."
)
EPILOG: Final = (
    "examples:\n"
    "  coupon-shim compare --config shim.toml --mch-id 10000098 1757 9856000\n"
    "  coupon-shim compare --config shim.toml --mch-id 10000098 --ids-file stocks.txt \\\n"
    "      --fail-under 99.5 --concurrency 8 --json > compare.json"
)


def add_arguments(c: argparse.ArgumentParser) -> None:
    """Add ``compare``'s options to its parser."""
    c.add_argument("--config", required=True, metavar="FILE", help="the shim.toml to use")
    c.add_argument("--mch-id", required=True, metavar="MCH_ID", help="the merchant to query as")
    c.add_argument("--appid", help="the appid to send (default: the merchant's configured appid)")
    c.add_argument(
        "--ids-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file with one stock id per line (# comments allowed; '-' is stdin); repeatable",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON (with metadata)")
    c.add_argument(
        "--fail-under",
        type=_percent,
        metavar="PCT",
        help="exit 1 when readiness is below PCT percent (0-100)",
    )
    c.add_argument(
        "--concurrency",
        type=_concurrency,
        default=4,
        metavar="N",
        help=f"stocks compared at once, 1-{MAX_CONCURRENCY} (default 4)",
    )
    c.add_argument(
        "--problems-only", action="store_true", help="leave matching stocks out of the table"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c.add_argument("stock_ids", nargs="*", metavar="STOCK_ID", help="stock ids to compare")


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError("must be between 0 and 100")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_CONCURRENCY}")
    return value


def _fail(message: str, code: int, err: TextIO) -> int:
    err.write(f"coupon-shim compare: {' '.join(message.split())}\n")
    return code


def _versions() -> dict[str, str]:
    from shim import __version__

    out = {"coupon_shim": __version__, "python": platform.python_version()}
    for dist in ("httpx", "wechatpayv3", "rich"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: S112 - a missing distribution is not an error here
            continue
    return out


def command(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``coupon-shim compare``; returns the exit status (see :func:`register`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import rich  # noqa: F401
    except ImportError:
        return _fail(
            "needs the 'cli' extra for its tables: pip install 'coupon-shim[cli]'", EXIT_USAGE, err
        )
    from shim._loader import load_config

    try:
        ids_in = list(args.stock_ids)
        for path in args.ids_file:
            ids_in += read_ids_file(path)
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE, err)
    ids, dupes = dedupe_ids(s.strip() for s in ids_in)
    if not ids:
        return _fail("give stock ids or --ids-file", EXIT_USAGE, err)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, err)
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    try:
        comparer = Comparer(
            config, args.mch_id, appid=args.appid, transport=transport,
            concurrency=args.concurrency,
        )  # fmt: skip
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, err)
    with comparer:
        bad: list[str] = []
        for stock_id in ids:
            try:
                comparer.validate(stock_id)
            except InputError as exc:
                bad.append(f"{stock_id[:40]!r} ({exc})")
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            return _fail(
                f"{len(bad)} invalid stock id(s): {'; '.join(bad[:3])}{more}", EXIT_USAGE, err
            )
        try:
            first = comparer.preflight(ids[0])
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG, err)
        threshold = 100.0 if args.fail_under is None else args.fail_under
        metadata: dict[str, Any] = {
            "config": str(args.config),
            "merchant": args.mch_id,
            "appid": comparer.appid,
            "mapping": comparer.mapping_info(),
            "ignore_fields": sorted(config.shadow.ignore_fields),
            "started_at": started_at.isoformat(timespec="seconds"),
            "stocks": len(ids),
            "duplicates_skipped": dupes,
            "concurrency": args.concurrency,
            "fail_under": args.fail_under,
            "versions": _versions(),
        }
        with _progress(err, len(ids), enabled=not args.no_progress and len(ids) > 1) as tick:
            report = run_compare(
                comparer.query,
                ids,
                ignore=config.shadow.ignore_fields,
                table=comparer.table,
                threshold=threshold,
                concurrency=args.concurrency,
                progress=tick,
                metadata=metadata,
                first=first,
            )
    elapsed = time.monotonic() - started
    report.metadata["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")  # type: ignore[index]
    report.metadata["duration_s"] = round(elapsed, 3)  # type: ignore[index]
    if dupes:
        err.write(f"coupon-shim compare: {dupes} duplicate stock id(s) skipped\n")
    if args.json:
        out.write(render_json(report))
    else:
        out.write(render_table(report, problems_only=args.problems_only))
    if args.fail_under is not None and not report.verdict.ready:
        return EXIT_BELOW_THRESHOLD
    return EXIT_OK


class _progress:
    """A rich progress bar on stderr (count, rate, ETA); a final line when not a terminal."""

    def __init__(self, err: TextIO, total: int, *, enabled: bool) -> None:
        self._err, self._total, self._enabled = err, total, enabled
        self._bar: Any = None
        self._task: Any = None
        self._started = time.monotonic()

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self._enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self._err)
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("compare"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("compare", total=self._total, rate="")
            self._bar.start()
        return self._tick

    def _tick(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._bar.update(self._task, completed=done, rate=f"{done / elapsed:.1f} stocks/s")

    def __exit__(self, *exc_info: object) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        elapsed = time.monotonic() - self._started
        rate = self._total / elapsed if elapsed > 0 else 0.0
        self._err.write(f"compared {self._total} stocks in {elapsed:.1f} s ({rate:.1f} stocks/s)\n")
        self._err.flush()


COMMAND = Command(
    name="compare",
    help="run both routes per stock, classify each, and give a readiness verdict",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=command,
)
