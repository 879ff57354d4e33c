"""The one validation helper every table reader uses: typed checks with the full dotted key.

Imports the private helper on purpose: it is internal, and the readers built on it
(config, routing, shadow, mapping) are tested through their public errors elsewhere.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shim import ConfigError

# private: the validation helper, tested directly
from shim._validate import (
    Invalid,
    Table,
    boolean,
    choice,
    integer,
    matching,
    number,
    percent_to_buckets,
    ratio,
    string_set,
    text,
)


def _config_error(call: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    return info.value


def test_a_table_reads_required_and_optional_keys_with_their_full_dotted_key() -> None:
    """A missing required key, a wrong type and an unknown key each name file and full key."""
    t = Table({"ttl_s": "soon", "extra": 1}, 'merchants."1230000109"', "shim.toml")
    assert t.read("absent", lambda v, k: v, default=7) == 7
    err = _config_error(lambda: t.read("appid", text))
    assert err.source == "shim.toml" and err.key == 'merchants."1230000109".appid'
    assert "is required" in str(err)
    err = _config_error(lambda: t.number("ttl_s", 0.0, minimum=0))
    assert err.key == 'merchants."1230000109".ttl_s' and "expected a number, got str" in str(err)
    err = _config_error(t.finish)
    assert err.key == 'merchants."1230000109".extra' and "unknown key" in str(err)


def test_a_boolean_is_never_a_number() -> None:
    """TOML true is not 1: typed readers and the checks refuse it."""
    t = Table({"attempts": True}, "retry", "shim.toml")
    err = _config_error(lambda: t.integer("attempts", 3, minimum=1))
    assert "got a boolean" in str(err) and err.key == "retry.attempts"
    for check in (
        lambda: integer(True, "k", minimum=0),
        lambda: number(True, "k"),
        lambda: ratio(True, "k"),
        lambda: percent_to_buckets(True, "k"),
    ):
        with pytest.raises(Invalid):
            check()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: number(0, "shadow.timeout_s", positive=True), "must be a finite number > 0"),
        (lambda: number(float("nan"), "k", minimum=0), "must be a number of at least 0"),
        (lambda: number(11, "k", minimum=0, maximum=10), "must be from 0 to 10"),
        (lambda: integer(0, "shadow.workers", minimum=1), "must be an integer >= 1, got 0"),
        (lambda: integer(9, "k", minimum=1, maximum=5), "must be an integer from 1 to 5"),
        (lambda: ratio(1.5, "k"), "must be from 0 to 1, got 1.5"),
        (lambda: percent_to_buckets(12.345, "k"), "must be a multiple of 0.01"),
        (lambda: percent_to_buckets(101, "k"), "must be from 0 to 100"),
        (lambda: choice("purple", {"legacy", "v3"}, "k"), "must be one of legacy | v3"),
        (lambda: boolean("yes", "k"), "must be true or false"),
        (lambda: text("", "k"), "must be a non-empty string"),
        (lambda: text("x" * 9, "k", "note", max_length=8), "note is longer than 8 characters"),
        (lambda: string_set("a,b", "k"), "must be a list of ids"),
        (lambda: string_set(["a", " "], "k"), "non-empty strings only"),
        (lambda: matching("a-b", re.compile(r"[a-z]+"), "k", "letters only"), "letters only"),
    ],
)
def test_each_check_says_what_was_expected(call: Any, message: str) -> None:
    """Range, enum, regex and type failures carry a message that says what is allowed."""
    with pytest.raises(Invalid) as info:
        call()
    assert message in info.value.message


def test_checks_return_the_typed_value() -> None:
    """What passes comes back typed (and stripped, for string sets)."""
    assert number(3, "k", positive=True) == 3.0
    assert percent_to_buckets(12.34, "k") == 1234
    assert string_set([" a ", "b", "a"], "k") == frozenset({"a", "b"})
    assert choice("v3", ("legacy", "v3"), "k") == "v3"
    assert Table({"mode": "v3"}, "routing", None).read("mode", lambda v, k: choice(v, {"v3"}, k))
