"""The declarative v3 → v2 mapping: load ``mappings/<name>.toml`` once, apply it by lookup.

The mapping file says, for every v2 key of the ``query_coupon_stock`` answer, where its value
comes from (a v3 JSON path, a field of the caller's request, or a constant) and which
converter (:mod:`shim._converters`) turns it into the v2 string. It also holds the enum tables
(v3 ``status`` → v2 ``coupon_stock_status``) and the table that turns v3 errors into v2
answers. :func:`load_mapping` validates all of it once into frozen values and precompiles
paths and converters; :func:`map_success` and :func:`map_error` are then pure lookups (no I/O,
no clock, no randomness) that take a few microseconds.

``nonce_str`` and ``sign`` are never produced here: the caller adds a fresh nonce and signs the
dict with the merchant's v2 key and sign type.

Errors: a broken mapping file raises :class:`~shim._errors.ConfigError` naming the file and the
entry; an answer that cannot be mapped raises :class:`~shim._errors.MappingError` (and nothing
else, whatever the input).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from shim._converters import CONVERTER_NAMES, CONVERTERS, ConversionError, Converter, make_enum
from shim._errors import ConfigError, MappingError
from shim._validate import Invalid, matching
from shim._validate import text as checked_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "DEFAULT_MAPPING_NAME",
    "KNOWN_V3_ENUMS",
    "ErrorKind",
    "ErrorOutcome",
    "ErrorRule",
    "FieldRule",
    "MapResult",
    "MappingTable",
    "SourceKind",
    "Unmapped",
    "clear_mapping_cache",
    "default_mapping_dir",
    "load_mapping",
    "map_error",
    "map_success",
]

DEFAULT_MAPPING_NAME: Final = "query_coupon_stock"

SourceKind = Literal["v3", "request", "const"]
ErrorKind = Literal["business", "return_fail", "transient", "unmapped"]
UnmappedReason = Literal["absent", "invalid"]

#: v3 enumerations known from the spec, by v3 path: an ``enum`` entry reading one of these
#: paths must map every value, so no documented v3 value can ever fail a call.
KNOWN_V3_ENUMS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "status": frozenset({"unactivated", "audit", "running", "stoped", "paused"}),
        "stock_type": frozenset({"NORMAL", "DISCOUNT_CUT", "OTHER"}),
        "stock_use_rule.coupon_type": frozenset({"NORMAL", "CUT_TO"}),
    }
)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldRule:
    """One v2 key of the success answer.

    Attributes:
        v2_key: the v2 key.
        kind: where the value comes from: ``"v3"`` (a path into the v3 answer),
            ``"request"`` (the caller's request, echoed when non-empty) or ``"const"``.
        source: the dotted v3 path, the request field, or the constant value.
        path: the v3 path split into keys (empty unless ``kind == "v3"``).
        converter: the converter name (``None`` unless ``kind == "v3"``).
        enum: the enum table name when ``converter == "enum"``.
        required: absent or unconvertible → :class:`MappingError` instead of "unmapped".
        note: free text for MIGRATION.md.
    """

    v2_key: str
    kind: SourceKind
    source: str
    path: tuple[str, ...] = ()
    converter: str | None = None
    enum: str | None = None
    required: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRule:
    """How one (HTTP status, v3 code) pair is answered.

    Attributes:
        status: the v3 HTTP status.
        code: the v3 ``code``.
        kind: ``business`` (v2 ``result_code=FAIL``), ``return_fail`` (v2 ``return_code=FAIL``),
            ``transient`` (retry / fall back / raise) or ``unmapped`` (raise a typed error).
        err_code: the v2 ``err_code`` (``business`` only).
        err_code_des: the v2 ``err_code_des`` (``business`` only).
        return_msg: the v2 ``return_msg`` (``return_fail`` only).
        note: free text for MIGRATION.md.
    """

    status: int
    code: str
    kind: ErrorKind
    err_code: str | None = None
    err_code_des: str | None = None
    return_msg: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A v2 key left out of the answer.

    Attributes:
        v2_key: the v2 key left out.
        reason: ``"absent"`` (the v3 source is missing or null) or ``"invalid"`` (present but
            not convertible).
        detail: a short explanation (never a long value).
    """

    v2_key: str
    reason: UnmappedReason
    detail: str


@dataclass(frozen=True, slots=True)
class MapResult:
    """The v2 answer mapped from a v3 success answer.

    Attributes:
        fields: the v2 dict without ``nonce_str`` and ``sign``, in the mapping file's order.
        unmapped: the v2 keys left out, in the mapping file's order.
    """

    fields: dict[str, str]
    unmapped: tuple[Unmapped, ...]


@dataclass(frozen=True, slots=True)
class ErrorOutcome:
    """What to do with a v3 error answer.

    Attributes:
        kind: ``business`` / ``return_fail``: answer the caller with ``fields``;
            ``transient``: retry, fall back, then raise; ``unmapped``: raise a typed
            :class:`~shim._errors.UpstreamError` (no v2 code is invented).
        fields: the v2 dict without ``nonce_str`` and ``sign`` (empty for ``transient`` and
            ``unmapped``).
        rule: the matching error-table row, or ``None`` when the status-class rule decided.
    """

    kind: ErrorKind
    fields: dict[str, str]
    rule: ErrorRule | None = None


_V3Step = tuple[str, tuple[str, ...], Converter, bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingTable:
    """A validated, frozen mapping file.

    Attributes:
        name: the mapping's name (the file stem).
        source: the file it was loaded from.
        fields: the v2 keys of a success answer, in file order.
        enums: enum tables by name (v3 string → v2 string).
        errors: error rules by (status, code), in file order.
        unknown_errors: the outcome of pairs not in ``errors``, by exact status (``"429"``) or
            status class (``"5xx"``); anything not covered is ``unmapped``.
    """

    name: str
    source: str
    fields: tuple[FieldRule, ...]
    enums: Mapping[str, Mapping[str, str]]
    errors: Mapping[tuple[int, str], ErrorRule]
    unknown_errors: Mapping[str, ErrorKind]
    # Precompiled at load: every v2 key in file order (constants filled in, others None),
    # the request echoes (v2 key, request field) and the v3 steps (v2 key, path, converter,
    # required).
    # (A plain dict, never mutated: copying a dict is much faster than copying a proxy.)
    template: dict[str, str | None] = field(repr=False, compare=False)
    echo: tuple[tuple[str, str], ...] = field(repr=False, compare=False)
    v3_steps: tuple[_V3Step, ...] = field(repr=False, compare=False)

    def unknown_error_kind(self, status: int) -> ErrorKind:
        """The outcome of an error pair not in the table: by exact status, then class."""
        found = self.unknown_errors.get(str(status))
        if found is None:
            found = self.unknown_errors.get(f"{status // 100}xx", "unmapped")
        return found


# ---------------------------------------------------------------------------------------------
# Loading


@functools.cache
def default_mapping_dir() -> Path:
    """The packaged mappings folder if it exists, else the repository's ``mappings/``.

    Computed once per process (installed files do not move while it runs).
    """
    package = Path(__file__).resolve().parent
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
        template: dict[str, str | None] = {}
        echo: list[tuple[str, str]] = []
        steps: list[_V3Step] = []
        for rule in fields:
            template[rule.v2_key] = rule.source if rule.kind == "const" else None
            if rule.kind == "request":
                echo.append((rule.v2_key, rule.source))
            elif rule.kind == "v3":
                assert rule.converter is not None
                if rule.converter == "enum":
                    assert rule.enum is not None
                    converter = make_enum(enums[rule.enum])
                else:
                    converter = CONVERTERS[rule.converter]
                steps.append((rule.v2_key, rule.path, converter, rule.required))
        return MappingTable(
            name=name,
            source=self.source,
            fields=fields,
            enums=MappingProxyType({k: MappingProxyType(v) for k, v in enums.items()}),
            errors=MappingProxyType(errors),
            unknown_errors=MappingProxyType(unknown_errors),
            template=template,
            echo=tuple(echo),
            v3_steps=tuple(steps),
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


# ---------------------------------------------------------------------------------------------
# Applying


_ABSENT: Final = object()


def _echo_value(request: Mapping[str, Any], field_name: str, v2_key: str) -> str | None:
    try:
        value = request.get(field_name)
    except Exception as exc:  # a hostile Mapping: still only MappingError leaves this module
        raise MappingError("the request could not be read", v2_key=v2_key) from exc
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MappingError("the request field to echo is not a string", v2_key=v2_key)
    return str(value)


def _map_slowly(
    v2_key: str, body: Mapping[str, Any], path: tuple[str, ...], convert: Converter
) -> str | Unmapped:
    """Walk ``path`` carefully and convert: the v2 string, or why not.

    Used when the fast path (plain dicts all the way, a successful conversion) does not
    apply: absent or null values, wrong types, Mapping types other than dict, hostile input.
    """
    node: Any = body
    for depth, part in enumerate(path):
        if type(node) is not dict and not isinstance(node, Mapping):
            return Unmapped(v2_key, "invalid", f"{'.'.join(path[:depth])} is not an object")
        try:
            node = node.get(part, _ABSENT)
        except Exception as exc:  # a hostile Mapping: reported as MappingError
            raise MappingError("the v3 answer could not be read") from exc
        if node is _ABSENT:
            return Unmapped(v2_key, "absent", f"{'.'.join(path[: depth + 1])} absent")
        if node is None:
            return Unmapped(v2_key, "absent", f"{'.'.join(path[: depth + 1])} is null")
    try:
        return convert(node)
    except ConversionError as exc:
        return Unmapped(v2_key, "invalid", f"{'.'.join(path)}: {exc.detail}")
    except Exception as exc:  # any other failure of a converter on hostile input
        return Unmapped(
            v2_key, "invalid", f"{'.'.join(path)}: cannot convert ({type(exc).__name__})"
        )


def map_success(
    table: MappingTable, body: Mapping[str, Any], request: Mapping[str, str]
) -> MapResult:
    """Map a verified v3 success answer onto the v2 answer (without nonce_str and sign).

    Args:
        table: the mapping (from :func:`load_mapping`).
        body: the decoded v3 JSON answer.
        request: the caller's v2 request fields (for the echoed keys).

    Returns:
        The v2 fields in the mapping's order, and the keys left out with their reasons.

    Raises:
        MappingError: the body is not a JSON object, or a required key is absent or invalid.
    """
    if type(body) is not dict and not isinstance(body, Mapping):
        raise MappingError("the v3 answer is not a JSON object")
    if type(request) is not dict and not isinstance(request, Mapping):
        raise MappingError("the request is not a mapping")
    # Every key in file order; keys that end up without a value are deleted (order kept).
    out: dict[str, Any] = table.template.copy()
    for v2_key, field_name in table.echo:
        echoed = _echo_value(request, field_name, v2_key)
        if echoed is None:
            del out[v2_key]
        else:
            out[v2_key] = echoed
    problems: list[Unmapped] | None = None
    for v2_key, path, convert, required in table.v3_steps:
        # Fast path: plain dicts all the way down and a successful conversion.
        node: Any = body
        for part in path:
            node = node.get(part) if type(node) is dict else None
        if node is not None:
            try:
                out[v2_key] = convert(node)
                continue
            except Exception:  # noqa: S110 - not swallowed: _map_slowly explains it
                pass
        result = _map_slowly(v2_key, body, path, convert)
        if type(result) is str:
            out[v2_key] = result
            continue
        assert isinstance(result, Unmapped)
        if required:
            raise MappingError(f"required v3 value unusable: {result.detail}", v2_key=v2_key)
        if problems is None:
            problems = []
        problems.append(result)  # v3 steps run in file order, so these are in file order
    if problems is None:
        return MapResult(out, ())
    for problem in problems:
        del out[problem.v2_key]
    return MapResult(out, tuple(problems))


def map_error(
    table: MappingTable, status: int, code: str | None, request: Mapping[str, str]
) -> ErrorOutcome:
    """Decide how a v3 error answer (non-2xx) reaches a v2 caller.

    Args:
        table: the mapping (from :func:`load_mapping`).
        status: the HTTP status of the v3 answer.
        code: the v3 ``code`` from the error body, or ``None`` when there was none
            (a non-string code is treated as ``None``).
        request: the caller's v2 request fields (for the echoed keys).

    Returns:
        The outcome; for ``business`` and ``return_fail`` the v2 dict (without nonce_str and
        sign) echoing the request's keys as the success answer does.

    Raises:
        MappingError: ``status`` is not an int, or a request field to echo is not a string.
    """
    if type(status) is not int:
        raise MappingError("the v3 HTTP status is not an integer")
    if not isinstance(request, Mapping):
        raise MappingError("the request is not a mapping")
    rule = table.errors.get((status, code)) if type(code) is str else None
    if rule is None:
        return ErrorOutcome(table.unknown_error_kind(status), {}, None)
    if rule.kind in ("transient", "unmapped"):
        return ErrorOutcome(rule.kind, {}, rule)
    fields: dict[str, str] = {}
    if rule.kind == "return_fail":
        fields["return_code"] = "FAIL"
        fields["return_msg"] = rule.return_msg or ""
    else:
        fields["return_code"] = "SUCCESS"
        fields["return_msg"] = "OK"
    for v2_key, field_name in table.echo:
        echoed = _echo_value(request, field_name, v2_key)
        if echoed is not None:
            fields[v2_key] = echoed
    if rule.kind == "business":
        fields["result_code"] = "FAIL"
        fields["err_code"] = rule.err_code or ""
        fields["err_code_des"] = rule.err_code_des or ""
    return ErrorOutcome(rule.kind, fields, rule)
