"""Load at a small size: shadow mode with ~5% faults per side, every call accounted for.

The full-size run (10,000 calls per twin, with memory figures) is ``bench/load.py``; this
runs the same code, ``bench.load.run_load``, with 400 calls per twin.
"""

from __future__ import annotations

import logging

import pytest
import structlog

from bench.load import arm, load_config, run_load
from shim.sandbox import Emulator, SandboxState


@pytest.mark.slow
async def test_load_through_shadow_mode_accounts_for_every_call(
    twin_kind: str,
    emulator: Emulator,
    sandbox_state: SandboxState,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """400 calls with faults: answers + typed errors = calls, shadow totals add up, bounded."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    config = load_config(sandbox_state, tmp_path_factory.mktemp("load"))
    ids = arm(emulator, stocks=200, fault_rate=0.05, seed=3)
    report = await run_load(twin_kind, config, emulator, ids, calls=400)
    assert report.unaccounted == 0, report.errors_by_kind
    assert report.answers + report.typed_errors == report.calls == 400
    assert report.typed_errors > 0  # the faults were met
    assert report.shadow_adds_up, report.shadow
    assert report.shadow["errors"] + report.shadow["dropped"] > 0
    assert report.peak_shadow_in_flight <= config.shadow.max_in_flight
    assert all(not kind.startswith("unaccounted") for kind in report.errors_by_kind)
