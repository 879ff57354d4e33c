"""The report opened in a real headless Chromium (Debian's ``chromium``), driven by playwright.

Checks that every chart rendered (plotly's SVG elements exist and show the expected counts),
that the page requested nothing but its own file, and saves a screenshot. With
``COUPON_SHIM_UPDATE_SCREENSHOT=1`` the screenshot also replaces ``docs/report-screenshot.png``.

Skipped (with the reason) only when Chromium is absent and this is not CI; under CI
(``CI=true``) a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# private: the report's model, collection and rendering, tested directly
from shim._report.collect import aggregate, read_inputs

# private: the report's model, collection and rendering, tested directly
from shim._report.html import render_html

# private: the report's model, collection and rendering, tested directly
from shim._report.model import Thresholds

# private: the report's model, collection and rendering, tested directly
from shim._report.verdict import judge
from tests import report_data

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed, and CI must run the browser test")
        pytest.skip("chromium is not installed (apt-get install chromium); not CI, so skipped")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=exe,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
            device_scale_factor=1,
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    logs = report_data.write_logs(folder / "logs")
    doc = folder / "compare.json"
    doc.write_text(json.dumps(report_data.compare_doc(), indent=2), "utf-8")
    agg = aggregate(read_inputs([*map(str, logs), str(doc)]))
    path = folder / "report.html"
    path.write_text(render_html(agg, judge(agg), limits=Thresholds()), "utf-8")
    return path


@pytest.fixture(scope="module")
def loaded(browser_page: Any, report_file: Path) -> Any:
    requests: list[str] = []
    errors: list[str] = []
    browser_page.on("request", lambda r: requests.append(r.url))
    browser_page.on("pageerror", lambda e: errors.append(str(e)))
    browser_page.goto(report_file.as_uri())
    browser_page.wait_for_function("window.couponShimChartsReady === true", timeout=60_000)
    browser_page.wait_for_timeout(300)  # let plotly finish its layout pass
    browser_page.requests_seen = requests
    browser_page.errors_seen = errors
    return browser_page


def _bar_texts(page: Any, chart: str) -> list[str]:
    texts: list[str] = page.locator(f"#{chart} text.bartext").all_text_contents()
    return texts


def test_page_loads_nothing_but_itself(loaded: Any, report_file: Path) -> None:
    """The only request is the file itself: no CDN, font, image or tracking fetch."""
    assert loaded.requests_seen == [report_file.as_uri()]
    assert loaded.errors_seen == []


def test_mismatch_chart_shows_the_field_counts(loaded: Any) -> None:
    """One bar per field and source, labelled with the counts of the events (and compare)."""
    chart = "#chart-fields"
    assert loaded.locator(f"{chart} svg.main-svg").count() >= 1
    assert loaded.locator(f"{chart} g.trace.bars").count() == 2  # shadow, compare
    assert loaded.locator(f"{chart} g.trace.bars path").count() == 6
    ticks = loaded.locator(f"{chart} g.ytick text").all_text_contents()
    assert sorted(ticks) == ["coupon_total", "coupon_value", "is_send_num"]
    assert sorted(_bar_texts(loaded, "chart-fields")) == ["0", "1", "1", "3", "6", "6"]


def test_match_rate_chart_has_one_point_per_bucket(loaded: Any) -> None:
    """60 buckets of 5 s hold shadow comparisons: 60 markers on the match-rate line."""
    chart = "#chart-match-rate"
    assert loaded.locator(f"{chart} g.scatterlayer path.js-line").count() == 1
    assert loaded.locator(f"{chart} g.scatterlayer path.point").count() == 60
    assert loaded.locator(f"{chart} g.barlayer path").count() == 60


def test_latency_chart_labels_the_percentiles(loaded: Any) -> None:
    """p50/p90/p99 for legacy, v3 and v3 (shadow): 9 bars with their values in ms."""
    texts = _bar_texts(loaded, "chart-latency")
    assert len(texts) == 9
    ticks = loaded.locator("#chart-latency g.xtick text").all_text_contents()
    assert ticks == ["legacy", "v3", "v3 (shadow)"]
    assert "17.5" in texts  # v3 (shadow) p50: median of 8 + i % 20 over 300 calls


def test_causes_chart_counts_fallbacks_and_errors(loaded: Any) -> None:
    """Fallbacks, errors and shadow errors by cause, with counts and rates."""
    texts = sorted(_bar_texts(loaded, "chart-causes"))
    assert texts == ["4 (0.67%)", "4 (0.67%)", "4 (1.33%)"]
    labels = " ".join(loaded.locator("#chart-causes g.ytick text").all_text_contents())
    assert "fallback · v3→legacy: UpstreamError:http_status" in labels


def test_traffic_chart_has_a_trace_per_route(loaded: Any) -> None:
    """Share of traffic: one filled trace per route, legend legacy and v3."""
    chart = "#chart-traffic"
    assert loaded.locator(f"{chart} g.scatterlayer g.trace").count() == 2
    legend = loaded.locator(f"{chart} g.legend text.legendtext").all_text_contents()
    assert sorted(legend) == ["legacy", "v3"]


def test_compare_chart_and_verdict(loaded: Any) -> None:
    """compare classes with their counts; the verdict banner says not ready with reasons."""
    assert _bar_texts(loaded, "chart-compare") == ["8", "2", "1", "3", "0"]
    banner = loaded.locator("#verdict")
    assert "not ready" in banner.inner_text()
    assert banner.locator("li").count() == 2
    assert loaded.locator("body").get_attribute("data-verdict") == "not-ready"


def test_screenshot(loaded: Any, tmp_path: Path) -> None:
    """A full-page screenshot (PNG); refreshed into docs/ on request."""
    shot = tmp_path / "report.png"
    loaded.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if os.environ.get("COUPON_SHIM_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.is_file() and SCREENSHOT.read_bytes()[:8] == data[:8]
    assert "docs/report-screenshot.png" in (ROOT / "README.md").read_text("utf-8")
