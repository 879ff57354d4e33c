"""The config loader: a file (or a decoded document) to a :class:`ShimConfig`, I/O explicit.

Loading is three steps, each in its own module, and this one only runs them in order:

1. decode and validate the TOML document (``_toml``: pure, no I/O);
2. apply the environment overrides (``_environ``), look at the folders the file names and
   resolve every merchant's secrets and keys (``_secrets``: environment, key files, PEM);
3. for :func:`load_config`, read and validate the mapping the snapshot will use
   (``_mapping.load_mapping``), so that a config whose mapping does not validate is refused
   as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shim._environ import apply_env_overrides
from shim._errors import ConfigError
from shim._mapping.load import load_mapping
from shim._redaction import scrubs_locals
from shim._secrets import resolve_merchant, resolve_path
from shim._toml import ConfigDocument, TomlPieces, decode_toml, parse_document
from shim._values import MerchantConfig, ShimConfig

__all__ = [
    "build_config",
    "load_config",
    "load_file",
    "parse_config",
    "read_config_file",
    "with_mapping",
]


@scrubs_locals
def build_config(
    doc: ConfigDocument,
    *,
    base_dir: Path,
    env: Mapping[str, str],
    previous: Mapping[str, MerchantConfig] | None = None,
    pause: Callable[[], None] | None = None,
) -> ShimConfig:
    """Resolve a validated document into a snapshot (env overrides, folders, secrets, keys).

    The mapping is not loaded here (see :func:`with_mapping`). A reload passes the merchants
    in force as ``previous``: a merchant that resolves equal to its previous self keeps that
    object (a reload of a big file then leaves few new long-lived objects behind, so it
    rarely sets off a full garbage collection, which would stall every thread). ``pause``
    is called after each merchant (a background reload lets other threads run).

    Raises:
        ConfigError: an override, a folder, a reference or a key is wrong (naming file and key).
    """
    source = doc.source
    routing = apply_env_overrides(doc.routing, env)
    mapping_dir: Path | None = None
    if doc.mapping_dir:
        mapping_dir = resolve_path(doc.mapping_dir, base_dir)
        if not mapping_dir.is_dir():
            raise ConfigError(
                f"folder {doc.mapping_dir!r} does not exist", source=source, key="mapping.dir"
            )
    merchants: dict[str, MerchantConfig] = {}
    reads: dict[str, str] = {}  # file: references, read once per load
    for mch_id, draft in doc.merchants.items():
        merchant = resolve_merchant(draft, base_dir=base_dir, env=env, source=source, reads=reads)
        if previous is not None:
            before = previous.get(mch_id)
            if before is not None and before == merchant:
                merchant = before
        merchants[mch_id] = merchant
        if pause is not None:
            pause()
    return ShimConfig(
        upstream=doc.upstream,
        retry=doc.retry,
        breaker=doc.breaker,
        routing=routing,
        shadow=doc.shadow,
        mapping_dir=mapping_dir,
        reload_interval_s=doc.reload_interval_s,
        merchants=MappingProxyType(merchants),
        source=doc.path,
        cache=doc.cache,
        single_flight=doc.single_flight,
    )


def with_mapping(config: ShimConfig) -> ShimConfig:
    """``config`` with its mapping loaded (cached by file stamp; reads the mapping file).

    Raises:
        ConfigError: the mapping file is missing or does not validate (naming file and entry).
    """
    if config.mapping is not None:
        return config
    return replace(config, mapping=load_mapping(config.mapping_dir))


@scrubs_locals
def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
    previous: Mapping[str, MerchantConfig] | None = None,
    pause: Callable[[], None] | None = None,
    pieces: TomlPieces | None = None,
) -> ShimConfig:
    """Build a :class:`ShimConfig` from a decoded TOML document, resolving its secrets.

    This validates the document (no I/O), then resolves ``env:``/``file:`` references and
    loads keys and platform certificates (I/O). The mapping is left to the snapshot's user
    (:class:`~shim.LiveConfig` loads it; :func:`load_config` too).

    Args:
        data: the parsed TOML document.
        source: how errors name the file.
        base_dir: folder that relative ``file:`` references resolve against.
        env: environment for ``env:`` references and overrides (default ``os.environ``).
        path: the file the data came from, if any.
        previous: the merchants in force, on a reload (see :func:`build_config`).
        pause: called between merchants (see :func:`build_config`).
        pieces: the decoder of ``data``, whose drafts of unchanged merchants are reused.

    Raises:
        ConfigError: anything is wrong; the message names the file and the key.
    """
    base_dir = base_dir or Path.cwd()
    doc = parse_document(data, source=source, path=path, pause=pause, pieces=pieces)
    return build_config(
        doc,
        base_dir=base_dir,
        env=os.environ if env is None else env,
        previous=previous,
        pause=pause,
    )


def read_config_file(path: Path, *, source: str) -> bytes:
    """The bytes of a config file.

    Raises:
        ConfigError: the file is missing or unreadable.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file does not exist", source=source) from None
    except OSError as exc:
        raise ConfigError(
            f"config file cannot be read ({type(exc).__name__})", source=source
        ) from None


@scrubs_locals
def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ShimConfig:
    """Read and validate a TOML config file, its secrets and its mapping.

    Relative ``file:`` references (and ``[mapping] dir``) resolve against the file's folder.

    Raises:
        ConfigError: the file is missing, not TOML, or any key is wrong (the message names both).
    """
    return load_file(path, env=env)


@scrubs_locals
def load_file(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    pieces: TomlPieces | None = None,
) -> ShimConfig:
    """:func:`load_config`, remembering the file's TOML pieces in ``pieces`` (for reloads)."""
    p = Path(path).expanduser()
    source = str(path)
    data = decode_toml(read_config_file(p, source=source), source=source, pieces=pieces)
    config = parse_config(
        data, source=source, base_dir=p.resolve().parent, env=env, path=p, pieces=pieces
    )
    return with_mapping(config)
