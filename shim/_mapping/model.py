"""The mapping's values: frozen rule and table types (no I/O, no parsing).

A :class:`MappingTable` is what :mod:`shim._mapping.load` builds from ``mappings/<name>.toml``
and what :mod:`shim._mapping.apply` reads: the v2 keys of a success answer
(:class:`FieldRule`), the enum tables, and the error table (:class:`ErrorRule`), plus the
per-call plan precompiled at load (see :func:`shim._mapping.apply.compile_plan`).
:class:`MapResult`, :class:`Unmapped` and :class:`ErrorOutcome` are what applying returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from shim._mapping.converters import Converter

__all__ = [
    "DEFAULT_MAPPING_NAME",
    "KNOWN_V3_ENUMS",
    "CompiledMap",
    "ErrorKind",
    "ErrorOutcome",
    "ErrorRule",
    "FieldRule",
    "MapResult",
    "MappingTable",
    "SourceKind",
    "Unmapped",
    "UnmappedReason",
    "V3Step",
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


#: One precompiled v3 step: (v2 key, v3 path, converter, required).
V3Step = tuple[str, tuple[str, ...], Converter, bool]

#: A table compiled into one function: (v3 body, request fields), both plain dicts, to the
#: result (see :func:`shim._mapping.apply.compile_plan`).
CompiledMap = Callable[[dict[str, Any], dict[str, str]], MapResult]


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
    # required), and the whole table compiled into one function.
    # (A plain dict, never mutated: copying a dict is much faster than copying a proxy.)
    template: dict[str, str | None] = field(repr=False, compare=False)
    echo: tuple[tuple[str, str], ...] = field(repr=False, compare=False)
    v3_steps: tuple[V3Step, ...] = field(repr=False, compare=False)
    compiled: CompiledMap = field(repr=False, compare=False)

    def unknown_error_kind(self, status: int) -> ErrorKind:
        """The outcome of an error pair not in the table: by exact status, then class."""
        found = self.unknown_errors.get(str(status))
        if found is None:
            found = self.unknown_errors.get(f"{status // 100}xx", "unmapped")
        return found
