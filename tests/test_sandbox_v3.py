"""The emulator's v3 side (stock detail, certificates), checked with the wechatpayv3 SDK."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import (
    load_certificate,
    load_private_key,
    load_public_key,
    rsa_sign,
    rsa_verify,
)

from shim.sandbox import (
    FAULT_KINDS,
    SEEDED_STOCKS,
    V3_FAULT_KINDS,
    Emulator,
    RunningServer,
    SandboxRequest,
    SandboxState,
    seeded_stocks,
    serve,
)
from tests.wait import wait_until

MCH_PK = "10000098"  # public-key mode
MCH_PC = "10000099"  # platform-certificate mode
STOCK_PATH = "/v3/marketing/favor/stocks/{}?stock_creator_mchid={}"

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> SandboxState:
    """One key set for the whole session (key generation is slow)."""
    return SandboxState.load_or_create(tmp_path_factory.mktemp("sandbox-v3-state"))


@pytest.fixture(scope="module")
def module_emulator(state: SandboxState) -> Emulator:
    """The emulator shared by this module's loopback server."""
    return Emulator(state)


@pytest.fixture(scope="module")
def server(module_emulator: Emulator) -> Iterator[RunningServer]:
    """A real uvicorn server on 127.0.0.1 for the module."""
    with serve(module_emulator) as running:
        yield running


@pytest.fixture
def emulator(module_emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator with faults, counters and clock reset around each test."""
    module_emulator.clear_faults()
    module_emulator.reset_counts()
    module_emulator.clock = time.time
    yield module_emulator
    module_emulator.clear_faults()
    module_emulator.clock = time.time


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any requests-library call that is not to 127.0.0.1 (wechatpayv3 uses requests)."""
    original = requests.adapters.HTTPAdapter.send

    def guarded(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        assert urlsplit(request.url).hostname == "127.0.0.1", request.url
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", guarded)


@pytest.fixture(scope="module")
def wxpay(state: SandboxState, server: RunningServer) -> WeChatPay:
    """wechatpayv3 in public-key mode for 10000098, pointed at the loopback server."""
    m = state.merchants[MCH_PK]
    client = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=m.mchid,
        private_key=m.private_key_pem,
        cert_serial_no=m.cert_serial,
        appid=m.appid,
        apiv3_key=m.apiv3_key,
        public_key=state.pub_key_pem,
        public_key_id=state.pub_key_id,
    )
    client._core._gate_way = server.base_url
    return client


@pytest.fixture
def wxpay_platform(
    state: SandboxState, server: RunningServer, emulator: Emulator, tmp_path: Path
) -> WeChatPay:
    """wechatpayv3 in platform-certificate mode for 10000099, with no certificate loaded.

    The SDK loads certificates at construction (from the real gateway if none are on disk),
    so it is built from a copy of the certificate folder, then pointed at the emulator with
    its certificates forgotten and an empty folder: its first answer makes it fetch
    /v3/certificates from the emulator.
    """
    m = state.merchants[MCH_PC]
    seed = tmp_path / "seed-certs"
    shutil.copytree(state.certs_dir, seed)
    client = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=m.mchid,
        private_key=m.private_key_pem,
        cert_serial_no=m.cert_serial,
        appid=m.appid,
        apiv3_key=m.apiv3_key,
        cert_dir=str(seed),
    )
    client._core._gate_way = server.base_url
    client._core._certificates.clear()
    client._core._cert_dir = str(tmp_path / "downloaded") + "/"
    return client


@pytest.fixture
def client(emulator: Emulator) -> Iterator[httpx.Client]:
    """An httpx client served in-process by the emulator."""
    with httpx.Client(transport=emulator.mock_transport(), base_url="http://sandbox") as c:
        yield c


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _private_key(pem: str) -> Any:
    """The loaded merchant key (loading validates the key, which is slow)."""
    return load_private_key(pem)


def authorization(
    state: SandboxState,
    target: str,
    *,
    mchid: str = MCH_PK,
    method: str = "GET",
    timestamp: int | None = None,
    nonce: str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
    serial: str | None = None,
    body: str = "",
    key_of: str | None = None,
    order: tuple[str, ...] = ("mchid", "nonce_str", "signature", "timestamp", "serial_no"),
) -> str:
    """A WECHATPAY2-SHA256-RSA2048 Authorization header built by hand."""
    signer = state.merchants.get(key_of or mchid) or state.merchants[MCH_PK]
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = rsa_sign(
        load_private_key(signer.private_key_pem), f"{method}\n{target}\n{ts}\n{nonce}\n{body}\n"
    )
    items = {
        "mchid": mchid,
        "nonce_str": nonce,
        "signature": signature,
        "timestamp": ts,
        "serial_no": serial if serial is not None else signer.cert_serial,
    }
    return "WECHATPAY2-SHA256-RSA2048 " + ",".join(f'{k}="{items[k]}"' for k in order)


def get(
    client: httpx.Client,
    state: SandboxState,
    target: str,
    *,
    pub_key: bool = True,
    **auth: Any,
) -> httpx.Response:
    """GET ``target`` with a hand-built Authorization (and Wechatpay-Serial in public-key mode)."""
    headers = {"Accept": "application/json", "Authorization": authorization(state, target, **auth)}
    if pub_key:
        headers["Wechatpay-Serial"] = state.pub_key_id
    return client.get(target, headers=headers)


def verify(response: httpx.Response, state: SandboxState) -> bool:
    """Verify an answer's signature with the key its Wechatpay-Serial names."""
    serial = response.headers["wechatpay-serial"]
    if serial == state.pub_key_id:
        key = load_public_key(state.pub_key_pem)
    elif serial == state.platform_serial:
        key = load_certificate(state.platform_cert_pem).public_key()
    else:
        return False
    return bool(
        rsa_verify(
            response.headers["wechatpay-timestamp"],
            response.headers["wechatpay-nonce"],
            response.text,
            response.headers.get("wechatpay-signature", ""),
            key,
        )
    )


def stock_target(stock_id: str = "1757", creator: str = MCH_PK) -> str:
    """The stock detail path with its query."""
    return STOCK_PATH.format(stock_id, creator)


# ----------------------------------------------------------------------------- wechatpayv3


@pytest.mark.parametrize(
    "stock", [s for s in SEEDED_STOCKS if s.creator_mchid == MCH_PK], ids=lambda s: s.stock_id
)
def test_sdk_public_key_mode_gets_every_stock(stock: Any, wxpay: WeChatPay) -> None:
    """wechatpayv3 (public-key mode, verification on) gets each 10000098 stock's v3 view."""
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, stock.stock_id)
    assert code == 200
    assert json.loads(text) == stock.v3_view()


def test_sdk_platform_certificate_mode(
    wxpay_platform: WeChatPay, emulator: Emulator, state: SandboxState, tmp_path: Path
) -> None:
    """wechatpayv3 in platform-certificate mode fetches /v3/certificates and verifies."""
    code, text = wxpay_platform.marketing_favor_stock_detail(MCH_PC, "9856099")
    assert code == 200
    assert json.loads(text)["stock_id"] == "9856099"
    paths = [r.path for r in emulator.requests]
    assert paths == ["/v3/marketing/favor/stocks/9856099", "/v3/certificates"]
    saved = tmp_path / "downloaded" / f"{state.platform_serial}.pem"
    assert saved.read_text() == state.platform_cert_pem
    assert [c.serial_number for c in wxpay_platform._core._certificates] == [
        int(state.platform_serial, 16)
    ]


def test_sdk_not_found(wxpay: WeChatPay) -> None:
    """An unknown stock is a 404 RESOURCE_NOT_EXISTS JSON error."""
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "424242")
    assert code == 404
    assert json.loads(text)["code"] == "RESOURCE_NOT_EXISTS"


def test_sdk_creator_mismatch_is_not_found(wxpay: WeChatPay) -> None:
    """A stock_creator_mchid that did not create the stock is 404 RESOURCE_NOT_EXISTS."""
    code, text = wxpay.marketing_favor_stock_detail(MCH_PC, "1757")
    assert code == 404
    assert json.loads(text)["code"] == "RESOURCE_NOT_EXISTS"


def test_caller_need_not_be_creator(wxpay: WeChatPay) -> None:
    """10000098 may query a stock created by 10000099 when it names the right creator."""
    code, text = wxpay.marketing_favor_stock_detail(MCH_PC, "9856099")
    assert code == 200
    assert json.loads(text)["stock_creator_mchid"] == MCH_PC


# ----------------------------------------------------------------------------- signing


def test_answer_headers_public_key_mode(client: httpx.Client, state: SandboxState) -> None:
    """A PUB_KEY_ID request is answered with the public-key pair and every signing header."""
    response = get(client, state, stock_target())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["wechatpay-serial"] == state.pub_key_id
    assert response.headers["wechatpay-signature-type"] == "WECHATPAY2-SHA256-RSA2048"
    assert response.headers["request-id"]
    assert abs(int(response.headers["wechatpay-timestamp"]) - time.time()) < 60
    assert verify(response, state)


def test_answer_headers_platform_mode(client: httpx.Client, state: SandboxState) -> None:
    """Without Wechatpay-Serial the platform certificate key signs, with its serial."""
    response = get(client, state, stock_target(), pub_key=False)
    assert response.status_code == 200
    assert response.headers["wechatpay-serial"] == state.platform_serial
    assert verify(response, state)


def test_foreign_pub_key_id_is_param_error(client: httpx.Client, state: SandboxState) -> None:
    """A Wechatpay-Serial naming another PUB_KEY_ID is a 400 PARAM_ERROR."""
    headers = {
        "Authorization": authorization(state, stock_target()),
        "Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000000000000001",
    }
    response = client.get(stock_target(), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "PARAM_ERROR"


def test_authorization_items_in_any_order(client: httpx.Client, state: SandboxState) -> None:
    """The Authorization items are accepted in any order."""
    order = ("serial_no", "timestamp", "signature", "nonce_str", "mchid")
    assert get(client, state, stock_target(), order=order).status_code == 200


@pytest.mark.parametrize(
    "case",
    ["wrong_serial", "bad_signature", "unknown_mchid", "other_merchants_key", "stale", "future"],
)
def test_bad_authorization_is_401(case: str, client: httpx.Client, state: SandboxState) -> None:
    """Each kind of bad Authorization gives an unsigned 401 SIGN_ERROR (WeChat Pay signs an
    answer only when the request's signature verified)."""
    kwargs: dict[str, Any] = {
        "wrong_serial": {"serial": "0" * 40},
        "bad_signature": {"nonce": "A", "body": "x"},
        "unknown_mchid": {"mchid": "19999999", "key_of": MCH_PK},
        "other_merchants_key": {"key_of": MCH_PC, "serial": state.merchants[MCH_PK].cert_serial},
        "stale": {"timestamp": int(time.time()) - 310},
        "future": {"timestamp": int(time.time()) + 310},
    }[case]
    response = get(client, state, stock_target(), **kwargs)
    assert response.status_code == 401
    assert response.json()["code"] == "SIGN_ERROR"
    assert not any(k.startswith("wechatpay-") for k in response.headers)


def test_signature_over_other_target_is_401(client: httpx.Client, state: SandboxState) -> None:
    """The signature covers the raw path and query exactly as sent."""
    headers = {"Authorization": authorization(state, stock_target())}
    response = client.get(stock_target() + "&extra=1", headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer abc",
        'WECHATPAY2-SHA256-RSA2048 mchid="10000098"',
        'WECHATPAY2-SHA256-RSA2048 mchid="10000098",mchid="10000098"',
        "WECHATPAY2-SHA256-RSA2048 garbage",
    ],
    ids=["missing", "scheme", "incomplete", "duplicate", "garbage"],
)
def test_malformed_authorization_is_401(
    header: str | None, client: httpx.Client, state: SandboxState
) -> None:
    """A missing or malformed Authorization header gives 401 SIGN_ERROR."""
    headers = {} if header is None else {"Authorization": header}
    response = client.get(stock_target(), headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "SIGN_ERROR"


def test_timestamp_window_follows_injected_clock(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """The 5-minute window is measured on the emulator's injectable clock."""
    ts = 1_700_000_000
    emulator.clock = lambda: ts + 300.0
    assert get(client, state, stock_target(), timestamp=ts).status_code == 200
    emulator.clock = lambda: ts + 301.0
    assert get(client, state, stock_target(), timestamp=ts).status_code == 401
    emulator.clock = lambda: ts - 301.0
    assert get(client, state, stock_target(), timestamp=ts).status_code == 401


def test_sdk_stale_request_via_clock(wxpay: WeChatPay, emulator: Emulator) -> None:
    """An emulator clock 10 minutes ahead makes the SDK's fresh request stale: 401."""
    emulator.clock = lambda: time.time() + 600
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert code == 401
    assert json.loads(text)["code"] == "SIGN_ERROR"


@pytest.mark.parametrize(
    "target",
    [
        "/v3/marketing/favor/stocks/1757",
        "/v3/marketing/favor/stocks/1757?stock_creator_mchid=",
        "/v3/marketing/favor/stocks/1757?stock_creator_mchid=abc",
        "/v3/marketing/favor/stocks/1757?stock_creator_mchid=123456789012345678901",
        "/v3/marketing/favor/stocks/1757?stock_creator_mchid=10000098&stock_creator_mchid=1",
        "/v3/marketing/favor/stocks/123456789012345678901?stock_creator_mchid=10000098",
        "/v3/marketing/favor/stocks/?stock_creator_mchid=10000098",
        "/v3/marketing/favor/stocks/17%2057?stock_creator_mchid=10000098",
    ],
    ids=["no-creator", "empty", "letters", "too-long", "twice", "id-21", "id-empty", "id-space"],
)
def test_bad_parameters_are_400(target: str, client: httpx.Client, state: SandboxState) -> None:
    """Missing or invalid stock_creator_mchid / stock_id give 400 PARAM_ERROR."""
    response = get(client, state, target)
    assert response.status_code == 400
    assert response.json()["code"] == "PARAM_ERROR"
    assert verify(response, state)


def test_twenty_char_stock_id(client: httpx.Client, state: SandboxState) -> None:
    """A 20-character stock id is valid."""
    response = get(client, state, stock_target("12345678901234567890", MCH_PC), mchid=MCH_PC)
    assert response.status_code == 200


def test_unknown_v3_path_is_404(client: httpx.Client, state: SandboxState) -> None:
    """An unknown v3 path is a signed 404."""
    response = get(client, state, "/v3/unknown")
    assert response.status_code == 404
    assert verify(response, state)


def test_v3_view_shape() -> None:
    """v3 views never carry null; unknown extras and optional fields appear where seeded."""

    def no_nulls(value: Any) -> bool:
        if isinstance(value, dict):
            return all(no_nulls(v) for v in value.values())
        if isinstance(value, list):
            return all(no_nulls(v) for v in value)
        return value is not None

    for stock in SEEDED_STOCKS:
        assert no_nulls(stock.v3_view())
    full = seeded_stocks()["9856030"].v3_view()
    assert full["future_field"] == "tolerate me"
    assert full["stock_use_rule"]["prevent_api_abuse"] is True
    for key in ("card_id", "start_time", "stop_time", "cut_to_message"):
        assert key in full
    minimal = seeded_stocks()["9856000"].v3_view()
    for key in ("card_id", "start_time", "stop_time", "cut_to_message"):
        assert key not in minimal


# ----------------------------------------------------------------------------- faults


def test_fault_kind_lists() -> None:
    """FAULT_KINDS lists every kind; v2-only kinds are not v3 kinds."""
    assert len(set(FAULT_KINDS)) == len(FAULT_KINDS) == 28
    assert "billion_laughs" not in V3_FAULT_KINDS
    assert "err_code" not in V3_FAULT_KINDS


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("billion_laughs", "meaningless"),
        ("err_code:SYSTEMERROR", "meaningless"),
        ("nonsense", "unknown fault"),
        ("v3_error:200:OK", "v3_error"),
        ("v3_error:500", "v3_error"),
        ("http_500:x", "no arguments"),
    ],
)
def test_fault_validation(kind: str, message: str, emulator: Emulator) -> None:
    """Invalid or v2-only faults are refused on the v3 side with ValueError."""
    with pytest.raises(ValueError, match=message):
        emulator.set_fault("v3", "1757", kind)


def test_fault_argument_validation(emulator: Emulator) -> None:
    """times, delay_s and side are validated."""
    with pytest.raises(ValueError):
        emulator.set_fault("v3", "1757", "http_500", times=0)
    with pytest.raises(ValueError):
        emulator.set_fault("v3", "1757", "delay", delay_s=-1)
    with pytest.raises(ValueError):
        emulator.set_fault("v4", "1757", "http_500")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "SYSTEM_ERROR"),
        (502, "SERVICE_UNAVAILABLE"),
        (503, "SERVICE_UNAVAILABLE"),
        (429, "FREQUENCY_LIMIT_EXCEED"),
    ],
)
def test_http_status_faults(
    status: int, code: str, wxpay: WeChatPay, emulator: Emulator, state: SandboxState
) -> None:
    """http_<status> gives that status with a signed JSON error body."""
    emulator.set_fault("v3", "1757", f"http_{status}", times=1)
    got, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert (got, json.loads(text)["code"]) == (status, code)
    assert wxpay.marketing_favor_stock_detail(MCH_PK, "1757")[0] == 200


def test_v3_error_fault(client: httpx.Client, emulator: Emulator, state: SandboxState) -> None:
    """v3_error:<STATUS>:<CODE> gives a signed error with that status and code."""
    emulator.set_fault("v3", "1757", "v3_error:403:NO_AUTH", times=1)
    response = get(client, state, stock_target())
    assert response.status_code == 403
    assert response.json()["code"] == "NO_AUTH"
    assert verify(response, state)


@pytest.mark.parametrize(
    "kind", ["bad_signature", "missing_signature", "signtest", "tampered_body", "unknown_serial"]
)
def test_sdk_rejects_signature_faults(kind: str, wxpay: WeChatPay, emulator: Emulator) -> None:
    """wechatpayv3's own verification refuses each signature-breaking fault."""
    emulator.set_fault("v3", "1757", kind, times=1)
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises bare Exception/ValueError
        wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert wxpay.marketing_favor_stock_detail(MCH_PK, "1757")[0] == 200


@pytest.mark.parametrize(
    "kind", ["bad_signature", "missing_signature", "signtest", "tampered_body", "unknown_serial"]
)
def test_signature_faults_in_detail(
    kind: str, client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """Each signature fault breaks exactly what it says, and the answer fails verification."""
    emulator.set_fault("v3", "1757", kind, times=1)
    response = get(client, state, stock_target())
    assert response.status_code == 200
    assert not verify(response, state)
    if kind == "missing_signature":
        assert "wechatpay-signature" not in response.headers
    elif kind == "signtest":
        assert response.headers["wechatpay-signature"].startswith("WECHATPAY/SIGNTEST/")
    elif kind == "unknown_serial":
        assert response.headers["wechatpay-serial"] not in (state.pub_key_id, state.platform_serial)
    elif kind == "tampered_body":
        assert (
            response.json()["distributed_coupons"]
            == seeded_stocks()["1757"].distributed_coupons + 1
        )
    else:
        assert len(base64.b64decode(response.headers["wechatpay-signature"])) == 256


def test_stale_signature_fault(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """stale_signature: a valid signature with a timestamp 10 minutes old."""
    emulator.set_fault("v3", "1757", "stale_signature", times=1)
    response = get(client, state, stock_target())
    assert verify(response, state)
    assert time.time() - int(response.headers["wechatpay-timestamp"]) >= 590


def test_sdk_accepts_stale_signature(wxpay: WeChatPay, emulator: Emulator) -> None:
    """wechatpayv3 does not check freshness (the spec says so): a stale answer passes it."""
    emulator.set_fault("v3", "1757", "stale_signature", times=1)
    assert wxpay.marketing_favor_stock_detail(MCH_PK, "1757")[0] == 200


def test_malformed_fault(wxpay: WeChatPay, emulator: Emulator) -> None:
    """malformed: the SDK's verification passes but the body is not JSON."""
    emulator.set_fault("v3", "1757", "malformed", times=1)
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_wrong_content_type_fault(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """wrong_content_type: the signed body served as text/html."""
    emulator.set_fault("v3", "1757", "wrong_content_type", times=1)
    response = get(client, state, stock_target())
    assert response.headers["content-type"].startswith("text/html")
    assert verify(response, state)


def test_huge_body_fault(wxpay: WeChatPay, emulator: Emulator) -> None:
    """huge_body: several MB of valid, correctly signed JSON."""
    emulator.set_fault("v3", "1757", "huge_body", times=1)
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert code == 200
    assert len(text) > 4 * 1024 * 1024
    assert json.loads(text)["stock_id"] == "1757"


def test_reset_fault_over_loopback(wxpay: WeChatPay, emulator: Emulator) -> None:
    """reset over uvicorn: the SDK's connection is reset with no answer."""
    emulator.set_fault("v3", "1757", "reset", times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert wxpay.marketing_favor_stock_detail(MCH_PK, "1757")[0] == 200


def test_truncated_fault_over_loopback(wxpay: WeChatPay, emulator: Emulator) -> None:
    """truncated over uvicorn: the body ends before Content-Length."""
    emulator.set_fault("v3", "1757", "truncated", times=1)
    with pytest.raises(requests.exceptions.RequestException):
        wxpay.marketing_favor_stock_detail(MCH_PK, "1757")


def test_reset_and_truncated_in_process(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """In-process, reset raises ReadError and truncated RemoteProtocolError."""
    emulator.set_fault("v3", "1757", "reset", times=1)
    with pytest.raises(httpx.ReadError):
        get(client, state, stock_target())
    emulator.set_fault("v3", "1757", "truncated", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        get(client, state, stock_target())


def test_delay_fault_does_not_block_other_requests(
    server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """A delayed answer over uvicorn does not hold up another request meanwhile."""
    emulator.set_fault("v3", "1757", "delay", delay_s=1.0, times=1)
    results: dict[str, int] = {}

    def slow() -> None:
        with httpx.Client(base_url=server.base_url) as c:
            results["slow"] = get(c, state, stock_target("1757")).status_code

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: emulator.requests, "the slow call never reached the emulator")
    with httpx.Client(base_url=server.base_url) as c:
        results["fast"] = get(c, state, stock_target("1717")).status_code
    assert "slow" not in results  # the fast answer came while the slow one was still waiting
    thread.join()
    assert results == {"fast": 200, "slow": 200}


def test_delay_fault_times_out_client(
    server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """A delay longer than the client's read timeout makes a real socket time out."""
    emulator.set_fault("v3", "1757", "delay", delay_s=1.0, times=1)
    with (
        httpx.Client(base_url=server.base_url, timeout=0.1) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        get(c, state, stock_target())


async def test_async_client_in_process(emulator: Emulator, state: SandboxState) -> None:
    """The MockTransport serves httpx.AsyncClient, delay included."""
    emulator.set_fault("v3", "1757", "delay", delay_s=0.01, times=1)
    headers = {"Authorization": authorization(state, stock_target())}
    async with httpx.AsyncClient(
        transport=emulator.mock_transport(), base_url="http://sandbox"
    ) as c:
        response = await c.get(stock_target(), headers=headers)
    assert response.status_code == 200
    assert response.json() == seeded_stocks()["1757"].v3_view()
    assert verify(response, state)


async def test_async_client_read_timeout(emulator: Emulator, state: SandboxState) -> None:
    """An async client's read timeout shorter than a delay raises ReadTimeout in-process."""
    emulator.set_fault("v3", "1757", "delay", delay_s=30, times=1)
    headers = {"Authorization": authorization(state, stock_target())}
    async with httpx.AsyncClient(
        transport=emulator.mock_transport(), base_url="http://sandbox", timeout=0.02
    ) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get(stock_target(), headers=headers)


def test_certificates_not_faulted(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """A wildcard fault never hits /v3/certificates."""
    emulator.set_fault("v3", "*", "http_500")
    response = get(client, state, "/v3/certificates", pub_key=False)
    assert response.status_code == 200
    assert response.json()["data"][0]["serial_no"] == state.platform_serial
    assert get(client, state, stock_target()).status_code == 500


def test_counts_prove_no_request(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """request_counts counts per side, so a test can prove no request was sent."""
    assert emulator.request_counts["v3"] == 0
    get(client, state, stock_target())
    assert emulator.request_counts == {"v3": 1}


@settings(max_examples=150, deadline=None)
@given(header=st.text(max_size=300), target=st.text(max_size=60))
def test_hostile_authorization_is_401(header: str, target: str, state: SandboxState) -> None:
    """Any junk Authorization header (on any v3 target) gives an unsigned 401, never a crash."""
    reply = Emulator(state).handle(
        SandboxRequest(
            "GET",
            ("/v3/marketing/favor/stocks/" + target).encode("utf-8", "surrogatepass"),
            {"authorization": "WECHATPAY2-SHA256-RSA2048 " + header},
        )
    )
    assert reply.status == 401
    assert json.loads(reply.body)["code"] == "SIGN_ERROR"
    assert reply.header("wechatpay-signature") is None


# ----------------------------------------------------------------------------- strict as WeChat Pay


@pytest.mark.parametrize("accept", [None, "text/html", "application/xml"])
def test_missing_or_non_json_accept_is_refused(
    accept: str | None, client: httpx.Client, state: SandboxState
) -> None:
    """WeChat Pay v3 requires Accept: application/json: a well-signed request without it is a
    signed 400 INVALID_REQUEST (the request's signature verified, so the answer is signed)."""
    target = stock_target()
    headers = {"Authorization": authorization(state, target), "Wechatpay-Serial": state.pub_key_id}
    client.headers.pop("Accept", None)  # httpx sends Accept: */* unless told otherwise
    if accept is not None:
        headers["Accept"] = accept
    response = client.get(target, headers=headers)
    assert ("accept" in response.request.headers) is (accept is not None)
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REQUEST"
    assert verify(response, state)


@pytest.mark.parametrize("accept", ["application/json", "*/*", "application/json; charset=utf-8"])
def test_json_accepting_requests_are_served(
    accept: str, client: httpx.Client, state: SandboxState
) -> None:
    """Accept values that admit JSON are served normally."""
    target = stock_target()
    headers = {
        "Accept": accept,
        "Authorization": authorization(state, target),
        "Wechatpay-Serial": state.pub_key_id,
    }
    assert client.get(target, headers=headers).status_code == 200


def test_sdk_sees_an_unsigned_401(wxpay: WeChatPay, emulator: Emulator) -> None:
    """wechatpayv3 against a refused request: 401 SIGN_ERROR with no Wechatpay-* headers."""
    emulator.clock = lambda: time.time() + 600
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert code == 401 and json.loads(text)["code"] == "SIGN_ERROR"
    assert all(not r.fault for r in emulator.requests)


@pytest.mark.parametrize("fault", ["wrong_stock", "wrong_merchant"])
def test_sdk_verifies_mixed_up_answers(fault: str, wxpay: WeChatPay, emulator: Emulator) -> None:
    """wrong_stock / wrong_merchant answers are correctly signed: wechatpayv3, verification on,
    accepts them (the attack a client must catch by binding the answer to its request)."""
    emulator.set_fault("v3", "1757", fault)
    code, text = wxpay.marketing_favor_stock_detail(MCH_PK, "1757")
    assert code == 200
    data = json.loads(text)
    if fault == "wrong_stock":
        assert data["stock_id"] != "1757"
    else:
        assert data["stock_id"] == "1757" and data["stock_creator_mchid"] != MCH_PK


def _raw_get(server: RunningServer, state: SandboxState, *, timeout: float = 10.0) -> Any:
    """Send a well-signed v3 stock GET on a raw socket; return (arrival times, bytes)."""
    import socket

    target = stock_target()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
        f"Authorization: {authorization(state, target)}\r\n"
        f"Wechatpay-Serial: {state.pub_key_id}\r\nConnection: close\r\n\r\n"
    ).encode()
    arrivals: list[tuple[float, int]] = []
    data = b""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(request)
        started = time.monotonic()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            arrivals.append((time.monotonic() - started, len(chunk)))
            data += chunk
    return arrivals, data


def test_header_drip_sends_the_head_one_byte_at_a_time(
    server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """header_drip over a real socket: bytes of the status line and headers arrive one by one,
    each well inside a 0.2 s read timeout, and the whole head takes far longer than that."""
    emulator.set_fault("v3", "1757", "header_drip", delay_s=0.005)
    arrivals, data = _raw_get(server, state)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"wechatpay-signature" in head
    assert json.loads(body)["stock_id"] == "1757"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) > 100 and max(gaps) < 0.2
    assert arrivals[-1][0] > 1.0


def test_body_drip_sends_the_body_one_byte_at_a_time(
    server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """body_drip: the head at once, then the body in one-byte chunks, each inside 0.2 s."""
    emulator.set_fault("v3", "1757", "body_drip", delay_s=0.002)
    with httpx.Client(base_url=server.base_url, timeout=0.2) as c:
        target = stock_target()
        headers = {
            "Accept": "application/json",
            "Authorization": authorization(state, target),
            "Wechatpay-Serial": state.pub_key_id,
        }
        started = time.monotonic()
        with c.stream("GET", target, headers=headers) as response:
            chunks = list(response.iter_raw())
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and len(chunks) > 100
    assert max(len(c) for c in chunks) <= 4  # one byte per send (the kernel may join a few)
    assert elapsed > 0.2  # no read timeout fired although the whole answer took longer


@pytest.mark.parametrize(("fault", "layers"), [("encoding_bomb", 1), ("stacked_encodings", 2)])
def test_encoding_bombs_are_small_and_inflate_far(
    fault: str, layers: int, server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """encoding_bomb / stacked_encodings: a small gzip body (one or two layers) declaring
    Content-Encoding gzip (gzip, gzip) that inflates to bomb_bytes (x4 stacked)."""
    import zlib

    emulator.bomb_bytes = 4 * 1024 * 1024
    try:
        emulator.set_fault("v3", "1757", fault)
        _, data = _raw_get(server, state)
    finally:
        emulator.bomb_bytes = 64 * 1024 * 1024
    head, _, body = data.partition(b"\r\n\r\n")
    assert (b"content-encoding: " + b", ".join([b"gzip"] * layers)) in head
    assert len(body) < 64 * 1024
    for _ in range(layers - 1):
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    while body:
        total += len(inflate.decompress(body, 1 << 20))
        body = inflate.unconsumed_tail
    assert total == 4 * 1024 * 1024 * (4 if layers == 2 else 1)


def test_oversized_headers_exceed_what_clients_accept(
    server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """oversized_headers: over 256 KiB of headers on the socket; httpx refuses the answer."""
    emulator.set_fault("v3", "1757", "oversized_headers", times=2)
    _, data = _raw_get(server, state)
    assert len(data.partition(b"\r\n\r\n")[0]) > 256 * 1024
    target = stock_target()
    headers = {
        "Accept": "application/json",
        "Authorization": authorization(state, target),
        "Wechatpay-Serial": state.pub_key_id,
    }
    with httpx.Client(base_url=server.base_url) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(target, headers=headers)


@pytest.mark.parametrize(
    "fault",
    [
        "header_drip",
        "body_drip",
        "encoding_bomb",
        "stacked_encodings",
        "wrong_stock",
        "wrong_merchant",
        "oversized_headers",
    ],
)
def test_new_v3_faults_can_be_armed_through_the_admin_endpoint(
    fault: str, server: RunningServer, emulator: Emulator
) -> None:
    """Each new fault kind is armable from loopback through /__admin/faults."""
    spec = {"side": "v3", "stock_id": "1757", "fault": fault, "delay_s": 0.01}
    # Arming a bomb builds it (a stacked one compresses 256 MiB: seconds on a loaded machine)
    response = httpx.post(server.base_url + "/__admin/faults", json=spec, timeout=60)
    assert response.status_code == 201
    assert [f.fault for f in emulator.faults] == [fault]


@pytest.mark.parametrize("fault", ["wrong_appid", "unsigned_fail"])
def test_v2_only_faults_are_refused_on_v3(fault: str, emulator: Emulator) -> None:
    """wrong_appid and unsigned_fail are v2 notions."""
    with pytest.raises(ValueError, match="meaningless"):
        emulator.set_fault("v3", "1757", fault)
