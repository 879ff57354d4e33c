"""No secret in traceback locals (issue 15 point 5) and one redactor that misses nothing (13).

Error reporters that capture frame locals see what every frame an exception passed through
held. Each error kind the shim raises is provoked through both twins over the loopback
emulator server (with a recording transport in front of the real HTTP transport), then
captured two ways: ``traceback.TracebackException(..., capture_locals=True)`` and the real
``sentry-sdk`` (local variables on, its own scrubber's deny-lists emptied so that only the
shim's protection counts, an in-memory transport, no network). Neither may contain a v2 key,
a line of private-key material, a v2 sign, an Authorization value or a v3 signature.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_sdk.envelope import Envelope
from sentry_sdk.scrubber import EventScrubber
from sentry_sdk.transport import Transport

from shim import (
    AsyncCouponStockShim,
    ConfigError,
    CouponStockShim,
    InputError,
    MappingError,
    ShimConfig,
    ShimError,
    SignatureError,
    UpstreamError,
    load_config,
    redact_secrets,
)

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import default_mapping_dir

# private: the redactor's text form
from shim._redaction import REDACTED, is_secret_name, redact_text, redact_value
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH, Twin
from tests.test_no_secrets import RecordingTransport, static_secrets


class MemoryTransport(Transport):
    """A sentry transport that keeps envelopes in memory (nothing leaves the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for envelope in self.envelopes:
            event = envelope.get_event()
            if event is not None:
                out.append(event)
        return out


@pytest.fixture
def sentry() -> Iterator[MemoryTransport]:
    """The real sentry-sdk, local variables on, deny-lists emptied, in-memory transport."""
    transport = MemoryTransport()
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        transport=transport,
        include_local_variables=True,
        event_scrubber=EventScrubber(denylist=[], pii_denylist=[]),
        default_integrations=False,
        auto_enabling_integrations=False,
        max_value_length=1_000_000,
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


class WireRecorder(RecordingTransport):
    """RecordingTransport in front of real loopback HTTP (answers read whole, then returned,
    unless ``stream``: then only the request and the answer's headers are recorded, so a
    dripping answer still meets the shim's deadline)."""

    stream = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.stream:
            return super().handle_request(request)
        self._request(request)
        response = self.inner.handle_request(request)
        self.found.update(v for k, v in response.headers.items() if k == "wechatpay-signature")
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.stream:
            return await super().handle_async_request(request)
        self._request(request)
        response = await self.inner.handle_async_request(request)
        self.found.update(v for k, v in response.headers.items() if k == "wechatpay-signature")
        return response

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()  # type: ignore[attr-defined]


def _recorded_twin(kind: str, config: ShimConfig, found: set[str], *, stream: bool) -> Twin:
    inner: Any = httpx.AsyncHTTPTransport() if kind == "async" else httpx.HTTPTransport()
    recorder = WireRecorder(inner, found)
    recorder.stream = stream
    if kind == "async":
        return Twin(kind, AsyncCouponStockShim(config, env={}, transport=recorder))
    return Twin(kind, CouponStockShim(config, env={}, transport=recorder))


STRICT_CARD = '\n[[fields]]\nv2 = "card_id"\nv3 = "card_id"\nconvert = "text"\nrequired = true\n'


@pytest.fixture
def strict_mapping_dir(tmp_path: Path) -> Path:
    """A mapping that requires v3 card_id, which stock 1757 lacks (a MappingError)."""
    import shutil

    folder = tmp_path / "strict"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "query_coupon_stock.toml"
    head, tail = path.read_text(encoding="utf-8").split("\n[[fields]]\n", 1)
    path.write_text(head + STRICT_CARD + "\n[[fields]]\n" + tail, encoding="utf-8")
    return folder


# name: (mode, tables, fault (side, fault) or None, how to call, expected type, kind)
SCENARIOS: dict[str, tuple[str, dict[str, Any], tuple[str, str] | None, str, type, str | None]] = {
    "input": ("v3", {}, None, "bad_input", InputError, None),
    "timeout_v3": ("v3", {}, ("v3", "delay"), "query", UpstreamError, "timeout"),
    "connection_v2": ("legacy", {}, ("v2", "reset"), "query", UpstreamError, "connection"),
    "http_status_v3": ("v3", {}, ("v3", "http_503"), "query", UpstreamError, "http_status"),
    "protocol_v2": ("legacy", {}, ("v2", "malformed"), "query", UpstreamError, "protocol"),
    "mixup_v2": ("legacy", {}, ("v2", "wrong_stock"), "query", UpstreamError, "protocol"),
    "circuit_open": ("v3", {}, ("v3", "http_503"), "twice", UpstreamError, "circuit_open"),
    "budget": ("legacy", {}, ("v2", "body_drip"), "query", UpstreamError, "budget"),
    "signature_v2": ("legacy", {}, ("v2", "bad_signature"), "query", SignatureError, "protocol"),
    "signature_v3": ("v3", {}, ("v3", "tampered_body"), "query", SignatureError, "protocol"),
    "mapping": ("v3", {"mapping": "strict"}, None, "query", MappingError, None),
    "config": ("legacy", {}, None, "no_v3", ConfigError, None),
}


def _from_shim(err: BaseException) -> BaseException:
    """``err`` with its traceback starting at the first shim frame: the test's own frames
    (which hold the secrets it collected to search for) are not the shim's to protect."""
    tb = err.__traceback__
    while tb is not None and not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("shim"):
        tb = tb.tb_next
    assert tb is not None, "no shim frame in the traceback"
    err.__traceback__ = tb
    return err


def _captures(err: BaseException, sentry: MemoryTransport) -> list[str]:
    """What the two reporters make of ``err`` (called inside its except block)."""
    err = _from_shim(err)
    texts = [
        "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format())
    ]
    sentry.envelopes.clear()
    sentry_sdk.capture_exception(err)
    sentry_sdk.flush()
    events = sentry.events()
    assert events, "sentry captured nothing"
    texts.append(json.dumps(events, default=repr))
    return texts


def _assert_no_secret(texts: list[str], secrets: set[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret ({len(secret)} chars) leaked: ...{text[:300]}"
        for marker in ("WECHATPAY2-SHA256-RSA2048 mchid", "PRIVATE KEY-----", 'signature="'):
            assert marker not in text, marker


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_no_secret_in_traceback_locals(
    name: str,
    twin_kind: str,
    make_config: Callable[..., ShimConfig],
    emulator: Emulator,
    sandbox_state: SandboxState,
    sentry: MemoryTransport,
    strict_mapping_dir: Path,
) -> None:
    """Each error kind, through each twin over loopback: locals captured by the traceback
    module and by sentry-sdk hold no key, sign, Authorization or signature."""
    mode, tables, fault, how, expected, kind = SCENARIOS[name]
    tables = dict(tables)
    if tables.pop("mapping", None) == "strict":
        tables["mapping"] = {"dir": str(strict_mapping_dir)}
    config = make_config(
        mode,
        via="loopback",
        upstream={"timeout_s": 0.3, "budget_s": 1.0},
        retry={"attempts": 1},
        circuit_breaker={
            "failure_threshold": 1 if how == "twice" else 100,
            "reset_after_s": 60.0,
        },
        routing={"fallback_to_legacy": False, "fallback_to_v3": False},
        **tables,
    )
    if how == "no_v3":
        merchants = dict(config.merchants)
        merchants[MD5_MCH] = dataclasses.replace(merchants[MD5_MCH], v3=None)
        config = dataclasses.replace(config, merchants=merchants)
    wire: set[str] = set()
    twin = _recorded_twin(twin_kind, config, wire, stream=name == "budget")
    if fault is not None:
        emulator.set_fault(fault[0], "1757", fault[1], delay_s=0.02 if "drip" in fault[1] else 1.0)
    texts: list[str] = []
    try:
        if how == "twice":
            with pytest.raises(UpstreamError):
                await twin.query("1757", mch_id=MD5_MCH)
        try:
            if how == "bad_input":
                await twin.query("1757", mch_id=MD5_MCH, device_info="has space")
            elif how == "no_v3":
                await twin.query_via("v3", coupon_stock_id="1757", mch_id=MD5_MCH)
            else:
                await twin.query("1757", mch_id=MD5_MCH)
        except ShimError as err:
            assert type(err) is expected, repr(err)
            if kind is not None:
                assert getattr(err, "kind", None) == kind, repr(err)
            texts += _captures(err, sentry)
        else:
            pytest.fail(f"{name}: no error")
        # a successful call's signatures count as secrets too (the same shim, the same keys)
        emulator.clear_faults()
        if how not in ("no_v3", "twice"):
            answer = await twin.query_via("legacy", coupon_stock_id="1757", mch_id=MD5_MCH)
            wire.add(answer["sign"])
    finally:
        await twin.close()
    if how not in ("bad_input", "no_v3"):
        assert wire, "the recorder saw no signature"
    _assert_no_secret(texts, static_secrets(sandbox_state) | wire)


def test_no_secret_in_config_error_locals(
    sandbox_state: SandboxState, tmp_path: Path, sentry: MemoryTransport
) -> None:
    """A config file with literal keys and one mistake: the ConfigError's locals (the parsed
    TOML, the key being read) hold none of the keys."""
    v2_key = sandbox_state.merchants[MD5_MCH].v2_key
    pem = sandbox_state.merchants[HMAC_MCH].private_key_pem
    path = tmp_path / "shim.toml"
    path.write_text(
        "[routing]\nmode = 'legacy'\n"
        f'[merchants."{MD5_MCH}"]\nappid = "wx5edab3bdfba3dc1c"\nv2_key = "{v2_key}"\n'
        f'v3_private_key = """{pem}"""\nv3_cert_serial = "ABC"\n'
        "no_such_key = 1\n",
        encoding="utf-8",
    )
    for build in (load_config, CouponStockShim.from_file):
        with warnings.catch_warnings(), pytest.raises(ConfigError) as info:
            warnings.simplefilter("ignore")
            build(path)  # type: ignore[operator]
        try:
            raise info.value
        except ConfigError as err:
            texts = _captures(err, sentry)
        _assert_no_secret(texts, static_secrets(sandbox_state))


# ----------------------------------------------------------------- 13: one redactor


def test_secret_names_are_recognised_case_and_separator_blind() -> None:
    """sign, paySign, signature, key, authorization, private_key... in any case are secret;
    sign_type, nonce_str, mch_id and stock ids are not."""
    for name in [
        "sign",
        "SIGN",
        "paySign",
        "PaySign",
        "signature",
        "Wechatpay-Signature",
        "key",
        "v2_key",
        "apiKey",
        "API-KEY",
        "private_key",
        "privateKeyPem",
        "Authorization",
        "proxy-authorization",
        "secret",
        "client_secret",
        "password",
        "token",
        b"sign",
    ]:
        assert is_secret_name(name), name
    for name in ["sign_type", "nonce_str", "mch_id", "coupon_stock_id", "changed_keys", 7, None]:
        assert not is_secret_name(name), name


SECRET = "0123456789ABCDEF0123456789ABCDEF"
AUTH = f'WECHATPAY2-SHA256-RSA2048 mchid="1",signature="{SECRET}",serial_no="2"'
PEM = f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"


class Leaky:
    """An object whose repr carries a secret."""

    def __repr__(self) -> str:
        return f"Leaky(v2_key='{SECRET}')"


@pytest.mark.parametrize(
    "value",
    [
        AUTH,
        PEM,
        f"<xml><sign>{SECRET}</sign></xml>",
        f"<xml><paySign><![CDATA[{SECRET}]]></paySign></xml>",
        f"a=1&sign={SECRET}&b=2",
        f"stringA&key={SECRET}",
        f"{{'paySign': '{SECRET}'}}",
        f'{{"Signature": "{SECRET}"}}',
        f"Authorization: {AUTH}",
        f"private_key={SECRET}",
        (f"<xml><sign>{SECRET}</sign></xml>").encode(),
        bytearray(f"sign={SECRET}".encode()),
        {f"sign={SECRET}"},
        frozenset({AUTH}),
        (PEM, 1),
        [[{"nested": {"deeper": [f"key={SECRET}"]}}]],
        {"paySign": SECRET},
        {"PAYSIGN": SECRET},
        {"Authorization": SECRET},
        {"inner": {"private_key": SECRET}},
        {b"sign": SECRET},
        Leaky(),
        [Leaky()],
        ValueError(f"bad sign={SECRET}"),
        "A" * 200,  # a bare long Base64 run (an RSA signature)
    ],
    ids=lambda v: type(v).__name__,
)
def test_redactor_misses_nothing(value: Any) -> None:
    """Bytes, sets, tuples, nested containers, objects whose repr carries a secret and
    sign-like keys in any case: the structlog processor redacts every one."""
    out = redact_secrets(None, "info", {"event": "x", "value": value})["value"]
    assert SECRET not in repr(out) and "A" * 200 not in repr(out)


def test_redactor_keeps_plain_values_and_names() -> None:
    """Ordinary event values pass unchanged (ids, kinds, numbers, sign_type, messages)."""
    event = {
        "event": "coupon_stock.query",
        "mch_id": "10000098",
        "coupon_stock_id": "1757",
        "latency_ms": 3.2,
        "fallback": False,
        "sign_type": "HMAC-SHA256",
        "error": "[v3] v3 answer refused: missing Wechatpay-Signature header",
        "mismatch_fields": ["coupon_total", "is_send_num"],
        "config_error": 'shim.toml: merchants."1".v2_key: is too short',
    }
    assert redact_secrets(None, "info", dict(event)) == event


def test_secret_keyed_event_fields_are_blanked() -> None:
    """Top-level secret-named fields are replaced whole, whatever their type."""
    out = redact_secrets(None, "info", {"event": "x", "paySign": b"raw", "Token": 12345})
    assert out["paySign"] == REDACTED and out["Token"] == REDACTED


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
    wrap=st.sampled_from(["{}", "sign={}", "paySign='{}'", "<sign>{}</sign>", '"signature": "{}"']),
    container=st.sampled_from(["str", "bytes", "list", "set", "tuple", "dict"]),
)
def test_redacted_text_never_keeps_a_marked_secret(
    prefix: str, suffix: str, wrap: str, container: str
) -> None:
    """Property: a secret behind any of the shim's markers, in any container, is redacted."""
    text = prefix + " " + wrap.format(SECRET) + " " + suffix
    if wrap == "{}":
        text = prefix + " " + AUTH + " " + suffix
    value: Any = {
        "str": text,
        "bytes": text.encode("utf-8", "surrogatepass"),
        "list": [text],
        "set": {text},
        "tuple": (text,),
        "dict": {"k": text},
    }[container]
    assert SECRET not in repr(redact_value(value))
    assert SECRET not in redact_text(text)
