"""coupon-shim: keep WeChat Pay v2 ``query_coupon_stock`` callers working while moving to v3.

Change one import::

    from shim import CouponStockShim
    shim = CouponStockShim.from_file("shim.toml")
    resp = shim.query_coupon_stock(coupon_stock_id="1757", appid="wx5edab3bdfba3dc1c",
                                   mch_id="10000098")

The answer is the v2 dict (every value a string), whichever upstream served it. Code that
had its own helper can call the process-wide default shim, configured from the file named by
``COUPON_SHIM_CONFIG`` (else ``./shim.toml``)::

    from shim import query_coupon_stock
    resp = query_coupon_stock("1757", mch_id="10000098")

wechatpy users change only their import: ``from shim.compat.wechatpy import WeChatPay``.
"""

from shim._client import AsyncCouponStockShim, CouponStockShim
from shim._default import (
    aquery_coupon_stock,
    close_default_shims,
    default_shim,
    query_coupon_stock,
)
from shim._errors import (
    ClosedError,
    ConfigError,
    InputError,
    LocalError,
    MappingError,
    OverloadError,
    Route,
    ShimError,
    SignatureError,
    UpstreamError,
)
from shim._extras import MissingExtraError
from shim._flags import OpenFeatureRouteSource
from shim._live import LiveConfig
from shim._loader import load_config
from shim._observe import CallRecord
from shim._redaction import redact_secrets
from shim._secrets import LiteralSecretWarning
from shim._shadow.totals import ShadowTotals
from shim._transport import DeadlineTransport
from shim._values import Mode, Secret, ShimConfig

__version__ = "0.1.0"

__all__ = [
    "AsyncCouponStockShim",
    "CallRecord",
    "ClosedError",
    "ConfigError",
    "CouponStockShim",
    "DeadlineTransport",
    "InputError",
    "LiteralSecretWarning",
    "LiveConfig",
    "LocalError",
    "MappingError",
    "MissingExtraError",
    "Mode",
    "OpenFeatureRouteSource",
    "OverloadError",
    "Route",
    "Secret",
    "ShadowTotals",
    "ShimConfig",
    "ShimError",
    "SignatureError",
    "UpstreamError",
    "__version__",
    "aquery_coupon_stock",
    "close_default_shims",
    "default_shim",
    "load_config",
    "query_coupon_stock",
    "redact_secrets",
]
