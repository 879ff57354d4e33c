"""Tests for shim.compare: the report, its table and JSON renderings, ids files, progress."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from shim.compare import ProgressPrinter, read_ids_file, render_json, render_table, run_compare
from shim.errors import InputError, UpstreamError

IGNORE = frozenset({"nonce_str", "sign"})
BASE = {
    "return_code": "SUCCESS",
    "result_code": "SUCCESS",
    "coupon_stock_id": "",
    "coupon_value": "5",
    "coupon_stock_status": "4",
    "nonce_str": "n",
    "sign": "S",
}


def fake_query_via(route: str, stock_id: str) -> Mapping[str, str]:
    """legacy and v3 agree except stock 2 (value, status differ) and stock 3 (v3 times out)."""
    answer = dict(BASE, coupon_stock_id=stock_id, nonce_str=f"{route}-nonce", sign=f"{route}-sig")
    if route == "v3" and stock_id == "2":
        answer.update(coupon_value="500", coupon_stock_status="8")
    if route == "v3" and stock_id == "3":
        raise UpstreamError("timed out after 5.0 s", route="v3", kind="timeout")
    if route == "v3" and stock_id == "1":
        answer["coupon_value"] = "05"  # representation only
    return answer


def test_report_rows_and_summary() -> None:
    """Matches, a mismatch and an error are classified per stock and totalled in the summary."""
    calls: list[tuple[int, int]] = []
    report = run_compare(
        fake_query_via,
        ["1", "2", "3", "4"],
        ignore=IGNORE,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert [r.status for r in report.rows] == ["match", "mismatch", "error", "match"]
    assert [d.field for d in report.rows[1].diffs] == ["coupon_stock_status", "coupon_value"]
    err = report.rows[2].errors[0]
    assert (err.route, err.error) == ("v3", "UpstreamError(timeout)")
    assert "timed out" in err.message
    s = report.summary
    assert (s.total, s.matched, s.mismatched, s.errors) == (4, 2, 1, 1)
    assert dict(s.mismatches_by_field) == {"coupon_stock_status": 1, "coupon_value": 1}
    assert dict(s.errors_by_route) == {"v3": 1}
    assert s.readiness_percent == 50.0
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_table_shows_fields_values_and_summary() -> None:
    """The table names differing fields with both values, the failed route, and the readiness."""
    text = render_table(run_compare(fake_query_via, ["1", "2", "3", "4"], ignore=IGNORE))
    lines = text.splitlines()
    assert lines[0].split() == ["STOCK", "STATUS", "FIELD", "LEGACY", "V3"]
    assert any(ln.split() == ["2", "mismatch", "coupon_value", "5", "500"] for ln in lines)
    assert any(ln.split() == ["2", "mismatch", "coupon_stock_status", "4", "8"] for ln in lines)
    assert any(ln.startswith("3") and "error" in ln and "(v3)" in ln for ln in lines)
    assert "nonce" not in text and "-sig" not in text
    assert "4 stock(s): 2 matched, 1 mismatched, 1 with errors" in text
    assert "  coupon_value: 1" in lines and "  v3: 1" in lines
    assert "Readiness: 50.00%" in text


def test_json_is_machine_readable() -> None:
    """The JSON rendering carries the same rows and summary counts."""
    data = json.loads(render_json(run_compare(fake_query_via, ["1", "2", "3"], ignore=IGNORE)))
    assert data["summary"] == {
        "total": 3,
        "matched": 1,
        "mismatched": 1,
        "errors": 1,
        "mismatches_by_field": {"coupon_stock_status": 1, "coupon_value": 1},
        "errors_by_route": {"v3": 1},
        "readiness_percent": 33.33,
    }
    row = data["rows"][1]
    assert row["status"] == "mismatch"
    assert {"field": "coupon_value", "legacy": "5", "v3": "500"} in row["diffs"]
    assert data["rows"][2]["errors"][0]["route"] == "v3"


def test_empty_run_and_non_shim_errors() -> None:
    """An empty run reports zero readiness; a non-shim exception (a bug) propagates."""
    report = run_compare(fake_query_via, [], ignore=IGNORE)
    assert report.summary.readiness_percent == 0.0
    assert "Compared 0 stock(s)" in render_table(report)

    def broken(route: str, stock_id: str) -> Mapping[str, str]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_compare(broken, ["1"], ignore=IGNORE)


def test_read_ids_file(tmp_path: Path) -> None:
    """Ids files skip blanks and # comments, strip whitespace and keep each id once in order."""
    f = tmp_path / "ids.txt"
    f.write_text("# stocks to check\n1757\n\n  1758  \n1759 # trailing note\n1757\n", "utf-8")
    assert read_ids_file(f) == ["1757", "1758", "1759"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n", "utf-8")
    with pytest.raises(InputError):
        read_ids_file(tmp_path / "empty.txt")
    with pytest.raises(InputError) as ei:
        read_ids_file(tmp_path / "missing.txt")
    assert ei.value.field == "ids_file"


def test_progress_printer_throttles() -> None:
    """Progress lines are written at most every interval, always for the first and last update."""
    now = [0.0]
    out = io.StringIO()
    printer = ProgressPrinter(out, interval_s=0.5, clock=lambda: now[0])
    for done in range(1, 11):
        printer(done, 10)
        now[0] += 0.2
    assert out.getvalue().splitlines() == [
        "compared 1/10",
        "compared 4/10",
        "compared 7/10",
        "compared 10/10",
    ]
