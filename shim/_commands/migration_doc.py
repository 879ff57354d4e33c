"""``coupon-shim migration-doc``: regenerate (or check) MIGRATION.md's tables from the mapping."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shim._commands import Command, ExitCode


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when MIGRATION.md's tables are out of date",
    )
    p.add_argument(
        "--file",
        default="MIGRATION.md",
        metavar="FILE",
        help="the document to update (default: ./MIGRATION.md)",
    )
    p.add_argument(
        "--mappings", metavar="DIR", help="a mappings folder (default: the packaged one)"
    )


def _run(args: argparse.Namespace) -> int:
    from shim._mapping.load import load_mapping
    from shim._migration_doc import sync_migration_md

    path = Path(args.file)
    table = load_mapping(Path(args.mappings) if args.mappings else None)
    if sync_migration_md(path, table, check=args.check):
        print(f"{path}: mapping tables up to date")
        return ExitCode.OK
    if args.check:
        print(
            f"{path}: mapping tables are out of date; run coupon-shim migration-doc",
            file=sys.stderr,
        )
        return ExitCode.FINDINGS
    print(f"{path}: mapping tables updated")
    return ExitCode.OK


COMMAND = Command(
    name="migration-doc",
    help="regenerate MIGRATION.md's tables from the mapping",
    description="Regenerate (or, with --check, verify) the mapping tables in MIGRATION.md.",
    add_arguments=_add_arguments,
    run=_run,
)
