"""Structured events: their names and the CLI's structlog configuration.

The library logs through its own loggers (:mod:`shim._logs`) and never configures structlog
for the application. One ``coupon_stock.query`` event is emitted per call (for a shadowed call,
once the comparison is done, so the event carries the mismatch fields). Every event goes
through the one redactor, :func:`shim._redaction.redact_secrets`.
"""

from __future__ import annotations

import sys
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
