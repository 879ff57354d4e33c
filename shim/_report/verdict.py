"""The report's verdict: ready to raise canary against :class:`Thresholds`, or why not (pure)."""

from __future__ import annotations

from shim._report.model import (
    Aggregate,
    ReportVerdict,
    Thresholds,
    top_counts,
)

__all__ = ["judge"]


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
            detail.append(f"fields {top_counts(agg.shadow_fields)}")
        if agg.shadow["error"]:
            detail.append(
                f"{agg.shadow['error']} shadow error(s): {top_counts(agg.shadow_errors, 2)}"
            )
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
            detail.append(f"fields {top_counts(cmp['mismatches_by_field'])}")
        if cmp["error_causes"]:
            detail.append(top_counts(cmp["error_causes"], 2))
        reasons.append(
            f"compare readiness {readiness:.2f}% < {lim.min_match_percent:g}%"
            + (f" ({'; '.join(detail)})" if detail else "")
        )
    if agg.calls:
        err = agg.rate(agg.error_calls)
        if err > lim.max_error_percent:
            reasons.append(
                f"error rate {err:.2f}% > {lim.max_error_percent:g}% ({top_counts(agg.errors, 2)})"
            )
        fb = agg.rate(agg.fallback_calls)
        if fb > lim.max_fallback_percent:
            reasons.append(
                f"fallback rate {fb:.2f}% > {lim.max_fallback_percent:g}% "
                f"({top_counts(agg.fallbacks, 2)})"
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
