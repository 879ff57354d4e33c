"""The fault matrix: every emulator fault x mode x fallback, through both twins.

The cases and their documented outcomes are data (``tests/fault_cases.py``); the README table
is generated from the same data (``python -m tests.render_fault_matrix``), and a test here
fails when the README drifts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from shim import (
    ConfigError,
    InputError,
    MappingError,
    ShimConfig,
    ShimError,
    SignatureError,
    UpstreamError,
    cli,
)
from shim.sandbox import V2_FAULT_KINDS, V3_FAULT_KINDS, Emulator, SandboxState, serve
from tests import render_fault_matrix
from tests.conftest import INPROCESS_URL, Twin
from tests.fault_cases import (
    BOMB_BYTES,
    MATRIX_TABLES,
    MCH_ID,
    STOCK_ID,
    V2_FAULTS,
    V3_FAULTS,
    Case,
    build_twin,
    case_config,
    matrix_cases,
    parse_emulator_config,
)

CASES = matrix_cases()
#: Faults that wait (a delay past the read timeout, a drip until the deadline cuts it).
DELAY_FAULTS = frozenset({"delay", "header_drip", "body_drip"})
INSTANT_CASES = [c for c in CASES if c.fault.fault not in DELAY_FAULTS]
DELAY_CASES = [c for c in CASES if c.fault.fault in DELAY_FAULTS]
DOCUMENTED_KINDS = {"timeout", "connection", "http_status", "protocol", "circuit_open", "budget"}
ERROR_TYPES: dict[str, type[ShimError]] = {
    "UpstreamError": UpstreamError,
    "SignatureError": SignatureError,
    "MappingError": MappingError,
    "InputError": InputError,
    "ConfigError": ConfigError,
}


def secrets_of(twin: Twin) -> list[str]:
    """Strings that must never appear in an error's text: keys and signing material."""
    out = ["WECHATPAY2-SHA256-RSA2048", 'signature="', "PRIVATE KEY"]
    for merchant in twin.shim.config.merchants.values():
        out.append(merchant.v2_key.reveal())
        if merchant.v3 is not None:
            pem = merchant.v3.private_key.private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ).decode()
            out.extend(line for line in pem.splitlines()[1:-1] if len(line) > 20)
    return out


def assert_clean_error(err: BaseException, twin: Twin) -> None:
    """A raised error is a ShimError of a documented kind, and its text carries no secret."""
    assert isinstance(err, ShimError), repr(err)
    if isinstance(err, UpstreamError):
        assert err.kind in DOCUMENTED_KINDS
        assert err.route in ("legacy", "v3")
    texts = [str(err), repr(err), *(repr(v) for v in vars(err).values())]
    cause = err.__cause__
    if cause is not None:
        assert isinstance(cause, ShimError)
        texts += [str(cause), repr(cause)]
    for secret in secrets_of(twin):
        for text in texts:
            assert secret not in text


def test_the_matrix_covers_every_emulator_fault() -> None:
    """Every v2 and v3 fault kind the emulator can inject appears in the matrix."""
    v3 = {f.fault.partition(":")[0] for f in V3_FAULTS if f.fault}
    v2 = {f.fault.partition(":")[0] for f in V2_FAULTS if f.fault}
    assert v3 == set(V3_FAULT_KINDS)
    assert v2 == set(V2_FAULT_KINDS)
    assert {c.mode for c in CASES} == {"v3", "canary", "shadow", "legacy"}
    assert {c.via for c in CASES} == {"inprocess", "loopback"}


def test_readme_table_is_up_to_date() -> None:
    """README.md's fault matrix is exactly what the generator makes from the cases."""
    assert render_fault_matrix.check(), (
        "README.md's fault matrix is stale: run python -m tests.render_fault_matrix"
    )


def _case_config(base: ShimConfig, case: Case, url: str) -> ShimConfig:
    """The matrix config of ``case``, its upstream at ``url``."""
    config = case_config(base, case.mode, **case.routing())
    upstream = dataclasses.replace(
        config.upstream,
        budget_s=case.budget_s,
        timeout_s=case.timeout_s,
        v2_base_url=url,
        v3_base_url=url,
    )
    return dataclasses.replace(config, upstream=upstream)


@pytest.fixture(scope="module")
def matrix_configs(
    sandbox_state: SandboxState, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], ShimConfig]:
    """The matrix config per transport, parsed once per module (key loading is slow)."""
    cache: dict[str, ShimConfig] = {}

    def get(url: str) -> ShimConfig:
        if url not in cache:
            folder = tmp_path_factory.mktemp("matrix")
            cache[url] = parse_emulator_config(sandbox_state, folder, url, MATRIX_TABLES)
        return cache[url]

    return get


@pytest.fixture
async def case_twin(
    twin_kind: str,
    matrix_configs: Callable[[str], ShimConfig],
    emulator: Emulator,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[Case], Twin]]:
    """Builds the shim of a case (the twin under test), closed after the test."""
    made: list[Twin] = []
    bomb_bytes = emulator.bomb_bytes
    emulator.bomb_bytes = BOMB_BYTES

    def build(case: Case) -> Twin:
        url = INPROCESS_URL
        if case.via == "loopback":
            url = request.getfixturevalue("server").base_url
        config = _case_config(matrix_configs(url), case, url)
        twin = build_twin(twin_kind, config, emulator, inprocess=case.via == "inprocess")
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()
    emulator.bomb_bytes = bomb_bytes


async def outcome(twin: Twin) -> dict[str, str] | ShimError:
    """The case's call: its answer, or the typed error it raised."""
    try:
        return await twin.query(STOCK_ID, mch_id=MCH_ID)
    except ShimError as err:
        return err


async def check_outcome(
    case: Case, twin: Twin, emulator: Emulator, result: dict[str, str] | ShimError
) -> None:
    """The call ended as the case documents: answer or typed error, shadow, request counts."""
    expect = case.expect()
    if isinstance(result, ShimError):
        err = result
        assert expect.error is not None, f"unexpected {err!r}"
        cls, kind = expect.error
        assert type(err) is ERROR_TYPES[cls], repr(err)
        assert isinstance(err, UpstreamError)
        assert err.kind in kind.split("|"), repr(err)
        assert err.route == ("legacy" if case.fault.side == "v2" else "v3")
        if case.fault.status is not None:
            assert err.status == case.fault.status
        assert_clean_error(err, twin)
    else:
        answer = result
        assert expect.error is None, f"expected {expect.error}, got an answer"
        assert answer["return_code"] == ("FAIL" if expect.return_fail else "SUCCESS")
        if not expect.return_fail:
            assert answer.get("err_code") == expect.err_code
            assert answer["result_code"] == ("FAIL" if expect.err_code else "SUCCESS")
        if expect.err_code is None and not expect.return_fail:
            assert answer["coupon_stock_id"] == STOCK_ID
        if expect.reduced:
            assert set(answer) == {"return_code", "return_msg"}, answer

    if expect.shadow is not None:
        assert await twin.wait_for_shadows(5.0)
        totals = twin.shim.shadow_totals()
        assert totals.calls == 1
        if expect.shadow == "match":
            assert totals.matches == 1
        elif expect.shadow == "mismatch":
            assert totals.mismatches == 1
        else:
            kinds = [label.partition(":")[2] for label in expect.shadow.split(" or ")]
            assert dict(totals.errors_by_kind) in [{k: 1} for k in kinds]
    counts = emulator.request_counts
    for side, n in expect.requests:
        assert counts[side] == n, (side, dict(counts))


@pytest.mark.parametrize("case", INSTANT_CASES, ids=[c.id for c in INSTANT_CASES])
async def test_fault_matrix(
    case: Case, case_twin: Callable[[Case], Twin], emulator: Emulator
) -> None:
    """One fault x mode x fallback case gives its documented outcome.

    These faults answer at once (no delay, no drip): the outcome does not depend on time,
    and how the flow spends the budget on retries, backoff and fallback is the clockless
    contract suite's (``tests/test_flow_contract.py``). The delaying faults, whose bound is
    the point, run with their wall time asserted in ``test_fault_matrix_delays``.
    """
    twin = case_twin(case)
    if case.fault.fault:
        emulator.set_fault(case.fault.side, STOCK_ID, case.fault.fault, delay_s=case.fault.delay_s)
    await check_outcome(case, twin, emulator, await outcome(twin))


def _run_delay_case(
    case: Case, kind: str, configs: Callable[[str], ShimConfig], state: SandboxState
) -> str | None:
    """One delaying case on an emulator (and loopback server) of its own, in its own event
    loop: None when it gives its documented outcome within its budget, else why not."""

    async def run() -> None:
        emulator = Emulator(state, bomb_bytes=BOMB_BYTES)
        with contextlib.ExitStack() as stack:
            url = INPROCESS_URL
            if case.via == "loopback":
                url = stack.enter_context(serve(emulator)).base_url
            twin = build_twin(
                kind,
                _case_config(configs(INPROCESS_URL), case, url),
                emulator,
                inprocess=case.via == "inprocess",
            )
            try:
                emulator.set_fault(
                    case.fault.side, STOCK_ID, case.fault.fault, delay_s=case.fault.delay_s
                )
                started = time.monotonic()
                result = await outcome(twin)
                elapsed = time.monotonic() - started
                await check_outcome(case, twin, emulator, result)
                margin = 0.5 if case.fault.effect == "stall" else 1.0
                assert elapsed < case.budget_s + margin, (
                    f"{elapsed:.2f} s against a {case.budget_s} s budget"
                )
            finally:
                await twin.close()

    try:
        asyncio.run(run())
    except AssertionError as exc:
        return f"{case.id}: {exc}"
    return None


@pytest.mark.wallclock
def test_fault_matrix_delays(
    twin_kind: str, matrix_configs: Callable[[str], ShimConfig], sandbox_state: SandboxState
) -> None:
    """Every delaying case (``delay``, ``header_drip``, ``body_drip``) x mode x fallback x
    transport gives its documented outcome within its budget (+1 s; +0.5 s for the drips).

    The cases run side by side, each on an emulator of its own (a loopback server of its own
    for the socket cases), each timing its own call; every failure is reported, by case.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        failures = [
            f
            for f in pool.map(
                lambda c: _run_delay_case(c, twin_kind, matrix_configs, sandbox_state),
                DELAY_CASES,
            )
            if f is not None
        ]
    assert not failures, "\n".join(failures)


def test_emulator_and_admin_bind_to_loopback_by_default(server: Any, emulator: Emulator) -> None:
    """serve() and `coupon-shim sandbox` bind 127.0.0.1 by default; admin refuses others."""
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert cli._parser().parse_args(["sandbox"]).host == "127.0.0.1"
    assert server.host == "127.0.0.1"
    status, _ = emulator.admin("GET", b"", "192.0.2.7", b"/__admin/faults")
    assert status == 403
    status, _ = emulator.admin("GET", b"", "127.0.0.1", b"/__admin/faults")
    assert status == 200
