"""The ``coupon-shim`` command against the emulator on real loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shim import v2
from shim.cli import main
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, SandboxState
from tests.conftest import MD5_MCH

ROOT = Path(__file__).resolve().parent.parent
MATCHING = ["1757", "9856000"]


@pytest.fixture
def config_path(sandbox_state: SandboxState, server: Any, tmp_path: Path) -> Path:
    """A shim.toml written by the sandbox, pointing at the loopback emulator (legacy mode)."""
    return sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_table_shows_matches_and_the_divergent_fields(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has a match line per agreeing stock and one mismatch line per divergent field."""
    code, out, err = run(
        capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
        *MATCHING, DIVERGENT_STOCK_ID,
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STOCK", "STATUS", "FIELD", "LEGACY", "V3"]
    for stock in MATCHING:
        assert [stock, "match"] in [line.split() for line in lines]
    divergent = [line.split() for line in lines if line.startswith(DIVERGENT_STOCK_ID)]
    assert [row[:3] for row in divergent] == [
        [DIVERGENT_STOCK_ID, "mismatch", f] for f in sorted(DIVERGENT_FIELDS)
    ]
    assert all(row[3] != row[4] for row in divergent)
    assert "Compared 3 stock(s): 2 matched, 1 mismatched, 0 with errors." in out
    assert "Readiness: 66.67%" in out
    assert "compared 3/3" in err  # progress goes to stderr, not into the report
    assert emulator.request_counts == {"v2": 3, "v3": 3}


def test_compare_json_summary_counts(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one JSON document whose summary counts are right, errors included."""
    emulator.set_fault("v3", "9856002", "bad_signature")
    code, out, _ = run(
        capsys, "--quiet", "compare", "--json", "--config", str(config_path), "--mch-id", MD5_MCH,
        *MATCHING, DIVERGENT_STOCK_ID, "404404", "9856002", "9856099",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["summary"] == {
        "total": 6,
        "matched": 3,  # an unknown stock is COUPON_STOCK_NOT_FOUND on both sides: a match
        "mismatched": 2,
        "errors": 1,
        "mismatches_by_field": {
            **dict.fromkeys(DIVERGENT_FIELDS, 1),
            "err_code": 1,
            "err_code_des": 1,
        },
        "errors_by_route": {"v3": 1},
        "readiness_percent": 50.0,
    }
    rows = {row["stock_id"]: row for row in report["rows"]}
    assert [d["field"] for d in rows[DIVERGENT_STOCK_ID]["diffs"]] == sorted(DIVERGENT_FIELDS)
    assert rows["404404"]["status"] == "match"
    (error,) = rows["9856002"]["errors"]
    assert error["route"] == "v3" and error["error"].startswith("SignatureError")
    # another merchant's stock: v2 says COUPON_STOCK_ID_NOT_VALID, while v3 answers 404
    # RESOURCE_NOT_EXISTS, which the spec's table maps to COUPON_STOCK_NOT_FOUND
    (diff,) = [d for d in rows["9856099"]["diffs"] if d["field"] == "err_code"]
    assert diff == {
        "field": "err_code",
        "legacy": "COUPON_STOCK_ID_NOT_VALID",
        "v3": "COUPON_STOCK_NOT_FOUND",
    }


def test_compare_reads_an_ids_file(
    config_path: Path, tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ids-file ids (comments, blanks and duplicates skipped) are added to those on the line."""
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# stocks to check\n1757\n\n{DIVERGENT_STOCK_ID}  # divergent\n1757\n")
    code, out, _ = run(
        capsys, "--quiet", "compare", "--json", "--config", str(config_path),
        "--mch-id", MD5_MCH, "--ids-file", str(ids), "9856000",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert [r["stock_id"] for r in report["rows"]] == ["9856000", "1757", DIVERGENT_STOCK_ID]
    assert report["summary"]["matched"] == 2 and report["summary"]["mismatched"] == 1


def test_compare_without_ids_is_a_usage_error(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """compare with no ids and no file says so and exits 2."""
    code, out, err = run(capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH)
    assert code == 2 and out == "" and "stock ids" in err


@pytest.mark.parametrize("route", [None, "v3"])
def test_query_console_says_which_route_served_and_why(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str], route: str | None
) -> None:
    """In console format, query ends with a line naming the serving route and the reason."""
    extra = ["--route", route] if route else []
    code, out, err = run(
        capsys, "query", "--config", str(config_path), "--mch-id", MD5_MCH, *extra, "1757"
    )
    assert code == 0
    json.loads(out)  # stdout stays the bare v2 dict
    last = err.strip().splitlines()[-1]
    want = "v3 (reason: explicit" if route else "legacy (reason: mode"
    assert last.startswith(f"coupon-shim: served by {want}"), err


@pytest.mark.parametrize("route", [None, "legacy", "v3"])
def test_query_prints_a_verifiable_v2_dict(
    config_path: Path,
    sandbox_state: SandboxState,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    route: str | None,
) -> None:
    """query prints the v2 answer as JSON on stdout (events on stderr); its sign verifies."""
    extra = ["--route", route] if route else []
    code, out, err = run(
        capsys, "--log-format", "json", "query", "--config", str(config_path),
        "--mch-id", MD5_MCH, *extra, "1757",
    )  # fmt: skip
    assert code == 0
    answer = json.loads(out)
    merchant = sandbox_state.merchants[MD5_MCH]
    v2.verify_answer(answer, key=merchant.v2_key, sign_type=merchant.v2_sign_type)
    assert answer["coupon_stock_id"] == "1757"
    assert emulator.request_counts == {"v2" if route != "v3" else "v3": 1}
    (event,) = [json.loads(line) for line in err.splitlines()]
    assert event["event"] == "coupon_stock.query"
    # which route served and why: routing's reason, or "explicit" for --route
    assert event["route"] == (route or "legacy")
    assert event["reason"] == ("explicit" if route else "mode")
    assert event["outcome"] == "success"


def test_query_error_is_reported_without_a_traceback(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid argument exits 2 with the typed error on stderr and nothing on stdout."""
    code, out, err = run(
        capsys, "--quiet", "query", "--config", str(config_path), "--mch-id", "10000777", "1757"
    )
    assert code == 2 and out == ""
    assert err.startswith("coupon-shim: InputError:") and "Traceback" not in err


def test_demo_runs_and_shows_verified_signs_and_the_shadow_mismatch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """demo exits 0, says every sign verified, and shows the divergent stock's mismatch."""
    code, out, err = run(capsys, "demo")
    assert code == 0
    assert out.count("[sign verified with the v2 key]") == 7
    assert "mismatches=1" in out
    assert all(field in out.split("shadow totals:")[1] for field in DIVERGENT_FIELDS)
    assert "coupon_stock.query" in err


def test_migration_doc_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    """migration-doc --check returns 0: MIGRATION.md's tables match the packaged mapping."""
    code = main(["migration-doc", "--check", "--file", str(ROOT / "MIGRATION.md")])
    capsys.readouterr()
    assert code == 0
