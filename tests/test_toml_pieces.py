"""A config document decoded merchant by merchant is exactly one ``tomllib.loads`` of it.

The reload path parses a big file in pieces (so that a background reload can let other
threads run, and re-parses only the merchants whose text changed). These tests hold it to
the whole-document parse: the same result (values, types, key order), the same errors with
the same line and column, for every error case of the config tests, hand-made documents
that try to fool the split, and generated ones.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import tomllib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import ConfigError, LiveConfig, load_config

# private: the live config's pause between pieces, patched to count
from shim import _live as live_module

# private: the piecewise decoder, tested against tomllib directly
from shim import _toml as toml_module
from shim.sandbox import SandboxState
from tests import test_config
from tests.conftest import INPROCESS_URL


def whole(text: str) -> tuple[str, Any]:
    """What one ``tomllib.loads`` gives: ("ok", repr of the data) or ("error", message)."""
    try:
        return "ok", _shape(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        return "error", str(exc)


def pieces(text: str, memo: toml_module.TomlPieces | None = None) -> tuple[str, Any]:
    try:
        data = memo.loads(text) if memo is not None else toml_module._loads(text, None, None)[0]
    except tomllib.TOMLDecodeError as exc:
        return "error", str(exc)
    return "ok", _shape(data)


def _shape(value: Any) -> Any:
    """Values with their types and key order (``nan`` compares equal to itself here)."""
    if isinstance(value, dict):
        return ("dict", [(k, _shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_shape(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value).__name__, repr(value))


def old_decode(raw: bytes, *, source: str, empty_ok: bool = True) -> Any:
    """The decoder as it was before the pieces (one tomllib.loads), for error equivalence."""
    if not empty_ok and not raw.strip():
        raise ConfigError("the file is empty (a write in progress?)", source=source)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None


M1 = '[merchants."1"]\nappid = "a"\n'
M2 = '[merchants."2"]\nappid = "b"\n'

TRICKY = [
    "",
    "\n\n",
    M1,
    M1 + M2,
    "[a]\nx = 1\n" + M1 + M2,
    M1 + M1,  # the same merchant twice
    M1 + "[merchants.1]\nappid = 'c'\n",  # the same, spelled bare
    M1 + "[merchants.'1']\nappid = 'c'\n",  # the same, literal string
    "merchants = {}\n" + M1,  # an inline table cannot be extended
    "merchants = 1\n" + M1,
    "merchants.x = 1\n" + M1,  # a dotted key defines the table
    "[merchants]\n" + M1 + "[merchants]\n",  # a table declared twice
    "[merchants]\n" + M1,
    "[[merchants]]\n" + M1,
    M1 + "[[merchants]]\n",
    M1 + '[[merchants."1".list]]\nx = 1\n[[merchants."1".list]]\nx = 2\n' + M2,
    'k = """\n[merchants."1"]\n"""\n' + M2,  # a header line inside a multi-line string
    M1 + 'k = """\n[merchants."2"]\n"""\n',
    M1 + "k = '''\n[merchants.\"2\"]\ny = 1'''\n",
    M1 + "k = [\n[1]]\n" + M2,  # a line starting with [ inside an array
    M1 + 'k = [\n"a",\n' + M2 + "]\n",
    M1 + '[merchants."1".x]\na = 1\n' + M2 + '[merchants."1".y]\nb = 2\n',
    M1 + '[merchants."1".x]\na = 1\n' + M2 + '[merchants."1".x]\nb = 2\n',
    M1 + '[merchants."2".x]\na = 1\n' + M2,  # a sub-table before its merchant
    M1 + '[routing]\nmode = "v3"\n',  # another table after the merchants
    M1 + '[routing]\nmode = "v3"\n' + M2,
    M1 + '[routing]\nmode = "v3"\n[routing]\nmode = "v3"\n',
    '[merchants."1"] # a comment\r\nappid = "x"\r\n[merchants."2"]\r\nappid = "y"',
    M1 + 'appid = "dup"\n',
    M1 + M2 + "appid =\n",  # an error in a later piece: its line is the file's
    M1 + M2 + '[merchants."3"]]\n',
    M1 + " " + M2,  # an indented header
    M1 + '\t[merchants."1".z]\n' + M2,
    M1 + '"merchants" = 1\n' + M2,  # a key named merchants inside a merchant
    M1 + 'a.b = 1\n[merchants."1".a]\n',
    M1 + 'a.b = 1\n[merchants."1".a.c]\n',
    M1 + "x = 1\r" + M2,  # a lone carriage return
    "\ufeff" + M1,
    M1 + "x = 1979-05-27T07:32:00Z\ny = nan\nz = [1, {a = 2}]\nw = 0x1F\nv = 1e3\n" + M2,
    M1 + '[merchants."1".stock_creator_mchids]\n"9" = "1"\n' + M2,
    '[merchants."1" ]\nappid = "a"\n' + M2,
    '[merchants . "1"]\nappid = "a"\n' + M2,
    M1 + '[ merchants."1".x ]\n' + M2,
    M1 + '[merchants."01"]\n' + M2,
    M1.rstrip("\n") + M2,  # no newline between: one invalid line
    M1 + '# [merchants."2"]\n' + M2,
    M1 + M2 + '[merchants."é"]\n',
    M1 + '[merchants."1\\u0032"]\n' + M2,  # an escape spelling "12"
    M1 + '[merchants."1\\u0032"]\n[merchants."12"]\n',  # and the same id again
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_tricky_documents_decode_as_one_parse(text: str) -> None:
    """Documents built to fool a split decode exactly as one parse, or fail as it fails."""
    assert pieces(text) == whole(text)
    assert pieces(text, toml_module.TomlPieces()) == whole(text)


def _config_test_documents() -> list[str]:
    cases = [m for m in test_config.test_errors_name_the_file_and_key.pytestmark]
    texts = [text for text, _ in cases[0].args[1]]
    texts += [test_config.MERCHANT, "[upstream\n", "[reload]\ncheck_interval_s = 1\n"]
    return texts


def _repo_documents() -> list[str]:
    root = Path(__file__).resolve().parents[1]
    found = [root / "mappings", root / "examples", root / "tests", root / "shim"]
    files = sorted(p for d in found if d.is_dir() for p in d.rglob("*.toml"))
    return [p.read_text(encoding="utf-8") for p in files]


@pytest.mark.parametrize("text", _config_test_documents())
def test_every_config_test_case_decodes_and_fails_the_same(text: str, tmp_path: Path) -> None:
    """Every document of the config tests, alone, doubled with other merchants around it and
    with a broken merchant after it: the same data or the same ConfigError as before."""
    variants = [
        text,
        M1 + text,
        text + M2,
        M1 + text + M2 + "x = \n",
        text.replace('[merchants."10000098"]', '[merchants."10000099"]') + text,
    ]
    for variant in variants:
        assert pieces(variant) == whole(variant)
        raw = variant.encode()
        for empty_ok in (True, False):
            try:
                expected: Any = ("ok", _shape(old_decode(raw, source="s.toml", empty_ok=empty_ok)))
            except ConfigError as exc:
                expected = ("error", str(exc), exc.key)
            try:
                got: Any = (
                    "ok",
                    _shape(toml_module.decode_toml(raw, source="s.toml", empty_ok=empty_ok)),
                )
            except ConfigError as exc:
                got = ("error", str(exc), exc.key)
            assert got == expected


def test_the_repository_documents_and_a_sandbox_config_decode_the_same(
    sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """Every TOML file of the repository, and a sandbox config of 50 merchants."""
    docs = _repo_documents()
    assert docs
    base = sandbox_state.write_config(
        tmp_path / "base.toml", v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL
    ).read_text(encoding="utf-8")
    head, sep, rest = base.partition("[merchants.")
    block = sep + rest
    many = head + "".join(block.replace('[merchants."', f'[merchants."{i:02d}') for i in range(50))
    for text in [*docs, base, many]:
        assert pieces(text) == whole(text)
    split = toml_module._split(many, None)
    assert split is not None and len(split[1]) > 50  # the big one is decoded in pieces


def test_invalid_utf8_is_the_same_error() -> None:
    raw = M1.encode() + b"x = '\xff'\n"
    with pytest.raises(ConfigError) as new:
        toml_module.decode_toml(raw, source="s.toml")
    with pytest.raises(ConfigError) as old:
        old_decode(raw, source="s.toml")
    assert str(new.value) == str(old.value)


_KEY = st.sampled_from(["a", "b", "appid", "merchants", '"1"', "x.y"])
_VALUE = st.sampled_from(["1", '"s"', "[1, 2]", "[\n1,\n]", "{ q = 1 }", '"""\nm\n"""', "nan"])
_LINE = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}\n", _KEY, _VALUE),
    st.sampled_from(
        [
            '[merchants."1"]\n',
            '[merchants."2"]\n',
            "[merchants.3]\n",
            '[merchants."1".sub]\n',
            '[merchants."2".sub]\n',
            '[[merchants."1".arr]]\n',
            "[merchants]\n",
            "[[merchants]]\n",
            "[routing]\n",
            '  [merchants."2"]\n',
            'k = """\n',
            '"""\n',
            "k = [\n",
            "]\n",
            "[1]]\n",
            '# [merchants."4"]\n',
            "\n",
            "x = \n",
        ]
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, max_size=14))
def test_generated_documents_decode_as_one_parse(lines: list[str]) -> None:
    """Random mixes of merchant headers, sub-tables, arrays of tables, multi-line values."""
    text = "".join(lines)
    assert pieces(text) == whole(text)


def test_a_second_decode_parses_only_the_changed_merchants(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo: unchanged merchants are not parsed again; the tables handed out are copies."""
    text = "[shadow]\nsample_ratio = 1.0\n" + "".join(
        f'[merchants."{i}"]\nappid = "a{i}"\nlist = [1, {{ k = [2] }}]\n' for i in range(20)
    )
    memo = toml_module.TomlPieces()
    first = memo.loads(text)
    parsed: list[str] = []
    real = tomllib.loads

    def counting(s: str, **kw: Any) -> dict[str, Any]:
        parsed.append(s)
        return real(s, **kw)

    monkeypatch.setattr(tomllib, "loads", counting)
    first["merchants"]["3"]["list"][1]["k"].append(99)  # a caller changing its copy
    changed = text.replace('appid = "a7"', 'appid = "seven"').replace("1.0", "0.5")
    second = memo.loads(changed)
    assert second == real(changed)  # the caller's edit did not leak into the memo
    assert len(parsed) == 2  # the head and merchant 7
    assert second["merchants"]["7"]["appid"] == "seven"
    assert second["merchants"]["3"] is not first["merchants"]["3"]
    parsed.clear()
    assert memo.loads(changed) == real(changed)
    assert len(parsed) == 1  # the head only


def test_a_failed_decode_keeps_the_memo() -> None:
    memo = toml_module.TomlPieces()
    text = M1 + M2
    memo.loads(text)
    with pytest.raises(tomllib.TOMLDecodeError):
        memo.loads(text + "x = \n")
    assert memo.loads(text) == tomllib.loads(text)


# --------------------------------------------------------------------------- the reload


def _many(state: SandboxState, folder: Path, n: int) -> Path:
    base = state.write_config(
        folder / "base.toml", v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL
    ).read_text(encoding="utf-8")
    head, sep, rest = base.partition("[merchants.")
    first, *_ = (sep + rest).split("\n\n[merchants.")
    mch = first.split('"')[1]
    blocks = [first.replace(mch, f"{30_000_000 + i}", 1) + "\n\n" for i in range(n)]
    path = folder / "shim.toml"
    path.write_text(head + sep + rest + "\n" + "".join(blocks), encoding="utf-8")
    return path


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def test_a_reload_pauses_between_pieces_and_builds_what_a_load_builds(
    sandbox_state: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload lets other threads run between merchants (it sleeps on the reloading thread)
    and ends with the snapshot a fresh load of the file gives; unchanged merchants keep their
    objects."""
    path = _many(sandbox_state, tmp_path, 60)
    live = LiveConfig(path, env={}, watch=False)
    before = live.current()
    naps: list[float] = []
    real_sleep = time.sleep

    def nap(seconds: float) -> None:
        naps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(live_module, "PAUSE_EVERY_S", 0.0)
    monkeypatch.setattr(live_module.time, "sleep", nap)
    text = path.read_text(encoding="utf-8")
    _replace(path, text.replace('appid = "wx', 'appid = "wy', 1).replace("1.0", "0.5", 1))
    assert live.check() is True
    monkeypatch.setattr(live_module.time, "sleep", real_sleep)
    after = live.current()
    assert len(naps) >= 3 * 60 and set(naps) == {live_module.PAUSE_S}
    fresh = load_config(path, env={})
    assert after.merchants.keys() == fresh.merchants.keys()
    for mch_id, merchant in after.merchants.items():
        assert merchant == fresh.merchants[mch_id]
    changed = [m for m in after.merchants if after.merchants[m] is not before.merchants[m]]
    assert len(changed) == 1
    for name in ("upstream", "retry", "breaker", "routing", "shadow", "cache", "single_flight"):
        assert getattr(after, name) == getattr(fresh, name)
    live.close()


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key files the config tests' documents name."""
    folder = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "apiclient_key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "pub_key.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (folder / "v2_key").write_text(test_config.V2_KEY + "\n")
    return folder


@pytest.mark.parametrize("text", _config_test_documents()[:-3])
def test_a_reload_refuses_what_a_load_refuses_with_the_same_message(
    text: str, keydir: Path
) -> None:
    """Each broken file of the config tests, as a reload: the old snapshot stays and the
    refusal says exactly what ``load_config`` says."""
    good = keydir / "live.toml"
    good.write_text(test_config.MERCHANT, encoding="utf-8")
    live = LiveConfig(good, env={}, watch=False)
    first = live.current()
    bad = keydir / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    expected = str(info.value).replace(str(bad), str(good))
    reasons: list[str] = []
    live.on_reload_failed(reasons.append)
    _replace(good, text)
    assert live.check() is False
    assert live.current() is first
    assert reasons == [expected]
    live.close()


def test_unchanged_merchants_keep_their_validated_drafts(
    keydir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given its decoder, validation reuses the draft of a merchant whose text did not change
    (the same value validation builds again), and only for the document that decoder made."""
    block = test_config.MERCHANT.strip() + "\n"
    text = "".join(block.replace("10000098", f"1000{i:04d}") for i in range(12))
    memo = toml_module.TomlPieces()
    first = toml_module.parse_document(memo.loads(text), source="s.toml", pieces=memo)
    validated: list[str] = []
    real = toml_module._parse_merchant

    def counting(mch_id: str, table: Any, *, source: str) -> Any:
        validated.append(mch_id)
        return real(mch_id, table, source=source)

    monkeypatch.setattr(toml_module, "_parse_merchant", counting)
    changed = text.replace(
        'appid = "wx5edab3bdfba3dc1c"\nv2_key = "file:v2_key"\n'
        'v3_private_key = "file:apiclient_key.pem"\nv3_cert_serial = "5157',
        'appid = "wx0000000000000000"\nv2_key = "file:v2_key"\n'
        'v3_private_key = "file:apiclient_key.pem"\nv3_cert_serial = "5157',
        1,
    )
    second = toml_module.parse_document(memo.loads(changed), source="s.toml", pieces=memo)
    assert validated == ["10000000"]
    plain = toml_module.parse_document(tomllib.loads(changed), source="s.toml")
    assert second == plain
    assert second.merchants["10000000"].appid == "wx0000000000000000"
    for mch_id in list(first.merchants)[1:]:
        assert second.merchants[mch_id] is first.merchants[mch_id]
    validated.clear()
    other = tomllib.loads(changed)  # not the document the decoder made: validated afresh
    assert toml_module.parse_document(other, source="s.toml", pieces=memo) == plain
    assert len(validated) == 12
    # an invalid merchant in a reused decoder still fails exactly as before
    broken = changed.replace('appid = "wx0000000000000000"', 'appid = ""', 1)
    with pytest.raises(ConfigError) as new:
        toml_module.parse_document(memo.loads(broken), source="s.toml", pieces=memo)
    with pytest.raises(ConfigError) as old:
        toml_module.parse_document(tomllib.loads(broken), source="s.toml")
    assert (str(new.value), new.value.key) == (str(old.value), old.value.key)
