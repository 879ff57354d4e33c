"""The config file's TOML document, validated into values (pure: no file, env or key reads).

:func:`parse_document` checks every table and key of a decoded document and returns a
:class:`ConfigDocument`: the finished values for everything that needs no I/O, and for each
merchant a :class:`MerchantDraft` whose secrets are still references (``env:NAME``,
``file:PATH`` or a literal) and whose folders are still the text the file holds. The loader
(``_loader``) resolves those with ``_secrets`` and reads the mapping; this module never
touches a file, the environment or a key (not even ``~`` in a path is expanded here).
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from shim._errors import ConfigError
from shim._validate import (
    Table,
    boolean,
    choice,
    integer,
    non_empty_text,
    number,
    percent_to_buckets,
    ratio,
    string_set,
    sub_table,
)
from shim._values import (
    BUCKET_BY_VALUES,
    DEFAULT_BASE_URL,
    DEFAULT_BREAKER,
    DEFAULT_CACHE,
    DEFAULT_RELOAD_INTERVAL_S,
    DEFAULT_RETRY,
    DEFAULT_SINGLE_FLIGHT,
    DEFAULT_UPSTREAM,
    FLAG_SOURCES,
    MODES,
    ROUTES,
    SIGN_TYPES,
    BreakerConfig,
    CacheConfig,
    RetryConfig,
    RoutingConfig,
    ShadowConfig,
    SignType,
    SingleFlightConfig,
    UpstreamConfig,
)

if TYPE_CHECKING:
    from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "TOP_LEVEL",
    "ConfigDocument",
    "MerchantDraft",
    "TomlPieces",
    "decode_toml",
    "parse_document",
    "parse_routing",
    "parse_shadow",
]

TOP_LEVEL: Final = frozenset(
    {
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
)


def decode_toml(
    raw: bytes,
    *,
    source: str,
    empty_ok: bool = True,
    pieces: TomlPieces | None = None,
    pause: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Decode a config file's bytes (UTF-8 TOML).

    The document is parsed merchant by merchant when that is exactly equivalent to one
    ``tomllib.loads`` of the whole (see :class:`TomlPieces`), otherwise whole; the result and
    every error are the same either way. ``pieces`` remembers the merchant tables of the
    previous decode (a reload re-parses only the merchants whose text changed); ``pause`` is
    called between the pieces (a reload on a background thread lets other threads run).

    Raises:
        ConfigError: not UTF-8 or not TOML (the message names line and column, never a
            value), or empty when ``empty_ok`` is false.
    """
    if not empty_ok and not raw.strip():
        raise ConfigError("the file is empty (a write in progress?)", source=source)
    try:
        text = raw.decode("utf-8")
        data = pieces.loads(text, pause) if pieces is not None else _loads(text, None, pause)[0]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # TOMLDecodeError names line and column, never the value.
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    return data


#: A line opening a merchant's table at its first column: ``[merchants."ID"]``, ``[merchants.ID]``.
_MERCHANT_AT = re.compile(r'\[merchants\.(?:"([0-9A-Za-z]+)"|([0-9A-Za-z]+))\]')
#: A line whose first non-blank character is ``[`` (every table header is one), from the
#: newline before it (a search for a literal start is many times faster than for ``^``).
_BRACKET_LINE = re.compile(r"\n[ \t]*\[")
#: A header of a table inside one merchant's: ``[merchants."ID".more]``.
_MERCHANT_SUB = re.compile(
    r'[ \t]*\[[ \t]*merchants[ \t]*\.[ \t]*(?:"([0-9A-Za-z]+)"|([0-9A-Za-z]+))[ \t]*\.'
)


def _split(text: str, pause: Callable[[], None] | None) -> tuple[str, list[tuple[str, str]]] | None:
    """``(head, [(mch_id, piece), ...])``, or None where splitting could change the meaning.

    A piece starts at a ``[merchants."ID"]`` line and runs to the next one; every other line
    of it that starts with ``[`` must open a table inside the same merchant. The ids must be
    distinct. Anything else (an array of tables, another table after the merchants, a header
    line inside a multi-line value, unusual spelling) is decoded whole.
    """
    starts: list[tuple[int, str]] = []
    current: str | None = None
    lines = _BRACKET_LINE.finditer(text)
    first = [0] if text.lstrip(" \t").startswith("[") else []
    for pos in itertools.chain(first, (line.start() + 1 for line in lines)):
        opened = _MERCHANT_AT.match(text, pos)
        if opened is not None:
            current = opened.group(1) or opened.group(2)
            starts.append((pos, current))
            if pause is not None:
                pause()
            continue
        if current is None:
            continue  # the head: decoded as it is
        inner = _MERCHANT_SUB.match(text, pos)
        if inner is None or (inner.group(1) or inner.group(2)) != current:
            return None
    if len({mch_id for _, mch_id in starts}) != len(starts):
        return None
    if not starts:
        return text, []
    ends = [pos for pos, _ in starts[1:]] + [len(text)]
    return text[: starts[0][0]], [
        (mch_id, text[pos:end]) for (pos, mch_id), end in zip(starts, ends, strict=True)
    ]


def _copy(value: Any) -> Any:
    """A fresh copy of a decoded TOML value's tables and arrays (the leaves are immutable)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class TomlPieces:
    """A config document decoded merchant by merchant, exactly as one ``tomllib.loads``.

    Why pieces: ``tomllib`` is pure Python, and one parse of a big file holds the GIL for its
    whole length in switch-interval slices, stalling every other thread of the process. Parsed
    in pieces, a background reload can let other threads run in between (``pause``), and a
    piece whose text did not change since the previous decode is not parsed again.

    Why it is exact: the document is split only before lines ``[merchants."ID"]`` (first
    column, distinct ids) when every other header line of a piece opens a table inside that
    merchant. A piece parses to exactly ``{"merchants": {ID: table}}`` or the document is
    decoded whole; the head (everything before the first merchant) must hold no
    ``merchants`` key. If a split line were inside a multi-line string or array, the piece
    before it would end inside that value and fail to parse. So, where every piece parses,
    each piece is a merchant's table whose keys no other piece touches, and the merged
    result is the one of the whole document, key order included. Whenever a piece fails
    to parse, the whole document is parsed instead, so every error (and its line and
    column) is ``tomllib``'s own for the whole file.

    The remembered pieces are those of the last successful decode only (bounded by the
    file); the tables handed out are copies, never shared with the memo. Given to
    :func:`parse_document` with the document it decoded last, it also remembers each piece's
    validated :class:`MerchantDraft` (a function of the piece's text alone), so a merchant
    whose text did not change is not validated again either.
    """

    def __init__(self) -> None:
        self._memo: dict[str, tuple[str, dict[str, Any]]] = {}  # piece text -> (id, table)
        self._drafts: dict[str, MerchantDraft] = {}  # piece text -> its validated draft
        self._decoded: dict[str, Any] | None = None  # the merchants of the last decode...
        self._texts: dict[str, str] = {}  # ...and their pieces' texts by id

    def loads(self, text: str, pause: Callable[[], None] | None = None) -> dict[str, Any]:
        """Decode ``text`` as ``tomllib.loads(text)`` would (raises ``TOMLDecodeError``)."""
        self._decoded, self._texts = None, {}
        data, seen = _loads(text, self._memo, pause)
        if seen is not None:
            self._memo = seen
            self._drafts = {t: d for t, d in self._drafts.items() if t in seen}
            self._decoded = data["merchants"]
            self._texts = {mch_id: t for t, (mch_id, _) in seen.items()}
        return data

    def _draft(self, merchants: Mapping[str, Any], mch_id: str) -> MerchantDraft | None:
        """The draft validated before for ``mch_id``'s unchanged text in ``merchants``."""
        if merchants is not self._decoded:
            return None
        text = self._texts.get(mch_id)
        return self._drafts.get(text) if text is not None else None

    def _validated(self, merchants: Mapping[str, Any], draft: MerchantDraft) -> None:
        if merchants is self._decoded:
            text = self._texts.get(draft.mch_id)
            if text is not None:
                self._drafts[text] = draft


def _loads(
    text: str,
    memo: dict[str, tuple[str, dict[str, Any]]] | None,
    pause: Callable[[], None] | None,
) -> tuple[dict[str, Any], dict[str, tuple[str, dict[str, Any]]] | None]:
    """The document, and the pieces to remember (``None``: keep the old; see TomlPieces)."""
    whole: dict[str, Any]
    split = _split(text, pause)
    if split is None:
        whole = tomllib.loads(text)
        return whole, None
    head, pieces = split
    try:
        data: dict[str, Any] = tomllib.loads(head)
        if pause is not None:
            pause()
        if not pieces:
            return data, None
        if "merchants" in data:
            whole = tomllib.loads(text)
            return whole, None
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        merchants: dict[str, Any] = {}
        for mch_id, piece in pieces:
            known = memo.get(piece) if memo is not None else None
            if known is None:
                parsed = tomllib.loads(piece)
                inner = parsed.get("merchants")
                if len(parsed) != 1 or not isinstance(inner, dict) or list(inner) != [mch_id]:
                    whole = tomllib.loads(text)
                    return whole, None
                table = merchants[mch_id] = inner[mch_id]
                if memo is not None:
                    seen[piece] = (mch_id, _copy(table))
            else:
                merchants[mch_id] = _copy(known[1])
                seen[piece] = known
            if pause is not None:
                pause()
    except tomllib.TOMLDecodeError:
        whole = tomllib.loads(text)
        return whole, None
    data["merchants"] = merchants
    return data, (seen if memo is not None else None)


# --------------------------------------------------------------------------- routing / shadow

_ROUTING_PARSERS: Final[dict[str, Any]] = {
    "mode": lambda v, k: choice(v, MODES, k),
    "canary_percent": lambda v, k: (percent_to_buckets(v, k), float(v))[1],
    "bucket_by": lambda v, k: choice(v, BUCKET_BY_VALUES, k),
    "shadow_serve": lambda v, k: choice(v, ROUTES, k),
    "canary_shadow": boolean,
    "fallback_to_legacy": boolean,
    "fallback_to_v3": boolean,
    "force_v3_mch_ids": string_set,
    "force_legacy_mch_ids": string_set,
    "force_v3_stock_ids": string_set,
    "force_legacy_stock_ids": string_set,
    "kill_switch_env": non_empty_text,
    "flag_source": lambda v, k: choice(v, FLAG_SOURCES, k),
    "openfeature_flag": non_empty_text,
}

_SHADOW_PARSERS: Final[dict[str, Any]] = {
    "timeout_s": lambda v, k: number(v, k, positive=True),
    "max_in_flight": lambda v, k: integer(v, k, minimum=1),
    "workers": lambda v, k: integer(v, k, minimum=1),
    "sample_ratio": ratio,
    "ignore_fields": lambda v, k: string_set(v, k, "field names"),
}


def _parse_table(
    table: Mapping[str, Any], parsers: Mapping[str, Any], prefix: str, source: str
) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{prefix}] must be a table", source=source, key=prefix)
    reader = Table(table, prefix, source)
    values: dict[str, Any] = {}
    for name in table:
        parser = parsers.get(name)
        if parser is None:
            known = ", ".join(sorted(parsers))
            reader.fail(name, f"unknown key (known keys: {known})")
        values[name] = reader.read(name, parser)
    return values


def parse_routing(table: Mapping[str, Any], *, source: str) -> RoutingConfig:
    """Validate a ``[routing]`` table (as read from TOML) into a :class:`RoutingConfig`.

    Missing keys take their defaults.

    Args:
        table: the table's keys and values.
        source: where it came from (a file name), for error messages.

    Returns:
        The immutable routing config.

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, with ``source`` and
            ``key="routing.<key>"``.
    """
    values = _parse_table(table, _ROUTING_PARSERS, "routing", source)
    try:
        return RoutingConfig(**values)
    except ConfigError as exc:  # pragma: no cover - the parsers check everything first
        raise ConfigError(str(exc), source=source, key=exc.key) from None


def parse_shadow(table: Mapping[str, Any], *, source: str) -> ShadowConfig:
    """Validate a ``[shadow]`` table into a :class:`ShadowConfig`.

    Args:
        table: the table's keys and values.
        source: where it came from (a file name), for error messages.

    Returns:
        The immutable shadow config.

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, with ``source`` and
            ``key="shadow.<key>"``.
    """
    values = _parse_table(table, _SHADOW_PARSERS, "shadow", source)
    try:
        return ShadowConfig(**values)
    except ConfigError as exc:  # pragma: no cover - the parsers check everything first
        raise ConfigError(str(exc), source=source, key=exc.key) from None


# --------------------------------------------------------------------------- merchants


@dataclass(frozen=True, kw_only=True, repr=False)
class MerchantDraft:
    """A merchant table checked for shape; its secrets are still references.

    ``*_ref`` fields hold what the file says (``env:NAME``, ``file:PATH`` or, discouraged, the
    secret itself), so the repr shows only which keys are set. ``platform_cert_dir`` is the
    folder as written (``""``: none), resolved against the config file's folder by the loader.
    """

    mch_id: str
    prefix: str
    appid: str
    v2_key_ref: str
    v2_sign_type: SignType
    v3_private_key_ref: str | None
    v3_cert_serial: str
    wechatpay_public_key_ref: str | None
    wechatpay_public_key_id: str
    platform_cert_dir: str
    stock_creator_mchid: str | None
    stock_creator_mchids: Mapping[str, str]
    bucket_by: str | None

    def key(self, name: str) -> str:
        """The full dotted key of one of this merchant's keys."""
        return f"{self.prefix}.{name}"

    def __repr__(self) -> str:
        return f"MerchantDraft(mch_id={self.mch_id!r}, v3={self.v3_private_key_ref is not None})"


def _parse_merchant(mch_id: str, table: Mapping[str, Any], *, source: str) -> MerchantDraft:
    prefix = f'merchants."{mch_id}"'
    if not mch_id or len(mch_id) > 32 or not mch_id.isascii() or not mch_id.isalnum():
        raise ConfigError(
            "a merchant id is 1-32 ASCII letters or digits", source=source, key=prefix
        )
    r = Table(table, prefix, source)
    appid = r.text("appid", required=True)
    v2_ref = r.text("v2_key", "")
    if not v2_ref:
        raise r.error("v2_key", "is required")
    sign_type = r.choice(
        "v2_sign_type", SIGN_TYPES, "MD5", message='must be "MD5" or "HMAC-SHA256"'
    )
    private = r.text("v3_private_key", "") or None
    serial = r.text("v3_cert_serial", "")
    pub = r.text("wechatpay_public_key", "") or None
    pub_id = r.text("wechatpay_public_key_id", "")
    cert_dir = r.text("platform_cert_dir", "")
    if private is not None:
        if not serial:
            raise r.error("v3_cert_serial", "is required when v3_private_key is set")
        if pub is not None and not pub_id.startswith("PUB_KEY_ID_"):
            raise r.error(
                "wechatpay_public_key_id",
                'is required with wechatpay_public_key ("PUB_KEY_ID_…")',
            )
        if pub is None and not cert_dir:
            raise r.error(
                "wechatpay_public_key",
                "v3 needs a WeChat Pay public key (wechatpay_public_key + wechatpay_public_key_id) "
                "or platform_cert_dir to verify answers",
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
    if bucket_by is not None and bucket_by not in BUCKET_BY_VALUES:
        raise r.error("bucket_by", 'must be "mch_id" or "mch_id:coupon_stock_id"')
    r.finish()
    return MerchantDraft(
        mch_id=mch_id,
        prefix=prefix,
        appid=appid,
        v2_key_ref=v2_ref,
        v2_sign_type=sign_type,  # type: ignore[arg-type]
        v3_private_key_ref=private,
        v3_cert_serial=serial.upper(),
        wechatpay_public_key_ref=pub,
        wechatpay_public_key_id=pub_id,
        platform_cert_dir=cert_dir,
        stock_creator_mchid=creator,
        stock_creator_mchids=MappingProxyType(creators),
        bucket_by=bucket_by,
    )


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True, kw_only=True)
class ConfigDocument:
    """A validated config document: finished values, merchants as drafts.

    ``routing`` is the file's table as written (environment overrides are applied by the
    loader); ``mapping_dir`` is the folder as written (``""``: the packaged mapping).
    """

    source: str
    path: Path | None
    upstream: UpstreamConfig
    retry: RetryConfig
    breaker: BreakerConfig
    routing: RoutingConfig
    shadow: ShadowConfig
    mapping_dir: str
    reload_interval_s: float
    cache: CacheConfig
    single_flight: SingleFlightConfig
    merchants: Mapping[str, MerchantDraft] = field(default_factory=lambda: MappingProxyType({}))


def parse_document(
    data: Mapping[str, Any],
    *,
    source: str,
    path: Path | None = None,
    pause: Callable[[], None] | None = None,
    pieces: TomlPieces | None = None,
) -> ConfigDocument:
    """Validate a decoded config document (no I/O).

    Args:
        data: the decoded TOML document.
        source: how errors name the file.
        path: the file the data came from, if any.
        pause: called after each merchant (a background reload lets other threads run).
        pieces: the decoder of ``data``; merchants whose text it found unchanged take the
            draft validated last time (the same value validation would build again).

    Raises:
        ConfigError: anything is wrong; the message names the file and the key.
    """
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ConfigError("unknown table or key (see the README)", source=source, key=unknown[0])

    u = Table(sub_table(data, "upstream", source), "upstream", source)
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

    rt = Table(sub_table(data, "retry", source), "retry", source)
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

    cb = Table(sub_table(data, "circuit_breaker", source), "circuit_breaker", source)
    breaker = BreakerConfig(
        failure_threshold=cb.integer(
            "failure_threshold", DEFAULT_BREAKER.failure_threshold, minimum=1
        ),
        reset_after_s=cb.number("reset_after_s", DEFAULT_BREAKER.reset_after_s, minimum=0),
    )
    cb.finish()

    routing = parse_routing(sub_table(data, "routing", source), source=source)
    shadow = parse_shadow(sub_table(data, "shadow", source), source=source)

    m = Table(sub_table(data, "mapping", source), "mapping", source)
    mapping_dir = m.text("dir", "")
    m.finish()

    rl = Table(sub_table(data, "reload", source), "reload", source)
    reload_interval = rl.number(
        "check_interval_s", DEFAULT_RELOAD_INTERVAL_S, minimum=0, positive=False
    )
    rl.finish()

    ca = Table(sub_table(data, "cache", source), "cache", source)
    cache = CacheConfig(
        ttl_s=ca.number("ttl_s", DEFAULT_CACHE.ttl_s, minimum=0, positive=False),
        max_entries=ca.integer("max_entries", DEFAULT_CACHE.max_entries, minimum=1),
    )
    ca.finish()
    sf = Table(sub_table(data, "single_flight", source), "single_flight", source)
    single_flight = SingleFlightConfig(
        enabled=sf.get("enabled", bool, DEFAULT_SINGLE_FLIGHT.enabled),
    )
    sf.finish()

    merchants: dict[str, MerchantDraft] = {}
    tables = sub_table(data, "merchants", source)
    for mch_id, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table", source=source, key=f'merchants."{mch_id}"')
        draft = pieces._draft(tables, mch_id) if pieces is not None else None
        if draft is None:
            draft = _parse_merchant(mch_id, table, source=source)
            if pieces is not None:
                pieces._validated(tables, draft)
        merchants[mch_id] = draft
        if pause is not None:
            pause()

    return ConfigDocument(
        source=source,
        path=path,
        upstream=upstream,
        retry=retry,
        breaker=breaker,
        routing=routing,
        shadow=shadow,
        mapping_dir=mapping_dir,
        reload_interval_s=reload_interval,
        cache=cache,
        single_flight=single_flight,
        merchants=MappingProxyType(merchants),
    )
