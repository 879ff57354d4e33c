"""The fault matrix: every emulator fault x mode x fallback, through both twins.

The cases and their documented outcomes are data (``tests/fault_cases.py``); the README table
is generated from the same data (``python -m tests.render_fault_matrix``), and a test here
fails when the README drifts.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from shim import cli
from shim._errors import (
    ConfigError,
    InputError,
    MappingError,
    ShimError,
    SignatureError,
    UpstreamError,
)
from shim._values import ShimConfig
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
        config = case_config(matrix_configs(url), case.mode, **case.routing())
        if (case.budget_s, case.timeout_s) != (config.upstream.budget_s, config.upstream.timeout_s):
            upstream = dataclasses.replace(
                config.upstream, budget_s=case.budget_s, timeout_s=case.timeout_s
            )
            config = dataclasses.replace(config, upstream=upstream)
        twin = build_twin(twin_kind, config, emulator, inprocess=case.via == "inprocess")
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()
    emulator.bomb_bytes = bomb_bytes


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fault_matrix(
    case: Case, case_twin: Callable[[Case], Twin], emulator: Emulator
) -> None:
    """One fault x mode x fallback case gives its documented outcome, within the budget."""
    twin = case_twin(case)
    if case.fault.fault:
        emulator.set_fault(case.fault.side, STOCK_ID, case.fault.fault, delay_s=case.fault.delay_s)
    expect = case.expect()

    started = time.monotonic()
    try:
        answer = await twin.query(STOCK_ID, mch_id=MCH_ID)
    except ShimError as err:
        elapsed = time.monotonic() - started
        assert expect.error is not None, f"unexpected {err!r}"
        cls, kind = expect.error
        assert type(err) is ERROR_TYPES[cls], repr(err)
        assert isinstance(err, UpstreamError)
        assert err.kind in kind.split("|")
        assert err.route == ("legacy" if case.fault.side == "v2" else "v3")
        if case.fault.status is not None:
            assert err.status == case.fault.status
        assert_clean_error(err, twin)
    else:
        elapsed = time.monotonic() - started
        assert expect.error is None, f"expected {expect.error}, got an answer"
        assert answer["return_code"] == ("FAIL" if expect.return_fail else "SUCCESS")
        if not expect.return_fail:
            assert answer.get("err_code") == expect.err_code
            assert answer["result_code"] == ("FAIL" if expect.err_code else "SUCCESS")
        if expect.err_code is None and not expect.return_fail:
            assert answer["coupon_stock_id"] == STOCK_ID
        if expect.reduced:
            assert set(answer) == {"return_code", "return_msg"}, answer
    margin = 0.5 if case.fault.effect == "stall" else 1.0
    assert elapsed < case.budget_s + margin, f"{elapsed:.2f} s against {case.budget_s} s"

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


def test_emulator_and_admin_bind_to_loopback_by_default(server: Any, emulator: Emulator) -> None:
    """serve() and `coupon-shim sandbox` bind 127.0.0.1 by default; admin refuses others."""
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert cli._parser().parse_args(["sandbox"]).host == "127.0.0.1"
    assert server.host == "127.0.0.1"
    status, _ = emulator.admin("GET", b"", "192.0.2.7", b"/__admin/faults")
    assert status == 403
    status, _ = emulator.admin("GET", b"", "127.0.0.1", b"/__admin/faults")
    assert status == 200
