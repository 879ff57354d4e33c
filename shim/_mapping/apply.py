"""Applying the mapping: a verified v3 JSON answer in, the v2 answer dict out (pure).

:func:`map_success` turns a v3 success answer into the v2 fields, leaving out and recording
(:class:`~shim._mapping.model.Unmapped`) every value it cannot convert, never guessing one;
:func:`map_error` decides how a v3 error answer reaches a v2 caller. Both are lookups in the
plan :func:`compile_plan` precomputes once, when the table is loaded: no I/O, no clock, no
randomness, a few microseconds per call.

``nonce_str`` and ``sign`` are never produced here: the caller adds a fresh nonce and signs the
dict with the merchant's v2 key and sign type. Whatever the input, the only exception leaving
this module is :class:`~shim._errors.MappingError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from shim._errors import MappingError
from shim._mapping.converters import CONVERTERS, ConversionError, Converter, make_enum
from shim._mapping.model import (
    ErrorOutcome,
    FieldRule,
    MappingTable,
    MapResult,
    Unmapped,
    V3Step,
)

__all__ = ["compile_plan", "map_error", "map_success"]


def compile_plan(
    fields: tuple[FieldRule, ...], enums: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, str | None], tuple[tuple[str, str], ...], tuple[V3Step, ...]]:
    """Precompute what a call needs from validated rules, once per loaded table.

    Args:
        fields: the validated v2 key rules, in file order.
        enums: the validated enum tables (every ``enum`` rule names one of them).

    Returns:
        ``(template, echo, v3_steps)``: every v2 key in file order (constants filled in,
        others ``None``); the request echoes (v2 key, request field); the v3 steps
        (v2 key, path, converter, required), all in file order.
    """
    template: dict[str, str | None] = {}
    echo: list[tuple[str, str]] = []
    steps: list[V3Step] = []
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
    return template, tuple(echo), tuple(steps)


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
