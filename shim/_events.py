"""Structured events: their names and the CLI's structlog configuration.

The library logs through its own loggers (:mod:`shim._logs`) and never configures structlog
for the application. One ``coupon_stock.query`` event is emitted per call (for a shadowed call,
once the comparison is done, so the event carries the mismatch fields). Every event goes
through the one redactor, :func:`shim._redaction.redact_secrets`.
"""

from __future__ import annotations

import datetime
import json
import json.encoder
import math
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from shim._redaction import redact_secrets

__all__ = [
    "CREDENTIALS_REFUSED_EVENT",
    "EVENT",
    "configure_cli_logging",
]

EVENT = "coupon_stock.query"
#: WARNING: v3 refused the shim's own credentials (HTTP 401 / SIGN_ERROR) for a merchant.
CREDENTIALS_REFUSED_EVENT = "coupon_shim.v3_credentials_refused"


class _UtcIsoStamper:
    """``structlog.processors.TimeStamper(fmt="iso", utc=True)``, to the character: the
    ``timestamp`` field as ``datetime.now(timezone.utc).isoformat()`` with ``Z`` for
    ``+00:00`` (microseconds floored, left out when zero), with the date and time of day
    formatted once per second instead of once per event."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        #: (the Unix second, its ISO date and time of day): one attribute, so that threads
        #: never see the second of one pair with the text of another.
        self._second: tuple[int, str] = (-1, "")

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        known, text = self._second
        if second != known:
            moment = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
            text = moment.replace(tzinfo=None).isoformat()
            self._second = (second, text)
        us = ns // 1000
        event_dict["timestamp"] = f"{text}.{us:06d}Z" if us else f"{text}Z"
        return event_dict


def _c_encoder(options: dict[str, Any]) -> Callable[[Any], str] | None:
    """``json.JSONEncoder(**options).encode`` for dicts, calling the C encoder the stdlib's
    ``encode`` builds per call directly (a fresh circular-reference memo each call, as
    there); None unless it is there and writes what ``encode`` writes on a probe event."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or set(options) - {"default"}:
        return None
    stdlib = json.JSONEncoder(**options)
    fallback = stdlib.default
    ascii_text = json.encoder.encode_basestring_ascii

    def encode(obj: Any) -> str:
        if type(obj) is not dict:
            return stdlib.encode(obj)
        c = make({}, fallback, ascii_text, None, ": ", ", ", False, False, True)
        return "".join(c(obj, 0))

    probe = {"event": 'é\n"', "n": [1, -2.5, None, True], "x": math.inf, "o": {"k": object}}
    try:
        if encode(probe) == stdlib.encode(probe):
            return encode
    except Exception:  # noqa: S110 - an interpreter whose C encoder differs: the stdlib path
        pass
    return None


class _OneEncoder:
    """``json.dumps`` for ``JSONRenderer(serializer=...)``: the same output, from one
    :class:`json.JSONEncoder` kept per set of options (``json.dumps`` builds a new one on
    every call that passes ``default``, as ``JSONRenderer`` does), whose C encoder is
    called directly when the interpreter has it (see :func:`_c_encoder`)."""

    __slots__ = ("_encoder",)

    def __init__(self) -> None:
        self._encoder: tuple[dict[str, Any], Callable[[Any], str]] | None = None

    def __call__(self, obj: Any, **options: Any) -> str:
        kept = self._encoder
        if kept is None or kept[0] != options:
            encode = _c_encoder(options) or json.JSONEncoder(**options).encode
            kept = (options, encode)
            self._encoder = kept
        return kept[1](obj)


def configure_cli_logging(
    fmt: str = "console", stream: TextIO | None = None, level: int = 20
) -> None:
    """Configure structlog for the CLI (never called by the library itself).

    Args:
        fmt: ``"json"`` or ``"console"``.
        stream: where events go (default stderr, so stdout stays clean for answers).
        level: the minimum level (``logging`` numbers).
    """
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_OneEncoder())
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _UtcIsoStamper(),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # one write (and flush) per event: the line and its newline together
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
