"""Loading the mapping: read ``mappings/<name>.toml`` and validate it once (the I/O part).

:func:`load_mapping` reads the file (cached by file stamp, so a repeated load costs one
``stat`` and an edited file is picked up by the next load); :func:`parse_mapping` validates its
text into a frozen :class:`~shim._mapping.model.MappingTable` and has the per-call plan
compiled (:func:`shim._mapping.apply.compile_plan`). This is the only module of the mapping
that touches files.

Errors: a broken mapping file raises :class:`~shim._errors.ConfigError` naming the file and the
entry.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, cast

from shim._errors import ConfigError
from shim._mapping.apply import compile_plan
from shim._mapping.converters import CONVERTER_NAMES
from shim._mapping.model import (
    DEFAULT_MAPPING_NAME,
    KNOWN_V3_ENUMS,
    ErrorKind,
    ErrorRule,
    FieldRule,
    MappingTable,
)
from shim._validate import Invalid, matching
from shim._validate import text as checked_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["clear_mapping_cache", "default_mapping_dir", "load_mapping", "parse_mapping"]

_RESERVED_V2_KEYS: Final = frozenset({"nonce_str", "sign"})
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_CODE_RE: Final = re.compile(r"[A-Z0-9_]{1,64}")
_CLASS_RE: Final = re.compile(r"[45](?:[0-9]{2}|xx)")
_TOP_KEYS: Final = frozenset({"format", "fields", "enums", "errors", "unknown_errors"})
_FIELD_KEYS: Final = frozenset(
    {"v2", "v3", "request", "const", "convert", "enum", "required", "note"}
)
_ERROR_KEYS: Final = frozenset(
    {"status", "code", "outcome", "err_code", "err_code_des", "return_msg", "note"}
)
_ERROR_KINDS: Final = frozenset({"business", "return_fail", "transient", "unmapped"})
_MAX_TEXT: Final = 256


@functools.cache
def default_mapping_dir() -> Path:
    """The packaged mappings folder if it exists, else the repository's ``mappings/``.

    Computed once per process (installed files do not move while it runs).
    """
    package = Path(__file__).resolve().parent.parent
    packaged = package / "mappings"
    if packaged.is_dir():
        return packaged
    return package.parent / "mappings"


_Stamp = tuple[int, int, int, int]
# (resolved directory, name) -> (file stamp, table); and the same by absolute file path as
# given, so a repeated load costs one stat() instead of a path resolution.
_CACHE: dict[tuple[str, str], tuple[_Stamp, MappingTable]] = {}
_QUICK: dict[str, tuple[_Stamp, MappingTable]] = {}
_LOCK = threading.Lock()


def clear_mapping_cache() -> None:
    """Forget every loaded mapping (the next :func:`load_mapping` reads the file again)."""
    with _LOCK:
        _CACHE.clear()
        _QUICK.clear()


def _stamp(info: os.stat_result) -> _Stamp:
    return (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)


def load_mapping(
    directory: Path | str | None = None, name: str = DEFAULT_MAPPING_NAME
) -> MappingTable:
    """Load and validate ``<directory>/<name>.toml``, cached.

    Loads are cached by (resolved directory, name). A cached table is reused as long as the
    file's modification time, size and inode are unchanged, so a repeated load costs one
    ``stat`` and an edited file is picked up by the next load.

    Args:
        directory: the folder holding the mapping file; ``None``: :func:`default_mapping_dir`
            (the packaged copy if installed, else the repository's ``mappings/``).
        name: the mapping's name (the file stem).

    Returns:
        The validated, frozen table.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or invalid (the message names
            the file and the entry at fault).
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError("mapping name must be a plain file stem", key="mapping.name")
    base = default_mapping_dir() if directory is None else Path(directory)
    path = base / f"{name}.toml"
    source = str(path)
    try:
        if path.is_absolute():
            quick = _QUICK.get(source)
            if quick is not None and quick[0] == _stamp(os.stat(source)):
                return quick[1]
        resolved = path.resolve()
        stamp = _stamp(resolved.stat())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the mapping file ({exc.strerror or type(exc).__name__})", source=source
        ) from exc
    key = (str(resolved.parent), name)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None or hit[0] != stamp:
            try:
                raw = resolved.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the mapping file ({exc.strerror or type(exc).__name__})",
                    source=source,
                ) from exc
            hit = (stamp, parse_mapping(raw, source=source, name=name))
            _CACHE[key] = hit
        if path.is_absolute():
            _QUICK[source] = hit
        return hit[1]


def parse_mapping(raw: bytes | str, *, source: str, name: str) -> MappingTable:
    """Validate the text of a mapping file (no caching, no I/O).

    Args:
        raw: the file's bytes (UTF-8) or text.
        source: the file name, for error messages.
        name: the mapping's name.

    Returns:
        The validated table.

    Raises:
        ConfigError: anything wrong, naming ``source`` and the entry.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError("the mapping file is not UTF-8", source=source) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", source=source) from exc
    try:
        return _Validator(source).table(doc, name)
    except Invalid as exc:
        raise exc.as_config_error(source) from None


class _Validator:
    """Turns a decoded TOML document into a :class:`MappingTable`, or raises
    :class:`~shim._validate.Invalid` naming the entry (``parse_mapping`` adds the file)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, message: str, key: str) -> Invalid:
        return Invalid(key, message)

    def table(self, doc: dict[str, Any], name: str) -> MappingTable:
        unknown = sorted(set(doc) - _TOP_KEYS)
        if unknown:
            raise self.fail(
                f"unknown top-level key (allowed: {', '.join(sorted(_TOP_KEYS))})", unknown[0]
            )
        if doc.get("format") != 1 or isinstance(doc.get("format"), bool):
            raise self.fail("must be 1 (the only mapping format so far)", "format")
        enums = self.enums(doc.get("enums", {}))
        fields = self.fields(doc.get("fields"), enums)
        errors = self.errors(doc.get("errors", []))
        unknown_errors = self.unknown_errors(doc.get("unknown_errors", {}))
        template, echo, steps, compiled = compile_plan(fields, enums)
        return MappingTable(
            name=name,
            source=self.source,
            fields=fields,
            enums=MappingProxyType({k: MappingProxyType(v) for k, v in enums.items()}),
            errors=MappingProxyType(errors),
            unknown_errors=MappingProxyType(unknown_errors),
            template=template,
            echo=echo,
            v3_steps=steps,
            compiled=compiled,
        )

    def text(self, value: object, key: str, what: str, *, empty_ok: bool = False) -> str:
        return checked_text(value, key, what, empty_ok=empty_ok, max_length=_MAX_TEXT)

    def enums(self, raw: object) -> dict[str, dict[str, str]]:
        if not isinstance(raw, dict):
            raise self.fail("must be a table of tables", "enums")
        out: dict[str, dict[str, str]] = {}
        for table_name, entries in raw.items():
            key = f"enums.{table_name}"
            matching(table_name, _KEY_RE, key, "enum table names are letters, digits and _")
            if not isinstance(entries, dict) or not entries:
                raise self.fail('must be a non-empty table of v3 value = "v2 value"', key)
            table: dict[str, str] = {}
            for v3_value, v2_value in entries.items():
                table[v3_value] = self.text(v2_value, f"{key}.{v3_value}", "an enum's v2 value")
            out[table_name] = table
        return out

    def fields(self, raw: object, enums: dict[str, dict[str, str]]) -> tuple[FieldRule, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("must be a non-empty array of tables ([[fields]])", "fields")
        seen: set[str] = set()
        out: list[FieldRule] = []
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise self.fail("must be a table", f"fields[{index}]")
            v2_key = matching(
                entry.get("v2"),
                _KEY_RE,
                f"fields[{index}]",
                "v2 must be a v2 key (letters, digits, _)",
            )
            key = f"fields.{v2_key}"
            unknown = sorted(set(entry) - _FIELD_KEYS)
            if unknown:
                raise self.fail(
                    f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_FIELD_KEYS))})",
                    key,
                )
            if v2_key in _RESERVED_V2_KEYS:
                raise self.fail("nonce_str and sign are added by the signer, never mapped", key)
            if v2_key in seen:
                raise self.fail("duplicate v2 key", key)
            seen.add(v2_key)
            out.append(self.field(entry, key, v2_key, enums))
        return tuple(out)

    def field(
        self, entry: dict[str, Any], key: str, v2_key: str, enums: dict[str, dict[str, str]]
    ) -> FieldRule:
        sources = [s for s in ("v3", "request", "const") if s in entry]
        if len(sources) != 1:
            raise self.fail("needs exactly one source: v3, request or const", key)
        kind = sources[0]
        note = self.text(entry.get("note", ""), key, "note", empty_ok=True)
        if kind != "v3":
            extra = sorted({"convert", "enum", "required"} & set(entry))
            if extra:
                raise self.fail(f"{extra[0]!r} only applies to v3 sources", key)
            if kind == "const":
                value = self.text(entry["const"], key, "const", empty_ok=False)
                return FieldRule(v2_key=v2_key, kind="const", source=value, note=note)
            request = matching(
                entry["request"], _KEY_RE, key, "request must be a v2 request field name"
            )
            return FieldRule(v2_key=v2_key, kind="request", source=request, note=note)
        path_text = entry["v3"]
        if not isinstance(path_text, str):
            raise self.fail("v3 must be a dotted path string", key)
        path = tuple(path_text.split("."))
        if not path_text or any(_KEY_RE.fullmatch(part) is None for part in path):
            raise self.fail(
                "bad v3 path syntax (dotted JSON keys: letters, digits, _; no indexes)", key
            )
        converter = entry.get("convert")
        if not isinstance(converter, str) or converter not in CONVERTER_NAMES:
            raise self.fail(f"convert must be one of: {', '.join(sorted(CONVERTER_NAMES))}", key)
        required = entry.get("required", False)
        if not isinstance(required, bool):
            raise self.fail("required must be true or false", key)
        enum_name = entry.get("enum")
        if converter == "enum":
            if not isinstance(enum_name, str) or enum_name not in enums:
                raise self.fail("enum must name a table under [enums]", key)
            known = KNOWN_V3_ENUMS.get(path_text)
            if known is not None:
                missing = sorted(known - set(enums[enum_name]))
                if missing:
                    raise self.fail(
                        f"enum table {enum_name!r} misses v3 value(s): {', '.join(missing)}",
                        key,
                    )
        elif enum_name is not None:
            raise self.fail('enum only applies to convert = "enum"', key)
        return FieldRule(
            v2_key=v2_key,
            kind="v3",
            source=path_text,
            path=path,
            converter=converter,
            enum=enum_name,
            required=required,
            note=note,
        )

    def errors(self, raw: object) -> dict[tuple[int, str], ErrorRule]:
        if not isinstance(raw, list):
            raise self.fail("must be an array of tables ([[errors]])", "errors")
        out: dict[tuple[int, str], ErrorRule] = {}
        for index, entry in enumerate(raw):
            key = f"errors[{index}]"
            if not isinstance(entry, dict):
                raise self.fail("must be a table", key)
            status = entry.get("status")
            code = entry.get("code")
            if isinstance(status, int) and not isinstance(status, bool) and isinstance(code, str):
                key = f"errors[{status} {code}]"
            unknown = sorted(set(entry) - _ERROR_KEYS)
            if unknown:
                raise self.fail(
                    f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_ERROR_KEYS))})",
                    key,
                )
            if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
                raise self.fail("status must be an HTTP error status (400-599)", key)
            code = matching(code, _CODE_RE, key, "code must be a v3 error code (A-Z, 0-9, _)")
            if (status, code) in out:
                raise self.fail("duplicate (status, code)", key)
            outcome = entry.get("outcome")
            if outcome not in _ERROR_KINDS:
                raise self.fail(f"outcome must be one of: {', '.join(sorted(_ERROR_KINDS))}", key)
            kind = cast(ErrorKind, outcome)
            allowed = {
                "business": {"err_code", "err_code_des"},
                "return_fail": {"return_msg"},
            }.get(kind, set())
            extra = sorted({"err_code", "err_code_des", "return_msg"} & set(entry) - allowed)
            if extra:
                raise self.fail(f"{extra[0]!r} does not apply to outcome {kind!r}", key)
            err_code = err_code_des = return_msg = None
            if kind == "business":
                err_code = matching(
                    entry.get("err_code"),
                    _CODE_RE,
                    key,
                    "a business outcome needs err_code (A-Z, 0-9, _)",
                )
                err_code_des = self.text(entry.get("err_code_des"), key, "err_code_des")
            elif kind == "return_fail":
                return_msg = self.text(entry.get("return_msg"), key, "return_msg")
            note = self.text(entry.get("note", ""), key, "note", empty_ok=True)
            out[(status, code)] = ErrorRule(
                status=status,
                code=code,
                kind=kind,
                err_code=err_code,
                err_code_des=err_code_des,
                return_msg=return_msg,
                note=note,
            )
        return out

    def unknown_errors(self, raw: object) -> dict[str, ErrorKind]:
        if not isinstance(raw, dict):
            raise self.fail("must be a table of status = outcome", "unknown_errors")
        out: dict[str, ErrorKind] = {}
        for status, outcome in raw.items():
            key = f"unknown_errors.{status}"
            matching(status, _CLASS_RE, key, 'keys are a 4xx/5xx status ("429") or class ("5xx")')
            if outcome not in ("transient", "unmapped"):
                raise self.fail(
                    'must be "transient" or "unmapped" (no v2 code is invented for unknown errors)',
                    key,
                )
            out[status] = cast(ErrorKind, outcome)
        return out
