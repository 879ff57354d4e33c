"""The emulator's on-disk state: keys, certificates and a ready ``shim.toml``.

Layout of a state folder (created once, reused afterwards)::

    state.json                         ids and serials (no secret)
    keys/v2_key_<mchid>                merchant v2 keys (32 chars)            0600
    keys/apiv3_key_<mchid>             merchant APIv3 keys (32 chars)         0600
    keys/apiclient_key_<mchid>.pem     merchant API private keys (PKCS#8)     0600
    keys/pub_key.pem                   the WeChat Pay public key (public)
    certs/<SERIAL_HEX_UPPER>.pem       the platform certificate (public)
    emulator/pub_key_private.pem       WeChat Pay public-key pair, private half  0600
    emulator/platform_key.pem          the platform certificate's private key    0600

The ``emulator/`` folder is only for the emulator: a shim never needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_STATE_VERSION = 1
_ALNUM = string.ascii_letters + string.digits
#: The ``shim.toml`` name inside a state folder.
CONFIG_NAME = "shim.toml"


class SandboxStateError(ValueError):
    """A state folder exists but cannot be used (damaged, from another version, unreadable).

    The message names the folder and the file, and says what to do; it never shows a key.
    """


@dataclass(frozen=True)
class ConfigWrite:
    """What :meth:`SandboxState.ensure_config` did with a state folder's ``shim.toml``.

    Attributes:
        path: the config file.
        action: ``"written"`` (it was absent), ``"kept"`` (it existed: never overwritten)
            or ``"reset"`` (rewritten on request; the old one is in ``backup``).
        backup: where the previous file was saved (``reset`` only).
    """

    path: Path
    action: str
    backup: Path | None = None


@dataclass(frozen=True)
class MerchantSpec:
    """A seeded merchant: id, appid and the v2 sign type its config asks for."""

    mchid: str
    appid: str
    v2_sign_type: str
    #: "public_key" or "platform_cert": how its shim.toml entry verifies v3 answers.
    v3_verify_mode: str


#: The two seeded merchants.
MERCHANT_SPECS: tuple[MerchantSpec, ...] = (
    MerchantSpec("10000098", "wx5edab3bdfba3dc1c", "MD5", "public_key"),
    MerchantSpec("10000099", "wx2421b1c4370ec43b", "HMAC-SHA256", "platform_cert"),
)


@dataclass(frozen=True)
class Merchant:
    """One merchant's credentials as the emulator knows them.

    Attributes:
        v2_key: the v2 signing key.
        apiv3_key: the APIv3 key (encrypts /v3/certificates answers).
        private_key_pem: the merchant API private key (the emulator only uses its public half).
        cert_serial: the merchant certificate serial (40 upper-case hex digits).
    """

    mchid: str
    appid: str
    v2_sign_type: str
    v3_verify_mode: str
    v2_key: str
    apiv3_key: str
    private_key_pem: str
    cert_serial: str
    v2_key_path: Path
    apiv3_key_path: Path
    private_key_path: Path

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        """The public half of the merchant API key (verifies v3 request signatures)."""
        return _load_private(self.private_key_pem).public_key()

    def __repr__(self) -> str:
        return f"Merchant(mchid={self.mchid!r}, appid={self.appid!r}, serial={self.cert_serial!r})"


def _random_text(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs8(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _spki(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _load_private(pem: str) -> rsa.RSAPrivateKey:
    # The emulator generated these keys itself: skipping the slow consistency check is safe.
    key = serialization.load_pem_private_key(
        pem.encode("ascii"), password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("expected an RSA private key")
    return key


def _write(path: Path, text: str, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600 if secret else 0o644)


def _platform_serial() -> int:
    # 40 hex digits exactly, and a positive DER integer of 20 octets (top bit clear).
    return secrets.randbits(156) | (1 << 156)


def _self_signed(key: rsa.RSAPrivateKey, serial: int) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com (sandbox)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (coupon-shim sandbox)"),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=5 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class SandboxState:
    """Everything the emulator signs and verifies with, loaded from a state folder.

    Create or reuse one with :meth:`load_or_create`; write a config that points a shim at an
    emulator with :meth:`write_config`.
    """

    state_dir: Path
    merchants: Mapping[str, Merchant]
    pub_key_id: str
    pub_key_pem: str
    pub_key_path: Path
    pub_private_key_pem: str
    platform_serial: str
    platform_cert_pem: str
    platform_cert_path: Path
    platform_private_key_pem: str

    def __repr__(self) -> str:
        return f"SandboxState(state_dir={str(self.state_dir)!r}, merchants={list(self.merchants)})"

    @property
    def certs_dir(self) -> Path:
        """The folder holding ``<SERIAL>.pem`` platform certificates."""
        return self.platform_cert_path.parent

    @cached_property
    def pub_private_key(self) -> rsa.RSAPrivateKey:
        """The private half of the WeChat Pay public-key pair (emulator only)."""
        return _load_private(self.pub_private_key_pem)

    @cached_property
    def platform_private_key(self) -> rsa.RSAPrivateKey:
        """The platform certificate's private key (emulator only)."""
        return _load_private(self.platform_private_key_pem)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SandboxState:
        """Load the state in ``state_dir``, generating whatever is missing first.

        Keys are generated once per folder; later calls reuse them.

        Args:
            state_dir: the folder (created if needed).

        Returns:
            The loaded state.
        """
        state_dir = Path(state_dir)
        meta_path = state_dir / "state.json"
        if state_dir.exists() and not state_dir.is_dir():
            raise SandboxStateError(f"state folder {state_dir}: exists and is not a folder")
        if not meta_path.exists():
            _create(state_dir)
        try:
            return cls._load(state_dir, meta_path)
        except SandboxStateError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = (
                f"{Path(exc.filename).name} cannot be read ({exc.strerror})"
                if isinstance(exc, OSError) and exc.filename
                else f"state.json is damaged ({type(exc).__name__})"
            )
            raise SandboxStateError(
                f"state folder {state_dir}: {reason}; use another --state-dir, or delete the "
                "folder to start afresh (new keys)"
            ) from None

    @classmethod
    def _load(cls, state_dir: Path, meta_path: Path) -> SandboxState:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("version") != _STATE_VERSION:
            raise SandboxStateError(
                f"state folder {state_dir}: {meta_path.name} is not a version "
                f"{_STATE_VERSION} sandbox state; use another --state-dir"
            )
        merchants: dict[str, Merchant] = {}
        keys = state_dir / "keys"
        for spec in MERCHANT_SPECS:
            v2_path = keys / f"v2_key_{spec.mchid}"
            v3k_path = keys / f"apiv3_key_{spec.mchid}"
            pk_path = keys / f"apiclient_key_{spec.mchid}.pem"
            merchants[spec.mchid] = Merchant(
                mchid=spec.mchid,
                appid=spec.appid,
                v2_sign_type=spec.v2_sign_type,
                v3_verify_mode=spec.v3_verify_mode,
                v2_key=v2_path.read_text(encoding="utf-8").strip(),
                apiv3_key=v3k_path.read_text(encoding="utf-8").strip(),
                private_key_pem=pk_path.read_text(encoding="utf-8"),
                cert_serial=meta["merchants"][spec.mchid]["cert_serial"],
                v2_key_path=v2_path,
                apiv3_key_path=v3k_path,
                private_key_path=pk_path,
            )
        serial = meta["platform_serial"]
        cert_path = state_dir / "certs" / f"{serial}.pem"
        return cls(
            state_dir=state_dir,
            merchants=MappingProxyType(merchants),
            pub_key_id=meta["pub_key_id"],
            pub_key_pem=(keys / "pub_key.pem").read_text(encoding="utf-8"),
            pub_key_path=keys / "pub_key.pem",
            pub_private_key_pem=(state_dir / "emulator" / "pub_key_private.pem").read_text(
                encoding="utf-8"
            ),
            platform_serial=serial,
            platform_cert_pem=cert_path.read_text(encoding="utf-8"),
            platform_cert_path=cert_path,
            platform_private_key_pem=(state_dir / "emulator" / "platform_key.pem").read_text(
                encoding="utf-8"
            ),
        )

    def ensure_config(
        self,
        *,
        v2_base_url: str,
        v3_base_url: str,
        mode: str = "legacy",
        reset: bool = False,
    ) -> ConfigWrite:
        """Give the state folder a ``shim.toml``, never overwriting one that is there.

        A user's edits (another mode, other routing) survive restarts. With ``reset`` the file
        is rewritten and the previous one kept as ``shim.toml.bak``.

        Args:
            v2_base_url: base URL of the v2 endpoint for a new file.
            v3_base_url: base URL of the v3 endpoint for a new file.
            mode: the routing mode for a new file.
            reset: rewrite an existing file.

        Returns:
            What was done (:class:`ConfigWrite`).
        """
        path = self.state_dir / CONFIG_NAME
        if path.exists() and not reset:
            return ConfigWrite(path, "kept")
        backup: Path | None = None
        if path.exists():
            backup = path.with_name(CONFIG_NAME + ".bak")
            os.replace(path, backup)
        self.write_config(path, v2_base_url=v2_base_url, v3_base_url=v3_base_url, mode=mode)
        return ConfigWrite(path, "reset" if backup else "written", backup)

    def write_config(
        self,
        path: Path,
        *,
        v2_base_url: str,
        v3_base_url: str,
        mode: str = "legacy",
    ) -> Path:
        """Write a ready ``shim.toml`` pointing a shim at an emulator.

        ``file:`` references are relative to the config's folder. Merchant 10000098 uses
        public-key mode, 10000099 platform-certificate mode (``platform_cert_dir``).

        Args:
            path: where to write the config.
            v2_base_url: base URL of the v2 endpoint (no trailing slash needed).
            v3_base_url: base URL of the v3 endpoint.
            mode: the routing mode to write.

        Returns:
            ``path``.
        """
        path = Path(path)
        base = path.parent.resolve()

        def rel(target: Path) -> str:
            return Path(os.path.relpath(target.resolve(), base)).as_posix()

        lines = [
            "# Written by the coupon-shim sandbox: points a shim at the WeChat Pay emulator.",
            "[upstream]",
            f"v2_base_url = {_toml_str(v2_base_url.rstrip('/'))}",
            f"v3_base_url = {_toml_str(v3_base_url.rstrip('/'))}",
            "timeout_s = 5.0",
            "connect_timeout_s = 2.0",
            "budget_s = 10.0",
            "max_body_bytes = 1048576",
            "",
            "[retry]",
            "attempts = 3",
            "backoff_initial_s = 0.05",
            "backoff_max_s = 1.0",
            "",
            "[circuit_breaker]",
            "failure_threshold = 5",
            "reset_after_s = 30.0",
            "",
            "[routing]",
            f"mode = {_toml_str(mode)}",
            "canary_percent = 0.0",
            'bucket_by = "mch_id:coupon_stock_id"',
            'shadow_serve = "legacy"',
            "canary_shadow = false",
            "fallback_to_legacy = true",
            "fallback_to_v3 = false",
            "force_v3_mch_ids = []",
            "force_legacy_mch_ids = []",
            "force_v3_stock_ids = []",
            "force_legacy_stock_ids = []",
            'kill_switch_env = "COUPON_SHIM_KILL_SWITCH"',
            'flag_source = "config"',
            'openfeature_flag = "coupon-shim-route"',
            "",
            "[shadow]",
            "timeout_s = 5.0",
            "max_in_flight = 32",
            "workers = 4",
            "sample_ratio = 1.0",
            'ignore_fields = ["nonce_str", "sign"]',
            "",
            "[mapping]",
            'dir = ""',
            "",
            "[reload]",
            "check_interval_s = 2.0",
        ]
        for m in self.merchants.values():
            lines += [
                "",
                f"[merchants.{_toml_str(m.mchid)}]",
                f"appid = {_toml_str(m.appid)}",
                f"v2_key = {_toml_str('file:' + rel(m.v2_key_path))}",
                f"v2_sign_type = {_toml_str(m.v2_sign_type)}",
                f"v3_private_key = {_toml_str('file:' + rel(m.private_key_path))}",
                f"v3_cert_serial = {_toml_str(m.cert_serial)}",
            ]
            if m.v3_verify_mode == "public_key":
                lines += [
                    f"wechatpay_public_key = {_toml_str('file:' + rel(self.pub_key_path))}",
                    f"wechatpay_public_key_id = {_toml_str(self.pub_key_id)}",
                ]
            else:
                lines.append(f"platform_cert_dir = {_toml_str(rel(self.certs_dir))}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def _toml_str(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes for this character set.
    return json.dumps(value, ensure_ascii=False)


def _create(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = state_dir / "keys"
    merchants_meta: dict[str, dict[str, str]] = {}
    for spec in MERCHANT_SPECS:
        _write(keys / f"v2_key_{spec.mchid}", _random_text(32), secret=True)
        _write(keys / f"apiv3_key_{spec.mchid}", _random_text(32), secret=True)
        _write(keys / f"apiclient_key_{spec.mchid}.pem", _pkcs8(_new_rsa()), secret=True)
        merchants_meta[spec.mchid] = {"cert_serial": secrets.token_hex(20).upper()}
    pub_pair = _new_rsa()
    _write(keys / "pub_key.pem", _spki(pub_pair.public_key()), secret=False)
    _write(state_dir / "emulator" / "pub_key_private.pem", _pkcs8(pub_pair), secret=True)
    pub_key_id = "PUB_KEY_ID_" + "".join(secrets.choice(string.digits) for _ in range(34))
    platform_key = _new_rsa()
    serial = _platform_serial()
    cert = _self_signed(platform_key, serial)
    serial_hex = format(serial, "X")
    _write(state_dir / "emulator" / "platform_key.pem", _pkcs8(platform_key), secret=True)
    _write(
        state_dir / "certs" / f"{serial_hex}.pem",
        cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        secret=False,
    )
    meta = {
        "version": _STATE_VERSION,
        "merchants": merchants_meta,
        "pub_key_id": pub_key_id,
        "platform_serial": serial_hex,
    }
    # state.json last: its presence means the folder is complete.
    _write(state_dir / "state.json", json.dumps(meta, indent=2) + "\n", secret=False)
