"""``coupon-shim sandbox`` as a person runs it: a real process, restarted on an edited folder.

The emulator keeps the user's ``shim.toml`` across restarts (and says so), ``--reset`` rewrites
it with a backup, a busy port is one line and exit code 4, ``--log-requests`` prints one line
per request, and the README's fault admin ``curl`` lines work as written.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# private: CLI command internals (exit codes, helpers)
from shim._commands import ExitCode
from shim.sandbox import SandboxState
from tests.conftest import MD5_MCH
from tests.test_cli_conventions import assert_one_line_error, coupon_shim
from tests.wait import Deadline

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("coupon-shim")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Sandbox:
    """A running ``coupon-shim sandbox`` process whose stdout lines are collected."""

    def __init__(self, *argv: str) -> None:
        cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "shim.cli"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COUPON_SHIM_")}
        self.proc = subprocess.Popen(
            [*cmd, "sandbox", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            # as from a terminal: a runner started in the background (CI) hands its children
            # SIGINT ignored, and Python then keeps it ignored, so Ctrl+C could not be tested
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """The first (new or already seen) line matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        deadline = Deadline(timeout)
        while True:
            left = deadline.left(f"no line matching {pattern!r} in {self.lines}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"sandbox exited: {self.lines} {self.stderr()}"
            self.lines.append(line)
            if regex.search(line):
                return line

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.wait_for("^stopping$", timeout=10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start() -> Iterator[type[Sandbox]]:
    started: list[Sandbox] = []

    class Started(Sandbox):
        def __init__(self, *argv: str) -> None:
            super().__init__(*argv)
            started.append(self)

    yield Started
    for sb in started:
        sb.close()


@pytest.fixture
def state_dir(sandbox_state: SandboxState, tmp_path: Path) -> Path:
    """A state folder with the session's keys (key generation is slow) and no shim.toml."""
    import shutil

    folder = tmp_path / "state"
    shutil.copytree(sandbox_state.state_dir, folder, ignore=shutil.ignore_patterns("shim.toml*"))
    return folder


def test_restart_keeps_an_edited_shim_toml_and_says_so(
    start: type[Sandbox], state_dir: Path
) -> None:
    """First run writes shim.toml; after the user edits it, a restart keeps it and says so;
    the edited config then works against the restarted sandbox (shadow mode, as edited)."""
    port = free_port()
    config = state_dir / "shim.toml"
    first = start("--port", str(port), "--state-dir", str(state_dir))
    line = first.wait_for(r"^shim config:")
    assert "(written: new file" in line and str(config) in line
    first.wait_for("Press Ctrl")
    assert first.stop() == 0

    edited = config.read_text().replace('mode = "legacy"', 'mode = "shadow"')
    assert edited != config.read_text()
    config.write_text(edited + "# my note\n")

    second = start("--port", str(port), "--state-dir", str(state_dir))
    line = second.wait_for(r"^shim config:")
    assert "(kept: your file, not overwritten; --reset rewrites it)" in line
    second.wait_for("Press Ctrl")
    assert not [x for x in second.lines if "note:" in x]  # it still points here and loads
    assert config.read_text() == edited + "# my note\n"

    proc = coupon_shim("--log-format", "json", "query", "--config", str(config),
                       "--mch-id", MD5_MCH, "9000000001")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (event,) = [json.loads(x) for x in proc.stderr.splitlines()]
    assert event["route"] == "legacy" and event["shadow"] == "mismatch"
    assert second.stop(signal.SIGTERM) == 0  # SIGTERM (docker, systemd) stops it cleanly too


def test_reset_rewrites_and_keeps_a_backup(start: type[Sandbox], state_dir: Path) -> None:
    config = state_dir / "shim.toml"
    config.write_text("# my own config\n")
    sb = start("--port", "0", "--state-dir", str(state_dir), "--reset")
    line = sb.wait_for(r"^shim config:")
    assert "rewritten by --reset" in line and "shim.toml.bak" in line
    base = re.search(r"listening on (http://\S+)", sb.wait_for("listening on"))
    assert base is not None
    assert (state_dir / "shim.toml.bak").read_text() == "# my own config\n"
    assert f'v2_base_url = "{base.group(1)}"' in config.read_text()
    sb.wait_for("Press Ctrl")
    sb.stop()


def test_a_kept_config_for_another_port_or_broken_gets_a_note(
    start: type[Sandbox], state_dir: Path, sandbox_state: SandboxState
) -> None:
    """A kept shim.toml that points elsewhere, or does not load, is named in a note line."""
    config = sandbox_state.write_config(
        state_dir / "shim.toml", v2_base_url="http://127.0.0.1:1", v3_base_url="http://127.0.0.1:1"
    )
    config.write_text(config.read_text().replace('mode = "legacy"', 'mode = "sideways"'))
    sb = start("--port", "0", "--state-dir", str(state_dir))
    sb.wait_for("Press Ctrl")
    notes = [x for x in sb.lines if "note:" in x]
    assert any("v2_base_url" in n and "--reset" in n for n in notes), notes
    assert any("routing.mode" in n and "does not load" in n for n in notes), notes
    sb.stop()


def test_busy_port_is_one_line_and_exit_4(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = coupon_shim("sandbox", "--port", str(port), "--state-dir", str(state_dir))
    line = assert_one_line_error(proc, ExitCode.UNAVAILABLE, "coupon-shim sandbox:")
    assert line == (
        f"coupon-shim sandbox: cannot listen on 127.0.0.1:{port}: the port is in use "
        "(another sandbox?); stop it or choose another --port"
    )


def test_a_damaged_state_folder_is_a_config_error(state_dir: Path) -> None:
    (state_dir / "state.json").write_text("{not json")
    proc = coupon_shim("sandbox", "--port", "0", "--state-dir", str(state_dir))
    assert_one_line_error(proc, ExitCode.CONFIG, str(state_dir), "state.json is damaged")


def _readme_curl_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The fault admin API", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [x for x in block.splitlines() if x.startswith("curl ")]


def test_readme_admin_curl_lines_work_and_requests_are_logged(
    start: type[Sandbox], state_dir: Path
) -> None:
    """Every curl line of the README's admin section, run as written (port changed), does what
    its comment says; --log-requests shows each request and the fault it met."""
    port = free_port()
    sb = start("--port", str(port), "--state-dir", str(state_dir), "--log-requests")
    sb.wait_for("^request log")
    lines = _readme_curl_lines()
    assert len(lines) == 6

    def curl(line: str) -> dict[str, object]:
        argv = shlex.split(line.replace("127.0.0.1:8765", f"127.0.0.1:{port}"))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        return dict(json.loads(out.stdout))

    arm_503, arm_delay, arm_err, listing, clear_v3, clear_all = lines
    assert curl(arm_503)["armed"] == {
        "side": "v3", "stock_id": "1757", "fault": "http_503", "times": 2, "delay_s": 1.0
    }  # fmt: skip
    assert curl(arm_delay)["armed"]["fault"] == "delay"  # type: ignore[index]
    assert curl(arm_err)["armed"]["fault"] == "err_code:SYSTEMERROR"  # type: ignore[index]
    faults = curl(listing)["faults"]
    assert [f["fault"] for f in faults] == ["http_503", "delay", "err_code:SYSTEMERROR"]  # type: ignore[index, union-attr]

    config = state_dir / "shim.toml"
    proc = coupon_shim("--quiet", "query", "--config", str(config), "--mch-id", MD5_MCH,
                       "--route", "v3", "1757")  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # the shim retried past the two 503s
    sb.wait_for(r"GET /v3/marketing/favor/stocks/1757 v3 mch=10000098 stock=1757 "
                r"fault=http_503 status=503 answer=SERVICE_UNAVAILABLE")  # fmt: skip
    sb.wait_for(r"GET /v3/marketing/favor/stocks/1757 .* fault=- status=200 answer=ok")

    assert curl(clear_v3) == {"cleared": 0}  # the two-shot fault was used up
    proc = coupon_shim("--quiet", "query", "--config", str(config), "--mch-id", MD5_MCH, "1757")
    assert json.loads(proc.stdout)["err_code"] == "SYSTEMERROR"  # its own fault, not "*"
    sb.wait_for(r"POST /mmpaymkttransfers/query_coupon_stock v2 mch=10000098 stock=1757 "
                r"fault=err_code:SYSTEMERROR status=200 answer=FAIL:SYSTEMERROR")  # fmt: skip
    started = time.monotonic()
    proc = coupon_shim("--quiet", "query", "--config", str(config), "--mch-id", MD5_MCH,
                       "9856000")  # fmt: skip
    assert json.loads(proc.stdout)["result_code"] == "SUCCESS"
    assert time.monotonic() - started >= 3.0  # the "*" delay
    sb.wait_for(r"v2 mch=10000098 stock=9856000 fault=delay status=200 answer=SUCCESS")
    assert curl(clear_all) == {"cleared": 2}
    assert curl(listing)["faults"] == []
    sb.wait_for(r"DELETE /__admin/faults admin .* status=200 answer=cleared:2")
    sb.stop()
    output = "\n".join(sb.lines)
    keys = [m.v2_key for m in SandboxState.load_or_create(state_dir).merchants.values()]
    assert not any(k in output for k in keys)
    assert "signature=" not in output and "<sign>" not in output


# ------------------------------------------------------------------- the request log, in-process


def test_request_log_names_a_wrong_v2_key_and_cannot_be_forged(
    sandbox_state: SandboxState,
) -> None:
    """A v2 request signed with the wrong key logs answer=FAIL:SIGN_ERROR; request values
    with newlines or odd characters cannot break or forge a line; no sign is shown."""
    import httpx

    from shim.sandbox import V2_PATH, Emulator, RequestLogger, render_xml, v2_sign

    emulator = Emulator(sandbox_state)
    lines: list[str] = []
    logger = RequestLogger(emulator, lines.append)
    m = sandbox_state.merchants[MD5_MCH]
    fields = {"appid": m.appid, "mch_id": m.mchid, "nonce_str": "n1", "coupon_stock_id": "1757"}
    wrong = dict(fields, sign=v2_sign(fields, "x" * 32))
    with httpx.Client(transport=emulator.mock_transport(), base_url="http://sandbox") as c:
        c.post(V2_PATH, content=render_xml(wrong))
        c.post(V2_PATH, content=render_xml(dict(fields, sign=v2_sign(fields, m.v2_key))))
        forged = {**fields, "coupon_stock_id": "1\n21:00:00 POST / v2 status=200 answer=SUCCESS"}
        c.post(V2_PATH, content=render_xml(forged))
        c.get("/v3/marketing/favor/stocks/1757%0aX", headers={"authorization": 'mchid="1\n2"'})
    logger.uninstall()
    c2 = httpx.Client(transport=emulator.mock_transport(), base_url="http://sandbox")
    with c2:
        c2.post(V2_PATH, content=render_xml(wrong))  # not logged any more
    assert len(lines) == 4
    assert lines[0].endswith(
        f"POST {V2_PATH} v2 mch={MD5_MCH} stock=1757 fault=- status=200 answer=FAIL:SIGN_ERROR"
    )
    assert lines[1].endswith("status=200 answer=SUCCESS")
    assert all("\n" not in line for line in lines)
    assert "stock=1?21:00:00" in lines[2]
    assert "mch=1?2" in lines[3]
    assert not any(wrong["sign"] in line or m.v2_key in line for line in lines)
