"""Tests of MIGRATION.md's generated mapping tables and `coupon-shim migration-doc`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import ConfigError

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import clear_mapping_cache, load_mapping

# private: the MIGRATION.md table generator
from shim._migration_doc import BEGIN_MARKER, END_MARKER, render_tables, sync_migration_md
from shim.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
REPO_MAPPINGS = REPO / "mappings"
REPO_MIGRATION = REPO / "MIGRATION.md"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Every test starts and ends with an empty mapping cache."""
    clear_mapping_cache()
    yield
    clear_mapping_cache()


@pytest.fixture
def doc_copy(tmp_path: Path) -> Path:
    """A copy of the repository's MIGRATION.md in tmp_path."""
    path = tmp_path / "MIGRATION.md"
    shutil.copyfile(REPO_MIGRATION, path)
    return path


def test_repository_migration_md_is_in_sync_with_the_mapping() -> None:
    """MIGRATION.md's generated tables match mappings/ (run coupon-shim migration-doc)."""
    assert sync_migration_md(REPO_MIGRATION, load_mapping(REPO_MAPPINGS), check=True)


def test_rendered_tables_cover_fields_statuses_and_errors() -> None:
    """The rendering lists every v2 key, every status and every error row of the mapping."""
    table = load_mapping(REPO_MAPPINGS)
    text = render_tables(table)
    for rule in table.fields:
        assert f"| `{rule.v2_key}` |" in text
    for v3, v2 in table.enums["stock_status"].items():
        assert f"| `{v3}` | `{v2}` |" in text
    for status, code in table.errors:
        assert f"| {status} | `{code}` |" in text
    assert render_tables(table) == text  # deterministic


def test_rendered_tables_hold_no_machine_paths() -> None:
    """The generated text names no file system path (it goes into the repository)."""
    text = render_tables(load_mapping(REPO_MAPPINGS))
    assert str(REPO) not in text and tempfile.gettempdir() not in text


def test_check_detects_drift_and_writes_nothing(doc_copy: Path, tmp_path: Path) -> None:
    """check=True on a drifted copy returns False and leaves the file untouched."""
    text = doc_copy.read_text(encoding="utf-8")
    drifted = text.replace("| `coupon_budget` |", "| `coupon_budgets` |")
    assert drifted != text
    doc_copy.write_text(drifted, encoding="utf-8")
    table = load_mapping(REPO_MAPPINGS)
    assert sync_migration_md(doc_copy, table, check=True) is False
    assert doc_copy.read_text(encoding="utf-8") == drifted
    assert sync_migration_md(doc_copy, table, check=False) is False
    assert doc_copy.read_text(encoding="utf-8") == text
    assert sync_migration_md(doc_copy, table, check=True) is True


def main(argv: list[str]) -> int:
    """``coupon-shim migration-doc ARGV``'s exit code."""
    return cli_main(["migration-doc", *argv])


def test_cli_check_detects_a_mapping_change(
    doc_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check fails (exit 1) after a mapping edit; a plain run regenerates; --check then passes."""
    folder = tmp_path / "maps"
    shutil.copytree(REPO_MAPPINGS, folder)
    file = folder / "query_coupon_stock.toml"
    file.write_text(
        file.read_text(encoding="utf-8").replace('stoped = "8"', 'stoped = "32"'), "utf-8"
    )
    args = ["--mappings", str(folder), "--file", str(doc_copy)]
    before = doc_copy.read_text(encoding="utf-8")
    assert main(["--check", *args]) == 1
    assert "out of date" in capsys.readouterr().err
    assert doc_copy.read_text(encoding="utf-8") == before
    assert main(args) == 0
    assert "| `stoped` | `32` |" in doc_copy.read_text(encoding="utf-8")
    assert main(["--check", *args]) == 0


def test_cli_check_passes_on_the_repository() -> None:
    """--check on the repository's own files exits 0."""
    assert main(["--check", "--mappings", str(REPO_MAPPINGS), "--file", str(REPO_MIGRATION)]) == 0


def test_text_outside_the_markers_is_kept(tmp_path: Path) -> None:
    """Only the text between the markers is replaced."""
    path = tmp_path / "doc.md"
    path.write_text(f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n", encoding="utf-8")
    table = load_mapping(REPO_MAPPINGS)
    assert sync_migration_md(path, table, check=False) is False
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{BEGIN_MARKER}\n") and text.endswith(f"{END_MARKER}\noutro\n")
    assert "old" not in text and render_tables(table) in text


@pytest.mark.parametrize(
    "content",
    [
        "no markers\n",
        f"{END_MARKER}\n{BEGIN_MARKER}\n",
        f"{BEGIN_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
)
def test_missing_or_misplaced_markers_are_an_error(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file without one well-ordered marker pair raises ConfigError; the CLI exits 3."""
    path = tmp_path / "doc.md"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="GENERATED"):
        sync_migration_md(path, load_mapping(REPO_MAPPINGS), check=True)
    assert main(["--check", "--mappings", str(REPO_MAPPINGS), "--file", str(path)]) == 3
    assert "ConfigError:" in capsys.readouterr().err


def test_cli_reports_a_missing_file(tmp_path: Path) -> None:
    """A missing MIGRATION.md is reported (exit 3, config), not a traceback."""
    missing = tmp_path / "nope.md"
    assert main(["--mappings", str(REPO_MAPPINGS), "--file", str(missing)]) == 3
