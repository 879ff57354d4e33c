"""The module-level call: ``from shim import query_coupon_stock`` on a process-wide default shim.

Lazy, shared by threads, rebuilt in a forked child, closed at exit (finishing shadows), one
per event loop for the async twin, and a clear ConfigError when no config is found. The
subprocess tests give the child nothing but ``COUPON_SHIM_CONFIG``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shim

# private: the process-wide default shim's state, reset between tests
from shim import ConfigError, _default
from shim.sandbox import Emulator, SandboxState

MCH = "10000098"


@pytest.fixture(autouse=True)
def _fresh_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No default shim leaks between tests; no config found by accident."""
    monkeypatch.delenv("COUPON_SHIM_CONFIG", raising=False)
    empty = tmp_path / "empty-cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    shim.close_default_shims()
    yield
    shim.close_default_shims()


@pytest.fixture
def config_path(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> Path:
    """A shim.toml for the loopback emulator, in legacy mode (its counters reset around)."""
    emulator.reset_counts()
    return sandbox_state.write_config(
        tmp_path / "conf" / "shim.toml", v2_base_url=server.base_url, v3_base_url=server.base_url
    )


def _set_mode(path: Path, mode: str) -> Path:
    text = path.read_text(encoding="utf-8").replace('mode = "legacy"', f'mode = "{mode}"', 1)
    path.write_text(text, encoding="utf-8")
    return path


def _run_child(code: str, config: Path, cwd: Path, timeout: float = 60) -> list[Any]:
    """Run ``code`` in a fresh interpreter whose only environment is COUPON_SHIM_CONFIG."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"COUPON_SHIM_CONFIG": str(config)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [
        json.loads(line[len("RESULT ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]


# ----------------------------------------------------------------------------- subprocesses


def test_works_with_only_the_variable_set(config_path: Path, tmp_path: Path) -> None:
    """A fresh process with only COUPON_SHIM_CONFIG: sync and async calls answer."""
    results = _run_child(
        """
        import asyncio, json
        from shim import aquery_coupon_stock, query_coupon_stock
        print("RESULT " + json.dumps(query_coupon_stock("1757", mch_id="10000098")))
        answer = asyncio.run(aquery_coupon_stock("1717", mch_id="10000098"))
        print("RESULT " + json.dumps(answer))
        """,
        config_path,
        tmp_path,
    )
    assert [r["coupon_stock_id"] for r in results] == ["1757", "1717"]
    assert results[0]["coupon_name"] == "满100减10"


def test_a_forked_child_builds_its_own_default_shim(config_path: Path, tmp_path: Path) -> None:
    """After os.fork() the child never uses the parent's shim or its pooled connections."""
    results = _run_child(
        """
        import json, os
        import shim
        from shim import query_coupon_stock

        first = query_coupon_stock("1757", mch_id="10000098")
        parent = shim.default_shim()   # kept alive in the child too
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                answer = query_coupon_stock("1717", mch_id="10000098")
                mine = shim.default_shim()
                report = {
                    "answer": answer["coupon_stock_id"],
                    "own_shim": mine is not parent,
                    "own_client": mine._client is not parent._client,
                    "stable": shim.default_shim() is mine,
                }
                os.write(write, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = json.loads(os.read(read, 65536).decode())
        os.waitpid(pid, 0)
        again = query_coupon_stock("1757", mch_id="10000098")
        print("RESULT " + json.dumps(child))
        print("RESULT " + json.dumps({
            "parent_kept_its_shim": shim.default_shim() is parent,
            "answers": [first["coupon_stock_id"], again["coupon_stock_id"]],
        }))
        """,
        config_path,
        tmp_path,
    )
    child, parent = results
    assert child == {"answer": "1717", "own_shim": True, "own_client": True, "stable": True}
    assert parent == {"parent_kept_its_shim": True, "answers": ["1757", "1757"]}


def test_exit_closes_the_default_shim_and_finishes_shadows(
    config_path: Path, tmp_path: Path, emulator: Emulator
) -> None:
    """Exiting right after a shadowed call still compares it: the atexit hook closes the shim."""
    _set_mode(config_path, "shadow")
    emulator.reset_counts()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            # the library is silent unless asked: ask for its events on stdout
            "import logging, sys\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
            "from shim import query_coupon_stock\n"
            "import shim\n"
            "query_coupon_stock('1757', mch_id='10000098')\n"
            "s = shim.default_shim()\n"
            "close = s.close\n"
            "def closing():\n"
            "    close()\n"
            "    print('CLOSED', s._client.is_closed)\n"
            "s.close = closing\n",
        ],
        env={"COUPON_SHIM_CONFIG": str(config_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "shadow=match" in proc.stdout  # the shadow event, emitted when comparison finished
    assert proc.stdout.rstrip().endswith("CLOSED True")
    assert emulator.request_counts == {"v2": 1, "v3": 1}


def test_importing_shim_reads_no_config(tmp_path: Path) -> None:
    """import shim with a broken COUPON_SHIM_CONFIG succeeds; the call names the file."""
    missing = tmp_path / "absent.toml"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import shim, sys\n"
            "assert 'shim.compat.wechatpy' not in sys.modules\n"
            "try:\n"
            "    shim.query_coupon_stock('1757', mch_id='10000098')\n"
            "except shim.ConfigError as exc:\n"
            "    print('ERROR', exc)\n",
        ],
        env={"COUPON_SHIM_CONFIG": str(missing)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR ")
    assert "COUPON_SHIM_CONFIG" in proc.stdout and str(missing) in proc.stdout


# ----------------------------------------------------------------------------- in process


def test_missing_config_names_where_it_looked(tmp_path: Path) -> None:
    """No variable and no ./shim.toml: ConfigError naming both and the folder searched."""
    with pytest.raises(ConfigError) as exc:
        shim.query_coupon_stock("1757", mch_id=MCH)
    text = str(exc.value)
    assert "COUPON_SHIM_CONFIG" in text and "shim.toml" in text
    assert str(Path.cwd()) in text


def test_variable_wins_over_the_working_directory(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """COUPON_SHIM_CONFIG (relative to the working directory) wins; ./shim.toml is the fallback."""
    monkeypatch.chdir(config_path.parent)
    assert shim.default_shim().config.source == config_path.parent / "shim.toml"
    shim.close_default_shims()
    other = tmp_path / "other"
    other.mkdir()
    (other / "v3.toml").write_text(
        _set_mode(config_path, "v3").read_text(encoding="utf-8").replace("file:", "file:../conf/"),
        encoding="utf-8",
    )
    monkeypatch.chdir(other)
    monkeypatch.setenv("COUPON_SHIM_CONFIG", "v3.toml")
    assert shim.default_shim().config.routing.mode == "v3"
    assert shim.default_shim().config.source == other / "v3.toml"


def test_one_shim_for_all_threads(
    config_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: Emulator
) -> None:
    """Threads racing on first use get one shim, built once; their calls all answer."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))
    from shim import CouponStockShim

    builds: list[int] = []
    real = CouponStockShim.from_file.__func__  # type: ignore[attr-defined]

    def slow_build(cls: type[CouponStockShim], path: Any, **kwargs: Any) -> CouponStockShim:
        builds.append(1)
        time.sleep(0.05)  # widen the race window
        built: CouponStockShim = real(cls, path, **kwargs)
        return built

    monkeypatch.setattr(CouponStockShim, "from_file", classmethod(slow_build))
    emulator.reset_counts()
    barrier = threading.Barrier(8)
    seen: list[Any] = []
    answers: list[str] = []

    def worker() -> None:
        barrier.wait()
        seen.append(shim.default_shim())
        answers.append(shim.query_coupon_stock("1757", mch_id=MCH)["coupon_stock_id"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert builds == [1]
    assert len({id(s) for s in seen}) == 1
    assert answers == ["1757"] * 8
    assert 1 <= emulator.request_counts["v2"] <= 8  # identical concurrent calls may coalesce


def test_close_then_rebuild(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close_default_shims() closes the shim; the next call builds a new one."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))
    first = shim.default_shim()
    shim.close_default_shims()
    assert first._client.is_closed
    assert shim.query_coupon_stock("1757", mch_id=MCH)["coupon_stock_id"] == "1757"
    assert shim.default_shim() is not first


def test_async_one_shim_per_loop_closed_with_the_loop(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each asyncio.run gets its own async shim, shared by its tasks, closed when it ends."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))

    async def main() -> tuple[Any, list[str]]:
        answers = await asyncio.gather(
            *(shim.aquery_coupon_stock(s, mch_id=MCH) for s in ("1757", "1717", "1757"))
        )
        mine = await _default._default_async_shim()
        return mine, [a["coupon_stock_id"] for a in answers]

    first, answers = asyncio.run(main())
    assert answers == ["1757", "1717", "1757"]
    assert first._client.is_closed  # closed by the loop's shutdown, not at exit
    second, _ = asyncio.run(main())
    assert second is not first and second._client.is_closed
    assert not _default.REGISTRY._async  # nothing kept for finished loops


async def test_async_in_a_running_test_loop(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside an already running loop (pytest-asyncio's), the async call answers."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))
    answer = await shim.aquery_coupon_stock("1757", mch_id=MCH)
    assert answer["coupon_name"] == "满100减10"
    assert await _default._default_async_shim() is await _default._default_async_shim()


def test_a_loop_left_open_is_closed_at_exit(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that was never shut down: close_default_shims (the atexit hook) closes its shim."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(shim.aquery_coupon_stock("1757", mch_id=MCH))
        built = loop.run_until_complete(_default._default_async_shim())
        shim.close_default_shims()
        assert built._client.is_closed
    finally:
        loop.close()


def test_the_registry_forgets_shims_of_another_pid(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked without the at-fork hook (pid changed): the next lookup builds a new shim."""
    monkeypatch.setenv("COUPON_SHIM_CONFIG", str(config_path))
    before = shim.default_shim()
    monkeypatch.setattr(_default.REGISTRY, "_pid", os.getpid() + 1)
    after = shim.default_shim()
    assert after is not before
    before.close()
