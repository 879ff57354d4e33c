"""Configuration values: small frozen dataclasses, ``DEFAULT_*`` constants, no I/O.

The bottom of the package: everything here is an immutable value or a constant, built and
checked without reading a file, the environment or a clock, and without logging. The TOML
reader (``_toml``), the secret loader (``_secrets``), the file loader (``_loader``) and the
live holder (``_live``) sit above it and build these values; the pure core (protocols,
mapping, routing, policy, flow) only reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, get_args

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from shim._errors import ConfigError, InputError, Route
from shim._validate import (
    Invalid,
    boolean,
    choice,
    integer,
    non_empty_text,
    number,
    percent_to_buckets,
    ratio,
)

if TYPE_CHECKING:
    from pathlib import Path

    from shim._mapping.model import MappingTable

__all__ = [
    "BUCKETS",
    "BUCKET_BY_VALUES",
    "DEFAULT_BASE_URL",
    "DEFAULT_BREAKER",
    "DEFAULT_CACHE",
    "DEFAULT_FLAG_KEY",
    "DEFAULT_KILL_SWITCH_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RELOAD_INTERVAL_S",
    "DEFAULT_RETRY",
    "DEFAULT_ROUTING",
    "DEFAULT_SHADOW",
    "DEFAULT_SINGLE_FLIGHT",
    "DEFAULT_UPSTREAM",
    "ENV_CANARY_PERCENT",
    "ENV_MODE",
    "FLAG_SOURCES",
    "MODES",
    "ROUTES",
    "SIGN_TYPES",
    "V2_KEY_LENGTH",
    "BreakerConfig",
    "BucketBy",
    "CacheConfig",
    "FlagSource",
    "MerchantConfig",
    "Mode",
    "RetryConfig",
    "RoutingConfig",
    "Secret",
    "ShadowConfig",
    "ShimConfig",
    "SignType",
    "SingleFlightConfig",
    "UpstreamConfig",
    "V3Credentials",
]

SignType = Literal["MD5", "HMAC-SHA256"]
SIGN_TYPES: Final[frozenset[str]] = frozenset(get_args(SignType))
Mode = Literal["legacy", "shadow", "canary", "v3"]
BucketBy = Literal["mch_id:coupon_stock_id", "mch_id"]
FlagSource = Literal["config", "openfeature"]

#: Number of canary buckets: one bucket is 0.01 %.
BUCKETS: Final = 10_000
MODES: Final[frozenset[str]] = frozenset(get_args(Mode))
BUCKET_BY_VALUES: Final[frozenset[str]] = frozenset(get_args(BucketBy))
ROUTES: Final[frozenset[str]] = frozenset(get_args(Route))
FLAG_SOURCES: Final[frozenset[str]] = frozenset(get_args(FlagSource))

DEFAULT_BASE_URL: Final = "https://api.mch.weixin.qq.com"
#: The environment variables that override ``[routing] mode`` and ``canary_percent``.
ENV_MODE: Final = "COUPON_SHIM_MODE"
ENV_CANARY_PERCENT: Final = "COUPON_SHIM_CANARY_PERCENT"
#: The kill switch's environment variable unless ``[routing] kill_switch_env`` names another.
DEFAULT_KILL_SWITCH_ENV: Final = "COUPON_SHIM_KILL_SWITCH"
#: The OpenFeature string flag holding the mode unless ``[routing] openfeature_flag`` says.
DEFAULT_FLAG_KEY: Final = "coupon-shim-route"
#: How often a live config looks for a changed file (``[reload] check_interval_s``).
DEFAULT_RELOAD_INTERVAL_S: Final = 2.0
#: The largest answer body read (``[upstream] max_body_bytes``).
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576
#: A v2 API key is 32 characters (set in the WeChat Pay merchant platform).
V2_KEY_LENGTH: Final = 32
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
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


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingConfig:
    """The ``[routing]`` table, validated. Immutable; swap the whole value to reload.

    Attributes:
        mode: ``legacy`` | ``shadow`` | ``canary`` | ``v3``.
        canary_percent: share of routing keys served by v3 in canary mode (0..100, 0.01 steps).
        canary_buckets: ``canary_percent`` as a count of the 10,000 buckets (derived).
        bucket_by: routing key, ``mch_id:coupon_stock_id`` or ``mch_id``.
        shadow_serve: the side that serves in shadow mode; the other side is compared.
        canary_shadow: in canary mode, also run the other side as a shadow.
        fallback_to_legacy: serving v3 failed transiently -> serve legacy.
        fallback_to_v3: serving legacy failed transiently -> serve v3.
        force_v3_mch_ids, force_legacy_mch_ids, force_v3_stock_ids, force_legacy_stock_ids:
            override lists (see the module docstring for precedence).
        kill_switch_env: name of the environment variable that forces legacy when true.
        flag_source: ``config`` or ``openfeature``.
        openfeature_flag: the OpenFeature string flag holding the mode.

    Raises:
        ConfigError: a value is invalid (``key`` names it; ``source`` is None here, see
            the TOML reader).
    """

    mode: Mode = "legacy"
    canary_percent: float = 0.0
    bucket_by: BucketBy = "mch_id:coupon_stock_id"
    shadow_serve: Route = "legacy"
    canary_shadow: bool = False
    fallback_to_legacy: bool = True
    fallback_to_v3: bool = False
    force_v3_mch_ids: frozenset[str] = frozenset()
    force_legacy_mch_ids: frozenset[str] = frozenset()
    force_v3_stock_ids: frozenset[str] = frozenset()
    force_legacy_stock_ids: frozenset[str] = frozenset()
    kill_switch_env: str = DEFAULT_KILL_SWITCH_ENV
    flag_source: FlagSource = "config"
    openfeature_flag: str = DEFAULT_FLAG_KEY
    canary_buckets: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            buckets = self._validate()
        except Invalid as exc:
            raise ConfigError(exc.message, key=exc.key) from None
        object.__setattr__(self, "canary_buckets", buckets)

    def _validate(self) -> int:
        choice(self.mode, MODES, "routing.mode")
        buckets = percent_to_buckets(self.canary_percent, "routing.canary_percent")
        choice(self.bucket_by, BUCKET_BY_VALUES, "routing.bucket_by")
        choice(self.shadow_serve, ROUTES, "routing.shadow_serve")
        for name in ("canary_shadow", "fallback_to_legacy", "fallback_to_v3"):
            boolean(getattr(self, name), f"routing.{name}")
        for name in (
            "force_v3_mch_ids",
            "force_legacy_mch_ids",
            "force_v3_stock_ids",
            "force_legacy_stock_ids",
        ):
            if not isinstance(getattr(self, name), frozenset):
                raise Invalid(f"routing.{name}", "must be a frozenset of strings")
        if not isinstance(self.kill_switch_env, str) or not _ENV_NAME.match(self.kill_switch_env):
            raise Invalid(
                "routing.kill_switch_env",
                f"must be an environment variable name, got {self.kill_switch_env!r}",
            )
        choice(self.flag_source, FLAG_SOURCES, "routing.flag_source")
        non_empty_text(self.openfeature_flag, "routing.openfeature_flag")
        return buckets


@dataclass(frozen=True, kw_only=True, slots=True)
class ShadowConfig:
    """The ``[shadow]`` table, validated.

    Attributes:
        timeout_s: time budget of one shadow call (> 0).
        max_in_flight: cap on shadow comparisons running or queued (>= 1); excess is dropped.
        workers: size of the sync twin's thread pool (>= 1).
        sample_ratio: share of eligible calls that are shadowed (0..1).
        ignore_fields: v2 fields left out of the comparison.

    Raises:
        ConfigError: a value is invalid.
    """

    timeout_s: float = 5.0
    max_in_flight: int = 32
    workers: int = 4
    sample_ratio: float = 1.0
    ignore_fields: frozenset[str] = frozenset({"nonce_str", "sign"})

    def __post_init__(self) -> None:
        try:
            number(self.timeout_s, "shadow.timeout_s", positive=True)
            integer(self.max_in_flight, "shadow.max_in_flight", minimum=1)
            integer(self.workers, "shadow.workers", minimum=1)
            ratio(self.sample_ratio, "shadow.sample_ratio")
            if not isinstance(self.ignore_fields, frozenset):
                raise Invalid("shadow.ignore_fields", "must be a frozenset of strings")
        except Invalid as exc:
            raise ConfigError(exc.message, key=exc.key) from None


DEFAULT_ROUTING: Final = RoutingConfig()
DEFAULT_SHADOW: Final = ShadowConfig()


@dataclass(frozen=True, kw_only=True)
class ShimConfig:
    """One immutable snapshot of the whole configuration."""

    upstream: UpstreamConfig = DEFAULT_UPSTREAM
    retry: RetryConfig = DEFAULT_RETRY
    breaker: BreakerConfig = DEFAULT_BREAKER
    routing: RoutingConfig = DEFAULT_ROUTING
    shadow: ShadowConfig = DEFAULT_SHADOW
    mapping_dir: Path | None = None
    reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S
    merchants: Mapping[str, MerchantConfig] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None
    cache: CacheConfig = DEFAULT_CACHE
    single_flight: SingleFlightConfig = DEFAULT_SINGLE_FLIGHT
    #: The validated mapping of ``mapping_dir``, loaded by the loader (``load_config``) or
    #: the live config, off the call path; ``None`` for a snapshot built by ``parse_config``
    #: alone, until a :class:`~shim.LiveConfig` takes it.
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
