"""OpenFeature flag source: drive the cutover from the flag system a team already runs.

The route mode comes from an OpenFeature string flag (``coupon-shim-route`` by default)
whose value is one of ``legacy``, ``shadow``, ``canary`` or ``v3``. Each evaluation carries
an :class:`openfeature.evaluation_context.EvaluationContext` with the routing key as
``targeting_key`` and ``mch_id`` / ``coupon_stock_id`` as attributes, so flagd, Unleash or
LaunchDarkly rules can target merchants and stocks. The value is passed to
:func:`shim._routing.decide` as ``flag_mode``; kill switch and force lists still win.

A flag evaluation never breaks a call: an evaluation error or a value that is not a mode gives
``None`` (the config file decides) and is counted in :attr:`OpenFeatureRouteSource.errors`.

Needs the ``openfeature`` extra: ``pip install 'coupon-shim[openfeature]'``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from shim._errors import ConfigError
from shim._routing import parse_mode, routing_key
from shim._values import DEFAULT_FLAG_KEY, Mode, RoutingConfig

if TYPE_CHECKING:
    from openfeature.client import OpenFeatureClient

__all__ = ["OpenFeatureRouteSource", "RouteFlags"]

_INSTALL_HINT: Final = (
    "the OpenFeature flag source needs the openfeature-sdk package: "
    "pip install 'coupon-shim[openfeature]'"
)


class OpenFeatureRouteSource:
    """Reads the route mode from an OpenFeature client.

    Args:
        client: an OpenFeature client; by default ``openfeature.api.get_client(domain)``,
            which uses whatever provider the application registered with the global API.
        flag_key: the string flag holding the mode.
        domain: the OpenFeature domain of the default client.

    Attributes:
        evaluations: flag evaluations attempted.
        errors: evaluations that gave no usable mode (provider error or invalid value).
        invalid: of those, evaluations that returned a value that is not a mode.

    Raises:
        ConfigError: ``openfeature-sdk`` is not installed (``key="routing.flag_source"``).
    """

    def __init__(
        self,
        client: OpenFeatureClient | None = None,
        *,
        flag_key: str = DEFAULT_FLAG_KEY,
        domain: str | None = None,
    ) -> None:
        try:
            from openfeature import api
            from openfeature.evaluation_context import EvaluationContext
        except ImportError:
            raise ConfigError(_INSTALL_HINT, key="routing.flag_source") from None
        self._context_type = EvaluationContext
        self._client: Any = client if client is not None else api.get_client(domain=domain)
        self.flag_key = flag_key
        self._lock = threading.Lock()
        self.evaluations = 0
        self.errors = 0
        self.invalid = 0

    def _context(self, mch_id: str, coupon_stock_id: str, routing_key: str) -> Any:
        return self._context_type(
            targeting_key=routing_key,
            attributes={"mch_id": mch_id, "coupon_stock_id": coupon_stock_id},
        )

    def _interpret(self, details: Any) -> Mode | None:
        value = getattr(details, "value", None)
        if getattr(details, "error_code", None):
            mode = None
            invalid = False
        elif isinstance(value, str):
            mode = parse_mode(value)
            invalid = mode is None
        else:
            mode = None
            invalid = True
        with self._lock:
            self.evaluations += 1
            if mode is None:
                self.errors += 1
                self.invalid += invalid
        return mode

    def _count_failure(self) -> None:
        with self._lock:
            self.evaluations += 1
            self.errors += 1

    def mode_for(self, mch_id: str, coupon_stock_id: str, routing_key: str) -> Mode | None:
        """Evaluate the flag for one call.

        Args:
            mch_id: the caller's merchant id (context attribute ``mch_id``).
            coupon_stock_id: the stock (context attribute ``coupon_stock_id``).
            routing_key: the sticky routing key (the context's ``targeting_key``).

        Returns:
            The mode, or None when the flag gave no valid mode (then the config decides).
            Never raises.
        """
        try:
            details = self._client.get_string_details(
                self.flag_key, "", self._context(mch_id, coupon_stock_id, routing_key)
            )
        except Exception:
            self._count_failure()
            return None
        return self._interpret(details)


class RouteFlags:
    """One shim's flag source, through its lifecycle.

    With ``routing.flag_source = "openfeature"`` each call asks the source for its mode. A
    source passed to the shim is used as it is; otherwise the shim builds its own on first
    use (reading ``routing.openfeature_flag``), and a reload that names another flag drops
    it, so the next call builds one that reads the new flag. With any other ``flag_source``
    the config decides and no source is asked (nor built).

    Args:
        source: the application's source, or None to build one when needed.
    """

    __slots__ = ("_owned", "_source")

    def __init__(self, source: OpenFeatureRouteSource | None = None) -> None:
        self._source = source
        self._owned = source is None

    @property
    def source(self) -> OpenFeatureRouteSource | None:
        """The source in use (None until a call needed one the shim builds itself)."""
        return self._source

    def mode_for(
        self, routing: RoutingConfig, mch_id: str, coupon_stock_id: str, bucket_by: str
    ) -> Mode | None:
        """The flag's mode for one call, or None (no flag source configured, or no valid mode).

        Raises:
            ConfigError: the source must be built and ``openfeature-sdk`` is not installed.
        """
        if routing.flag_source != "openfeature":
            return None
        source = self._source
        if source is None:
            source = self._source = OpenFeatureRouteSource(flag_key=routing.openfeature_flag)
        key = routing_key(bucket_by, mch_id, coupon_stock_id)
        return source.mode_for(mch_id, coupon_stock_id, key)

    def reconfigure(self, routing: RoutingConfig) -> None:
        """Follow a reloaded ``[routing]``: a source the shim built for another flag goes."""
        source = self._source
        if self._owned and source is not None and source.flag_key != routing.openfeature_flag:
            self._source = None
