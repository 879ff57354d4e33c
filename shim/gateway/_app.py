"""The gateway's ASGI application: v2 on the front, the async twin behind it.

One :class:`GatewayApp` per worker process. It owns one :class:`AsyncCouponStockShim` (built
at lifespan start-up, closed at shutdown after its shadow jobs finished) and, with
passthrough on, one pooled httpx client. It has no routing or mapping logic of its own: a
verified request goes to ``query_coupon_stock`` exactly as a Python caller's would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import structlog
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from shim import _v2 as v2
from shim._client import AsyncCouponStockShim
from shim._errors import ShimError
from shim._values import ShimConfig
from shim.gateway import _metrics
from shim.gateway._passthrough import forward, new_client, refusal_body
from shim.gateway._protocol import (
    XML_CONTENT_TYPE,
    GatewayRefusal,
    check_signed_request,
    fail_body,
    parse_request,
    refusal_for_error,
    resign,
)
from shim.gateway._settings import GatewaySettings

__all__ = ["ACCESS_EVENT", "GatewayApp"]

ACCESS_EVENT = "coupon_shim.gateway_request"
_log = structlog.get_logger("shim.gateway")
_CALLER_ONLY = frozenset({"nonce_str", "sign", "sign_type"})
_MAX_LOGGED_PATH = 128
_XML_HEADER = (b"content-type", XML_CONTENT_TYPE.encode("ascii"))


class _Disconnected(Exception):
    """The caller went away before its request body arrived."""


class GatewayApp:
    """The ASGI callable ``coupon-shim serve`` runs (one per worker).

    Args:
        config: the ``shim.toml`` path (watched and reloaded as in the library).
        settings: the ``[gateway]`` settings.
        shim_kwargs: passed to :class:`AsyncCouponStockShim` (e.g. ``transport=`` in tests).
    """

    def __init__(
        self,
        config: str | os.PathLike[str],
        settings: GatewaySettings,
        *,
        shim_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config_path = Path(config)
        self.settings = settings
        self._shim_kwargs = dict(shim_kwargs or {})
        self._shim: AsyncCouponStockShim | None = None
        self._proxy: httpx.AsyncClient | None = None
        self._keys: tuple[ShimConfig, dict[str, str]] | None = None
        self.in_flight = 0
        self.draining = False
        self.started = False
        self._metrics = _metrics.GatewayMetrics.get() if settings.metrics else None
        self._restore: list[tuple[int, Any]] = []

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: returning without accepting closes them

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except ShimError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Build the shim (loading and checking the config) and the passthrough client."""
        self._shim = AsyncCouponStockShim.from_file(self.config_path, **self._shim_kwargs)
        if self.settings.passthrough:
            self._proxy = new_client()
        self._watch_signals()
        self.started = True
        _log.info(
            "coupon_shim.gateway_started",
            pid=os.getpid(),
            mode=self._shim.config.routing.mode,
            passthrough=self.settings.passthrough,
        )

    async def shutdown(self) -> None:
        """Finish the shadow jobs (within the shadow timeout) and close the clients."""
        self.draining = True
        for sig, handler in self._restore:
            signal.signal(sig, handler)
        self._restore.clear()
        if self._shim is not None:
            await self._shim.aclose()
        if self._proxy is not None:
            await self._proxy.aclose()
        _metrics.mark_worker_dead(os.getpid())
        _log.info("coupon_shim.gateway_stopped", pid=os.getpid())

    def begin_drain(self) -> None:
        """Answer ``/readyz`` with 503 from now on (the listener closes after the delay)."""
        if not self.draining:
            self.draining = True
            if self._metrics is not None:
                self._metrics.draining.set(1)
            _log.info("coupon_shim.gateway_draining", pid=os.getpid(), in_flight=self.in_flight)

    def _watch_signals(self) -> None:
        """Chain onto the server's SIGTERM/SIGINT handlers: mark draining, delay the stop.

        Only in the main thread (where uvicorn installs its handlers); an app served from a
        thread (tests) is drained by whoever stops its server.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue
            self._restore.append((sig, previous))
            signal.signal(sig, self._chained(previous, loop))

    def _chained(
        self, previous: Callable[[int, FrameType | None], Any], loop: asyncio.AbstractEventLoop
    ) -> Callable[[int, FrameType | None], None]:
        def handler(sig: int, frame: FrameType | None) -> None:
            first = not self.draining
            self.begin_drain()
            delay = self.settings.drain_delay_s
            if first and delay > 0:
                loop.call_soon_threadsafe(loop.call_later, delay, previous, sig, None)
            else:
                previous(sig, frame)

        return handler

    # ------------------------------------------------------------------ HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        if path == v2.QUERY_COUPON_STOCK_PATH:
            await self._guarded("query", scope, receive, send, started)
        elif path == "/healthz":
            await self._plain(scope, receive, send, "healthz", started, 200, "ok\n")
        elif path == "/readyz":
            await self._ready(scope, receive, send, started)
        elif path == "/metrics" and self._metrics is not None:
            body, media = _metrics.render_latest()
            await Response(body, 200, media_type=media)(scope, receive, send)
            self._done(scope, "metrics", 200, "ok", started)
        elif self.settings.passthrough:
            await self._guarded("passthrough", scope, receive, send, started)
        else:
            refusal = GatewayRefusal("not_found")
            await self._refuse(scope, receive, send, refusal)
            self._done(scope, "not_found", 404, "not_found", started)

    async def _plain(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: str,
        started: float,
        status: int,
        text: str,
    ) -> None:
        await PlainTextResponse(text, status)(scope, receive, send)
        self._done(scope, endpoint, status, "ok", started)

    async def _ready(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        shim = self._shim
        if self.draining or shim is None:
            payload: dict[str, Any] = {"status": "draining" if self.draining else "starting"}
            status = 503
        else:
            snap = shim.config
            status = 200
            payload = {
                "status": "ready",
                "mode": snap.routing.mode,
                "merchants": len(snap.merchants),
                "in_flight": self.in_flight,
            }
        await JSONResponse(payload, status)(scope, receive, send)
        self._done(scope, "readyz", status, str(payload["status"]), started)

    async def _guarded(
        self, endpoint: str, scope: Scope, receive: Receive, send: Send, started: float
    ) -> None:
        """The concurrency limit, then the endpoint; every refusal in the caller's shape."""
        fields: dict[str, str] = {}
        if self.in_flight >= self.settings.max_concurrency:
            refusal = GatewayRefusal("overloaded", f"{self.in_flight} requests in flight")
            await self._refuse(scope, receive, send, refusal, retry_after=True)
            self._done(scope, endpoint, 503, "overloaded", started)
            return
        self.in_flight += 1
        gauge = self._metrics.in_flight if self._metrics is not None else None
        if gauge is not None:
            gauge.inc()
        status, kind = 500, "internal"
        try:
            if endpoint == "query":
                status, kind = await self._query(scope, receive, send, fields)
            else:
                status, kind = await self._passthrough(scope, receive, send)
        except GatewayRefusal as refusal:
            status, kind = refusal.refusal.status, refusal.refusal.kind
            await self._refuse(scope, receive, send, refusal, passthrough=endpoint != "query")
        except _Disconnected:
            status, kind = 499, "disconnected"
        except Exception as exc:  # never a traceback to the caller
            _log.error(
                "coupon_shim.gateway_error", error_type=type(exc).__name__, endpoint=endpoint
            )
            status, kind = 500, "internal"
            await self._refuse(scope, receive, send, GatewayRefusal("internal"))
        finally:
            self.in_flight -= 1
            if gauge is not None:
                gauge.dec()
        self._done(scope, endpoint, status, kind, started, fields)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        cap = self.settings.max_request_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > cap:
                raise GatewayRefusal("too_large", f"over {cap} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise GatewayRefusal("too_large", f"over {cap} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _merchant_keys(self, snapshot: ShimConfig) -> dict[str, str]:
        cached = self._keys
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        keys = {mch: m.v2_key.reveal() for mch, m in snapshot.merchants.items()}
        self._keys = (snapshot, keys)
        return keys

    async def _query(
        self, scope: Scope, receive: Receive, send: Send, seen: dict[str, str]
    ) -> tuple[int, str]:
        if scope["method"] != "POST":
            raise GatewayRefusal("method_not_allowed")
        shim = self._shim
        if shim is None:
            raise GatewayRefusal("internal", "not started")
        body = await self._read_body(scope, receive)
        fields = parse_request(body, max_bytes=self.settings.max_request_bytes)
        keys = self._merchant_keys(shim.config)
        seen.update(  # as claimed (safe to log): an operator sees who a refusal was for
            mch_id=fields.get("mch_id", "")[:32],
            coupon_stock_id=fields.get("coupon_stock_id", "")[:32],
        )
        mch_id, sign_type = check_signed_request(fields, key_for=keys)
        seen["sign_type"] = sign_type
        payload = {k: v for k, v in fields.items() if k not in _CALLER_ONLY}
        try:
            answer = await shim.query_coupon_stock(xml=payload)
        except ShimError as err:
            raise refusal_for_error(err) from None
        merchant = shim.config.merchants.get(mch_id)  # (a reload may have happened meanwhile)
        if merchant is None or sign_type != merchant.v2_sign_type:
            answer = resign(answer, key=keys[mch_id], sign_type=sign_type)
        body = v2.to_xml(answer)
        # The hot path's answer as two plain ASGI messages (what starlette's Response sends,
        # without building one per call).
        headers = [(b"content-length", b"%d" % len(body)), _XML_HEADER]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        code = answer.get("return_code")
        kind = "answer" if code == "SUCCESS" else "answer_fail"
        return 200, kind

    async def _passthrough(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str]:
        shim, client = self._shim, self._proxy
        if shim is None or client is None:
            raise GatewayRefusal("internal", "not started")
        body = await self._read_body(scope, receive)
        result = await forward(client, scope, body, send, snapshot=shim.config)
        return result.status, result.kind

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        refusal: GatewayRefusal,
        *,
        retry_after: bool = False,
        passthrough: bool = False,
    ) -> None:
        headers = {"x-coupon-shim-error": refusal.refusal.kind}
        if retry_after:
            headers["retry-after"] = "1"
        if refusal.refusal.kind == "method_not_allowed":
            headers["allow"] = "POST"
        if passthrough:  # in the shape of the API the caller spoke (v3 JSON under /v3/)
            body, media = refusal_body(scope["path"], refusal)
        else:
            body, media = fail_body(refusal.return_msg), XML_CONTENT_TYPE
        response = Response(body, refusal.refusal.status, headers=headers, media_type=media)
        await response(scope, receive, send)

    def _done(
        self,
        scope: Scope,
        endpoint: str,
        status: int,
        kind: str,
        started: float,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.observe(endpoint, status, kind, seconds)
        if not self.settings.access_log or endpoint in ("healthz", "readyz", "metrics"):
            return
        log = _log.bind()
        enabled = getattr(log, "is_enabled_for", None)
        if enabled is not None and not enabled(logging.INFO):
            return
        client = scope.get("client")
        log.info(
            ACCESS_EVENT,
            method=scope["method"],
            path=scope["path"][:_MAX_LOGGED_PATH],
            endpoint=endpoint,
            status=status,
            kind=kind,
            latency_ms=round(seconds * 1000.0, 3),
            client=client[0] if client else None,
            **(fields or {}),
        )
