"""The answer side's fast paths give exactly what the plain forms give: the v2 sign, the v2
XML writer, the fast v2 reader, the v3 JSON read from verified text, the header checks."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shim import UpstreamError

# private: the v2 protocol module, its sign and XML writer held to their plain forms
from shim import _v2 as v2

# private: the v3 protocol module, its JSON reader held to json.loads on the bytes
from shim import _v3 as v3

# private: the fast v2 reader, held to the full parser
from shim._flatxml import read_flat

# private: the strict protocol-value readers, held to their patterns
from shim._wire import ascii_token, printable_token


def _plain_sign(params: dict[str, str], key: str, sign_type: str) -> str:
    """The v2 sign as the spec writes it: sorted pairs, empty values and sign left out."""
    string_a = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v and k != "sign")
    temp = f"{string_a}&key={key}".encode()
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), temp, hashlib.sha256).hexdigest().upper()
    return hashlib.md5(temp).hexdigest().upper()


FIELDS = st.dictionaries(
    st.one_of(
        st.sampled_from(["sign", "sign_type", "nonce_str", "a", "a0", "a_b", "A", "b", "中"]),
        st.text(min_size=1, max_size=6),
    ),
    st.one_of(st.just(""), st.text(max_size=8)),
    max_size=10,
)


@settings(max_examples=400, deadline=None)
@given(FIELDS, st.text(min_size=1, max_size=40), st.sampled_from(["MD5", "HMAC-SHA256"]))
def test_the_sign_is_the_spec_sign(params: dict[str, str], key: str, sign_type: str) -> None:
    assert v2.sign(params, key, sign_type) == _plain_sign(params, key, sign_type)


def test_the_sign_matches_the_spec_vectors() -> None:
    """The official v2 sample (appid, mch_id, device_info, body, nonce_str), both types."""
    params = {
        "appid": "wxd930ea5d5a258f4f",
        "mch_id": "10000100",
        "device_info": "1000",
        "body": "test",
        "nonce_str": "ibuaiVcKdpRxkhJA",
    }
    key = "192006250b4c09247ec02edce69f6a2d"
    assert v2.sign(params, key, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert v2.sign(params, key, "HMAC-SHA256") == (
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    )


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(max_size=12)))
def test_the_xml_writer_writes_one_cdata_section_per_value(fields: dict[str, str]) -> None:
    expected = "<xml>" + "".join(f"<{k}>{v2._cdata(v)}</{k}>" for k, v in fields.items())
    assert v2.to_xml(fields) == (expected + "</xml>").encode()


# --- the fast v2 reader: gaps, junk and tricky characters between and inside elements


GAPS = st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\r", "x", "<", "\u3000", "\x0b"]))
VALUES = st.lists(
    st.sampled_from([*"ab 1]>&<\t\n\r\x01\u3000中", "\ufffe", "\uffff", "]]>"]), max_size=6
).map("".join)


@st.composite
def flat_documents(draw: Any) -> tuple[bytes, bool]:
    """A flat-ish v2 answer, and whether it is in the fast reader's subset by construction."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c_1", "x-y", "1a", "d.e"]), max_size=5))
    gaps = [draw(GAPS.filter(lambda g: len(g) <= 2)) for _ in range(len(names) + 1)]
    parts, plain = [], True
    for name, gap in zip(names, gaps, strict=False):
        value = draw(VALUES)
        if draw(st.booleans()):
            parts.append(f"{gap}<{name}><![CDATA[{value}]]></{name}>")
            plain = plain and "]]>" not in value and not set(value) & {"\r", "\x01"}
        else:
            parts.append(f"{gap}<{name}>{value}</{name}>")
            plain = plain and not set(value) & {"]", "&", "<", "\r", "\x01"}
        plain = plain and not set(value) & {"\ufffe", "\uffff"} and name[0] != "1"
    tail = gaps[-1]
    plain = plain and bool(names) and len(set(names)) == len(names)
    plain = plain and all(set(g) <= {" ", "\t", "\n"} for g in gaps)
    return f"<xml>{''.join(parts)}{tail}</xml>".encode(), plain


@settings(max_examples=800, deadline=None)
@given(flat_documents())
def test_the_fast_reader_reads_its_subset_and_agrees_with_the_full_parser(
    case: tuple[bytes, bool],
) -> None:
    doc, in_subset = case
    try:
        full: dict[str, str] | None = v2.parse_xml(doc)
    except UpstreamError:
        full = None
    fast = read_flat(doc)
    assert fast is None or fast == full
    if in_subset:
        assert fast is not None and list(fast) == list(full or {})


def test_the_fast_reader_reads_a_wechat_pay_answer_in_order() -> None:
    doc = (
        "<xml>\n <return_code><![CDATA[SUCCESS]]></return_code>\n"
        "<coupon_name><![CDATA[满100减10 & ]]]></coupon_name><total>100</total>\t</xml>\n"
    ).encode()
    assert list((read_flat(doc) or {}).items()) == [
        ("return_code", "SUCCESS"),
        ("coupon_name", "满100减10 & ]"),
        ("total", "100"),
    ]


# --- v3: JSON read from the verified text, and the header checks

JSON_BODIES = st.one_of(
    st.sampled_from(
        [
            b'{"a": 1}',
            b'{"a": 1} ',
            b'{"a": 1}\n',
            b"\xef\xbb\xbf{}",
            b'{\x00"\x00}\x00',
            b"{}{}",
            b"[]",
            b"{",
            b'{"a": "\xe6\xbb\xa1"}',
            b'{"a": NaN}',
            b"[" * 5000 + b"]" * 5000,
            b'{"a": ' * 3000 + b"1" + b"}" * 3000,
        ]
    ),
    st.text(alphabet=st.sampled_from(list('{}[]":, 1a\x00\ufeff\n')), max_size=12).map(str.encode),
)


def _read(body: bytes | str) -> tuple[str, Any]:
    try:
        return ("ok", v3.parse_json_object(body, status=200, request_id="r"))
    except UpstreamError as exc:
        return ("error", str(exc))


@settings(max_examples=400, deadline=None)
@given(JSON_BODIES)
def test_json_from_the_verified_text_reads_as_from_the_bytes(body: bytes) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return  # verify_answer refuses such a body before JSON is read
    assert _read(text) == _read(body)


_NONCE = re.compile(r"[\x21-\x7e]+")


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=70), st.binary(max_size=4), st.none(), st.integers()))
def test_printable_token_is_its_pattern(value: Any) -> None:
    for limit in (64, 128):
        assert printable_token(value, max_len=limit) == ascii_token(value, _NONCE, max_len=limit)


def test_printable_token_edges() -> None:
    assert printable_token("!~", max_len=2) == "!~"
    for bad in ("", "a b", "a\x7f", "a\t", "é", "x" * 65):
        assert printable_token(bad, max_len=64) is None


def test_the_memoised_key_order_stays_bounded_and_right() -> None:
    """The same keys in any order sign alike; many key sets never grow the memo unbounded."""
    a = {"b": "2", "a": "1", "nonce_str": "n", "sign": "S"}
    b = {"sign": "S", "nonce_str": "n", "a": "1", "b": "2"}
    assert v2.sign(a, "k", "MD5") == v2.sign(b, "k", "MD5") == _plain_sign(a, "k", "MD5")
    for i in range(2 * v2._ORDERS_MAX):
        fields = {f"k{i}": "x", "a": "1", f"z{i % 7}": ""}
        assert v2.sign(fields, "k", "HMAC-SHA256") == _plain_sign(fields, "k", "HMAC-SHA256")
        assert len(v2._ORDERS) <= v2._ORDERS_MAX


REQUEST_VALUES = st.fixed_dictionaries(
    {
        "coupon_stock_id": st.from_regex(r"[0-9A-Za-z_\-]{1,20}", fullmatch=True),
        "appid": st.from_regex(r"[0-9A-Za-z_\-]{1,32}", fullmatch=True),
        "mch_id": st.from_regex(r"[0-9A-Za-z_\-]{1,32}", fullmatch=True),
    },
    optional={
        "op_user_id": st.from_regex(r"[\x21-\x7e]{0,32}", fullmatch=True),
        "device_info": st.from_regex(r"[\x21-\x7e]{0,32}", fullmatch=True),
        "version": st.sampled_from(["", "1.0"]),
        "type": st.sampled_from(["", "XML"]),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    REQUEST_VALUES,
    st.sampled_from(["MD5", "HMAC-SHA256", "SHA1"]),
    st.one_of(st.just(""), st.text(max_size=40)),
    st.text(min_size=1, max_size=40),
)
def test_the_signed_request_is_the_built_and_written_request(
    values: dict[str, str], sign_type: str, nonce: str, key: str
) -> None:
    """The templated request is byte for byte what building, signing and writing give (and
    raises alike for an unknown sign type)."""
    request = v2.validate_request(values)

    def built() -> bytes:
        fields = v2.build_request_fields(request, key=key, sign_type=sign_type, nonce=nonce)
        return v2.to_xml(fields)

    for _ in range(2):  # the second time from the memoised template
        try:
            expected: bytes | str = built()
        except ValueError as exc:
            expected = str(exc)
        try:
            got: bytes | str = v2.signed_request_xml(
                request, key=key, sign_type=sign_type, nonce=nonce
            )
        except ValueError as exc:
            got = str(exc)
        assert got == expected
    assert len(v2._TEMPLATES) <= v2._TEMPLATES_MAX
