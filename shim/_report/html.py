"""The HTML of ``coupon-shim report``: one self-contained, offline file with plotly charts.

plotly's own ``plotly.min.js`` (shipped inside the ``plotly`` Python package, read with
``plotly.offline.get_plotlyjs()``) is inlined, so the file opens on a closed network: the page
loads nothing (no CDN, no fonts, no images, no MathJax). Every text is HTML-escaped and every
label goes through the secret redactor; the chart data are aggregates only.

Chart containers (their ids are stable, the browser test reads them): ``chart-fields``
(mismatches per field), ``chart-match-rate`` (shadow match rate over time), ``chart-latency``
(latency percentiles by route), ``chart-causes`` (fallbacks and errors by cause),
``chart-traffic`` (share of traffic per route over time) and, with compare input,
``chart-compare`` (stocks per class).
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from shim._redaction import redact_text

if TYPE_CHECKING:
    from shim._report.model import Aggregate, ReportVerdict, Thresholds

__all__ = ["CHART_IDS", "render_html"]

CHART_IDS: Final = (
    "chart-fields",
    "chart-match-rate",
    "chart-latency",
    "chart-causes",
    "chart-traffic",
    "chart-compare",
)
_CONFIG: Final = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["sendDataToCloud"],
    "showLink": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "plotlyServerURL": "",
    "topojsonURL": "",
    "mathjax": None,
}
_COLORS: Final = {
    "legacy": "#7f7f7f",
    "v3": "#1f77b4",
    "legacy (shadow)": "#bcbd22",
    "v3 (shadow)": "#17becf",
}
_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",
sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{padding:18px 28px;background:#fff;border-bottom:1px solid #dde1e7}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:0 0 6px}
.meta{color:#5b6472;font-size:12px}
.verdict{margin:14px 28px;padding:14px 18px;border-radius:8px;font-size:15px}
.verdict.ready{background:#e6f4ea;border:1px solid #34a853}
.verdict.not-ready{background:#fce8e6;border:1px solid #d93025}
.verdict b{font-size:17px}.verdict ul{margin:6px 0 0 18px;padding:0}
.next{margin-top:6px;color:#333}
.facts{display:flex;flex-wrap:wrap;gap:10px;margin:0 28px}
.fact{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:8px 14px;min-width:120px}
.fact .v{font-size:18px;font-weight:600}.fact .k{font-size:11px;color:#5b6472}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px;
margin:14px 28px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px}
.chart{height:340px}.note{color:#5b6472;font-size:12px}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 10px 2px 0;text-align:left}
footer{margin:10px 28px 24px;color:#5b6472;font-size:11px}
"""


def _e(text: Any) -> str:
    return html.escape(redact_text(str(text)), quote=True)


def _clean(label: str) -> str:
    return redact_text(label)


def _script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element."""
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(value, cls=PlotlyJSONEncoder, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sorted(counter: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 13}},
        "template": "plotly_white",
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "legend": {"orientation": "h", "y": -0.2},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def _empty(title: str, note: str) -> dict[str, Any]:
    return {
        "data": [],
        "layout": _layout(
            title,
            xaxis={"visible": False},
            yaxis={"visible": False},
            annotations=[{"text": note, "showarrow": False, "font": {"size": 13}}],
        ),
    }


def _fields_chart(agg: Aggregate) -> dict[str, Any]:
    shadow = dict(agg.shadow_fields)
    compare = dict(agg.compare_totals()["mismatches_by_field"])
    names = [n for n, _ in _sorted({k: shadow.get(k, 0) + compare.get(k, 0)
                                    for k in shadow.keys() | compare.keys()})]  # fmt: skip
    if not names:
        return _empty("Mismatches per field", "no field differed")
    names.reverse()  # largest on top of a horizontal bar chart
    data = []
    for label, counts, color in (("shadow", shadow, "#d62728"), ("compare", compare, "#ff7f0e")):
        if counts:
            xs = [counts.get(n, 0) for n in names]
            data.append({
                "type": "bar", "orientation": "h", "name": label, "y": [_clean(n) for n in names],
                "x": xs, "text": [str(x) for x in xs], "textposition": "outside",
                "cliponaxis": False, "marker": {"color": color},
                "hovertemplate": "%{y}: %{x} mismatch(es)<extra>" + label + "</extra>",
            })  # fmt: skip
    return {
        "data": data,
        "layout": _layout("Mismatches per field", barmode="group",
                          xaxis={"title": {"text": "mismatches"}, "rangemode": "tozero"},
                          margin={"l": 150, "r": 40, "t": 40, "b": 50}),
    }  # fmt: skip


def _match_rate_chart(agg: Aggregate, series: dict[str, Any]) -> dict[str, Any]:
    times, rates, compared = series["times"], series["match_rate"], series["compared"]
    points = [(t, r, n) for t, r, n in zip(times, rates, compared, strict=True) if n]
    if not points:
        note = "no shadow comparison" if agg.shadow_compared == 0 else "events carry no timestamps"
        return _empty("Shadow match rate over time", note)
    return {
        "data": [
            {
                "type": "bar", "name": "comparisons", "x": [p[0] for p in points],
                "y": [p[2] for p in points], "yaxis": "y2", "marker": {"color": "#c6dbef"},
                "hovertemplate": "%{x}: %{y} comparison(s)<extra></extra>",
            },
            {
                "type": "scatter", "mode": "lines+markers", "name": "match rate %",
                "x": [p[0] for p in points], "y": [p[1] for p in points],
                "line": {"color": "#2ca02c"},
                "hovertemplate": "%{x}: %{y:.2f}% matched<extra></extra>",
            },
        ],
        "layout": _layout(
            f"Shadow match rate over time ({series['width_s']} s buckets)",
            yaxis={"title": {"text": "match rate %"}, "range": [0, 101]},
            yaxis2={"title": {"text": "comparisons"}, "overlaying": "y", "side": "right",
                    "showgrid": False, "rangemode": "tozero"},
            xaxis={"type": "date"},
        ),
    }  # fmt: skip


def _latency_chart(agg: Aggregate) -> dict[str, Any]:
    pct = agg.latency_percentiles()
    routes = [r for r in pct if pct[r]["count"]]
    if not routes:
        return _empty("Latency percentiles by route", "no latency recorded")
    data = []
    for q, color in (("p50", "#9ecae1"), ("p90", "#4292c6"), ("p99", "#08519c")):
        ys = [round(float(pct[r][q] or 0.0), 2) for r in routes]
        data.append({
            "type": "bar", "name": q, "x": [_clean(r) for r in routes], "y": ys,
            "text": [f"{y:.1f}" for y in ys], "textposition": "outside", "cliponaxis": False,
            "marker": {"color": color},
            "hovertemplate": "%{x} " + q + ": %{y:.2f} ms<extra></extra>",
        })  # fmt: skip
    return {
        "data": data,
        "layout": _layout("Latency percentiles by route (ms)", barmode="group",
                          yaxis={"title": {"text": "ms"}, "rangemode": "tozero"}),
    }  # fmt: skip


def _causes_chart(agg: Aggregate) -> dict[str, Any]:
    rows: list[tuple[str, int, str, float]] = []
    for label, n in _sorted(dict(agg.fallbacks)):
        rows.append((f"fallback · {label}", n, "fallback", agg.rate(n)))
    for label, n in _sorted(dict(agg.errors)):
        rows.append((f"error · {label}", n, "error", agg.rate(n)))
    compared = agg.shadow_compared
    for label, n in _sorted(dict(agg.shadow_errors)):
        rows.append((f"shadow error · {label}", n, "shadow error",
                     n * 100.0 / compared if compared else 0.0))  # fmt: skip
    if not rows:
        return _empty("Fallbacks and errors by cause", "no fallback and no error")
    rows.reverse()
    data = []
    for kind, color in (("fallback", "#ff7f0e"), ("error", "#d62728"), ("shadow error", "#9467bd")):
        mine = [r for r in rows if r[2] == kind]
        if mine:
            data.append({
                "type": "bar", "orientation": "h", "name": kind,
                "y": [_clean(r[0]) for r in mine], "x": [r[1] for r in mine],
                "text": [f"{r[1]} ({r[3]:.2f}%)" for r in mine], "textposition": "outside",
                "cliponaxis": False, "marker": {"color": color},
                "hovertemplate": "%{y}: %{text}<extra></extra>",
            })  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            "Fallbacks and errors by cause (count, % of calls; shadow: % of comparisons)",
            xaxis={"title": {"text": "count"}, "rangemode": "tozero"},
            margin={"l": 260, "r": 80, "t": 40, "b": 50},
        ),
    }


def _traffic_chart(agg: Aggregate, series: dict[str, Any]) -> dict[str, Any]:
    routes: dict[str, list[int]] = series["routes"]
    if not routes or not series["times"]:
        note = "no call" if agg.calls == 0 else "events carry no timestamps"
        return _empty("Share of traffic per route over time", note)
    data = [
        {
            "type": "scatter", "mode": "lines", "name": _clean(route), "x": series["times"],
            "y": counts, "stackgroup": "one", "groupnorm": "percent",
            "line": {"color": _COLORS.get(route, "#8c564b"), "width": 1},
            "hovertemplate": "%{x}: %{y:.1f}%<extra>" + _clean(route) + "</extra>",
        }
        for route, counts in sorted(routes.items())
    ]  # fmt: skip
    return {
        "data": data,
        "layout": _layout(
            f"Share of traffic per route over time ({series['width_s']} s buckets)",
            yaxis={"title": {"text": "% of calls"}, "range": [0, 100]},
            xaxis={"type": "date"},
        ),
    }


def _compare_chart(agg: Aggregate) -> dict[str, Any] | None:
    cmp = agg.compare_totals()
    if not cmp["documents"]:
        return None
    order = ("match", "expected_gap", "value_differs", "not_found_both", "error")
    colors = ("#2ca02c", "#98df8a", "#d62728", "#c7c7c7", "#9467bd")
    counts = [int(cmp["counts"].get(k, 0)) for k in order]
    return {
        "data": [{
            "type": "bar", "x": list(order), "y": counts, "text": [str(c) for c in counts],
            "textposition": "outside", "cliponaxis": False, "marker": {"color": list(colors)},
            "hovertemplate": "%{x}: %{y} stock(s)<extra></extra>",
        }],
        "layout": _layout("compare: stocks per class", showlegend=False,
                          yaxis={"title": {"text": "stocks"}, "rangemode": "tozero"}),
    }  # fmt: skip


def _fact(key: str, value: str) -> str:
    return f'<div class="fact"><div class="v">{_e(value)}</div><div class="k">{_e(key)}</div></div>'


def render_html(
    agg: Aggregate,
    verdict: ReportVerdict,
    *,
    title: str = "coupon-shim readiness report",
    limits: Thresholds | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The whole report as one HTML string (plotly.js inlined; nothing fetched at view time)."""
    import plotly
    from plotly.offline import get_plotlyjs

    from shim import __version__

    series = agg.series()
    charts: list[tuple[str, str, dict[str, Any]]] = [
        ("chart-fields", "Mismatches per field", _fields_chart(agg)),
        ("chart-match-rate", "Match rate over time", _match_rate_chart(agg, series)),
        ("chart-latency", "Latency percentiles by route", _latency_chart(agg)),
        ("chart-causes", "Fallback and error rates by cause", _causes_chart(agg)),
        ("chart-traffic", "Share of traffic per route", _traffic_chart(agg, series)),
    ]
    compare = _compare_chart(agg)
    if compare is not None:
        charts.append(("chart-compare", "compare classes", compare))
    when = (generated_at or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    rate = agg.match_rate
    cmp = agg.compare_totals()
    facts = [
        _fact("calls", f"{agg.calls:,}"),
        _fact("served by v3", f"{verdict.v3_share_percent:.1f}%"),
        _fact("shadow comparisons", f"{agg.shadow_compared:,}"),
        _fact("shadow match rate", "-" if rate is None else f"{rate:.2f}%"),
        _fact("error rate", f"{agg.rate(agg.error_calls):.2f}%"),
        _fact("fallback rate", f"{agg.rate(agg.fallback_calls):.2f}%"),
        _fact("merchants", f"{len(agg.merchants)}"),
    ]
    if cmp["documents"]:
        pct = cmp["readiness_percent"]
        facts.append(_fact("compare readiness", "-" if pct is None else f"{pct:.2f}%"))
    klass = "ready" if verdict.ready else "not-ready"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in verdict.reasons)
    span = f"{agg.as_dict()['first'] or '-'} → {agg.as_dict()['last'] or '-'}"
    lim = limits
    limits_text = (
        f"ready needs: match rate ≥ {lim.min_match_percent:g}%, ≥ {lim.min_comparisons} "
        f"comparisons, errors ≤ {lim.max_error_percent:g}%, fallbacks ≤ "
        f"{lim.max_fallback_percent:g}%"
        + (f", v3 p99 ≤ {lim.max_v3_p99_ms:g} ms" if lim.max_v3_p99_ms is not None else "")
        if lim is not None
        else ""
    )
    files = "".join(
        f"<tr><td>{_e(f['name'])}</td><td>{f['events']:,}</td><td>{f['compares']}</td>"
        f"<td>{f['skipped']}</td></tr>"
        for f in agg.files
    )
    sections = "".join(
        f'<section><h2>{_e(heading)}</h2><div id="{cid}" class="chart"></div></section>'
        for cid, heading, _ in charts
    )
    figures = _script_json({cid: fig for cid, _, fig in charts})
    summary = _script_json({"verdict": verdict.as_dict(), "aggregate": agg.as_dict()})
    untimed = (
        f'<p class="note">{agg.untimed:,} call event(s) carry no timestamp: counted, but not '
        "on the time charts.</p>"
        if agg.untimed
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style></head>
<body data-verdict="{klass}">
<header><h1>{_e(title)}</h1>
<div class="meta">generated {_e(when)} by coupon-shim {_e(__version__)} (plotly
{_e(plotly.__version__)}) · events {_e(span)} · {len(agg.files)} input file(s)</div></header>
<div class="verdict {klass}" id="verdict"><b>{
        _e(verdict.text if verdict.ready else "not ready")
    }</b>{f"<ul>{reasons}</ul>" if reasons else ""}
<div class="next"><b>next step:</b> {_e(verdict.next_step)}</div>
<div class="meta">{_e(limits_text)}</div></div>
<div class="facts">{"".join(facts)}</div>
{untimed}
<div class="grid">{sections}</div>
<footer><table><tr><th>input</th><th>events</th><th>compare runs</th><th>skipped lines</th>
</tr>{files}</table></footer>
<script type="application/json" id="report-data">{summary}</script>
<script>{get_plotlyjs()}</script>
<script>
(function () {{
  var figures = {figures};
  var config = {_script_json(_CONFIG)};
  Object.keys(figures).forEach(function (id) {{
    var f = figures[id];
    Plotly.newPlot(id, f.data, f.layout, config);
  }});
  window.couponShimChartsReady = true;
}})();
</script>
</body></html>
"""
