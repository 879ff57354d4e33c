"""Forged and hostile answers over real loopback sockets, through both twins and the shadow path.

Issue 15 points 6 (strict ASCII parsing of protocol values), 7 (the v2 parser refuses DTDs and
entities in any encoding), 8 (answers bound to the request) and 9 (unsigned FAIL reduced). The
hostile server is :class:`tests.forged.ForgedServer`: the real emulator's correctly signed
answer, rewritten on the way out, on a raw socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import ShimConfig, ShimError, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the v3 protocol module, to sign or check v3 wire messages
from shim import _v3 as v3
from shim.sandbox import Emulator, SandboxRequest, SandboxState, render_xml, v2_sign
from tests.conftest import HMAC_MCH, MD5_MCH, Twin
from tests.fault_cases import build_twin, parse_emulator_config
from tests.forged import Answer, Forge, forged_server, upstream_at
from tests.hostile import Variant, run_variants

STOCK = "1757"
TIMING = {"timeout_s": 2.0, "connect_timeout_s": 1.0, "budget_s": 4.0}
RETRY = {"attempts": 1}


def _tables(url: str, **routing: Any) -> dict[str, Any]:
    up = upstream_at(url)["upstream"] | TIMING
    return {"upstream": up, "retry": RETRY, "routing": routing, "shadow": {"timeout_s": 2.0}}


async def _raises(twin: Twin, **kwargs: Any) -> ShimError:
    """The typed error of one call (its bound in time: the last test of this module)."""
    with pytest.raises(ShimError) as info:
        await twin.query(STOCK, mch_id=kwargs.pop("mch_id", MD5_MCH), **kwargs)
    return info.value


async def _shadow_error(twin: Twin) -> dict[str, int]:
    answer = await twin.query(STOCK, mch_id=MD5_MCH)
    assert answer["return_code"] == "SUCCESS" and answer["coupon_stock_id"] == STOCK
    assert await twin.wait_for_shadows(5.0)
    return dict(twin.shim.shadow_totals().errors_by_kind)


def _is_v3(request: SandboxRequest) -> bool:
    return request.target.startswith(b"/v3/")


# ----------------------------------------------------------------- 6: strict protocol values

HOSTILE_TIMESTAMPS = [
    "²",  # superscript two: str.isdigit() says yes, int() says no
    "١٧٠٠٠٠٠٠٠٠",  # Arabic-Indic digits: int() reads them
    "１７０００",  # full-width digits
    "1700000000.5",
    "+1700000000",
    "1_700_000_000",
    "9" * 400,
    "-5",
    "",
]


def _now_in(value: str) -> str:
    """``value`` with any ASCII digits replaced by the current time's (so only the form is off)."""
    return value.replace("1700000000", str(int(time.time())))


def _v3_header(header: str, value: str) -> Forge:
    """A forge that sets one header of the v3 answer (a timestamp is made current)."""

    def forge(request: SandboxRequest, answer: Answer) -> Answer:
        if _is_v3(request):
            text = _now_in(value) if header == "wechatpay-timestamp" else value
            answer.set_header(header, text.encode("utf-8"))
        return answer

    return forge


def _content_length(length: str) -> Forge:
    """A forge that sets the Content-Length of every answer."""

    def forge(request: SandboxRequest, answer: Answer) -> Answer:
        answer.set_header("content-length", length.encode("utf-8"))
        return answer

    return forge


def _v2_body(body: bytes) -> Forge:
    """A forge that replaces the legacy answer's body."""

    def forge(request: SandboxRequest, answer: Answer) -> Answer:
        return answer if _is_v3(request) else answer.with_body(body)

    return forge


@pytest.mark.parametrize("stamp", HOSTILE_TIMESTAMPS)
async def test_hostile_timestamp_is_a_signature_error(
    stamp: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A v3 answer whose Wechatpay-Timestamp is not plain ASCII digits is a SignatureError,
    never a ValueError (both twins, real socket); the shadow path counts it as `signature`."""

    with forged_server(emulator, _v3_header("wechatpay-timestamp", stamp)) as srv:
        twin = make_shim("v3", **_tables(srv.base_url, fallback_to_legacy=False))
        err = await _raises(twin)
        assert isinstance(err, SignatureError) and err.route == "v3"
        shadow = make_shim("shadow", **_tables(srv.base_url))
        assert await _shadow_error(shadow) == {"signature": 1}


HOSTILE_HEADERS = [
    ("wechatpay-serial", "ＰＵＢ_KEY"),
    ("wechatpay-serial", "pub_key_id_ß"),
    ("wechatpay-nonce", "a\x7fb"),
    ("wechatpay-signature", "Ａ" * 344),
    ("wechatpay-signature", "not base64 !!"),
    ("wechatpay-signature-type", "wechatpay2-sha256-rsa2048"),
    ("request-id", "é" * 5000),
]
HOSTILE_LENGTHS = ["²", "١٠", "12x", "-1", "99999999999999999999999"]


@pytest.mark.parametrize(("header", "value"), HOSTILE_HEADERS)
async def test_hostile_header_values_give_typed_errors(
    header: str, value: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Non-ASCII or malformed serials, nonces, signatures and request ids are refused as
    typed errors (a huge non-ASCII Request-ID is dropped, never echoed)."""

    with forged_server(emulator, _v3_header(header, value)) as srv:
        twin = make_shim("v3", **_tables(srv.base_url, fallback_to_legacy=False))
        if header == "request-id":
            answer = await twin.query(STOCK, mch_id=MD5_MCH)
            assert answer["coupon_stock_id"] == STOCK
            return
        err = await _raises(twin)
        assert isinstance(err, SignatureError)
        assert err.request_id is None or err.request_id.isascii()


@pytest.mark.parametrize("length", HOSTILE_LENGTHS)
async def test_hostile_content_length_is_typed(
    length: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """A Content-Length that is not ASCII digits (or absurd) is a typed error on both routes."""

    with forged_server(emulator, _content_length(length)) as srv:
        for mode in ("legacy", "v3"):
            twin = make_shim(mode, **_tables(srv.base_url, fallback_to_legacy=False))
            err = await _raises(twin)
            assert isinstance(err, UpstreamError)


_HEADER_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), max_size=14),
    st.from_regex(r"[0-9]{1,14}", fullmatch=True),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    timestamp=_HEADER_TEXT,
    nonce=_HEADER_TEXT,
    serial=_HEADER_TEXT,
    signature=_HEADER_TEXT,
    sig_type=st.one_of(st.none(), _HEADER_TEXT),
    request_id=st.one_of(st.none(), _HEADER_TEXT),
)
def test_any_v3_header_value_gives_a_verdict_or_a_typed_error(
    timestamp: str,
    nonce: str,
    serial: str,
    signature: str,
    sig_type: str | None,
    request_id: str | None,
    v3_config: ShimConfig,
) -> None:
    """verify_answer, on any header values at all: returns or raises SignatureError, nothing
    else (the property behind the socket tests above)."""
    creds = v3_config.merchants[MD5_MCH].v3
    assert creds is not None
    headers = {
        "wechatpay-timestamp": timestamp,
        "wechatpay-nonce": nonce,
        "wechatpay-serial": serial,
        "wechatpay-signature": signature,
    }
    if sig_type is not None:
        headers["wechatpay-signature-type"] = sig_type
    if request_id is not None:
        headers["request-id"] = request_id
    try:
        v3.verify_answer(creds, headers, b"{}", now=time.time(), status=200)
    except SignatureError as err:
        assert err.request_id is None or err.request_id.isascii()
    body = ('{"code": ' + repr(nonce[:60]).replace("'", '"') + "}").encode()
    assert v3.parse_error_body(body) in (None, nonce[:60])


@pytest.fixture
def v3_config(make_config: Callable[..., ShimConfig]) -> ShimConfig:
    """A parsed config with v3 credentials (the emulator's)."""
    return make_config("v3")


# ----------------------------------------------------------------- 7: no DTD, no entities

_FIELDS = "<return_code>SUCCESS</return_code><coupon_stock_id>1757</coupon_stock_id>"
HOSTILE_XML: dict[str, bytes] = {
    "doctype_after_4k": (
        '<?xml version="1.0"?><!--' + "x" * 5000 + '--><!DOCTYPE xml [<!ENTITY a "forged">]>'
        f"<xml>{_FIELDS}<coupon_name>&a;</coupon_name></xml>"
    ).encode(),
    "utf16_with_bom": ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE xml><xml></xml>').encode(
        "utf-16"
    ),
    "utf16_plain": f"<xml>{_FIELDS}</xml>".encode("utf-16-le"),
    "latin1_declared": f'<?xml version="1.0" encoding="ISO-8859-1"?><xml>{_FIELDS}</xml>'.encode(),
    "attribute_entity": (
        f'<!DOCTYPE xml [<!ATTLIST xml a CDATA "&#38;x;"><!ENTITY x "boom">]><xml>{_FIELDS}</xml>'
    ).encode(),
    "parameter_entity": (
        f"<!DOCTYPE xml [<!ENTITY % p \"<!ENTITY q 'x'>\"> %p;]><xml>{_FIELDS}</xml>"
    ).encode(),
    "external_entity": (
        f'<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml>{_FIELDS}<a>&e;</a></xml>'
    ).encode(),
    "undeclared_entity": f"<xml>{_FIELDS}<a>&nbsp;</a></xml>".encode(),
    "doctype_only_internal": f"<!DOCTYPE xml><xml>{_FIELDS}</xml>".encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
async def test_v2_parser_refuses_dtds_entities_and_other_encodings(
    name: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Each hostile document served as the legacy answer is an UpstreamError protocol (both
    twins, real socket), and the shadow path (v3 serves, legacy shadowed) records `protocol`."""
    with forged_server(emulator, _v2_body(HOSTILE_XML[name])) as srv:
        twin = make_shim("legacy", **_tables(srv.base_url, fallback_to_v3=False))
        err = await _raises(twin)
        assert type(err) is UpstreamError and err.kind == "protocol" and err.route == "legacy"
        shadow = make_shim("shadow", **_tables(srv.base_url, shadow_serve="v3"))
        assert await _shadow_error(shadow) == {"protocol": 1}


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
def test_parse_xml_refuses_each_hostile_document(name: str) -> None:
    """The parser itself refuses them (no byte search ahead of it)."""
    with pytest.raises(UpstreamError) as info:
        v2.parse_xml(HOSTILE_XML[name])
    assert info.value.kind == "protocol"


def test_parse_xml_accepts_a_utf8_declaration_and_bom() -> None:
    """UTF-8, declared or with its BOM, stays accepted; predefined entities and character
    references are plain text, not entity references."""
    doc = f'<?xml version="1.0" encoding="utf-8"?><xml>{_FIELDS}<a>&amp;&#65;</a></xml>'
    assert v2.parse_xml(doc.encode())["a"] == "&A"
    assert v2.parse_xml(b"\xef\xbb\xbf" + doc.encode())["coupon_stock_id"] == "1757"


# ----------------------------------------------------------------- 8: answers bound to requests


def _signed_v2(state: SandboxState, signer: str, **changes: str) -> Callable[..., Answer]:
    """A forge that rewrites fields of the legacy answer and re-signs it with the real key."""
    merchant = state.merchants[signer]

    def forge(request: SandboxRequest, answer: Answer) -> Answer:
        if _is_v3(request):
            return answer
        fields = v2.parse_xml(answer.body)
        fields.pop("sign", None)
        fields.update(changes)
        sign_type = "HMAC-SHA256" if signer == HMAC_MCH else "MD5"
        fields["sign"] = v2_sign(fields, merchant.v2_key, sign_type)
        return answer.with_body(render_xml(fields))

    return forge


MIXUPS = {
    "other_stock": {"coupon_stock_id": "9856888"},
    "other_merchant": {"mch_id": "1900000109"},
    "other_appid": {"appid": "wxd678efh567hg6787"},
}


@pytest.mark.parametrize("changes", list(MIXUPS.values()), ids=list(MIXUPS))
@pytest.mark.parametrize("mch_id", [MD5_MCH, HMAC_MCH])
async def test_legacy_refuses_a_signed_answer_about_something_else(
    changes: dict[str, str],
    mch_id: str,
    make_shim: Callable[..., Twin],
    emulator: Emulator,
    sandbox_state: SandboxState,
) -> None:
    """A correctly signed v2 answer naming another stock, merchant or appid than the request
    is an UpstreamError protocol, never this call's answer (both twins, both sign types)."""
    with forged_server(emulator, _signed_v2(sandbox_state, mch_id, **changes)) as srv:
        twin = make_shim("legacy", **_tables(srv.base_url, fallback_to_v3=False))
        err = await _raises(twin, mch_id=mch_id)
        assert type(err) is UpstreamError and err.kind == "protocol"
        assert "another" in str(err)


@pytest.mark.parametrize("fault", ["wrong_stock", "wrong_merchant"])
async def test_v3_refuses_a_signed_answer_about_something_else(
    fault: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """The emulator's wrong_stock / wrong_merchant v3 answers (correctly signed) are refused
    over the loopback server; in shadow mode the shadowed v3 side records `protocol`."""
    emulator.set_fault("v3", STOCK, fault)
    twin = make_shim("v3", upstream=TIMING, retry=RETRY, routing={"fallback_to_legacy": False})
    err = await _raises(twin)
    assert type(err) is UpstreamError and err.kind == "protocol" and err.route == "v3"
    shadow = make_shim("shadow", upstream=TIMING, retry=RETRY)
    assert await _shadow_error(shadow) == {"protocol": 1}


@pytest.mark.parametrize("fault", ["wrong_stock", "wrong_merchant", "wrong_appid"])
async def test_emulator_v2_mixups_are_refused(
    fault: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """The emulator's v2 mix-up faults (correctly signed) are refused over loopback, and the
    shadow path (v3 serves) records `protocol`."""
    emulator.set_fault("v2", STOCK, fault)
    twin = make_shim("legacy", upstream=TIMING, retry=RETRY, routing={"fallback_to_v3": False})
    err = await _raises(twin)
    assert type(err) is UpstreamError and err.kind == "protocol" and err.route == "legacy"
    shadow = make_shim("shadow", upstream=TIMING, retry=RETRY, routing={"shadow_serve": "v3"})
    assert await _shadow_error(shadow) == {"protocol": 1}


def test_checked_answer_needs_the_stock_on_success() -> None:
    """A signed success answer that does not name its stock is refused too."""
    req = v2.validate_request({"coupon_stock_id": "1757", "appid": "wx1", "mch_id": "1"})
    fields = {"return_code": "SUCCESS", "result_code": "SUCCESS", "appid": "wx1", "mch_id": "1"}
    fields["sign"] = v2.sign(fields, "k" * 32, "MD5")
    with pytest.raises(UpstreamError, match="coupon_stock_id"):
        v2.checked_answer(fields, req, key="k" * 32, sign_type="MD5")


# ----------------------------------------------------------------- 9: unsigned FAIL reduced


async def test_unsigned_fail_with_forged_data_is_reduced(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """An unsigned return_code=FAIL carrying result_code=SUCCESS and coupon_value=999999 reaches
    the caller as return_code and return_msg only (both twins, loopback)."""
    emulator.set_fault("v2", STOCK, "unsigned_fail")
    twin = make_shim("legacy", upstream=TIMING, retry=RETRY)
    answer = await twin.query(STOCK, mch_id=MD5_MCH)
    assert answer == {"return_code": "FAIL", "return_msg": answer["return_msg"]}
    assert "999999" not in repr(answer)


async def test_raw_unsigned_fail_is_reduced(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """The same attack from a raw hostile server: every forged field is dropped."""
    forged = render_xml(
        {
            "return_code": "FAIL",
            "return_msg": "busy",
            "result_code": "SUCCESS",
            "coupon_stock_id": STOCK,
            "coupon_value": "999999",
            "coupon_name": "forged",
        }
    )

    def forge(request: SandboxRequest, answer: Answer) -> Answer:
        return answer if _is_v3(request) else answer.with_body(forged)

    with forged_server(emulator, forge) as srv:
        twin = make_shim("legacy", **_tables(srv.base_url))
        assert await twin.query(STOCK, mch_id=MD5_MCH) == {
            "return_code": "FAIL",
            "return_msg": "busy",
        }


# ----------------------------------------------------------------- the bound in time, all at once


@pytest.mark.wallclock
def test_every_forged_answer_ends_within_the_budget(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> None:
    """Every forged or hostile answer above (timestamps, header values, Content-Length,
    DTDs and entities, signed mix-ups, an unsigned FAIL), through both twins over real
    sockets, side by side: each variant times its own call and asserts it ends within
    budget_s (+0.5 s) with its typed outcome."""
    placeholder = "http://127.0.0.1:9"
    parsed: dict[str, ShimConfig] = {}
    for mode in ("legacy", "v3"):
        tables = _tables(placeholder, fallback_to_legacy=False, fallback_to_v3=False)
        tables["routing"]["mode"] = mode
        parsed[mode] = parse_emulator_config(sandbox_state, tmp_path, placeholder, tables)

    def at(mode: str, url: str) -> ShimConfig:
        cfg = parsed[mode]
        up = replace(cfg.upstream, v2_base_url=url, v3_base_url=url)
        return replace(cfg, upstream=up)

    budget = TIMING["budget_s"]

    def variant(kind: str, mode: str, forge: Forge, check: Callable[[object], None]) -> Variant:
        async def run() -> str:
            with forged_server(emulator, forge) as srv:
                twin = build_twin(kind, at(mode, srv.base_url), emulator, inprocess=False)
                try:
                    started = time.monotonic()
                    try:
                        result: object = await twin.query(STOCK, mch_id=MD5_MCH)
                    except ShimError as err:
                        result = err
                    elapsed = time.monotonic() - started
                finally:
                    await twin.close()
            check(result)
            assert elapsed < budget + 0.5, f"{elapsed:.2f} s against a {budget} s budget"
            return f"{elapsed:.3f} s vs budget {budget} s -> {type(result).__name__}"

        return run

    def signature_error(result: object) -> None:
        assert isinstance(result, SignatureError), result

    def upstream_error(result: object) -> None:
        assert isinstance(result, UpstreamError), result

    def protocol_error(result: object) -> None:
        assert type(result) is UpstreamError and result.kind == "protocol", result

    def reduced(result: object) -> None:
        assert isinstance(result, dict) and set(result) == {"return_code", "return_msg"}, result

    unsigned_fail = render_xml(
        {"return_code": "FAIL", "return_msg": "busy", "result_code": "SUCCESS",
         "coupon_stock_id": STOCK, "coupon_value": "999999"}
    )  # fmt: skip
    variants: dict[str, Variant] = {}
    for kind in ("sync", "async"):
        for stamp in HOSTILE_TIMESTAMPS:
            forge = _v3_header("wechatpay-timestamp", stamp)
            variants[f"timestamp {stamp[:12]!r} {kind}"] = variant(
                kind, "v3", forge, signature_error
            )
        for header, value in HOSTILE_HEADERS:
            if header != "request-id":  # served (the id is dropped): its own test above
                forge = _v3_header(header, value)
                variants[f"{header} {value[:12]!r} {kind}"] = variant(
                    kind, "v3", forge, signature_error
                )
        for length in HOSTILE_LENGTHS:
            for mode in ("legacy", "v3"):
                variants[f"content-length {length[:12]!r} {mode} {kind}"] = variant(
                    kind, mode, _content_length(length), upstream_error
                )
        for name, body in HOSTILE_XML.items():
            variants[f"xml {name} {kind}"] = variant(kind, "legacy", _v2_body(body), protocol_error)
        for name, changes in MIXUPS.items():
            forge = _signed_v2(sandbox_state, MD5_MCH, **changes)
            variants[f"mix-up {name} {kind}"] = variant(kind, "legacy", forge, protocol_error)
        variants[f"unsigned FAIL {kind}"] = variant(
            kind, "legacy", _v2_body(unsigned_fail), reduced
        )
    for line in run_variants(variants):
        print("BOUND " + line)
