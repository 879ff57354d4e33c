"""The curated public surface, the README's commands and its Python example."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shim
from shim.sandbox import SandboxState

ROOT = Path(__file__).resolve().parent.parent


#: The public subpackages: importing one makes it an attribute of ``shim``; nothing else is.
PUBLIC_SUBPACKAGES = {"cli", "compat", "gateway", "metrics", "sandbox"}
#: Dunder names that are part of the surface (httpx keeps ``__version__`` the same way).
PUBLIC_DUNDERS = {"__version__"}


def _public(names: Any) -> list[str]:
    return sorted(n for n in names if not n.startswith("_") or n in PUBLIC_DUNDERS)


def test_all_imports_are_exported() -> None:
    """A fresh ``import shim`` exposes exactly ``__all__`` (sorted); everything else is private.

    Compares ``vars(shim)`` itself, as httpx's ``test_exported_members`` does, in a fresh
    interpreter so that submodules other tests imported do not count.
    """
    code = "import json, shim; print(json.dumps([list(vars(shim)), shim.__all__]))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    members, exported = json.loads(out)
    assert exported == sorted(exported)
    assert exported == _public(members)


def test_only_public_subpackages_appear_after_imports() -> None:
    """In this process (where tests import submodules), extra public names are only the
    documented subpackages; every library module is private (``shim._x``)."""
    extra = set(_public(vars(shim))) - set(shim.__all__)
    assert extra <= PUBLIC_SUBPACKAGES
    for name in extra:
        assert inspect.ismodule(getattr(shim, name))
    package = Path(shim.__file__).parent
    files = {p.stem for p in package.glob("*.py")}
    files |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    public_files = {f for f in files if not f.startswith("_")}
    assert public_files <= PUBLIC_SUBPACKAGES, public_files


def test_every_exported_name_is_documented_and_real() -> None:
    """Each exported name resolves to an object with a docstring (or is a type alias)."""
    for name in shim.__all__:
        obj = getattr(shim, name)
        assert obj is not None
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), name


def _shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    """The README's quick start has exactly two commands; .ci/run runs the test one verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = _shell_blocks(quick)
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    demo, tests = blocks
    assert demo.endswith("coupon-shim demo")
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci


def test_readme_python_example_runs(
    sandbox_state: SandboxState, server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first Python example runs as written against the emulator."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)[0]
    sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )
    monkeypatch.chdir(tmp_path)
    printed: list[Any] = []
    namespace = {"print": lambda *args: printed.append(args)}
    exec(compile(textwrap.dedent(example), "README.md", "exec"), namespace)
    assert printed == [("满100减10", "4")]


def _private_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a private shim module in a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [a.name for a in node.names]
            parts = node.module.split(".")
            if parts[0] == "shim" and (
                any(p.startswith("_") for p in parts[1:])
                or any(n.startswith("_") and n not in PUBLIC_DUNDERS for n in names)
            ):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "shim" and any(p.startswith("_") for p in parts[1:]):
                    found.append((node.lineno, alias.name))
    return found


def test_tests_and_bench_import_private_modules_only_saying_why() -> None:
    """Tests and bench import what users import; a private import carries ``# private: why``
    on the line above it (or its own line)."""
    files = sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")])
    unexplained: list[str] = []
    for path in files:
        if "node_modules" in path.parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, module in _private_imports(path):
            here = lines[lineno - 1]
            above = lines[lineno - 2].strip() if lineno >= 2 else ""
            if "# private:" not in here and not above.startswith("# private:"):
                unexplained.append(f"{path.relative_to(ROOT)}:{lineno} {module}")
    assert not unexplained, "private imports without a reason:\n" + "\n".join(unexplained)
