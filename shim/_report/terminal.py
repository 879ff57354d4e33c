"""The report's one-screen terminal summary (``rich``, the ``cli`` extra)."""

from __future__ import annotations

import io
from typing import Any

from shim._report.model import (
    Aggregate,
    ReportVerdict,
    top_counts,
)

__all__ = ["render_summary"]


def render_summary(agg: Aggregate, verdict: ReportVerdict, *, width: int = 100) -> str:
    """A one-screen summary (rich): verdict, traffic, shadow, latency, top causes."""
    from rich import box
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    head = Text("verdict: " + verdict.text, style="bold")
    lines: list[Any] = [head, Text("next: " + verdict.next_step)]
    facts = Table(box=None, show_header=False, show_edge=False, pad_edge=False)
    for col in ("", "value"):
        facts.add_column(col, overflow="fold")
    share = ", ".join(
        f"{r} {agg.rate(n):.1f}%" for r, n in sorted(agg.by_route.items(), key=lambda kv: -kv[1])
    )
    facts.add_row("calls", f"{agg.calls:,} from {len(agg.files)} file(s); {share or '-'}")
    rate = agg.match_rate
    facts.add_row(
        "shadow",
        f"{agg.shadow_compared:,} compared, match rate "
        + (f"{rate:.2f}%" if rate is not None else "-")
        + f"; dropped {agg.shadow['dropped']:,}, sampled out {agg.shadow['sampled_out']:,}",
    )
    facts.add_row(
        "errors", f"{agg.rate(agg.error_calls):.2f}% ({top_counts(agg.errors, 2) or 'none'})"
    )
    facts.add_row(
        "fallbacks",
        f"{agg.rate(agg.fallback_calls):.2f}% ({top_counts(agg.fallbacks, 2) or 'none'})",
    )
    facts.add_row("mismatching fields", top_counts(agg.shadow_fields, 4) or "none")
    cmp = agg.compare_totals()
    if cmp["documents"]:
        pct = cmp["readiness_percent"]
        facts.add_row(
            "compare",
            f"{cmp['documents']} run(s), readiness "
            + (f"{pct:.2f}%" if pct is not None else "-")
            + " ("
            + ", ".join(f"{k} {v}" for k, v in sorted(cmp["counts"].items()))
            + ")",
        )
    lines.append(facts)
    lat = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=None)
    for col in ("latency ms", "n", "p50", "p90", "p99", "max"):
        lat.add_column(col, justify="left" if col == "latency ms" else "right")
    for route, p in agg.latency_percentiles().items():
        lat.add_row(route, f"{p['count']:,}", *(_ms(p[k]) for k in ("p50", "p90", "p99", "max")))
    if agg.latency:
        lines.append(lat)
    console.print(Panel(Group(*lines), title="coupon-shim readiness", expand=True))
    text = console.export_text()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"
