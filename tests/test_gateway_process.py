"""``coupon-shim serve`` as a real process: start, answer, drain on SIGTERM, exit 0.

These start the gateway as a subprocess (as systemd or Docker would) in front of the loopback
emulator that runs in the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim.sandbox import Emulator, SandboxState
from tests.gateway_support import (
    MD5_MCH,
    QUERY_PATH,
    answer_verifies,
    parse_answer,
    request_fields,
    to_xml,
    write_config,
)
from tests.wait import wait_until

pytestmark = pytest.mark.slow
_LISTENING = re.compile(r"listening on (https?://\S+)")


class Served:
    """A ``coupon-shim serve`` subprocess and what it wrote."""

    def __init__(self, config: Path, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shim.cli",
                "--log-format",
                "json",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: cleanup reaches the workers too
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = _LISTENING.search(line)
        assert found, f"no listening line: {line!r} {self.stderr[-5:]}"
        self.base_url = found.group(1)

        def ready() -> bool:
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the gateway never became ready", timeout=30, interval=0.05)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
        return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole group (the supervisor and any worker it left)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self._drain.join(10)
        if self._drain.is_alive():  # a worker still holds stderr open
            self.kill()
            self._drain.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not self._drain.is_alive():
                pipe.close()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    """Processes started by a test; killed if a test leaves one running."""
    made: list[Served] = []
    yield made
    for s in made:
        s.kill()
        s.close()


def test_sigterm_drains_in_flight_calls_and_shadow_jobs(
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    served: list[Served],
) -> None:
    """Slow in-flight calls finish with good answers after SIGTERM, their shadow comparisons
    finish too, /readyz answers 503 during the drain delay, and the process exits 0."""
    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        mode="shadow",
        gateway={"drain_delay_s": 0.6, "drain_timeout_s": 20},
    )
    gw = Served(cfg)
    served.append(gw)
    stocks = ("1717", "1757", "9856000")  # distinct: identical calls would share one flight
    for stock in stocks:
        emulator.set_fault("v2", stock, "delay", delay_s=1.5)
        emulator.set_fault("v3", stock, "delay", delay_s=1.0)
    results: list[httpx.Response] = []

    def call(stock: str) -> None:
        body = to_xml(request_fields(sandbox_state, MD5_MCH, stock))
        results.append(httpx.post(gw.base_url + QUERY_PATH, content=body, timeout=30))

    callers = [threading.Thread(target=call, args=(stock,)) for stock in stocks]
    for t in callers:
        t.start()
    wait_until(lambda: emulator.request_counts["v2"] >= 3, "the three calls never got upstream")
    assert emulator.request_counts["v2"] == 3  # all three are in flight upstream
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(gw.base_url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    code = gw.stop()
    for t in callers:
        t.join(10)
    assert code == 0, gw.stderr[-10:]
    assert len(results) == 3
    key = sandbox_state.merchants[MD5_MCH].v2_key
    for resp in results:
        answer = parse_answer(resp.content)
        assert answer["result_code"] == "SUCCESS" and answer_verifies(answer, key)
    shadowed = [e for e in gw.events("coupon_stock.query") if e.get("shadow")]
    assert [e["shadow"] for e in shadowed] == ["match"] * 3  # compared before the exit
    assert gw.events("coupon_shim.gateway_stopped")
    with pytest.raises(httpx.TransportError):
        httpx.get(gw.base_url + "/healthz", timeout=2)
    for line in gw.stderr:
        assert key not in line


def test_two_workers_share_one_port_and_one_metrics_view(
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    served: list[Served],
) -> None:
    """--workers 2: calls spread over both, /metrics on either worker counts all of them
    (prometheus_client multiprocess), and SIGTERM stops the whole group with status 0."""
    cfg = write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)
    gw = Served(cfg, "--workers", "2")
    served.append(gw)
    body = to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))
    calls = 12
    for _ in range(calls):
        # a new connection each time, so the kernel spreads them over the workers
        with httpx.Client(timeout=20) as http:
            assert (
                parse_answer(http.post(gw.base_url + QUERY_PATH, content=body).content)[
                    "result_code"
                ]
                == "SUCCESS"
            )
    from prometheus_client.parser import text_string_to_metric_families

    def counted(name: str = "coupon_shim_gateway_requests_total") -> float:
        with httpx.Client(timeout=20) as http:  # a new connection: any worker may answer
            text = http.get(gw.base_url + "/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and s.labels.get("endpoint", "query") == "query"
        )

    # a worker counts a request just after its answer went out: allow it that moment
    wait_until(lambda: counted() >= calls, "the workers never counted every call", interval=0.05)
    assert counted() == calls
    for _ in range(4):
        assert counted() == calls
        assert counted("coupon_shim_calls_total") == calls  # the library's, aggregated too
    started = {e["pid"] for e in gw.events("coupon_shim.gateway_started")}
    assert len(started) == 2
    assert gw.stop() == 0


def test_serve_refuses_a_broken_config_with_one_line(tmp_path: Path) -> None:
    """A config that does not load stops serve before it listens: exit 3, one clear line."""
    bad = tmp_path / "shim.toml"
    bad.write_text("[gateway]\nport = 'eighty'\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "shim.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway.port" in lines[0] and "Traceback" not in done.stderr


def _readme_gateway_block() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The v2 gateway (`coupon-shim serve`)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]


def test_the_readme_commands_start_a_gateway(tmp_path: Path, served: list[Served]) -> None:
    """The README's gateway commands, run as written (free ports instead of the defaults, a
    scratch state folder), give a gateway whose /healthz, /readyz and /metrics answer and
    which serves wechatpy with only its base URL changed."""
    lines = _readme_gateway_block()
    assert lines[0] == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[gateway]'"
    assert lines[1] == ".venv/bin/coupon-shim sandbox --state-dir .coupon-shim-sandbox &"
    assert lines[2].startswith("until [ -f .coupon-shim-sandbox/shim.toml ]")
    assert lines[3] == ".venv/bin/coupon-shim serve --config .coupon-shim-sandbox/shim.toml"
    state_dir = tmp_path / ".coupon-shim-sandbox"
    sandbox = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shim.cli",
            "--quiet",
            "sandbox",
            "--state-dir",
            str(state_dir),
            "--port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (state_dir / "shim.toml").is_file() or sandbox.poll() is not None,
            "the sandbox never wrote its shim.toml",
            timeout=60,
            interval=0.2,
        )
        assert sandbox.poll() is None, "the sandbox exited"
        gw = Served(state_dir / "shim.toml")
        served.append(gw)
        assert gw.base_url.startswith("http://127.0.0.1:")
        assert httpx.get(gw.base_url + "/healthz").text == "ok\n"
        assert httpx.get(gw.base_url + "/readyz").json()["status"] == "ready"
        assert "coupon_shim_gateway_requests_total" in httpx.get(gw.base_url + "/metrics").text
        from wechatpy.pay import WeChatPay

        from shim.sandbox import SandboxState

        m = SandboxState.load_or_create(state_dir).merchants[MD5_MCH]
        client = WeChatPay(m.appid, m.v2_key, MD5_MCH)
        client.API_BASE_URL = gw.base_url + "/"
        answer = dict(client.coupon.query_stock("1757"))
        client._http.close()
        assert answer["result_code"] == "SUCCESS" and client.check_signature(answer)
        assert gw.stop() == 0
    finally:
        sandbox.terminate()
        sandbox.wait(20)
