"""Generated events for the report tests: a shadow phase, then a canary phase, 1 call/s.

600 ``coupon_stock.query`` events as the CLI's ``--log-format json`` writes them:

* calls 0-299, mode ``shadow`` (legacy serves, v3 compared): every 50th (from 7) is a mismatch
  in ``coupon_total`` and ``is_send_num``, every 100th (from 13) a mismatch in
  ``coupon_value``, every 75th (from 20) a shadow error (timeout); the rest match;
* calls 300-599, mode ``canary``: two calls in three are decided for v3; of those, every 40th
  (from 1) falls back to legacy (v3 HTTP 500), every 50th (from 33) fails with a timeout.

Latency: legacy ``5 + i % 10`` ms, v3 ``20 + i % 30`` ms, shadowed v3 ``8 + i % 20`` ms.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=timezone.utc)
N_CALLS = 600
SECRET = "k" * 8 + "SECRETV2KEY0123456789abcdefXYZ"


def _ts(i: int) -> str:
    return (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


def event(i: int) -> dict[str, Any]:
    """The i-th call's event."""
    base: dict[str, Any] = {
        "mch_id": "10000098" if i % 4 else "10000099",
        "coupon_stock_id": str(9856000 + i % 40),
        "bucket": (i * 37) % 10000,
        "event": "coupon_stock.query",
        "level": "info",
        "timestamp": _ts(i),
        "attempts": 1,
        "fallback": False,
        "outcome": "success",
    }
    if i < 300:
        base.update(route="legacy", reason="mode", latency_ms=5.0 + i % 10, shadow_route="v3")
        base["shadow_latency_ms"] = 8.0 + i % 20
        if i % 50 == 7:
            base.update(shadow="mismatch", mismatch_fields=["coupon_total", "is_send_num"])
        elif i % 100 == 13:
            base.update(shadow="mismatch", mismatch_fields=["coupon_value"])
        elif i % 75 == 20:
            base.update(shadow="error", shadow_error="UpstreamError:timeout")
        else:
            base["shadow"] = "match"
        return base
    if i % 3 == 0:
        base.update(route="legacy", reason="canary_out", latency_ms=5.0 + i % 10)
        return base
    base.update(route="v3", reason="canary_in", latency_ms=20.0 + i % 30)
    if i % 40 == 1:
        base.update(
            route="legacy", fallback=True, fallback_from="v3",
            fallback_cause="UpstreamError:http_status", latency_ms=40.0 + i % 10,
        )  # fmt: skip
    elif i % 50 == 33:
        base.update(
            outcome="error", fallback=False, error_kind="UpstreamError:timeout",
            error="v3 timed out after 5.0 s",
        )  # fmt: skip
        base.pop("attempts")
    return base


def events() -> list[dict[str, Any]]:
    """All generated call events, in time order."""
    return [event(i) for i in range(N_CALLS)]


def write_logs(folder: Path) -> list[Path]:
    """Spread the events over three "processes": plain JSON lines, gzip, and a log shipper's
    prefixed lines; with noise (a banner, a reload, a rejected reload, a broken line) and a
    secret a careless logger put in an event."""
    folder.mkdir(parents=True, exist_ok=True)
    evs = events()
    a = folder / "worker-1.jsonl"
    b = folder / "worker-2.jsonl.gz"
    c = folder / "worker-3.log"
    lines_a = [json.dumps(e) for e in evs[0::3]]
    lines_a.insert(5, json.dumps({"event": "coupon_shim.config_reloaded", "mode": "canary",
                                  "timestamp": _ts(300)}))  # fmt: skip
    lines_a.append('{"event": "coupon_stock.query", "truncated')  # a half-written last line
    a.write_text("\n".join(lines_a) + "\n", "utf-8")
    with gzip.open(b, "wt", encoding="utf-8") as fh:
        for e in evs[1::3]:
            fh.write(json.dumps(e) + "\n")
        fh.write(json.dumps({"event": "coupon_shim.config_reload_failed", "error": "x",
                             "v2_key": SECRET, "timestamp": _ts(400)}) + "\n")  # fmt: skip
    out = ["starting worker 3 (not JSON)"]
    for e in evs[2::3]:
        e = dict(e)
        if e.get("outcome") == "error":
            e["error"] = f"upstream said sign={SECRET}"  # must never reach the report
        out.append(f"Dec 01 10:00:00 host app[4242]: {json.dumps(e, ensure_ascii=False)}")
    c.write_text("\n".join(out) + "\n", "utf-8")
    return [a, b, c]


def compare_doc() -> dict[str, Any]:
    """A ``compare --json`` document as the command writes it (summary only matters here)."""
    return {
        "format": "coupon-shim.compare/1",
        "metadata": {"merchant": "10000098"},
        "summary": {
            "total": 14,
            "comparable": 11,
            "ready": 10,
            "counts": {
                "match": 8,
                "expected_gap": 2,
                "value_differs": 1,
                "not_found_both": 3,
                "error": 0,
            },
            "readiness_percent": 90.91,
            "mismatches_by_field": {"coupon_total": 1, "is_send_num": 1},
            "gaps_by_field": {"coupon_value": 2},
            "error_groups": [],
        },
        "verdict": {"ready": False},
        "rows": [],
    }
