"""``coupon-shim compare``: classes, verdict, exit codes, grouping, breakers, concurrency, JSON.

Against the emulator's seeded stocks over real loopback HTTP (the CLI) and over the in-process
transport (the :class:`~shim._compare.collect.Comparer`), plus the pure classification on hand-made
answers.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rich.cells import cell_len

from shim import CouponStockShim, InputError, ShimConfig, UpstreamError

# private: compare's model, classification and rendering, tested directly
from shim._compare.classify import classify

# private: compare's model, classification and rendering, tested directly
from shim._compare.collect import Comparer, dedupe_ids, read_ids_file, run_compare

# private: compare's model, classification and rendering, tested directly
from shim._compare.render import render_json, render_table

# private: the sans-IO flow, driven directly with scripted answers
from shim._flow import RouteResult

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import load_mapping
from shim.cli import main
from shim.sandbox import DIVERGENT_FIELDS, DIVERGENT_STOCK_ID, Emulator, SandboxState
from tests.conftest import MD5_MCH

MATCHING = ["1717", "1757", "9856000", "9856001", "9856002", "9856003", "9856020", "9856030"]
GAP_STOCKS = {  # stocks whose v3 view lacks values v2 had; the mapping leaves them out
    "9856010": {"coupon_value", "coupon_mininumn"},
    "9856011": {"coupon_value", "coupon_mininumn", "coupon_total", "max_quota", "coupon_budget"},
}
NOT_FOUND = ["404404", "404405", "777"]
IGNORE = frozenset({"nonce_str", "sign"})


@pytest.fixture
def config_path(sandbox_state: SandboxState, server: Any, tmp_path: Path) -> Path:
    """A shim.toml written by the sandbox, pointing at the loopback emulator."""
    return sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def compare_json(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> dict[str, Any]:
    code, out, err = run(
        capsys, "--quiet", "compare", "--json", "--config", str(config), "--mch-id", MD5_MCH, *args
    )
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


# ------------------------------------------------------------------ the emulator's stocks


def test_seeded_stocks_get_the_right_classes_and_verdict(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every seeded stock of the MD5 merchant, unknown ids and the divergent stock, by class."""
    ids = [*MATCHING, *GAP_STOCKS, DIVERGENT_STOCK_ID, *NOT_FOUND]
    data = compare_json(capsys, config_path, *ids)
    classes = {row["stock_id"]: row["class"] for row in data["rows"]}
    assert classes == {
        **dict.fromkeys(MATCHING, "match"),
        **dict.fromkeys(GAP_STOCKS, "expected_gap"),
        DIVERGENT_STOCK_ID: "value_differs",
        **dict.fromkeys(NOT_FOUND, "not_found_both"),
    }
    rows = {row["stock_id"]: row for row in data["rows"]}
    for stock, gaps in GAP_STOCKS.items():
        assert set(rows[stock]["gaps"]) == gaps and rows[stock]["diffs"] == []
    assert [d["field"] for d in rows[DIVERGENT_STOCK_ID]["diffs"]] == sorted(DIVERGENT_FIELDS)
    assert {d["legacy"] for d in rows[DIVERGENT_STOCK_ID]["diffs"]} == {"1200", "260"}
    assert rows["404404"]["err_code"] == "COUPON_STOCK_NOT_FOUND"
    s = data["summary"]
    assert s["counts"] == {
        "match": 8, "expected_gap": 2, "value_differs": 1, "not_found_both": 3, "error": 0,
    }  # fmt: skip
    assert (s["total"], s["comparable"], s["ready"]) == (14, 11, 10)
    assert s["readiness_percent"] == round(10 * 100 / 11, 2)
    assert s["mismatches_by_field"] == dict.fromkeys(DIVERGENT_FIELDS, 1)
    assert s["gaps_by_field"]["coupon_value"] == 2
    assert data["verdict"]["ready"] is False
    assert "90.91%" in data["verdict"]["text"] and "coupon_total 1" in data["verdict"]["text"]
    assert emulator.request_counts == {"v2": 14, "v3": 14}


def test_unknown_ids_only_are_not_ready_and_fail_under_fails(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list of ids that exist nowhere is not "99 % ready": no readiness, exit 1 with a gate."""
    ids = [str(500000 + i) for i in range(40)]
    code, out, _ = run(
        capsys, "--quiet", "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
        "--fail-under", "1", "--concurrency", "8", *ids,
    )  # fmt: skip
    assert code == 1
    assert "Compared 40 stock(s): 0 match, 0 expected_gap, 0 value_differs, 40 not_found_both" in (
        out
    )
    assert "Verdict: NOT READY: no stock was found on either route (40 of 40)" in out


@pytest.mark.parametrize(("threshold", "code"), [("90", 0), ("90.91", 1), ("100", 1)])
def test_fail_under_sets_the_exit_code(
    config_path: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    threshold: str,
    code: int,
) -> None:
    """10 of 11 comparable stocks are ready (90.909 → 90.91 %): exit 0 at 90, 1 above."""
    ids = [*MATCHING, *GAP_STOCKS, DIVERGENT_STOCK_ID, "404404"]
    got, out, _ = run(
        capsys, "--quiet", "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
        "--fail-under", threshold, *ids,
    )  # fmt: skip
    verdict = [line for line in out.splitlines() if line.startswith("Verdict:")]
    assert len(verdict) == 1
    assert got == code  # 90.91 is above 90.909...: below the gate, though it prints as 90.91
    assert verdict[0].startswith("Verdict: READY" if code == 0 else "Verdict: NOT READY")


def test_table_rows_and_cjk_alignment(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per stock / field; columns line up by display width with CJK values."""
    code, out, _ = run(
        capsys, "--quiet", "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
        "1757", DIVERGENT_STOCK_ID, "9856010", "9856099", "404404",
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STOCK", "CLASS", "FIELD", "LEGACY", "V3"]
    split = [line.split() for line in lines]
    assert ["1757", "match"] in split
    assert [DIVERGENT_STOCK_ID, "value_differs", "coupon_total", "1200", "1000"] in split
    assert ["9856010", "expected_gap", "coupon_value", "(present)", "(unmapped)"] in split
    assert ["404404", "not_found_both", "COUPON_STOCK_NOT_FOUND"] in split
    # another merchant's stock: v2 says COUPON_STOCK_ID_NOT_VALID with a CJK description, v3 a
    # 404 mapped to COUPON_STOCK_NOT_FOUND: a value difference, shown in aligned columns
    cjk = [ln for ln in lines if ln.startswith("9856099") and "err_code_des" in ln]
    assert len(cjk) == 1 and re.search(r"[\u4e00-\u9fff]", cjk[0])
    header = lines[0]
    v3_col = cell_len(header[: header.index("V3")])
    legacy_col = cell_len(header[: header.index("LEGACY")])
    table = [ln for ln in lines[2:] if ln and ln.split()[0].isdigit()]
    for line in table:
        parts = line.split()
        if len(parts) == 5:
            assert cell_len(line[: line.rindex(parts[4])]) == v3_col, line
            assert cell_len(line[: line.index(parts[3], line.index(parts[2]) + 1)]) == legacy_col


def test_ids_are_deduplicated_across_arguments_and_files(
    config_path: Path, tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids from the line and from several files are queried once each, in first-seen order."""
    a = tmp_path / "a.txt"
    a.write_text(f"# stocks\n1757\n\n{DIVERGENT_STOCK_ID}  # divergent\n1757\n", "utf-8")
    b = tmp_path / "b.txt"
    b.write_text("9856000\n1757\n", "utf-8")
    code, out, err = run(
        capsys, "--quiet", "compare", "--json", "--config", str(config_path), "--mch-id", MD5_MCH,
        "--ids-file", str(a), "--ids-file", str(b), "9856000", "1757",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert [r["stock_id"] for r in data["rows"]] == ["9856000", "1757", DIVERGENT_STOCK_ID]
    assert data["metadata"]["duplicates_skipped"] == 3
    assert "3 duplicate stock id(s) skipped" in err
    assert emulator.request_counts == {"v2": 3, "v3": 3}


def test_json_carries_metadata(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Config, merchant, mapping name/format/hash, times and versions are in the JSON."""
    import hashlib

    from shim import __version__

    data = compare_json(capsys, config_path, "1757", "--concurrency", "2", "--fail-under", "50")
    meta = data["metadata"]
    assert data["format"] == "coupon-shim.compare/1"
    assert meta["config"] == str(config_path) and meta["merchant"] == MD5_MCH
    table = load_mapping(None)
    digest = hashlib.sha256(Path(table.source).read_bytes()).hexdigest()
    assert meta["mapping"] == {
        "name": "query_coupon_stock", "file": "query_coupon_stock.toml", "sha256": digest,
        "format": 1,
    }  # fmt: skip
    assert meta["versions"]["coupon_shim"] == __version__ and "python" in meta["versions"]
    assert meta["started_at"].endswith("+00:00") and meta["finished_at"] >= meta["started_at"]
    assert meta["concurrency"] == 2 and meta["fail_under"] == 50.0
    assert meta["ignore_fields"] == ["nonce_str", "sign"]
    assert data["verdict"]["threshold_percent"] == 50.0


# ---------------------------------------------------------------------------- fail fast


def test_config_errors_fail_fast_with_exit_3(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or broken config file: one line on stderr, exit 3, nothing queried."""
    code, out, err = run(
        capsys, "compare", "--config", str(tmp_path / "nope.toml"), "--mch-id", MD5_MCH, "1757"
    )
    assert (code, out) == (3, "")
    assert err.count("\n") == 1 and "config file does not exist" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[upstream\n", "utf-8")
    code, _, err = run(capsys, "compare", "--config", str(broken), "--mch-id", MD5_MCH, "1757")
    assert code == 3 and "not valid TOML" in err and err.count("\n") == 1
    assert emulator.request_counts == {}


def test_unknown_merchant_and_merchant_without_v3_fail_fast(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """compare needs both routes' credentials: checked before any request."""
    code, _, err = run(capsys, "compare", "--config", str(config_path), "--mch-id", "1999", "1757")
    assert code == 3 and "no merchant entry for '1999'" in err and err.count("\n") == 1
    text = config_path.read_text("utf-8")
    no_v3 = re.sub(r"(?m)^(v3_\w+|wechatpay_\w+|platform_cert_dir) = .*\n", "", text)
    config_path.write_text(no_v3, "utf-8")
    code, _, err = run(capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH, "1757")
    assert code == 3 and "no v3 credentials" in err
    assert emulator.request_counts == {}


def test_refused_v3_credentials_fail_fast_before_the_list_runs(
    config_path: Path, tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A v3 private key WeChat Pay does not know: one probe, then exit 3 naming the cause."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "wrong.pem").write_bytes(pem)
    text = config_path.read_text("utf-8")
    text = re.sub(
        r'(\[merchants."10000098"\][^\[]*?)v3_private_key = "[^"]*"',
        lambda m: m.group(1) + f'v3_private_key = "file:{tmp_path / "wrong.pem"}"',
        text,
        count=1,
        flags=re.S,
    )
    config_path.write_text(text, "utf-8")
    ids = [*MATCHING, DIVERGENT_STOCK_ID]
    code, out, err = run(capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH, *ids)
    assert (code, out) == (3, "")
    assert err.count("\n") == 1
    assert "v3 refused the shim's credentials (HTTP 401 SIGN_ERROR" in err
    assert "check v3_private_key" in err
    assert emulator.request_counts == {"v2": 1, "v3": 1}  # the probe only
    assert "BEGIN" not in err and pem.decode()[40:80] not in err


def test_invalid_ids_fail_before_any_request(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids the v2 API would refuse are named and nothing is sent (exit 2)."""
    code, out, err = run(
        capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
        "1757", "not an id", "x" * 30,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert "2 invalid stock id(s)" in err and "'not an id'" in err
    assert emulator.request_counts == {}


def test_without_ids_is_a_usage_error(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ids and no file: exit 2 saying so."""
    code, out, err = run(capsys, "compare", "--config", str(config_path), "--mch-id", MD5_MCH)
    assert code == 2 and out == "" and "stock ids" in err


@pytest.mark.parametrize(
    ("flag", "value"), [("--concurrency", "0"), ("--concurrency", "65"), ("--fail-under", "101")]
)
def test_bad_option_values_are_refused(
    config_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """Out-of-range options are argparse errors (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--config", str(config_path), "--mch-id", MD5_MCH, flag, value, "1757"])
    assert exc.value.code == 2


# ----------------------------------------------------------------- errors, grouped by cause


@pytest.fixture
def comparer(make_config: Callable[..., ShimConfig], emulator: Emulator) -> Any:
    config = make_config("legacy", retry={"attempts": 1}, circuit_breaker={"failure_threshold": 1})
    with Comparer(config, MD5_MCH, transport=emulator.mock_transport()) as c:
        yield c


def test_errors_are_grouped_one_line_per_cause(comparer: Comparer, emulator: Emulator) -> None:
    """18 stocks refused for one reason are one line, not 18 rows; other causes get theirs."""
    ids = [str(600000 + i) for i in range(18)]
    for stock in ids:
        emulator.set_fault("v3", stock, "v3_error:401:SIGN_ERROR")
    emulator.set_fault("v3", "1757", "http_500")
    emulator.set_fault("v3", "9856000", "http_500")
    emulator.set_fault("v2", "9856001", "reset")
    report = run_compare(
        comparer.query, ["1717", *ids, "1757", "9856000", "9856001"], ignore=IGNORE,
        table=comparer.table, concurrency=4,
    )  # fmt: skip
    s = report.summary
    assert s.counts == {"match": 1, "error": 21}
    groups = [(g.count, g.route, g.cause) for g in s.error_groups]
    assert groups[0][:2] == (18, "v3")
    assert groups[0][2].startswith("v3 refused the shim's credentials (HTTP 401 SIGN_ERROR")
    assert (2, "v3", "v3 answered HTTP 500 SYSTEM_ERROR") in groups or any(
        g[0] == 2 and g[2].startswith("v3 answered HTTP 500") for g in groups
    )
    assert any(g[0] == 1 and g[1] == "legacy" and "connection" in g[2] for g in groups)
    assert s.error_groups[0].credentials and s.error_groups[0].stock_ids == tuple(ids)
    text = render_table(report)
    cause_lines = [ln for ln in text.splitlines() if "refused the shim's credentials" in ln]
    assert len(cause_lines) == 2  # the group line and the verdict line
    assert "18 stock(s): v3 refused" in cause_lines[0] and "(+13 more)" in cause_lines[0]
    assert not any(ln.startswith(tuple(ids)) for ln in text.splitlines())  # no per-stock rows
    assert "18 × v3 refused the shim's credentials" in report.verdict.text


def test_compare_neither_shares_nor_trips_the_serving_breaker(
    make_config: Callable[..., ShimConfig], emulator: Emulator
) -> None:
    """With a breaker that opens after one failure, every stock is still tried (no
    circuit_open), and a serving shim on the same emulator keeps its breaker closed."""
    config = make_config(
        "v3", retry={"attempts": 1}, circuit_breaker={"failure_threshold": 1, "reset_after_s": 60}
    )
    failing = ["9856001", "9856002", "9856003"]
    for stock in failing:
        emulator.set_fault("v3", stock, "http_503")
    with (
        CouponStockShim(config, transport=emulator.mock_transport()) as shim,
        Comparer(config, MD5_MCH, transport=emulator.mock_transport()) as comparer,
    ):
        report = run_compare(
            comparer.query, ["1757", *failing, "9856000", "1717"], ignore=IGNORE,
            table=comparer.table,
        )  # fmt: skip
        assert [r.klass for r in report.rows] == ["match", "error", "error", "error", "match",
                                                  "match"]  # fmt: skip
        assert all("circuit" not in e.cause for r in report.rows for e in r.errors)
        assert shim.breaker("v3", MD5_MCH).state == "closed"
        answer = shim.query_coupon_stock(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert answer["result_code"] == "SUCCESS"


def test_concurrency_runs_stocks_at_once_and_keeps_order(
    comparer: Comparer, emulator: Emulator
) -> None:
    """--concurrency N compares N stocks at once; rows keep the input order."""
    seen: set[str] = set()
    active = [0]
    peak = [0]
    lock = threading.Lock()
    gate = threading.Barrier(4, timeout=10)

    def query(route: Any, stock_id: str) -> RouteResult:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            if route == "legacy" and stock_id not in seen:
                seen.add(stock_id)
                if len(seen) <= 4:
                    gate.wait()  # the first four stocks are all in flight together
            return comparer.query(route, stock_id)
        finally:
            with lock:
                active[0] -= 1

    ids = [*MATCHING, DIVERGENT_STOCK_ID]
    report = run_compare(query, ids, ignore=IGNORE, table=comparer.table, concurrency=4)
    assert peak[0] == 4
    assert [r.stock_id for r in report.rows] == ids


# ------------------------------------------------------------------- pure classification


def _result(route: str, answer: dict[str, str], unmapped: tuple[str, ...] = ()) -> RouteResult:
    return RouteResult(answer, route, 1, unmapped)  # type: ignore[arg-type]


BASE = {"return_code": "SUCCESS", "result_code": "SUCCESS", "coupon_stock_id": "1",
        "coupon_value": "5", "coupon_total": "100", "sign": "S", "nonce_str": "n"}  # fmt: skip


def test_expected_gap_comes_from_the_mapping_not_a_list() -> None:
    """A key is a gap only if v3 recorded it unmapped AND the mapping declares it optional."""
    table = load_mapping(None)
    legacy = _result("legacy", BASE)
    v3_answer = {k: v for k, v in BASE.items() if k != "coupon_value"}
    row = classify("1", legacy, _result("v3", v3_answer, ("coupon_value",)), ignore=IGNORE,
                   table=table)  # fmt: skip
    assert (row.klass, row.gaps) == ("expected_gap", ("coupon_value",))
    # the same missing key, but v3 did not record it as unmapped: a real difference
    row = classify("1", legacy, _result("v3", v3_answer), ignore=IGNORE, table=table)
    assert row.klass == "value_differs" and row.diffs[0].field == "coupon_value"
    # a required key (coupon_stock_id) can never be a gap, even if recorded
    v3_no_id = {k: v for k, v in BASE.items() if k != "coupon_stock_id"}
    row = classify("1", legacy, _result("v3", v3_no_id, ("coupon_stock_id",)), ignore=IGNORE,
                   table=table)  # fmt: skip
    assert row.klass == "value_differs"
    # a mapping that makes coupon_value required: no longer a documented gap
    import dataclasses

    strict = dataclasses.replace(
        table,
        fields=tuple(
            dataclasses.replace(f, required=True) if f.v2_key == "coupon_value" else f
            for f in table.fields
        ),
    )
    row = classify("1", legacy, _result("v3", v3_answer, ("coupon_value",)), ignore=IGNORE,
                   table=strict)  # fmt: skip
    assert row.klass == "value_differs"


def test_business_errors_and_return_fail() -> None:
    """Same business error on both: not_found_both; one side only: value_differs;
    return_code=FAIL: error, with the mapping's rule as the cause."""
    table = load_mapping(None)
    nf = {"return_code": "SUCCESS", "result_code": "FAIL", "err_code": "COUPON_STOCK_NOT_FOUND"}
    row = classify("9", _result("legacy", nf), _result("v3", nf), ignore=IGNORE, table=table)
    assert (row.klass, row.err_code) == ("not_found_both", "COUPON_STOCK_NOT_FOUND")
    row = classify("9", _result("legacy", BASE), _result("v3", nf), ignore=IGNORE, table=table)
    assert row.klass == "value_differs"
    rule = table.errors[(401, "SIGN_ERROR")]
    fail = {"return_code": "FAIL", "return_msg": rule.return_msg or ""}
    row = classify("9", _result("legacy", BASE), _result("v3", fail), ignore=IGNORE, table=table)
    assert row.klass == "error"
    (err,) = row.errors
    assert err.credentials and (err.status, err.code) == (401, "SIGN_ERROR")
    timeout = UpstreamError("timed out after 5.0 s", route="v3", kind="timeout")
    row = classify("9", _result("legacy", BASE), timeout, ignore=IGNORE, table=table)
    assert row.errors[0].cause == "v3 timed out" and not row.errors[0].credentials


def test_non_shim_exceptions_propagate_and_empty_runs() -> None:
    """A bug (not a ShimError) is not swallowed; an empty run has no readiness."""

    def broken(route: Any, stock_id: str) -> RouteResult:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_compare(broken, ["1"], ignore=IGNORE)
    report = run_compare(broken, [], ignore=IGNORE)
    assert report.summary.readiness_percent is None and not report.verdict.ready
    assert json.loads(render_json(report))["summary"]["readiness_percent"] is None


def test_read_ids_file_and_dedupe(tmp_path: Path) -> None:
    """Ids files skip blanks and comments; duplicates are counted."""
    f = tmp_path / "ids.txt"
    f.write_text("\ufeff# stocks\n1757\n\n  1758  \n1759 # note\n1757\n", "utf-8")
    assert read_ids_file(f) == ["1757", "1758", "1759"]
    assert dedupe_ids(["1", "2", "1", "", "3", "2"]) == (["1", "2", "3"], 2)
    (tmp_path / "empty.txt").write_text("# nothing\n\n", "utf-8")
    with pytest.raises(InputError):
        read_ids_file(tmp_path / "empty.txt")
    with pytest.raises(InputError) as ei:
        read_ids_file(tmp_path / "missing.txt")
    assert ei.value.field == "ids_file"


def test_no_secret_in_the_output(
    config_path: Path, sandbox_state: SandboxState, emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Neither the table nor the JSON carries a key or a signature."""
    _, out, err = run(
        capsys, "--log-format", "json", "compare", "--config", str(config_path),
        "--mch-id", MD5_MCH, "1757", DIVERGENT_STOCK_ID,
    )  # fmt: skip
    data = compare_json(capsys, config_path, "1757", DIVERGENT_STOCK_ID)
    text = out + err + json.dumps(data)
    merchant = sandbox_state.merchants[MD5_MCH]
    assert merchant.v2_key not in text
    assert "BEGIN" not in text and "WECHATPAY2-SHA256" not in text
    assert '"sign"' not in json.dumps(data["rows"])


def test_progress_on_a_terminal_shows_count_rate_and_eta(
    make_config: Callable[..., ShimConfig], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal (forced here), stderr gets rich's bar with done/total, rate and ETA; off
    a terminal, one closing line."""
    import io

    # private: CLI command internals (exit codes, helpers)
    from shim._commands.compare import _progress

    monkeypatch.setenv("FORCE_COLOR", "1")
    err = io.StringIO()
    with _progress(err, 3, enabled=True) as tick:
        assert tick is not None
        for n in (1, 2, 3):
            tick(n, 3)
    text = err.getvalue()
    assert "stocks/s" in text and "ETA" in text and "3/3" in text
    assert "compared 3 stocks in " in text.rstrip().splitlines()[-1]  # after the bar is erased
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    plain = io.StringIO()
    with _progress(plain, 3, enabled=True) as tick:
        assert tick is not None
        tick(3, 3)
    assert plain.getvalue().startswith("compared 3 stocks in ") and "ETA" not in plain.getvalue()


def test_problems_only_and_ids_from_stdin(
    config_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """--ids-file - reads standard input; --problems-only leaves matching stocks out."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(f"1757\n{DIVERGENT_STOCK_ID}\n404404\n"))
    code, out, _ = run(
        capsys, "--quiet", "compare", "--problems-only", "--config", str(config_path),
        "--mch-id", MD5_MCH, "--ids-file", "-",
    )  # fmt: skip
    assert code == 0
    firsts = {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
    assert DIVERGENT_STOCK_ID in firsts and "1757" not in firsts and "404404" not in firsts
    assert "Compared 3 stock(s): 1 match, 0 expected_gap, 1 value_differs, 1 not_found_both" in out
