"""How the library logs: silent unless the application asks.

Every logger the library uses comes from :func:`get_logger`. Each event is resolved when it is
logged:

- an application that **configured structlog** (``structlog.configure(...)``; the
  ``coupon-shim`` CLI does) gets the event through its own structlog pipeline, exactly as it
  would from ``structlog.get_logger("shim")``;
- otherwise the event goes to the **standard library** logger of the same name
  (``logging.getLogger("shim")``, a child of it for ``shim.config``), through structlog's
  stdlib integration (:func:`structlog.wrap_logger` over the stdlib logger, with
  ``structlog.stdlib.BoundLogger``). The library adds a :class:`logging.NullHandler` to
  ``"shim"`` as the logging HOWTO asks of libraries, so an application that configures
  nothing sees nothing (no "last resort" output on stderr either), and one that configures
  logging (``logging.basicConfig(level=logging.INFO)``, dictConfig, …) gets the events.

The stdlib record's ``msg`` is the event dict itself (a ``dict`` whose ``str()`` is a logfmt
line such as ``coupon_stock.query mch_id=10000098 route=v3 …``), with the ``_logger`` and
``_name`` attributes that :class:`structlog.stdlib.ProcessorFormatter` reads: a plain
formatter prints the logfmt line, a ``ProcessorFormatter`` (e.g. with ``JSONRenderer``) gets
every field. Context variables bound with ``structlog.contextvars`` (``request_id`` …) are
merged in, and :func:`shim._redaction.redact_secrets` always runs on this path.

The library never calls ``structlog.configure()``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from shim._redaction import redact_secrets

__all__ = ["LibraryLogger", "get_logger"]

_ROOT = "shim"
logging.getLogger(_ROOT).addHandler(logging.NullHandler())

_LOGFMT = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)


class _EventDict(dict):  # type: ignore[type-arg]
    """The event dict as a stdlib record's ``msg``: ``str()`` renders it as one logfmt line."""

    def __str__(self) -> str:
        fields = dict(self)
        event = fields.pop("event", "")
        rest = _LOGFMT(None, "", fields) if fields else ""
        return f"{event} {rest}".strip()


def _to_stdlib(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # Like structlog.stdlib.ProcessorFormatter.wrap_for_formatter, with a msg that also
    # reads well under a plain logging.Formatter.
    return (_EventDict(event_dict),), {"extra": {"_logger": logger, "_name": method_name}}


class LibraryLogger:
    """A logger that follows the application's choice at each event (see the module doc)."""

    __slots__ = ("_name", "_resolved", "_stdlib")

    def __init__(self, name: str) -> None:
        self._name = name
        self._stdlib: Any = structlog.wrap_logger(
            logging.getLogger(name),
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.contextvars.merge_contextvars,
                redact_secrets,
                _to_stdlib,
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
        ).bind()
        #: (structlog's configuration it was built from, the bound logger): see resolve()
        self._resolved: tuple[tuple[Any, ...], Any] | None = None

    @property
    def name(self) -> str:
        """The logger's name (``shim`` or a child of it)."""
        return self._name

    def resolve(self) -> Any:
        """The concrete bound logger that the next event goes to.

        Under a structlog configuration the bound logger is built once and kept until
        ``structlog.configure()`` changes the processors, context class, wrapper class or
        logger factory (building it costs more than a filtered event).
        """
        if not structlog.is_configured():
            return self._stdlib
        config = structlog.get_config()
        resolved = self._resolved
        if resolved is not None:
            key = resolved[0]
            if (
                config["processors"] is key[0]
                and config["context_class"] is key[1]
                and config["wrapper_class"] is key[2]
                and config["logger_factory"] is key[3]
            ):
                return resolved[1]
        log = structlog.get_logger(self._name).bind()
        self._resolved = (
            (
                config["processors"],
                config["context_class"],
                config["wrapper_class"],
                config["logger_factory"],
            ),
            log,
        )
        return log

    def enabled(self, level: int) -> bool:
        """Whether an event at ``level`` would be logged (False: build nothing)."""
        log = self.resolve()
        check = getattr(log, "is_enabled_for", None)
        return True if check is None else bool(check(level))

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        self.resolve().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self.resolve().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self.resolve().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self.resolve().error(event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        self.resolve().error(event, exc_info=True, **fields)


def get_logger(name: str = _ROOT) -> LibraryLogger:
    """The library's logger called ``name`` (``"shim"`` or ``"shim.<part>"``)."""
    return LibraryLogger(name)
