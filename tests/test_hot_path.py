"""The hot path's shortcuts keep their guarantees: nonces, the resolved logger, redaction,
the fast v2 reader, reloads that keep unchanged merchants."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import LogCapture

from shim import LiveConfig, UpstreamError

# private: the fast v2 reader, held to the full parser
from shim._flatxml import read_flat

# private: the library logger, which must follow each structlog.configure()
from shim._logs import get_logger

# private: the facades' batched nonce source (no public handle)
from shim._nonces import pooled_nonce as new_nonce

# private: the redactor's shortcuts, checked against its full rules
from shim._redaction import _is_secret_name, _redact_all, is_secret_name, redact_text

# private: the full v2 XML parser, the fast reader's oracle
from shim._v2 import parse_xml
from shim.sandbox import SandboxState
from tests.conftest import HMAC_MCH, INPROCESS_URL, MD5_MCH


def test_nonces_are_unique_hex_across_refills() -> None:
    drawn = [new_nonce() for _ in range(1000)]  # several refills of the pool
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_never_reuses_the_parents_pooled_nonces() -> None:
    new_nonce()  # the pool now holds nonces the parent may still hand out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, ",".join(new_nonce() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_nonce() for _ in range(200)}
    assert len(child) == 50
    assert not child & parent


def test_the_resolved_logger_follows_each_structlog_configure() -> None:
    log = get_logger("shim")
    first, second = LogCapture(), LogCapture()
    try:
        structlog.configure(processors=[first])
        log.info("one")
        log.info("two")
        structlog.configure(processors=[second])
        log.info("three")
    finally:
        structlog.reset_defaults()
    assert [e["event"] for e in first.entries] == ["one", "two"]
    assert [e["event"] for e in second.entries] == ["three"]


def test_a_reload_keeps_unchanged_merchants_and_rebuilds_changed_ones(
    sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """Unchanged merchants stay the same objects (few new long-lived objects per reload);
    an edited table or a changed key file gives a new one."""
    path = sandbox_state.write_config(
        tmp_path / "shim.toml", v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL
    )
    text = path.read_text(encoding="utf-8")
    live = LiveConfig(path, env={}, watch=False)
    before = dict(live.current().merchants)
    assert MD5_MCH in before and HMAC_MCH in before

    def replace_file(new_text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new_text, encoding="utf-8")
        os.replace(tmp, path)
        assert live.check() is True

    replace_file(text.replace('mode = "legacy"', 'mode = "v3"'))
    after = live.current().merchants
    assert all(after[m] is before[m] for m in before)

    block = text.index(f'[merchants."{MD5_MCH}"]')
    appid = text.index("appid = ", block)
    edited = text[:appid] + 'appid = "wx0000000000000001"\n' + text[text.index("\n", appid) + 1 :]
    replace_file(edited)
    edited_snapshot = live.current().merchants
    assert edited_snapshot[MD5_MCH] is not before[MD5_MCH]
    assert edited_snapshot[MD5_MCH].appid == "wx0000000000000001"
    assert edited_snapshot[HMAC_MCH] is before[HMAC_MCH]

    # The same table, but the v2 key file it names now holds another key.
    ref = re.search(rf'\[merchants."{HMAC_MCH}"\][^\[]*?v2_key = "(file:[^"]+)"', edited)
    assert ref is not None
    own_key = tmp_path / "v2_key"
    own_key.write_text(before[HMAC_MCH].v2_key.reveal(), encoding="utf-8")
    pointed = edited.replace(ref.group(0), ref.group(0).replace(ref.group(1), "file:v2_key"))
    replace_file(pointed)
    same_key = live.current().merchants[HMAC_MCH]
    own_key.write_text("B" * 32, encoding="utf-8")
    replace_file(pointed + "\n")
    rotated = live.current().merchants[HMAC_MCH]
    assert rotated is not same_key
    assert rotated.v2_key.reveal() == "B" * 32


_PIECES = st.sampled_from(
    [
        "sign",
        "Sign",
        "paySign",
        "v2_key",
        "signature",
        "token",
        "pem",
        "WECHATPAY2-SHA256-RSA2048 ",
        "wechatpay2-sha256-rsa2048\t",
        "-----BEGIN PRIVATE KEY-----",
        "-----begin x-----",
        "-----END PRIVATE KEY-----",
        "<sign>",
        "</sign>",
        "<paySign>",
        "<KEY>",
        "=",
        ":",
        " : ",
        "'",
        '"',
        "&",
        "sign_type=MD5",
        "\u017fign",  # LATIN SMALL LETTER LONG S: IGNORECASE folds it to "s", lower() does not
        "\u212aey",  # KELVIN SIGN: folds to "k"
        "passwd",
        "credential",
        "authorization",
        "2026-12-02T01:13:42.585Z",
        "A" * 119,
        "B" * 121,
        "/+",
        "abc",
        " ",
        "\n",
    ]
)


@given(st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=12).map("".join))
@settings(max_examples=400, deadline=None)
def test_redact_text_shortcut_never_skips_a_match(text: str) -> None:
    """The one-search shortcut returns text unchanged only when no pattern would change it."""
    assert redact_text(text) == _redact_all(text)


@pytest.mark.parametrize(
    "text",
    [
        "\u017fign=abcdefgh",  # IGNORECASE folds U+017F to "s": the name is a secret name
        "x \u212aey: abcdefgh",  # and U+212A (KELVIN SIGN) to "k"
        "api_KEY = 'abcdefgh'",
        "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=1",
        "<Sign>ABC</Sign>",
        "-----BEGIN PRIVATE KEY-----abc",
        "x" * 10 + "A" * 120,
    ],
)
def test_redact_text_shortcut_keeps_each_kind_of_secret(text: str) -> None:
    """Each cheap pre-check in front of the one search lets its kind of secret through."""
    assert redact_text(text) == _redact_all(text) != text


def test_is_secret_name_memo_agrees_with_the_rule() -> None:
    names = ["sign", "sign_type", "paySign", "Wechatpay-Signature", "mch_id", "api_key", "x"]
    for _ in range(2):  # the second pass answers from the memo
        assert [is_secret_name(n) for n in names] == [_is_secret_name(n) for n in names]
    assert [is_secret_name(n) for n in names] == [True, False, True, True, False, True, False]


@given(st.text(alphabet="]>x <[!CDATA", max_size=16), st.text(alphabet="]>x <", max_size=6))
@settings(max_examples=400, deadline=None)
def test_the_fast_v2_reader_agrees_on_brackets_in_cdata(inside: str, after: str) -> None:
    """CDATA holding any mix of ``]`` and ``>`` (even a ``]]>`` that ends it early): the fast
    reader gives what the full parser gives, or steps aside."""
    doc = f"<xml><a><![CDATA[{inside}]]>{after}</a><b>1</b></xml>".encode()
    try:
        full: dict[str, str] | None = parse_xml(doc)
    except UpstreamError:
        full = None
    fast = read_flat(doc)
    assert fast is None or fast == full
    if "]]>" not in inside and not after:
        assert fast == {"a": inside.strip(), "b": "1"}
