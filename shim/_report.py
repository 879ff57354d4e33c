"""``coupon-shim report``: a readiness report from the fleet's events and ``compare`` runs.

Reads JSON-lines events (the CLI's ``--log-format json``, or an application's structlog /
stdlib-logging JSON; many files from many processes; ``.gz`` accepted; lines with a prefix
before the JSON object, as log shippers add, are read from the first ``{``) and/or
``compare --json`` documents, aggregates them (:class:`Aggregate`), judges readiness against
:class:`Thresholds` (:func:`judge`) and writes one self-contained offline HTML file
(:mod:`shim._report_html`, the ``report`` extra) plus a one-screen terminal summary (``rich``).

Only aggregates leave this module: counts by route, outcome, cause and field, latency
percentiles, rates over time. No event's free text (error messages, request fields) is copied
into the report, so nothing secret can reach it even from a mis-configured logger.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "Aggregate",
    "ReportVerdict",
    "Thresholds",
    "add_event",
    "aggregate",
    "aggregate_paths",
    "judge",
    "percentile",
    "read_inputs",
    "render_summary",
]

QUERY_EVENT: Final = "coupon_stock.query"
COMPARE_FORMAT: Final = "coupon-shim.compare/1"
SHADOW_RESULTS: Final = ("match", "mismatch", "error", "dropped", "sampled_out")
_TIME_KEYS: Final = ("timestamp", "@timestamp", "time", "ts")
_MAX_LABEL: Final = 80
_MAX_LABELS: Final = 200  # distinct values kept per dimension; the rest count as "(other)"
_BUCKET_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
                        43200, 86400)  # fmt: skip
_MAX_BUCKETS: Final = 120


# ---------------------------------------------------------------------------------- reading


@dataclass
class Inputs:
    """What was read: event records, compare documents, and per-file counts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    compares: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0


def _open_text(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _json_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    if not text.startswith("{"):
        start = text.find("{")
        if start < 0:
            return None
        text = text[start:]
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_compare(doc: Mapping[str, Any]) -> bool:
    return doc.get("format") == COMPARE_FORMAT and isinstance(doc.get("summary"), dict)


def read_inputs(
    paths: Sequence[str], on_event: Callable[[dict[str, Any]], None] | None = None
) -> Inputs:
    """Read every file (``-`` is stdin; gzip is detected by its magic bytes).

    A file whose first non-blank line is exactly ``{`` (``compare --json`` output) is read as
    one document; any other file is streamed as JSON lines (lines that are not JSON objects
    are counted as skipped), so memory stays flat however large the logs are.

    Args:
        paths: the files.
        on_event: called with each event as it is read; then events are not kept in
            :attr:`Inputs.events` (see :func:`aggregate_paths`).

    Raises:
        OSError: a file cannot be opened (the caller names it).
        gzip.BadGzipFile: a ``.gz`` file is corrupt.
    """
    got = Inputs()
    for path in paths:
        name = "(stdin)" if path == "-" else Path(path).name
        n_events = n_compares = n_skipped = 0
        with _open_text(path) as fh:
            first = ""
            for first in fh:
                if first.strip():
                    break
            doc = None
            lines: Iterable[str] = _chain(first, fh)
            if first.strip() == "{":
                rest = first + fh.read()
                try:
                    doc = json.loads(rest)
                except ValueError:
                    doc = None
                lines = [] if isinstance(doc, dict) else rest.splitlines()
            if isinstance(doc, dict) and _is_compare(doc):
                got.compares.append(doc)
                n_compares += 1
            for line in lines:
                obj = _json_object(line)
                if obj is None:
                    if line.strip():
                        n_skipped += 1
                    continue
                if _is_compare(obj):
                    got.compares.append(obj)
                    n_compares += 1
                else:
                    if on_event is None:
                        got.events.append(obj)
                    else:
                        on_event(obj)
                    n_events += 1
        got.skipped_lines += n_skipped
        got.files.append(
            {"name": name, "events": n_events, "compares": n_compares, "skipped": n_skipped}
        )
    return got


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


# ------------------------------------------------------------------------------ aggregation


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of sorted values, linear between closest ranks."""
    n = len(sorted_values)
    if n == 0:
        return None
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def _label(value: Any) -> str:
    if isinstance(value, str):
        return _text_label(value)
    return _text_label(str(value))


@functools.lru_cache(maxsize=4096)
def _text_label(value: str) -> str:
    text = " ".join(value.split())
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 3] + "..."


class _Bounded(Counter[str]):
    """A counter that keeps at most ``_MAX_LABELS`` distinct labels (others → "(other)")."""

    def add(self, label: Any, n: int = 1) -> None:
        key = _label(label)
        if key not in self and len(self) >= _MAX_LABELS:
            key = "(other)"
        self[key] += n


def _event_time(event: Mapping[str, Any]) -> float | None:
    for key in _TIME_KEYS:
        value = event.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            return v / 1000.0 if v > 1e11 else v  # epoch milliseconds
        if isinstance(value, str):
            text = value.strip().replace(" ", "T", 1)
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
    return None


def _name(event: Mapping[str, Any]) -> str:
    name = event.get("event")
    if not isinstance(name, str):
        name = event.get("message") if isinstance(event.get("message"), str) else ""
    return name  # type: ignore[return-value]


@dataclass
class _Bin:
    routes: Counter[str] = field(default_factory=Counter)
    shadow: Counter[str] = field(default_factory=Counter)


@dataclass
class Aggregate:
    """Everything the report shows, computed from the inputs."""

    calls: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_reason: _Bounded = field(default_factory=_Bounded)
    merchants: _Bounded = field(default_factory=_Bounded)
    latency: dict[str, array[float]] = field(
        default_factory=lambda: defaultdict(lambda: array("d"))
    )
    shadow: Counter[str] = field(default_factory=Counter)
    shadow_fields: _Bounded = field(default_factory=_Bounded)
    shadow_errors: _Bounded = field(default_factory=_Bounded)
    fallbacks: _Bounded = field(default_factory=_Bounded)
    errors: _Bounded = field(default_factory=_Bounded)
    unmapped: _Bounded = field(default_factory=_Bounded)
    other_events: _Bounded = field(default_factory=_Bounded)
    reloads_applied: int = 0
    reloads_rejected: int = 0
    breaker_opened: int = 0
    untimed: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    seconds: dict[int, _Bin] = field(default_factory=dict)
    compares: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0

    # ------------------------------------------------------------------ derived figures

    @property
    def shadow_compared(self) -> int:
        """Shadow comparisons that ran (match + mismatch + error)."""
        return self.shadow["match"] + self.shadow["mismatch"] + self.shadow["error"]

    @property
    def match_rate(self) -> float | None:
        """Percent of shadow comparisons that matched; ``None`` without any."""
        n = self.shadow_compared
        return self.shadow["match"] * 100.0 / n if n else None

    def rate(self, count: int) -> float:
        """``count`` as a percent of all calls (0 without calls)."""
        return count * 100.0 / self.calls if self.calls else 0.0

    @property
    def fallback_calls(self) -> int:
        """Calls served by the other route after the first failed."""
        return sum(self.fallbacks.values())

    @property
    def error_calls(self) -> int:
        """Calls that raised a typed error to the caller."""
        return self.by_outcome["error"]

    def latency_percentiles(self) -> dict[str, dict[str, float | int | None]]:
        """Per route (and ``<route> (shadow)``): count, p50, p90, p99, p99.9, max in ms."""
        out: dict[str, dict[str, float | int | None]] = {}
        for route in sorted(self.latency):
            values = sorted(self.latency[route])
            out[route] = {
                "count": len(values),
                "p50": percentile(values, 50),
                "p90": percentile(values, 90),
                "p99": percentile(values, 99),
                "p99.9": percentile(values, 99.9),
                "max": values[-1] if values else None,
            }
        return out

    def compare_totals(self) -> dict[str, Any]:
        """The compare documents added up: classes, fields, error causes, readiness."""
        counts: Counter[str] = Counter()
        fields: Counter[str] = Counter()
        causes: Counter[str] = Counter()
        for doc in self.compares:
            summary = doc.get("summary", {})
            for k, v in (summary.get("counts") or {}).items():
                if isinstance(v, int):
                    counts[_label(k)] += v
            for k, v in (summary.get("mismatches_by_field") or {}).items():
                if isinstance(v, int):
                    fields[_label(k)] += v
            for g in summary.get("error_groups") or []:
                if isinstance(g, dict) and isinstance(g.get("count"), int):
                    causes[_label(g.get("cause", "?"))] += g["count"]
        comparable = sum(counts.values()) - counts["not_found_both"]
        ready = counts["match"] + counts["expected_gap"]
        return {
            "documents": len(self.compares),
            "counts": dict(counts),
            "mismatches_by_field": dict(fields),
            "error_causes": dict(causes),
            "comparable": comparable,
            "ready": ready,
            "readiness_percent": round(ready * 100.0 / comparable, 2) if comparable else None,
        }

    def bucket_width(self) -> int:
        """Seconds per time bucket: the smallest step giving at most 120 buckets."""
        if self.first_ts is None or self.last_ts is None:
            return 1
        span = max(1.0, self.last_ts - self.first_ts + 1)
        for step in _BUCKET_STEPS:
            if span / step <= _MAX_BUCKETS:
                return step
        return _BUCKET_STEPS[-1]

    def series(self) -> dict[str, Any]:
        """Per time bucket: calls by route, shadow match/mismatch/error, match rate."""
        width = self.bucket_width()
        bins: dict[int, _Bin] = {}
        for second, b in self.seconds.items():
            key = second - second % width
            target = bins.setdefault(key, _Bin())
            target.routes.update(b.routes)
            target.shadow.update(b.shadow)
        keys = sorted(bins)
        routes = sorted({r for b in bins.values() for r in b.routes})
        times = [
            datetime.fromtimestamp(k, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for k in keys
        ]
        match_rate: list[float | None] = []
        compared: list[int] = []
        for k in keys:
            s = bins[k].shadow
            n = s["match"] + s["mismatch"] + s["error"]
            compared.append(n)
            match_rate.append(round(s["match"] * 100.0 / n, 3) if n else None)
        return {
            "width_s": width,
            "times": times,
            "routes": {r: [bins[k].routes[r] for k in keys] for r in routes},
            "match_rate": match_rate,
            "compared": compared,
        }

    def as_dict(self) -> dict[str, Any]:
        """The aggregates as JSON-ready data (what the HTML's charts are drawn from)."""
        return {
            "calls": self.calls,
            "by_route": dict(self.by_route),
            "by_outcome": dict(self.by_outcome),
            "by_reason": dict(self.by_reason),
            "merchants": len(self.merchants),
            "latency_ms": self.latency_percentiles(),
            "shadow": {k: self.shadow[k] for k in SHADOW_RESULTS},
            "shadow_compared": self.shadow_compared,
            "match_rate_percent": self.match_rate,
            "mismatches_by_field": dict(self.shadow_fields),
            "shadow_errors": dict(self.shadow_errors),
            "fallbacks_by_cause": dict(self.fallbacks),
            "errors_by_cause": dict(self.errors),
            "unmapped": dict(self.unmapped),
            "reloads": {"applied": self.reloads_applied, "rejected": self.reloads_rejected},
            "breaker_opened": self.breaker_opened,
            "untimed_events": self.untimed,
            "first": _iso(self.first_ts),
            "last": _iso(self.last_ts),
            "compare": self.compare_totals(),
            "files": self.files,
            "skipped_lines": self.skipped_lines,
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else None


def _is_breaker_open(name: str, event: Mapping[str, Any]) -> bool:
    if "breaker" not in name:
        return False
    state = event.get("state", event.get("to_state", event.get("to")))
    return state == "open" or name.endswith(("opened", ".open"))


def aggregate(inputs: Inputs) -> Aggregate:
    """Add up the events and compare documents read by :func:`read_inputs`."""
    agg = Aggregate()
    for event in inputs.events:
        add_event(agg, event)
    _finish(agg, inputs)
    return agg


def aggregate_paths(paths: Sequence[str]) -> Aggregate:
    """Read and add up the files in one streaming pass (no event is kept in memory)."""
    agg = Aggregate()
    inputs = read_inputs(paths, on_event=lambda event: add_event(agg, event))
    _finish(agg, inputs)
    return agg


def _finish(agg: Aggregate, inputs: Inputs) -> None:
    agg.compares = list(inputs.compares)
    agg.files = list(inputs.files)
    agg.skipped_lines = inputs.skipped_lines


def add_event(agg: Aggregate, event: Mapping[str, Any]) -> None:
    """Add one event (of any name) to the aggregate."""
    name = _name(event)
    if name == QUERY_EVENT:
        _add_call(agg, event)
        return
    if name == "coupon_shim.config_reloaded":
        agg.reloads_applied += 1
    elif name in ("coupon_shim.config_reload_failed", "coupon_shim.config_reload_rejected"):
        agg.reloads_rejected += 1
    elif _is_breaker_open(name, event):
        agg.breaker_opened += 1
    if name:
        agg.other_events.add(name)


def _add_call(agg: Aggregate, event: Mapping[str, Any]) -> None:
    agg.calls += 1
    route = _label(event.get("route") or "(unknown)")
    agg.by_route[route] += 1
    agg.by_outcome[_label(event.get("outcome") or "(unknown)")] += 1
    if event.get("reason"):
        agg.by_reason.add(event["reason"])
    if event.get("mch_id"):
        agg.merchants.add(event["mch_id"])
    latency = _number(event.get("latency_ms"))
    if latency is not None:
        agg.latency[route].append(latency)
    shadow = event.get("shadow")
    if isinstance(shadow, str) and shadow in SHADOW_RESULTS:
        agg.shadow[shadow] += 1
        fields = event.get("mismatch_fields")
        if shadow == "mismatch" and isinstance(fields, list):
            for f in fields:
                agg.shadow_fields.add(f)
        if shadow == "error":
            agg.shadow_errors.add(
                f"{event.get('shadow_route') or 'shadow'}: {event.get('shadow_error') or '?'}"
            )
        shadow_latency = _number(event.get("shadow_latency_ms"))
        if shadow_latency is not None and shadow in ("match", "mismatch", "error"):
            agg.latency[f"{_label(event.get('shadow_route') or 'other')} (shadow)"].append(
                shadow_latency
            )
    if event.get("fallback") and event.get("outcome") != "error":
        src = event.get("fallback_from") or ("v3" if route == "legacy" else "legacy")
        agg.fallbacks.add(f"{src}→{route}: {event.get('fallback_cause') or '?'}")
    if event.get("outcome") == "error":
        agg.errors.add(f"{route}: {event.get('error_kind') or '?'}")
    for key in event.get("unmapped") or []:
        agg.unmapped.add(key)
    ts = _event_time(event)
    if ts is None:
        agg.untimed += 1
        return
    agg.first_ts = ts if agg.first_ts is None else min(agg.first_ts, ts)
    agg.last_ts = ts if agg.last_ts is None else max(agg.last_ts, ts)
    b = agg.seconds.get(int(ts))
    if b is None:
        b = agg.seconds[int(ts)] = _Bin()
    b.routes[route] += 1
    if isinstance(shadow, str) and shadow in ("match", "mismatch", "error"):
        b.shadow[shadow] += 1


# ---------------------------------------------------------------------------------- verdict


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What "ready to raise canary" requires (percentages 0-100)."""

    min_match_percent: float = 99.5
    min_comparisons: int = 100
    max_error_percent: float = 1.0
    max_fallback_percent: float = 1.0
    max_v3_p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ReportVerdict:
    """The report's verdict: ready or not, why not, and the next step."""

    ready: bool
    text: str
    reasons: tuple[str, ...]
    next_step: str
    v3_share_percent: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ready": self.ready,
            "text": self.text,
            "reasons": list(self.reasons),
            "next_step": self.next_step,
            "v3_share_percent": round(self.v3_share_percent, 2),
        }


def _top(counter: Mapping[str, int], n: int = 3) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")


def judge(agg: Aggregate, limits: Thresholds | None = None) -> ReportVerdict:
    """Ready to raise canary, or not with the reasons, and what to do next."""
    lim = limits or Thresholds()
    reasons: list[str] = []
    cmp = agg.compare_totals()
    evidence = agg.shadow_compared + (cmp["comparable"] or 0)
    if not agg.calls and not cmp["documents"]:
        reasons.append("no coupon_stock.query events and no compare output in the input")
    elif evidence < lim.min_comparisons:
        reasons.append(
            f"not enough evidence: {evidence} comparison(s) (shadow + compare), "
            f"need at least {lim.min_comparisons}"
        )
    rate = agg.match_rate
    if rate is not None and rate < lim.min_match_percent:
        detail = []
        if agg.shadow_fields:
            detail.append(f"fields {_top(agg.shadow_fields)}")
        if agg.shadow["error"]:
            detail.append(f"{agg.shadow['error']} shadow error(s): {_top(agg.shadow_errors, 2)}")
        reasons.append(
            f"shadow match rate {rate:.2f}% < {lim.min_match_percent:g}%"
            + (f" ({'; '.join(detail)})" if detail else "")
        )
    readiness = cmp["readiness_percent"]
    if cmp["documents"] and readiness is None:
        reasons.append("compare found no stock on either route")
    elif readiness is not None and readiness < lim.min_match_percent:
        detail = []
        if cmp["mismatches_by_field"]:
            detail.append(f"fields {_top(cmp['mismatches_by_field'])}")
        if cmp["error_causes"]:
            detail.append(_top(cmp["error_causes"], 2))
        reasons.append(
            f"compare readiness {readiness:.2f}% < {lim.min_match_percent:g}%"
            + (f" ({'; '.join(detail)})" if detail else "")
        )
    if agg.calls:
        err = agg.rate(agg.error_calls)
        if err > lim.max_error_percent:
            reasons.append(
                f"error rate {err:.2f}% > {lim.max_error_percent:g}% ({_top(agg.errors, 2)})"
            )
        fb = agg.rate(agg.fallback_calls)
        if fb > lim.max_fallback_percent:
            reasons.append(
                f"fallback rate {fb:.2f}% > {lim.max_fallback_percent:g}% "
                f"({_top(agg.fallbacks, 2)})"
            )
    if agg.breaker_opened:
        reasons.append(f"a circuit breaker opened {agg.breaker_opened} time(s)")
    if lim.max_v3_p99_ms is not None:
        pct = agg.latency_percentiles()
        for route in ("v3", "v3 (shadow)"):
            p99 = pct.get(route, {}).get("p99")
            if isinstance(p99, float) and p99 > lim.max_v3_p99_ms:
                reasons.append(f"{route} p99 latency {p99:.1f} ms > {lim.max_v3_p99_ms:g} ms")
    share = agg.rate(agg.by_route["v3"])
    ready = not reasons
    if ready:
        text = "ready to raise canary"
        if share == 0:
            step = 'start the canary: [routing] mode = "canary", canary_percent = 1'
        elif share < 99.5:
            step = (
                f"raise [routing] canary_percent (v3 served {share:.1f}% of calls); "
                "re-run the report at the next step"
            )
        else:
            step = 'v3 serves everything: set [routing] mode = "v3" (keep fallback_to_legacy)'
    else:
        text = "not ready: " + "; ".join(reasons)
        step = (
            "hold the current share: fix what the reasons name, run shadow or compare again, "
            "and lower canary_percent (or set the kill switch) if callers see errors"
        )
    return ReportVerdict(ready, text, tuple(reasons), step, share)


# --------------------------------------------------------------------------- terminal summary


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
    facts.add_row("errors", f"{agg.rate(agg.error_calls):.2f}% ({_top(agg.errors, 2) or 'none'})")
    facts.add_row(
        "fallbacks", f"{agg.rate(agg.fallback_calls):.2f}% ({_top(agg.fallbacks, 2) or 'none'})"
    )
    facts.add_row("mismatching fields", _top(agg.shadow_fields, 4) or "none")
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
