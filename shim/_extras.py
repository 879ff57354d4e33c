"""Optional features and the pyproject extra each one needs.

The library's own dependencies are what a call needs (``httpx``, ``wechatpayv3``,
``cryptography``, ``structlog``, ``xmltodict``). Everything else is an extra, imported only
where the feature that needs it starts: the emulator's ASGI app and server (``sandbox``), the
CLI's tables and demo (``cli``), the gateway (``gateway``), Prometheus metrics (``metrics``),
the HTML report (``report``), the wechatpy drop-in (``wechatpy``), OpenFeature flags
(``openfeature``).

:func:`require` turns a missing package into one :class:`MissingExtraError` that names the
feature, the missing package and the ``pip install`` line; the CLI shows it as one line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """A feature's optional dependencies are not installed.

    An :class:`ImportError`, so ``except ImportError`` keeps working; the message names the
    extra to install.

    Attributes:
        extra: the pyproject extra that provides the missing package.
        feature: what needed it (e.g. ``"the emulator's HTTP server"``).
    """

    def __init__(self, extra: str, feature: str, missing: str) -> None:
        super().__init__(
            f"needs the '{extra}' extra for {feature} ({missing} is not installed): "
            f"pip install 'coupon-shim[{extra}]'",
            name=missing,
        )
        self.extra = extra
        self.feature = feature


def require(extra: str, feature: str, *modules: str) -> list[ModuleType]:
    """Import ``modules`` or raise one clear :class:`MissingExtraError`.

    Args:
        extra: the pyproject extra that installs them.
        feature: what needs them, for the message.
        modules: the top-level modules to import.

    Returns:
        The imported modules, in order.

    Raises:
        MissingExtraError: one of them (or something it imports) is not installed.
    """
    found: list[ModuleType] = []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            raise MissingExtraError(extra, feature, (exc.name or name).split(".")[0]) from None
    return found
