"""The emulator's admin API: ``/__admin/faults`` (loopback clients only).

``POST`` a JSON object ``{"side", "stock_id", "fault", "times"?, "delay_s"?}`` to arm a fault;
``DELETE`` (optional query ``side``, ``stock_id``) to clear; ``GET`` to list armed faults and
request counts. Every plug reaches it through :meth:`Emulator.admin`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from ._emulator import Emulator

_KEYS = frozenset({"side", "stock_id", "fault", "times", "delay_s"})
_REQUIRED = frozenset({"side", "stock_id", "fault"})


def is_loopback(host: str | None) -> bool:
    """Whether a peer address is the local machine (an unknown one is not)."""
    if host is None:
        return False
    return host in ("::1", "localhost") or host.startswith(("127.", "::ffff:127."))


def admin_faults(
    emulator: Emulator, method: str, body: bytes, client_host: str | None, target: bytes
) -> tuple[int, dict[str, Any]]:
    """Answer one ``/__admin/faults`` request.

    Returns:
        (HTTP status, JSON object).
    """
    if not is_loopback(client_host):
        return 403, {"code": "NO_AUTH", "message": "admin endpoint is loopback-only"}
    if method == "GET":
        return 200, {
            "faults": [f.to_json() for f in emulator.faults],
            "request_counts": dict(emulator.request_counts),
        }
    if method == "DELETE":
        query = parse_qs(target.partition(b"?")[2].decode("utf-8", "replace"))
        side = query.get("side", [None])[0]
        stock = query.get("stock_id", [None])[0]
        before = len(emulator.faults)
        emulator.clear_faults(side, stock)
        return 200, {"cleared": before - len(emulator.faults)}
    if method != "POST":
        return 405, {"code": "INVALID_REQUEST", "message": "use GET, POST or DELETE"}
    try:
        spec = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 400, {"code": "PARAM_ERROR", "message": "body must be a JSON object"}
    if not isinstance(spec, dict) or not spec.keys() >= _REQUIRED:
        return 400, {"code": "PARAM_ERROR", "message": "need side, stock_id and fault"}
    unknown = set(spec) - _KEYS
    if unknown:
        return 400, {"code": "PARAM_ERROR", "message": f"unknown keys: {sorted(unknown)}"}
    try:
        armed = emulator.set_fault(
            str(spec["side"]),
            str(spec["stock_id"]),
            str(spec["fault"]),
            spec.get("times"),
            spec.get("delay_s", 1.0),
        )
    except ValueError as exc:
        return 400, {"code": "PARAM_ERROR", "message": str(exc)}
    return 201, {"armed": armed.to_json()}
