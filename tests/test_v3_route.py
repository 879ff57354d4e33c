"""The v3 route end to end: signed query, verification, mapping, re-signed v2 answer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shim import SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import default_mapping_dir, load_mapping
from shim.sandbox import Emulator, SandboxState, seeded_stocks
from tests.conftest import HMAC_MCH, MD5_MCH, Twin

STOCKS = seeded_stocks()
TABLE = load_mapping()
ENVELOPE = {"return_code": "SUCCESS", "return_msg": "OK", "result_code": "SUCCESS"}


def body_of(answer: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in answer.items() if k not in ("nonce_str", "sign")}


def unsigned(answer: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in answer.items() if k != "sign"}


@pytest.mark.parametrize("stock_id", sorted(STOCKS))
async def test_every_seeded_stock_maps_to_the_expected_v2_dict(
    make_shim: Callable[..., Twin], sandbox_state: SandboxState, stock_id: str
) -> None:
    """Golden: each seeded stock's v3 answer becomes the v2 dict the spec's mapping defines."""
    stock = STOCKS[stock_id]
    mch_id = stock.creator_mchid
    merchant = sandbox_state.merchants[mch_id]
    answer = await make_shim("v3", via="inprocess").query(coupon_stock_id=stock_id, mch_id=mch_id)
    expected = {**ENVELOPE, "appid": merchant.appid, "mch_id": mch_id, **stock.mapped_from_v3()}
    assert body_of(answer) == expected
    v2.verify_answer(answer, key=merchant.v2_key, sign_type=merchant.v2_sign_type)


GOLDEN = [
    # (stock, v2 keys that must be absent because v3 has no source)
    ("1757", set()),
    ("9856010", {"coupon_value", "coupon_mininumn"}),
    ("9856011", {"coupon_value", "coupon_mininumn", "coupon_total", "max_quota", "coupon_budget"}),
]


@pytest.mark.parametrize(("stock_id", "absent"), GOLDEN)
async def test_absent_v3_values_are_left_out_and_recorded(
    make_shim: Callable[..., Twin], stock_id: str, absent: set[str]
) -> None:
    """A v2 key without a v3 source is left out (never guessed) and the event records it."""
    from structlog.testing import capture_logs

    twin = make_shim("v3", via="inprocess")
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id=stock_id, mch_id=MD5_MCH)
    assert absent.isdisjoint(answer)
    event = next(e for e in logs if e["event"] == "coupon_stock.query")
    assert set(event.get("unmapped", [])) == absent


GOLDEN_1757 = {
    "return_code": "SUCCESS",
    "return_msg": "OK",
    "appid": "wx5edab3bdfba3dc1c",
    "mch_id": MD5_MCH,
    "result_code": "SUCCESS",
    "coupon_stock_id": "1757",
    "coupon_name": "满100减10",
    "coupon_value": "1000",
    "coupon_mininumn": "10000",
    "coupon_stock_status": "4",
    "coupon_total": "10000",
    "max_quota": "3",
    "is_send_num": "1234",
    "begin_time": "1705276800",
    "end_time": "1924963199",
    "create_time": "1704852000",
    "coupon_budget": "10000000",
    "begin_time_t": "20240115080000",
    "end_time_t": "20301231235959",
    "create_time_t": "20240110100000",
}


async def test_golden_handwritten_row(make_shim: Callable[..., Twin]) -> None:
    """A hand-written golden row (worked out by hand from the v3 JSON), key order included."""
    answer = await make_shim("v3", via="inprocess").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert list(body_of(answer).items()) == list(GOLDEN_1757.items())


async def test_crossing_midnight_in_utc8(make_shim: Callable[..., Twin]) -> None:
    """2024-03-01T17:30:00Z is 20240302013000 in UTC+8 and epoch 1709314200."""
    answer = await make_shim("v3", via="inprocess").query(coupon_stock_id="9856020", mch_id=MD5_MCH)
    assert answer["create_time_t"] == "20240302013000"
    assert answer["create_time"] == "1709314200"


ERROR_ROWS = [(status, code, rule) for (status, code), rule in TABLE.errors.items()]


@pytest.mark.parametrize(
    ("status", "code", "rule"), ERROR_ROWS, ids=[f"{s}-{c}" for s, c, _ in ERROR_ROWS]
)
async def test_every_v3_error_code_has_its_v2_form(
    make_shim: Callable[..., Twin], emulator: Emulator, status: int, code: str, rule: Any
) -> None:
    """Each v3 error of the table becomes its v2 business error, FAIL answer, or typed error."""
    emulator.set_fault("v3", "1757", f"v3_error:{status}:{code}")
    twin = make_shim(
        "v3", via="inprocess", retry={"attempts": 1}, routing={"fallback_to_legacy": False}
    )
    if rule.kind == "transient":
        with pytest.raises(UpstreamError) as info:
            await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        assert info.value.status == status and info.value.code == code and info.value.transient
        return
    answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    if rule.kind == "business":
        assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "FAIL"
        assert answer["err_code"] == rule.err_code and answer["err_code_des"] == rule.err_code_des
    else:
        assert answer["return_code"] == "FAIL" and answer["return_msg"] == rule.return_msg


async def test_unknown_v3_4xx_code_is_a_typed_error(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A 4xx code the mapping does not know is never turned into an invented v2 code."""
    emulator.set_fault("v3", "1757", "v3_error:400:SOMETHING_NEW")
    with pytest.raises(UpstreamError) as info:
        await make_shim("v3", via="inprocess").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.code == "SOMETHING_NEW" and not info.value.transient


@pytest.mark.parametrize(
    "fault",
    [
        "tampered_body",
        "bad_signature",
        "unknown_serial",
        "missing_signature",
        "stale_signature",
        "signtest",
    ],
)
async def test_forged_or_stale_answers_are_refused(
    make_shim: Callable[..., Twin], emulator: Emulator, fault: str
) -> None:
    """Tampered body, wrong serial, missing header, stale timestamp and SIGNTEST: SignatureError."""
    emulator.set_fault("v3", "1757", fault)
    twin = make_shim("v3", via="loopback", routing={"fallback_to_legacy": False})
    with pytest.raises(SignatureError) as info:
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.route == "v3"
    assert emulator.request_counts["v3"] == 1  # never retried


async def test_platform_certificate_mode(
    make_shim: Callable[..., Twin], sandbox_state: SandboxState
) -> None:
    """The HMAC merchant verifies v3 answers with a platform certificate found by serial."""
    answer = await make_shim("v3").query(coupon_stock_id="9856099", mch_id=HMAC_MCH)
    merchant = sandbox_state.merchants[HMAC_MCH]
    assert answer["coupon_stock_id"] == "9856099"
    v2.verify_answer(answer, key=merchant.v2_key, sign_type="HMAC-SHA256")


async def test_stock_creator_override_per_stock(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """stock_creator_mchid defaults to the caller; a per-stock override queries another creator."""
    plain = await make_shim("v3", via="inprocess").query(coupon_stock_id="9856099", mch_id=MD5_MCH)
    assert plain["err_code"] == "COUPON_STOCK_NOT_FOUND"
    twin = make_shim(
        "v3", via="inprocess", merchants={MD5_MCH: {"stock_creator_mchids": {"9856099": HMAC_MCH}}}
    )
    answer = await twin.query(coupon_stock_id="9856099", mch_id=MD5_MCH)
    assert answer["result_code"] == "SUCCESS" and answer["coupon_stock_id"] == "9856099"


async def test_answer_passes_an_independent_v2_check(
    make_shim: Callable[..., Twin], sandbox_state: SandboxState
) -> None:
    """wechatpy's own MD5 and HMAC signature functions accept the synthesized answers."""
    from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac

    md5 = await make_shim("v3", via="inprocess").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    key = sandbox_state.merchants[MD5_MCH].v2_key
    assert calculate_signature(unsigned(md5), key) == md5["sign"]
    hm = await make_shim("v3", via="inprocess").query(coupon_stock_id="9856099", mch_id=HMAC_MCH)
    key = sandbox_state.merchants[HMAC_MCH].v2_key
    assert calculate_signature_hmac(unsigned(hm), key) == hm["sign"]


async def test_editing_the_mapping_file_changes_the_output(
    make_shim: Callable[..., Twin], tmp_path: Path
) -> None:
    """Pointing [mapping] dir at an edited copy changes the answer with no code change."""
    folder = tmp_path / "my-mappings"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "query_coupon_stock.toml"
    text = path.read_text(encoding="utf-8")
    assert 'v2 = "coupon_name"\nv3 = "stock_name"' in text
    path.write_text(
        text.replace(
            'v2 = "coupon_name"\nv3 = "stock_name"', 'v2 = "coupon_name"\nv3 = "description"'
        ),
        encoding="utf-8",
    )
    answer = await make_shim("v3", via="inprocess", mapping={"dir": str(folder)}).query(
        coupon_stock_id="1757", mch_id=MD5_MCH
    )
    assert answer["coupon_name"] == STOCKS["1757"].description


async def test_the_real_wechatpayv3_client_against_the_emulator(
    server: Any, sandbox_state: SandboxState
) -> None:
    """wechatpayv3.WeChatPay (public-key mode, its verification on) completes a stock query."""
    import json

    from wechatpayv3 import WeChatPay, WeChatPayType

    m = sandbox_state.merchants[MD5_MCH]
    pay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MD5_MCH,
        private_key=m.private_key_path.read_text(),
        cert_serial_no=m.cert_serial,
        appid=m.appid,
        apiv3_key=m.apiv3_key,
        public_key=sandbox_state.pub_key_path.read_text(),
        public_key_id=sandbox_state.pub_key_id,
    )
    pay._core._gate_way = server.base_url
    code, text = pay.marketing_favor_stock_detail(stock_creator_mchid=MD5_MCH, stock_id="1757")
    assert code == 200 and json.loads(text)["stock_id"] == "1757"
