"""A silent library: events reach stdlib logging or structlog only when the application asks.

The unconfigured case runs in a fresh interpreter (a subprocess), since structlog and logging
keep process-wide state; the others configure logging or structlog here and undo it after.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from shim import CouponStockShim, ShimConfig
from shim.sandbox import Emulator
from tests.conftest import MD5_MCH, Twin

APP = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shim import CouponStockShim, AsyncCouponStockShim, UpstreamError
    from shim.sandbox import Emulator, SandboxState

    tmp = Path(sys.argv[1])
    state = SandboxState.load_or_create(tmp / "state")
    emulator = Emulator(state)
    url = "http://wechatpay.emulator"
    path = state.write_config(tmp / "shim.toml", v2_base_url=url, v3_base_url=url, mode="shadow")
    text = path.read_text().replace("check_interval_s = 2.0", "check_interval_s = 0.0")
    text = text.replace("failure_threshold = 5", "failure_threshold = 1")
    path.write_text(text)
    with CouponStockShim.from_file(path, transport=emulator.mock_transport(), env={}) as shim:
        shim.query_coupon_stock("1757", mch_id="10000098")
        shim.query_coupon_stock("9000000001", mch_id="10000098")   # a shadow mismatch
        shim.wait_for_shadows(5)
        emulator.set_fault("v3", "*", "http_500")                   # opens the v3 breaker
        shim.query_via("legacy", coupon_stock_id="1757", mch_id="10000098")
        try:
            shim.query_via("v3", coupon_stock_id="1757", mch_id="10000098")
        except UpstreamError:
            pass
        path.write_text("[routing]\\nmode = 'nonsense'\\n")        # a rejected reload (warning)
        shim.query_coupon_stock("1757", mch_id="10000098")
        shim.wait_for_shadows(5)
    """
)


def test_an_unconfigured_application_sees_nothing(tmp_path: Path) -> None:
    """No logging or structlog setup: calls, shadow diffs, breaker and reload warnings print
    nothing on stdout or stderr."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


@pytest.fixture
def stdlib_capture() -> Iterator[io.StringIO]:
    """The application configures only the standard library: INFO on the "shim" logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    log = logging.getLogger("shim")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield stream
    log.removeHandler(handler)
    log.setLevel(logging.NOTSET)


async def test_stdlib_logging_gets_the_event(
    make_shim: Callable[..., Twin], stdlib_capture: io.StringIO
) -> None:
    """An app that configures logging gets one logfmt line per call on the "shim" logger."""
    twin = make_shim("legacy", via="inprocess")
    await twin.query("1757", mch_id=MD5_MCH)
    (line,) = stdlib_capture.getvalue().splitlines()
    assert line.startswith("INFO shim coupon_stock.query ")
    assert f"mch_id={MD5_MCH}" in line and "route=legacy" in line and "reason=mode" in line


async def test_processor_formatter_gets_every_field(
    make_shim: Callable[..., Twin], twin_kind: str
) -> None:
    """With structlog's ProcessorFormatter on a stdlib handler, the app renders the whole
    event dict (JSON here), context variables and shadow fields included."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    log = logging.getLogger("shim")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        twin = make_shim("shadow", via="inprocess")
        structlog.contextvars.bind_contextvars(request_id="req-42")
        try:
            await twin.query("9000000001", mch_id=MD5_MCH)
        finally:
            structlog.contextvars.clear_contextvars()
        assert await twin.wait_for_shadows(10)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert event["event"] == "coupon_stock.query"
    assert event["request_id"] == "req-42"
    assert event["shadow"] == "mismatch"
    assert event["mismatch_fields"] == ["coupon_total", "is_send_num"]


async def test_shadowed_call_keeps_the_callers_context_variables(
    make_shim: Callable[..., Twin], twin_kind: str
) -> None:
    """Both twins: the shadowed call's event carries the caller's structlog contextvars,
    though the sync twin finishes it on a worker thread."""
    cap = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, cap])
    twin = make_shim("shadow", via="inprocess")
    for n in range(3):
        structlog.contextvars.bind_contextvars(request_id=f"req-{n}")
        try:
            await twin.query("1757", mch_id=MD5_MCH)
        finally:
            structlog.contextvars.clear_contextvars()
    assert await twin.wait_for_shadows(10)
    events = [e for e in cap.entries if e["event"] == "coupon_stock.query"]
    assert sorted(e["request_id"] for e in events) == ["req-0", "req-1", "req-2"]
    assert all(e["shadow"] == "match" for e in events)


def test_structlog_app_gets_events_through_its_own_pipeline(
    make_config: Callable[..., ShimConfig], emulator: Emulator
) -> None:
    """An app that configured structlog gets the events in its own chain, as before."""
    cap = LogCapture()
    structlog.configure(processors=[cap])
    with CouponStockShim(make_config("v3"), transport=emulator.mock_transport(), env={}) as shim:
        shim.query_coupon_stock("1757", mch_id=MD5_MCH)
    (event,) = cap.entries
    assert event["event"] == "coupon_stock.query" and event["route"] == "v3"
    assert event["log_level"] == "info"


def test_stdlib_path_redacts_secrets(stdlib_capture: io.StringIO) -> None:
    """Anything logged through the library's stdlib path passes the secret redactor."""
    # private: the library's logger factory
    from shim._logs import get_logger

    get_logger("shim").info("something", sign="ABCDEF0123456789", note="key=supersecretvalue1")
    text = stdlib_capture.getvalue()
    assert "ABCDEF0123456789" not in text and "supersecretvalue1" not in text


def test_filtered_level_builds_nothing(
    make_config: Callable[..., ShimConfig], emulator: Emulator, monkeypatch: Any
) -> None:
    """Unconfigured, INFO is below the stdlib default level: the event fields are never built."""
    # private: call records and event fields, inspected directly
    import shim._observe as observe

    built: list[Any] = []
    monkeypatch.setattr(observe, "event_fields", lambda r: built.append(r) or {})
    with CouponStockShim(make_config("legacy"), transport=emulator.mock_transport(), env={}) as s:
        s.query_coupon_stock("1757", mch_id=MD5_MCH)
    assert built == []
