"""Structured events and the secret redactor.

The library logs through ``structlog.get_logger("shim")`` and never configures structlog for
the application. One ``coupon_stock.query`` event is emitted per call (for a shadowed call,
once the comparison is done, so the event carries the mismatch fields).

:func:`redact_secrets` is a plain structlog processor: add it to your own processor chain
(the ``coupon-shim`` CLI always does) and no key, signature or Authorization header leaves
the process in an event, even one some other code logged by mistake.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["EVENT", "configure_cli_logging", "redact_secrets", "redact_text"]

EVENT = "coupon_stock.query"
REDACTED = "<redacted>"

_SECRET_KEY = re.compile(
    r"(^|_)(sign|signature|key|v2_key|private_key|secret|authorization|api_?key|password|token)$",
    re.IGNORECASE,
)
_PATTERNS = (
    # Authorization header values (v3)
    re.compile(r"WECHATPAY2-SHA256-RSA2048\s+[^\n]*", re.IGNORECASE),
    # PEM blocks
    re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.DOTALL),
    # signature="..." items and <sign>…</sign> elements
    re.compile(r'signature="[^"]*"', re.IGNORECASE),
    re.compile(r"<sign>.*?</sign>", re.IGNORECASE | re.DOTALL),
    # sign=HEX / key=VALUE inside a v2 sign string
    re.compile(r"(?<![a-z_])(sign|key)=[^&\s]+", re.IGNORECASE),
)


def redact_text(text: str) -> str:
    """Replace anything in ``text`` that looks like a key, a signature or an Authorization."""
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value) if len(value) > 8 else value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named keys and secret-looking text in every value."""
    for k in list(event_dict):
        v = event_dict[k]
        if _SECRET_KEY.search(k):
            event_dict[k] = REDACTED
        elif not isinstance(v, (int, float, bool)) and v is not None:
            event_dict[k] = _redact(v)
    return event_dict


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
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
