"""Secrets and keys: ``env:``/``file:``/literal references, PEM parsing and its cache.

The one module that turns what a config file *says* about credentials into usable keys:
it reads the environment and key files, parses PEM private keys, public keys and platform
certificates (each distinct PEM once per process, see :class:`_ParsedCache`), checks their
shape and builds :class:`~shim._values.MerchantConfig` values from the TOML reader's
:class:`~shim._toml.MerchantDraft`. Errors name the file and key, never a secret's value.
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from shim._errors import ConfigError
from shim._toml import MerchantDraft
from shim._values import V2_KEY_LENGTH, MerchantConfig, Secret, V3Credentials

__all__ = ["LiteralSecretWarning", "resolve_merchant", "resolve_path", "resolve_ref"]


class LiteralSecretWarning(UserWarning):
    """A secret was written into the config file itself instead of an env:/file: reference."""


def resolve_ref(
    ref: str,
    *,
    base_dir: Path,
    env: Mapping[str, str],
    source: str,
    key: str,
    reads: dict[str, str] | None = None,
) -> tuple[str, str, bool]:
    """Resolve ``env:NAME``, ``file:PATH`` or a literal. Returns (value, origin, is_literal).

    ``reads`` memoises file contents within one load (many merchants often share a key file).
    """
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise ConfigError("env: reference needs a variable name", source=source, key=key)
        value = env.get(name)
        if not value:
            raise ConfigError(
                f"environment variable {name} is not set or empty", source=source, key=key
            )
        return value, f"env:{name}", False
    if ref.startswith("file:"):
        raw = ref[5:]
        if reads is not None and raw in reads:
            return reads[raw], f"file:{raw}", False
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"file {raw!r} does not exist", source=source, key=key) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"file {raw!r} cannot be read ({type(exc).__name__})", source=source, key=key
            ) from None
        if reads is not None:
            reads[raw] = value
        return value, f"file:{raw}", False
    return ref, "literal", True


class _ParsedCache:
    """Parsed keys and certificates by the SHA-256 of their PEM, shared by every config.

    Parsing and checking a private key is the costly part of loading a config; keyed by the
    PEM's hash, each distinct key is parsed once per process however many merchants use it
    and however often the file is reloaded. Bounded (least recently used dropped) so that a
    long-lived process rotating keys does not grow without limit.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, pem: bytes, parse: Callable[[bytes], Any]) -> Any:
        key = (kind, hashlib.sha256(pem).digest())
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        value = parse(pem)  # outside the lock: parsing one key must not hold up the others
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: Room for far more distinct keys than a config holds; what is bounded is a process that
#: keeps rotating keys.
_PARSED = _ParsedCache(limit=65_536)
_PROBE = b"coupon-shim key check"


def check_private_key(pem: bytes) -> RSAPrivateKey:
    """Load an RSA private key and prove it signs correctly, in about a millisecond.

    OpenSSL's own validation re-proves both primes (50-120 ms per key, holding the GIL, so
    every call in the process would stall behind it). The key file is trusted (see the
    threat model); what must hold is that the key is one consistent RSA key that produces
    signatures its public half verifies. That is checked here: the CRT parameters agree with
    ``n``, ``e`` and ``d``, and a probe signature verifies.
    """
    loaded = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(loaded, RSAPrivateKey):
        return loaded  # type: ignore[return-value]  # refused by the caller
    numbers = loaded.private_numbers()
    pub = numbers.public_numbers
    p, q, d = numbers.p, numbers.q, numbers.d
    if (
        p * q != pub.n
        or p < 3
        or q < 3
        or numbers.dmp1 != d % (p - 1)
        or numbers.dmq1 != d % (q - 1)
        or (numbers.iqmp * q) % p != 1
        or (pub.e * d) % ((p - 1) * (q - 1) // math.gcd(p - 1, q - 1)) != 1
    ):
        raise ValueError("inconsistent RSA key parameters")
    signature = loaded.sign(_PROBE, padding.PKCS1v15(), hashes.SHA256())
    try:
        loaded.public_key().verify(signature, _PROBE, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise ValueError("the key does not produce valid signatures") from None
    return loaded


def load_private_key(pem: str, *, source: str, key: str) -> RSAPrivateKey:
    try:
        loaded = _PARSED.get("private", pem.strip().encode(), check_private_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"is not a PEM private key without password ({type(exc).__name__})",
            source=source,
            key=key,
        ) from None
    if not isinstance(loaded, RSAPrivateKey) or loaded.key_size < 2048:
        raise ConfigError(
            "must be an RSA private key of at least 2048 bits", source=source, key=key
        )
    return loaded


def load_public_key(pem: str, *, source: str, key: str) -> RSAPublicKey:
    try:
        loaded = _PARSED.get("public", pem.strip().encode(), load_pem_public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"is not a PEM public key ({type(exc).__name__})", source=source, key=key
        ) from None
    if not isinstance(loaded, RSAPublicKey) or loaded.key_size < 2048:
        raise ConfigError(
            "must be an RSA public key of at least 2048 bits (WeChat Pay's keys are 2048-bit)",
            source=source,
            key=key,
        )
    return loaded


def check_v2_key(value: str, *, source: str, key: str) -> None:
    """Refuse a v2 key of implausible shape, naming the config key (never the value)."""
    if len(value) != V2_KEY_LENGTH:
        raise ConfigError(
            f"a v2 API key is {V2_KEY_LENGTH} characters (the key set in the WeChat Pay "
            f"merchant platform), this one has {len(value)}; check the value or the file it "
            "names",
            source=source,
            key=key,
        )
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise ConfigError(
            f"a v2 API key is {V2_KEY_LENGTH} ASCII letters and digits; this one holds spaces "
            "or other characters",
            source=source,
            key=key,
        )


def load_platform_certs(folder: Path, *, source: str, key: str) -> dict[str, RSAPublicKey]:
    if not folder.is_dir():
        raise ConfigError(f"folder {folder.name!r} does not exist", source=source, key=key)
    found: dict[str, RSAPublicKey] = {}
    for pem in sorted(folder.glob("*.pem")):
        try:
            cert = _PARSED.get("cert", pem.read_bytes(), x509.load_pem_x509_certificate)
        except (OSError, ValueError):
            raise ConfigError(
                f"{pem.name} is not a PEM certificate", source=source, key=key
            ) from None
        public = cert.public_key()
        if not isinstance(public, RSAPublicKey) or public.key_size < 2048:
            raise ConfigError(
                f"{pem.name} does not hold an RSA key of at least 2048 bits",
                source=source,
                key=key,
            )
        found[f"{cert.serial_number:X}"] = public
    if not found:
        raise ConfigError("holds no *.pem platform certificate", source=source, key=key)
    return found


def resolve_path(raw: str, base_dir: Path) -> Path:
    """A folder or file the config names: ``~`` expanded, relative to ``base_dir``."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path


def resolve_merchant(
    draft: MerchantDraft,
    *,
    base_dir: Path,
    env: Mapping[str, str],
    source: str,
    reads: dict[str, str] | None = None,
) -> MerchantConfig:
    """Resolve a merchant's secret references and load its keys.

    Args:
        draft: the merchant table as the TOML reader checked it.
        base_dir: folder that relative ``file:`` references resolve against.
        env: environment for ``env:`` references.
        source: how errors name the config file.
        reads: ``file:`` contents already read during this load (shared by merchants).

    Raises:
        ConfigError: a reference does not resolve or a key does not load (naming the key).
    """

    def secret(name: str, ref: str) -> tuple[str, str]:
        key = draft.key(name)
        value, origin, literal = resolve_ref(
            ref, base_dir=base_dir, env=env, source=source, key=key, reads=reads
        )
        if literal:
            warnings.warn(
                f"{source}: {key}: a literal secret in the config file; prefer "
                '"env:NAME" or "file:PATH"',
                LiteralSecretWarning,
                stacklevel=3,
            )
        return value, origin

    v2_value, v2_origin = secret("v2_key", draft.v2_key_ref)
    v2_value = v2_value.strip()
    check_v2_key(v2_value, source=source, key=draft.key("v2_key"))

    v3: V3Credentials | None = None
    if draft.v3_private_key_ref is not None:
        private = secret("v3_private_key", draft.v3_private_key_ref)
        verifiers: dict[str, RSAPublicKey] = {}
        if draft.wechatpay_public_key_ref is not None:
            pub = secret("wechatpay_public_key", draft.wechatpay_public_key_ref)
            verifiers[draft.wechatpay_public_key_id] = load_public_key(
                pub[0], source=source, key=draft.key("wechatpay_public_key")
            )
        if draft.platform_cert_dir:
            verifiers.update(
                load_platform_certs(
                    resolve_path(draft.platform_cert_dir, base_dir),
                    source=source,
                    key=draft.key("platform_cert_dir"),
                )
            )
        v3 = V3Credentials(
            private_key=load_private_key(
                private[0], source=source, key=draft.key("v3_private_key")
            ),
            cert_serial=draft.v3_cert_serial,
            verifiers=MappingProxyType(verifiers),
            public_key_id=(
                draft.wechatpay_public_key_id
                if draft.wechatpay_public_key_ref is not None
                else None
            ),
        )
    return MerchantConfig(
        mch_id=draft.mch_id,
        appid=draft.appid,
        v2_key=Secret(v2_value, v2_origin),
        v2_sign_type=draft.v2_sign_type,
        v3=v3,
        stock_creator_mchid=draft.stock_creator_mchid,
        stock_creator_mchids=draft.stock_creator_mchids,
        bucket_by=draft.bucket_by,
    )
