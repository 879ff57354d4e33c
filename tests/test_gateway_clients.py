"""Clients nobody here wrote, pointed at the gateway (which points at the emulator).

``wechatpy``, the npm ``wechatpay-axios-plugin`` (the PHP SDK's chained call shape, run with
the machine's Node.js) and a plain httpx POST of hand-built XML, in every routing mode, for an
MD5 and an HMAC-SHA256 merchant: the only change on the caller's side is the base URL, and
each client's own v2 sign check accepts the gateway's answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature_hmac

# private: the pure routing decision, driven directly
from shim._routing import bucket_of
from shim.gateway import RunningGateway, running
from shim.sandbox import Emulator, SandboxState
from tests.gateway_support import (
    HMAC_MCH,
    MD5_MCH,
    QUERY_PATH,
    STOCKS,
    answer_verifies,
    parse_answer,
    request_fields,
    to_xml,
    write_config,
)
from tests.wait import wait_until

MODES = ("legacy", "shadow", "canary", "v3")
CANARY_PERCENT = 80.0
NODE_DIR = Path(__file__).resolve().parent / "node"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def expected_route(mode: str, mch_id: str, stock_id: str) -> str:
    """The side that serves, from the README's bucketing rule (canary at 80 %)."""
    if mode in ("legacy", "shadow"):
        return "legacy"
    if mode == "v3":
        return "v3"
    return "v3" if bucket_of(f"{mch_id}:{stock_id}") < CANARY_PERCENT * 100 else "legacy"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each client test runs in every routing mode."""
    return str(request.param)


@pytest.fixture
def gateway(
    mode: str, sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> Iterator[RunningGateway]:
    """A gateway in ``mode`` in front of the loopback emulator."""
    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        mode=mode,
        routing={"canary_percent": CANARY_PERCENT},
    )
    with running(cfg) as gw:
        yield gw


class RouteWatch:
    """Which side of the emulator a call reached (v2 / v3 request counts before and after)."""

    def __init__(self, emulator: Emulator, gw: RunningGateway) -> None:
        self.emulator, self.gw = emulator, gw

    def __enter__(self) -> RouteWatch:
        self.before = self.emulator.request_counts
        return self

    def __exit__(self, *exc: object) -> None:
        after = self.emulator.request_counts
        self.v2 = after["v2"] - self.before["v2"]
        self.v3 = after["v3"] - self.before["v3"]

    def served_by(self, mode: str) -> str:
        """The serving side (in shadow mode legacy serves and v3 is only compared)."""
        if mode == "shadow":
            assert self.v2 == 1
            return "legacy"
        assert self.v2 + self.v3 == 1, (self.v2, self.v3)
        return "legacy" if self.v2 else "v3"


def wait_shadows(gw: RunningGateway) -> None:
    """Let the gateway's shadow comparisons finish (they run after the answer went out)."""

    shim = gw.app._shim
    assert shim is not None
    wait_until(
        lambda: shim._runner is None or not shim._runner.in_flight,
        "shadow comparisons still in flight",
    )


# ----------------------------------------------------------------------------- wechatpy


@pytest.mark.parametrize("mch_id", [MD5_MCH, HMAC_MCH])
def test_wechatpy_query_stock_through_the_gateway(
    gateway: RunningGateway,
    mode: str,
    mch_id: str,
    sandbox_state: SandboxState,
    emulator: Emulator,
) -> None:
    """wechatpy's own coupon.query_stock with only API_BASE_URL changed; its check_signature
    accepts every answer, on whichever route the mode picks."""
    m = sandbox_state.merchants[mch_id]
    client = WeChatPay(m.appid, m.v2_key, mch_id)
    client.API_BASE_URL = gateway.base_url + "/"  # the one change a wechatpy caller makes
    try:
        for stock_id in STOCKS[mch_id]:
            with RouteWatch(emulator, gateway) as watch:
                answer = dict(client.coupon.query_stock(stock_id))
                wait_shadows(gateway)
            assert watch.served_by(mode) == expected_route(mode, mch_id, stock_id)
            assert answer["return_code"] == answer["result_code"] == "SUCCESS"
            assert answer["coupon_stock_id"] == stock_id and answer["mch_id"] == mch_id
            assert len(answer["sign"]) == 32  # wechatpy signs MD5, so the answer is MD5
            assert client.check_signature(answer)
            if mode == "shadow":
                assert watch.v3 == 1  # compared on v3 in the background
        # HMAC-SHA256 through wechatpy's own request path (sign_type in the payload)
        data = {"appid": m.appid, "coupon_stock_id": STOCKS[mch_id][0], "sign_type": "HMAC-SHA256"}
        hmac_answer = dict(client.post("mmpaymkttransfers/query_coupon_stock", data=data))
        assert len(hmac_answer["sign"]) == 64
        unsigned = {k: v for k, v in hmac_answer.items() if k != "sign"}
        assert calculate_signature_hmac(unsigned, m.v2_key) == hmac_answer["sign"]
        # a business error reaches wechatpy as its own exception, with v2's err_code
        with pytest.raises(WeChatPayException) as info:
            client.coupon.query_stock("404404")
        assert info.value.errcode == "COUPON_STOCK_NOT_FOUND"
    finally:
        client._http.close()


# ----------------------------------------------------------------------------- raw XML


@pytest.mark.parametrize(
    ("mch_id", "sign_type"),
    [(MD5_MCH, None), (MD5_MCH, "HMAC-SHA256"), (HMAC_MCH, "HMAC-SHA256"), (HMAC_MCH, "MD5")],
)
def test_hand_built_xml_post(
    gateway: RunningGateway,
    mode: str,
    mch_id: str,
    sign_type: str | None,
    sandbox_state: SandboxState,
    emulator: Emulator,
) -> None:
    """A Java/Go-style caller: hand-built signed XML, POSTed with httpx; the answer is text/xml,
    signed in the caller's sign type, and verifies with a sign check written from the spec."""
    key = sandbox_state.merchants[mch_id].v2_key
    with httpx.Client(base_url=gateway.base_url, timeout=20) as http:
        for stock_id in STOCKS[mch_id]:
            body = to_xml(request_fields(sandbox_state, mch_id, stock_id, sign_type=sign_type))
            with RouteWatch(emulator, gateway) as watch:
                resp = http.post(QUERY_PATH, content=body, headers={"content-type": "text/xml"})
                wait_shadows(gateway)
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/xml")
            answer = parse_answer(resp.content)
            assert answer["return_code"] == answer["result_code"] == "SUCCESS", answer
            assert answer["coupon_stock_id"] == stock_id
            assert len(answer["sign"]) == (64 if sign_type == "HMAC-SHA256" else 32)
            assert answer_verifies(answer, key)
            assert watch.served_by(mode) == expected_route(mode, mch_id, stock_id)


def test_device_info_is_echoed_and_signed(
    gateway: RunningGateway, sandbox_state: SandboxState
) -> None:
    """Optional v2 fields the caller sends (device_info) are echoed and covered by the sign."""
    fields = request_fields(sandbox_state, MD5_MCH, "1757", device_info="POS-0042")
    resp = httpx.post(gateway.base_url + QUERY_PATH, content=to_xml(fields), timeout=20)
    answer = parse_answer(resp.content)
    assert answer["device_info"] == "POS-0042"
    assert answer_verifies(answer, sandbox_state.merchants[MD5_MCH].v2_key)


# ----------------------------------------------------------------------------- npm SDK


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The npm wechatpay-axios-plugin, installed from tests/node/package-lock.json."""
    node = shutil.which("node")
    if node is None:
        if IN_CI:
            pytest.fail("Node.js is required in CI for the wechatpay-axios-plugin tests")
        pytest.skip("Node.js is not installed (the npm wechatpay-axios-plugin test needs it)")
    if not (NODE_DIR / "node_modules" / "wechatpay-axios-plugin").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install tests/node (wechatpay-axios-plugin)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_DIR / "query.js"


def run_node(
    script: Path,
    tmp_path: Path,
    state: SandboxState,
    mch_id: str,
    base_url: str,
    calls: list[Any],
    *,
    secret: str | None = None,
) -> list[dict[str, Any]]:
    """Run the SDK once with ``calls``; one result per call."""
    m = state.merchants[mch_id]
    if m.v3_verify_mode == "public_key":
        certs = {state.pub_key_id: state.pub_key_pem}
    else:
        certs = {state.platform_serial: state.platform_cert_pem}
    job = {
        "baseURL": base_url + "/",
        "mchid": mch_id,
        "secret": secret or m.v2_key,
        "serial": m.cert_serial,
        "privateKey": m.private_key_pem,
        "certs": certs,
        "calls": calls,
    }
    path = tmp_path / f"job-{mch_id}.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    path.chmod(0o600)
    done = subprocess.run(
        ["node", str(script), str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("mch_id", [MD5_MCH, HMAC_MCH])
def test_npm_wechatpay_axios_plugin(
    gateway: RunningGateway,
    mode: str,
    mch_id: str,
    node_client: Path,
    sandbox_state: SandboxState,
    tmp_path: Path,
) -> None:
    """wxpay.v2.mmpaymkttransfers.query_coupon_stock.post({...}) with only baseURL changed: the
    SDK's own v2 verifier (return codes, then the sign) accepts every answer, MD5 and HMAC."""
    m = sandbox_state.merchants[mch_id]
    calls = []
    for stock_id in STOCKS[mch_id]:
        for sign_type in ("MD5", "HMAC-SHA256"):
            calls.append(
                {
                    "v2": {
                        "coupon_stock_id": stock_id,
                        "appid": m.appid,
                        "mch_id": mch_id,
                        "op_user_id": mch_id,
                        "version": "1.0",
                        "type": "XML",
                        "sign_type": sign_type,
                    }
                }
            )
    calls.append({"v2": {"coupon_stock_id": "404404", "appid": m.appid, "mch_id": mch_id}})
    results = run_node(node_client, tmp_path, sandbox_state, mch_id, gateway.base_url, calls)
    wait_shadows(gateway)
    assert len(results) == len(calls)
    for call, result in zip(calls[:-1], results[:-1], strict=True):
        assert result["ok"], result
        data = result["data"]
        assert data["return_code"] == data["result_code"] == "SUCCESS"
        assert data["coupon_stock_id"] == call["v2"]["coupon_stock_id"]
        assert len(data["sign"]) == (64 if call["v2"]["sign_type"] == "HMAC-SHA256" else 32)
    # v2's business error: the SDK's verifier turns result_code=FAIL into its own error
    last = results[-1]
    assert not last["ok"] and last["code"] == "EV2_RES_STATUS_CODE_NOT_SUCESS"
    assert last["data"]["err_code"] == "COUPON_STOCK_NOT_FOUND"


def test_npm_sdk_checks_are_live(
    node_client: Path,
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    """The SDK's verifier is live (a badly signed answer is refused by it), and a caller with
    the wrong v2 key is refused by the gateway before any upstream call."""
    m = sandbox_state.merchants[MD5_MCH]
    call = {"v2": {"coupon_stock_id": "1757", "appid": m.appid, "mch_id": MD5_MCH}}
    emulator.set_fault("v2", "1757", "bad_signature")
    direct = run_node(node_client, tmp_path, sandbox_state, MD5_MCH, server.base_url, [call])
    assert direct[0]["code"] == "EV2_RES_SIGNATURE_NOT_EQUAL"
    emulator.clear_faults()
    cfg = write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)
    with running(cfg) as gw:
        before = emulator.request_counts
        wrong = run_node(
            node_client, tmp_path, sandbox_state, MD5_MCH, gw.base_url, [call], secret="k" * 32
        )
        assert emulator.request_counts == before  # refused before any upstream call
    assert wrong[0]["code"] == "EV2_RES_STATUS_CODE_NOT_SUCESS"
    assert wrong[0]["data"]["return_code"] == "FAIL"
    assert wrong[0]["data"]["return_msg"].startswith("签名错误")
    assert "sign" not in wrong[0]["data"]  # refusals are never signed


def test_npm_sdk_whole_sdk_through_passthrough(
    node_client: Path,
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    """With passthrough on, the SDK's v3 calls go through the same base URL unchanged: the
    emulator checks the SDK's v3 signature and the SDK verifies the emulator's answer."""
    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        mode="v3",
        gateway={"passthrough": True},
    )
    with running(cfg) as gw:
        for mch_id in (MD5_MCH, HMAC_MCH):
            m = sandbox_state.merchants[mch_id]
            stock_id = STOCKS[mch_id][0]
            serial = sandbox_state.pub_key_id if m.v3_verify_mode == "public_key" else None
            results = run_node(
                node_client,
                tmp_path,
                sandbox_state,
                mch_id,
                gw.base_url,
                [
                    {
                        "v3stock": {
                            "stock_id": stock_id,
                            "stock_creator_mchid": mch_id,
                            "wechatpay_serial": serial,
                        }
                    },
                    {"v2": {"coupon_stock_id": stock_id, "appid": m.appid, "mch_id": mch_id}},
                ],
            )
            v3, v2 = results
            assert v3["ok"], v3
            assert v3["status"] == 200 and v3["data"]["stock_id"] == stock_id
            assert v2["ok"], v2
            assert v2["data"]["coupon_stock_id"] == stock_id
