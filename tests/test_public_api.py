"""The curated public surface, the README's commands and its Python example."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shim
from shim.sandbox import SandboxState

ROOT = Path(__file__).resolve().parent.parent


def test_exported_members_are_pinned() -> None:
    """shim.__all__ is sorted and exactly the documented public names."""
    assert shim.__all__ == sorted(shim.__all__)
    assert set(shim.__all__) == {
        "AsyncCouponStockShim",
        "ClosedError",
        "ConfigError",
        "CouponStockShim",
        "InputError",
        "LiveConfig",
        "LocalError",
        "MappingError",
        "OverloadError",
        "ShadowTotals",
        "ShimConfig",
        "ShimError",
        "SignatureError",
        "UpstreamError",
        "__version__",
        "aquery_coupon_stock",
        "close_default_shims",
        "default_shim",
        "load_config",
        "query_coupon_stock",
        "redact_secrets",
    }
    for name in shim.__all__:
        assert getattr(shim, name) is not None


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
