"""The ``coupon-shim`` command against the emulator on real loopback HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2
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


def test_demo_tells_the_story_on_one_screen() -> None:
    """demo (a real process): one summary table whose rows say route, outcome, sign, unmapped
    and mismatching fields; the shadow diff as legacy vs v3 values; "next:" pointers; no event
    lines mixed in; it fits on one screen."""
    from tests.test_cli_conventions import coupon_shim

    proc = coupon_shim("demo", COLUMNS="160")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # events are not interleaved: the table is made from them
    check_demo_summary(proc.stdout)


def test_demo_without_rich_prints_the_same_table_as_plain_text() -> None:
    """Without the cli extra (rich), the demo still tells the same story in aligned text."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['rich'] = None\n"
        "from shim.cli import main\n"
        "sys.exit(main(['demo']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "─" not in proc.stdout  # not rich's rules
    check_demo_summary(proc.stdout)


def check_demo_summary(out: str) -> None:
    """The demo's table rows, shadow diff and next steps are all there and right."""
    lines = out.splitlines()
    assert len(lines) <= 40
    rows = {
        int(m.group(1)): m.group(2).split()
        for m in (re.match(r"^(\d)\s+(.*)$", line) for line in lines)
        if m
    }
    assert sorted(rows) == list(range(1, 8))
    table = {i: " ".join(cells) for i, cells in rows.items()}
    assert all("verified" in table[i] for i in rows)
    assert "1757 legacy success verified -" in table[1]
    assert "9856099 legacy success verified -" in table[2]
    assert "404404 legacy COUPON_STOCK_NOT_FOUND verified -" in table[3]
    assert "1757 v3 success verified -" in table[4]
    assert "9856010 v3 success verified unmapped: coupon_value," in table[5]
    assert "404404 v3 COUPON_STOCK_NOT_FOUND verified -" in table[6]
    assert "9000000001 legacy success verified v3 mismatch: coupon_total, is_send_num" in table[7]
    diff = out.split("Shadow diff of stock 9000000001", 1)[1].split("next:")[0]
    diff_rows = [line.split() for line in diff.splitlines() if line.split()[:1] in (
        ["coupon_total"], ["is_send_num"])]  # fmt: skip
    assert sorted(diff_rows) == [["coupon_total", "1200", "1000"], ["is_send_num", "260", "250"]]
    next_steps = out.split("\nnext:\n", 1)[1]
    for command in ("coupon-shim sandbox", "coupon-shim compare", "coupon-shim query",
                    "coupon-shim report compare.json"):  # fmt: skip
        assert command in next_steps


def test_demo_verbose_groups_each_scenarios_events_under_it() -> None:
    """--verbose: each scenario's answer and events follow its heading, in order; the
    shadow call's event (emitted when the comparison finished) sits under the shadow one."""
    from tests.test_cli_conventions import coupon_shim

    proc = coupon_shim("demo", "--verbose", "--log-format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sections = re.split(r"^== (\d)\. .*$", proc.stdout, flags=re.M)
    by_number = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert sorted(by_number) == [str(i) for i in range(1, 8)]
    for number, body in by_number.items():
        events = [
            json.loads(line.split("event: ", 1)[1])
            for line in body.splitlines()
            if line.strip().startswith("event: ")
        ]
        calls = [e for e in events if e["event"] == "coupon_stock.query"]
        assert len(calls) == 1, (number, events)
        assert "<signature>" in body and "sign " in body
        if number == "7":
            assert calls[0]["shadow"] == "mismatch"
            assert calls[0]["mismatch_fields"] == sorted(DIVERGENT_FIELDS)
        if number == "5":
            assert calls[0]["unmapped"] == ["coupon_value", "coupon_mininumn"]


def test_migration_doc_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    """migration-doc --check returns 0: MIGRATION.md's tables match the packaged mapping."""
    code = main(["migration-doc", "--check", "--file", str(ROOT / "MIGRATION.md")])
    capsys.readouterr()
    assert code == 0
