"""Generate MIGRATION.md's mapping tables from the mapping file, so the two never drift.

The generated text sits between two markers in MIGRATION.md::

    <!-- BEGIN GENERATED: mapping tables -->
    ...
    <!-- END GENERATED: mapping tables -->

Run ``coupon-shim migration-doc`` to rewrite it, ``coupon-shim migration-doc --check`` in CI
to fail on drift (the command lives in :mod:`shim._commands.migration_doc`).
"""

from __future__ import annotations

from pathlib import Path

from shim._errors import ConfigError
from shim._mapping.model import ErrorRule, FieldRule, MappingTable

__all__ = ["BEGIN_MARKER", "END_MARKER", "render_tables", "sync_migration_md"]

BEGIN_MARKER = "<!-- BEGIN GENERATED: mapping tables -->"
END_MARKER = "<!-- END GENERATED: mapping tables -->"

_OUTCOME_TEXT = {
    "transient": "transient: retried, then the routing fallback, then `UpstreamError`",
    "unmapped": "unmapped: `UpstreamError` raised, no v2 code invented",
}


def _cell(text: str) -> str:
    """Make text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _field_row(rule: FieldRule) -> str:
    if rule.kind == "v3":
        source = _code(rule.source)
        converter = _code(rule.converter or "")
        if rule.enum:
            converter += f" (table {_code(rule.enum)})"
        absent = (
            "**the call fails** (MappingError)"
            if rule.required
            else "left out, recorded as unmapped"
        )
    elif rule.kind == "request":
        source = f"request {_code(rule.source)}"
        converter = "echoed"
        absent = "left out when empty"
    else:
        source = f"constant {_code(rule.source)}"
        converter = "—"
        absent = "—"
    return _row([_code(rule.v2_key), source, converter, absent, _cell(rule.note)])


def _error_answer(rule: ErrorRule) -> str:
    if rule.kind == "business":
        return (
            f"`result_code=FAIL` `err_code={_cell(rule.err_code or '')}` "
            f"`err_code_des={_cell(rule.err_code_des or '')}`"
        )
    if rule.kind == "return_fail":
        return f"`return_code=FAIL` `return_msg={_cell(rule.return_msg or '')}`"
    return "—"


def render_tables(table: MappingTable) -> str:
    """Render the mapping as Markdown: fields, enum tables, errors.

    Args:
        table: a loaded mapping.

    Returns:
        The Markdown text (deterministic; no paths, no dates), ending with a newline.
    """
    lines: list[str] = [
        "### Field by field (success answers)",
        "",
        "In answer order. `nonce_str` and `sign` are always added after mapping: a fresh nonce,",
        "and a signature with the merchant's v2 key and `v2_sign_type`.",
        "",
        _row(["v2 key", "v3 source", "converter", "if absent or invalid", "notes"]),
        _row(["---"] * 5),
    ]
    lines.extend(_field_row(rule) for rule in table.fields)
    for enum_name, values in table.enums.items():
        users = [rule for rule in table.fields if rule.enum == enum_name]
        used_by = ", ".join(f"{_code(r.v2_key)} ← {_code(r.source)}" for r in users)
        lines += [
            "",
            f"### Enum table {_code(enum_name)}" + (f" ({used_by})" if used_by else ""),
            "",
            "A v3 value missing from the table is invalid (never guessed).",
            "",
            _row(["v3 value", "v2 value"]),
            _row(["---", "---"]),
        ]
        lines.extend(_row([_code(v3), _code(v2)]) for v3, v2 in values.items())
    lines += [
        "",
        "### v3 errors",
        "",
        "Error answers echo the same request fields as success answers. v3's `message` is "
        "never used.",
        "",
        _row(["HTTP status", "v3 code", "outcome", "v2 answer", "notes"]),
        _row(["---"] * 5),
    ]
    for rule in table.errors.values():
        outcome = _OUTCOME_TEXT.get(rule.kind, rule.kind)
        lines.append(
            _row(
                [
                    str(rule.status),
                    _code(rule.code),
                    outcome,
                    _error_answer(rule),
                    _cell(rule.note),
                ]
            )
        )
    lines += [
        "",
        "Any other (status, code), including answers without a code:",
        "",
        _row(["status", "outcome"]),
        _row(["---", "---"]),
    ]
    lines.extend(
        _row([_code(status), _OUTCOME_TEXT[kind]]) for status, kind in table.unknown_errors.items()
    )
    lines.append(_row(["anything else", _OUTCOME_TEXT["unmapped"]]))
    return "\n".join(lines) + "\n"


def _replace_block(text: str, block: str, source: str) -> str:
    begin = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER)
    if begin < 0 or end < 0 or end < begin or text.count(BEGIN_MARKER) != 1:
        raise ConfigError(f"needs exactly one {BEGIN_MARKER} ... {END_MARKER} block", source=source)
    start = begin + len(BEGIN_MARKER)
    return f"{text[:start]}\n{block}{text[end:]}"


def sync_migration_md(path: Path, table: MappingTable, *, check: bool) -> bool:
    """Bring the generated block of a MIGRATION.md in line with ``table``.

    Args:
        path: the Markdown file.
        table: the mapping to render.
        check: only compare; never write.

    Returns:
        True when the file was already in sync; False when it differed (then, unless
        ``check``, the file has been rewritten).

    Raises:
        ConfigError: the file cannot be read or lacks the markers.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read ({exc.strerror or type(exc).__name__})", source=str(path)
        ) from exc
    updated = _replace_block(text, render_tables(table), str(path))
    if updated == text:
        return True
    if not check:
        path.write_text(updated, encoding="utf-8")
    return False
