"""``coupon-shim report``: reading many (gzip, prefixed) logs, the aggregates, the verdict, the
HTML's self-containment and secrecy, and a real shadow run against the emulator."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog

from shim import CouponStockShim

# private: the event names and schema the assertions read
from shim._events import configure_cli_logging

# private: the report's model, collection and rendering, tested directly
from shim._report.collect import aggregate, read_inputs

# private: the report's model, collection and rendering, tested directly
from shim._report.html import CHART_IDS, render_html

# private: the report's model, collection and rendering, tested directly
from shim._report.model import Thresholds, percentile

# private: the report's model, collection and rendering, tested directly
from shim._report.verdict import judge
from shim.cli import main
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, SandboxState
from tests import report_data
from tests.conftest import MD5_MCH


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    return report_data.write_logs(tmp_path / "logs")


def _oracle() -> dict[str, Any]:
    """The expected figures, counted straight from the generated events."""
    evs = report_data.events()
    shadow = Counter(e["shadow"] for e in evs if "shadow" in e)
    fields = Counter(f for e in evs for f in e.get("mismatch_fields", []))
    lat: dict[str, list[float]] = {}
    for e in evs:
        lat.setdefault(e["route"], []).append(e["latency_ms"])
        if "shadow_latency_ms" in e:
            lat.setdefault("v3 (shadow)", []).append(e["shadow_latency_ms"])
    return {
        "routes": Counter(e["route"] for e in evs),
        "outcomes": Counter(e["outcome"] for e in evs),
        "shadow": shadow,
        "fields": fields,
        "fallbacks": sum(1 for e in evs if e["fallback"]),
        "errors": sum(1 for e in evs if e["outcome"] == "error"),
        "latency": lat,
    }


def test_reads_many_files_gzip_prefixes_and_skips_noise(logs: list[Path]) -> None:
    """Three processes' files (plain, gzip, shipper-prefixed): every event is read once."""
    inputs = read_inputs([str(p) for p in logs])
    calls = [e for e in inputs.events if e.get("event") == "coupon_stock.query"]
    assert len(calls) == report_data.N_CALLS
    assert inputs.skipped_lines == 2  # the banner and the half-written last line
    assert [f["name"] for f in inputs.files] == [p.name for p in logs]
    assert [f["events"] for f in inputs.files] == [201, 201, 200]


def test_aggregates_match_the_events(logs: list[Path]) -> None:
    """Counts by route, outcome, shadow result, field and cause; latency percentiles."""
    agg = aggregate(read_inputs([str(p) for p in logs]))
    want = _oracle()
    assert agg.calls == report_data.N_CALLS
    assert dict(agg.by_route) == dict(want["routes"])
    assert dict(agg.by_outcome) == dict(want["outcomes"])
    assert {k: agg.shadow[k] for k in want["shadow"]} == dict(want["shadow"])
    assert (agg.shadow["match"], agg.shadow["mismatch"], agg.shadow["error"]) == (287, 9, 4)
    assert dict(agg.shadow_fields) == dict(want["fields"]) == {
        "coupon_total": 6, "is_send_num": 6, "coupon_value": 3,
    }  # fmt: skip
    assert agg.match_rate == pytest.approx(287 * 100 / 300)
    assert dict(agg.fallbacks) == {"v3→legacy: UpstreamError:http_status": want["fallbacks"]}
    assert (
        dict(agg.errors)
        == {"v3: UpstreamError:timeout": want["errors"]}
        == {"v3: UpstreamError:timeout": 4}
    )
    assert dict(agg.shadow_errors) == {"v3: UpstreamError:timeout": 4}
    pct = agg.latency_percentiles()
    for route, values in want["latency"].items():
        # statistics' "inclusive" quantiles interpolate between closest ranks like ours
        q = statistics.quantiles(values, n=100, method="inclusive")
        assert pct[route]["count"] == len(values)
        assert pct[route]["p50"] == pytest.approx(q[49])
        assert pct[route]["p90"] == pytest.approx(q[89])
        assert pct[route]["p99"] == pytest.approx(q[98])
        assert pct[route]["max"] == max(values)
    assert (agg.reloads_applied, agg.reloads_rejected) == (1, 1)


def test_time_series(logs: list[Path]) -> None:
    """600 s of events → 5 s buckets; routes and match rate per bucket add up."""
    agg = aggregate(read_inputs([str(p) for p in logs]))
    series = agg.series()
    assert series["width_s"] == 5 and len(series["times"]) == 120
    assert series["times"][0] == "2026-11-30 10:00:00"
    total = [sum(v[i] for v in series["routes"].values()) for i in range(120)]
    assert total == [5] * 120
    assert sum(series["compared"]) == 300 and series["compared"][60:] == [0] * 60
    assert series["match_rate"][60:] == [None] * 60
    # bucket 1 (10:00:05-09) holds call 7, a mismatch: 4 of 5 matched
    assert series["match_rate"][1] == 80.0
    assert series["routes"]["v3"][:60] == [0] * 60 and sum(series["routes"]["v3"]) == 196


def test_verdict_not_ready_with_reasons_then_ready(logs: list[Path], tmp_path: Path) -> None:
    """Mismatches keep it not ready (with the fields named); a clean run is ready, next step."""
    agg = aggregate(read_inputs([str(p) for p in logs]))
    verdict = judge(agg)
    assert not verdict.ready
    assert verdict.text.startswith("not ready: shadow match rate 95.67% < 99.5%")
    assert "coupon_total 6" in verdict.text
    assert judge(agg, Thresholds(min_match_percent=95, max_error_percent=1)).ready
    assert not judge(agg, Thresholds(min_match_percent=95, max_error_percent=0.5)).ready
    assert not judge(agg, Thresholds(min_match_percent=95, min_comparisons=1000)).ready
    clean = tmp_path / "clean.jsonl"
    clean.write_text(
        "\n".join(
            json.dumps(
                {
                    "event": "coupon_stock.query",
                    "route": "legacy",
                    "outcome": "success",
                    "shadow": "match",
                    "shadow_route": "v3",
                    "latency_ms": 3,
                    "timestamp": 1_700_000_000 + i,
                }
            )
            for i in range(150)
        ),
        "utf-8",
    )
    ok = judge(aggregate(read_inputs([str(clean)])))
    assert ok.ready and ok.text == "ready to raise canary"
    assert 'mode = "canary"' in ok.next_step
    empty = judge(aggregate(read_inputs([])))
    assert not empty.ready and "no coupon_stock.query events" in empty.text


def test_compare_documents_join_the_verdict(logs: list[Path], tmp_path: Path) -> None:
    """A compare --json document adds its classes and readiness."""
    doc = tmp_path / "compare.json"
    doc.write_text(json.dumps(report_data.compare_doc(), indent=2), "utf-8")
    agg = aggregate(read_inputs([str(doc)]))
    totals = agg.compare_totals()
    assert totals["counts"]["not_found_both"] == 3 and totals["readiness_percent"] == 90.91
    verdict = judge(agg, Thresholds(min_comparisons=5))
    assert not verdict.ready and "compare readiness 90.91% < 99.5%" in verdict.text


def test_percentile_edges() -> None:
    """Empty, single value, interpolation."""
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def _html(logs: list[Path], tmp_path: Path) -> str:
    doc = tmp_path / "compare.json"
    doc.write_text(json.dumps(report_data.compare_doc()), "utf-8")
    agg = aggregate(read_inputs([*map(str, logs), str(doc)]))
    return render_html(agg, judge(agg), limits=Thresholds())


def test_html_is_self_contained_and_fetches_nothing(logs: list[Path], tmp_path: Path) -> None:
    """No src/href/url() to any host, no <link>, no iframe; plotly.js is inlined."""
    page = _html(logs, tmp_path)
    assert len(page) > 3_000_000  # plotly.min.js is in the file
    for cid in CHART_IDS:
        assert f'id="{cid}"' in page
    assert re.search(r"<link\b", page, re.I) is None
    assert re.search(r"<iframe\b", page, re.I) is None
    # attributes that would fetch: src= / href= with a scheme, and CSS url()
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    assert re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:)?//""", markup, re.I) is None
    assert re.search(r"url\(\s*['\"]?(https?:)?//", markup, re.I) is None
    assert "<script src" not in page.lower()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert data["aggregate"]["calls"] == report_data.N_CALLS


def test_html_holds_no_secret(
    logs: list[Path], tmp_path: Path, sandbox_state: SandboxState
) -> None:
    """A secret a careless logger put in events (an error text, a v2_key field) never reaches
    the report; nor do error messages at all."""
    page = _html(logs, tmp_path)
    assert report_data.SECRET not in page
    assert "upstream said" not in page and "timed out after" not in page
    assert sandbox_state.merchants[MD5_MCH].v2_key not in page


def test_cli_writes_the_report_and_prints_a_summary(
    logs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command: summary on stdout, the HTML written, exit 0 (1 with --fail-not-ready)."""
    out_html = tmp_path / "r.html"
    code = main(["report", *map(str, logs), "-o", str(out_html)])
    out, err = capsys.readouterr()
    assert code == 0 and out_html.stat().st_size > 3_000_000
    assert "verdict: not ready: shadow match rate 95.67%" in out
    assert f"wrote {out_html}" in out and "2 line(s) were not JSON" in err
    assert len(out.splitlines()) <= 40  # one screen
    code = main(["report", "--no-html", "--fail-not-ready", *map(str, logs)])
    assert code == 1
    code = main(["report", "--no-html", "--fail-not-ready", "--min-match-rate", "95",
                 *map(str, logs)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code = main(["report", str(tmp_path / "missing.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and "cannot read missing.jsonl" in err and err.count("\n") == 1


def test_a_real_shadow_run_and_compare_make_the_report(
    make_config: Any, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    server: Any, sandbox_state: SandboxState,
) -> None:  # fmt: skip
    """Events from a shim in shadow mode (JSON, as an app would log them) plus compare --json:
    the divergent stock's fields are counted once per call, on both sides of the report."""
    log = tmp_path / "app.jsonl"
    config = make_config("shadow")
    stocks = ["1757", "9856000", DIVERGENT_STOCK_ID, "1717", DIVERGENT_STOCK_ID]
    with log.open("w", encoding="utf-8") as fh:
        configure_cli_logging("json", stream=fh)
        try:
            with CouponStockShim(config, transport=emulator.mock_transport()) as shim:
                for stock in stocks:
                    shim.query_coupon_stock(coupon_stock_id=stock, mch_id=MD5_MCH)
                assert shim.wait_for_shadows(10)
        finally:
            structlog.reset_defaults()
    toml = tmp_path / "loop.toml"
    sandbox_state.write_config(toml, v2_base_url=server.base_url, v3_base_url=server.base_url)
    code = main(["--quiet", "compare", "--json", "--config", str(toml), "--mch-id", MD5_MCH,
                 "1757", DIVERGENT_STOCK_ID, "404404"])  # fmt: skip
    cmp_out, _ = capsys.readouterr()
    assert code == 0
    cmp_file = tmp_path / "compare.json"
    cmp_file.write_text(cmp_out, "utf-8")
    agg = aggregate(read_inputs([str(log), str(cmp_file)]))
    assert agg.calls == len(stocks)
    assert agg.shadow["match"] == 3 and agg.shadow["mismatch"] == 2
    assert dict(agg.shadow_fields) == dict.fromkeys(DIVERGENT_FIELDS, 2)
    totals = agg.compare_totals()
    assert totals["counts"] == {"match": 1, "expected_gap": 0, "value_differs": 1,
                                "not_found_both": 1, "error": 0}  # fmt: skip
    assert totals["mismatches_by_field"] == dict.fromkeys(DIVERGENT_FIELDS, 1)
    verdict = judge(agg, Thresholds(min_comparisons=1))
    assert not verdict.ready and "coupon_total 2" in verdict.text
