"""Reloads off the call path, the guard against empty or half-written files, key checks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from shim import ConfigError, CouponStockShim, LiveConfig, ShimError, load_config

# private: the live config's internals
from shim import _live as live_module

# private: secret and key loading, tested directly
from shim import _secrets as secrets_module
from shim.sandbox import Emulator, SandboxState
from tests.conftest import HMAC_MCH, INPROCESS_URL, MD5_MCH
from tests.wait import wait_until


def config_text(state: SandboxState, folder: Path, **replace: str) -> str:
    scratch = state.write_config(
        folder / "scratch.toml", v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL
    )
    text = scratch.read_text(encoding="utf-8")
    scratch.unlink()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def settled(path: Path) -> None:
    """Age the file's mtime past the settle time (an edit made a while ago)."""
    stamp = time.time_ns() - 10_000_000_000
    os.utime(path, ns=(stamp, stamp))


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "coupon_shim.config_reload_failed"]


@pytest.fixture
def live_file(sandbox_state: SandboxState, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "shim.toml"
    text = config_text(sandbox_state, tmp_path)
    path.write_text(text, encoding="utf-8")
    settled(path)
    return path, text


def test_an_empty_file_keeps_the_last_good_config(live_file: tuple[Path, str]) -> None:
    """An empty (truncated) file is refused with a warning that says why."""
    path, _ = live_file
    live = LiveConfig(path, env={}, watch=False)
    good = live.current()
    path.write_text("", encoding="utf-8")
    settled(path)
    with capture_logs() as logs:
        assert live.check() is False
    assert live.current() is good
    (warning,) = failures(logs)
    assert warning["log_level"] == "warning" and "empty" in warning["error"]


def test_a_file_without_merchants_keeps_the_last_good_config(
    live_file: tuple[Path, str],
) -> None:
    """A file that parses but would drop every merchant (a partial write) is refused."""
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    good = live.current()
    path.write_text(text.split("[merchants.", 1)[0], encoding="utf-8")
    settled(path)
    with capture_logs() as logs:
        assert live.check() is False
    assert live.current() is good and len(good.merchants) == 2
    (warning,) = failures(logs)
    assert "no merchants" in warning["error"]


def test_a_file_cut_in_the_middle_of_a_value_is_refused(live_file: tuple[Path, str]) -> None:
    """Half a file that does not parse: refused, last good kept."""
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    good = live.current()
    path.write_text(text[: len(text) // 2 + 7], encoding="utf-8")
    settled(path)
    with capture_logs() as logs:
        assert live.check() is False
    assert live.current() is good and failures(logs)


def test_a_file_edited_in_place_is_read_only_once_it_has_settled(
    live_file: tuple[Path, str],
) -> None:
    """A fresh in-place edit waits SETTLE_S (wall clock), then applies; nothing is logged."""
    path, text = live_file
    now = [time.time()]
    live = LiveConfig(path, env={}, watch=False, wall=lambda: now[0])
    with path.open("r+", encoding="utf-8") as f:  # in place: same inode
        f.write(text.replace('mode = "legacy"', 'mode = "v3"   '))
    stamp = int(now[0] * 1e9)
    os.utime(path, ns=(stamp, stamp))
    with capture_logs() as logs:
        assert live.check() is False  # still being written, as far as anyone can tell
        assert live.current().routing.mode == "legacy"
        now[0] += live_module.SETTLE_S + 0.01
        assert live.check() is True
    assert live.current().routing.mode == "v3"
    assert not failures(logs)


def test_an_atomic_replace_applies_at_once(live_file: tuple[Path, str]) -> None:
    """Written to a temporary file and os.replace()d (a new inode): no settle wait."""
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text.replace('mode = "legacy"', 'mode = "v3"'), encoding="utf-8")
    os.replace(tmp, path)
    assert live.check() is True and live.current().routing.mode == "v3"


def test_a_file_that_changes_while_it_is_read_is_not_used(
    live_file: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Size or mtime moving during the read: the read is thrown away and retried later."""
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    path.write_text(text.replace('mode = "legacy"', 'mode = "v3"'), encoding="utf-8")
    settled(path)
    real_read = Path.read_bytes

    def read_while_writing(self: Path) -> bytes:
        data = real_read(self)
        if self == path:
            with path.open("a", encoding="utf-8") as f:
                f.write("\n# still writing\n")
        return data

    monkeypatch.setattr(Path, "read_bytes", read_while_writing)
    assert live.check() is False and live.current().routing.mode == "legacy"
    monkeypatch.setattr(Path, "read_bytes", real_read)
    settled(path)
    assert live.check() is True and live.current().routing.mode == "v3"


def test_reloads_run_on_the_watcher_thread_not_the_callers(
    live_file: tuple[Path, str],
) -> None:
    """With watching on, a change is picked up in the background; current() never reloads."""
    path, text = live_file
    path.write_text(text.replace("check_interval_s = 2.0", "check_interval_s = 0.02"))
    settled(path)
    live = LiveConfig(path, env={})
    threads: list[str] = []
    live.on_reload(lambda old, new: threads.append(threading.current_thread().name))
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            text.replace("check_interval_s = 2.0", "check_interval_s = 0.02").replace(
                'mode = "legacy"', 'mode = "v3"'
            )
        )
        os.replace(tmp, path)
        wait_until(
            lambda: live.current().routing.mode == "v3", "the reload was never seen", timeout=5
        )
        assert threads == ["coupon-shim-config-watcher"]
    finally:
        live.close()


def test_in_place_edits_under_load_fail_no_call(
    sandbox_state: SandboxState, emulator: Emulator, tmp_path: Path
) -> None:
    """Many in-place rewrites (truncate, then written in pieces) while calls run: 0 failures."""
    path = tmp_path / "shim.toml"
    base = config_text(
        sandbox_state, tmp_path, **{"check_interval_s = 2.0": "check_interval_s = 0.005"}
    )
    modes = [base.replace('mode = "legacy"', f'mode = "{m}"') for m in ("legacy", "v3")]
    path.write_text(modes[0], encoding="utf-8")
    settled(path)
    shim = CouponStockShim.from_file(path, transport=emulator.mock_transport(), env={})
    failed: list[BaseException] = []
    calls = [0]
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                answer = shim.query_coupon_stock("1757", mch_id=MD5_MCH)
                assert answer["result_code"] == "SUCCESS"
                calls[0] += 1
            except (ShimError, AssertionError) as exc:
                failed.append(exc)

    workers = [threading.Thread(target=caller) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for i in range(50):
            text = modes[i % 2]
            with path.open("w", encoding="utf-8") as f:  # truncates: the file is empty now
                for start in range(0, len(text), 400):
                    f.write(text[start : start + 400])
                    f.flush()
                    time.sleep(0.001)
            time.sleep(0.01)
        final = modes[49 % 2]
        assert final.count('mode = "v3"') == 1
        wait_until(
            lambda: shim.config.routing.mode == "v3",
            "the last rewrite was never loaded",
            timeout=5,
            interval=0.02,
        )
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        shim.close()
    assert failed == []
    assert calls[0] > 0 and shim.config.routing.mode == "v3"
    assert len(shim.config.merchants) == 2


def test_breakers_follow_a_reload_and_removed_merchants_lose_theirs(
    live_file: tuple[Path, str], emulator: Emulator
) -> None:
    """A reload drops the breakers of merchants it removed and retunes the others."""
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    shim = CouponStockShim(live, transport=emulator.mock_transport(), env={})
    try:
        kept = shim.breaker("legacy", MD5_MCH)
        shim.breaker("legacy", HMAC_MCH)
        without = text.split(f'[merchants."{HMAC_MCH}"]', 1)[0]
        assert f'[merchants."{MD5_MCH}"]' in without
        path.write_text(
            without.replace("failure_threshold = 5", "failure_threshold = 9"), encoding="utf-8"
        )
        settled(path)
        assert live.check()
        assert set(shim._breakers) == {("legacy", MD5_MCH)}
        assert shim.breaker("legacy", MD5_MCH) is kept and kept.cfg.failure_threshold == 9
    finally:
        shim.close()


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_each_distinct_key_is_parsed_once_however_many_merchants_use_it(
    sandbox_state: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty merchants sharing one key file, loaded twice: the key is checked once."""
    secrets_module._PARSED.clear()
    seen: list[bytes] = []
    real = secrets_module.check_private_key

    def counting(pem: bytes) -> Any:
        seen.append(pem)
        return real(pem)

    monkeypatch.setattr(secrets_module, "check_private_key", counting)
    text = config_text(sandbox_state, tmp_path)
    head, merchants = text.split(f'[merchants."{MD5_MCH}"]', 1)
    block = merchants.split("[merchants.", 1)[0]
    many = head + "".join(f'[merchants."{20000000 + i}"]' + block for i in range(50))
    path = tmp_path / "many.toml"
    path.write_text(many, encoding="utf-8")
    first = load_config(path, env={})
    second = load_config(path, env={})
    assert len(first.merchants) == 50 and len(second.merchants) == 50
    assert len(seen) == 1
    assert first.merchants["20000000"].v3 is not None
    assert first.merchants["20000000"].v3.private_key is second.merchants["20000049"].v3.private_key  # type: ignore[union-attr]


def test_an_inconsistent_private_key_is_refused(
    sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """A PEM whose CRT parameters do not match its modulus is a ConfigError, not a key."""
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    bad = rsa.RSAPrivateNumbers(
        p=good.p,
        q=good.q,
        d=good.d,
        dmp1=good.dmp1 ^ 2,  # broken
        dmq1=good.dmq1,
        iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    key_file = tmp_path / "bad.pem"
    key_file.write_text(_pem(bad), encoding="utf-8")
    text = config_text(sandbox_state, tmp_path)
    lines = []
    in_md5 = False
    for line in text.splitlines():
        if line.startswith("[merchants."):
            in_md5 = MD5_MCH in line
        if in_md5 and line.startswith("v3_private_key"):
            line = f'v3_private_key = "file:{key_file}"'
        lines.append(line)
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "v3_private_key" in str(info.value)
    assert str(good.d) not in str(info.value)


def test_the_readme_atomic_write_is_picked_up_at_once(live_file: tuple[Path, str]) -> None:
    """The README's write_config() (temp file + os.replace) applies at the very next check."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "def write_config" in b
    ]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    path, text = live_file
    live = LiveConfig(path, env={}, watch=False)
    namespace["write_config"](str(path), text.replace('mode = "legacy"', 'mode = "v3"'))
    assert live.check() is True and live.current().routing.mode == "v3"
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []
