"""Failures that say what to do: a wrong v2 key, a key of implausible length, an unknown
kill-switch value. Each message names the merchant and its config key, never a secret."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from shim import ConfigError, ShimConfig, SignatureError, load_config

# private: the environment overrides, tested directly
from shim import _environ as environ

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: CLI command internals (exit codes, helpers)
from shim._commands import ExitCode
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, MD5_MCH, Twin
from tests.test_cli_conventions import assert_one_line_error, coupon_shim

WRONG_KEY = "W" * 16 + "0123456789abcdef"  # 32 characters, not the merchant's


# ------------------------------------------------------------------ v2 sign mismatches


@pytest.mark.parametrize("mch", [MD5_MCH, HMAC_MCH])
async def test_wrong_v2_key_names_merchant_config_key_and_causes(
    make_shim: Callable[..., Twin], sandbox_state: SandboxState, emulator: Emulator, mch: str
) -> None:
    """Both twins, real loopback: the emulator refuses the request's sign (SIGN_ERROR) and
    signs its answer with the real key; the shim refuses the answer with a message that names
    the merchant, merchants."<id>".v2_key, the sign type and the likely causes."""
    twin = make_shim(
        "legacy",
        env={"WRONG_KEY": WRONG_KEY},
        merchants={mch: {"v2_key": "env:WRONG_KEY"}},
    )
    with pytest.raises(SignatureError) as caught:
        await twin.query("1757" if mch == MD5_MCH else "9856099", mch_id=mch)
    text = str(caught.value)
    sign_type = sandbox_state.merchants[mch].v2_sign_type
    assert f"merchant {mch}" in text
    assert f'merchants."{mch}".v2_key' in text
    assert sign_type in text
    assert "SIGN_ERROR" in text and "almost certainly wrong" in text
    assert "not the API key set in the WeChat Pay merchant platform" in text
    assert f'merchants."{mch}".v2_sign_type' in text
    assert WRONG_KEY not in text and sandbox_state.merchants[mch].v2_key not in text
    assert WRONG_KEY not in repr(caught.value)
    assert emulator.requests[-1].side == "v2"


def test_sign_of_the_other_type_names_v2_sign_type() -> None:
    """A 64-character sign where MD5 is configured: the message points at v2_sign_type."""
    fields = {"return_code": "SUCCESS", "result_code": "SUCCESS", "nonce_str": "n"}
    answer = dict(fields, sign=v2.sign(fields, WRONG_KEY, "HMAC-SHA256"))
    with pytest.raises(SignatureError) as caught:
        v2.verify_answer(answer, key=WRONG_KEY, sign_type="MD5", mch_id=MD5_MCH)
    text = str(caught.value)
    assert "looks HMAC-SHA256 (length 64)" in text
    assert f'merchants."{MD5_MCH}".v2_sign_type is MD5' in text
    assert WRONG_KEY not in text


def test_tampered_answer_without_sign_error_does_not_claim_a_wrong_key() -> None:
    """When the answer does not say SIGN_ERROR, the message lists the causes without the
    'almost certainly wrong' hint (the answer may have been altered)."""
    fields = {"return_code": "SUCCESS", "result_code": "SUCCESS", "nonce_str": "n"}
    answer = dict(fields, sign=v2.sign(fields, "K" * 32, "MD5"))
    with pytest.raises(SignatureError) as caught:
        v2.verify_answer(answer, key=WRONG_KEY, sign_type="MD5", mch_id=MD5_MCH)
    text = str(caught.value)
    assert "almost certainly" not in text and "altered on the way" in text


def _config_file(sandbox_state: SandboxState, tmp_path: Path, base_url: str) -> Path:
    return sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=base_url, v3_base_url=base_url
    )


def test_cli_wrong_v2_key_is_one_line_exit_4(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> None:
    path = _config_file(sandbox_state, tmp_path, server.base_url)
    (tmp_path / "wrong_key").write_text(WRONG_KEY + "\n")
    text = path.read_text()
    path.write_text(
        re.sub(r'v2_key = "file:[^"]*v2_key_10000098"', 'v2_key = "file:wrong_key"', text)
    )
    proc = coupon_shim("--quiet", "query", "--config", str(path), "--mch-id", MD5_MCH, "1757")
    line = assert_one_line_error(
        proc, ExitCode.UNAVAILABLE, "SignatureError", f'merchants."{MD5_MCH}".v2_key'
    )
    assert WRONG_KEY not in line


# ------------------------------------------------------------------ keys of implausible length


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("abcde", "this one has 5"),
        ("k" * 31, "this one has 31"),
        ("k" * 33, "this one has 33"),
        ("-----BEGIN PRIVATE KEY-----" + "A" * 40, "this one has 67"),
        ("k" * 16 + " " + "k" * 15, "holds spaces"),
        ("k" * 31 + "é", "holds spaces or other characters"),
    ],
)
def test_v2_key_of_implausible_length_is_refused_at_load(
    make_config: Callable[..., ShimConfig], value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(env={"K": value}, merchants={MD5_MCH: {"v2_key": "env:K"}})
    text = str(caught.value)
    assert caught.value.key == f'merchants."{MD5_MCH}".v2_key'
    assert text.startswith(f'test-shim.toml: merchants."{MD5_MCH}".v2_key: a v2 API key is 32')
    assert says in text and value not in text and "\n" not in text


def test_v2_key_file_with_a_trailing_newline_is_fine(
    make_config: Callable[..., ShimConfig],
) -> None:
    config = make_config(env={"K": "k" * 32 + "\n"}, merchants={MD5_MCH: {"v2_key": "env:K"}})
    assert len(config.merchant(MD5_MCH).v2_key.reveal()) == 32


def test_short_wechatpay_public_key_is_refused(sandbox_state: SandboxState, tmp_path: Path) -> None:
    path = _config_file(sandbox_state, tmp_path, "http://127.0.0.1:1")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    (tmp_path / "small.pem").write_bytes(
        small.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    text = re.sub(
        r'wechatpay_public_key = "file:[^"]*"', 'wechatpay_public_key = "file:small.pem"',
        path.read_text(),
    )  # fmt: skip
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == f'merchants."{MD5_MCH}".wechatpay_public_key'
    assert "2048" in str(caught.value)


def test_cli_short_v2_key_is_one_line_exit_3(sandbox_state: SandboxState, tmp_path: Path) -> None:
    path = _config_file(sandbox_state, tmp_path, "http://127.0.0.1:1")
    (tmp_path / "short").write_text("abcde")
    path.write_text(
        re.sub(r'v2_key = "file:[^"]*v2_key_10000099"', 'v2_key = "file:short"', path.read_text())
    )
    proc = coupon_shim("query", "--config", str(path), "--mch-id", MD5_MCH, "1757")
    line = assert_one_line_error(
        proc, ExitCode.CONFIG, str(path), f'merchants."{HMAC_MCH}".v2_key', "32 characters"
    )
    assert "abcde" not in line


# ------------------------------------------------------------------ kill switch values


@pytest.mark.parametrize("value", ["enabled", "Y", "2"])
async def test_unknown_kill_switch_value_is_on_with_a_warning(
    make_shim: Callable[..., Twin], emulator: Emulator, value: str
) -> None:
    """Both twins in v3 mode: an unknown value sends the call to legacy (reason kill_switch)
    and logs one WARNING naming the variable and the value."""
    environ._WARNED_KILL_VALUES.clear()
    twin = make_shim("v3", env={"COUPON_SHIM_KILL_SWITCH": value})
    with capture_logs() as logs:
        answer = await twin.query("1757", mch_id=MD5_MCH)
        await twin.query("1757", mch_id=MD5_MCH)
    assert answer["result_code"] == "SUCCESS"
    assert emulator.request_counts == {"v2": 2}
    (warning,) = [e for e in logs if e["event"] == "coupon_shim.kill_switch_unrecognised"]
    assert warning["log_level"] == "warning"
    assert (warning["variable"], warning["value"], warning["treated_as"]) == (
        "COUPON_SHIM_KILL_SWITCH", value, "on"
    )  # fmt: skip
    calls = [e for e in logs if e["event"] == "coupon_stock.query"]
    assert [(c["route"], c["reason"]) for c in calls] == [("legacy", "kill_switch")] * 2


async def test_known_off_values_leave_v3_serving(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    environ._WARNED_KILL_VALUES.clear()
    for value in ("0", "off", "No", ""):
        twin = make_shim("v3", env={"COUPON_SHIM_KILL_SWITCH": value})
        with capture_logs() as logs:
            await twin.query("1757", mch_id=MD5_MCH)
        assert not [e for e in logs if e["log_level"] == "warning"]
    assert emulator.request_counts == {"v3": 4}


def test_readme_documents_kill_switch_values() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (row,) = [
        line for line in readme.splitlines() if line.startswith("| `[routing] kill_switch_env`")
    ]
    for text in (
        "`1`/`true`/`yes`/`on`",
        "`0`/`false`/`no`/`off`",
        "coupon_shim.kill_switch_unrecognised",
    ):
        assert text in row
