"""MIGRATION.md's gateway snippets: the only change is the base URL, and the "after" runs.

Each ``<!-- gateway: NAME before|after -->`` code block pair may differ only in lines naming
the base URL; the Node, wechatpy and raw-XML "after" snippets are run as written (the
placeholder address replaced by a running gateway's) against the loopback emulator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shim.gateway import running
from shim.sandbox import Emulator, SandboxState
from tests.gateway_support import (
    MD5_MCH,
    answer_verifies,
    parse_answer,
    request_fields,
    to_xml,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "http://127.0.0.1:8080/"
WECHAT_PAY = "https://api.mch.weixin.qq.com"
_BLOCK = re.compile(
    r"<!-- gateway: (?P<name>[a-z0-9-]+) (?P<side>before|after) -->\n```(?P<lang>\w+)\n"
    r"(?P<code>.*?)```",
    re.DOTALL,
)
STYLES = ("php", "node", "wechatpy", "raw-xml")


def blocks() -> dict[tuple[str, str], str]:
    text = (ROOT / "MIGRATION.md").read_text(encoding="utf-8")
    found = {(m["name"], m["side"]): m["code"] for m in _BLOCK.finditer(text)}
    assert text.count("<!-- gateway: ") == len(found), "a gateway marker without a code block"
    return found


def test_each_caller_changes_only_its_base_url() -> None:
    """For the PHP SDK, the Node SDK, wechatpy and raw XML: lines removed name WeChat Pay's
    address (or none is removed), lines added name the gateway's; nothing else differs."""
    found = blocks()
    assert {name for name, _ in found} == set(STYLES)
    for style in STYLES:
        before = found[(style, "before")].splitlines()
        after = found[(style, "after")].splitlines()
        removed = [line for line in before if line not in after]
        added = [line for line in after if line not in before]
        assert added, style
        assert all(PLACEHOLDER.rstrip("/") in line for line in added), (style, added)
        assert all(WECHAT_PAY in line for line in removed), (style, removed)
        assert [line for line in before if line in after] == [
            line for line in after if line in before
        ], style  # the unchanged lines, in the same order


@pytest.fixture
def gateway_url(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> Any:
    cfg = write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)
    with running(cfg) as gw:
        yield gw.base_url + "/"


def test_wechatpy_after_snippet_runs(gateway_url: str, sandbox_state: SandboxState) -> None:
    """The wechatpy "after" snippet, run as written, gets a signed answer through the gateway."""
    from wechatpy.pay import WeChatPay

    code = blocks()[("wechatpy", "after")].replace(PLACEHOLDER, gateway_url)
    scope: dict[str, Any] = {
        "WeChatPay": WeChatPay,
        "api_v2_key": sandbox_state.merchants[MD5_MCH].v2_key,
    }
    exec(compile(code, "MIGRATION.md:wechatpy-after", "exec"), scope)
    client, answer = scope["client"], dict(scope["answer"])
    client._http.close()
    assert answer["result_code"] == "SUCCESS" and client.check_signature(answer)


def test_raw_xml_after_snippet_runs(
    gateway_url: str, sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """The curl "after" command, run as written with a signed request file, gets an answer
    whose sign verifies."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / "signed-request.xml").write_bytes(
        to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))
    )
    command = blocks()[("raw-xml", "after")].replace(PLACEHOLDER, gateway_url)
    done = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, capture_output=True, timeout=60, check=True
    )
    answer = parse_answer(done.stdout)
    assert answer["result_code"] == "SUCCESS"
    assert answer_verifies(answer, sandbox_state.merchants[MD5_MCH].v2_key)


def test_node_after_snippet_runs(
    gateway_url: str, sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """The Node SDK "after" snippet, run as written by the pinned wechatpay-axios-plugin, gets
    an answer its own verifier accepted."""
    from tests.test_gateway_clients import IN_CI, NODE_DIR

    if shutil.which("node") is None:
        if IN_CI:
            pytest.fail("Node.js is required in CI")
        pytest.skip("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "wechatpay-axios-plugin").is_dir():
        pytest.skip("tests/node is not installed (npm ci --prefix tests/node)")
    m = sandbox_state.merchants[MD5_MCH]
    snippet = blocks()[("node", "after")].replace(PLACEHOLDER, gateway_url)
    prelude = {
        "serial": m.cert_serial,
        "privateKey": m.private_key_pem,
        "certs": {sandbox_state.pub_key_id: sandbox_state.pub_key_pem},
        "apiV2Key": m.v2_key,
    }
    script = "\n".join(
        [
            "const { Wechatpay } = require('wechatpay-axios-plugin');",
            *(f"const {k} = {json.dumps(v)};" for k, v in prelude.items()),
            "(async () => {",
            snippet,
            "process.stdout.write(JSON.stringify(data));",
            "})().catch((e) => { console.error(e.code || e); process.exit(1); });",
        ]
    )
    path = tmp_path / "snippet.js"
    path.write_text(script, encoding="utf-8")
    env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"))
    done = subprocess.run(["node", str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-1000:]
    data = json.loads(done.stdout)
    assert data["result_code"] == "SUCCESS" and data["coupon_stock_id"] == "1757"
