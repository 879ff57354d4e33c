"""Which test items depend on the wall clock, found by reading their code.

A test depends on the wall clock when it measures an elapsed time or deadline
(``time.monotonic`` / ``perf_counter`` differences, an ``elapsed`` it asserts on) or waits on
a real delay (``time.sleep`` / ``asyncio.sleep`` of more than nothing). :func:`clock_reason`
reads a test function's source, and the sources of the module-level helpers, fixtures and
hostile-server scripts it names (two levels deep), and says which clock use it found.

Every such item must carry ``@pytest.mark.wallclock`` and fewer than 60 collected items may
carry it (``tests/test_wallclock_budget.py``): the rest of the suite drives the core with a
fake clock (``tests/test_flow_contract.py``), so it is fast and never flaky under load.
``python -m tests.wallclock`` lists the marked and the unmarked clock users of the suite.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import textwrap
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest

#: Elapsed-time measurements and real waits. (``monotonic() + N`` is a deadline handed to
#: a driver or a bounded wait, not a measurement: the wait itself is what counts, a
#: ``sleep`` in a loop, say; bounded waits go through ``tests/wait.py``.)
CLOCK_USE = re.compile(
    r"\b(?:monotonic|perf_counter)\s*\(\s*\)(?!\s*\+)"
    r"|\belapsed\b"
    r"|\b(?:time|asyncio)\.sleep\s*\(\s*(?!0\s*\))"
)
#: How many collected items may carry the marker (issue: "fewer than 60").
LIMIT = 59

__all__ = ["CLOCK_USE", "LIMIT", "clock_reason", "marked", "report"]


@functools.cache
def _module_sources(module: ModuleType) -> dict[str, str]:
    """Top-level function (and fixture) sources of ``module``, by name."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return {}
    lines = inspect.getsource(module).splitlines()
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out[node.name] = "\n".join(lines[start - 1 : node.end_lineno])
    return out


def _function_source(func: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return ""


_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def _reachable(source: str, modules: Iterable[ModuleType], depth: int) -> Iterable[str]:
    """The source itself and the module helpers it names, ``depth`` levels deep."""
    seen: set[str] = set()
    frontier = [source]
    for _ in range(depth + 1):
        nxt: list[str] = []
        for text in frontier:
            code = _code(text)
            yield code
            for name in set(_NAME.findall(code)) - seen:
                seen.add(name)
                for module in modules:
                    helper = _module_sources(module).get(name)
                    if helper is not None:
                        nxt.append(helper)
        frontier = nxt


def clock_reason(item: pytest.Item) -> str | None:
    """What makes ``item`` depend on the wall clock (the matched code), or None."""
    func = getattr(item, "function", None)
    if func is None:
        return None
    module = sys.modules.get(func.__module__)
    modules = [m for m in (module,) if m is not None]
    source = _function_source(func)
    fixtures = getattr(item, "fixturenames", ())
    if module is not None:
        defs = _module_sources(module)
        source += "\n".join(defs[name] for name in fixtures if name in defs)
    for code in _reachable(source, modules, depth=2):
        match = CLOCK_USE.search(code)
        if match:
            return match.group(0).strip()
    return None


_STRING = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\''
)


def _code(text: str) -> str:
    """``text`` without its strings, docstrings and comments: only code counts."""
    return "\n".join(line.split("#", 1)[0] for line in _STRING.sub('""', text).splitlines())


def marked(item: pytest.Item) -> bool:
    """Whether ``item`` carries ``@pytest.mark.wallclock``."""
    return item.get_closest_marker("wallclock") is not None


def report(items: Iterable[pytest.Item]) -> tuple[list[str], list[str]]:
    """``(marked item ids, unmarked clock users with the reason)``."""
    marked_ids: list[str] = []
    unmarked: list[str] = []
    for item in items:
        if marked(item):
            marked_ids.append(item.nodeid)
        else:
            reason = clock_reason(item)
            if reason is not None:
                unmarked.append(f"{item.nodeid}  ({reason})")
    return marked_ids, unmarked


class _Collector:
    def __init__(self) -> None:
        self.items: list[pytest.Item] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


def main() -> int:
    """List the suite's wall-clock items: marked ones, then clock users without the mark."""
    collector = _Collector()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[collector])
    marked_ids, unmarked = report(collector.items)
    print(f"\n{len(marked_ids)} items marked wallclock (limit {LIMIT}):")
    for nodeid in marked_ids:
        print("  " + nodeid)
    print(f"{len(unmarked)} clock users without the mark:")
    for line in unmarked:
        print("  " + line)
    return int(code) or int(bool(unmarked) or len(marked_ids) > LIMIT)


if __name__ == "__main__":
    raise SystemExit(main())
