"""Applying the mapping: a verified v3 JSON answer in, the v2 answer dict out (pure).

:func:`map_success` turns a v3 success answer into the v2 fields, leaving out and recording
(:class:`~shim._mapping.model.Unmapped`) every value it cannot convert, never guessing one;
:func:`map_error` decides how a v3 error answer reaches a v2 caller. Both use the plan
:func:`compile_plan` precomputes once, when the table is loaded, which includes the success
table compiled into one function (plain dicts go through it; any other Mapping through
:func:`map_success_interpreted`, the reference it is held to): no I/O, no clock, no
randomness, a few microseconds per call.

``nonce_str`` and ``sign`` are never produced here: the caller adds a fresh nonce and signs the
dict with the merchant's v2 key and sign type. Whatever the input, the only exception leaving
this module is :class:`~shim._errors.MappingError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from shim._errors import MappingError
from shim._mapping.converters import (
    CONVERTERS,
    MAX_INTEGER,
    MAX_TIME_LEN,
    ConversionError,
    Converter,
    make_enum,
    parsed_times,
)
from shim._mapping.model import (
    CompiledMap,
    ErrorOutcome,
    FieldRule,
    MappingTable,
    MapResult,
    Unmapped,
    V3Step,
)

__all__ = ["compile_plan", "map_error", "map_success", "map_success_interpreted"]


def compile_plan(
    fields: tuple[FieldRule, ...], enums: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, str | None], tuple[tuple[str, str], ...], tuple[V3Step, ...], CompiledMap]:
    """Precompute what a call needs from validated rules, once per loaded table.

    Args:
        fields: the validated v2 key rules, in file order.
        enums: the validated enum tables (every ``enum`` rule names one of them).

    Returns:
        ``(template, echo, v3_steps, compiled)``: every v2 key in file order (constants
        filled in, others ``None``); the request echoes (v2 key, request field); the v3
        steps (v2 key, path, converter, required), all in file order; and the table compiled
        into one function (see :func:`_compile`) that :func:`map_success` runs for plain
        dicts.
    """
    template: dict[str, str | None] = {}
    echo: list[tuple[str, str]] = []
    steps: list[V3Step] = []
    kinds: list[tuple[str, Mapping[str, str] | None]] = []
    for rule in fields:
        template[rule.v2_key] = rule.source if rule.kind == "const" else None
        if rule.kind == "request":
            echo.append((rule.v2_key, rule.source))
        elif rule.kind == "v3":
            assert rule.converter is not None
            table: Mapping[str, str] | None = None
            if rule.converter == "enum":
                assert rule.enum is not None
                table = enums[rule.enum]
                converter = make_enum(table)
            else:
                converter = CONVERTERS[rule.converter]
            steps.append((rule.v2_key, rule.path, converter, rule.required))
            kinds.append((rule.converter, table))
    plan = (template, tuple(echo), tuple(steps))
    return (*plan, _compile(*plan, tuple(kinds)))


# The compiled mapper: straight-line code for one table, generated once per load from the
# validated rules (v2 keys, request fields and v3 path parts are identifiers, so the only text
# taken from the file is identifier text, and even that enters only through repr()). Per
# call it reads each v3 path once (shared prefixes once), and converts inline when the value
# is of the converter's plain type (a printable str for text, an int in range for integer, a
# str in the table for enum, a memoised time for the times); anything else goes through
# _step, the interpreted step, which is what map_success_interpreted runs, so the compiled
# mapper gives exactly its results, unmapped records and errors.

_EMPTY: Final[dict[str, Any]] = {}


def _happy(kind: str, index: int, v: str) -> tuple[str, str]:
    """The inline condition on the value in variable ``v`` and the v2 value it gives."""
    if kind == "text":
        return f"type({v}) is str and {v}.isprintable()", v
    if kind == "integer":
        return f"type({v}) is int and 0 <= {v} <= _MAX_INTEGER", f"str({v})"
    if kind == "enum":
        return f"type({v}) is str and (f := _enum{index}.get({v})) is not None", "f"
    raise AssertionError(f"no inline form for converter {kind!r}")  # pragma: no cover


_TIME_KINDS: Final = {"epoch_seconds": 0, "beijing_time": 1}


def _compile(
    template: dict[str, str | None],
    echo: tuple[tuple[str, str], ...],
    steps: tuple[V3Step, ...],
    kinds: tuple[tuple[str, Mapping[str, str] | None], ...],
) -> CompiledMap:
    """The table as one function ``(body: dict, request: dict) -> MapResult``."""
    namespace: dict[str, Any] = {
        "_template": template,
        "_EMPTY": _EMPTY,
        "_MAX_INTEGER": MAX_INTEGER,
        "_MAX_TIME_LEN": MAX_TIME_LEN,
        "_times": parsed_times,
        "_echo": _echo_slowly,
        "_step": _step,
        "_finish": _finish,
        "_steps": steps,
        "MapResult": MapResult,
    }
    lines = ["def compiled(body, request):", "    out = _template.copy()"]
    for v2_key, field_name in echo:
        k, f = repr(v2_key), repr(field_name)
        lines += [
            f"    v = request.get({f})",
            "    if type(v) is str:",
            f"        if v: out[{k}] = v",
            f"        else: del out[{k}]",
            f"    elif v is None: del out[{k}]",
            f"    else: _echo(out, request, {k}, {f})",
        ]
    lines.append("    problems = None")
    nodes: dict[tuple[str, ...], str] = {(): "body"}
    leaves: dict[tuple[str, ...], str] = {}
    times: dict[tuple[str, ...], str] = {}
    for index, ((v2_key, path, _convert, _required), (kind, table)) in enumerate(
        zip(steps, kinds, strict=True)
    ):
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in nodes:
                name = nodes[prefix] = f"n{len(nodes)}"
                lines += [
                    f"    {name} = {nodes[prefix[:-1]]}.get({prefix[-1]!r})",
                    f"    if type({name}) is not dict: {name} = _EMPTY",
                ]
        leaf = leaves.get(path)
        if leaf is None:  # each path is read once, however many keys it feeds
            leaf = leaves[path] = f"v{len(leaves)}"
            lines.append(f"    {leaf} = {nodes[path[:-1]]}.get({path[-1]!r})")
        if kind in _TIME_KINDS:
            parsed = times.get(path)
            if parsed is None:  # and a time is parsed (looked up) once for both its forms
                parsed = times[path] = f"t{len(times)}"
                lines.append(
                    f"    {parsed} = _times({leaf}) if type({leaf}) is str"
                    f" and len({leaf}) <= _MAX_TIME_LEN else None"
                )
            value = f"{parsed}[{_TIME_KINDS[kind]}]"
            cond = f"type({parsed}) is tuple" + (f" and {value}" if kind == "beijing_time" else "")
        else:
            if table is not None:
                namespace[f"_enum{index}"] = dict(table)
            cond, value = _happy(kind, index, leaf)
        lines += [
            f"    if {cond}: out[{v2_key!r}] = {value}",
            f"    else: problems = _step(_steps[{index}], body, out, problems)",
        ]
    lines += [
        "    if problems is None: return MapResult(out, ())",
        "    return _finish(out, problems)",
    ]
    code = compile("\n".join(lines), "<coupon-shim mapping>", "exec")
    exec(code, namespace)  # noqa: S102 - generated from validated identifiers (see above)
    compiled: CompiledMap = namespace["compiled"]
    return compiled


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


def _step(
    step: V3Step, body: Mapping[str, Any], out: dict[str, Any], problems: list[Unmapped] | None
) -> list[Unmapped] | None:
    """One v3 step, interpreted: the v2 value into ``out``, or its record into ``problems``.

    Raises:
        MappingError: the step is required and its value is absent or invalid.
    """
    v2_key, path, convert, required = step
    # Fast path: plain dicts all the way down and a successful conversion.
    node: Any = body
    for part in path:
        node = node.get(part) if type(node) is dict else None
    if node is not None:
        try:
            out[v2_key] = convert(node)
            return problems
        except Exception:  # noqa: S110 - not swallowed: _map_slowly explains it
            pass
    result = _map_slowly(v2_key, body, path, convert)
    if type(result) is str:
        out[v2_key] = result
        return problems
    assert isinstance(result, Unmapped)
    if required:
        raise MappingError(f"required v3 value unusable: {result.detail}", v2_key=v2_key)
    if problems is None:
        problems = []
    problems.append(result)  # v3 steps run in file order, so these are in file order
    return problems


def _echo_slowly(
    out: dict[str, Any], request: Mapping[str, Any], v2_key: str, field_name: str
) -> None:
    """Echo one request field the compiled mapper did not take inline (see _compile)."""
    echoed = _echo_value(request, field_name, v2_key)
    if echoed is None:
        del out[v2_key]
    else:
        out[v2_key] = echoed


def _finish(out: dict[str, Any], problems: list[Unmapped]) -> MapResult:
    for problem in problems:
        del out[problem.v2_key]
    return MapResult(out, tuple(problems))


def map_success(
    table: MappingTable, body: Mapping[str, Any], request: Mapping[str, str]
) -> MapResult:
    """Map a verified v3 success answer onto the v2 answer (without nonce_str and sign).

    Plain dicts (what ``json.loads`` and the request normaliser give) go through the table's
    compiled mapper; anything else through :func:`map_success_interpreted`. Both give the same
    result for the same input.

    Args:
        table: the mapping (from :func:`load_mapping`).
        body: the decoded v3 JSON answer.
        request: the caller's v2 request fields (for the echoed keys).

    Returns:
        The v2 fields in the mapping's order, and the keys left out with their reasons.

    Raises:
        MappingError: the body is not a JSON object, or a required key is absent or invalid.
    """
    if type(body) is dict and type(request) is dict:
        return table.compiled(body, request)
    return map_success_interpreted(table, body, request)


def map_success_interpreted(
    table: MappingTable, body: Mapping[str, Any], request: Mapping[str, str]
) -> MapResult:
    """:func:`map_success` by walking the table's steps one by one (any Mapping).

    The reference the compiled mapper is held to; see :func:`map_success` for the contract.
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
    for step in table.v3_steps:
        problems = _step(step, body, out, problems)
    if problems is None:
        return MapResult(out, ())
    return _finish(out, problems)


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
