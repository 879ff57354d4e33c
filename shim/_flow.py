"""The one flow of a call, sans-IO: generators that yield what to do and receive what happened.

A flow yields :class:`HttpRequest` (the driver answers with an :class:`HttpResponse` or a
:class:`TransportFailure`) or :class:`Sleep` (the driver sleeps and answers ``None``), and
finally returns its result. All logic — signing, verification, parsing, mapping, retries,
circuit breaking and fallback — lives here; ``shim._transport`` holds the two small drivers
(sync and async) that only do I/O, so the twins cannot drift.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, TypeVar

from shim import _v2 as v2
from shim import _v3 as v3
from shim._errors import (
    ClosedError,
    ConfigError,
    LocalError,
    OverloadError,
    Route,
    ShimError,
    UpstreamError,
)
from shim._flatxml import read_flat
from shim._mapping.apply import map_error, map_success
from shim._mapping.model import MappingTable
from shim._policy import (
    CircuitBreaker,
    FallbackCause,
    backoff_delay,
    fallback_cause,
    fallback_target,
    should_retry,
)
from shim._routing import Decision
from shim._values import MerchantConfig, ShimConfig

__all__ = [
    "CallContext",
    "CallOutcome",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "Instruction",
    "RouteResult",
    "Sleep",
    "TransportFailure",
    "call_flow",
    "header_map",
    "new_nonce",
    "resign",
    "route_flow",
]

USER_AGENT = "coupon-shim/0.1"
_XML_TYPES = ("text/xml", "application/xml", "text/plain")
_UNSIGNED = frozenset({"nonce_str", "sign"})


class HttpRequest:
    """One HTTP request for the driver to send, with its time limits.

    Treated as immutable, like every per-call value here (see :class:`CallContext`). A
    request built with ``sign`` is signed when it is sent: its ``headers`` are made by
    ``sign()`` the first time they are read, which a driver does only once the request has
    an admission slot, so a request waiting in the queue holds no (stale) signature and
    costs no RSA work until it can go.
    """

    __slots__ = (
        "_headers",
        "_sign",
        "body",
        "connect_timeout_s",
        "deadline",
        "max_body_bytes",
        "method",
        "route",
        "timeout_s",
        "url",
    )

    def __init__(
        self,
        method: str,
        url: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        route: Route,
        timeout_s: float,
        connect_timeout_s: float,
        deadline: float,
        max_body_bytes: int,
        sign: Callable[[], tuple[tuple[str, str], ...]] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self._headers = headers
        self._sign = sign
        self.body = body
        self.route = route
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The headers to send (a request signed at send time is signed now, once)."""
        sign = self._sign
        if sign is not None:
            self._sign = None
            self._headers = sign()
        return self._headers

    def __repr__(self) -> str:  # headers carry Authorization, the body a v2 sign
        return (
            f"HttpRequest({self.method} {self.url}, route={self.route!r}, "
            f"headers=<{len(self._headers)} redacted>, "
            f"body=<{len(self.body)} bytes redacted>)"
        )


def header_map(pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    """An answer's headers as an immutable mapping of lower-case names to values.

    A header sent more than once is joined with ``", "`` in the order received (RFC 9110
    field combination), so a repeated ``Wechatpay-Signature`` fails verification instead of
    one copy being picked.
    """
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A whole HTTP answer.

    ``headers`` is an immutable mapping keyed by lower-case names (see :func:`header_map`),
    built once by the driver: the flow never sees the HTTP library's own types.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __repr__(self) -> str:  # answers carry signatures
        return f"HttpResponse({self.status}, body=<{len(self.body)} bytes redacted>)"


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """The request got no whole answer: ``kind`` is an :class:`UpstreamError` kind."""

    kind: Literal["timeout", "connection", "protocol", "budget", "overload", "closed"]
    detail: str


@dataclass(frozen=True, slots=True)
class Sleep:
    """Ask the driver to wait (retry backoff)."""

    seconds: float


Instruction = HttpRequest | Sleep
T = TypeVar("T")
Flow = Generator[Instruction, "HttpResponse | TransportFailure | None", T]


def new_nonce() -> str:
    """A fresh 32-character nonce (the facades pass a faster one: :mod:`shim._nonces`)."""
    return secrets.token_hex(16)


@dataclass(slots=True)
class CallContext:
    """Everything one call's flow needs, passed in (time, nonce and randomness included).

    Treated as immutable (derive another with :func:`dataclasses.replace`); the per-call
    values are not declared frozen because a frozen dataclass's ``__init__`` costs four
    times as much, and the hot path builds several of them on every call (it passes the
    fields by position: a dozen keyword arguments cost more than the whole ``__init__``).
    """

    config: ShimConfig
    merchant: MerchantConfig
    mapping: MappingTable
    request: v2.V2Request
    breakers: Callable[[Route, str], CircuitBreaker]
    deadline: float
    attempts: int
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    nonce: Callable[[], str] = new_nonce
    rng: Callable[[], float] = secrets.SystemRandom().random
    request_fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RouteResult:
    """A verified v2-shaped answer from one route.

    Treated as immutable, like every per-call value here (see :class:`CallContext`).
    """

    answer: dict[str, str]
    route: Route
    attempts: int
    unmapped: tuple[str, ...] = ()
    status: int | None = None
    #: when the upstream's reply arrived (the call's monotonic clock); 0 for a cached answer
    received_at: float = 0.0
    #: a signed v3 answer refusing the shim's own credentials (401 / ``SIGN_ERROR``), mapped
    credentials_refused: bool = False


@dataclass(slots=True)
class CallOutcome:
    """What served a call.

    Treated as immutable, like every per-call value here (see :class:`CallContext`).
    """

    result: RouteResult
    served_by: Route
    fallback: bool
    fallback_error: ShimError | None = None
    fallback_cause: FallbackCause | None = None


def _answer(reply: HttpResponse | TransportFailure | None, route: Route) -> HttpResponse:
    """The driver's reply as a whole answer, or the typed error of its failure."""
    if isinstance(reply, HttpResponse):
        return reply
    failure = reply or TransportFailure("protocol", "no reply")
    if failure.kind == "overload":
        raise OverloadError(failure.detail, route=route)
    if failure.kind == "closed":
        raise ClosedError(failure.detail, route=route)
    raise UpstreamError(failure.detail, route=route, kind=failure.kind)


def _media_type(headers: Mapping[str, str]) -> str:
    """``text/xml`` of ``Content-Type: text/xml; charset=utf-8`` (lower-case; "" if absent)."""
    raw = headers.get("content-type", "")
    media = _MEDIA_TYPES.get(raw)
    if media is None:
        media = raw.split(";")[0].strip().lower()
        if len(_MEDIA_TYPES) < _MEDIA_TYPES_KEPT and len(raw) <= 128:
            _MEDIA_TYPES[raw] = media  # the few an upstream sends, bounded whatever it sends
    return media


#: ``Content-Type`` values seen, and their media types (pure, so shared; bounded).
_MEDIA_TYPES: dict[str, str] = {}
_MEDIA_TYPES_KEPT = 64


def _request(
    ctx: CallContext,
    deadline: float,
    route: Route,
    method: str,
    url: str,
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    sign: Callable[[], tuple[tuple[str, str], ...]] | None = None,
) -> HttpRequest:
    up = ctx.config.upstream
    return HttpRequest(
        method,
        url,
        headers,
        body,
        route,
        up.timeout_s,
        up.connect_timeout_s,
        deadline,
        up.max_body_bytes,
        sign,
    )


def _signed_v2_answer(ctx: CallContext, fields: Mapping[str, str]) -> dict[str, str]:
    answer = dict(fields)
    answer["nonce_str"] = ctx.nonce()
    m = ctx.merchant
    answer["sign"] = v2.sign(answer, m.v2_key.reveal(), m.v2_sign_type)
    return answer


def resign(ctx: CallContext, answer: Mapping[str, str]) -> dict[str, str]:
    """A verified v2 answer for this call: the same fields, a fresh nonce, the merchant's sign.

    Used for answers shared by coalesced calls and for cache hits, so every caller gets an
    answer of its own.
    """
    return _signed_v2_answer(ctx, {k: v for k, v in answer.items() if k not in _UNSIGNED})


def legacy_attempt(ctx: CallContext, deadline: float) -> Flow[RouteResult]:
    """One signed POST to the retired v2 endpoint; the answer is verified, fail closed."""
    m = ctx.merchant
    key = m.v2_key.reveal()
    sent_xml = v2.signed_request_xml(
        ctx.request, key=key, sign_type=m.v2_sign_type, nonce=ctx.nonce()
    )
    sent = yield _request(
        ctx,
        deadline,
        "legacy",
        "POST",
        ctx.config.upstream.v2_base_url + v2.QUERY_COUPON_STOCK_PATH,
        (("Content-Type", "text/xml; charset=utf-8"), ("User-Agent", USER_AGENT)),
        sent_xml,
    )
    reply = _answer(sent, "legacy")
    received = ctx.clock()
    if reply.status != 200:
        raise UpstreamError(
            f"v2 endpoint answered HTTP {reply.status}",
            route="legacy",
            kind="http_status",
            status=reply.status,
        )
    ctype = _media_type(reply.headers)
    if ctype and ctype not in _XML_TYPES:
        raise UpstreamError(
            f"v2 answer has content type {ctype[:40]!r}, not XML",
            route="legacy",
            kind="protocol",
            status=reply.status,
        )
    body, cap = reply.body, ctx.config.upstream.max_body_bytes
    # The common flat shape is read fast; anything else goes to the full, strict parser.
    parsed = read_flat(body) if len(body) <= cap else None
    if parsed is None:
        parsed = v2.parse_xml(body, max_bytes=cap)
    answer = v2.checked_answer(
        parsed, ctx.request, key=key, sign_type=m.v2_sign_type, mch_id=m.mch_id
    )
    return RouteResult(answer, "legacy", 1, status=reply.status, received_at=received)


#: ``v3.stock_path`` is pure and the same few stocks recur: memoised (ids are at most 20
#: characters, and a refused id raises, so it is never kept).
_stock_path = functools.lru_cache(maxsize=4096)(v3.stock_path)


def v3_attempt(ctx: CallContext, deadline: float) -> Flow[RouteResult]:
    """One signed GET of the v3 stock query; verified, then mapped onto a re-signed v2 dict."""
    m = ctx.merchant
    creds = m.v3
    if creds is None:
        raise ConfigError(
            "has no v3 credentials (v3_private_key, v3_cert_serial, WeChat Pay keys)",
            key=f'merchants."{m.mch_id}"',
        )
    stock_id = ctx.request.coupon_stock_id
    creator = m.creator_for(stock_id)
    path = _stock_path(stock_id, creator)

    def sign() -> tuple[tuple[str, str], ...]:
        # Signed when sent (see HttpRequest): the RSA work and the timestamp belong to the
        # moment the request leaves, not to its wait for an admission slot.
        auth = v3.authorization(
            creds,
            mch_id=m.mch_id,
            method="GET",
            path=path,
            body="",
            timestamp=int(ctx.wall()),
            nonce=ctx.nonce(),
        )
        headers: tuple[tuple[str, str], ...] = (
            ("Accept", "application/json"),
            ("Authorization", auth),
            ("User-Agent", USER_AGENT),
        )
        if creds.public_key_id:
            headers += (("Wechatpay-Serial", creds.public_key_id),)
        return headers

    url = ctx.config.upstream.v3_base_url + path
    reply = _answer((yield _request(ctx, deadline, "v3", "GET", url, (), b"", sign)), "v3")
    received = ctx.clock()
    answer_headers = reply.headers
    status, rid = reply.status, v3.request_id_of(answer_headers)
    if 200 <= status < 300:
        text = v3.verify_answer(creds, answer_headers, reply.body, now=ctx.wall(), status=status)
        ctype = _media_type(answer_headers)
        if ctype != "application/json":
            raise UpstreamError(
                f"v3 answer has content type {ctype[:40]!r}, not JSON",
                route="v3",
                kind="protocol",
                status=status,
                request_id=rid,
            )
        body = v3.parse_json_object(text, status=status, request_id=rid)
        if body.get("stock_id") != stock_id or body.get("stock_creator_mchid", creator) != creator:
            raise UpstreamError(
                "v3 answered for another stock or creator merchant than the one asked for; "
                "refused (a mixed-up or replayed answer)",
                route="v3",
                kind="protocol",
                status=status,
                request_id=rid,
            )
        mapped = map_success(ctx.mapping, body, ctx.request_fields)
        unmapped = tuple(u.v2_key for u in mapped.unmapped)
        return RouteResult(
            _signed_v2_answer(ctx, mapped.fields), "v3", 1, unmapped, status, received
        )
    code = v3.parse_error_body(reply.body)
    if status == 429 or status >= 500:
        raise UpstreamError(
            f"v3 answered HTTP {status} {code or ''}".rstrip(),
            route="v3",
            kind="http_status",
            status=status,
            code=code,
            request_id=rid,
        )
    if not answer_headers.get("wechatpay-signature"):
        if status == 401:
            # WeChat Pay signs answers only to requests whose signature verified: a real
            # refusal of our credentials is unsigned. Its body is not data; its status is
            # what it means (an attacker able to forge it could as well drop the link).
            # The answer is the mapping's own (401, SIGN_ERROR) form, built from nothing the
            # upstream sent; the call falls back to legacy when it may.
            refusal = map_error(ctx.mapping, 401, "SIGN_ERROR", ctx.request_fields)
            if refusal.kind == "return_fail":
                return RouteResult(
                    _signed_v2_answer(ctx, refusal.fields), "v3", 1, (), 401, received, True
                )
            raise UpstreamError(
                f"v3 refused the shim's own credentials for merchant {m.mch_id} (HTTP 401 "
                f"{code or 'unsigned'}): check its v3_private_key, v3_cert_serial and the "
                "host clock",
                route="v3",
                kind="http_status",
                status=status,
                code=code,
                request_id=rid,
            )
        raise UpstreamError(
            f"v3 error answer HTTP {status} is unsigned; refused",
            route="v3",
            kind="http_status",
            status=status,
            code=code,
            request_id=rid,
        )
    v3.verify_answer(creds, answer_headers, reply.body, now=ctx.wall(), status=status)
    outcome = map_error(ctx.mapping, status, code, ctx.request_fields)
    if outcome.kind in ("business", "return_fail"):
        refused = status == 401 or code == "SIGN_ERROR"
        return RouteResult(
            _signed_v2_answer(ctx, outcome.fields), "v3", 1, (), status, received, refused
        )
    raise UpstreamError(
        f"v3 answered HTTP {status} {code or '(no code)'}, which the mapping has no v2 form for",
        route="v3",
        kind="http_status",
        status=status,
        code=code,
        request_id=rid,
    )


def route_flow(
    ctx: CallContext, route: Route, *, deadline: float | None = None
) -> Flow[RouteResult]:
    """One route with bounded retries, backoff with jitter, the time budget and its breaker.

    ``deadline`` (default: the call's) is when this route must give up.
    """
    if deadline is None:
        deadline = ctx.deadline
    breaker = ctx.breakers(route, ctx.merchant.mch_id)
    attempt_fn = legacy_attempt if route == "legacy" else v3_attempt
    attempt = 0
    while True:
        attempt += 1
        now = ctx.clock()
        if now >= deadline:
            raise UpstreamError("the call's time budget is spent", route=route, kind="budget")
        if not breaker.allow(now):
            raise UpstreamError(
                "circuit breaker is open after repeated failures; not calling",
                route=route,
                kind="circuit_open",
            )
        try:
            result = yield from attempt_fn(ctx, deadline)
        except UpstreamError as err:
            if err.transient:
                breaker.record_failure(ctx.clock(), err.kind)
            else:
                breaker.record_success()  # it answered; the answer was bad, not the link
            if should_retry(err, attempt=attempt, attempts=ctx.attempts):
                delay = backoff_delay(attempt, ctx.config.retry, ctx.rng())
                if ctx.clock() + delay < deadline:
                    if delay > 0:
                        yield Sleep(delay)
                    continue
            raise
        except LocalError:
            # Local congestion or a closing shim: the upstream was never given a fair try,
            # so the breaker learns nothing (a half-open probe is handed back).
            breaker.abandon_probe()
            raise
        except ShimError:
            breaker.record_success()
            raise
        except GeneratorExit:
            # The caller abandoned the call mid-request (cancelled, timed out). If this was the
            # half-open probe, re-open: a probe left outstanding would keep the breaker open
            # for good.
            if breaker.state == "half_open":
                breaker.record_failure(ctx.clock(), "abandoned")
            raise
        breaker.record_success()
        return result if result.attempts == attempt else replace(result, attempts=attempt)


def call_flow(ctx: CallContext, decision: Decision) -> Flow[CallOutcome]:
    """Serve a call on ``decision.serve``; fall back to the other route when the policy says so.

    :func:`shim._policy.fallback_target` decides once, before any I/O, whether a fallback is
    possible; only then does the serving route stop early enough to leave the fallback
    ``min(timeout_s, budget_s / 2)`` of the call's budget (under the kill switch, for
    example, the serving route keeps the whole budget). :func:`shim._policy.fallback_cause`
    then says whether the serving route's failure lets the call fall back.
    """
    target = fallback_target(ctx.config.routing, decision)
    serve_deadline = ctx.deadline
    if target is not None:
        up = ctx.config.upstream
        serve_deadline -= min(up.timeout_s, up.budget_s / 2)
    try:
        result = yield from route_flow(ctx, decision.serve, deadline=serve_deadline)
    except ShimError as err:
        cause = fallback_cause(err, target)
        if target is None or cause is None:
            raise
        return (yield from _fall_back(ctx, target, err, cause))
    if result.credentials_refused and target == "legacy":
        refusal = UpstreamError(
            f"v3 refused the shim's own credentials for merchant {ctx.merchant.mch_id} "
            f"(HTTP {result.status} SIGN_ERROR)",
            route="v3",
            kind="http_status",
            status=result.status,
            code="SIGN_ERROR",
        )
        return (yield from _fall_back(ctx, target, refusal, "credentials_refused"))
    return CallOutcome(result, decision.serve, False)


def _fall_back(
    ctx: CallContext, target: Route, err: ShimError, cause: FallbackCause
) -> Flow[CallOutcome]:
    try:
        result = yield from route_flow(ctx, target)
    except ShimError as second:
        raise second from err
    return CallOutcome(result, target, True, err, cause)
