"""What the emulator's handlers take and give: requests, replies, paths, and wire-level faults.

Shared by the dispatcher (:mod:`._emulator`), the admin API (:mod:`._admin`) and the two
protocol handlers (:mod:`._v2_handler`, :mod:`._v3_handler`); the plugs (in-process transport,
ASGI app) turn a :class:`SandboxReply` into bytes on their side.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import _faults as F
from ._faults import Fault

V2_PATH = "/mmpaymkttransfers/query_coupon_stock"
V3_STOCK_PREFIX = "/v3/marketing/favor/stocks/"
V3_CERTIFICATES_PATH = "/v3/certificates"
ADMIN_FAULTS_PATH = "/__admin/faults"

#: Size of a ``huge_body`` answer.
DEFAULT_HUGE_BODY_BYTES = 5 * 1024 * 1024
#: What an ``encoding_bomb`` answer inflates to (``stacked_encodings``: 4 times that).
DEFAULT_BOMB_BYTES = 64 * 1024 * 1024
#: ``oversized_headers``: this many extra headers of this many bytes each.
OVERSIZED_HEADER_COUNT = 64
OVERSIZED_HEADER_BYTES = 4096
#: The merchant id / appid an answer names under ``wrong_merchant`` / ``wrong_appid``.
OTHER_MCH_ID = "1900000109"
OTHER_APPID = "wxd678efh567hg6787"

XML_CT = "text/xml; charset=utf-8"
JSON_CT = "application/json"
HTML_CT = "text/html; charset=utf-8"

#: Faults that change how an answer travels, not what it says (both sides alike).
WIRE_FAULTS = frozenset(
    {F.HEADER_DRIP, F.BODY_DRIP, F.ENCODING_BOMB, F.STACKED_ENCODINGS, F.OVERSIZED_HEADERS}
)


@dataclass(frozen=True)
class SandboxRequest:
    """A request as the emulator sees it.

    Attributes:
        method: upper-case HTTP method.
        target: path and query exactly as sent (``/v3/...?a=b``), bytes.
        headers: header names lower-cased.
        body: the raw body.
        client_host: the peer address, or None when unknown.
        body_too_large: the transport stopped reading an over-long body.
    """

    method: str
    target: bytes
    headers: Mapping[str, str]
    body: bytes = b""
    client_host: str | None = None
    body_too_large: bool = False


@dataclass(frozen=True)
class SandboxReply:
    """What to send back.

    Attributes:
        status: HTTP status.
        headers: header pairs, ``content-length`` included.
        body: the bytes to send (for ``drop="truncate"``: the bytes sent before closing).
        delay_s: wait this long before answering.
        drop: ``"reset"``: drop the connection without an answer; ``"truncate"``: send the
            headers and ``body`` (shorter than content-length), then close.
        drip: ``"headers"``: send the status line and headers one byte at a time, every
            ``drip_interval_s``; ``"body"``: the headers at once, then the body that way.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay_s: float = 0.0
    drop: Literal["reset", "truncate"] | None = None
    drip: Literal["headers", "body"] | None = None
    drip_interval_s: float = 0.0

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), or None."""
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received (for tests)."""

    side: str
    method: str
    path: str
    stock_id: str | None
    fault: str | None


def reply(
    status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> SandboxReply:
    """A plain reply: content type, extra headers, content length."""
    headers = (("content-type", content_type), *extra, ("content-length", str(len(body))))
    return SandboxReply(status, headers, body)


def json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON, as WeChat Pay writes it."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@functools.lru_cache(maxsize=4)
def gzip_zeros(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed, built in chunks (never ``size`` bytes at once)."""
    out = io.BytesIO()
    chunk = bytes(1 << 20)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def stacked_zeros(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed twice (``Content-Encoding: gzip, gzip``)."""
    return gzip.compress(gzip_zeros(size), compresslevel=9, mtime=0)


def wire_fault(fault: Fault, rendered: SandboxReply, bomb_bytes: int) -> SandboxReply:
    """Apply a transport-level fault (:data:`WIRE_FAULTS`) to a rendered answer."""
    kind = fault.kind
    if kind in (F.HEADER_DRIP, F.BODY_DRIP):
        return SandboxReply(
            rendered.status,
            rendered.headers,
            rendered.body,
            drip="headers" if kind == F.HEADER_DRIP else "body",
            drip_interval_s=fault.delay_s,
        )
    if kind == F.OVERSIZED_HEADERS:
        filler = tuple(
            (f"x-sandbox-filler-{i}", "x" * OVERSIZED_HEADER_BYTES)
            for i in range(OVERSIZED_HEADER_COUNT)
        )
        return SandboxReply(rendered.status, filler + rendered.headers, rendered.body)
    if kind == F.ENCODING_BOMB:
        body, encoding = gzip_zeros(bomb_bytes), "gzip"
    else:
        body, encoding = stacked_zeros(bomb_bytes * 4), "gzip, gzip"
    kept = tuple((k, v) for k, v in rendered.headers if k.lower() != "content-length")
    headers = (*kept, ("content-encoding", encoding), ("content-length", str(len(body))))
    return SandboxReply(rendered.status, headers, body)
