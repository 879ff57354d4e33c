"""Collecting the report's inputs: read event logs and ``compare --json`` documents, add them up.

Reads JSON-lines events (the CLI's ``--log-format json``, or an application's structlog /
stdlib-logging JSON; many files from many processes; ``.gz`` accepted; lines with a prefix
before the JSON object, as log shippers add, are read from the first ``{``) and/or
``compare --json`` documents, and folds them into an :class:`~shim._report.model.Aggregate`.
No event's free text (error messages, request fields) is copied into it.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TextIO

from shim._report.model import (
    SHADOW_RESULTS,
    Aggregate,
    Inputs,
    TimeBin,
    short_label,
)

__all__ = [
    "COMPARE_FORMAT",
    "QUERY_EVENT",
    "add_event",
    "aggregate",
    "aggregate_paths",
    "read_inputs",
]


QUERY_EVENT: Final = "coupon_stock.query"
COMPARE_FORMAT: Final = "coupon-shim.compare/1"
_TIME_KEYS: Final = ("timestamp", "@timestamp", "time", "ts")


def _open_text(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _json_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text:
        return None
    if not text.startswith("{"):
        start = text.find("{")
        if start < 0:
            return None
        text = text[start:]
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_compare(doc: Mapping[str, Any]) -> bool:
    return doc.get("format") == COMPARE_FORMAT and isinstance(doc.get("summary"), dict)


def read_inputs(
    paths: Sequence[str], on_event: Callable[[dict[str, Any]], None] | None = None
) -> Inputs:
    """Read every file (``-`` is stdin; gzip is detected by its magic bytes).

    A file whose first non-blank line is exactly ``{`` (``compare --json`` output) is read as
    one document; any other file is streamed as JSON lines (lines that are not JSON objects
    are counted as skipped), so memory stays flat however large the logs are.

    Args:
        paths: the files.
        on_event: called with each event as it is read; then events are not kept in
            :attr:`Inputs.events` (see :func:`aggregate_paths`).

    Raises:
        OSError: a file cannot be opened (the caller names it).
        gzip.BadGzipFile: a ``.gz`` file is corrupt.
    """
    got = Inputs()
    for path in paths:
        name = "(stdin)" if path == "-" else Path(path).name
        n_events = n_compares = n_skipped = 0
        with _open_text(path) as fh:
            first = ""
            for first in fh:
                if first.strip():
                    break
            doc = None
            lines: Iterable[str] = _chain(first, fh)
            if first.strip() == "{":
                rest = first + fh.read()
                try:
                    doc = json.loads(rest)
                except ValueError:
                    doc = None
                lines = [] if isinstance(doc, dict) else rest.splitlines()
            if isinstance(doc, dict) and _is_compare(doc):
                got.compares.append(doc)
                n_compares += 1
            for line in lines:
                obj = _json_object(line)
                if obj is None:
                    if line.strip():
                        n_skipped += 1
                    continue
                if _is_compare(obj):
                    got.compares.append(obj)
                    n_compares += 1
                else:
                    if on_event is None:
                        got.events.append(obj)
                    else:
                        on_event(obj)
                    n_events += 1
        got.skipped_lines += n_skipped
        got.files.append(
            {"name": name, "events": n_events, "compares": n_compares, "skipped": n_skipped}
        )
    return got


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _event_time(event: Mapping[str, Any]) -> float | None:
    for key in _TIME_KEYS:
        value = event.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            return v / 1000.0 if v > 1e11 else v  # epoch milliseconds
        if isinstance(value, str):
            text = value.strip().replace(" ", "T", 1)
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
    return None


def _name(event: Mapping[str, Any]) -> str:
    name = event.get("event")
    if not isinstance(name, str):
        name = event.get("message") if isinstance(event.get("message"), str) else ""
    return name  # type: ignore[return-value]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else None


def _is_breaker_open(name: str, event: Mapping[str, Any]) -> bool:
    if "breaker" not in name:
        return False
    state = event.get("state", event.get("to_state", event.get("to")))
    return state == "open" or name.endswith(("opened", ".open"))


def aggregate(inputs: Inputs) -> Aggregate:
    """Add up the events and compare documents read by :func:`read_inputs`."""
    agg = Aggregate()
    for event in inputs.events:
        add_event(agg, event)
    _finish(agg, inputs)
    return agg


def aggregate_paths(paths: Sequence[str]) -> Aggregate:
    """Read and add up the files in one streaming pass (no event is kept in memory)."""
    agg = Aggregate()
    inputs = read_inputs(paths, on_event=lambda event: add_event(agg, event))
    _finish(agg, inputs)
    return agg


def _finish(agg: Aggregate, inputs: Inputs) -> None:
    agg.compares = list(inputs.compares)
    agg.files = list(inputs.files)
    agg.skipped_lines = inputs.skipped_lines


def add_event(agg: Aggregate, event: Mapping[str, Any]) -> None:
    """Add one event (of any name) to the aggregate."""
    name = _name(event)
    if name == QUERY_EVENT:
        _add_call(agg, event)
        return
    if name == "coupon_shim.config_reloaded":
        agg.reloads_applied += 1
    elif name in ("coupon_shim.config_reload_failed", "coupon_shim.config_reload_rejected"):
        agg.reloads_rejected += 1
    elif _is_breaker_open(name, event):
        agg.breaker_opened += 1
    if name:
        agg.other_events.add(name)


def _add_call(agg: Aggregate, event: Mapping[str, Any]) -> None:
    agg.calls += 1
    route = short_label(event.get("route") or "(unknown)")
    agg.by_route[route] += 1
    agg.by_outcome[short_label(event.get("outcome") or "(unknown)")] += 1
    if event.get("reason"):
        agg.by_reason.add(event["reason"])
    if event.get("mch_id"):
        agg.merchants.add(event["mch_id"])
    latency = _number(event.get("latency_ms"))
    if latency is not None:
        agg.latency[route].append(latency)
    shadow = event.get("shadow")
    if isinstance(shadow, str) and shadow in SHADOW_RESULTS:
        agg.shadow[shadow] += 1
        fields = event.get("mismatch_fields")
        if shadow == "mismatch" and isinstance(fields, list):
            for f in fields:
                agg.shadow_fields.add(f)
        if shadow == "error":
            agg.shadow_errors.add(
                f"{event.get('shadow_route') or 'shadow'}: {event.get('shadow_error') or '?'}"
            )
        shadow_latency = _number(event.get("shadow_latency_ms"))
        if shadow_latency is not None and shadow in ("match", "mismatch", "error"):
            agg.latency[f"{short_label(event.get('shadow_route') or 'other')} (shadow)"].append(
                shadow_latency
            )
    if event.get("fallback") and event.get("outcome") != "error":
        src = event.get("fallback_from") or ("v3" if route == "legacy" else "legacy")
        agg.fallbacks.add(f"{src}→{route}: {event.get('fallback_cause') or '?'}")
    if event.get("outcome") == "error":
        agg.errors.add(f"{route}: {event.get('error_kind') or '?'}")
    for key in event.get("unmapped") or []:
        agg.unmapped.add(key)
    ts = _event_time(event)
    if ts is None:
        agg.untimed += 1
        return
    agg.first_ts = ts if agg.first_ts is None else min(agg.first_ts, ts)
    agg.last_ts = ts if agg.last_ts is None else max(agg.last_ts, ts)
    b = agg.seconds.get(int(ts))
    if b is None:
        b = agg.seconds[int(ts)] = TimeBin()
    b.routes[route] += 1
    if isinstance(shadow, str) and shadow in ("match", "mismatch", "error"):
        b.shadow[shadow] += 1
