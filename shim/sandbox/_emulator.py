"""The emulator's dispatcher: WeChat Pay v2 and v3 behind a transport-free API.

:meth:`Emulator.handle` takes a :class:`SandboxRequest` and returns a :class:`SandboxReply`
(status, headers, body, plus a delay and a "drop the connection" instruction). The plugs
(:meth:`Emulator.mock_transport`, :attr:`Emulator.asgi_app`, ``serve``) only do I/O.

It routes each request by path to the admin API (:mod:`._admin`), the v2 handler
(:mod:`._v2_handler`) or the v3 handler (:mod:`._v3_handler`), and holds what they share:
the state, the stock table, the clock, the armed faults and the request record. The request
and reply types and the wire-level faults are in :mod:`._messages`.

Decisions the spec leaves open (documented here once):

* v2: an unparseable body (bad XML, DTD/entities, over 64 KiB, not POST) gets the unsigned
  ``return_code=FAIL`` answer. A request WeChat Pay cannot tie to a merchant key (no
  ``mch_id``, an unknown ``mch_id``) gets the unsigned ``return_code=FAIL`` answer too, its
  ``return_msg`` naming the problem (``MCH_ID_EMPTY`` / ``CODE_2_ID_ERR``): v2 signs every
  ``return_code=SUCCESS`` answer, and without a key there is nothing to sign with. Every other
  error is a business error (``return_code=SUCCESS, result_code=FAIL, err_code,
  err_code_des``), signed with the merchant's v2 key in the request's sign type.
  Checks run in this order: mch_id present, mch_id known, sign, appid/nonce_str present
  (``REQ_PARAM_XML_ERR``), appid belongs to mch_id (``CODE_2_ID_ERR``), coupon_stock_id present,
  id is 1-32 digits (``COUPON_STOCK_ID_NOT_VALID``), stock exists (``COUPON_STOCK_NOT_FOUND``),
  stock created by mch_id (``COUPON_STOCK_ID_NOT_VALID``).
* v3: authentication first (401 ``SIGN_ERROR``, **unsigned**: WeChat Pay signs an answer
  only when the request's own signature verified), then the ``Accept`` header (missing, or
  not admitting ``application/json``: a signed 400 ``INVALID_REQUEST``; WeChat Pay requires
  ``Accept: application/json`` and the code it answers is not documented), then parameters
  (400 ``PARAM_ERROR``), then the stock. A ``stock_creator_mchid`` that did not create the
  stock gets 404 ``RESOURCE_NOT_EXISTS`` (not 403): the stock does not exist for that
  creator. The calling merchant need not be the creator. Other error bodies are signed like
  success bodies.
* v3 answer key: a request carrying ``Wechatpay-Serial: PUB_KEY_ID_…`` equal to the emulator's
  id is answered with the WeChat Pay public-key pair and that id; any other ``PUB_KEY_ID_…`` is
  a 400 ``PARAM_ERROR``; otherwise the platform certificate's key and serial sign.
* Faults only apply to the two stock-query routes (never to ``/v3/certificates`` or admin).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from shim._extras import require

from . import _faults as F
from ._admin import admin_faults
from ._faults import Fault, FaultTable, make_fault
from ._messages import (
    ADMIN_FAULTS_PATH,
    DEFAULT_BOMB_BYTES,
    DEFAULT_HUGE_BODY_BYTES,
    JSON_CT,
    RecordedRequest,
    SandboxReply,
    SandboxRequest,
    gzip_zeros,
    json_bytes,
    reply,
    stacked_zeros,
)
from ._state import SandboxState
from ._stocks import SeededStock, seeded_stocks
from ._v2_handler import V2Handler
from ._v3_handler import V3Handler

if TYPE_CHECKING:
    from starlette.applications import Starlette


class Emulator:
    """WeChat Pay (v2 ``query_coupon_stock`` and v3 stock detail) for tests and people.

    Args:
        state: keys and certificates (see :class:`SandboxState`).
        stocks: the stock table; the seeded table by default.
        clock: seconds since the epoch; checks request timestamps and stamps answers.
        huge_body_bytes: size of a ``huge_body`` answer.
        bomb_bytes: what an ``encoding_bomb`` answer inflates to.

    Attributes:
        stocks: id → stock; may be changed by tests.
        clock: replaceable at any time.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        stocks: Mapping[str, SeededStock] | None = None,
        clock: Callable[[], float] = time.time,
        huge_body_bytes: int = DEFAULT_HUGE_BODY_BYTES,
        bomb_bytes: int = DEFAULT_BOMB_BYTES,
    ) -> None:
        self.state = state
        self.bomb_bytes = bomb_bytes
        self.stocks: dict[str, SeededStock] = dict(seeded_stocks() if stocks is None else stocks)
        self.clock = clock
        self.huge_body_bytes = huge_body_bytes
        self._faults = FaultTable()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._log: deque[RecordedRequest] = deque(maxlen=1000)
        self._asgi_app: Starlette | None = None
        self._v2 = V2Handler(self)
        self._v3 = V3Handler(self)

    # ------------------------------------------------------------------ public API

    def set_fault(
        self,
        side: str,
        stock_id: str,
        fault: str,
        times: int | None = None,
        delay_s: float = 1.0,
    ) -> Fault:
        """Arm a fault for requests on one side for one stock (or ``"*"`` for any).

        Args:
            side: ``"v2"`` or ``"v3"``.
            stock_id: the stock id, or ``"*"``.
            fault: one of :data:`FAULT_KINDS` (``err_code:<CODE>``, ``v3_error:<S>:<CODE>``).
            times: apply to the next N matching requests only; None = until cleared.
            delay_s: the wait of a ``delay`` fault.

        Returns:
            The armed fault.

        Raises:
            ValueError: unknown kind, bad arguments, or a kind meaningless on that side.
        """
        armed = make_fault(side, stock_id, fault, times, delay_s)
        # Build a bomb when it is armed, not when it is served: compressing hundreds of MiB
        # takes a while, and the answer must not be late because of it.
        if armed.kind == F.ENCODING_BOMB:
            gzip_zeros(self.bomb_bytes)
        elif armed.kind == F.STACKED_ENCODINGS:
            stacked_zeros(self.bomb_bytes * 4)
        self._faults.set(armed)
        return armed

    def clear_faults(self, side: str | None = None, stock_id: str | None = None) -> None:
        """Disarm all faults (or those of one side and/or stock)."""
        self._faults.clear(side, stock_id)

    @property
    def faults(self) -> list[Fault]:
        """The armed faults."""
        return list(self._faults)

    @property
    def request_counts(self) -> Counter[str]:
        """Requests received per side (``"v2"``, ``"v3"``; admin calls are not counted)."""
        with self._lock:
            return Counter(self._counts)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last (up to 1000) requests received, oldest first."""
        with self._lock:
            return list(self._log)

    def reset_counts(self) -> None:
        """Forget counted and recorded requests."""
        with self._lock:
            self._counts.clear()
            self._log.clear()

    def mock_transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client`` and ``httpx.AsyncClient``."""
        from ._transport import SandboxTransport

        return SandboxTransport(self)

    @property
    def asgi_app(self) -> Starlette:
        """The emulator as a Starlette (ASGI) application.

        Raises:
            MissingExtraError: the ``sandbox`` extra (starlette) is not installed.
        """
        if self._asgi_app is None:
            require("sandbox", "the emulator's ASGI app", "starlette")
            from ._asgi import build_asgi_app

            self._asgi_app = build_asgi_app(self)
        return self._asgi_app

    def handle(self, request: SandboxRequest) -> SandboxReply:
        """Answer one request (the single handler behind every plug)."""
        path = request.target.partition(b"?")[0].decode("latin-1")
        if path == ADMIN_FAULTS_PATH:
            status, payload = self.admin(
                request.method, request.body, request.client_host, request.target
            )
            return reply(status, JSON_CT, json_bytes(payload))
        if path.startswith("/mmpaymkttransfers/"):
            return self._v2.handle(request, path)
        if path.startswith("/v3/"):
            return self._v3.handle(request, path)
        return reply(404, "text/plain; charset=utf-8", b"not found")

    def admin(
        self, method: str, body: bytes, client_host: str | None, target: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        """The ``/__admin/faults`` endpoint (loopback clients only); see :mod:`._admin`.

        ``POST`` a JSON object ``{"side", "stock_id", "fault", "times"?, "delay_s"?}`` to arm a
        fault; ``DELETE`` (optional query ``side``, ``stock_id``) to clear; ``GET`` to list
        armed faults and request counts.

        Returns:
            (HTTP status, JSON object).
        """
        return admin_faults(self, method, body, client_host, target)

    # ------------------------------------------------------------------ bookkeeping

    def _record(
        self, side: str, request: SandboxRequest, path: str, stock: str | None, fault: Fault | None
    ) -> None:
        with self._lock:
            self._counts[side] += 1
            self._log.append(
                RecordedRequest(side, request.method, path, stock, fault.fault if fault else None)
            )


__all__ = [
    "Emulator",
    "RecordedRequest",
    "SandboxReply",
    "SandboxRequest",
]
