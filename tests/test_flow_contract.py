"""The flow's contract, without a clock: scripted answers, a fake clock, no sockets, no sleeps.

The sans-IO flow (``shim._flow``) yields what to do — an :class:`HttpRequest` to send, a
:class:`Sleep` to wait — and receives what happened. :class:`Driver` here plays the driver:
each request is answered from a script (the emulator's own signed answer, an HTTP status, a
transport failure) and costs the script's latency on a :class:`FakeClock`; a ``Sleep``
moves the clock by its length. So every decision the core takes about time — retries and
their backoff, the budget, the circuit breaker's open / half-open / closed, fallback and its
reserve of the budget — is checked exactly and at once. The wall-clock tests keep only what
needs real sockets (``tests/test_hostile_time.py``, the fault matrix's delaying cases).
"""

# Private modules: the flow, its context and the policy pieces are what this suite drives
# (no public entry point exposes a sans-IO flow).
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from shim import Route, ShimConfig, ShimError, SignatureError, UpstreamError

# private: the v2 protocol module, to build or check v2 wire messages
from shim import _v2 as v2

# private: the sans-IO flow, driven directly with scripted answers
from shim._flow import (
    CallContext,
    CallOutcome,
    HttpRequest,
    HttpResponse,
    RouteResult,
    Sleep,
    TransportFailure,
    call_flow,
    route_flow,
)

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import load_mapping

# private: the pure retry and fallback policy, driven directly
from shim._policy import CircuitBreaker, backoff_delay

# private: the pure routing decision, driven directly
from shim._routing import Decision, decide
from shim.sandbox import Emulator, SandboxRequest, SandboxState
from tests.conftest import INPROCESS_URL, FakeClock
from tests.fault_cases import parse_emulator_config

STOCK = "1757"
MCH = "10000098"
BUDGET = 2.0
TIMEOUT = 0.5


#: One scripted step: ``"answer"`` (the emulator's genuine answer), an HTTP status (an
#: unsigned answer with an empty body), or a :class:`TransportFailure`.
Step = str | int | TransportFailure


@dataclass
class Driver:
    """Runs a flow to its end against a script, on a fake clock.

    ``script`` maps a route to its steps (the last one repeats); ``latency`` is what each
    request costs on the clock. Every request and sleep is recorded with the time it was
    made, and the driver checks the flow's own promises as it goes: no request is sent at or
    after its deadline, no request's deadline lies past the call's, and no sleep ends past it.
    """

    emulator: Emulator
    clock: FakeClock
    call_deadline: float
    script: dict[Route, list[Step]]
    latency: float | dict[Route, float] = 0.05
    sent: list[tuple[float, HttpRequest]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)

    def _reply(self, request: HttpRequest) -> HttpResponse | TransportFailure:
        steps = self.script[request.route]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        latency = self.latency
        if isinstance(latency, dict):
            latency = latency[request.route]
        if self.clock.now + latency > request.deadline:
            # as the real drivers do: the request's deadline cuts the exchange
            self.clock.now = request.deadline
            return TransportFailure("budget", "the call's time budget is spent")
        self.clock.now += latency
        if isinstance(step, TransportFailure):
            return step
        if isinstance(step, int):
            return HttpResponse(step, {"content-type": "application/json"}, b"")
        parts = urlsplit(request.url)
        reply = self.emulator.handle(
            SandboxRequest(
                method=request.method,
                target=(parts.path + (f"?{parts.query}" if parts.query else "")).encode(),
                headers={k.lower(): v for k, v in request.headers},
                body=request.body,
                client_host="127.0.0.1",
            )
        )
        headers = {k.lower(): v for k, v in reply.headers}
        return HttpResponse(reply.status, headers, reply.body)

    def run(self, flow: Generator[Any, Any, Any]) -> Any:
        """Drive ``flow`` to its result (its exception propagates)."""
        reply: Any = None
        while True:
            try:
                instruction = flow.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(instruction, Sleep):
                assert instruction.seconds > 0
                self.clock.now += instruction.seconds
                assert self.clock.now < self.call_deadline, "slept past the call's deadline"
                self.slept.append(instruction.seconds)
                reply = None
                continue
            assert isinstance(instruction, HttpRequest)
            assert self.clock.now < instruction.deadline, "sent a request at its deadline"
            assert instruction.deadline <= self.call_deadline
            self.sent.append((self.clock.now, instruction))
            reply = self._reply(instruction)

    def routes(self) -> list[Route]:
        """The route of each request sent, in order."""
        return [request.route for _, request in self.sent]


@pytest.fixture(scope="module")
def config(sandbox_state: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> ShimConfig:
    """The emulator's config: 3 attempts, 0.1 s backoff (ceiling 0.4 s), 2 s budget."""
    return parse_emulator_config(
        sandbox_state,
        tmp_path_factory.mktemp("contract"),
        INPROCESS_URL,
        {
            "upstream": {"timeout_s": TIMEOUT, "budget_s": BUDGET},
            "retry": {"attempts": 3, "backoff_initial_s": 0.1, "backoff_max_s": 0.4},
            "circuit_breaker": {"failure_threshold": 3, "reset_after_s": 30.0},
        },
    )


@dataclass
class Harness:
    """One merchant's calls on a fake clock, with breakers that live across calls."""

    config: ShimConfig
    emulator: Emulator
    clock: FakeClock = field(default_factory=FakeClock)
    rng: float = 0.5
    breakers: dict[tuple[Route, str], CircuitBreaker] = field(default_factory=dict)

    def breaker(self, route: Route, mch_id: str) -> CircuitBreaker:
        key = (route, mch_id)
        if key not in self.breakers:
            self.breakers[key] = CircuitBreaker(self.config.breaker)
        return self.breakers[key]

    def context(self, **changes: Any) -> CallContext:
        cfg = self.config
        request = v2.validate_request(
            {"coupon_stock_id": STOCK, "mch_id": MCH, "appid": cfg.merchant(MCH).appid}
        )
        ctx = CallContext(
            config=cfg,
            merchant=cfg.merchant(MCH),
            mapping=cfg.mapping or load_mapping(cfg.mapping_dir),
            request=request,
            request_fields=request._asdict(),
            breakers=self.breaker,
            deadline=self.clock() + cfg.upstream.budget_s,
            attempts=cfg.retry.attempts,
            clock=self.clock,
            wall=time.time,  # signing timestamps only: the emulator checks them
            rng=lambda: self.rng,
        )
        return dataclasses.replace(ctx, **changes)

    def driver(
        self, ctx: CallContext, latency: float | dict[Route, float] = 0.05, **script: list[Step]
    ) -> Driver:
        return Driver(self.emulator, self.clock, ctx.deadline, script, latency)  # type: ignore[arg-type]


@pytest.fixture
def h(config: ShimConfig, emulator: Emulator) -> Harness:
    return Harness(config, emulator)


TIMEOUT_FAILURE = TransportFailure("timeout", "read timed out")
CONNECTION_FAILURE = TransportFailure("connection", "connection reset")


# ---------------------------------------------------------------------------------- retries


@pytest.mark.parametrize("route", ["legacy", "v3"])
def test_a_genuine_answer_is_one_request_and_no_sleep(h: Harness, route: Route) -> None:
    ctx = h.context()
    d = h.driver(ctx, legacy=["answer"], v3=["answer"])
    result = d.run(route_flow(ctx, route))
    assert isinstance(result, RouteResult)
    assert result.route == route and result.attempts == 1
    assert result.answer["coupon_stock_id"] == STOCK
    assert d.routes() == [route] and d.slept == []
    assert result.received_at == pytest.approx(1000.05)


@pytest.mark.parametrize(
    "failure", [TIMEOUT_FAILURE, CONNECTION_FAILURE, 500, 502, 503, 429], ids=str
)
@pytest.mark.parametrize("route", ["legacy", "v3"])
def test_transient_failures_are_retried_with_jittered_backoff(
    h: Harness, route: Route, failure: Step
) -> None:
    """Two transient failures, then the answer: three requests, and between them exactly
    the backoff policy's sleeps (full jitter: rng x min(max, initial x 2^(n-1)))."""
    h.rng = 0.75
    ctx = h.context()
    d = h.driver(ctx, **{route: [failure, failure, "answer"]})
    result = d.run(route_flow(ctx, route))
    assert result.attempts == 3
    assert d.routes() == [route] * 3
    assert d.slept == [backoff_delay(n, h.config.retry, 0.75) for n in (1, 2)]
    assert d.slept == pytest.approx([0.075, 0.15])
    starts = [at for at, _ in d.sent]
    assert starts == pytest.approx([1000.0, 1000.125, 1000.325])  # latency + each backoff


def test_backoff_is_capped_at_backoff_max(h: Harness) -> None:
    cfg = h.config.retry
    assert [backoff_delay(n, cfg, 1.0) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert backoff_delay(3, cfg, 0.0) == 0.0
    assert backoff_delay(3, cfg, 7.0) == 0.4  # a bad rng value is clamped, never a long sleep


def test_a_zero_jitter_retries_at_once_without_a_sleep(h: Harness) -> None:
    h.rng = 0.0
    ctx = h.context()
    d = h.driver(ctx, legacy=[503, "answer"])
    assert d.run(route_flow(ctx, "legacy")).attempts == 2
    assert d.slept == []


@pytest.mark.parametrize("route", ["legacy", "v3"])
def test_retries_stop_at_the_attempt_limit(h: Harness, route: Route) -> None:
    ctx = h.context()
    d = h.driver(ctx, **{route: [TIMEOUT_FAILURE]})
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, route))
    assert info.value.kind == "timeout" and info.value.route == route
    assert len(d.sent) == 3 and len(d.slept) == 2


@pytest.mark.parametrize(("route", "status"), [("legacy", 404), ("v3", 400), ("v3", 403)])
def test_a_refusing_status_is_not_retried(h: Harness, route: Route, status: int) -> None:
    ctx = h.context()
    d = h.driver(ctx, **{route: [status]})
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, route))
    assert info.value.kind == "http_status" and info.value.status == status
    assert len(d.sent) == 1 and d.slept == []


def test_a_forged_answer_is_not_retried(h: Harness, emulator: Emulator) -> None:
    emulator.set_fault("v3", STOCK, "bad_signature")
    ctx = h.context()
    d = h.driver(ctx, v3=["answer"])
    with pytest.raises(SignatureError):
        d.run(route_flow(ctx, "v3"))
    assert len(d.sent) == 1 and d.slept == []


# ----------------------------------------------------------------------------------- budget


def test_no_attempt_starts_once_the_budget_is_spent(h: Harness) -> None:
    """Each timeout costs 0.9 s of a 2 s budget, with attempts to spare: attempts start at
    0, 0.9 and 1.8 s, the deadline cuts the third, and no fourth is sent; the call ends as
    a budget error at its deadline."""
    h.rng = 0.0
    ctx = h.context(attempts=10)
    d = h.driver(ctx, latency=0.9, legacy=[TIMEOUT_FAILURE])
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, "legacy"))
    assert info.value.kind == "budget"
    assert [at - 1000 for at, _ in d.sent] == pytest.approx([0, 0.9, 1.8])
    assert h.clock.now == ctx.deadline


def test_a_spent_budget_sends_nothing(h: Harness) -> None:
    ctx = h.context(deadline=h.clock())
    d = h.driver(ctx, legacy=["answer"])
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, "legacy"))
    assert info.value.kind == "budget" and d.sent == []


def test_a_backoff_that_would_pass_the_deadline_is_not_slept(h: Harness) -> None:
    """With 0.35 s of budget left after a failure, a 0.4 s backoff is not taken: the call
    fails now instead of sleeping past its deadline."""
    h.rng = 1.0
    ctx = h.context(deadline=h.clock() + 0.45)
    d = h.driver(ctx, latency=0.1, legacy=[503])
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, "legacy"))
    assert info.value.kind == "http_status"
    assert d.slept == [0.1]  # the first backoff fitted; the second (0.2 s) did not
    assert len(d.sent) == 2


def test_every_request_carries_the_deadline_and_limits(h: Harness) -> None:
    ctx = h.context()
    d = h.driver(ctx, legacy=["answer"], v3=["answer"])
    d.run(route_flow(ctx, "legacy"))
    d.run(route_flow(ctx, "v3", deadline=ctx.deadline - 0.5))
    (_, legacy), (_, v3) = d.sent
    assert legacy.deadline == ctx.deadline and v3.deadline == ctx.deadline - 0.5
    for request in (legacy, v3):
        assert request.timeout_s == TIMEOUT
        assert request.max_body_bytes == h.config.upstream.max_body_bytes


# ---------------------------------------------------------------------------------- breaker


def _fail_call(h: Harness, route: Route = "v3") -> UpstreamError:
    ctx = h.context(attempts=1)
    with pytest.raises(UpstreamError) as info:
        h.driver(ctx, **{route: [CONNECTION_FAILURE]}).run(route_flow(ctx, route))
    return info.value


def test_the_breaker_opens_after_the_threshold_and_fails_fast(h: Harness) -> None:
    for _ in range(3):
        assert _fail_call(h).kind == "connection"
    breaker = h.breakers[("v3", MCH)]
    assert breaker.state == "open"
    ctx = h.context()
    d = h.driver(ctx, v3=["answer"])
    with pytest.raises(UpstreamError) as info:
        d.run(route_flow(ctx, "v3"))
    assert info.value.kind == "circuit_open" and d.sent == []  # not even one request
    assert ("legacy", MCH) not in h.breakers or h.breakers[("legacy", MCH)].state == "closed"


def test_an_open_breaker_is_not_retried(h: Harness) -> None:
    for _ in range(3):
        _fail_call(h)
    ctx = h.context()
    d = h.driver(ctx, v3=["answer"])
    with pytest.raises(UpstreamError):
        d.run(route_flow(ctx, "v3"))
    assert d.slept == []


@pytest.mark.parametrize(("probe", "after"), [("answer", "closed"), (503, "open")])
def test_after_reset_one_probe_decides_close_or_reopen(h: Harness, probe: Step, after: str) -> None:
    for _ in range(3):
        _fail_call(h)
    breaker = h.breakers[("v3", MCH)]
    h.clock.now += 29.9
    ctx = h.context()
    with pytest.raises(UpstreamError) as info:
        h.driver(ctx, v3=["answer"]).run(route_flow(ctx, "v3"))
    assert info.value.kind == "circuit_open"  # 29.9 s < reset_after_s
    h.clock.now += 0.2
    ctx = h.context(attempts=1)
    d = h.driver(ctx, v3=[probe])
    seen: list[str] = []

    def probing(flow: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        first = next(flow)
        seen.append(breaker.state)  # while the probe is out
        reply = yield first
        return (yield from _resume(flow, reply))

    with contextlib.suppress(UpstreamError):
        d.run(probing(route_flow(ctx, "v3")))
    assert seen == ["half_open"]
    assert len(d.sent) == 1
    assert breaker.state == after


def _resume(flow: Generator[Any, Any, Any], reply: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            instruction = flow.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = yield instruction


def test_a_bad_answer_does_not_count_against_the_breaker(h: Harness, emulator: Emulator) -> None:
    """The upstream answered (a forged signature, a refusing 4xx): the link is fine."""
    emulator.set_fault("v3", STOCK, "bad_signature")
    for _ in range(5):
        ctx = h.context()
        with pytest.raises(ShimError):
            h.driver(ctx, v3=["answer"]).run(route_flow(ctx, "v3"))
    assert h.breakers[("v3", MCH)].state == "closed"


def test_breakers_are_per_route_and_merchant(h: Harness) -> None:
    for _ in range(3):
        _fail_call(h, "v3")
    ctx = h.context()
    result = h.driver(ctx, legacy=["answer"]).run(route_flow(ctx, "legacy"))
    assert result.route == "legacy"
    assert h.breakers[("v3", MCH)].state == "open"
    assert h.breakers[("legacy", MCH)].state == "closed"


def test_an_abandoned_probe_reopens_the_breaker(h: Harness) -> None:
    """A caller cancelled mid-probe (the generator is closed): the breaker re-opens rather
    than waiting for a probe that never returns."""
    for _ in range(3):
        _fail_call(h)
    h.clock.now += 31
    flow = route_flow(h.context(), "v3")
    assert isinstance(next(flow), HttpRequest)
    assert h.breakers[("v3", MCH)].state == "half_open"
    flow.close()
    assert h.breakers[("v3", MCH)].state == "open"


# --------------------------------------------------------------------------------- fallback


def _with_routing(h: Harness, **routing: Any) -> Harness:
    cfg = h.config
    cfg = dataclasses.replace(cfg, routing=dataclasses.replace(cfg.routing, **routing))
    return Harness(cfg, h.emulator, h.clock, h.rng, h.breakers)


V3_SERVES = Decision("v3", None, "mode")


def test_a_transient_v3_failure_falls_back_to_legacy(h: Harness) -> None:
    h = _with_routing(h, fallback_to_legacy=True)
    ctx = h.context()
    d = h.driver(ctx, v3=[503], legacy=["answer"])
    outcome = d.run(call_flow(ctx, V3_SERVES))
    assert isinstance(outcome, CallOutcome)
    assert outcome.served_by == "legacy" and outcome.fallback
    assert outcome.fallback_cause == "transient"
    assert isinstance(outcome.fallback_error, UpstreamError)
    assert d.routes() == ["v3", "v3", "v3", "legacy"]


def test_the_serving_route_leaves_the_fallback_its_reserve(h: Harness) -> None:
    """v3 stops early enough to leave legacy min(timeout_s, budget_s / 2) = 0.5 s (its third
    attempt is cut at that deadline); legacy then has until the call's own deadline."""
    h = _with_routing(h, fallback_to_legacy=True)
    ctx = h.context()
    d = h.driver(ctx, {"v3": 0.7, "legacy": 0.1}, v3=[TIMEOUT_FAILURE], legacy=["answer"])
    h.rng = 0.0
    outcome = d.run(call_flow(ctx, V3_SERVES))
    assert outcome.served_by == "legacy"
    reserve = min(TIMEOUT, BUDGET / 2)
    v3_sent = [(at, r) for at, r in d.sent if r.route == "v3"]
    assert all(r.deadline == ctx.deadline - reserve for _, r in v3_sent)
    assert all(at < ctx.deadline - reserve for at, _ in v3_sent)
    assert [at - 1000 for at, _ in v3_sent] == pytest.approx([0, 0.7, 1.4])
    [(at, legacy)] = [(at, r) for at, r in d.sent if r.route == "legacy"]
    assert at == pytest.approx(ctx.deadline - reserve)  # the third was cut at 1.5 s
    assert legacy.deadline == ctx.deadline
    assert outcome.fallback_error is not None
    assert outcome.fallback_error.kind == "budget"  # type: ignore[attr-defined]


def test_without_a_possible_fallback_the_serving_route_keeps_the_whole_budget(
    h: Harness,
) -> None:
    """The kill switch forbids v3: legacy serving keeps the whole budget, reserving none."""
    h = _with_routing(h, fallback_to_v3=True)
    ctx = h.context()
    d = h.driver(ctx, legacy=[TIMEOUT_FAILURE])
    with pytest.raises(UpstreamError):
        d.run(call_flow(ctx, Decision("legacy", None, "kill_switch")))
    assert d.routes() == ["legacy"] * 3
    assert all(r.deadline == ctx.deadline for _, r in d.sent)


def test_legacy_falls_back_to_v3_only_when_allowed(h: Harness) -> None:
    h = _with_routing(h, fallback_to_v3=True)
    ctx = h.context()
    d = h.driver(ctx, legacy=[503], v3=["answer"])
    outcome = d.run(call_flow(ctx, Decision("legacy", None, "mode")))
    assert outcome.served_by == "v3" and outcome.fallback
    h.breakers.clear()  # legacy's breaker opened on those three 503s
    ctx = h.context()
    d = h.driver(ctx, legacy=[503], v3=["answer"])
    with pytest.raises(UpstreamError):  # no v3 credentials: no fallback, and no reserve
        d.run(call_flow(ctx, Decision("legacy", None, "mode", v3_available=False)))
    assert set(d.routes()) == {"legacy"}
    assert all(r.deadline == ctx.deadline for _, r in d.sent)


def test_a_forged_answer_never_falls_back(h: Harness, emulator: Emulator) -> None:
    emulator.set_fault("v3", STOCK, "tampered_body")
    h = _with_routing(h, fallback_to_legacy=True)
    ctx = h.context()
    d = h.driver(ctx, v3=["answer"], legacy=["answer"])
    with pytest.raises(SignatureError):
        d.run(call_flow(ctx, V3_SERVES))
    assert d.routes() == ["v3"]


def test_fallback_off_raises_the_serving_routes_error(h: Harness) -> None:
    h = _with_routing(h, fallback_to_legacy=False)
    ctx = h.context()
    d = h.driver(ctx, v3=[503], legacy=["answer"])
    with pytest.raises(UpstreamError) as info:
        d.run(call_flow(ctx, V3_SERVES))
    assert info.value.route == "v3" and set(d.routes()) == {"v3"}


def test_an_unsigned_401_falls_back_as_credentials_refused(h: Harness) -> None:
    h = _with_routing(h, fallback_to_legacy=True)
    ctx = h.context()
    d = h.driver(ctx, v3=[401], legacy=["answer"])
    outcome = d.run(call_flow(ctx, V3_SERVES))
    assert outcome.served_by == "legacy" and outcome.fallback_cause == "credentials_refused"
    assert d.routes() == ["v3", "legacy"]  # a refusal is not retried


def test_a_fallback_that_fails_too_raises_its_own_error_from_the_first(h: Harness) -> None:
    h = _with_routing(h, fallback_to_legacy=True)
    ctx = h.context()
    d = h.driver(ctx, v3=[503], legacy=[CONNECTION_FAILURE])
    with pytest.raises(UpstreamError) as info:
        d.run(call_flow(ctx, V3_SERVES))
    assert info.value.route == "legacy" and info.value.kind == "connection"
    assert isinstance(info.value.__cause__, UpstreamError)
    assert info.value.__cause__.route == "v3"


# ------------------------------------------------------------------------- shadow decisions


@pytest.mark.parametrize(
    ("serve", "shadow"), [("legacy", "v3"), ("v3", "legacy")], ids=["serve-legacy", "serve-v3"]
)
def test_shadow_mode_serves_one_route_and_shadows_the_other(
    h: Harness, serve: str, shadow: str
) -> None:
    h = _with_routing(h, mode="shadow", shadow_serve=serve)
    decision = decide(
        h.config.routing, mch_id=MCH, coupon_stock_id=STOCK, kill_switch=False, bucket_by=None
    )
    assert (decision.serve, decision.shadow) == (serve, shadow)


def test_the_kill_switch_turns_the_shadow_off(h: Harness) -> None:
    h = _with_routing(h, mode="shadow", shadow_serve="legacy")
    decision = decide(
        h.config.routing, mch_id=MCH, coupon_stock_id=STOCK, kill_switch=True, bucket_by=None
    )
    assert decision.serve == "legacy" and decision.reason == "kill_switch"
    assert decision.shadow is None


def test_a_shadow_job_is_a_route_flow_held_to_its_own_deadline(h: Harness) -> None:
    """The shadowed side runs the same route flow with the shadow's deadline: it retries
    within it and never past it."""
    h.rng = 1.0
    ctx = h.context(deadline=h.clock() + 0.5)
    d = h.driver(ctx, latency=0.2, v3=[503])
    with pytest.raises(UpstreamError):
        d.run(route_flow(ctx, "v3"))
    assert d.slept == [0.1]
    assert all(at < ctx.deadline for at, _ in d.sent)


def _signature(func: Callable[..., Any]) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters)


def test_the_flow_reads_time_only_through_its_context() -> None:
    """Clock, wall time, nonce and randomness are the context's: the suite above can fake
    them all."""
    fields = {f.name for f in dataclasses.fields(CallContext)}
    assert {"clock", "wall", "nonce", "rng", "deadline"} <= fields
    # private: the sans-IO flow, driven directly with scripted answers
    import shim._flow as flow_module

    source = __import__("inspect").getsource(flow_module)
    assert "time.monotonic()" not in source and "time.time()" not in source
    assert {"ctx", "route"} <= _signature(route_flow)
