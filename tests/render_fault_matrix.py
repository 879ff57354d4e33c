"""Write (or check) the fault matrix table in README.md from ``tests/fault_cases.py``.

Run from the repository root::

    python -m tests.render_fault_matrix          # rewrite the table in README.md
    python -m tests.render_fault_matrix --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.fault_cases import render_table

BEGIN = "<!-- BEGIN GENERATED: fault matrix -->"
END = "<!-- END GENERATED: fault matrix -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def rendered(text: str) -> str:
    """``text`` (a README) with the table between the markers regenerated.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md needs the markers {BEGIN} and {END}, in that order")
    return text[: start + len(BEGIN)] + "\n" + render_table() + text[end:]


def check(path: Path = README) -> bool:
    """True when the README's table is what the cases generate."""
    text = path.read_text(encoding="utf-8")
    return rendered(text) == text


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.render_fault_matrix")
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    parser.add_argument("--file", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new = rendered(text)
    if args.check:
        if new != text:
            print(
                f"{args.file.name}: fault matrix is stale; run python -m tests.render_fault_matrix"
            )
            return 1
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
