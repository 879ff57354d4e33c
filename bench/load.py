"""Load: many calls through shadow mode with faults on both sides; every call accounted for.

    python bench/load.py [--calls 10000] [--fault-rate 0.05] [--twin sync|async|both]

Runs the shim (mode ``shadow``, legacy serves, v3 is compared) against the WeChat Pay emulator
over its in-process transport. Calls are spread over ``--stocks`` copies of a seeded stock;
about ``--fault-rate`` of the stocks carry a fault on the v2 side and as many on the v3 side
(errors, resets, bad signatures, malformed bodies, and slow answers that time out), so about
that share of calls meets a fault on each side. It prints, per twin: calls, answers, typed
errors, unaccounted calls (anything else), the shadow totals, the peak of shadow comparisons in
flight (against ``max_in_flight``), tracemalloc growth and peak RSS, and wall time. Exits 1
if a call is unaccounted, the shadow totals do not add up, or shadow work ever exceeds its bound.

``run_load`` is also what ``tests/test_load.py`` runs, at a small size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, ShimError

# private: the config loader's steps, tested one by one
from shim._loader import parse_config
from shim.sandbox import Emulator, SandboxState

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

URL = "http://wechatpay.emulator"
MCH_ID = "10000098"
TEMPLATE_STOCK = "1757"
V2_FAULTS = ("http_503", "reset", "truncated", "malformed", "bad_signature", "delay")
V3_FAULTS = ("http_500", "reset", "stale_signature", "malformed", "bad_signature", "delay")

#: The load config: short timeouts so slow answers time out quickly; a small shadow bound.
LOAD_TABLES: dict[str, dict[str, Any]] = {
    "upstream": {"timeout_s": 0.2, "connect_timeout_s": 0.5, "budget_s": 1.0},
    "retry": {"attempts": 2, "backoff_initial_s": 0.005, "backoff_max_s": 0.01},
    "circuit_breaker": {"failure_threshold": 1000, "reset_after_s": 1.0},
    "routing": {"mode": "shadow", "shadow_serve": "legacy", "fallback_to_v3": False},
    "shadow": {"timeout_s": 0.5, "max_in_flight": 16, "workers": 4},
}


@dataclasses.dataclass
class LoadReport:
    """What one load run saw."""

    twin: str
    calls: int
    answers: int = 0
    typed_errors: int = 0
    unaccounted: int = 0
    errors_by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    shadow: dict[str, Any] = dataclasses.field(default_factory=dict)
    peak_shadow_in_flight: int = 0
    max_in_flight: int = 0
    wall_s: float = 0.0
    traced_growth_bytes: int | None = None
    traced_peak_bytes: int | None = None

    @property
    def shadow_adds_up(self) -> bool:
        """Shadow outcomes sum to shadow calls, and every answer was shadowed exactly once."""
        s = self.shadow
        parts = s["matches"] + s["mismatches"] + s["errors"] + s["dropped"] + s["sampled_out"]
        return s["calls"] == parts == self.answers

    @property
    def ok(self) -> bool:
        """Nothing unaccounted, totals add up, shadow work stayed within its bound."""
        return (
            self.unaccounted == 0
            and self.answers + self.typed_errors == self.calls
            and self.shadow_adds_up
            and self.peak_shadow_in_flight <= self.max_in_flight
        )


def load_config(state: SandboxState, folder: Path, **over: dict[str, Any]) -> ShimConfig:
    """The emulator's config over the in-process transport, with :data:`LOAD_TABLES`."""
    path = state.write_config(folder / "shim.toml", v2_base_url=URL, v3_base_url=URL)
    with path.open("rb") as f:
        data = tomllib.load(f)
    for name, table in {**LOAD_TABLES, **over}.items():
        data.setdefault(name, {}).update(table)
    return parse_config(data, source="load-shim.toml", base_dir=folder, env={})


def arm(emulator: Emulator, *, stocks: int, fault_rate: float, seed: int) -> list[str]:
    """Add ``stocks`` copies of a seeded stock and arm faults on ``fault_rate`` of them per side.

    Returns:
        The stock ids to spread calls over.
    """
    template = emulator.stocks[TEMPLATE_STOCK]
    ids = [str(77_000_000 + i) for i in range(stocks)]
    for stock_id in ids:
        emulator.stocks[stock_id] = dataclasses.replace(template, stock_id=stock_id)
    rng = random.Random(seed)
    n = max(1, round(stocks * fault_rate))
    for side, kinds in (("v2", V2_FAULTS), ("v3", V3_FAULTS)):
        for i, stock_id in enumerate(rng.sample(ids, n)):
            emulator.set_fault(side, stock_id, kinds[i % len(kinds)], delay_s=1.0)
    return ids


def _in_flight(shim: CouponStockShim | AsyncCouponStockShim) -> int:
    runner = shim._runner  # read-only peek at the bounded shadow runner
    return 0 if runner is None else runner.in_flight


def _account(report: LoadReport, outcome: object) -> None:
    if isinstance(outcome, dict):
        report.answers += 1
    elif isinstance(outcome, ShimError):
        report.typed_errors += 1
        report.errors_by_kind[f"{type(outcome).__name__}:{getattr(outcome, 'kind', '-')}"] += 1
    else:
        report.unaccounted += 1
        report.errors_by_kind[f"unaccounted:{type(outcome).__name__}"] += 1


async def run_load(
    twin: str,
    config: ShimConfig,
    emulator: Emulator,
    stock_ids: list[str],
    *,
    calls: int,
    concurrency: int = 16,
    seed: int = 7,
    trace_memory: bool = False,
) -> LoadReport:
    """Send ``calls`` queries through one twin and account for each of them."""
    rng = random.Random(seed)
    plan = [rng.choice(stock_ids) for _ in range(calls)]
    report = LoadReport(twin, calls, max_in_flight=config.shadow.max_in_flight)
    if trace_memory:
        tracemalloc.start()
    started = time.monotonic()
    base_mem = 0
    if twin == "sync":
        shim = CouponStockShim(config, transport=emulator.mock_transport(), env={})
        try:
            for i, stock_id in enumerate(plan):
                try:
                    outcome: object = shim.query_coupon_stock(stock_id, mch_id=MCH_ID)
                except Exception as exc:  # every exception is sorted: typed or unaccounted
                    outcome = exc
                _account(report, outcome)
                report.peak_shadow_in_flight = max(report.peak_shadow_in_flight, _in_flight(shim))
                if trace_memory and i == min(200, calls // 10):
                    base_mem = tracemalloc.get_traced_memory()[0]
            shim.wait_for_shadows(30.0)
            report.shadow = shim.shadow_totals().as_dict()
        finally:
            shim.close()
    else:
        ashim = AsyncCouponStockShim(config, transport=emulator.mock_transport(), env={})
        queue = iter(plan)
        done = 0

        async def worker() -> None:
            # ``concurrency`` callers, each yielding to the loop between calls as a real
            # application (and real network I/O) would; the in-process transport itself
            # never suspends, so without this the shadow tasks could not run until the end.
            nonlocal done, base_mem
            for stock_id in queue:
                try:
                    outcome: object = await ashim.query_coupon_stock(stock_id, mch_id=MCH_ID)
                except Exception as exc:  # every exception is sorted: typed or unaccounted
                    outcome = exc
                _account(report, outcome)
                peak = max(report.peak_shadow_in_flight, _in_flight(ashim))
                report.peak_shadow_in_flight = peak
                done += 1
                if trace_memory and done == min(200, calls // 10):
                    base_mem = tracemalloc.get_traced_memory()[0]
                await asyncio.sleep(0)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await ashim.wait_for_shadows(30.0)
            report.shadow = ashim.shadow_totals().as_dict()
        finally:
            await ashim.aclose()
    report.wall_s = time.monotonic() - started
    if trace_memory:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        report.traced_growth_bytes = current - base_mem
        report.traced_peak_bytes = peak
    return report


def _print(report: LoadReport) -> None:
    s = report.shadow
    print(f"== {report.twin} twin")
    print(
        f"calls {report.calls}  answers {report.answers}  typed errors {report.typed_errors}  "
        f"unaccounted {report.unaccounted}  wall {report.wall_s:.1f} s "
        f"({report.calls / report.wall_s:.0f} calls/s)"
    )
    print(
        "typed errors by kind: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report.errors_by_kind.items()))
    )
    print(
        f"shadow: calls {s['calls']}  matches {s['matches']}  mismatches {s['mismatches']}  "
        f"errors {s['errors']} {s['errors_by_kind']}  dropped {s['dropped']}  "
        f"sampled out {s['sampled_out']}  (adds up: {report.shadow_adds_up})"
    )
    print(
        f"shadow in flight: peak {report.peak_shadow_in_flight} "
        f"(max_in_flight {report.max_in_flight})"
    )
    if report.traced_growth_bytes is not None:
        print(
            f"tracemalloc: growth after warm-up {report.traced_growth_bytes / 1024:.0f} KiB, "
            f"peak {report.traced_peak_bytes / 1024 / 1024:.1f} MiB"
        )
    print(f"ok: {report.ok}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python bench/load.py", description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--stocks", type=int, default=400)
    p.add_argument("--fault-rate", type=float, default=0.05)
    p.add_argument("--twin", choices=("sync", "async", "both"), default="both")
    p.add_argument("--concurrency", type=int, default=16, help="async twin: calls at once")
    p.add_argument("--no-tracemalloc", action="store_true", help="faster; no memory growth figure")
    args = p.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="coupon-shim-load-") as tmp:
        state = SandboxState.load_or_create(Path(tmp) / "state")
        config = load_config(state, Path(tmp))
        twins = ("sync", "async") if args.twin == "both" else (args.twin,)
        print(
            f"{args.calls} calls per twin over {args.stocks} stocks, fault rate "
            f"{args.fault_rate:.0%} per side, mode shadow (legacy serves, v3 compared)"
        )
        for twin in twins:
            emulator = Emulator(state)
            ids = arm(emulator, stocks=args.stocks, fault_rate=args.fault_rate, seed=11)
            report = asyncio.run(
                run_load(
                    twin,
                    config,
                    emulator,
                    ids,
                    calls=args.calls,
                    concurrency=args.concurrency,
                    trace_memory=not args.no_tracemalloc,
                )
            )
            _print(report)
            ok = ok and report.ok
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
