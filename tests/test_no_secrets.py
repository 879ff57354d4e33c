"""No secret leaves the process: a broad run of shim calls and CLI commands, every line checked.

Secrets are the merchants' v2 and APIv3 keys, every line of their private key PEMs, the v3
Authorization values and signatures the shim sent, the Wechatpay-Signature values it received,
and every v2 ``sign`` it sent, received or returned. The run covers every mode, business
errors, faults on both sides, fallback both ways, shadow comparisons and input errors; the
texts searched are every captured event (before any redaction), every exception's str, repr
and formatted traceback, ``repr(shim.config)``, and the CLI's stderr in JSON log format.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, ShimError
from shim.cli import main
from shim.sandbox import DIVERGENT_STOCK_ID, Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH, Twin

_SIGN_ELEMENT = re.compile(rb"<sign>(?:<!\[CDATA\[)?([^<\]]+)")
_AUTH_SIGNATURE = re.compile(r'signature="([^"]+)"')
GENERIC_MARKERS = ("WECHATPAY2-SHA256-RSA2048", 'signature="', "<sign>", "PRIVATE KEY")


class RecordingTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Forwards to the emulator and remembers every signature-like value on the wire."""

    def __init__(self, inner: httpx.MockTransport, found: set[str]) -> None:
        self.inner = inner
        self.found = found

    def _request(self, request: httpx.Request) -> None:
        auth = request.headers.get("authorization")
        if auth:
            self.found.add(auth)
            self.found.update(_AUTH_SIGNATURE.findall(auth))
        self.found.update(m.decode() for m in _SIGN_ELEMENT.findall(request.content))

    def _response(self, response: httpx.Response) -> None:
        sig = response.headers.get("wechatpay-signature")
        if sig:
            self.found.add(sig)
        self.found.update(m.decode() for m in _SIGN_ELEMENT.findall(response.content[:65536]))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._request(request)
        response = self.inner.handle_request(request)
        response.read()
        self._response(response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._request(request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self._response(response)
        return response


def static_secrets(state: SandboxState) -> set[str]:
    out: set[str] = set()
    for m in state.merchants.values():
        out |= {m.v2_key, m.apiv3_key}
        out |= {line for line in m.private_key_pem.splitlines() if "-----" not in line and line}
    out |= {line for line in state.pub_private_key_pem.splitlines() if "-----" not in line}
    out |= {line for line in state.platform_private_key_pem.splitlines() if "-----" not in line}
    return {s for s in out if len(s) >= 16}


def error_texts(exc: BaseException) -> list[str]:
    """The formatted traceback, and str/repr/args of the exception and all it was chained to."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts += [str(link), repr(link), repr(link.args)]
        link = link.__cause__ or link.__context__
    return texts


def assert_clean(texts: Iterable[str], secrets: set[str], *, markers: bool = True) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret ({len(secret)} chars) leaked into: {text[:200]}"
        if markers:
            for marker in GENERIC_MARKERS:
                assert marker not in text, f"{marker!r} in: {text[:200]}"


# (mode, [routing], {side: fault} armed for this call, stock, mch_id)
RUN: list[tuple[str, dict[str, Any], dict[str, str], str, str]] = []
for _mode, _routing in [
    ("legacy", {}),
    ("v3", {}),
    ("shadow", {}),
    ("shadow", {"shadow_serve": "v3"}),
    ("canary", {"canary_percent": 50.0, "canary_shadow": True}),
    ("legacy", {"fallback_to_v3": True}),
]:
    for _stock, _mch in [
        ("1757", MD5_MCH),
        ("9856099", HMAC_MCH),
        ("404404", MD5_MCH),
        (DIVERGENT_STOCK_ID, MD5_MCH),
        ("9856003", MD5_MCH),
    ]:
        RUN.append((_mode, _routing, {}, _stock, _mch))
for _fault in [
    "bad_signature",
    "tampered_body",
    "missing_signature",
    "http_503",
    "reset",
    "truncated",
    "malformed",
    "wrong_content_type",
]:
    for _side in ("v2", "v3"):
        for _stock, _mch in [("1757", MD5_MCH), ("9856099", HMAC_MCH)]:
            RUN.append(("legacy" if _side == "v2" else "v3", {}, {_side: _fault}, _stock, _mch))
            RUN.append(("shadow", {}, {"v3" if _side == "v2" else "v2": _fault}, _stock, _mch))
for _fault in ["stale_signature", "unknown_serial", "signtest", "v3_error:401:SIGN_ERROR"]:
    for _stock, _mch in [("1757", MD5_MCH), ("9856099", HMAC_MCH)]:
        RUN.append(("v3", {"fallback_to_legacy": False}, {"v3": _fault}, _stock, _mch))
for _fault in ["err_code:SIGN_ERROR", "billion_laughs"]:
    RUN.append(("legacy", {}, {"v2": _fault}, "1757", MD5_MCH))
RUN.append(("legacy", {"fallback_to_v3": True}, {"v2": "http_503"}, "1757", MD5_MCH))


@pytest.fixture
def recorded(
    twin_kind: str, make_config: Callable[..., ShimConfig], emulator: Emulator
) -> Callable[..., Twin]:
    """Build shims whose traffic goes through a RecordingTransport; ``.found`` holds the values."""

    def build(config: ShimConfig, found: set[str]) -> Twin:
        transport = RecordingTransport(emulator.mock_transport(), found)
        if twin_kind == "async":
            return Twin(twin_kind, AsyncCouponStockShim(config, env={}, transport=transport))
        return Twin(twin_kind, CouponStockShim(config, env={}, transport=transport))

    return build


async def test_no_secret_in_events_exceptions_or_config_repr(
    recorded: Callable[..., Twin],
    make_config: Callable[..., ShimConfig],
    emulator: Emulator,
    sandbox_state: SandboxState,
) -> None:
    """Every mode, fault, fallback, shadow and input error: no secret in any event or error."""
    wire: set[str] = set()
    texts: list[str] = []
    answers: list[dict[str, str]] = []
    twins: dict[str, Twin] = {}
    try:
        with capture_logs() as logs:
            for mode, routing, faults, stock, mch_id in RUN:
                key = repr((mode, routing))
                if key not in twins:
                    config = make_config(mode, routing=routing, retry={"attempts": 1})
                    twins[key] = recorded(config, wire)
                    texts.append(repr(config))
                    texts.append(str(config))
                twin = twins[key]
                emulator.clear_faults()
                for side, fault in faults.items():
                    emulator.set_fault(side, stock, fault)
                try:
                    answers.append(await twin.query(coupon_stock_id=stock, mch_id=mch_id))
                except ShimError as exc:
                    texts += error_texts(exc)
                assert await twin.wait_for_shadows()
            twin = next(iter(twins.values()))
            for bad in [
                {"coupon_stock_id": ""},
                {"mch_id": "10000777"},
                {"appid": "wx" + "0" * 16},
            ]:
                try:
                    await twin.query(**{"coupon_stock_id": "1757", "mch_id": MD5_MCH, **bad})
                except ShimError as exc:
                    texts += error_texts(exc)
            emulator.clear_faults()
            for route in ("legacy", "v3"):
                answers.append(await twin.query_via(route, coupon_stock_id="1757", mch_id=MD5_MCH))
    finally:
        for twin in twins.values():
            texts += [repr(twin.shim.config), repr(twin.shim.shadow_totals())]
            await twin.close()
    events = [e for e in logs if e["event"] == "coupon_stock.query"]
    assert len(events) >= len(RUN) and {e["outcome"] for e in events} >= {
        "success",
        "business_error",
        "error",
    }
    assert any(e.get("fallback") for e in events) and any(e.get("shadow") for e in events)
    assert len(texts) > 100 and len(wire) > 100
    answer_signs = {a["sign"] for a in answers if "sign" in a}
    secrets = static_secrets(sandbox_state) | wire | answer_signs
    assert_clean([repr(entry) for entry in logs] + texts, secrets)


def test_no_secret_in_cli_json_logs(
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CLI query/compare/errors with --log-format json: stderr holds events, never a secret."""
    configs = {
        mode: sandbox_state.write_config(
            tmp_path / f"{mode}.toml",
            v2_base_url=server.base_url,
            v3_base_url=server.base_url,
            mode=mode,
        )
        for mode in ("legacy", "v3", "shadow")
    }
    signs: set[str] = set()
    stderr: list[str] = []

    def cli(*argv: str) -> None:
        code = main(["--log-format", "json", *argv])
        out, err = capsys.readouterr()
        stderr.append(err)
        if code == 0 and out.startswith("{") and '"sign"' in out:
            signs.add(json.loads(out)["sign"])

    for mode, stock, mch_id in [
        ("legacy", "1757", MD5_MCH),
        ("v3", "9856099", HMAC_MCH),
        ("shadow", DIVERGENT_STOCK_ID, MD5_MCH),
    ]:
        cli("query", "--config", str(configs[mode]), "--mch-id", mch_id, stock)
    for side, fault, mode in [
        ("v3", "bad_signature", "v3"),
        ("v2", "tampered_body", "legacy"),
        ("v3", "http_503", "shadow"),
        ("v3", "stale_signature", "shadow"),
    ]:
        emulator.clear_faults()
        emulator.set_fault(side, "1757", fault)
        cli("query", "--config", str(configs[mode]), "--mch-id", MD5_MCH, "1757")
    emulator.set_fault("v3", "9856000", "signtest")
    cli(
        "compare", "--config", str(configs["legacy"]), "--mch-id", MD5_MCH,
        "1757", "9856000", DIVERGENT_STOCK_ID, "404404",
    )  # fmt: skip
    cli("query", "--config", str(configs["legacy"]), "--mch-id", "10000777", "1757")
    text = "".join(stderr)
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert sum(e.get("event") == "coupon_stock.query" for e in events) >= 6
    assert "coupon-shim: SignatureError" in text and "coupon-shim: InputError" in text
    secrets = static_secrets(sandbox_state) | signs
    assert len(signs) >= 5
    assert_clean(stderr, secrets)
