"""The data model of ``coupon-shim report``: what was read, the aggregate, the verdict.

:class:`Aggregate` holds only aggregates (counts by route, outcome, cause and field, latency
samples, per-second bins) and computes the figures the renderers show (percentiles, rates,
the time series). No I/O.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

__all__ = [
    "SHADOW_RESULTS",
    "Aggregate",
    "Inputs",
    "ReportVerdict",
    "Thresholds",
    "TimeBin",
    "percentile",
    "short_label",
    "top_counts",
]


SHADOW_RESULTS: Final = ("match", "mismatch", "error", "dropped", "sampled_out")
_MAX_LABEL: Final = 80
_MAX_LABELS: Final = 200  # distinct values kept per dimension; the rest count as "(other)"
_BUCKET_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
                        43200, 86400)  # fmt: skip
_MAX_BUCKETS: Final = 120


@dataclass
class Inputs:
    """What was read: event records, compare documents, and per-file counts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    compares: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0


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


def short_label(value: Any) -> str:
    """A value as a short, single-line label (long ones cut with "...")."""
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
        key = short_label(label)
        if key not in self and len(self) >= _MAX_LABELS:
            key = "(other)"
        self[key] += n


@dataclass
class TimeBin:
    """One time bucket of the series: calls per route and shadow results."""

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
    seconds: dict[int, TimeBin] = field(default_factory=dict)
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
                    counts[short_label(k)] += v
            for k, v in (summary.get("mismatches_by_field") or {}).items():
                if isinstance(v, int):
                    fields[short_label(k)] += v
            for g in summary.get("error_groups") or []:
                if isinstance(g, dict) and isinstance(g.get("count"), int):
                    causes[short_label(g.get("cause", "?"))] += g["count"]
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
        bins: dict[int, TimeBin] = {}
        for second, b in self.seconds.items():
            key = second - second % width
            target = bins.setdefault(key, TimeBin())
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


def top_counts(counter: Mapping[str, int], n: int = 3) -> str:
    """The ``n`` largest counts as ``"name count, ..."`` (ties by name), and how many more."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")
