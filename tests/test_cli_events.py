"""The CLI's event chain renders exactly what structlog's stock processors render.

``configure_cli_logging`` keeps structlog's processor order (level, timestamp, exception,
redactor, renderer) but uses cheaper equals of ``TimeStamper(fmt="iso", utc=True)`` and
``JSONRenderer()``; these tests hold each to the stock processor, field for field and
character for character.
"""

from __future__ import annotations

import datetime
import io
import json
import json.encoder
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

# private: the CLI's structlog configuration and its two cheaper processors
from shim._events import _c_encoder, _OneEncoder, _UtcIsoStamper, configure_cli_logging

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _stock_stamp(ns: int) -> str:
    """What ``TimeStamper(fmt="iso", utc=True)`` writes at the instant ``ns`` (its
    ``datetime.now(timezone.utc)`` floors to the microsecond)."""
    moment = _EPOCH + datetime.timedelta(microseconds=ns // 1000)
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def clean_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize(
    "ns",
    [
        0,
        1,
        999,
        1_000,
        999_999_999,
        1_764_641_022_000_000_000,  # a whole second: isoformat leaves the fraction out
        1_764_641_022_000_001_000,
        1_764_641_022_123_456_789,
        1_764_641_022_999_999_999,
        1_709_164_800_000_000_000,  # 2024-02-29
        4_102_444_799_999_999_000,  # 2099-12-31T23:59:59.999999
    ],
)
def test_the_stamper_writes_what_timestamper_writes(
    ns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamper = _UtcIsoStamper()
    for instant in (ns, ns + 1_000, ns):  # the same second again answers from its memo
        monkeypatch.setattr("time.time_ns", lambda instant=instant: instant)
        assert stamper(None, "info", {})["timestamp"] == _stock_stamp(instant)


def test_the_stamper_overwrites_a_timestamp_field_as_timestamper_does() -> None:
    stamped = _UtcIsoStamper()(None, "info", {"timestamp": "forged", "x": 1})
    assert list(stamped) == ["timestamp", "x"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamped["timestamp"])


def test_the_stamper_agrees_with_timestamper_now() -> None:
    stock = structlog.processors.TimeStamper(fmt="iso", utc=True)
    ours = _UtcIsoStamper()
    for _ in range(50):
        before = stock(None, "info", {})["timestamp"]
        mine = ours(None, "info", {})["timestamp"]
        after = stock(None, "info", {})["timestamp"]
        assert len(mine) in (len(before), len(before) - 7, len(before) + 7)  # ".ffffff" or not

        def parse(s: str) -> datetime.datetime:
            return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))

        assert parse(before) <= parse(mine) <= parse(after)


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class _Custom:
    def __structlog__(self) -> str:
        return "custom-form"


_EVENTS: list[dict[str, Any]] = [
    {"event": "coupon_stock.query", "mch_id": "10000098", "latency_ms": 0.282, "bucket": None},
    {"event": "x", "fallback": False, "attempts": 1, "unmapped": ["a", "b"], "n": 2**70},
    {"event": "中文", "text": 'é\u2028\x00"\\', "nested": {"a": [1, 2.5, {"b": None}]}},
    {"event": "floats", "nan": math.nan, "inf": math.inf, "neg": -math.inf, "tiny": 5e-324},
    {"event": "objects", "o": _Opaque(), "c": _Custom(), "t": (1, "two")},
    {"event": "keys", 1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
]


@pytest.mark.parametrize("event", _EVENTS, ids=lambda e: str(e["event"]))
def test_the_json_renderer_writes_what_json_renderer_writes(event: dict[str, Any]) -> None:
    stock = structlog.processors.JSONRenderer()
    ours = structlog.processors.JSONRenderer(serializer=_OneEncoder())
    for _ in range(2):  # the second call uses the kept encoder
        assert ours(None, "info", dict(event)) == stock(None, "info", dict(event))


def test_the_direct_c_encoder_is_used_and_writes_what_encode_writes() -> None:
    """On CPython the serializer calls the C encoder directly; its output is the stdlib
    ``encode``'s on every event above, a circular event still raises as ``json.dumps`` does,
    and the call after that failure is clean (a fresh circular-reference memo per call)."""
    assert (json.encoder.c_make_encoder is None) == (_c_encoder({"default": repr}) is None)
    encode = _c_encoder({"default": repr})
    if encode is None:
        pytest.skip("this interpreter has no C JSON encoder")
    for event in _EVENTS:
        assert encode(dict(event)) == json.JSONEncoder(default=repr).encode(event)
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular"):
        encode(looped)
    shared = {"x": 1}
    assert encode({"a": shared, "b": shared}) == '{"a": {"x": 1}, "b": {"x": 1}}'
    assert _c_encoder({"default": repr, "sort_keys": True}) is None  # other options: stdlib


def test_the_json_renderer_keeps_one_encoder_per_set_of_options() -> None:
    dumps = _OneEncoder()
    assert dumps({"a": [1, 2]}, default=repr) == json.dumps({"a": [1, 2]}, default=repr)
    assert dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a": 2, "b": 1}'
    assert dumps({"a": "é"}, ensure_ascii=False) == '{"a": "é"}'
    with pytest.raises(ValueError, match="Circular"):
        looped: list[Any] = []
        looped.append(looped)
        dumps(looped)
    assert dumps([1], default=repr) == "[1]"  # a failed call leaves nothing behind


def _stock_chain(stream: io.StringIO) -> None:
    """The CLI's chain as it was, from structlog's stock processors."""
    from shim._redaction import redact_secrets  # private: the one redactor

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _emit(log: Any) -> None:
    log.info("coupon_stock.query", mch_id="10000098", route="v3", bucket=None, latency_ms=0.5)
    log.warning("w", v2_key="k" * 32, note="Authorization: WECHATPAY2-SHA256-RSA2048 x=1")
    log.info("nested", detail={"paySign": "s", "ok": ["<sign>abc</sign>", b"bytes"]})
    try:
        raise ValueError("sign=abcdefgh in a message")
    except ValueError:
        log.error("failed", exc_info=True)
    log.debug("dropped at INFO")


def _lines(configure: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    configure(stream)
    _emit(structlog.get_logger("shim"))
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("clean_structlog")
def test_the_cli_chain_renders_what_the_stock_chain_renders() -> None:
    """Same events, same fields in the same order, same values (the timestamps apart),
    every secret redacted, the exception rendered and redacted."""
    ours = _lines(lambda s: configure_cli_logging("json", stream=s, level=logging.INFO))
    stock = _lines(_stock_chain)
    assert len(ours) == len(stock) == 4
    for mine, theirs in zip(ours, stock, strict=True):
        assert list(mine) == list(theirs)
        mine.pop("timestamp"), theirs.pop("timestamp")
        assert mine == theirs
    text = json.dumps(ours)
    for secret in ("k" * 32, "WECHATPAY2", "abcdefgh", '"s"', "<sign>abc"):
        assert secret not in text
