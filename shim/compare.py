"""The report behind ``coupon-shim compare``: both routes per stock, a field-level diff.

This module has no argv parsing and no network code: the CLI hands :func:`run_compare` a
``query_via(route, stock_id)`` callable that returns the v2 dict of that route (or raises a
:class:`~shim.errors.ShimError`), and prints :func:`render_table` or :func:`render_json`.

The legacy answer is the reference ("served" in the diffs) and v3 the candidate. Readiness is
the share of stocks whose answers match: a stock with an error on either route is not ready.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO

from shim.errors import InputError, Route, ShimError, UpstreamError
from shim.shadow import FieldDiff, diff_answers

__all__ = [
    "CompareReport",
    "CompareRow",
    "CompareSummary",
    "ProgressPrinter",
    "RouteError",
    "read_ids_file",
    "render_json",
    "render_table",
    "run_compare",
]

RowStatus = Literal["match", "mismatch", "error"]
_ROUTES: Final[tuple[Route, Route]] = ("legacy", "v3")
_MAX_MESSAGE: Final = 300
_MAX_CELL: Final = 40


@dataclass(frozen=True, slots=True)
class RouteError:
    """A route that gave no answer for a stock: the error's class, kind and message only."""

    route: Route
    error: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"route": self.route, "error": self.error, "message": self.message}


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One stock: ``match``, ``mismatch`` (with ``diffs``) or ``error`` (with ``errors``)."""

    stock_id: str
    status: RowStatus
    diffs: tuple[FieldDiff, ...] = ()
    errors: tuple[RouteError, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; diffs use ``legacy``/``v3`` for the two values."""
        return {
            "stock_id": self.stock_id,
            "status": self.status,
            "diffs": [{"field": d.field, "legacy": d.served, "v3": d.other} for d in self.diffs],
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class CompareSummary:
    """Totals over all stocks. ``readiness_percent`` is ``matched / total * 100`` (0 if empty)."""

    total: int
    matched: int
    mismatched: int
    errors: int
    mismatches_by_field: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    errors_by_route: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def readiness_percent(self) -> float:
        """Share of stocks whose two answers match, in percent (2 decimals)."""
        return round(self.matched * 100.0 / self.total, 2) if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "total": self.total,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "errors": self.errors,
            "mismatches_by_field": dict(sorted(self.mismatches_by_field.items())),
            "errors_by_route": dict(sorted(self.errors_by_route.items())),
            "readiness_percent": self.readiness_percent,
        }


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Rows in input order, plus the summary."""

    rows: tuple[CompareRow, ...]
    summary: CompareSummary

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"summary": self.summary.as_dict(), "rows": [r.as_dict() for r in self.rows]}


def _route_error(route: Route, exc: ShimError) -> RouteError:
    kind = exc.kind if isinstance(exc, UpstreamError) else None
    name = type(exc).__name__ + (f"({kind})" if kind else "")
    message = " ".join(str(exc).split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return RouteError(route, name, message)


def run_compare(
    query_via: Callable[[str, str], Mapping[str, str]],
    stock_ids: Sequence[str],
    *,
    ignore: frozenset[str],
    progress: Callable[[int, int], None] | None = None,
) -> CompareReport:
    """Query every stock through both routes and diff the answers.

    Args:
        query_via: ``query_via(route, stock_id)`` returns the v2 dict for ``route``
            (``"legacy"`` or ``"v3"``) or raises a :class:`~shim.errors.ShimError`, which is
            recorded for that stock and route (its class, kind and message: shim messages
            never hold secrets). Other exceptions are bugs and propagate.
        stock_ids: the stocks, compared in this order.
        ignore: v2 fields left out of the diff (e.g. ``nonce_str``, ``sign``).
        progress: called with ``(done, total)`` after each stock.

    Returns:
        The report.
    """
    rows: list[CompareRow] = []
    by_field: Counter[str] = Counter()
    by_route: Counter[str] = Counter()
    total = len(stock_ids)
    for n, stock_id in enumerate(stock_ids, 1):
        answers: dict[str, Mapping[str, str]] = {}
        errors: list[RouteError] = []
        for route in _ROUTES:
            try:
                answers[route] = query_via(route, stock_id)
            except ShimError as exc:
                errors.append(_route_error(route, exc))
                by_route[route] += 1
        if errors:
            row = CompareRow(stock_id, "error", (), tuple(errors))
        else:
            diffs = diff_answers(answers["legacy"], answers["v3"], ignore=ignore)
            by_field.update(d.field for d in diffs)
            row = CompareRow(stock_id, "mismatch" if diffs else "match", diffs)
        rows.append(row)
        if progress is not None:
            progress(n, total)
    status = Counter(r.status for r in rows)
    summary = CompareSummary(
        total=total,
        matched=status["match"],
        mismatched=status["mismatch"],
        errors=status["error"],
        mismatches_by_field=MappingProxyType(dict(by_field)),
        errors_by_route=MappingProxyType(dict(by_route)),
    )
    return CompareReport(tuple(rows), summary)


def _cell(value: str | None) -> str:
    if value is None:
        return "(missing)"
    text = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    if text == "":
        return '""'
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for line in lines:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [fmt(headers), fmt(["-" * w for w in widths])]
    out.extend(fmt(line) for line in lines)
    return out


def render_table(report: CompareReport) -> str:
    """A readable field-level diff table followed by the readiness summary.

    One line per matching stock, one per differing field, one per failed route.
    """
    lines: list[list[str]] = []
    for row in report.rows:
        if row.status == "match":
            lines.append([row.stock_id, "match", "", "", ""])
        for d in row.diffs:
            lines.append([row.stock_id, "mismatch", d.field, _cell(d.served), _cell(d.other)])
        for e in row.errors:
            text = f"{e.error}: {e.message}"
            legacy, v3 = (text, "") if e.route == "legacy" else ("", text)
            lines.append([row.stock_id, "error", f"({e.route})", legacy, v3])
    out = _table(["STOCK", "STATUS", "FIELD", "LEGACY", "V3"], lines) if lines else []
    s = report.summary
    if out:
        out.append("")
    out.append(
        f"Compared {s.total} stock(s): {s.matched} matched, {s.mismatched} mismatched, "
        f"{s.errors} with errors."
    )
    if s.mismatches_by_field:
        out.append("Mismatches by field:")
        out.extend(
            f"  {name}: {count}"
            for name, count in sorted(s.mismatches_by_field.items(), key=lambda kv: (-kv[1], kv[0]))
        )
    if s.errors_by_route:
        out.append("Errors by route:")
        out.extend(f"  {route}: {count}" for route, count in sorted(s.errors_by_route.items()))
    out.append(f"Readiness: {s.readiness_percent:.2f}% of stocks give the same answer on v3.")
    return "\n".join(out) + "\n"


def render_json(report: CompareReport) -> str:
    """The report as indented JSON (``summary`` then ``rows``), UTF-8 text kept readable."""
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n"


def read_ids_file(path: str | os.PathLike[str]) -> list[str]:
    """Read stock ids, one per line.

    Blank lines and ``#`` comments (whole-line or trailing) are skipped; surrounding
    whitespace is stripped; duplicates are kept once, in first-seen order.

    Raises:
        InputError: the file cannot be read or holds no id (``field="ids_file"``).
    """
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise InputError(f"cannot read the ids file: {reason}", field="ids_file") from None
    ids: dict[str, None] = {}
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            ids.setdefault(item)
    if not ids:
        raise InputError("the ids file holds no stock id", field="ids_file")
    return list(ids)


class ProgressPrinter:
    """Writes ``compared N/M`` lines to a stream (stderr), at most every ``interval_s``.

    The first and the last update are always written. Use it as ``run_compare``'s
    ``progress`` for long runs.

    Args:
        stream: where to write (default ``sys.stderr``, looked up at each write).
        interval_s: minimum time between two lines.
        clock: a monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval_s
        self._clock = clock
        self._last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` stocks are compared."""
        now = self._clock()
        if done < total and self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(f"compared {done}/{total}\n")
        stream.flush()
