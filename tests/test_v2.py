"""The pure v2 protocol: validation, signing, XML, fail-closed verification."""

from __future__ import annotations

import pytest

from shim import InputError, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

VECTOR = {
    "appid": "wxd930ea5d5a258f4f",
    "mch_id": "10000100",
    "device_info": "1000",
    "body": "test",
    "nonce_str": "ibuaiVcKdpRxkhJA",
}
VECTOR_KEY = "192006250b4c09247ec02edce69f6a2d"
KEY = "k" * 32


def test_official_md5_vector() -> None:
    """The spec's official MD5 test vector signs to the published value."""
    assert v2.sign(VECTOR, VECTOR_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"


def test_official_hmac_vector() -> None:
    """The spec's official HMAC-SHA256 test vector signs to the published value."""
    assert (
        v2.sign(VECTOR, VECTOR_KEY, "HMAC-SHA256")
        == "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    )


def test_sign_skips_empty_values_and_sign_itself() -> None:
    """Empty fields and the sign field take no part in the signature."""
    with_extra = {**VECTOR, "sign": "X", "empty": ""}
    assert v2.sign(with_extra, VECTOR_KEY, "MD5") == v2.sign(VECTOR, VECTOR_KEY, "MD5")


def test_unknown_sign_type_is_rejected() -> None:
    """A sign type other than MD5/HMAC-SHA256 is a programming error, not a silent default."""
    with pytest.raises(ValueError):
        v2.sign(VECTOR, VECTOR_KEY, "SHA1")


def _valid(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "coupon_stock_id": "1757",
        "appid": "wx5edab3bdfba3dc1c",
        "mch_id": "10000098",
    }
    base.update(over)
    return base


def test_validate_defaults_op_user_id_to_mch_id() -> None:
    """op_user_id defaults to mch_id; optional fields become empty strings."""
    req = v2.validate_request(_valid())
    assert req.op_user_id == "10000098"
    assert req.device_info == "" and req.version == "" and req.type == ""


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"coupon_stock_id": ""}, "coupon_stock_id"),
        ({"coupon_stock_id": None}, "coupon_stock_id"),
        ({"coupon_stock_id": "1" * 21}, "coupon_stock_id"),
        ({"coupon_stock_id": "17 57"}, "coupon_stock_id"),
        ({"coupon_stock_id": "17\x0057"}, "coupon_stock_id"),
        ({"coupon_stock_id": "库存"}, "coupon_stock_id"),
        ({"coupon_stock_id": 3.5}, "coupon_stock_id"),
        ({"appid": ""}, "appid"),
        ({"appid": "w" * 33}, "appid"),
        ({"mch_id": ""}, "mch_id"),
        ({"device_info": "d" * 33}, "device_info"),
        ({"device_info": "a b"}, "device_info"),
        ({"version": "2.0"}, "version"),
        ({"type": "JSON"}, "type"),
        ({"op_user_id": "\n"}, "op_user_id"),
        ({"nonsense": "x"}, "nonsense"),
    ],
)
def test_validate_rejects_bad_fields(over: dict[str, object], field: str) -> None:
    """Each bad field gives an InputError naming that field."""
    with pytest.raises(InputError) as info:
        v2.validate_request(_valid(**over))
    assert info.value.field == field
    assert field in str(info.value)


def test_validate_does_not_echo_long_values() -> None:
    """A rejected long value is not copied whole into the error message."""
    with pytest.raises(InputError) as info:
        v2.validate_request(_valid(op_user_id="a b" + "x" * 25))
    assert "x" * 25 not in str(info.value)


def test_integer_stock_id_is_accepted_as_text() -> None:
    """A stock id given as an int (a common legacy habit) is sent as its decimal text."""
    assert v2.validate_request(_valid(coupon_stock_id=1757)).coupon_stock_id == "1757"


def test_build_request_fields_signs_and_adds_sign_type_for_hmac() -> None:
    """HMAC-SHA256 requests carry sign_type; MD5 ones do not; the sign verifies."""
    req = v2.validate_request(_valid())
    md5 = v2.build_request_fields(req, key=KEY, sign_type="MD5", nonce="n" * 32)
    assert "sign_type" not in md5 and md5["sign"] == v2.sign(md5, KEY, "MD5")
    hm = v2.build_request_fields(req, key=KEY, sign_type="HMAC-SHA256", nonce="n" * 32)
    assert hm["sign_type"] == "HMAC-SHA256" and len(hm["sign"]) == 64


def test_xml_round_trip_with_awkward_text() -> None:
    """to_xml/parse_xml round-trip text with markup characters and a CDATA terminator."""
    fields = {"a": "x<y>&z", "b": "]]>tail", "c": "中文", "d": ""}
    assert v2.parse_xml(v2.to_xml(fields)) == fields


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><return_code>&lol3;</return_code></xml>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        b"<xml><a>1</a>",
        b"not xml at all",
        b"<xml><a><b>nested</b></a></xml>",
        b'<xml><a x="1">attr</a></xml>',
        b"<other><a>1</a></other>",
        b"",
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><xml/>',
    ],
)
def test_parse_xml_refuses_hostile_or_broken_bodies(body: bytes) -> None:
    """DTDs, entities, broken, nested or foreign documents are typed protocol errors."""
    with pytest.raises(UpstreamError) as info:
        v2.parse_xml(body)
    assert info.value.kind == "protocol"


def test_parse_xml_enforces_the_size_cap() -> None:
    """A body over the cap is refused before parsing."""
    with pytest.raises(UpstreamError):
        v2.parse_xml(b"<xml><a>" + b"x" * 5000 + b"</a></xml>", max_bytes=1024)


def _answer(sign_type: str = "MD5", **over: str) -> dict[str, str]:
    ans = {
        "return_code": "SUCCESS",
        "result_code": "SUCCESS",
        "coupon_stock_id": "1757",
        "nonce_str": "abc",
    }
    ans.update(over)
    ans["sign"] = v2.sign(ans, KEY, sign_type)
    return ans


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_verify_accepts_a_good_answer(sign_type: str) -> None:
    """A correctly signed answer verifies with its sign type."""
    v2.verify_answer(_answer(sign_type), key=KEY, sign_type=sign_type)


def test_verify_refuses_tampered_missing_and_wrong_type() -> None:
    """Tampered data, a missing sign on SUCCESS, or the other sign type are SignatureErrors."""
    tampered = _answer()
    tampered["coupon_stock_id"] = "9999"
    with pytest.raises(SignatureError):
        v2.verify_answer(tampered, key=KEY, sign_type="MD5")
    missing = _answer()
    del missing["sign"]
    with pytest.raises(SignatureError):
        v2.verify_answer(missing, key=KEY, sign_type="MD5")
    with pytest.raises(SignatureError):
        v2.verify_answer(_answer("HMAC-SHA256"), key=KEY, sign_type="MD5")
    with pytest.raises(SignatureError):
        v2.verify_answer(_answer(), key="other" * 6 + "xy", sign_type="MD5")


def test_verify_accepts_unsigned_fail_but_not_bad_signed_fail() -> None:
    """An unsigned return_code=FAIL carries no data and passes; a badly signed one does not."""
    v2.verify_answer({"return_code": "FAIL", "return_msg": "签名错误"}, key=KEY, sign_type="MD5")
    with pytest.raises(SignatureError):
        v2.verify_answer(
            {"return_code": "FAIL", "return_msg": "x", "sign": "0" * 32}, key=KEY, sign_type="MD5"
        )


def test_verify_needs_a_return_code() -> None:
    """An answer without return_code is a protocol error."""
    with pytest.raises(UpstreamError):
        v2.verify_answer({"sign": "x"}, key=KEY, sign_type="MD5")


def test_errors_never_carry_the_key() -> None:
    """No v2 error message contains the key."""
    bad = _answer()
    bad["coupon_name"] = "changed"
    with pytest.raises(SignatureError) as info:
        v2.verify_answer(bad, key=KEY, sign_type="MD5")
    assert KEY not in str(info.value) and KEY not in repr(info.value)
