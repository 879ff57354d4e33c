"""shim.compat.wechatpy: a wechatpy client whose coupon stock query goes through the shim.

A legacy wechatpy script runs unchanged but for its import, in every routing mode, and gives
what real wechatpy gives in legacy mode; both clients run side by side against the emulator
(behind a loopback front that also plays ``pay/orderquery`` and the v2 sandbox).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
import wechatpy.pay
from wechatpy.exceptions import WeChatPayException

import shim
from shim import ConfigError, CouponStockShim, InputError, UpstreamError
from shim.compat import wechatpy as compat
from shim.sandbox import Emulator, RunningServer, SandboxState

from .test_no_secrets import assert_clean, error_texts, static_secrets
from .wechatpy_front import ORDER_PATH, SIGNKEY_PATH, Front, serve_front

MCH = "10000098"
SCRIPT = Path(__file__).parent / "legacy_scripts" / "wechatpy_stock_check.py"
ORIGINAL_IMPORT = "from wechatpy.pay import WeChatPay"
SHIM_IMPORT = "from shim.compat.wechatpy import WeChatPay"
MODES = ("legacy", "shadow", "canary", "v3")


@pytest.fixture(scope="module")
def front_server(
    sandbox_state: SandboxState, _session_emulator: Emulator
) -> Iterator[tuple[RunningServer, Front]]:
    """The emulator behind the front, on a real loopback server, for this module."""
    with serve_front(_session_emulator, sandbox_state) as running:
        yield running


@pytest.fixture
def front(front_server: tuple[RunningServer, Front], emulator: Emulator) -> Iterator[Front]:
    """The front, its log and the emulator's counters reset around each test."""
    f = front_server[1]
    f.log.clear()
    emulator.reset_counts()
    yield f
    f.log.clear()


@pytest.fixture
def base_url(front_server: tuple[RunningServer, Front]) -> str:
    """The front's base URL, as wechatpy spells API_BASE_URL (trailing slash)."""
    return front_server[0].base_url + "/"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_url: str) -> Iterator[None]:
    """wechatpy aimed at the front; no config found by accident; default shims closed after."""
    monkeypatch.setattr(wechatpy.pay.WeChatPay, "API_BASE_URL", base_url)
    monkeypatch.delenv("COUPON_SHIM_CONFIG", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    shim.close_default_shims()


@pytest.fixture
def credentials(sandbox_state: SandboxState, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The legacy script's credentials, from the environment as such scripts read them."""
    m = sandbox_state.merchants[MCH]
    env = {"WECHAT_APPID": m.appid, "WECHAT_API_KEY": m.v2_key, "WECHAT_MCH_ID": MCH}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def write_config(
    sandbox_state: SandboxState,
    front_server: tuple[RunningServer, Front],
    emulator: Emulator,
    tmp_path: Path,
) -> Callable[..., Path]:
    """A shim.toml for the emulator (via the front) in a given mode (counters reset around)."""
    emulator.reset_counts()

    def write(mode: str = "legacy", name: str | None = None, **routing: str) -> Path:
        path = tmp_path / (name or mode) / "shim.toml"
        url = front_server[0].base_url
        sandbox_state.write_config(path, v2_base_url=url, v3_base_url=url, mode=mode)
        text = path.read_text(encoding="utf-8")
        if mode == "canary":
            routing.setdefault("canary_percent", "100.0")
        for key, value in routing.items():
            lines = [ln for ln in text.splitlines() if ln.startswith(f"{key} = ")]
            assert len(lines) == 1, key
            text = text.replace(lines[0], f"{key} = {value}")
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _run_script(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "legacy_script"}
    exec(compile(source, str(SCRIPT), "exec"), namespace)
    report: dict[str, Any] = namespace["main"]()
    return report


def _script(import_line: str) -> str:
    source = SCRIPT.read_text(encoding="utf-8")
    assert source.count(ORIGINAL_IMPORT) == 1
    return source.replace(ORIGINAL_IMPORT, import_line)


def _error(exc: BaseException) -> tuple[Any, ...]:
    assert isinstance(exc, WeChatPayException)
    return (
        type(exc),
        exc.return_code,
        exc.result_code,
        exc.return_msg,
        exc.errcode,
        exc.errmsg,
        str(exc),
    )


# ----------------------------------------------------------------------------- the legacy script


def test_the_script_is_written_against_wechatpy(
    credentials: dict[str, str], front: Front, emulator: Emulator
) -> None:
    """Unchanged, the script runs on real wechatpy against the front (the baseline)."""
    report = _run_script(_script(ORIGINAL_IMPORT))
    assert report["stock"]["coupon_name"] == "满100减10"
    assert report["stock_signed"] is True
    assert report["official"]["device_info"] == "013467007045764"
    assert report["missing"]["errcode"] == "COUPON_STOCK_NOT_FOUND"
    assert report["order"] == {
        "trade_state": "SUCCESS",
        "out_trade_no": "1217752501201407033233368018",
    }
    assert emulator.request_counts["v2"] == 3
    assert front.log.paths == [ORDER_PATH]


@pytest.mark.parametrize("mode", MODES)
def test_legacy_script_runs_unchanged_but_its_import_in_every_mode(
    mode: str,
    credentials: dict[str, str],
    write_config: Callable[..., Path],
    front: Front,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same report as real wechatpy in legacy mode: answers, exceptions, the order group."""
    expected = _run_script(_script(ORIGINAL_IMPORT))
    emulator.reset_counts()
    front.log.clear()

    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(write_config(mode)))
    with structlog.testing.capture_logs() as events:
        got = _run_script(_script(SHIM_IMPORT))
        shim.close_default_shims()  # finishes the shadow comparisons

    assert got == expected
    counts = emulator.request_counts
    served_by_v3 = mode in ("canary", "v3")
    assert counts["v3"] == (3 if mode != "legacy" else 0)
    assert counts["v2"] == (0 if served_by_v3 else 3)
    # the other API group went to wechatpy's own base URL, through wechatpy, untouched
    assert front.log.paths == [ORDER_PATH]
    calls = [e for e in events if e["event"] == "coupon_stock.query"]
    assert [e["route"] for e in calls] == ["v3" if served_by_v3 else "legacy"] * 3
    if mode == "shadow":
        assert [e["shadow"] for e in calls] == ["match"] * 3


def test_same_objects_and_exception_attributes_side_by_side(
    sandbox_state: SandboxState, write_config: Callable[..., Path], front: Front
) -> None:
    """Each query, real wechatpy and the drop-in in v3 mode: equal dicts, equal exceptions."""
    m = sandbox_state.merchants[MCH]
    real = wechatpy.pay.WeChatPay(m.appid, m.v2_key, MCH)
    drop_in = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=write_config("v3"))
    assert isinstance(drop_in, wechatpy.pay.WeChatPay)
    assert isinstance(drop_in.coupon, wechatpy.pay.api.WeChatCoupon)
    assert drop_in.coupon is not real.coupon and drop_in.order._client is drop_in

    def drop_nonce(d: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in d.items() if k not in ("nonce_str", "sign")}

    for stock_id in ("1757", "1717", "9856002", "9856030"):
        a, b = real.coupon.query_stock(stock_id), drop_in.coupon.query_stock(stock_id)
        assert type(b) is dict and all(isinstance(v, str) for v in b.values())
        assert drop_nonce(b) == drop_nonce(a), stock_id
    with pytest.raises(WeChatPayException) as real_exc:
        real.coupon.query_stock("98765432", device_info="dev-1")
    with pytest.raises(WeChatPayException) as shim_exc:
        drop_in.coupon.query_stock("98765432", device_info="dev-1")
    assert _error(shim_exc.value) == _error(real_exc.value)
    assert shim_exc.value.client is drop_in


# ----------------------------------------------------------------------------- error contract


def _pair(
    sandbox_state: SandboxState, config: Path | None = None, **kwargs: Any
) -> tuple[Any, Any]:
    m = sandbox_state.merchants[MCH]
    real = wechatpy.pay.WeChatPay(m.appid, m.v2_key, MCH, **kwargs)
    drop_in = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=config, **kwargs)
    return real, drop_in


def test_injected_business_error_raises_like_wechatpy(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """A SYSTEMERROR answer (result_code=FAIL) raises the same exception from both clients."""
    real, drop_in = _pair(sandbox_state, write_config("legacy"))
    emulator.set_fault("v2", "1757", "err_code:SYSTEMERROR", times=2)
    with pytest.raises(WeChatPayException) as a:
        real.coupon.query_stock("1757")
    with pytest.raises(WeChatPayException) as b:
        drop_in.coupon.query_stock("1757")
    assert _error(b.value) == _error(a.value)


def test_http_error_status_is_a_wechatpay_exception_without_return_code(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """wechatpy turns an HTTP 5xx into WeChatPayException(return_code=None); so does the shim."""
    real, drop_in = _pair(sandbox_state, write_config("legacy"))
    emulator.set_fault("v2", "1757", "http_500")  # every attempt
    with pytest.raises(WeChatPayException) as a:
        real.coupon.query_stock("1757")
    with pytest.raises(WeChatPayException) as b:
        drop_in.coupon.query_stock("1757")
    assert a.value.return_code is None and b.value.return_code is None
    assert isinstance(b.value.__cause__, UpstreamError)
    assert b.value.__cause__.kind == "http_status"


def test_forged_answer_is_refused_not_passed_off(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """wechatpy returns a forged v2 answer as if real; the drop-in raises instead."""
    real, drop_in = _pair(sandbox_state, write_config("legacy"))
    emulator.set_fault("v2", "1757", "bad_signature", times=1)
    assert real.coupon.query_stock("1757")["coupon_stock_id"] == "1757"  # wechatpy: fooled
    emulator.set_fault("v2", "1757", "bad_signature")
    with pytest.raises(WeChatPayException) as b:
        drop_in.coupon.query_stock("1757")
    assert b.value.return_code is None
    assert type(b.value.__cause__).__name__ == "SignatureError"


def test_timeout_option_bounds_the_call_and_raises_requests_timeout(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """timeout= behaves as in wechatpy: a slow WeChat Pay gives requests' ReadTimeout in time."""
    real, drop_in = _pair(sandbox_state, write_config("legacy"), timeout=0.3)
    emulator.set_fault("v2", "1757", "delay", delay_s=3.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        real.coupon.query_stock("1757")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout) as b:
        drop_in.coupon.query_stock("1757")
    assert time.monotonic() - started < 2.5  # bounded by timeout=, not by the 3 s delay
    assert isinstance(b.value.__cause__, UpstreamError)
    assert b.value.__cause__.kind in ("timeout", "budget")
    assert drop_in._coupon_shim().config.upstream.budget_s == pytest.approx(0.3)


def test_timeout_pair_and_none(
    sandbox_state: SandboxState, write_config: Callable[..., Path], front: Front
) -> None:
    """(connect, read) sets both and bounds the call by their sum; None keeps the file's."""
    path = write_config("legacy")
    m = sandbox_state.merchants[MCH]
    pair = compat.WeChatPay(m.appid, m.v2_key, MCH, timeout=(1, 4), shim=path)
    up = pair._coupon_shim().config.upstream
    assert (up.connect_timeout_s, up.timeout_s, up.budget_s) == (1.0, 4.0, 5.0)
    plain = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=path)
    assert plain._coupon_shim().config.upstream.budget_s == 10.0
    for bad in (0, -1, "5", (1, 2, 3), True):
        with pytest.raises(InputError, match="timeout"):
            compat.WeChatPay(m.appid, m.v2_key, MCH, timeout=bad, shim=path)


def test_connection_failure_is_requests_connection_error(
    sandbox_state: SandboxState, tmp_path: Path, front: Front
) -> None:
    """Nothing listening: requests.ConnectionError from both clients."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    path = sandbox_state.write_config(
        tmp_path / "dead" / "shim.toml", v2_base_url=dead, v3_base_url=dead
    )
    real, drop_in = _pair(sandbox_state, path)
    real.API_BASE_URL = dead + "/"
    with pytest.raises(requests.exceptions.ConnectionError):
        real.coupon.query_stock("1757")
    with pytest.raises(requests.exceptions.ConnectionError) as b:
        drop_in.coupon.query_stock("1757")
    assert isinstance(b.value.__cause__, UpstreamError)


def test_sandbox_option_goes_to_the_v2_sandbox_with_the_sandbox_key(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """sandbox=True: /sandboxnew/, signed with the fetched sandbox key, legacy even in v3 mode."""
    m = sandbox_state.merchants[MCH]
    production_key = "0" * 32  # only the sandbox key is accepted by the sandbox
    real = wechatpy.pay.WeChatPay(m.appid, production_key, MCH, sandbox=True)
    drop_in = compat.WeChatPay(m.appid, production_key, MCH, sandbox=True, shim=write_config("v3"))
    a = real.coupon.query_stock("1757")
    b = drop_in.coupon.query_stock("1757")
    assert {k: v for k, v in b.items() if k not in ("nonce_str", "sign")} == {
        k: v for k, v in a.items() if k not in ("nonce_str", "sign")
    }
    sandbox_query = "/sandboxnew/mmpaymkttransfers/query_coupon_stock"
    assert front.log.paths == [SIGNKEY_PATH, sandbox_query, SIGNKEY_PATH, sandbox_query]
    assert emulator.request_counts["v3"] == 0
    with (
        CouponStockShim.from_file(write_config("legacy")) as own,
        pytest.raises(ConfigError, match="sandbox"),
    ):
        compat.WeChatPay(m.appid, m.v2_key, MCH, sandbox=True, shim=own)


# ----------------------------------------------------------------------------- config sources


def test_no_config_anywhere_derives_a_legacy_shim_from_the_constructor(
    sandbox_state: SandboxState, emulator: Emulator, front: Front
) -> None:
    """Only the import changed, no shim.toml: served legacy at API_BASE_URL, through the shim."""
    real, drop_in = _pair(sandbox_state)
    assert drop_in.coupon.query_stock("1757")["coupon_name"] == "满100减10"
    assert emulator.request_counts["v2"] == 1
    cfg = drop_in._coupon_shim().config
    assert cfg.routing.mode == "legacy" and cfg.merchants[MCH].v3 is None
    assert cfg.upstream.v2_base_url == real.API_BASE_URL.rstrip("/")
    assert repr(cfg.merchants[MCH].v2_key).startswith("Secret(<env:")


def test_settings_add_v3_credentials_to_the_derived_config(
    sandbox_state: SandboxState, emulator: Emulator, front: Front
) -> None:
    """shim={...}: routing and the merchant's v3 settings over what the constructor gives."""
    m = sandbox_state.merchants[MCH]
    settings = {
        "routing": {"mode": "v3"},
        "merchant": {
            "v3_private_key": f"file:{m.private_key_path}",
            "v3_cert_serial": m.cert_serial,
            "wechatpay_public_key": f"file:{sandbox_state.pub_key_path}",
            "wechatpay_public_key_id": sandbox_state.pub_key_id,
        },
    }
    pay = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=settings)
    assert pay.coupon.query_stock("1757")["coupon_stock_status"] == "4"
    assert emulator.request_counts == {"v3": 1}
    again = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=dict(settings))
    assert again._coupon_shim() is pay._coupon_shim()  # one shim per configuration
    for bad, key in (
        ({"merchant": {"v2_key": "x"}}, "merchant.v2_key"),
        ({"merchants": {}}, "merchants"),
        ({"merchant": "x"}, "merchant"),
    ):
        with pytest.raises(ConfigError) as exc:
            compat.WeChatPay(m.appid, m.v2_key, MCH, shim=bad)
        assert exc.value.key == key
    broken = compat.WeChatPay(m.appid, m.v2_key, MCH, shim={"routing": {"mode": "v4"}})
    with pytest.raises(ConfigError, match=r"routing\.mode"):
        broken.coupon.query_stock("1757")
    assert emulator.request_counts == {"v3": 1}  # refused before any request


def test_shim_toml_in_the_working_directory_is_found(
    credentials: dict[str, str],
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No variable, ./shim.toml present: it is used (v3 mode here), shared with the default."""
    monkeypatch.chdir(write_config("v3").parent)
    pay = compat.WeChatPay(credentials["WECHAT_APPID"], credentials["WECHAT_API_KEY"], MCH)
    pay.coupon.query_stock("1757")
    assert emulator.request_counts == {"v3": 1}
    assert pay._coupon_shim() is shim.default_shim()


def test_a_given_shim_is_used_as_is(
    sandbox_state: SandboxState, write_config: Callable[..., Path], emulator: Emulator
) -> None:
    """shim=CouponStockShim(...): the caller's own shim serves (and stays the caller's)."""
    m = sandbox_state.merchants[MCH]
    with CouponStockShim.from_file(write_config("v3")) as own:
        pay = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=own)
        assert pay.coupon.query_stock("1757")["coupon_stock_id"] == "1757"
        assert pay._coupon_shim() is own
    assert emulator.request_counts == {"v3": 1}


def test_config_errors_are_clear_and_early(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Missing file, unknown merchant, another key: ConfigError naming it, nothing sent."""
    m = sandbox_state.merchants[MCH]
    missing = tmp_path / "nowhere" / "shim.toml"
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="COUPON_SHIM_CONFIG") as exc:
        compat.WeChatPay(m.appid, m.v2_key, MCH)
    assert str(missing) in str(exc.value)
    with pytest.raises(ConfigError, match="does not exist"):
        compat.WeChatPay(m.appid, m.v2_key, MCH, shim=missing)
    with pytest.raises(TypeError):
        compat.WeChatPay(m.appid, m.v2_key, MCH, shim=42)

    path = write_config("legacy")
    other = compat.WeChatPay("wx0000000000000000", "k" * 32, "12345", shim=path)
    with pytest.raises(ConfigError, match=r'merchants\."12345"') as exc:
        other.coupon.query_stock("1757")
    assert str(path) in str(exc.value)
    wrong_key = "x" * 32
    stale = compat.WeChatPay(m.appid, wrong_key, MCH, shim=path)
    with pytest.raises(ConfigError, match="api_key") as exc:
        stale.coupon.query_stock("1757")
    assert exc.value.key == f'merchants."{MCH}".v2_key'
    assert wrong_key not in str(exc.value) and m.v2_key not in str(exc.value)
    with pytest.raises(InputError, match="coupon_stock_id"):
        compat.WeChatPay(m.appid, m.v2_key, MCH, shim=path).coupon.query_stock("")
    assert emulator.request_counts == {}


def _caught(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no exception")


def _texts_with_locals(exc: BaseException) -> list[str]:
    """str/repr/traceback of the exception chain, and the locals of the drop-in's own frames."""
    texts = error_texts(exc)
    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(
        exc, capture_locals=True
    )
    frames = 0
    while te is not None:
        for frame in te.stack:
            if "compat" in Path(frame.filename).parts:
                frames += 1
                for name, value in (frame.locals or {}).items():
                    assert "'sign': '" not in value, f"a v2 answer with its sign in local {name}"
                    assert "api_key" not in value, name
                    texts.append(f"{name} = {value}")
        te = te.__cause__ or te.__context__
    assert frames, "the drop-in's frames are in the traceback"
    return texts


def test_no_secret_in_errors_locals_or_events(
    sandbox_state: SandboxState,
    write_config: Callable[..., Path],
    emulator: Emulator,
    front: Front,
) -> None:
    """Keys and signatures appear in no exception, traceback local or event of the drop-in."""
    m = sandbox_state.merchants[MCH]
    wrong_key = "y" * 32
    secrets = static_secrets(sandbox_state) | {wrong_key}
    path = write_config("v3")
    pay = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=path)
    stale = compat.WeChatPay(m.appid, wrong_key, MCH, shim=path)
    literal = {"routing": {"mode": "v4"}, "merchant": {"v3_private_key": m.private_key_pem}}
    derived = compat.WeChatPay(m.appid, m.v2_key, MCH, shim=literal)
    errors: list[BaseException] = []
    with structlog.testing.capture_logs() as logs:
        errors.append(_caught(lambda: pay.coupon.query_stock("98765432")))
        emulator.set_fault("v3", "1757", "http_500")
        emulator.set_fault("v2", "1757", "http_500")
        errors.append(_caught(lambda: pay.coupon.query_stock("1757")))
        emulator.clear_faults()
        emulator.set_fault("v3", "1757", "bad_signature")
        emulator.set_fault("v2", "1757", "bad_signature")
        errors.append(_caught(lambda: pay.coupon.query_stock("1757")))
        errors.append(_caught(lambda: stale.coupon.query_stock("1757")))
        errors.append(_caught(lambda: derived.coupon.query_stock("1757")))
    assert [type(e).__name__ for e in errors] == [
        "WeChatPayException",
        "WeChatPayException",
        "WeChatPayException",
        "ConfigError",
        "ConfigError",
    ]
    assert logs, "the shim logs its per-call events"
    texts = [t for e in errors for t in _texts_with_locals(e)] + [repr(e) for e in logs]
    assert_clean(texts, secrets)


def test_import_error_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without wechatpy installed, the import fails saying which extra to install."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "wechatpy", None)
    monkeypatch.setitem(sys.modules, "wechatpy.pay", None)
    monkeypatch.delitem(sys.modules, "shim.compat.wechatpy")
    with pytest.raises(ImportError, match=r"coupon-shim\[wechatpy\]"):
        importlib.import_module("shim.compat.wechatpy")
    monkeypatch.setitem(sys.modules, "shim.compat.wechatpy", compat)


def test_drop_in_in_a_forked_child_uses_a_shim_of_its_own(
    credentials: dict[str, str], write_config: Callable[..., Path], base_url: str
) -> None:
    """A pre-fork server pattern: WeChatPay built in the parent, used in a forked worker."""
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import json, os
        import wechatpy.pay
        wechatpy.pay.WeChatPay.API_BASE_URL = os.environ["BASE_URL"]
        from shim.compat.wechatpy import WeChatPay

        pay = WeChatPay(os.environ["WECHAT_APPID"], os.environ["WECHAT_API_KEY"],
                        os.environ["WECHAT_MCH_ID"])
        first = pay.coupon.query_stock("1757")["coupon_stock_id"]
        parent = pay._coupon_shim()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                answer = pay.coupon.query_stock("1717")["coupon_stock_id"]
                own = pay._coupon_shim() is not parent
                os.write(write, json.dumps([answer, own]).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = json.loads(os.read(read, 4096).decode())
        os.waitpid(pid, 0)
        print("RESULT " + json.dumps([first, child, pay._coupon_shim() is parent]))
        """
    )
    env = {
        **credentials,
        "COUPON_SHIM_CONFIG": str(write_config("v3")),
        "BASE_URL": base_url,
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert json.loads(lines[0][len("RESULT ") :]) == ["1757", ["1717", True], True]
