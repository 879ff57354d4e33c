"""Rendering a compare report: the terminal table (``rich``, the ``cli`` extra) and JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from shim._compare.classify import top_counts
from shim._compare.model import ROW_CLASSES, CompareReport

if TYPE_CHECKING:
    pass

__all__ = ["render_json", "render_table"]


_MAX_CELL: Final = 48
_EXAMPLES: Final = 5


def _cell(value: str | None) -> str:
    if value is None:
        return "(missing)"
    text = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    if text == "":
        return '""'
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLES])
    return shown + (f" (+{len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else "")


def render_table(
    report: CompareReport, *, width: int | None = None, problems_only: bool = False
) -> str:
    """The report as text: a field-level table, grouped errors, totals and the verdict line.

    One line per matching (or not-found) stock unless ``problems_only``, one per differing
    field, one per documented gap; errors are not rows but one line per cause. Columns are
    aligned by display width (CJK text takes two cells), by ``rich``.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(
        width=width or 200, record=True, file=io.StringIO(), color_system=None, highlight=False
    )
    rows = [r for r in report.rows if r.klass != "error"]
    if problems_only:
        rows = [r for r in rows if r.klass not in ("match", "not_found_both")]
    if rows:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
        for name in ("STOCK", "CLASS", "FIELD", "LEGACY", "V3"):
            table.add_column(name, overflow="fold")
        for row in rows:
            if row.klass == "match":
                table.add_row(row.stock_id, "match", "", "", "")
            elif row.klass == "not_found_both":
                table.add_row(row.stock_id, "not_found_both", "", row.err_code or "", "")
            for d in row.diffs:
                table.add_row(
                    row.stock_id, "value_differs", d.field, _cell(d.served), _cell(d.other)
                )
            for gap in row.gaps:
                table.add_row(row.stock_id, "expected_gap", gap, "(present)", "(unmapped)")
        console.print(table)
    s, c = report.summary, report.summary.counts
    if s.error_groups:
        console.print("Errors (one line per cause):")
        for g in s.error_groups:
            console.print(
                f"  {g.count} stock(s): {g.cause}: {g.sample_message}; e.g. "
                f"{_examples(g.stock_ids)}",
                soft_wrap=True,
            )
    console.print(
        f"Compared {s.total} stock(s): "
        + ", ".join(f"{c.get(k, 0)} {k}" for k in ROW_CLASSES)
        + ".",
        soft_wrap=True,
    )
    if s.mismatches_by_field:
        console.print(
            f"Fields that differ: {top_counts(s.mismatches_by_field, 10)}.", soft_wrap=True
        )
    if s.gaps_by_field:
        console.print(f"Documented gaps: {top_counts(s.gaps_by_field, 10)}.", soft_wrap=True)
    console.print(f"Verdict: {report.verdict.text}", soft_wrap=True)
    text = console.export_text()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def render_json(report: CompareReport) -> str:
    """The report as indented JSON, UTF-8 text kept readable."""
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n"
