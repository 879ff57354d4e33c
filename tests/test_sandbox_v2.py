"""The emulator's v2 side (query_coupon_stock), checked with wechatpy and the spec's vectors."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import xmltodict
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac

from shim.sandbox import (
    DIVERGENT_FIELDS,
    DIVERGENT_STOCK_ID,
    SEEDED_STOCKS,
    V2_ERR_CODE_DES,
    V2_FAULT_KINDS,
    V2_PATH,
    Emulator,
    RunningServer,
    SandboxRequest,
    SandboxState,
    billion_laughs_xml,
    parse_request_xml,
    render_xml,
    seeded_stocks,
    serve,
    v2_sign,
)

# private: emulator internals under test
from shim.sandbox._v2 import V2XmlError

MCH_MD5 = "10000098"
MCH_HMAC = "10000099"
V2_ERR_CODES = (
    "COUPON_STOCK_ID_NOT_VALID",
    "SIGN_ERROR",
    "REQ_PARAM_XML_ERR",
    "COUPON_STOCK_ID_EMPTY",
    "MCH_ID_EMPTY",
    "CODE_2_ID_ERR",
    "GET_COUPON_STOCK_FAIL",
    "COUPON_STOCK_NOT_FOUND",
    "SYSTEMERROR",
    "NOAUTH",
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> SandboxState:
    """One key set for the whole session (key generation is slow)."""
    return SandboxState.load_or_create(tmp_path_factory.mktemp("sandbox-v2-state"))


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
    """The shared emulator, with faults and counters reset around each test."""
    module_emulator.clear_faults()
    module_emulator.reset_counts()
    yield module_emulator
    module_emulator.clear_faults()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any requests-library call that is not to 127.0.0.1."""
    original = requests.adapters.HTTPAdapter.send

    def guarded(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        assert urlsplit(request.url).hostname == "127.0.0.1", request.url
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", guarded)


@pytest.fixture
def client(emulator: Emulator) -> Iterator[httpx.Client]:
    """An httpx client served in-process by the emulator."""
    with httpx.Client(transport=emulator.mock_transport(), base_url="http://sandbox") as c:
        yield c


@pytest.fixture
def wechatpy_client(
    state: SandboxState, server: RunningServer, emulator: Emulator
) -> Iterator[WeChatPay]:
    """wechatpy's v2 client for merchant 10000098 pointed at the loopback server."""
    m = state.merchants[MCH_MD5]
    wc = WeChatPay(m.appid, m.v2_key, m.mchid)
    wc.API_BASE_URL = server.base_url + "/"
    yield wc
    wc._http.close()


# ----------------------------------------------------------------------------- helpers


def signed_body(
    state: SandboxState,
    mchid: str = MCH_MD5,
    stock_id: str | None = "1717",
    sign_type: str | None = None,
    **extra: str,
) -> bytes:
    """A v2 request body, signed with the merchant's key."""
    m = state.merchants[mchid]
    fields: dict[str, str] = {"appid": m.appid, "mch_id": mchid, "nonce_str": "n0nce5tr1ng"}
    if stock_id is not None:
        fields["coupon_stock_id"] = stock_id
    if sign_type is not None:
        fields["sign_type"] = sign_type
    fields.update(extra)
    fields["sign"] = v2_sign(fields, m.v2_key, sign_type or "MD5")
    return render_xml(fields)


def post(client: httpx.Client, body: bytes) -> dict[str, str]:
    """POST a v2 body and parse the XML answer (checks the v2 content type)."""
    response = client.post(V2_PATH, content=body, headers={"Content-Type": "text/xml"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    return dict(xmltodict.parse(response.content, disable_entities=True)["xml"])


def sign_ok(answer: dict[str, str], key: str) -> bool:
    """Whether an answer's sign verifies (type from its length, as the spec says)."""
    sign_type = "HMAC-SHA256" if len(answer["sign"]) == 64 else "MD5"
    return hmac.compare_digest(answer["sign"], v2_sign(answer, key, sign_type))


def _wrap_xml(text: str) -> bytes:
    """Put arbitrary text inside an <xml><a> element."""
    return f"<xml><a>{text}</a></xml>".encode()


# ----------------------------------------------------------------------------- signing


@pytest.mark.parametrize(
    ("sign_type", "expected"),
    [
        ("MD5", "9A0A8659F005D6984697E2CA0A9CF3B7"),
        ("HMAC-SHA256", "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"),
    ],
)
def test_official_v2_test_vector(sign_type: str, expected: str) -> None:
    """The emulator's v2 signing reproduces the official test vector for both sign types."""
    params = {
        "appid": "wxd930ea5d5a258f4f",
        "mch_id": "10000100",
        "device_info": "1000",
        "body": "test",
        "nonce_str": "ibuaiVcKdpRxkhJA",
    }
    assert v2_sign(params, "192006250b4c09247ec02edce69f6a2d", sign_type) == expected


def test_v2_sign_skips_empty_values_and_sign() -> None:
    """Empty and None values and the sign field itself do not take part in the signature."""
    key = "k" * 32
    base = v2_sign({"a": "1", "b": "2"}, key)
    assert v2_sign({"a": "1", "b": "2", "c": "", "d": None, "sign": "X"}, key) == base


def test_v2_sign_agrees_with_wechatpy() -> None:
    """Our MD5 and HMAC signatures equal wechatpy's own for the same fields."""
    params = {"appid": "wx1", "mch_id": "1", "coupon_stock_id": "1717", "nonce_str": "abc"}
    key = "0123456789abcdef0123456789abcdef"
    assert v2_sign(params, key) == calculate_signature(params, key)
    assert v2_sign(params, key, "HMAC-SHA256") == calculate_signature_hmac(params, key)


def test_unknown_sign_type_is_a_value_error() -> None:
    """Asking for a sign type the protocol does not have raises ValueError."""
    with pytest.raises(ValueError, match="sign type"):
        v2_sign({"a": "1"}, "k", "SHA1")


# ----------------------------------------------------------------------------- wechatpy


def test_wechatpy_query_stock_success(wechatpy_client: WeChatPay, state: SandboxState) -> None:
    """wechatpy gets the official-sample stock over loopback, with a sign that verifies."""
    result = wechatpy_client.coupon.query_stock("1717")
    assert result["return_code"] == "SUCCESS"
    assert result["result_code"] == "SUCCESS"
    assert result["coupon_value"] == "5"
    assert result["coupon_mininumn"] == "10"
    assert result["coupon_stock_status"] == "4"
    assert result["coupon_total"] == "100"
    assert result["begin_time"] == "1943787483"
    assert result["end_time"] == "1943787490"
    assert result["create_time"] == "1943787420"
    assert result["coupon_budget"] == "500"
    assert result["appid"] == state.merchants[MCH_MD5].appid
    assert "device_info" not in result
    assert "sign_type" not in result
    fields = {k: v for k, v in result.items() if k != "sign"}
    assert result["sign"] == calculate_signature(fields, state.merchants[MCH_MD5].v2_key)


def test_wechatpy_unknown_stock_raises(wechatpy_client: WeChatPay) -> None:
    """An unknown stock makes wechatpy raise WeChatPayException with COUPON_STOCK_NOT_FOUND."""
    with pytest.raises(WeChatPayException) as info:
        wechatpy_client.coupon.query_stock("424242")
    assert info.value.errcode == "COUPON_STOCK_NOT_FOUND"
    assert info.value.result_code == "FAIL"


def test_wechatpy_other_merchants_stock_is_not_valid(wechatpy_client: WeChatPay) -> None:
    """A stock created by another merchant answers COUPON_STOCK_ID_NOT_VALID."""
    with pytest.raises(WeChatPayException) as info:
        wechatpy_client.coupon.query_stock("9856099")
    assert info.value.errcode == "COUPON_STOCK_ID_NOT_VALID"


def test_wechatpy_device_info_is_echoed(wechatpy_client: WeChatPay) -> None:
    """A non-empty device_info is echoed back."""
    result = wechatpy_client.coupon.query_stock("1757", device_info="POS-7")
    assert result["device_info"] == "POS-7"


@pytest.mark.parametrize("code", V2_ERR_CODES)
def test_every_err_code_via_fault(
    code: str, wechatpy_client: WeChatPay, emulator: Emulator, state: SandboxState
) -> None:
    """Every err_code of this API can be produced on demand; the answer is signed."""
    emulator.set_fault("v2", "1717", f"err_code:{code}", times=1)
    with pytest.raises(WeChatPayException) as info:
        wechatpy_client.coupon.query_stock("1717")
    assert info.value.errcode == code
    assert info.value.errmsg == V2_ERR_CODE_DES[code]
    answer = xmltodict.parse(info.value.response.text)["xml"]
    assert sign_ok(answer, state.merchants[MCH_MD5].v2_key)
    assert wechatpy_client.coupon.query_stock("1717")["result_code"] == "SUCCESS"


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("stock", [s for s in SEEDED_STOCKS], ids=lambda s: s.stock_id)
def test_every_seeded_stock_v2_view(stock: Any, client: httpx.Client, state: SandboxState) -> None:
    """Each seeded stock answers its v2 view to its creator, signed in the request's type."""
    sign_type = "HMAC-SHA256" if stock.creator_mchid == MCH_HMAC else None
    answer = post(client, signed_body(state, stock.creator_mchid, stock.stock_id, sign_type))
    assert answer["return_code"] == "SUCCESS"
    assert answer["result_code"] == "SUCCESS"
    coupon = {k: v for k, v in answer.items() if k.startswith(("coupon_", "max_", "is_", "begin"))}
    coupon |= {k: answer[k] for k in ("end_time", "create_time", "end_time_t", "create_time_t")}
    assert coupon == stock.v2_fields()
    assert len(answer["sign"]) == (64 if sign_type else 32)
    assert sign_ok(answer, state.merchants[stock.creator_mchid].v2_key)


def test_hmac_merchant_is_answered_with_hmac(client: httpx.Client, state: SandboxState) -> None:
    """An HMAC-SHA256 request of merchant 10000099 gets a 64-char HMAC sign back."""
    answer = post(client, signed_body(state, MCH_HMAC, "9856099", "HMAC-SHA256"))
    assert answer["result_code"] == "SUCCESS"
    assert len(answer["sign"]) == 64
    fields = {k: v for k, v in answer.items() if k != "sign"}
    assert answer["sign"] == calculate_signature_hmac(fields, state.merchants[MCH_HMAC].v2_key)
    assert "sign_type" not in answer


def test_md5_request_of_hmac_merchant_is_accepted(
    client: httpx.Client, state: SandboxState
) -> None:
    """sign_type absent means MD5, whatever sign type the merchant prefers."""
    answer = post(client, signed_body(state, MCH_HMAC, "9856099"))
    assert answer["result_code"] == "SUCCESS"
    assert len(answer["sign"]) == 32


def test_wrong_sign_is_sign_error(client: httpx.Client, state: SandboxState) -> None:
    """A request signed with the wrong key gets a signed SIGN_ERROR business error."""
    fields = {
        "appid": "wx5edab3bdfba3dc1c",
        "mch_id": MCH_MD5,
        "nonce_str": "x",
        "coupon_stock_id": "1717",
    }
    fields["sign"] = v2_sign(fields, "W" * 32)
    answer = post(client, render_xml(fields))
    assert (answer["return_code"], answer["result_code"]) == ("SUCCESS", "FAIL")
    assert answer["err_code"] == "SIGN_ERROR"
    assert sign_ok(answer, state.merchants[MCH_MD5].v2_key)


@pytest.mark.parametrize("sign_type", ["HMAC-SHA256", "SHA1"])
def test_sign_type_mismatch_is_sign_error(
    sign_type: str, client: httpx.Client, state: SandboxState
) -> None:
    """A declared sign_type that does not match the sign (or is unknown) is SIGN_ERROR."""
    m = state.merchants[MCH_MD5]
    fields = {"appid": m.appid, "mch_id": m.mchid, "nonce_str": "x", "coupon_stock_id": "1717"}
    fields["sign_type"] = sign_type
    fields["sign"] = v2_sign(fields, m.v2_key, "MD5")
    assert post(client, render_xml(fields))["err_code"] == "SIGN_ERROR"


def test_missing_sign_is_sign_error(client: httpx.Client, state: SandboxState) -> None:
    """A request without sign is SIGN_ERROR."""
    body = render_xml({"appid": "wx5edab3bdfba3dc1c", "mch_id": MCH_MD5, "nonce_str": "x"})
    assert post(client, body)["err_code"] == "SIGN_ERROR"


def test_missing_stock_id(client: httpx.Client, state: SandboxState) -> None:
    """No coupon_stock_id gives COUPON_STOCK_ID_EMPTY."""
    assert post(client, signed_body(state, stock_id=None))["err_code"] == "COUPON_STOCK_ID_EMPTY"


def test_non_numeric_stock_id_is_not_valid(client: httpx.Client, state: SandboxState) -> None:
    """A stock id that is not digits gives COUPON_STOCK_ID_NOT_VALID."""
    answer = post(client, signed_body(state, stock_id="17a7"))
    assert answer["err_code"] == "COUPON_STOCK_ID_NOT_VALID"


def test_missing_mch_id_is_unsigned_return_fail(client: httpx.Client) -> None:
    """No mch_id gives an unsigned return_code=FAIL naming MCH_ID_EMPTY (no key to sign with;
    v2 signs every return_code=SUCCESS answer)."""
    answer = post(client, render_xml({"appid": "wx5edab3bdfba3dc1c", "nonce_str": "x"}))
    assert answer == {"return_code": "FAIL", "return_msg": answer["return_msg"]}
    assert answer["return_msg"].startswith("MCH_ID_EMPTY")


def test_unknown_mch_id_is_unsigned_return_fail(client: httpx.Client) -> None:
    """An unknown mch_id gives an unsigned return_code=FAIL naming CODE_2_ID_ERR, never an
    unsigned return_code=SUCCESS."""
    body = render_xml({"appid": "wx1", "mch_id": "19999999", "nonce_str": "x", "sign": "A" * 32})
    answer = post(client, body)
    assert answer == {"return_code": "FAIL", "return_msg": answer["return_msg"]}
    assert answer["return_msg"].startswith("CODE_2_ID_ERR")


def test_appid_of_another_merchant_is_code_2_id_err(
    client: httpx.Client, state: SandboxState
) -> None:
    """An appid that does not belong to mch_id gives CODE_2_ID_ERR."""
    body = signed_body(state, MCH_MD5, "1717", appid=state.merchants[MCH_HMAC].appid)
    assert post(client, body)["err_code"] == "CODE_2_ID_ERR"


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<xml><mch_id>1</mch_id>",
        b"<root><mch_id>1</mch_id></root>",
        b"<xml><mch_id><a>1</a></mch_id></xml>",
        b"<xml><mch_id>1</mch_id><mch_id>2</mch_id></xml>",
        b'<xml><mch_id a="1">1</mch_id></xml>',
        b"",
    ],
    ids=["garbage", "unclosed", "wrong-root", "nested", "repeated", "attribute", "empty"],
)
def test_bad_xml_is_unsigned_fail(body: bytes, client: httpx.Client) -> None:
    """Bad XML gives return_code=FAIL with a return_msg and no sign."""
    answer = post(client, body)
    assert answer["return_code"] == "FAIL"
    assert answer["return_msg"]
    assert "sign" not in answer
    assert "result_code" not in answer


def test_billion_laughs_request_is_refused(client: httpx.Client) -> None:
    """An entity-expansion request body is refused cleanly, without expanding anything."""
    answer = post(client, billion_laughs_xml(levels=12))
    assert answer["return_code"] == "FAIL"
    assert "DTD" in answer["return_msg"]


def test_external_entity_request_is_refused(client: httpx.Client) -> None:
    """An external-entity (XXE) request body is refused."""
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><a>&e;</a></xml>'
    assert post(client, body)["return_code"] == "FAIL"


def test_oversized_request_is_refused(client: httpx.Client, state: SandboxState) -> None:
    """A request body over the size cap is refused before parsing."""
    body = signed_body(state, padding="x" * 70_000)
    answer = post(client, body)
    assert answer["return_code"] == "FAIL"
    assert "too large" in answer["return_msg"]


def test_get_is_refused(client: httpx.Client) -> None:
    """The v2 endpoint only takes POST."""
    response = client.get(V2_PATH)
    answer = xmltodict.parse(response.content)["xml"]
    assert answer["return_code"] == "FAIL"


def test_parse_request_xml_direct() -> None:
    """The request parser returns flat strings and raises V2XmlError for DTDs."""
    assert parse_request_xml(b"<xml><a>1</a><b><![CDATA[x y]]></b><c/></xml>") == {
        "a": "1",
        "b": "x y",
        "c": "",
    }
    with pytest.raises(V2XmlError):
        parse_request_xml(b"<!DOCTYPE xml><xml/>")


def test_render_xml_escapes_cdata_end() -> None:
    """A value containing ']]>' survives a render/parse round trip."""
    body = render_xml({"device_info": "a]]>b", "n": "12"})
    assert parse_request_xml(body) == {"device_info": "a]]>b", "n": "12"}


# ----------------------------------------------------------------------------- stock model


def test_divergent_stock_differs_in_exactly_two_fields() -> None:
    """The divergent stock's v2 view differs from its v3 mapping in exactly the named fields."""
    stock = seeded_stocks()[DIVERGENT_STOCK_ID]
    legacy, mapped = stock.v2_fields(), stock.mapped_from_v3()
    assert legacy.keys() == mapped.keys()
    assert {k for k in legacy if legacy[k] != mapped[k]} == set(DIVERGENT_FIELDS)
    assert set(DIVERGENT_FIELDS) == {"coupon_total", "is_send_num"}


def test_only_declared_stocks_differ() -> None:
    """Legacy and mapped views agree except for v2_only keys and the divergent stock."""
    for stock in SEEDED_STOCKS:
        legacy, mapped = stock.v2_fields(), stock.mapped_from_v3()
        extra = set(legacy) - set(mapped)
        assert extra == set(stock.v2_only), stock.stock_id
        differing = {k for k in mapped if legacy[k] != mapped[k]}
        assert differing == set(stock.v2_divergence), stock.stock_id


def test_stock_without_fixed_normal_coupon_keeps_v2_values() -> None:
    """Without fixed_normal_coupon the v2 view still has the real v2's value; the mapping not."""
    stock = seeded_stocks()["9856010"]
    assert "fixed_normal_coupon" not in stock.v3_view()["stock_use_rule"]
    assert stock.v2_fields()["coupon_value"] == "100"
    assert "coupon_value" not in stock.mapped_from_v3()


def test_stock_without_use_rule() -> None:
    """A stock with no stock_use_rule maps no rule-derived key but v2 still answers them."""
    stock = seeded_stocks()["9856011"]
    assert "stock_use_rule" not in stock.v3_view()
    mapped = stock.mapped_from_v3()
    for key in ("coupon_value", "coupon_mininumn", "coupon_total", "max_quota", "coupon_budget"):
        assert key not in mapped
        assert key in stock.v2_fields()


def test_midnight_crossing_time() -> None:
    """2024-03-01T17:30:00Z is 1709314200 and 20240302013000 in Beijing time."""
    fields = seeded_stocks()["9856020"].v2_fields()
    assert fields["create_time"] == "1709314200"
    assert fields["create_time_t"] == "20240302013000"


def test_every_v3_status_maps_to_its_v2_code() -> None:
    """The seeded table covers all five statuses with the v2 codes 1/2/4/8/16."""
    seen = {s.status: s.v2_fields()["coupon_stock_status"] for s in SEEDED_STOCKS}
    assert seen == {"unactivated": "1", "audit": "2", "running": "4", "stoped": "8", "paused": "16"}


# ----------------------------------------------------------------------------- faults


def test_v3_only_faults_are_rejected_on_v2(emulator: Emulator) -> None:
    """Faults meaningless on v2 raise ValueError."""
    for kind in ("stale_signature", "unknown_serial", "signtest", "v3_error:500:SYSTEM_ERROR"):
        with pytest.raises(ValueError, match="meaningless"):
            emulator.set_fault("v2", "1717", kind)
    assert all(k not in V2_FAULT_KINDS for k in ("stale_signature", "signtest"))


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_http_status_faults(status: int, client: httpx.Client, emulator: Emulator) -> None:
    """http_<status> answers that status with an unsigned HTML page."""
    emulator.set_fault("v2", "1717", f"http_{status}", times=1)
    response = client.post(V2_PATH, content=b"<xml><coupon_stock_id>1717</coupon_stock_id></xml>")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")


def test_fault_times_and_wildcard(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """times=N faults exactly N requests; '*' matches any stock; clear_faults disarms."""
    emulator.set_fault("v2", "*", "http_503", times=2)
    codes = [client.post(V2_PATH, content=signed_body(state)).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    emulator.set_fault("v2", "1717", "http_500")
    assert client.post(V2_PATH, content=signed_body(state)).status_code == 500
    assert client.post(V2_PATH, content=signed_body(state, stock_id="1757")).status_code == 200
    emulator.clear_faults()
    assert client.post(V2_PATH, content=signed_body(state)).status_code == 200
    assert emulator.request_counts["v2"] == 6
    assert emulator.request_counts["v3"] == 0


def test_delay_fault_answers_normally(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """delay waits, then gives the normal answer."""
    emulator.set_fault("v2", "1717", "delay", delay_s=0.05, times=1)
    assert post(client, signed_body(state))["result_code"] == "SUCCESS"


def test_delay_fault_longer_than_read_timeout(emulator: Emulator, state: SandboxState) -> None:
    """A delay beyond the client's read timeout surfaces as httpx.ReadTimeout in-process."""
    emulator.set_fault("v2", "1717", "delay", delay_s=30, times=1)
    with (
        httpx.Client(transport=emulator.mock_transport(), timeout=0.05) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post("http://sandbox" + V2_PATH, content=signed_body(state))


def test_reset_fault_in_process(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """reset raises httpx.ReadError in-process: no answer at all."""
    emulator.set_fault("v2", "1717", "reset", times=1)
    with pytest.raises(httpx.ReadError):
        client.post(V2_PATH, content=signed_body(state))


def test_truncated_fault_in_process(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """truncated raises httpx.RemoteProtocolError after a partial body."""
    emulator.set_fault("v2", "1717", "truncated", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(V2_PATH, content=signed_body(state))


def test_malformed_fault(client: httpx.Client, emulator: Emulator, state: SandboxState) -> None:
    """malformed gives an XML body that does not parse."""
    emulator.set_fault("v2", "1717", "malformed", times=1)
    response = client.post(V2_PATH, content=signed_body(state))
    assert response.status_code == 200
    assert b"<sign>" in response.content
    with pytest.raises(Exception):  # noqa: B017 - expat's error type
        xmltodict.parse(response.content)


def test_wrong_content_type_fault(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """wrong_content_type serves the normal signed body as text/html."""
    emulator.set_fault("v2", "1717", "wrong_content_type", times=1)
    response = client.post(V2_PATH, content=signed_body(state))
    assert response.headers["content-type"].startswith("text/html")
    answer = xmltodict.parse(response.content)["xml"]
    assert sign_ok(answer, state.merchants[MCH_MD5].v2_key)


@pytest.mark.parametrize("kind", ["bad_signature", "tampered_body"])
def test_signature_breaking_faults(
    kind: str, client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """bad_signature and tampered_body give a well-formed answer whose sign does not verify."""
    emulator.set_fault("v2", "1717", kind, times=1)
    answer = post(client, signed_body(state))
    assert answer["result_code"] == "SUCCESS"
    assert len(answer["sign"]) == 32
    assert not sign_ok(answer, state.merchants[MCH_MD5].v2_key)


def test_missing_signature_fault(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """missing_signature drops the sign element."""
    emulator.set_fault("v2", "1717", "missing_signature", times=1)
    answer = post(client, signed_body(state))
    assert answer["result_code"] == "SUCCESS"
    assert "sign" not in answer


def test_huge_body_fault(client: httpx.Client, emulator: Emulator, state: SandboxState) -> None:
    """huge_body gives a correctly signed answer of several MB."""
    emulator.set_fault("v2", "1717", "huge_body", times=1)
    response = client.post(V2_PATH, content=signed_body(state))
    assert len(response.content) > 4 * 1024 * 1024
    answer = xmltodict.parse(response.content)["xml"]
    assert sign_ok(answer, state.merchants[MCH_MD5].v2_key)


def test_billion_laughs_answer_fault(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """billion_laughs answers an entity-expansion document that a safe parser refuses."""
    emulator.set_fault("v2", "1717", "billion_laughs", times=1)
    response = client.post(V2_PATH, content=signed_body(state))
    assert b"<!DOCTYPE" in response.content
    assert b"<!ENTITY" in response.content
    with pytest.raises(ValueError):
        xmltodict.parse(response.content, disable_entities=True)


def test_err_code_fault_on_bad_request_is_unsigned(
    client: httpx.Client, emulator: Emulator
) -> None:
    """An err_code fault for a request without a known merchant cannot be signed."""
    emulator.set_fault("v2", "*", "err_code:SYSTEMERROR", times=1)
    answer = post(client, b"garbage")
    assert answer["err_code"] == "SYSTEMERROR"
    assert "sign" not in answer


def test_v2_over_loopback_counts(
    wechatpy_client: WeChatPay, emulator: Emulator, tmp_path: Path
) -> None:
    """Requests over loopback are counted per side and recorded."""
    wechatpy_client.coupon.query_stock("1757")
    assert emulator.request_counts == {"v2": 1}
    (record,) = emulator.requests
    assert (record.side, record.method, record.stock_id) == ("v2", "POST", "1757")


def test_md5_helper_matches_hashlib() -> None:
    """The MD5 branch is plain upper-case MD5 over stringSignTemp."""
    expected = hashlib.md5(b"a=1&key=K", usedforsecurity=False).hexdigest().upper()
    assert v2_sign({"a": "1"}, "K") == expected


# ----------------------------------------------------------------------------- hostile input


@settings(max_examples=150, deadline=None)
@given(body=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(_wrap_xml)))
def test_parser_gives_dict_or_typed_error(body: bytes) -> None:
    """Any request body parses to flat strings or raises V2XmlError, nothing else."""
    try:
        fields = parse_request_xml(body)
    except V2XmlError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=300))
def test_handler_always_answers_xml(body: bytes, state: SandboxState) -> None:
    """Whatever the body, the v2 endpoint answers a 200 XML document with a return_code."""
    reply = Emulator(state).handle(
        SandboxRequest("POST", V2_PATH.encode(), {"content-type": "text/xml"}, body)
    )
    assert reply.status == 200
    assert xmltodict.parse(reply.body)["xml"]["return_code"] in ("SUCCESS", "FAIL")


# ----------------------------------------------------------------------------- strict as WeChat Pay


def test_wechatpy_sees_an_unknown_merchant_as_return_fail(
    state: SandboxState, server: RunningServer, emulator: Emulator
) -> None:
    """wechatpy for a merchant the emulator does not know: a return_code=FAIL exception
    (never an unsigned return_code=SUCCESS business answer)."""
    from wechatpy.exceptions import WeChatPayException

    wc = WeChatPay("wx5edab3bdfba3dc1c", "k" * 32, "19999999")
    wc.API_BASE_URL = server.base_url + "/"
    try:
        with pytest.raises(WeChatPayException) as info:
            wc.coupon.query_stock("1717")
    finally:
        wc._http.close()
    assert info.value.return_code == "FAIL"
    assert "CODE_2_ID_ERR" in info.value.return_msg


@pytest.mark.parametrize(
    ("fault", "field", "changed"),
    [
        ("wrong_stock", "coupon_stock_id", True),
        ("wrong_merchant", "mch_id", True),
        ("wrong_appid", "appid", True),
    ],
)
def test_mixed_up_answers_are_correctly_signed(
    fault: str,
    field: str,
    changed: bool,
    wechatpy_client: WeChatPay,
    emulator: Emulator,
    state: SandboxState,
) -> None:
    """wrong_stock / wrong_merchant / wrong_appid: wechatpy (which does not bind answers) gets
    another stock, merchant or appid, and the answer's v2 sign verifies with the merchant key."""
    emulator.set_fault("v2", "1717", fault)
    answer = wechatpy_client.coupon.query_stock("1717")
    asked = {"coupon_stock_id": "1717", "mch_id": MCH_MD5, "appid": state.merchants[MCH_MD5].appid}
    assert answer[field] != asked[field]
    assert sign_ok(dict(answer), state.merchants[MCH_MD5].v2_key)


def test_unsigned_fail_carries_forged_data(
    client: httpx.Client, emulator: Emulator, state: SandboxState
) -> None:
    """unsigned_fail: return_code=FAIL, no sign, and forged result_code/coupon_value."""
    emulator.set_fault("v2", "1717", "unsigned_fail")
    answer = post(client, signed_body(state))
    assert answer["return_code"] == "FAIL" and "sign" not in answer
    assert answer["result_code"] == "SUCCESS" and answer["coupon_value"] == "999999"


@pytest.mark.parametrize(
    "fault", ["header_drip", "body_drip", "encoding_bomb", "oversized_headers"]
)
def test_wire_faults_work_on_the_v2_side(
    fault: str, server: RunningServer, emulator: Emulator, state: SandboxState
) -> None:
    """The transport-level faults apply to v2 answers as well (over the real socket)."""
    import socket

    emulator.bomb_bytes = 1024 * 1024
    emulator.set_fault("v2", "1717", fault, delay_s=0.001)
    body = signed_body(state)
    request = (
        f"POST {V2_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    data = b""
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
    finally:
        emulator.bomb_bytes = 64 * 1024 * 1024
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if fault == "encoding_bomb":
        assert b"content-encoding: gzip" in head
    elif fault == "oversized_headers":
        assert len(head) > 256 * 1024
    else:
        assert b"<return_code>" in payload


def test_the_seeded_table_is_the_packaged_data_file() -> None:
    """SEEDED_STOCKS is stocks.json, read through the package; each stock reloads to itself."""
    import json
    from importlib import resources

    # private: emulator internals under test
    from shim.sandbox._stocks import STOCKS_RESOURCE, stock_from_json  # the loader is private

    doc = json.loads(resources.files("shim.sandbox").joinpath(STOCKS_RESOURCE).read_text("utf-8"))
    assert [s["stock_id"] for s in doc["stocks"]] == [s.stock_id for s in SEEDED_STOCKS]
    for data, stock in zip(doc["stocks"], SEEDED_STOCKS, strict=True):
        assert stock_from_json(data) == stock
    with pytest.raises(TypeError):
        stock_from_json({**doc["stocks"][0], "unknown_field": 1})
