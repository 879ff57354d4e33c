"""Configuration: a TOML file read once into small immutable values, and a live holder.

A config is a :class:`ShimConfig` snapshot (frozen dataclasses all the way down). Keys and
certificates are read and parsed once, when the snapshot is built, never per call. Secrets are
kept in :class:`Secret` wrappers whose ``repr`` and ``str`` never show the value.

:class:`LiveConfig` holds the current snapshot of a file and swaps it atomically when the file
(or an environment override) changes; the check is cheap and runs at most every
``[reload] check_interval_s`` seconds. An invalid new file keeps the last good snapshot and
logs why.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from shim._changes import config_changes
from shim._errors import ConfigError, InputError
from shim._logs import get_logger
from shim._mapping.load import load_mapping
from shim._mapping.model import MappingTable
from shim._redaction import scrubs_locals
from shim._routing import (
    DEFAULT_ROUTING,
    DEFAULT_SHADOW,
    RoutingConfig,
    ShadowConfig,
    apply_env_overrides,
    parse_routing,
    parse_shadow,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_BREAKER",
    "DEFAULT_RETRY",
    "DEFAULT_UPSTREAM",
    "BreakerConfig",
    "CacheConfig",
    "LiveConfig",
    "MerchantConfig",
    "RetryConfig",
    "Secret",
    "ShimConfig",
    "SignType",
    "SingleFlightConfig",
    "UpstreamConfig",
    "V3Credentials",
    "load_config",
    "parse_config",
]

SignType = Literal["MD5", "HMAC-SHA256"]
_log = get_logger("shim.config")

DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com"


class LiteralSecretWarning(UserWarning):
    """A secret was written into the config file itself instead of an env:/file: reference."""


class Secret:
    """A secret string whose ``repr``/``str`` never reveal it. Call :meth:`reveal` to use it."""

    __slots__ = ("_origin", "_value")

    def __init__(self, value: str, origin: str = "literal") -> None:
        self._value = value
        self._origin = origin

    def reveal(self) -> str:
        """Return the secret value (only for signing)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{self._origin}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """Where the two upstreams are and how long a call may take."""

    v2_base_url: str = DEFAULT_BASE_URL
    v3_base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    budget_s: float = 10.0
    max_body_bytes: int = 1_048_576
    #: HTTP exchanges one shim runs at once (both routes, shadow jobs included); beyond it a
    #: call waits within its budget, then fails with OverloadError.
    max_in_flight: int = 32


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    """Bounded retries for transient failures, exponential backoff with full jitter."""

    attempts: int = 3
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """A circuit breaker per (route, merchant)."""

    failure_threshold: int = 5
    reset_after_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """The opt-in answer cache: verified success and not-found answers, per merchant and stock.

    ``ttl_s = 0`` (the default) turns it off. An answer served from the cache may be up to
    ``ttl_s`` old (``is_send_num`` may lag by that much).
    """

    ttl_s: float = 0.0
    max_entries: int = 10_000


@dataclass(frozen=True, kw_only=True)
class SingleFlightConfig:
    """Identical concurrent queries share one upstream exchange (on by default)."""

    enabled: bool = True


DEFAULT_UPSTREAM = UpstreamConfig()
DEFAULT_RETRY = RetryConfig()
DEFAULT_BREAKER = BreakerConfig()
DEFAULT_CACHE = CacheConfig()
DEFAULT_SINGLE_FLIGHT = SingleFlightConfig()


@dataclass(frozen=True, kw_only=True, repr=False)
class V3Credentials:
    """A merchant's v3 signing key and the WeChat Pay keys its answers are verified with.

    ``verifiers`` maps a ``Wechatpay-Serial`` (a ``PUB_KEY_ID_…`` or a platform certificate
    serial, upper-case hex) to the public key that must verify answers carrying it.
    """

    private_key: RSAPrivateKey
    cert_serial: str
    verifiers: Mapping[str, RSAPublicKey]
    public_key_id: str | None

    def __repr__(self) -> str:
        return (
            f"V3Credentials(cert_serial={self.cert_serial!r}, "
            f"verifiers={sorted(self.verifiers)!r}, private_key=<redacted>)"
        )


@dataclass(frozen=True, kw_only=True)
class MerchantConfig:
    """One merchant's credentials and per-merchant options."""

    mch_id: str
    appid: str
    v2_key: Secret
    v2_sign_type: SignType = "MD5"
    v3: V3Credentials | None = None
    stock_creator_mchid: str | None = None
    stock_creator_mchids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bucket_by: str | None = None

    def creator_for(self, coupon_stock_id: str) -> str:
        """The ``stock_creator_mchid`` to send for a stock (per stock, then merchant, then self)."""
        return (
            self.stock_creator_mchids.get(coupon_stock_id)
            or self.stock_creator_mchid
            or self.mch_id
        )


@dataclass(frozen=True, kw_only=True)
class ShimConfig:
    """One immutable snapshot of the whole configuration."""

    upstream: UpstreamConfig = DEFAULT_UPSTREAM
    retry: RetryConfig = DEFAULT_RETRY
    breaker: BreakerConfig = DEFAULT_BREAKER
    routing: RoutingConfig = DEFAULT_ROUTING
    shadow: ShadowConfig = DEFAULT_SHADOW
    mapping_dir: Path | None = None
    reload_interval_s: float = 2.0
    merchants: Mapping[str, MerchantConfig] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None
    cache: CacheConfig = DEFAULT_CACHE
    single_flight: SingleFlightConfig = DEFAULT_SINGLE_FLIGHT
    #: The validated mapping of ``mapping_dir``, loaded with the snapshot (``None``: the
    #: facade loads it on first use).
    mapping: MappingTable | None = field(default=None, compare=False, repr=False)

    def merchant(self, mch_id: str) -> MerchantConfig:
        """Return the merchant entry for ``mch_id``.

        Raises:
            InputError: there is no ``[merchants."<mch_id>"]`` entry.
        """
        try:
            return self.merchants[mch_id]
        except KeyError:
            where = f" in {self.source.name}" if self.source else ""
            raise InputError(
                f'no merchant entry for {mch_id!r}{where}; add a [merchants."{mch_id}"] table '
                "with its appid and keys",
                field="mch_id",
            ) from None


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one TOML table, raising ConfigError that names file and key."""

    def __init__(self, table: Mapping[str, Any], prefix: str, source: str):
        self.table = table
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def _key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=self._key(name))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(name, str, default)
        if required and not value:
            raise self.error(name, "is required and must be a non-empty string")
        return value  # type: ignore[no-any-return]

    def number(self, name: str, default: float, *, minimum: float, positive: bool = True) -> float:
        value = float(self.get(name, (int, float), default))
        if not math.isfinite(value) or value < minimum or (positive and value <= 0):
            bound = "greater than 0" if positive else f"at least {minimum}"
            raise self.error(name, f"must be a number {bound}, got {value!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.get(name, int, default)
        if value < minimum:
            raise self.error(name, f"must be an integer of at least {minimum}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling; see the README)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "a number", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(sorted({names.get(k, k.__name__) for k in kinds}))


def _table(root: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = root.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table", source=source, key=name)
    return value


def _resolve_ref(
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


def _check_private_key(pem: bytes) -> RSAPrivateKey:
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


def _load_private_key(pem: str, *, source: str, key: str) -> RSAPrivateKey:
    try:
        loaded = _PARSED.get("private", pem.strip().encode(), _check_private_key)
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


def _load_public_key(pem: str, *, source: str, key: str) -> RSAPublicKey:
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


#: A v2 API key is 32 characters (set in the WeChat Pay merchant platform).
V2_KEY_LENGTH = 32


def _check_v2_key(value: str, *, source: str, key: str) -> None:
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


def _load_platform_certs(folder: Path, *, source: str, key: str) -> dict[str, RSAPublicKey]:
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


def _parse_merchant(
    mch_id: str,
    table: Mapping[str, Any],
    *,
    base_dir: Path,
    env: Mapping[str, str],
    source: str,
    reads: dict[str, str] | None = None,
) -> MerchantConfig:
    prefix = f'merchants."{mch_id}"'
    if not mch_id or len(mch_id) > 32 or not mch_id.isascii() or not mch_id.isalnum():
        raise ConfigError(
            "a merchant id is 1-32 ASCII letters or digits", source=source, key=prefix
        )
    r = _Reader(table, prefix, source)
    appid = r.text("appid", required=True)

    def secret(name: str, *, required: bool) -> tuple[str, str] | None:
        ref = r.text(name, "")
        if not ref:
            if required:
                raise r.error(name, "is required")
            return None
        value, origin, literal = _resolve_ref(
            ref, base_dir=base_dir, env=env, source=source, key=r._key(name), reads=reads
        )
        if literal:
            warnings.warn(
                f"{source}: {r._key(name)}: a literal secret in the config file; prefer "
                '"env:NAME" or "file:PATH"',
                LiteralSecretWarning,
                stacklevel=2,
            )
        return value, origin

    v2 = secret("v2_key", required=True)
    assert v2 is not None
    v2_value = v2[0].strip()
    _check_v2_key(v2_value, source=source, key=r._key("v2_key"))
    sign_type = r.text("v2_sign_type", "MD5")
    if sign_type not in ("MD5", "HMAC-SHA256"):
        raise r.error("v2_sign_type", f'must be "MD5" or "HMAC-SHA256", got {sign_type!r}')

    v3: V3Credentials | None = None
    private = secret("v3_private_key", required=False)
    serial = r.text("v3_cert_serial", "")
    pub = secret("wechatpay_public_key", required=False)
    pub_id = r.text("wechatpay_public_key_id", "")
    cert_dir = r.text("platform_cert_dir", "")
    if private is not None:
        if not serial:
            raise r.error("v3_cert_serial", "is required when v3_private_key is set")
        verifiers: dict[str, RSAPublicKey] = {}
        if pub is not None:
            if not pub_id.startswith("PUB_KEY_ID_"):
                raise r.error(
                    "wechatpay_public_key_id",
                    'is required with wechatpay_public_key ("PUB_KEY_ID_…")',
                )
            verifiers[pub_id] = _load_public_key(
                pub[0], source=source, key=r._key("wechatpay_public_key")
            )
        if cert_dir:
            folder = Path(cert_dir).expanduser()
            if not folder.is_absolute():
                folder = base_dir / folder
            verifiers.update(
                _load_platform_certs(folder, source=source, key=r._key("platform_cert_dir"))
            )
        if not verifiers:
            raise r.error(
                "wechatpay_public_key",
                "v3 needs a WeChat Pay public key (wechatpay_public_key + wechatpay_public_key_id) "
                "or platform_cert_dir to verify answers",
            )
        v3 = V3Credentials(
            private_key=_load_private_key(private[0], source=source, key=r._key("v3_private_key")),
            cert_serial=serial.upper(),
            verifiers=MappingProxyType(verifiers),
            public_key_id=pub_id if pub is not None else None,
        )
    elif pub is not None or cert_dir:
        raise r.error("v3_private_key", "is required when WeChat Pay keys are configured")

    creator = r.text("stock_creator_mchid", "") or None
    creators_raw = r.get("stock_creator_mchids", Mapping, {})
    creators: dict[str, str] = {}
    for stock, value in creators_raw.items():
        if not isinstance(value, str) or not value:
            raise r.error(f"stock_creator_mchids.{stock}", "must be a non-empty string")
        creators[str(stock)] = value
    bucket_by = r.text("bucket_by", "") or None
    if bucket_by is not None and bucket_by not in ("mch_id", "mch_id:coupon_stock_id"):
        raise r.error("bucket_by", 'must be "mch_id" or "mch_id:coupon_stock_id"')
    r.finish()
    return MerchantConfig(
        mch_id=mch_id,
        appid=appid,
        v2_key=Secret(v2_value, v2[1]),
        v2_sign_type=sign_type,  # type: ignore[arg-type]
        v3=v3,
        stock_creator_mchid=creator,
        stock_creator_mchids=MappingProxyType(creators),
        bucket_by=bucket_by,
    )


_TOP_LEVEL = {
    "upstream",
    "retry",
    "circuit_breaker",
    "routing",
    "shadow",
    "mapping",
    "reload",
    "merchants",
    "cache",
    "single_flight",
    "gateway",  # read by shim.gateway (coupon-shim serve); the library ignores it
}


@scrubs_locals
def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> ShimConfig:
    """Build a :class:`ShimConfig` from parsed TOML data.

    Args:
        data: the parsed TOML document.
        source: how errors name the file.
        base_dir: folder that relative ``file:`` references resolve against.
        env: environment for ``env:`` references and overrides (default ``os.environ``).
        path: the file the data came from, if any.

    Raises:
        ConfigError: anything is wrong; the message names the file and the key.
    """
    env = os.environ if env is None else env
    base_dir = base_dir or Path.cwd()
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ConfigError("unknown table or key (see the README)", source=source, key=unknown[0])

    u = _Reader(_table(data, "upstream", source), "upstream", source)
    upstream = UpstreamConfig(
        v2_base_url=u.text("v2_base_url", DEFAULT_BASE_URL).rstrip("/"),
        v3_base_url=u.text("v3_base_url", DEFAULT_BASE_URL).rstrip("/"),
        timeout_s=u.number("timeout_s", DEFAULT_UPSTREAM.timeout_s, minimum=0),
        connect_timeout_s=u.number(
            "connect_timeout_s", DEFAULT_UPSTREAM.connect_timeout_s, minimum=0
        ),
        budget_s=u.number("budget_s", DEFAULT_UPSTREAM.budget_s, minimum=0),
        max_body_bytes=u.integer("max_body_bytes", DEFAULT_UPSTREAM.max_body_bytes, minimum=1024),
        max_in_flight=u.integer("max_in_flight", DEFAULT_UPSTREAM.max_in_flight, minimum=1),
    )
    for name in ("v2_base_url", "v3_base_url"):
        url = getattr(upstream, name)
        if not url.startswith(("http://", "https://")):
            raise u.error(name, f"must start with http:// or https://, got {url!r}")
    u.finish()

    rt = _Reader(_table(data, "retry", source), "retry", source)
    retry = RetryConfig(
        attempts=rt.integer("attempts", DEFAULT_RETRY.attempts, minimum=1),
        backoff_initial_s=rt.number(
            "backoff_initial_s", DEFAULT_RETRY.backoff_initial_s, minimum=0, positive=False
        ),
        backoff_max_s=rt.number(
            "backoff_max_s", DEFAULT_RETRY.backoff_max_s, minimum=0, positive=False
        ),
    )
    rt.finish()

    cb = _Reader(_table(data, "circuit_breaker", source), "circuit_breaker", source)
    breaker = BreakerConfig(
        failure_threshold=cb.integer(
            "failure_threshold", DEFAULT_BREAKER.failure_threshold, minimum=1
        ),
        reset_after_s=cb.number("reset_after_s", DEFAULT_BREAKER.reset_after_s, minimum=0),
    )
    cb.finish()

    routing = apply_env_overrides(
        parse_routing(_table(data, "routing", source), source=source), env
    )
    shadow = parse_shadow(_table(data, "shadow", source), source=source)

    m = _Reader(_table(data, "mapping", source), "mapping", source)
    mapping_dir_raw = m.text("dir", "")
    m.finish()
    mapping_dir: Path | None = None
    if mapping_dir_raw:
        mapping_dir = Path(mapping_dir_raw).expanduser()
        if not mapping_dir.is_absolute():
            mapping_dir = base_dir / mapping_dir
        if not mapping_dir.is_dir():
            raise ConfigError(
                f"folder {mapping_dir_raw!r} does not exist", source=source, key="mapping.dir"
            )
    # A config whose mapping does not validate is refused as a whole (so a reload keeps the
    # last good one); the error names the mapping file and entry. Loads are cached.
    mapping = load_mapping(mapping_dir)

    rl = _Reader(_table(data, "reload", source), "reload", source)
    reload_interval = rl.number("check_interval_s", 2.0, minimum=0, positive=False)
    rl.finish()

    ca = _Reader(_table(data, "cache", source), "cache", source)
    cache = CacheConfig(
        ttl_s=ca.number("ttl_s", DEFAULT_CACHE.ttl_s, minimum=0, positive=False),
        max_entries=ca.integer("max_entries", DEFAULT_CACHE.max_entries, minimum=1),
    )
    ca.finish()
    sf = _Reader(_table(data, "single_flight", source), "single_flight", source)
    single_flight = SingleFlightConfig(
        enabled=sf.get("enabled", bool, DEFAULT_SINGLE_FLIGHT.enabled),
    )
    sf.finish()

    merchants_raw = _table(data, "merchants", source)
    merchants: dict[str, MerchantConfig] = {}
    reads: dict[str, str] = {}  # file: references, read once per load
    for mch_id, table in merchants_raw.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", source=source, key=f'merchants."{mch_id}"')
        merchants[mch_id] = _parse_merchant(
            mch_id, table, base_dir=base_dir, env=env, source=source, reads=reads
        )

    return ShimConfig(
        upstream=upstream,
        retry=retry,
        breaker=breaker,
        routing=routing,
        shadow=shadow,
        mapping_dir=mapping_dir,
        reload_interval_s=reload_interval,
        merchants=MappingProxyType(merchants),
        source=path,
        cache=cache,
        single_flight=single_flight,
        mapping=mapping,
    )


@scrubs_locals
def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ShimConfig:
    """Read and validate a TOML config file.

    Relative ``file:`` references (and ``[mapping] dir``) resolve against the file's folder.

    Raises:
        ConfigError: the file is missing, not TOML, or any key is wrong (the message names both).
    """
    p = Path(path).expanduser()
    source = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file does not exist", source=source) from None
    except OSError as exc:
        raise ConfigError(
            f"config file cannot be read ({type(exc).__name__})", source=source
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # TOMLDecodeError names line and column, never the value.
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    return parse_config(data, source=source, base_dir=p.resolve().parent, env=env, path=p)


def _env_fingerprint(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    return env.get("COUPON_SHIM_MODE"), env.get("COUPON_SHIM_CANARY_PERCENT")


#: A changed file is read only once its modification time is this old, so that a file being
#: written in place (truncated, then written in pieces) is not read half-way.
SETTLE_S = 0.25
_MIN_SLEEP_S = 0.01


class _NotYet(Exception):
    """The file is still changing; look again shortly (internal)."""


class _Watcher:
    """One daemon thread for the process that checks every :class:`LiveConfig` when due.

    Reloads (stat, read, parse, key checks) happen here, never on a caller's thread or an
    event loop; callers only ever read the snapshot attribute. Live configs are held weakly,
    so a shim that is dropped stops being watched. After ``fork`` the child starts its own
    thread on the next registration or check.
    """

    def __init__(self) -> None:
        self._lives: weakref.WeakSet[LiveConfig] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, live: LiveConfig) -> None:
        with self._lock:
            self._lives.add(live)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="coupon-shim-config-watcher", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def discard(self, live: LiveConfig) -> None:
        with self._lock:
            self._lives.discard(live)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if len(self._lives):
            self.add(next(iter(self._lives)))

    def _run(self) -> None:
        while True:
            with self._lock:
                lives = list(self._lives)
                if not lives:
                    self._thread = None
                    return
            sleep = 1.0
            for live in lives:
                try:
                    sleep = min(sleep, live._due_in())
                    if sleep <= 0:
                        live.check()
                        sleep = min(1.0, live._due_in())
                except Exception:  # never let one config's surprise stop the others' reloads
                    _log.exception("coupon_shim.config_watcher_error")
            del lives
            self._wake.wait(max(_MIN_SLEEP_S, sleep))
            self._wake.clear()


_WATCHER = _Watcher()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_WATCHER._after_fork)


class LiveConfig:
    """The current :class:`ShimConfig` of a file, reloaded in the background when it changes.

    :meth:`current` is on the hot path and only returns the snapshot in force. A background
    thread looks for changes every ``[reload] check_interval_s`` (the file's modification
    time and size, the environment overrides and the mapping file), builds the new snapshot
    off the call path (keys already seen are not parsed again) and swaps it in with one
    assignment, so no call waits on a reload.

    A reload is refused, and the last good snapshot kept with a
    ``coupon_shim.config_reload_failed`` warning that says why, when the new file does not
    validate, is empty, would drop every merchant, or is still being written (it changed
    while it was read). A file is read only once it has not changed for ``SETTLE_S``; write
    it atomically (a temporary file, then ``os.replace``) to have it picked up at once.

    Args:
        path: the TOML file to watch (or ``config`` for a fixed snapshot whose environment
            overrides and mapping file are still watched).
        config: a ready snapshot.
        env: environment for ``env:`` references and the overrides (default ``os.environ``).
        clock: the monotonic clock the check interval is measured on.
        wall: the clock file modification times are compared with.
        watch: check in the background thread (default); with ``False`` nothing reloads
            unless :meth:`check` is called (tests, or an application with its own loop).
    """

    @scrubs_locals
    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        config: ShimConfig | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        watch: bool = True,
    ) -> None:
        if (path is None) == (config is None):
            raise TypeError("give exactly one of path or config")
        self._env = os.environ if env is None else env
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._path = Path(path) if path is not None else None
        self._stamp: tuple[int, int, int] | None = None
        self._envprint = _env_fingerprint(self._env)
        if self._path is not None:
            self._stamp = self._stat()
            self._config = load_config(self._path, env=self._env)
        else:
            assert config is not None
            if config.mapping is None:
                config = replace(config, mapping=load_mapping(config.mapping_dir))
            self._config = config
        self._base_routing = self._config.routing
        self._next_check = clock() + self._config.reload_interval_s
        self._listeners: list[Callable[[], Callable[[ShimConfig, ShimConfig], None] | None]] = []
        self._refusal_listeners: list[Callable[[], Callable[[str], None] | None]] = []
        self.reloads = 0
        self.reload_failures = 0
        self._watched = watch
        if watch:
            _WATCHER.add(self)

    @property
    def path(self) -> Path | None:
        """The watched file, if any."""
        return self._path

    def current(self) -> ShimConfig:
        """The snapshot in force (never blocks, never does I/O)."""
        return self._config

    def on_reload(self, listener: Callable[[ShimConfig, ShimConfig], None]) -> None:
        """Call ``listener(old, new)`` after each swap (on the reloading thread; keep it short).

        A bound method is held weakly, so a listening shim can still be garbage collected.
        """
        if inspect.ismethod(listener):
            self._listeners.append(weakref.WeakMethod(listener))
        else:
            self._listeners.append(lambda: listener)

    def on_reload_failed(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(why)`` when a reload is refused (held like :meth:`on_reload`'s)."""
        if inspect.ismethod(listener):
            self._refusal_listeners.append(weakref.WeakMethod(listener))
        else:
            self._refusal_listeners.append(lambda: listener)

    def close(self) -> None:
        """Stop watching (the snapshot in force stays readable)."""
        if self._watched:
            self._watched = False
            _WATCHER.discard(self)

    def _due_in(self) -> float:
        return self._next_check - self._clock()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refuse(self, why: str, **fields: Any) -> bool:
        self.reload_failures += 1
        _log.warning(
            "coupon_shim.config_reload_failed",
            error=why,
            action="kept the last good configuration",
            **fields,
        )
        for ref in list(self._refusal_listeners):
            listener = ref()
            if listener is not None:
                with contextlib.suppress(Exception):  # an observer never breaks a reload
                    listener(why)
        return False

    def _read_settled(self, stamp: tuple[int, int, int]) -> bytes:
        """The file's bytes, once it has stopped changing; raises :class:`_NotYet` if not.

        A file replaced by another (a new inode: ``os.replace``) is whole and read at once;
        one edited in place is read once it is ``SETTLE_S`` old, and must not change while
        it is read.
        """
        assert self._path is not None
        age = self._wall() - stamp[0] / 1e9
        replaced = self._stamp is None or stamp[2] != self._stamp[2]
        if not replaced and 0 <= age < SETTLE_S:
            raise _NotYet(SETTLE_S - age)
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"config file cannot be read ({type(exc).__name__})", source=str(self._path)
            ) from None
        if self._stat() != stamp or len(raw) != stamp[1]:
            raise _NotYet(SETTLE_S)
        return raw

    def _load(self, stamp: tuple[int, int, int]) -> ShimConfig:
        assert self._path is not None
        raw = self._read_settled(stamp)
        source = str(self._path)
        if not raw.strip():
            raise ConfigError("the file is empty (a write in progress?)", source=source)
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from None
        return parse_config(
            data,
            source=source,
            base_dir=self._path.resolve().parent,
            env=self._env,
            path=self._path,
        )

    def _fresh_mapping(self, config: ShimConfig) -> ShimConfig:
        """``config`` with its mapping file re-read if that file changed (cached otherwise)."""
        if config.mapping is None:
            return config
        try:
            table = load_mapping(config.mapping_dir)
        except ConfigError as exc:
            _log.warning(
                "coupon_shim.mapping_reload_failed",
                error=str(exc),
                action="kept the last good mapping",
            )
            return config
        if table is config.mapping or table == config.mapping:
            return config
        return replace(config, mapping=table)

    def check(self) -> bool:
        """Look for a changed file, environment or mapping now; reload if so.

        Runs on the watcher thread (or the caller's, when called directly). Returns True when
        a new snapshot was swapped in.
        """
        if not self._lock.acquire(blocking=False):
            return False  # another thread is checking; keep serving the current snapshot
        try:
            self._next_check = self._clock() + self._config.reload_interval_s
            old = self._config
            envprint = _env_fingerprint(self._env)
            stamp = self._stat() if self._path is not None else None
            try:
                if self._path is not None and stamp != self._stamp:
                    if stamp is None:
                        self._stamp = stamp
                        return self._refuse("the config file is missing or unreadable")
                    new = self._load(stamp)
                    if old.merchants and not new.merchants:
                        self._stamp, self._envprint = stamp, envprint
                        return self._refuse(
                            "the new file has no merchants (a partial write?); every call "
                            "would fail"
                        )
                elif envprint != self._envprint:
                    if self._path is not None:
                        assert stamp is not None
                        new = self._load(stamp)
                    else:
                        new = replace(
                            old, routing=apply_env_overrides(self._base_routing, self._env)
                        )
                else:
                    new = old
            except _NotYet as wait:
                # still being written: look again once it has settled; nothing is swapped
                self._next_check = self._clock() + max(_MIN_SLEEP_S, float(wait.args[0]))
                return False
            except ConfigError as exc:
                self._stamp, self._envprint = stamp, envprint  # not retried until it changes
                return self._refuse(str(exc))
            self._stamp, self._envprint = stamp, envprint
            new = self._fresh_mapping(new)
            if new is old:
                return False
            self._config = new
            self._next_check = self._clock() + new.reload_interval_s
            self.reloads += 1
            for ref in list(self._listeners):
                listener = ref()
                if listener is None:
                    self._listeners.remove(ref)
                    continue
                try:
                    listener(old, new)
                except Exception:
                    _log.exception("coupon_shim.config_reload_listener_failed")
            _log.info(
                "coupon_shim.config_reloaded",
                mode=new.routing.mode,
                changed=list(config_changes(old, new)),  # dotted keys, never values
            )
            return True
        finally:
            self._lock.release()
