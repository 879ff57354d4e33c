"""Opt-in passthrough: any other request streamed to the configured upstream unchanged.

``/v3/...`` goes to ``[upstream] v3_base_url``, everything else to ``v2_base_url``. Method,
path, query, headers and body go up as the caller sent them (hop-by-hop headers and ``Host``
excepted, as any proxy must); status, headers and body come back as the upstream sent them,
streamed, compressed bodies left compressed. The request body is capped by
``[gateway] max_request_bytes``, the answer by ``[upstream] max_body_bytes``; connect and read
timeouts are ``[upstream] connect_timeout_s`` / ``timeout_s`` and the whole exchange must end
within ``budget_s``. Nothing is logged of headers or bodies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Final

import httpx
from starlette.types import Scope, Send

from shim._values import ShimConfig
from shim.gateway._protocol import XML_CONTENT_TYPE, GatewayRefusal, fail_body

__all__ = ["HOP_BY_HOP", "Forwarded", "forward", "new_client"]

#: Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), plus Host and the
#: framing headers httpx and uvicorn set for their own connection.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a passthrough exchange gave: the status sent and an outcome kind."""

    status: int
    kind: str
    bytes_out: int


def new_client() -> httpx.AsyncClient:
    """The passthrough's pooled client: no redirects, no default headers of its own."""
    client = httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
        trust_env=False,
    )
    for name in ("accept", "accept-encoding", "user-agent"):
        del client.headers[name]  # the caller's own headers go up, not httpx's defaults
    return client


def _is_v3(path: str) -> bool:
    return path == "/v3" or path.startswith("/v3/")


def refusal_body(path: str, refusal: GatewayRefusal) -> tuple[bytes, str]:
    """A refusal in the shape the caller's API speaks: v3 JSON under /v3/, else v2 XML."""
    if _is_v3(path):
        code = "SYSTEM_ERROR" if refusal.refusal.status >= 500 else "PARAM_ERROR"
        payload = {"code": code, "message": refusal.return_msg}
        return json.dumps(payload, ensure_ascii=False).encode(), "application/json"
    return fail_body(refusal.return_msg), XML_CONTENT_TYPE


async def forward(
    client: httpx.AsyncClient,
    scope: Scope,
    body: bytes,
    send: Send,
    *,
    snapshot: ShimConfig,
) -> Forwarded:
    """Send one request upstream and stream its answer back.

    Raises:
        GatewayRefusal: before any byte of an answer was sent (connection failed, timed out,
            or the answer declares more than the cap); the caller then sends the refusal.
    """
    up = snapshot.upstream
    path: str = scope["path"]
    base = up.v3_base_url if _is_v3(path) else up.v2_base_url
    raw_path: bytes = scope.get("raw_path") or path.encode()
    query: bytes = scope.get("query_string", b"")
    url = base + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
    deadline = time.monotonic() + up.budget_s
    timeout = httpx.Timeout(up.timeout_s, connect=up.connect_timeout_s, pool=up.timeout_s)
    request = client.build_request(
        scope["method"], url, headers=headers, content=body or None, timeout=timeout
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise GatewayRefusal("upstream_timeout", "passthrough") from None
    except httpx.HTTPError as exc:
        raise GatewayRefusal("upstream_error", f"passthrough ({type(exc).__name__})") from None
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > up.max_body_bytes:
            raise GatewayRefusal("upstream_error", "passthrough answer over the size cap")
        out_headers = [
            (k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP
        ]
        if declared.isdigit():
            out_headers.append((b"content-length", declared.encode()))
        started = False
        sent = 0
        try:
            async for chunk in response.aiter_raw():
                if not started:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": response.status_code,
                            "headers": out_headers,
                        }
                    )
                    started = True
                sent += len(chunk)
                if sent > up.max_body_bytes or time.monotonic() > deadline:
                    # Too late for a refusal: cut the connection rather than pass on part of
                    # an answer as if it were whole.
                    return Forwarded(response.status_code, "cut", sent)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TimeoutException:
            if not started:
                raise GatewayRefusal("upstream_timeout", "passthrough") from None
            return Forwarded(response.status_code, "cut", sent)
        except httpx.HTTPError as exc:
            if not started:
                raise GatewayRefusal(
                    "upstream_error", f"passthrough ({type(exc).__name__})"
                ) from None
            return Forwarded(response.status_code, "cut", sent)
        if not started:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": out_headers,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return Forwarded(response.status_code, "passthrough", sent)
    finally:
        await response.aclose()
