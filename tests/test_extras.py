"""The library runs on its runtime dependencies alone; each extra, when missing, names itself.

Each test runs a child Python whose ``sys.meta_path`` refuses every module that comes only from
an extra (or the test tools): the modules of every installed distribution outside the closure of
coupon-shim's ``Requires-Dist`` without extras. That is what a ``pip install coupon-shim`` venv
can import, computed from the installed metadata, so a new hard import of an extra's package
anywhere on the call path fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _runtime_closure() -> set[str]:
    """Canonical names of coupon-shim and every distribution its plain install pulls in."""
    seen: set[str] = set()
    todo = ["coupon-shim"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:  # an environment marker excluded it
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _blocked_modules() -> list[str]:
    """Top-level modules a runtime-only install would not have."""
    closure = _runtime_closure()
    blocked = {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in closure for d in dists)
        and module.isidentifier()
        and module not in sys.stdlib_module_names
    }
    return sorted(blocked)


BLOCKER = """
import importlib.abc, json, sys
BLOCKED = frozenset(json.loads(sys.argv[1]))
PRELOADED = frozenset(sys.modules)  # site's .pth hooks (setuptools' _distutils_hack)

class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
sys.argv[1:] = sys.argv[2:]
"""


def run_without_extras(
    code: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python that cannot import any extra's module."""
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(_blocked_modules()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def test_the_blocked_set_holds_every_extra_and_no_runtime_dependency() -> None:
    """The child refuses starlette, uvicorn, rich, plotly, prometheus_client... but not httpx."""
    blocked = set(_blocked_modules())
    for extra_module in (
        "starlette",
        "uvicorn",
        "rich",
        "plotly",
        "prometheus_client",
        "openfeature",
        "wechatpy",
        "pytest",
    ):
        assert extra_module in blocked
    for runtime_module in ("httpx", "wechatpayv3", "xmltodict", "structlog", "cryptography"):
        assert runtime_module not in blocked


def test_a_full_call_needs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    """import shim; both twins, both routes and shadow, against the in-process emulator."""
    proc = run_without_extras(
        """
        import asyncio, sys
        from pathlib import Path

        import shim
        from shim import AsyncCouponStockShim, CouponStockShim
        from shim.sandbox import Emulator, SandboxState

        state = SandboxState.load_or_create(Path(sys.argv[1]) / "state")
        emulator = Emulator(state)
        url = "http://wechatpay.emulator"

        def config(mode):
            path = Path(sys.argv[1]) / f"{mode}.toml"
            return state.write_config(path, v2_base_url=url, v3_base_url=url, mode=mode)

        def check(answer, route):
            assert answer["return_code"] == "SUCCESS", answer
            assert answer["result_code"] == "SUCCESS", answer
            assert answer["coupon_stock_id"] == "1757", answer
            print(route, "ok")

        for mode in ("legacy", "v3", "shadow"):
            with CouponStockShim.from_file(config(mode), transport=emulator.mock_transport()) as s:
                check(s.query_coupon_stock("1757", mch_id="10000098"), f"sync {mode}")
                if mode == "shadow":
                    assert s.wait_for_shadows(30)
                    totals = s.shadow_totals()
                    assert totals.calls == 1 and totals.errors == 0, totals
                    print("sync shadow compared")

        async def main():
            for mode in ("legacy", "v3", "shadow"):
                transport = emulator.mock_transport()
                async with AsyncCouponStockShim.from_file(config(mode), transport=transport) as s:
                    check(await s.query_coupon_stock("1757", mch_id="10000098"), f"async {mode}")
                    if mode == "shadow":
                        assert await s.wait_for_shadows(30)
                        totals = s.shadow_totals()
                        assert totals.calls == 1 and totals.errors == 0, totals
                        print("async shadow compared")

        asyncio.run(main())
        new = set(sys.modules) - PRELOADED
        leaked = sorted(m for m in new if m.partition(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("done", shim.__version__)
        """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for twin in ("sync", "async"):
        for mode in ("legacy", "v3", "shadow"):
            assert f"{twin} {mode} ok" in lines
        assert f"{twin} shadow compared" in lines
    assert lines[-1].startswith("done ")


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        (
            "from shim.sandbox import Emulator, SandboxState, serve\n"
            "with serve(Emulator(SandboxState.load_or_create(Path(sys.argv[1])))): pass",
            "sandbox",
        ),
        (
            "from shim.sandbox import Emulator, SandboxState\n"
            "Emulator(SandboxState.load_or_create(Path(sys.argv[1]))).asgi_app",
            "sandbox",
        ),
        ("from shim.sandbox import SandboxApp", "sandbox"),
        ("import shim.gateway", "gateway"),
        ("import shim.compat.wechatpy", "wechatpy"),
    ],
    ids=["serve", "asgi_app", "SandboxApp", "gateway", "wechatpy"],
)
def test_the_library_names_the_missing_extra(code: str, extra: str, tmp_path: Path) -> None:
    """A feature whose extra is missing raises one ImportError naming the pip install line."""
    proc = run_without_extras(
        f"""
        import sys
        from pathlib import Path
        try:
            {code.replace(chr(10), chr(10) + " " * 12)}
        except ImportError as exc:
            print(type(exc).__name__, exc)
        else:
            print("no error")
        """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pip install 'coupon-shim[{extra}]'" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["sandbox", "--state-dir", "{tmp}", "--port", "0"], "sandbox"),
        (["demo"], "sandbox"),
        (["serve", "--config", "{tmp}/shim.toml"], "gateway"),
        (["compare", "--config", "{tmp}/shim.toml", "--mch-id", "10000098", "1757"], "cli"),
        (["report", "{tmp}/events.jsonl"], "report"),
    ],
    ids=["sandbox", "demo", "serve", "compare", "report"],
)
def test_the_cli_names_the_missing_extra_in_one_line(
    argv: list[str], extra: str, tmp_path: Path
) -> None:
    """Each command whose extra is missing exits 2 with one line naming it, no traceback."""
    proc = run_without_extras(
        """
        import sys
        from shim.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        *(a.replace("{tmp}", str(tmp_path)) for a in argv),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'coupon-shim[{extra}]'" in lines[0]
    assert lines[0].startswith(f"coupon-shim {argv[0]}: ")
    assert "Traceback" not in proc.stderr


def test_the_cli_help_works_without_any_extra() -> None:
    """``coupon-shim --help`` lists every command without any extra installed."""
    proc = run_without_extras(
        """
        from shim.cli import main
        main(["--help"])
        """
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("demo", "query", "compare", "report", "check", "sandbox", "serve"):
        assert f"    {name}" in proc.stdout
