"""The v2 gateway: ``query_coupon_stock`` over HTTP for callers in any language.

``coupon-shim serve --config shim.toml`` runs :class:`GatewayApp` (ASGI, under uvicorn) over
the async twin. A caller keeps its v2 SDK and changes only its base URL: the gateway checks
the caller's v2 signature with that merchant's key, calls
:meth:`AsyncCouponStockShim.query_coupon_stock` (same routing, fallback, shadow and mapping as
the library) and answers v2 XML signed with the merchant's v2 key in the caller's sign type.

Pieces: :mod:`._protocol` (pure request checks and FAIL answers), :mod:`._app` (the ASGI
app), :mod:`._passthrough` (opt-in streaming proxy for other paths), :mod:`._metrics`
(Prometheus, multi-worker safe), :mod:`._server` (uvicorn, signals, drain), :mod:`._settings`
(the ``[gateway]`` table).
"""

from shim._extras import require

require("gateway", "shim.gateway", "starlette", "uvicorn")  # one clear error, before they are used
# ruff: noqa: E402
from shim.gateway._app import ACCESS_EVENT, GatewayApp
from shim.gateway._protocol import REFUSALS, GatewayRefusal, Refusal
from shim.gateway._server import RunningGateway, run, running
from shim.gateway._settings import GatewaySettings, load_gateway_settings, parse_gateway_settings

__all__ = [
    "ACCESS_EVENT",
    "REFUSALS",
    "GatewayApp",
    "GatewayRefusal",
    "GatewaySettings",
    "Refusal",
    "RunningGateway",
    "load_gateway_settings",
    "parse_gateway_settings",
    "run",
    "running",
]
