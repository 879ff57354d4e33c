"""Configuration: validation that names file and key, secret handling, live reload."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shim import ConfigError, InputError, LiteralSecretWarning, LiveConfig, Secret, load_config

V2_KEY = "0123456789abcdef0123456789ABCDEF"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "apiclient_key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "pub_key.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (d / "v2_key").write_text(V2_KEY + "\n")
    return d


MERCHANT = """
[merchants."10000098"]
appid = "wx5edab3bdfba3dc1c"
v2_key = "file:v2_key"
v3_private_key = "file:apiclient_key.pem"
v3_cert_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
wechatpay_public_key = "file:pub_key.pem"
wechatpay_public_key_id = "PUB_KEY_ID_0000000000000024101100397200000006"
"""


def write(keydir: Path, text: str, name: str = "shim.toml") -> Path:
    path = keydir / name
    path.write_text(text)
    return path


def test_full_config_loads_with_relative_file_refs(keydir: Path) -> None:
    """A complete file loads; file: paths resolve against the config's folder."""
    cfg = load_config(write(keydir, '[routing]\nmode = "shadow"\n' + MERCHANT), env={})
    m = cfg.merchant("10000098")
    assert m.v2_key.reveal() == V2_KEY
    assert m.v3 is not None and "PUB_KEY_ID_0000000000000024101100397200000006" in m.v3.verifiers
    assert cfg.routing.mode == "shadow"
    assert m.creator_for("1757") == "10000098"


def test_secrets_never_show_in_repr(keydir: Path) -> None:
    """repr() of the config, merchant and secret hides keys; the source is shown instead."""
    cfg = load_config(write(keydir, MERCHANT), env={})
    text = repr(cfg) + str(cfg.merchant("10000098")) + repr(cfg.merchant("10000098").v2_key)
    assert V2_KEY not in text
    assert "PRIVATE KEY" not in text
    assert "Secret(<file:v2_key>)" in text


def test_env_reference(keydir: Path) -> None:
    """v2_key = "env:NAME" reads the variable; an unset one is a ConfigError naming it."""
    text = MERCHANT.replace('"file:v2_key"', '"env:SHIM_TEST_KEY"')
    cfg = load_config(write(keydir, text), env={"SHIM_TEST_KEY": V2_KEY})
    assert cfg.merchant("10000098").v2_key == Secret(V2_KEY)
    with pytest.raises(ConfigError) as info:
        load_config(write(keydir, text), env={})
    assert "SHIM_TEST_KEY" in str(info.value) and 'merchants."10000098".v2_key' in str(info.value)


def test_literal_secret_is_accepted_but_warned(keydir: Path) -> None:
    """A literal key in the file works, with a warning that does not contain the key."""
    text = MERCHANT.replace('"file:v2_key"', f'"{V2_KEY}"')
    with pytest.warns(LiteralSecretWarning) as record:
        cfg = load_config(write(keydir, text), env={})
    assert cfg.merchant("10000098").v2_key.reveal() == V2_KEY
    assert all(V2_KEY not in str(w.message) for w in record)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[upstream]\ntimeout_s = -1\n", "upstream.timeout_s"),
        ('[upstream]\ntimeout_s = "5"\n', "upstream.timeout_s"),
        ('[upstream]\nv2_base_url = "ftp://x"\n', "upstream.v2_base_url"),
        ("[upstream]\ntimout_s = 1\n", "upstream.timout_s"),
        ("[retry]\nattempts = 0\n", "retry.attempts"),
        ("[circuit_breaker]\nfailure_threshold = true\n", "circuit_breaker.failure_threshold"),
        ('[routing]\nmode = "sideways"\n', "routing.mode"),
        ('[mapping]\ndir = "no-such-folder"\n', "mapping.dir"),
        ("[wat]\n", "wat"),
        (
            MERCHANT.replace('v2_key = "file:v2_key"', 'v2_key = "file:missing"'),
            'merchants."10000098".v2_key',
        ),
        (MERCHANT.replace('appid = "wx5edab3bdfba3dc1c"', ""), 'merchants."10000098".appid'),
        (MERCHANT + 'v2_sign_type = "SHA1"\n', 'merchants."10000098".v2_sign_type'),
        (
            MERCHANT.replace('"file:pub_key.pem"', '"file:v2_key"'),
            'merchants."10000098".wechatpay_public_key',
        ),
        (
            MERCHANT.replace('"file:apiclient_key.pem"', '"file:pub_key.pem"'),
            'merchants."10000098".v3_private_key',
        ),
        (
            MERCHANT.replace(
                'wechatpay_public_key_id = "PUB_KEY_ID_0000000000000024101100397200000006"', ""
            ),
            'merchants."10000098".wechatpay_public_key_id',
        ),
        (MERCHANT + 'colour = "red"\n', 'merchants."10000098".colour'),
    ],
)
def test_errors_name_the_file_and_key(keydir: Path, text: str, key: str) -> None:
    """Every config error names the file and the exact key, and never a secret value."""
    path = write(keydir, text, "bad.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == key
    assert str(path) in str(info.value) and key in str(info.value)
    assert V2_KEY not in str(info.value)


def test_not_toml_and_missing_file(keydir: Path) -> None:
    """A missing file or broken TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(keydir / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(keydir, "[upstream\n", "broken.toml"))


def test_unknown_merchant_is_an_input_error(keydir: Path) -> None:
    """Asking for an mch_id with no entry is a clear InputError."""
    cfg = load_config(write(keydir, MERCHANT), env={})
    with pytest.raises(InputError, match="no merchant entry for '10000999'"):
        cfg.merchant("10000999")


def test_env_overrides_mode(keydir: Path) -> None:
    """COUPON_SHIM_MODE overrides the file's routing mode."""
    cfg = load_config(write(keydir, MERCHANT), env={"COUPON_SHIM_MODE": "v3"})
    assert cfg.routing.mode == "v3"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_live_reload_valid_then_invalid(keydir: Path) -> None:
    """A changed valid file applies at the next check; an invalid one keeps the last good."""
    path = write(keydir, "[reload]\ncheck_interval_s = 1\n" + MERCHANT, "live.toml")
    live = LiveConfig(path, env={}, watch=False)
    first = live.current()
    assert first.routing.mode == "legacy"
    path.write_text('[reload]\ncheck_interval_s = 1\n[routing]\nmode = "v3"\n' + MERCHANT)
    os.utime(path, ns=(1, 1))  # make the change visible even within one mtime tick
    assert live.current() is first  # current() never reloads by itself
    assert live.check() is True
    assert live.current().routing.mode == "v3" and live.reloads == 1
    good = live.current()
    path.write_text('[routing]\nmode = "nope"\n' + MERCHANT)
    os.utime(path, ns=(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert live.check() is False
    assert live.current() is good
    assert live.reload_failures == 1


def test_live_config_sees_env_changes() -> None:
    """With an in-memory config, a changed COUPON_SHIM_MODE takes effect at the next check."""
    from shim import ShimConfig

    env: dict[str, str] = {}
    live = LiveConfig(config=ShimConfig(reload_interval_s=1), env=env, watch=False)
    env["COUPON_SHIM_MODE"] = "v3"
    assert live.check() and live.current().routing.mode == "v3"
    del env["COUPON_SHIM_MODE"]
    assert live.check() and live.current().routing.mode == "legacy"


def test_a_mapping_that_does_not_validate_refuses_the_config(keydir: Path) -> None:
    """[mapping] dir pointing at a broken mapping is a ConfigError naming the mapping file."""
    folder = keydir / "broken-mappings"
    folder.mkdir(exist_ok=True)
    (folder / "query_coupon_stock.toml").write_text("format = 1\n[[fields]]\nv2 = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(keydir, '[mapping]\ndir = "broken-mappings"\n' + MERCHANT), env={})
    assert "query_coupon_stock.toml" in str(info.value)
