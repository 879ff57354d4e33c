"""Collecting a compare run: query both routes per stock and classify each row.

:func:`run_compare` drives any ``query(route, stock_id)`` function over the stock ids (a
bounded thread pool); :class:`Comparer` is that function for a config snapshot, with its own
HTTP client and its own circuit breakers (so a compare run neither shares nor trips the
breakers that serve traffic). :func:`read_ids_file` and :func:`dedupe_ids` read the ids.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shim._compare.classify import classify, judge, summarise
from shim._compare.model import CompareReport, CompareRow
from shim._errors import ConfigError, InputError, Route, ShimError

if TYPE_CHECKING:
    import httpx

    from shim._flow import RouteResult
    from shim._mapping.model import MappingTable
    from shim._values import MerchantConfig, ShimConfig

__all__ = ["MAX_CONCURRENCY", "Comparer", "QueryFn", "dedupe_ids", "read_ids_file", "run_compare"]


MAX_CONCURRENCY: Final = 64
_ROUTES: Final[tuple[Route, Route]] = ("legacy", "v3")
QueryFn = Callable[[Route, str], "RouteResult"]


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

        from shim._mapping.load import load_mapping

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
