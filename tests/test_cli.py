"""The ``coupon-shim`` command against the emulator on real loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shim import v2
from shim.cli import main
from shim.sandbox import DIVERGENT_FIELDS, Emulator, SandboxState
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
