"""The legacy route end to end over real loopback HTTP, through both twins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from shim import InputError, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2
from shim.sandbox import Emulator, SandboxState, seeded_stocks
from tests.conftest import HMAC_MCH, MD5_MCH, Twin

ERR_CODES = (
    "COUPON_STOCK_ID_NOT_VALID",
    "SIGN_ERROR",
    "REQ_PARAM_XML_ERR",
    "COUPON_STOCK_ID_EMPTY",
    "MCH_ID_EMPTY",
    "CODE_2_ID_ERR",
    "GET_COUPON_STOCK_FAIL",
    "COUPON_STOCK_NOT_FOUND",
)


def without_nonce_and_sign(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if k not in ("nonce_str", "sign")}


@pytest.mark.parametrize(("mch_id", "stock_id"), [(MD5_MCH, "1757"), (HMAC_MCH, "9856099")])
async def test_success_answer_is_the_verified_v2_dict(
    make_shim: Callable[..., Twin], sandbox_state: SandboxState, mch_id: str, stock_id: str
) -> None:
    """MD5 and HMAC-SHA256 merchants get the emulator's v2 answer, all strings, sign verified."""
    twin = make_shim("legacy")
    answer = await twin.query(coupon_stock_id=stock_id, mch_id=mch_id)
    merchant = sandbox_state.merchants[mch_id]
    assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "SUCCESS"
    assert all(isinstance(v, str) for v in answer.values())
    for key, value in seeded_stocks()[stock_id].v2_fields().items():
        assert answer[key] == value, key
    v2.verify_answer(answer, key=merchant.v2_key, sign_type=merchant.v2_sign_type)
    assert len(answer["sign"]) == (64 if merchant.v2_sign_type == "HMAC-SHA256" else 32)


async def test_call_shapes_are_equivalent(make_shim: Callable[..., Twin]) -> None:
    """Keyword, positional and xml={...} payload calls give the same answer."""
    twin = make_shim("legacy")
    kw = await twin.query(
        coupon_stock_id="1757",
        appid="wx5edab3bdfba3dc1c",
        mch_id=MD5_MCH,
        op_user_id=MD5_MCH,
        device_info="",
        version="1.0",
        type="XML",
    )
    pos = await twin.query("1757", "wx5edab3bdfba3dc1c", MD5_MCH, MD5_MCH, "", "1.0", "XML")
    payload = await twin.query(
        xml={
            "coupon_stock_id": "1757",
            "appid": "wx5edab3bdfba3dc1c",
            "mch_id": MD5_MCH,
            "version": "1.0",
            "type": "XML",
            "nonce_str": "ignored",
            "sign": "ignored",
        }
    )
    assert (
        without_nonce_and_sign(kw) == without_nonce_and_sign(pos) == without_nonce_and_sign(payload)
    )


async def test_device_info_is_echoed(make_shim: Callable[..., Twin]) -> None:
    """A non-empty device_info is sent and echoed back."""
    twin = make_shim("legacy")
    answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH, device_info="POS-7")
    assert answer["device_info"] == "POS-7"


@pytest.mark.parametrize("code", ERR_CODES)
async def test_each_err_code_is_returned_as_a_business_answer(
    make_shim: Callable[..., Twin], emulator: Emulator, code: str
) -> None:
    """Every err_code of this API comes back as a signed v2 dict, not an exception."""
    emulator.set_fault("v2", "1757", f"err_code:{code}")
    answer = await make_shim("legacy").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert answer["return_code"] == "SUCCESS" and answer["result_code"] == "FAIL"
    assert answer["err_code"] == code and answer["err_code_des"]


async def test_unknown_stock_is_coupon_stock_not_found(make_shim: Callable[..., Twin]) -> None:
    """A stock the emulator does not know is the v2 business error COUPON_STOCK_NOT_FOUND."""
    answer = await make_shim("legacy").query(coupon_stock_id="404404", mch_id=MD5_MCH)
    assert answer["err_code"] == "COUPON_STOCK_NOT_FOUND"


@pytest.mark.parametrize("fault", ["bad_signature", "tampered_body", "missing_signature"])
async def test_bad_answer_signatures_are_refused(
    make_shim: Callable[..., Twin], emulator: Emulator, fault: str
) -> None:
    """A tampered, wrongly signed or unsigned SUCCESS answer is a SignatureError, never data."""
    emulator.set_fault("v2", "1757", fault)
    with pytest.raises(SignatureError) as info:
        await make_shim("legacy", retry={"attempts": 1}).query(
            coupon_stock_id="1757", mch_id=MD5_MCH
        )
    assert info.value.route == "legacy"


@pytest.mark.parametrize(
    "over",
    [
        {"coupon_stock_id": ""},
        {"coupon_stock_id": "1" * 21},
        {"coupon_stock_id": "17\x0157"},
        {"coupon_stock_id": "17 57"},
        {"mch_id": "10000777"},
        {"device_info": "x" * 40},
    ],
)
async def test_bad_input_fails_before_any_request(
    make_shim: Callable[..., Twin], emulator: Emulator, over: dict[str, Any]
) -> None:
    """Empty, over-long or non-printable ids and unknown merchants fail with no request sent."""
    twin = make_shim("legacy")
    args: dict[str, Any] = {"coupon_stock_id": "1757", "mch_id": MD5_MCH, **over}
    with pytest.raises(InputError):
        await twin.query(**args)
    assert sum(emulator.request_counts.values()) == 0


async def test_billion_laughs_answer_is_a_typed_error(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """An entity-expansion answer is refused as a protocol error (no expansion, no hang)."""
    emulator.set_fault("v2", "1757", "billion_laughs")
    with pytest.raises(UpstreamError) as info:
        await make_shim("legacy").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.kind == "protocol"


async def test_oversized_answer_is_a_typed_error(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """An answer over max_body_bytes is refused while streaming, with bounded memory."""
    emulator.set_fault("v2", "1757", "huge_body")
    twin = make_shim("legacy", upstream={"max_body_bytes": 65536})
    with pytest.raises(UpstreamError) as info:
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.kind == "protocol" and "cap" in str(info.value)


async def test_wechatpy_gets_the_same_answer(
    make_shim: Callable[..., Twin], server: Any, sandbox_state: SandboxState
) -> None:
    """wechatpy's own coupon.query_stock, aimed at the emulator, sees what the shim returns."""
    from wechatpy.pay import WeChatPay

    merchant = sandbox_state.merchants[MD5_MCH]
    client = WeChatPay(merchant.appid, merchant.v2_key, MD5_MCH)
    client.API_BASE_URL = server.base_url + "/"
    theirs = dict(client.coupon.query_stock("1757"))
    ours = await make_shim("legacy").query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert without_nonce_and_sign(theirs) == without_nonce_and_sign(ours)


async def test_no_secret_in_logs_or_exceptions(
    make_shim: Callable[..., Twin], emulator: Emulator, sandbox_state: SandboxState
) -> None:
    """Across success, business error, signature failure and input error, no key leaks."""
    merchant = sandbox_state.merchants[MD5_MCH]
    secrets = [merchant.v2_key, merchant.private_key_path.read_text().splitlines()[1]]
    twin = make_shim("legacy", retry={"attempts": 1})
    texts: list[str] = []
    with capture_logs() as logs:
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
        await twin.query(coupon_stock_id="404404", mch_id=MD5_MCH)
        emulator.set_fault("v2", "1757", "bad_signature")
        for args in (
            {"coupon_stock_id": "1757", "mch_id": MD5_MCH},
            {"coupon_stock_id": "", "mch_id": MD5_MCH},
        ):
            try:
                await twin.query(**args)
            except Exception as exc:
                texts += [str(exc), repr(exc)]
    assert len(logs) >= 3
    texts += [repr(entry) for entry in logs]
    for text in texts:
        for secret in secrets:
            assert secret not in text
