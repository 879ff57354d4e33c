"""MIGRATION.md's caller snippets: every Python "after" runs against the emulator.

Snippets are the fenced blocks that follow a ``<!-- caller: NAME before|after -->`` marker.
Each Python "after" runs over real loopback HTTP with only ``COUPON_SHIM_CONFIG`` and the
caller's own ``WECHAT_API_KEY`` set, in legacy and in v3 mode; where the "before" can run
(against the same emulator, its WeChat Pay host swapped for the emulator's), both print the
same lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import wechatpy.pay

import shim
from shim.sandbox import Emulator, SandboxState

ROOT = Path(__file__).resolve().parent.parent
MIGRATION = ROOT / "MIGRATION.md"
_SNIPPET = re.compile(
    r"<!-- caller: (?P<name>[a-z0-9-]+) (?P<side>before|after) -->\n```(?P<lang>\w+)\n"
    r"(?P<code>.*?)```",
    re.DOTALL,
)
PYTHON_STYLES = ("wechatpy", "module-level", "module-level-async", "requests")
EXPECTED = [
    ("1757", "满100减10", "4"),
    ("98765432", "failed:", "COUPON_STOCK_NOT_FOUND"),
]
#: The "before" snippets that can run here (the other calls a helper only your app has).
RUNNABLE_BEFORE = ("wechatpy", "requests")


def snippets() -> dict[tuple[str, str], tuple[str, str]]:
    """``(name, side) -> (language, code)`` for every marked snippet in MIGRATION.md."""
    text = MIGRATION.read_text(encoding="utf-8")
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for m in _SNIPPET.finditer(text):
        key = (m["name"], m["side"])
        assert key not in found, f"duplicate snippet {key}"
        found[key] = (m["lang"], m["code"])
    assert text.count("<!-- caller: ") == len(found), "a caller marker without a code block"
    return found


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """An empty working directory; default shims closed after each run."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("COUPON_SHIM_CONFIG", raising=False)
    yield
    shim.close_default_shims()


def _run(code: str, name: str) -> list[tuple[str, ...]]:
    printed: list[tuple[str, ...]] = []

    def fake_print(*args: Any) -> None:
        printed.append(tuple(str(a) for a in args))

    namespace: dict[str, Any] = {"__name__": "__main__", "print": fake_print}
    exec(compile(code, f"MIGRATION.md:{name}", "exec"), namespace)
    return printed


def _lines(printed: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [p[:3] for p in printed]


def test_every_caller_style_has_its_snippets() -> None:
    """Before and after for each Python caller style (the async one is an after only)."""
    found = snippets()
    for name in PYTHON_STYLES:
        assert found[(name, "after")][0] == "python", name
    for name in ("wechatpy", "module-level", "requests"):
        assert (name, "before") in found, name
    assert "from shim.compat.wechatpy import WeChatPay" in found[("wechatpy", "after")][1]
    before, after = found[("wechatpy", "before")][1], found[("wechatpy", "after")][1]
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [
        ("from wechatpy.pay import WeChatPay", "from shim.compat.wechatpy import WeChatPay")
    ], "the wechatpy migration is one import"


@pytest.mark.parametrize("mode", ["legacy", "v3"])
@pytest.mark.parametrize("name", PYTHON_STYLES)
def test_after_snippet_runs_against_the_emulator(
    name: str,
    mode: str,
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The "after" prints the expected answers, served by the side the mode says."""
    lang, code = snippets()[(name, "after")]
    assert lang == "python"
    config = sandbox_state.write_config(
        tmp_path / "conf" / "shim.toml",
        v2_base_url=server.base_url,
        v3_base_url=server.base_url,
        mode=mode,
    )
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config))
    monkeypatch.setenv("WECHAT_API_KEY", sandbox_state.merchants["10000098"].v2_key)
    emulator.reset_counts()
    printed = _run(code, f"{name} after")
    expected = EXPECTED[:1] if name == "module-level-async" else EXPECTED
    assert _lines(printed) == expected
    side = "v3" if mode == "v3" else "v2"
    assert emulator.request_counts == {side: len(expected)}


@pytest.mark.parametrize("name", RUNNABLE_BEFORE)
def test_before_and_after_print_the_same(
    name: str,
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The legacy code (aimed at the emulator) and its replacement in v3 mode agree."""
    found = snippets()
    before, after = found[(name, "before")][1], found[(name, "after")][1]
    monkeypatch.setenv("WECHAT_API_KEY", sandbox_state.merchants["10000098"].v2_key)
    monkeypatch.setattr(wechatpy.pay.WeChatPay, "API_BASE_URL", server.base_url + "/")
    host = "https://api.mch.weixin.qq.com"
    assert name != "requests" or before.count(host) == 1
    legacy_out = _run(before.replace(host, server.base_url), f"{name} before")

    config = sandbox_state.write_config(
        tmp_path / "conf" / "shim.toml",
        v2_base_url=server.base_url,
        v3_base_url=server.base_url,
        mode="v3",
    )
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config))
    emulator.reset_counts()
    assert _run(after, f"{name} after") == legacy_out
    assert emulator.request_counts == {"v3": 2}
