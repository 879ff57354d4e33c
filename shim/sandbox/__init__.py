"""A WeChat Pay emulator ("sandbox") for the coupon stock query, v2 and v3.

One request handler (:class:`Emulator`) behaves like WeChat Pay: it checks request signatures
for real, signs its answers for real, serves seeded stocks and injects faults on demand. It is
written from the protocol spec, independently of the shim's client code, and is itself checked
against clients nobody here wrote (``wechatpy`` for v2, ``wechatpayv3`` for v3).

Three plugs::

    state = SandboxState.load_or_create(path)       # keys, certificates (once per folder)
    emulator = Emulator(state)
    httpx.Client(transport=emulator.mock_transport())  # in-process, sync or async
    emulator.asgi_app                                  # Starlette / ASGI
    with serve(emulator) as server:                    # uvicorn on 127.0.0.1, port 0
        state.write_config(cfg, v2_base_url=server.base_url, v3_base_url=server.base_url)

Faults: ``emulator.set_fault("v3", "1757", "http_503", times=2)``, ``emulator.clear_faults()``
or ``POST``/``DELETE /__admin/faults`` from loopback. See :data:`FAULT_KINDS`.

The emulator and its in-process transport need only the library's own dependencies; the ASGI
app (:class:`SandboxApp`, ``emulator.asgi_app``) and the server (``serve``)
need the ``sandbox`` extra (``pip install 'coupon-shim[sandbox]'``: starlette, uvicorn) and
raise one :class:`ImportError` naming it when it is missing.
"""

from typing import TYPE_CHECKING, Any

from ._emulator import Emulator
from ._faults import (
    ANY_STOCK,
    FAULT_KINDS,
    V2_FAULT_KINDS,
    V3_FAULT_KINDS,
    Fault,
    SandboxConnectionDropped,
)
from ._messages import (
    V2_PATH,
    V3_CERTIFICATES_PATH,
    V3_STOCK_PREFIX,
    RecordedRequest,
    SandboxReply,
    SandboxRequest,
)
from ._requestlog import RequestLine, RequestLogger
from ._server import RunningServer, SandboxBindError, serve
from ._state import (
    CONFIG_NAME,
    MERCHANT_SPECS,
    ConfigWrite,
    Merchant,
    MerchantSpec,
    SandboxState,
    SandboxStateError,
)
from ._stocks import (
    DIVERGENT_FIELDS,
    DIVERGENT_STOCK_ID,
    SEEDED_STOCKS,
    V3_STATUS_TO_V2,
    CutToMessage,
    FixedNormalCoupon,
    SeededStock,
    StockUseRule,
    beijing_compact,
    describe_stocks,
    epoch_seconds,
    seeded_stocks,
)
from ._transport import SandboxTransport
from ._v2 import billion_laughs_xml, parse_request_xml, render_xml, v2_sign
from ._v2_handler import V2_ERR_CODE_DES
from ._v3_handler import V3_TIMESTAMP_WINDOW_S

if TYPE_CHECKING:
    from ._asgi import SandboxApp

__all__ = [
    "ANY_STOCK",
    "CONFIG_NAME",
    "DIVERGENT_FIELDS",
    "DIVERGENT_STOCK_ID",
    "FAULT_KINDS",
    "MERCHANT_SPECS",
    "SEEDED_STOCKS",
    "V2_ERR_CODE_DES",
    "V2_FAULT_KINDS",
    "V2_PATH",
    "V3_CERTIFICATES_PATH",
    "V3_FAULT_KINDS",
    "V3_STATUS_TO_V2",
    "V3_STOCK_PREFIX",
    "V3_TIMESTAMP_WINDOW_S",
    "ConfigWrite",
    "CutToMessage",
    "Emulator",
    "Fault",
    "FixedNormalCoupon",
    "Merchant",
    "MerchantSpec",
    "RecordedRequest",
    "RequestLine",
    "RequestLogger",
    "RunningServer",
    "SandboxApp",
    "SandboxBindError",
    "SandboxConnectionDropped",
    "SandboxReply",
    "SandboxRequest",
    "SandboxState",
    "SandboxStateError",
    "SandboxTransport",
    "SeededStock",
    "StockUseRule",
    "beijing_compact",
    "billion_laughs_xml",
    "describe_stocks",
    "epoch_seconds",
    "parse_request_xml",
    "render_xml",
    "seeded_stocks",
    "serve",
    "v2_sign",
]


def __getattr__(name: str) -> Any:
    """:class:`SandboxApp` is imported on first use: it needs the ``sandbox`` extra."""
    if name == "SandboxApp":
        from shim._extras import require

        require("sandbox", "shim.sandbox.SandboxApp", "starlette")
        from ._asgi import SandboxApp

        globals()["SandboxApp"] = SandboxApp
        return SandboxApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
