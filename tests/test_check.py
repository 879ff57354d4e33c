"""``coupon-shim check``: run as a real process against the emulator over loopback HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# private: the pure routing decision, driven directly
from shim._routing import bucket_of
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "shim.cli", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def config(sandbox_state: SandboxState, server: Any, tmp_path: Path) -> Path:
    """The emulator's shim.toml, pointing at the loopback server."""
    return sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )


def _secrets(state: SandboxState) -> list[str]:
    out = []
    for m in state.merchants.values():
        out.append(m.v2_key)
        pem = Path(m.private_key_path).read_text()
        out += [line for line in pem.splitlines() if line and "-----" not in line][:3]
    return out


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_probe_every_merchant_on_every_route(
    config: Path, emulator: Emulator, sandbox_state: SandboxState
) -> None:
    """Valid config, both routes answer for both merchants: exit 0, one ok line per probe,
    the resolved routing per merchant, and no secret anywhere in the output."""
    done = run_check("--config", str(config), "--probe")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "result: ok" in out
    probes = re.findall(r"^  (\d+)  (legacy|v3)\s+(ok|FAIL)", out, re.M)
    assert sorted(probes) == sorted(
        (m, r, "ok") for m in (MD5_MCH, HMAC_MCH) for r in ("legacy", "v3")
    )
    assert emulator.request_counts == {"v2": 2, "v3": 2}
    assert f"  {MD5_MCH}  appid " in out and "routing: legacy" in out
    assert "v2 key: present (file:" in out
    for secret in _secrets(sandbox_state):
        assert secret not in out and secret not in done.stderr


def test_a_failing_route_is_a_finding(config: Path, emulator: Emulator) -> None:
    """v3 failing for the probe stock: legacy ok, v3 FAIL with the error kind; exit 1."""
    emulator.set_fault("v3", "1", "http_503")
    done = run_check("--config", str(config), "--probe")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if re.match(r"  \d+  (legacy|v3) ", line)]
    assert all(" ok " in line for line in lines if "legacy" in line)
    v3 = [line for line in lines if " v3 " in line]
    assert len(v3) == 2 and all("FAIL  UpstreamError:http_status" in line for line in v3)
    assert "2 failed probe(s)" in done.stdout


def test_refused_credentials_fail_the_probe(config: Path, emulator: Emulator) -> None:
    """v3 refusing the shim's signature (401 SIGN_ERROR) is a failed probe, not a working one."""
    emulator.set_fault("v3", "1", "v3_error:401:SIGN_ERROR")
    done = run_check("--config", str(config), "--probe", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    v3 = [p for p in report["probes"] if p["route"] == "v3"]
    assert v3 and all(not p["ok"] and p["outcome"] == "fail" for p in v3)
    assert all("credentials were refused" in p["detail"] for p in v3)


def test_findings_without_probe(config: Path) -> None:
    """Mode v3 with a merchant lacking v3 credentials, a force list naming an unknown
    merchant and a literal secret: exit 1, each finding named by its key."""
    text = config.read_text()
    block = text.index(f'[merchants."{HMAC_MCH}"]')
    head, tail = text[:block], text[block:]
    tail = re.sub(
        r"^(v3_private_key|v3_cert_serial|wechatpay_public_key|wechatpay_public_key_id|"
        r"platform_cert_dir) = .*\n",
        "",
        tail,
        flags=re.M,
    )
    config.write_text(head + tail)
    _edit(config, 'mode = "legacy"', 'mode = "v3"')
    _edit(config, "force_v3_mch_ids = []", 'force_v3_mch_ids = ["55555555"]')
    done = run_check("--config", str(config))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert f'merchants."{HMAC_MCH}": no v3 credentials' in out
    assert "routing.force_v3_mch_ids: '55555555' has no merchant entry" in out
    assert "[no v3 credentials: legacy]" in out
    assert "findings (2):" in out


def test_canary_routing_per_merchant(config: Path) -> None:
    """Canary by merchant: check says which side each merchant's bucket puts it on."""
    _edit(config, 'mode = "legacy"', 'mode = "canary"')
    _edit(config, "canary_percent = 0.0", "canary_percent = 50.0")
    _edit(config, 'bucket_by = "mch_id:coupon_stock_id"', 'bucket_by = "mch_id"')
    done = run_check("--config", str(config), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["routing"]["mode"] == "canary" and report["routing"]["canary_percent"] == 50
    for m in report["merchants"]:
        bucket = bucket_of(m["mch_id"])
        side = "v3" if bucket < 5000 else "legacy"
        assert m["routing"] == f"canary 50 %: bucket {bucket} of this merchant -> {side}"
        assert m["v2_key"].startswith("file:") and m["v3"]["verifiers"]


def test_kill_switch_and_env_overrides_are_shown(config: Path) -> None:
    """The kill switch and mode overrides of the environment are what check resolves."""
    done = run_check(
        "--config", str(config), env={"COUPON_SHIM_KILL_SWITCH": "1", "COUPON_SHIM_MODE": "v3"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kill switch COUPON_SHIM_KILL_SWITCH ON" in done.stdout
    assert "environment overrides: COUPON_SHIM_MODE=v3" in done.stdout
    assert "routing: legacy (kill switch COUPON_SHIM_KILL_SWITCH is on)" in done.stdout


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('mode = "legacy"', 'mode = "sideways"', "routing.mode"),
        ("timeout_s = 5.0", "timeout_s = -1", "upstream.timeout_s"),
    ],
)
def test_config_error_exits_3_with_one_line(config: Path, old: str, new: str, key: str) -> None:
    """An invalid config: exit 3, nothing on stdout, one line naming file and key."""
    _edit(config, old, new)
    done = run_check("--config", str(config), "--probe")
    assert done.returncode == 3
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("coupon-shim: ConfigError: ") and key in line


def test_broken_mapping_exits_3(config: Path, tmp_path: Path) -> None:
    """A mapping folder whose file does not validate is a config error too."""
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "query_coupon_stock.toml").write_text("[[fields]]\nv2 = 1\n")
    _edit(config, 'dir = ""', f'dir = "{folder.as_posix()}"')
    done = run_check("--config", str(config))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "query_coupon_stock.toml" in done.stderr
