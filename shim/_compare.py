"""``coupon-shim compare``: both routes per stock, classified, with a verdict to gate a rollout.

The model and the classification are plain functions (:func:`classify`, :func:`summarise`,
:func:`run_compare`); :class:`Comparer` does the I/O with its own HTTP client and its own
circuit breakers (so a compare run neither shares nor trips the breakers that serve traffic);
:func:`register` and :func:`command` are the CLI (``shim.cli`` only registers them). The tables
and the progress bar use ``rich`` (the ``cli`` extra), imported only when rendering.

Each stock is one of:

* ``match`` — both routes give the same v2 answer (after ``[shadow] ignore_fields``);
* ``expected_gap`` — they differ only in keys the mapping leaves out for this stock (a
  ``required = false`` v3-sourced key that v3 could not fill, recorded as unmapped): ready;
* ``value_differs`` — any other difference, a business error on one side only included;
* ``not_found_both`` — both routes answer the same business error (e.g.
  ``COUPON_STOCK_NOT_FOUND``): excluded from readiness;
* ``error`` — a route gave no usable answer (a typed error, or ``return_code=FAIL``).

Readiness is ``(match + expected_gap) / (all − not_found_both)``; with nothing comparable
there is no readiness, and the verdict is "not ready".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

from shim._errors import (
    ConfigError,
    InputError,
    MappingError,
    Route,
    ShimError,
    SignatureError,
    UpstreamError,
)
from shim._shadow import FieldDiff, diff_answers

if TYPE_CHECKING:
    import httpx

    from shim._flow import RouteResult
    from shim._mapping import MappingTable
    from shim._values import MerchantConfig, ShimConfig

__all__ = [
    "EXIT_BELOW_THRESHOLD",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_USAGE",
    "ROW_CLASSES",
    "CompareReport",
    "CompareRow",
    "CompareSummary",
    "Comparer",
    "ErrorGroup",
    "RouteError",
    "Verdict",
    "add_arguments",
    "classify",
    "command",
    "dedupe_ids",
    "read_ids_file",
    "render_json",
    "render_table",
    "run_compare",
    "summarise",
]

RowClass = Literal["match", "expected_gap", "value_differs", "not_found_both", "error"]
ROW_CLASSES: Final[tuple[RowClass, ...]] = (
    "match",
    "expected_gap",
    "value_differs",
    "not_found_both",
    "error",
)
JSON_FORMAT: Final = "coupon-shim.compare/1"
EXIT_OK: Final = 0
EXIT_BELOW_THRESHOLD: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 3
MAX_CONCURRENCY: Final = 64
_ROUTES: Final[tuple[Route, Route]] = ("legacy", "v3")
_MAX_MESSAGE: Final = 300
_MAX_CELL: Final = 48
_EXAMPLES: Final = 5
_ROUTE_NAME: Final[Mapping[str, str]] = {"legacy": "v2 (legacy)", "v3": "v3"}
_CREDENTIALS_HINT: Final[Mapping[str, str]] = {
    "v3": "check v3_private_key, v3_cert_serial and the clock",
    "legacy": "check v2_key and v2_sign_type",
}

QueryFn = Callable[[Route, str], "RouteResult"]


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True, slots=True)
class RouteError:
    """A route that gave no usable answer for a stock.

    Attributes:
        route: ``legacy`` or ``v3``.
        error: the error's class and kind (``UpstreamError(timeout)``), or ``return_code=FAIL``.
        message: the error's message (shim messages hold no secret), cut to 300 characters.
        cause: the human cause the error is grouped by ("v3 refused the shim's credentials
            (HTTP 401 SIGN_ERROR)").
        credentials: the cause is the shim's own credentials being refused.
        status: the HTTP status, when known.
        code: the upstream error code, when known.
    """

    route: Route
    error: str
    message: str
    cause: str
    credentials: bool = False
    status: int | None = None
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "route": self.route,
            "error": self.error,
            "cause": self.cause,
            "message": self.message,
            "credentials": self.credentials,
            "status": self.status,
            "code": self.code,
        }


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One stock, classified.

    Attributes:
        stock_id: the stock.
        klass: one of :data:`ROW_CLASSES`.
        diffs: the fields whose values differ (``value_differs``); ``served`` is legacy.
        gaps: keys v3 leaves out as the mapping documents for this stock (``expected_gap``,
            also kept on a ``value_differs`` row that has both).
        errors: the failed routes (``error``).
        err_code: the business error both routes gave (``not_found_both``).
    """

    stock_id: str
    klass: RowClass
    diffs: tuple[FieldDiff, ...] = ()
    gaps: tuple[str, ...] = ()
    errors: tuple[RouteError, ...] = ()
    err_code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; diffs use ``legacy``/``v3`` for the two values."""
        return {
            "stock_id": self.stock_id,
            "class": self.klass,
            "diffs": [{"field": d.field, "legacy": d.served, "v3": d.other} for d in self.diffs],
            "gaps": list(self.gaps),
            "errors": [e.as_dict() for e in self.errors],
            "err_code": self.err_code,
        }


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Every failed route of one cause: one line in the report, not one per stock."""

    cause: str
    route: Route
    count: int
    stock_ids: tuple[str, ...]
    sample_message: str
    credentials: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (all stock ids of the group)."""
        return {
            "cause": self.cause,
            "route": self.route,
            "count": self.count,
            "credentials": self.credentials,
            "sample_message": self.sample_message,
            "stock_ids": list(self.stock_ids),
        }


@dataclass(frozen=True, slots=True)
class CompareSummary:
    """Totals over all stocks.

    ``readiness_percent`` is ``ready / comparable * 100`` rounded to 2 decimals, where
    ``ready = match + expected_gap`` and ``comparable = total - not_found_both``; ``None`` when
    nothing is comparable.
    """

    total: int
    counts: Mapping[RowClass, int]
    mismatches_by_field: Mapping[str, int]
    gaps_by_field: Mapping[str, int]
    error_groups: tuple[ErrorGroup, ...]

    @property
    def comparable(self) -> int:
        """Stocks that count for readiness (all but ``not_found_both``)."""
        return self.total - self.counts.get("not_found_both", 0)

    @property
    def ready(self) -> int:
        """Stocks that give the same answer on v3 (``match`` + ``expected_gap``)."""
        return self.counts.get("match", 0) + self.counts.get("expected_gap", 0)

    @property
    def readiness_percent(self) -> float | None:
        """Share of comparable stocks that are ready, in percent; ``None`` if none is."""
        if not self.comparable:
            return None
        return round(self.ready * 100.0 / self.comparable, 2)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "total": self.total,
            "comparable": self.comparable,
            "ready": self.ready,
            "counts": {k: self.counts.get(k, 0) for k in ROW_CLASSES},
            "readiness_percent": self.readiness_percent,
            "mismatches_by_field": dict(sorted(self.mismatches_by_field.items())),
            "gaps_by_field": dict(sorted(self.gaps_by_field.items())),
            "error_groups": [g.as_dict() for g in self.error_groups],
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Ready or not against a threshold, with the reasons when not."""

    ready: bool
    threshold: float
    text: str
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ready": self.ready,
            "threshold_percent": self.threshold,
            "text": self.text,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Rows in input order, the summary, the verdict and the run's metadata."""

    rows: tuple[CompareRow, ...]
    summary: CompareSummary
    verdict: Verdict
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``format``, ``metadata``, ``summary``, ``verdict``, ``rows``)."""
        return {
            "format": JSON_FORMAT,
            "metadata": dict(self.metadata),
            "summary": self.summary.as_dict(),
            "verdict": self.verdict.as_dict(),
            "rows": [r.as_dict() for r in self.rows],
        }


# ---------------------------------------------------------------------------- classification


def _clip(text: str) -> str:
    message = " ".join(text.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _return_fail_rule(table: MappingTable | None, return_msg: str) -> tuple[int, str] | None:
    """The (status, code) of the mapping's ``return_fail`` rule whose message this is."""
    if table is None:
        return None
    for (status, code), rule in table.errors.items():
        if rule.kind == "return_fail" and rule.return_msg == return_msg:
            return status, code
    return None


def _is_credentials(route: Route, status: int | None, code: str | None) -> bool:
    if route == "v3":
        return status == 401 or code == "SIGN_ERROR"
    return code == "SIGN_ERROR"


def _credentials_cause(route: Route, what: str) -> str:
    side = _ROUTE_NAME[route]
    return f"{side} refused the shim's credentials ({what}; {_CREDENTIALS_HINT[route]})"


def route_error(
    route: Route, failure: ShimError | Mapping[str, str], table: MappingTable | None = None
) -> RouteError:
    """Describe a failed route: a typed error, or an answer with ``return_code`` not SUCCESS.

    The cause is what errors are grouped by: it names the route and the kind of failure, and
    never a stock id or a value, so 18 stocks refused for one reason make one line.
    """
    side = _ROUTE_NAME[route]
    if not isinstance(failure, ShimError):
        msg = str(failure.get("return_msg", ""))
        found = _return_fail_rule(table, msg) if route == "v3" else None
        if found is not None:
            rule_status, rule_code = found
            refused = _is_credentials(route, rule_status, rule_code)
            if refused:
                cause = _credentials_cause(route, f"HTTP {rule_status} {rule_code}")
            else:
                cause = f"{side} answered HTTP {rule_status} {rule_code} (return_code=FAIL)"
            return RouteError(
                route, "return_code=FAIL", _clip(msg), cause, refused, rule_status, rule_code
            )
        cause = f"{side} answered return_code=FAIL: {_clip(msg)[:80] or '(no return_msg)'}"
        return RouteError(route, "return_code=FAIL", _clip(msg), cause)
    message = _clip(str(failure))
    status: int | None = getattr(failure, "status", None)
    code: str | None = getattr(failure, "code", None)
    if isinstance(failure, SignatureError):
        name = "SignatureError"
        cause = f"{side} answer failed signature verification"
    elif isinstance(failure, UpstreamError):
        name = f"UpstreamError({failure.kind})"
        kind = failure.kind
        if _is_credentials(route, status, code) and kind == "http_status":
            cause = _credentials_cause(route, f"HTTP {status} {code or ''}".rstrip())
        elif kind == "timeout":
            cause = f"{side} timed out"
        elif kind == "connection":
            cause = f"{side} connection failed"
        elif kind == "http_status":
            cause = f"{side} answered HTTP {status} {code or ''}".rstrip()
        elif kind == "budget":
            cause = f"{side} ran out of the call's time budget"
        else:
            cause = f"{side} gave an unusable answer ({kind})"
    elif isinstance(failure, MappingError):
        name = "MappingError"
        cause = f"{side} answer could not be mapped onto the v2 answer"
    else:
        name = type(failure).__name__
        cause = f"{side}: {name}"
    credentials = _is_credentials(route, status, code) and (
        isinstance(failure, UpstreamError) and failure.kind == "http_status"
    )
    return RouteError(route, name, message, cause, credentials, status, code)


def _is_answer(answer: Mapping[str, str]) -> bool:
    return answer.get("return_code") == "SUCCESS"


def _business_error(answer: Mapping[str, str]) -> str | None:
    if answer.get("result_code") != "SUCCESS" or answer.get("err_code"):
        return answer.get("err_code") or "(no err_code)"
    return None


def gap_keys(table: MappingTable | None) -> frozenset[str]:
    """The v2 keys the mapping may leave out: v3-sourced and ``required = false``."""
    if table is None:
        return frozenset()
    return frozenset(r.v2_key for r in table.fields if r.kind == "v3" and not r.required)


def classify(
    stock_id: str,
    legacy: RouteResult | ShimError,
    v3: RouteResult | ShimError,
    *,
    ignore: frozenset[str],
    table: MappingTable | None = None,
) -> CompareRow:
    """Classify one stock from both routes' results (see the module docstring).

    A key counts as an expected gap when legacy has it, v3's answer lacks it, the v3 route
    recorded it as unmapped for this stock, and the mapping declares it as a v3-sourced,
    ``required = false`` key: all three come from the mapping and the answer, none from a list.
    """
    results: dict[Route, RouteResult] = {}
    errors: list[RouteError] = []
    for route, got in (("legacy", legacy), ("v3", v3)):
        if isinstance(got, ShimError):
            errors.append(route_error(route, got, table))  # type: ignore[arg-type]
        elif not _is_answer(got.answer):
            errors.append(route_error(route, got.answer, table))  # type: ignore[arg-type]
        else:
            results[route] = got  # type: ignore[index]
    if errors:
        return CompareRow(stock_id, "error", errors=tuple(errors))
    old, new = results["legacy"], results["v3"]
    old_err, new_err = _business_error(old.answer), _business_error(new.answer)
    if old_err is not None and old_err == new_err:
        return CompareRow(stock_id, "not_found_both", err_code=old_err)
    diffs = diff_answers(old.answer, new.answer, ignore=ignore)
    allowed = gap_keys(table) & set(new.unmapped)
    gaps = tuple(d.field for d in diffs if d.other is None and d.field in allowed)
    values = tuple(d for d in diffs if d.field not in gaps)
    if values:
        return CompareRow(stock_id, "value_differs", diffs=values, gaps=gaps)
    if gaps:
        return CompareRow(stock_id, "expected_gap", gaps=gaps)
    return CompareRow(stock_id, "match")


def summarise(rows: Sequence[CompareRow]) -> CompareSummary:
    """Count the classes, the differing and gap fields, and group the errors by cause."""
    counts: Counter[RowClass] = Counter(r.klass for r in rows)
    by_field: Counter[str] = Counter()
    gaps: Counter[str] = Counter()
    groups: dict[tuple[Route, str], list[tuple[str, RouteError]]] = defaultdict(list)
    for row in rows:
        by_field.update(d.field for d in row.diffs)
        gaps.update(row.gaps)
        for err in row.errors:
            groups[(err.route, err.cause)].append((row.stock_id, err))
    error_groups = sorted(
        (
            ErrorGroup(
                cause=cause,
                route=route,
                count=len(items),
                stock_ids=tuple(s for s, _ in items),
                sample_message=items[0][1].message,
                credentials=items[0][1].credentials,
            )
            for (route, cause), items in groups.items()
        ),
        key=lambda g: (-g.count, g.route, g.cause),
    )
    return CompareSummary(
        total=len(rows),
        counts=dict(counts),
        mismatches_by_field=dict(by_field),
        gaps_by_field=dict(gaps),
        error_groups=tuple(error_groups),
    )


def _top(counter: Mapping[str, int], n: int = 4) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")


def judge(summary: CompareSummary, threshold: float) -> Verdict:
    """The verdict against ``threshold`` percent (readiness must be at least that)."""
    c = summary.counts
    excluded = c.get("not_found_both", 0)
    note = f"; {excluded} found on neither route (excluded)" if excluded else ""
    pct = summary.readiness_percent
    if pct is None:
        reason = (
            f"no stock was found on either route ({excluded} of {summary.total})"
            if summary.total
            else "no stock was compared"
        )
        return Verdict(False, threshold, f"NOT READY: {reason}; nothing to judge", (reason,))
    gaps = c.get("expected_gap", 0)
    gap_note = f" ({gaps} differ only by documented gaps)" if gaps else ""
    head = (
        f"{pct:.2f}% of comparable stocks ({summary.ready} of {summary.comparable}) give the "
        f"same answer on v3{gap_note}"
    )
    if summary.ready * 100.0 >= threshold * summary.comparable:  # unrounded
        return Verdict(True, threshold, f"READY: {head}, threshold {threshold:.2f}%{note}")
    reasons: list[str] = []
    if c.get("value_differs"):
        reasons.append(
            f"{c['value_differs']} differ in values ({_top(summary.mismatches_by_field)})"
        )
    for g in summary.error_groups:
        reasons.append(f"{g.count} × {g.cause}")
    text = f"NOT READY: {head}, below {threshold:.2f}%"
    if reasons:
        text += ": " + "; ".join(reasons)
    return Verdict(False, threshold, text + note, tuple(reasons))


def run_compare(
    query: QueryFn,
    stock_ids: Sequence[str],
    *,
    ignore: frozenset[str],
    table: MappingTable | None = None,
    threshold: float = 100.0,
    concurrency: int = 1,
    progress: Callable[[int, int], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
    first: CompareRow | None = None,
) -> CompareReport:
    """Query every stock through both routes, classify, summarise and judge.

    Args:
        query: ``query(route, stock_id)`` returns the route's :class:`~shim._flow.RouteResult`
            or raises a :class:`~shim._errors.ShimError` (recorded for that stock and route).
            Other exceptions are bugs and propagate. Called from ``concurrency`` threads.
        stock_ids: the stocks; rows keep this order.
        ignore: v2 fields left out of the diff (``nonce_str``, ``sign``).
        table: the mapping in force (expected gaps and the causes of ``return_code=FAIL``).
        threshold: the readiness percent the verdict requires.
        concurrency: stocks compared at once (each stock's two routes run one after the other).
        progress: called with ``(done, total)`` after each stock (from worker threads).
        metadata: carried into the report unchanged.
        first: an already classified row for ``stock_ids[0]`` (the pre-flight's).
    """
    total = len(stock_ids)
    lock = threading.Lock()
    done = [0]

    def one(stock_id: str) -> CompareRow:
        got: dict[Route, RouteResult | ShimError] = {}
        for route in _ROUTES:
            try:
                got[route] = query(route, stock_id)
            except ShimError as exc:
                got[route] = exc
        row = classify(stock_id, got["legacy"], got["v3"], ignore=ignore, table=table)
        tick()
        return row

    def tick() -> None:
        with lock:
            done[0] += 1
            n = done[0]
        if progress is not None:
            progress(n, total)

    rows: list[CompareRow] = []
    todo = list(stock_ids)
    if first is not None and todo and todo[0] == first.stock_id:
        rows.append(first)
        todo = todo[1:]
        tick()
    workers = max(1, min(concurrency, MAX_CONCURRENCY, len(todo) or 1))
    if workers == 1:
        rows.extend(one(s) for s in todo)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="coupon-shim-compare") as pool:
            rows.extend(pool.map(one, todo))
    summary = summarise(rows)
    return CompareReport(tuple(rows), summary, judge(summary, threshold), dict(metadata or {}))


# -------------------------------------------------------------------------------- the runner


class Comparer:
    """Queries both routes for one merchant, with compare's own client and breakers.

    Built from a config snapshot; never touches a serving shim's breakers or client. Each
    route call follows the config's retry and time-budget settings; the breaker handed to the
    flow is fresh for every call, so repeated failures are reported per stock instead of
    turning the rest of the list into ``circuit_open``.

    Args:
        config: the configuration snapshot.
        mch_id: the merchant to compare for.
        appid: the appid to send (default: the merchant's).
        client: an ``httpx.Client`` to use (not closed); by default one is built.
        transport: an httpx transport for the built client (tests: the emulator's).
        concurrency: sizes the built client's connection pool.

    Raises:
        ConfigError: the merchant is not configured, or has no v3 credentials.
    """

    def __init__(
        self,
        config: ShimConfig,
        mch_id: str,
        *,
        appid: str | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        concurrency: int = 4,
    ) -> None:
        import httpx

        from shim._mapping import load_mapping

        self.config = config
        where = f" in {config.source.name}" if config.source else ""
        merchant: MerchantConfig | None = config.merchants.get(mch_id)
        if merchant is None:
            raise ConfigError(
                f"no merchant entry for {mch_id!r}{where}; compare needs its credentials",
                key=f'merchants."{mch_id}"',
            )
        if merchant.v3 is None:
            raise ConfigError(
                f"merchant {mch_id!r}{where} has no v3 credentials (v3_private_key, "
                "v3_cert_serial and WeChat Pay's key): compare needs both routes",
                key=f'merchants."{mch_id}"',
            )
        self.merchant = merchant
        self.appid = appid or merchant.appid
        self.table = load_mapping(config.mapping_dir)
        self._owns_client = client is None
        size = max(4, min(concurrency, MAX_CONCURRENCY) * 2)
        self._client = client or httpx.Client(
            transport=transport,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            follow_redirects=False,
        )

    def validate(self, stock_id: str) -> None:
        """Check one stock id as a v2 request would, before any network call.

        Raises:
            InputError: the id is not a valid ``coupon_stock_id``.
        """
        from shim import _v2 as v2

        v2.validate_request(
            {"coupon_stock_id": stock_id, "appid": self.appid, "mch_id": self.merchant.mch_id}
        )

    def query(self, route: Route, stock_id: str) -> RouteResult:
        """One route for one stock (retries and budget as configured, a private breaker)."""
        from shim import _v2 as v2
        from shim._flow import CallContext, route_flow
        from shim._policy import CircuitBreaker
        from shim._transport import run_sync

        cfg = self.config
        request = v2.validate_request(
            {"coupon_stock_id": stock_id, "appid": self.appid, "mch_id": self.merchant.mch_id}
        )
        breaker = CircuitBreaker(cfg.breaker)
        ctx = CallContext(
            config=cfg,
            merchant=self.merchant,
            mapping=self.table,
            request=request,
            request_fields=request._asdict(),
            breakers=lambda _route, _mch: breaker,
            deadline=time.monotonic() + cfg.upstream.budget_s,
            attempts=cfg.retry.attempts,
        )
        result: RouteResult = run_sync(route_flow(ctx, route), self._client)
        return result

    def preflight(self, stock_id: str) -> CompareRow:
        """Compare the first stock; raise if either route refused the shim's credentials.

        Raises:
            ConfigError: a route refused the shim's credentials (the rest of the list would
                fail the same way), naming the route and what to check.
        """
        got: dict[Route, RouteResult | ShimError] = {}
        for route in _ROUTES:
            try:
                got[route] = self.query(route, stock_id)
            except ShimError as exc:
                got[route] = exc
        row = classify(
            stock_id, got["legacy"], got["v3"], ignore=self.config.shadow.ignore_fields,
            table=self.table,
        )  # fmt: skip
        for err in row.errors:
            if err.credentials:
                raise ConfigError(
                    f"{err.cause} for merchant {self.merchant.mch_id}; nothing compared"
                )
            if err.route == "legacy" and err.error == "SignatureError":
                raise ConfigError(
                    "the v2 answer's signature does not verify with the configured v2_key for "
                    f"merchant {self.merchant.mch_id} (check v2_key and v2_sign_type); "
                    "nothing compared"
                )
        return row

    def mapping_info(self) -> dict[str, Any]:
        """The mapping's name, format and SHA-256 (for the report's metadata)."""
        info: dict[str, Any] = {"name": self.table.name, "file": Path(self.table.source).name}
        try:
            raw = Path(self.table.source).read_bytes()
        except OSError:
            return info
        info["sha256"] = hashlib.sha256(raw).hexdigest()
        match = re.search(rb"(?m)^format\s*=\s*(\d+)", raw)
        if match:
            info["format"] = int(match.group(1))
        return info

    def close(self) -> None:
        """Close the client if compare built it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Comparer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- ids


def read_ids_file(path: str | os.PathLike[str]) -> list[str]:
    """Read stock ids, one per line (``-`` reads standard input).

    Blank lines and ``#`` comments (whole-line or trailing) are skipped; surrounding
    whitespace is stripped; duplicates are kept once, in first-seen order.

    Raises:
        InputError: the file cannot be read or holds no id (``field="ids_file"``).
    """
    try:
        if str(path) == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8-sig") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise InputError(f"cannot read the ids file: {reason}", field="ids_file") from None
    ids = dedupe_ids(line.split("#", 1)[0].strip() for line in text.splitlines())[0]
    if not ids:
        raise InputError("the ids file holds no stock id", field="ids_file")
    return ids


def dedupe_ids(ids: Iterable[str]) -> tuple[list[str], int]:
    """Keep each non-empty id once, in first-seen order; returns ``(ids, duplicates)``."""
    seen: dict[str, None] = {}
    dupes = 0
    for item in ids:
        if not item:
            continue
        if item in seen:
            dupes += 1
        else:
            seen[item] = None
    return list(seen), dupes


# ------------------------------------------------------------------------------- rendering


def _cell(value: str | None) -> str:
    if value is None:
        return "(missing)"
    text = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    if text == "":
        return '""'
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLES])
    return shown + (f" (+{len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else "")


def render_table(
    report: CompareReport, *, width: int | None = None, problems_only: bool = False
) -> str:
    """The report as text: a field-level table, grouped errors, totals and the verdict line.

    One line per matching (or not-found) stock unless ``problems_only``, one per differing
    field, one per documented gap; errors are not rows but one line per cause. Columns are
    aligned by display width (CJK text takes two cells), by ``rich``.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(
        width=width or 200, record=True, file=io.StringIO(), color_system=None, highlight=False
    )
    rows = [r for r in report.rows if r.klass != "error"]
    if problems_only:
        rows = [r for r in rows if r.klass not in ("match", "not_found_both")]
    if rows:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
        for name in ("STOCK", "CLASS", "FIELD", "LEGACY", "V3"):
            table.add_column(name, overflow="fold")
        for row in rows:
            if row.klass == "match":
                table.add_row(row.stock_id, "match", "", "", "")
            elif row.klass == "not_found_both":
                table.add_row(row.stock_id, "not_found_both", "", row.err_code or "", "")
            for d in row.diffs:
                table.add_row(
                    row.stock_id, "value_differs", d.field, _cell(d.served), _cell(d.other)
                )
            for gap in row.gaps:
                table.add_row(row.stock_id, "expected_gap", gap, "(present)", "(unmapped)")
        console.print(table)
    s, c = report.summary, report.summary.counts
    if s.error_groups:
        console.print("Errors (one line per cause):")
        for g in s.error_groups:
            console.print(
                f"  {g.count} stock(s): {g.cause}: {g.sample_message}; e.g. "
                f"{_examples(g.stock_ids)}",
                soft_wrap=True,
            )
    console.print(
        f"Compared {s.total} stock(s): "
        + ", ".join(f"{c.get(k, 0)} {k}" for k in ROW_CLASSES)
        + ".",
        soft_wrap=True,
    )
    if s.mismatches_by_field:
        console.print(f"Fields that differ: {_top(s.mismatches_by_field, 10)}.", soft_wrap=True)
    if s.gaps_by_field:
        console.print(f"Documented gaps: {_top(s.gaps_by_field, 10)}.", soft_wrap=True)
    console.print(f"Verdict: {report.verdict.text}", soft_wrap=True)
    text = console.export_text()
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def render_json(report: CompareReport) -> str:
    """The report as indented JSON, UTF-8 text kept readable."""
    return json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n"


# -------------------------------------------------------------------------------------- CLI


DESCRIPTION: Final = (
    "Query every stock on both routes (legacy and v3, bypassing routing, with compare's own "
    "client and circuit breakers) and classify it: match, expected_gap, value_differs, "
    "not_found_both (excluded from readiness) or error (grouped by cause). The last line is "
    "the verdict. Exit status: 0 ok, 1 readiness below --fail-under, 2 usage or invalid ids, "
    "3 config or credentials error (found before the list runs)."
)
EPILOG: Final = (
    "examples:\n"
    "  coupon-shim compare --config shim.toml --mch-id 10000098 1757 9856000\n"
    "  coupon-shim compare --config shim.toml --mch-id 10000098 --ids-file stocks.txt \\\n"
    "      --fail-under 99.5 --concurrency 8 --json > compare.json"
)


def add_arguments(c: argparse.ArgumentParser) -> None:
    """Add ``compare``'s options to its parser."""
    c.add_argument("--config", required=True, metavar="FILE", help="the shim.toml to use")
    c.add_argument("--mch-id", required=True, metavar="MCH_ID", help="the merchant to query as")
    c.add_argument("--appid", help="the appid to send (default: the merchant's configured appid)")
    c.add_argument(
        "--ids-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file with one stock id per line (# comments allowed; '-' is stdin); repeatable",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON (with metadata)")
    c.add_argument(
        "--fail-under",
        type=_percent,
        metavar="PCT",
        help="exit 1 when readiness is below PCT percent (0-100)",
    )
    c.add_argument(
        "--concurrency",
        type=_concurrency,
        default=4,
        metavar="N",
        help=f"stocks compared at once, 1-{MAX_CONCURRENCY} (default 4)",
    )
    c.add_argument(
        "--problems-only", action="store_true", help="leave matching stocks out of the table"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c.add_argument("stock_ids", nargs="*", metavar="STOCK_ID", help="stock ids to compare")


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError("must be between 0 and 100")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_CONCURRENCY}")
    return value


def _fail(message: str, code: int, err: TextIO) -> int:
    err.write(f"coupon-shim compare: {' '.join(message.split())}\n")
    return code


def _versions() -> dict[str, str]:
    from shim import __version__

    out = {"coupon_shim": __version__, "python": platform.python_version()}
    for dist in ("httpx", "wechatpayv3", "rich"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: S112 - a missing distribution is not an error here
            continue
    return out


def command(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``coupon-shim compare``; returns the exit status (see :func:`register`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import rich  # noqa: F401
    except ImportError:
        return _fail(
            "needs the 'cli' extra for its tables: pip install 'coupon-shim[cli]'", EXIT_USAGE, err
        )
    from shim._loader import load_config

    try:
        ids_in = list(args.stock_ids)
        for path in args.ids_file:
            ids_in += read_ids_file(path)
    except InputError as exc:
        return _fail(str(exc), EXIT_USAGE, err)
    ids, dupes = dedupe_ids(s.strip() for s in ids_in)
    if not ids:
        return _fail("give stock ids or --ids-file", EXIT_USAGE, err)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, err)
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    try:
        comparer = Comparer(
            config, args.mch_id, appid=args.appid, transport=transport,
            concurrency=args.concurrency,
        )  # fmt: skip
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG, err)
    with comparer:
        bad: list[str] = []
        for stock_id in ids:
            try:
                comparer.validate(stock_id)
            except InputError as exc:
                bad.append(f"{stock_id[:40]!r} ({exc})")
        if bad:
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            return _fail(
                f"{len(bad)} invalid stock id(s): {'; '.join(bad[:3])}{more}", EXIT_USAGE, err
            )
        try:
            first = comparer.preflight(ids[0])
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG, err)
        threshold = 100.0 if args.fail_under is None else args.fail_under
        metadata: dict[str, Any] = {
            "config": str(args.config),
            "merchant": args.mch_id,
            "appid": comparer.appid,
            "mapping": comparer.mapping_info(),
            "ignore_fields": sorted(config.shadow.ignore_fields),
            "started_at": started_at.isoformat(timespec="seconds"),
            "stocks": len(ids),
            "duplicates_skipped": dupes,
            "concurrency": args.concurrency,
            "fail_under": args.fail_under,
            "versions": _versions(),
        }
        with _progress(err, len(ids), enabled=not args.no_progress and len(ids) > 1) as tick:
            report = run_compare(
                comparer.query,
                ids,
                ignore=config.shadow.ignore_fields,
                table=comparer.table,
                threshold=threshold,
                concurrency=args.concurrency,
                progress=tick,
                metadata=metadata,
                first=first,
            )
    elapsed = time.monotonic() - started
    report.metadata["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")  # type: ignore[index]
    report.metadata["duration_s"] = round(elapsed, 3)  # type: ignore[index]
    if dupes:
        err.write(f"coupon-shim compare: {dupes} duplicate stock id(s) skipped\n")
    if args.json:
        out.write(render_json(report))
    else:
        out.write(render_table(report, problems_only=args.problems_only))
    if args.fail_under is not None and not report.verdict.ready:
        return EXIT_BELOW_THRESHOLD
    return EXIT_OK


class _progress:
    """A rich progress bar on stderr (count, rate, ETA); a final line when not a terminal."""

    def __init__(self, err: TextIO, total: int, *, enabled: bool) -> None:
        self._err, self._total, self._enabled = err, total, enabled
        self._bar: Any = None
        self._task: Any = None
        self._started = time.monotonic()

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self._enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self._err)
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("compare"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("compare", total=self._total, rate="")
            self._bar.start()
        return self._tick

    def _tick(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._bar.update(self._task, completed=done, rate=f"{done / elapsed:.1f} stocks/s")

    def __exit__(self, *exc_info: object) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        elapsed = time.monotonic() - self._started
        rate = self._total / elapsed if elapsed > 0 else 0.0
        self._err.write(f"compared {self._total} stocks in {elapsed:.1f} s ({rate:.1f} stocks/s)\n")
        self._err.flush()
