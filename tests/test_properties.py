"""Property tests: hostile and random input to the parsers and the mapping.

Whatever arrives, the v2 XML parser, the v3 JSON handling and the mapping give a value of the
documented shape or a typed error (a ``ShimError``), never another exception or a hang.

Profiles (registered here, applied per test so other modules keep their own settings):
``coupon-shim-ci`` (the default: a fixed seed via ``derandomize``, few examples) and
``coupon-shim-deep`` (random, many examples). Select with ``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os
import string
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import MappingError, ShimError, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the v3 protocol module, to sign or check v3 wire messages
from shim import _v3 as v3

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.apply import map_error, map_success

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import load_mapping

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.model import MappingTable

# private: config value types, built directly instead of from a file
from shim._values import V3Credentials
from shim.sandbox import SandboxState
from tests.conftest import INPROCESS_URL
from tests.fault_cases import parse_emulator_config

settings.register_profile(
    "coupon-shim-ci",
    derandomize=True,
    max_examples=60,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "coupon-shim-deep",
    max_examples=3000,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(
    "coupon-shim-deep" if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else "coupon-shim-ci"
)

REQUEST = {"appid": "wx5edab3bdfba3dc1c", "mch_id": "10000098", "coupon_stock_id": "1757"}

# ---------------------------------------------------------------------------- strategies

_names = st.sampled_from(
    ["xml", "return_code", "sign", "coupon_name", "a", "x-y", "_", "1bad", "ns:tag", "xml2"]
)
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["SUCCESS", "FAIL", "]]>", "&amp;", "&lol;", "<", "\x00", "💥"])


@st.composite
def _xml_element(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(_names)
    kind = draw(st.sampled_from(["text", "cdata", "empty", "nested", "attr"]))
    if kind == "text":
        inner = draw(_text)
    elif kind == "cdata":
        inner = f"<![CDATA[{draw(_text)}]]>"
    elif kind == "empty":
        return f"<{name}/>"
    elif kind == "attr" or depth >= 2:
        return f'<{name} a="{draw(_text)}">{draw(_text)}</{name}>'
    else:
        inner = "".join(draw(st.lists(_xml_element(depth + 1), max_size=3)))
    return f"<{name}>{inner}</{name}>"


_PROLOGUES = [
    "",
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE xml [<!ENTITY lol "lol">]>',
    '<!DOCTYPE xml SYSTEM "file:///etc/passwd">',
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "&b;&b;"><!ENTITY b "xx">]>',
]


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    """XML-ish documents: mostly a ``<xml>`` root of random elements, sometimes hostile."""
    children = "".join(draw(st.lists(_xml_element(), max_size=6)))
    root = draw(st.sampled_from(["xml", "xml", "xml", "root"]))
    doc = draw(st.sampled_from(_PROLOGUES)) + f"<{root}>{children}</{root}>"
    doc += draw(st.sampled_from(["", "", "junk", "<xml/>", "&lol;"]))
    raw = doc.encode("utf-8", "surrogatepass")
    cut = draw(st.none() | st.integers(0, len(raw)))
    return raw if cut is None else raw[:cut]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

_V3_KEYS = [
    "stock_id",
    "stock_name",
    "status",
    "distributed_coupons",
    "available_begin_time",
    "available_end_time",
    "create_time",
    "stock_use_rule",
    "no_cash",
    "stock_type",
]
_RULE_KEYS = ["fixed_normal_coupon", "max_coupons", "max_coupons_per_user", "max_amount"]
_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        ["running", "paused", "2031-08-06T20:57:00+08:00", "2031-08-06T20:57:00.123Z", "1757", ""]
    )
)


@st.composite
def v3_bodies(draw: st.DrawFn) -> Any:
    """Mostly v3-shaped stock answers with random values; sometimes any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    rule: dict[str, Any] = {
        k: draw(_scalar | json_values)
        for k in draw(st.lists(st.sampled_from(_RULE_KEYS), unique=True))
    }
    if "fixed_normal_coupon" in rule and draw(st.booleans()):
        rule["fixed_normal_coupon"] = {
            "coupon_amount": draw(_scalar),
            "transaction_minimum": draw(_scalar),
        }
    body: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(_V3_KEYS), unique=True)):
        body[key] = rule if key == "stock_use_rule" and draw(st.booleans()) else draw(_scalar)
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return body


_header_names = st.sampled_from(
    [
        "wechatpay-signature",
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-serial",
        "wechatpay-signature-type",
        "request-id",
        "content-type",
    ]
)
_header_values = st.text(
    alphabet=string.ascii_letters + string.digits + "/+=_-. ", max_size=60
) | st.sampled_from(
    ["WECHATPAY/SIGNTEST/abc", "WECHATPAY2-SHA256-RSA2048", "1700000000", "0", "9" * 13, ""]
)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def creds(sandbox_state: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> V3Credentials:
    """The public-key-mode merchant's v3 credentials (with its real serial among headers)."""
    cfg = parse_emulator_config(sandbox_state, tmp_path_factory.mktemp("prop"), INPROCESS_URL, {})
    found = cfg.merchants["10000098"].v3
    assert found is not None
    return found


@pytest.fixture(scope="module")
def table() -> MappingTable:
    """The packaged mapping."""
    return load_mapping()


# ---------------------------------------------------------------------------- properties


@PROFILE
@given(body=xml_documents() | st.binary(max_size=300))
def test_parse_xml_gives_flat_strings_or_a_protocol_error(body: bytes) -> None:
    """Any byte string parses to a flat dict of strings or raises UpstreamError(protocol)."""
    try:
        out = v2.parse_xml(body, max_bytes=4096)
    except UpstreamError as err:
        assert err.kind == "protocol"
        assert not isinstance(err, SignatureError)
        return
    assert isinstance(out, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())


@PROFILE
@given(answer=st.dictionaries(st.sampled_from(["return_code", "sign", "a", "b"]), _text))
def test_v2_verify_answer_fails_closed(answer: dict[str, str]) -> None:
    """A random v2 answer is either an unsigned FAIL or refused with a typed error."""
    try:
        v2.verify_answer(answer, key="k" * 32, sign_type="MD5")
    except ShimError:
        return
    assert answer["return_code"] == "FAIL" and not answer.get("sign")


@PROFILE
@given(
    body=st.binary(max_size=200)
    | json_values.map(lambda v: repr(v).encode())
    | st.sampled_from([b"[" * 5000, b'{"a":' * 3000, b"{}", b"null", b'{"code":"X"}'])
)
def test_v3_json_handling_gives_an_object_or_a_typed_error(body: bytes) -> None:
    """parse_json_object gives a dict or UpstreamError; parse_error_body a short code or None."""
    try:
        out = v3.parse_json_object(body, status=200, request_id=None)
    except UpstreamError as err:
        assert err.kind == "protocol"
    else:
        assert isinstance(out, dict)
    code = v3.parse_error_body(body)
    assert code is None or (isinstance(code, str) and 0 < len(code) <= 64)


@PROFILE
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=7),
    body=st.binary(max_size=100),
    now=st.floats(0, 1e10),
    use_real_serial=st.booleans(),
)
def test_v3_verify_answer_refuses_random_headers(
    creds: V3Credentials,
    headers: dict[str, str],
    body: bytes,
    now: float,
    use_real_serial: bool,
) -> None:
    """Random headers never pass v3 verification; the refusal is always a SignatureError."""
    if use_real_serial:
        headers["wechatpay-serial"] = sorted(creds.verifiers)[0]
    with pytest.raises(SignatureError):
        v3.verify_answer(creds, httpx.Headers(headers), body, now=now, status=200)


@PROFILE
@given(body=v3_bodies())
def test_map_success_gives_v2_strings_or_a_mapping_error(table: MappingTable, body: Any) -> None:
    """Random v3 JSON maps onto a dict of strings or raises MappingError."""
    try:
        result = map_success(table, body, REQUEST)
    except MappingError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.fields.items())
    assert result.fields["return_code"] == "SUCCESS"


@PROFILE
@given(
    status=st.integers(100, 599) | json_values,
    code=st.none() | st.text(max_size=20) | st.sampled_from(["RESOURCE_NOT_EXISTS", "SIGN_ERROR"]),
)
def test_map_error_gives_an_outcome_or_a_mapping_error(
    table: MappingTable, status: Any, code: Any
) -> None:
    """Any status and code give a known outcome (with v2 strings) or raise MappingError."""
    try:
        outcome = map_error(table, status, code, REQUEST)
    except MappingError:
        return
    assert outcome.kind in ("business", "return_fail", "transient", "unmapped")
    assert all(isinstance(v, str) for v in outcome.fields.values())
