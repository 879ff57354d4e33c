"""CLI conventions, through the real ``coupon-shim`` executable in a subprocess.

Global options before or after the command, ``--version``, help on every option, the
documented exit codes, and errors as one line naming the file and key (never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shim

# private: CLI command internals (exit codes, helpers)
from shim._commands import ExitCode
from shim.cli import build_parser
from shim.sandbox import SandboxState
from tests.conftest import MD5_MCH

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("coupon-shim")


def coupon_shim(*argv: str, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``coupon-shim`` (or ``python -m shim.cli``) and capture its output."""
    cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "shim.cli"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COUPON_SHIM_")}
    full_env.update(env)
    return subprocess.run(
        [*cmd, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def config_path(sandbox_state: SandboxState, server: Any, emulator: Any, tmp_path: Path) -> Path:
    """A shim.toml for the loopback emulator (whose counts are reset after the test)."""
    return sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )


@pytest.mark.parametrize("where", ["before", "after", "between"])
def test_global_options_work_before_or_after_the_command(config_path: Path, where: str) -> None:
    """--quiet and --log-format mean the same wherever they stand on the line."""
    query = ["query", "--config", str(config_path), "--mch-id", MD5_MCH]
    opts = ["--quiet", "--log-format", "json"]
    argv = {
        "before": [*opts, *query, "1757"],
        "after": [*query, "1757", *opts],
        "between": [*query, *opts, "1757"],  # the issue's own example
    }[where]
    proc = coupon_shim(*argv)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["coupon_stock_id"] == "1757"
    assert proc.stderr == ""  # --quiet: no per-call event


def test_an_option_after_the_command_does_not_undo_one_before_it(config_path: Path) -> None:
    """--log-format json before the command survives a command that does not repeat it."""
    proc = coupon_shim("--log-format", "json", "query", "--config", str(config_path),
                       "--mch-id", MD5_MCH, "1757")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (event,) = [json.loads(line) for line in proc.stderr.splitlines()]
    assert event["event"] == "coupon_stock.query"


def test_quiet_and_verbose_together_is_a_usage_error() -> None:
    proc = coupon_shim("demo", "--quiet", "--verbose")
    assert proc.returncode == ExitCode.USAGE and "--quiet and --verbose" in proc.stderr


@pytest.mark.parametrize("argv", [["--version"], ["query", "--version"], ["sandbox", "--version"]])
def test_version(argv: list[str]) -> None:
    """--version prints the installed version, before or after a command."""
    from importlib.metadata import version

    proc = coupon_shim(*argv)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"coupon-shim {shim.__version__}"
    assert shim.__version__ == version("coupon-shim")


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    top = build_parser()
    found = [("coupon-shim", top)]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"coupon-shim {n}", p) for n, p in action.choices.items()]
    return found


def test_every_option_and_argument_has_help() -> None:
    """Each option and positional of every command says what it is for."""
    missing = [
        f"{name}: {'/'.join(a.option_strings) or a.dest}"
        for name, parser in _all_parsers()
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
        and (not a.help or a.help == argparse.SUPPRESS)
    ]
    assert missing == []


def test_every_command_accepts_the_global_options() -> None:
    for name, parser in _all_parsers():
        options = {o for a in parser._actions for o in a.option_strings}
        assert {"--quiet", "--verbose", "--log-format", "--traceback", "--version"} <= options, name


def test_help_lists_the_exit_codes() -> None:
    proc = coupon_shim("--help")
    assert proc.returncode == 0
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}\s+\w", proc.stdout, re.M), code


def test_readme_documents_every_exit_code() -> None:
    """The README's exit-code table lists exactly the codes the CLI uses."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| `(\d+)` \|", section, re.M)}
    assert documented == {int(c) for c in ExitCode}


# ------------------------------------------------------------------------------ exit codes


def test_usage_error_exits_2() -> None:
    proc = coupon_shim("query", "--no-such-option")
    assert proc.returncode == ExitCode.USAGE and "Traceback" not in proc.stderr


def test_invalid_input_exits_2_in_one_line(config_path: Path) -> None:
    proc = coupon_shim("query", "--config", str(config_path), "--mch-id", "10000777", "1757")
    assert_one_line_error(proc, ExitCode.USAGE, "coupon-shim: InputError:", "10000777")


def test_missing_config_exits_3_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = coupon_shim("query", "--config", str(missing), "--mch-id", MD5_MCH, "1757")
    assert_one_line_error(proc, ExitCode.CONFIG, "ConfigError", "nope.toml", "does not exist")


def test_bad_config_key_exits_3_naming_file_and_key(config_path: Path) -> None:
    text = config_path.read_text().replace('mode = "legacy"', 'mode = "sideways"')
    config_path.write_text(text)
    proc = coupon_shim("--quiet", "compare", "--config", str(config_path), "--mch-id", MD5_MCH,
                       "1757")  # fmt: skip
    assert_one_line_error(proc, ExitCode.CONFIG, str(config_path), "routing.mode", "sideways")


def test_unreachable_upstream_exits_4(sandbox_state: SandboxState, tmp_path: Path) -> None:
    """A closed port: a typed error in one line, exit 4, nothing on stdout."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = sandbox_state.write_config(tmp_path / "shim.toml", v2_base_url=dead, v3_base_url=dead)
    text = path.read_text().replace("attempts = 3", "attempts = 1")
    path.write_text(text)
    proc = coupon_shim("--quiet", "query", "--config", str(path), "--mch-id", MD5_MCH, "1757")
    assert_one_line_error(proc, ExitCode.UNAVAILABLE, "coupon-shim: UpstreamError:", "connection")


def test_findings_exit_1(tmp_path: Path) -> None:
    """migration-doc --check on a stale document: the command ran and found a drift."""
    stale = tmp_path / "MIGRATION.md"
    text = (ROOT / "MIGRATION.md").read_text(encoding="utf-8")
    begin = text.index("<!-- BEGIN")
    end = text.index("<!-- END")
    stale.write_text(text[: text.index("\n", begin) + 1] + "stale\n" + text[end:])
    proc = coupon_shim("migration-doc", "--check", "--file", str(stale))
    assert proc.returncode == ExitCode.FINDINGS
    assert "out of date" in proc.stderr


def test_command_error_is_one_line_naming_the_command(config_path: Path) -> None:
    proc = coupon_shim("compare", "--config", str(config_path), "--mch-id", MD5_MCH)
    assert_one_line_error(proc, ExitCode.USAGE, "coupon-shim compare:", "stock ids")


def test_stdout_closed_early_is_quiet_exit_141() -> None:
    """`coupon-shim demo | head -1`: no traceback, no "internal error", exit 141."""
    cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "shim.cli"]
    proc = subprocess.Popen(
        [*cmd, "demo", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("Starting the WeChat Pay emulator")
    proc.stdout.close()  # the reader goes away, as `head -1` does
    code = proc.wait(120)
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == ExitCode.PIPE_CLOSED, err
    assert err == ""


def test_readme_command_table_matches_the_commands() -> None:
    """Every registered command has a row in the README's command table, and every option a
    row names is one the command accepts (the table cannot drift from the parser)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The command line", 1)[1].split("\n### ", 1)[0]
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| `coupon-shim ([a-z-]+)[^|]*(?:\\\|[^|]*)*\|.*$", section, re.M)
    }
    parsers = dict(_all_parsers())
    commands = {name.split(" ", 1)[1] for name in parsers if " " in name}
    assert set(rows) == commands
    for name, row in rows.items():
        usage = row.split("` |", 1)[0]
        options = {o for a in parsers[f"coupon-shim {name}"]._actions for o in a.option_strings}
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage))
        assert named <= options, (name, named - options)


def test_python_warnings_are_one_line_without_the_secret(
    config_path: Path, sandbox_state: SandboxState
) -> None:
    """A literal key in the config: the LiteralSecretWarning is one line naming file and key
    (no source path, no code line, no key), and the command still works."""
    key = sandbox_state.merchants[MD5_MCH].v2_key
    text = re.sub(
        r'v2_key = "file:[^"]*v2_key_10000098"', f'v2_key = "{key}"', config_path.read_text()
    )
    config_path.write_text(text)
    proc = coupon_shim("--quiet", "query", "--config", str(config_path), "--mch-id", MD5_MCH,
                       "1757")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"coupon-shim: warning: LiteralSecretWarning: {config_path}: "
        f'merchants."{MD5_MCH}".v2_key: a literal secret in the config file; prefer '
        '"env:NAME" or "file:PATH"'
    ]
    assert key not in proc.stderr
