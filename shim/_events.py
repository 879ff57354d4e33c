"""Structured events and the secret redactor.

The library logs through ``structlog.get_logger("shim")`` and never configures structlog for
the application. One ``coupon_stock.query`` event is emitted per call (for a shadowed call,
once the comparison is done, so the event carries the mismatch fields).

:func:`redact_secrets` is a plain structlog processor: add it to your own processor chain
(the ``coupon-shim`` CLI always does) and no key, signature or Authorization header leaves
the process in an event, even one some other code logged by mistake.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from shim._redaction import REDACTED, is_secret_name, redact_text, redact_value

__all__ = [
    "CREDENTIALS_REFUSED_EVENT",
    "EVENT",
    "configure_cli_logging",
    "redact_secrets",
    "redact_text",
]

EVENT = "coupon_stock.query"
#: WARNING: v3 refused the shim's own credentials (HTTP 401 / SIGN_ERROR) for a merchant.
CREDENTIALS_REFUSED_EVENT = "coupon_shim.v3_credentials_refused"


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named keys and secret-looking text in every value.

    Values of secret-named keys (``sign``, ``paySign``, ``signature``, ``key``,
    ``authorization``, ``private_key``, … in any case) are replaced whole; every other value is
    scrubbed with :func:`shim._redaction.redact_value` (strings, bytes, lists, tuples, sets,
    nested mappings, and objects whose ``repr`` carries a secret).
    """
    for k in list(event_dict):
        v = event_dict[k]
        if is_secret_name(k):
            event_dict[k] = REDACTED
        elif not isinstance(v, (int, float, bool)) and v is not None:
            event_dict[k] = redact_value(v)
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
