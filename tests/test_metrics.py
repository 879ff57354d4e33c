"""Prometheus metrics: a scripted cutover, scraped and parsed back, counts what was called.

The scrape is prometheus_client's own text exposition, read back with
``prometheus_client.parser`` (what a Prometheus server would ingest). Expected counts are
written down from the script (which route, outcome, cause and field each call must give), not
read from the shim.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shim import AsyncCouponStockShim, CouponStockShim, LiveConfig, SignatureError, UpstreamError

# private: the pure routing decision, driven directly
from shim._routing import bucket_of
from shim.metrics import METRIC_NAMES, metrics_for, render_latest
from shim.sandbox import Emulator, SandboxState
from tests.conftest import INPROCESS_URL, MD5_MCH, Twin

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the registry's text exposition, parsed back."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The non-zero samples of one sample name, by labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


def labels(**kv: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kv.items()))


def write_config(
    state: SandboxState, path: Path, mode: str, *, canary: float = 0.0, broken: bool = False
) -> None:
    """The emulator's shim.toml in ``mode``, written atomically (as the README says)."""
    state.write_config(path, v2_base_url=INPROCESS_URL, v3_base_url=INPROCESS_URL, mode=mode)
    text = path.read_text()
    for old, new in (
        ("canary_percent = 0.0", f"canary_percent = {canary}"),
        ("attempts = 3", "attempts = 2"),
        ("failure_threshold = 5", "failure_threshold = 4"),
        ("backoff_initial_s = 0.05", "backoff_initial_s = 0.0"),
    ):
        assert old in text
        text = text.replace(old, new)
    if broken:
        text = text.replace("[routing]", "[routing]\nmode_typo = 1")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a reload reads it at once


async def test_scripted_cutover_scrape_counts_every_call(
    twin_kind: str, sandbox_state: SandboxState, emulator: Emulator, tmp_path: Path
) -> None:
    """legacy → shadow → canary → v3 with faults and the divergent stock: the scrape shows
    exactly the calls made, by route, outcome, fallback cause, error kind and field."""
    registry = CollectorRegistry()
    path = tmp_path / "shim.toml"
    write_config(sandbox_state, path, "legacy")
    live = LiveConfig(path, env={}, watch=False)
    kwargs: dict[str, Any] = {
        "env": {},
        "registry": registry,
        "transport": emulator.mock_transport(),
    }
    shim = (AsyncCouponStockShim if twin_kind == "async" else CouponStockShim)(live, **kwargs)
    twin = Twin(twin_kind, shim)

    calls: Counter[tuple[str, str]] = Counter()  # (route, outcome)
    decisions: Counter[tuple[str, str]] = Counter()  # (route, reason)
    fallbacks: Counter[tuple[str, str]] = Counter()  # (from_route, cause)
    errors: Counter[tuple[str, str]] = Counter()  # (route, kind)
    shadow: Counter[str] = Counter()
    fields: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()

    async def call(stock: str, route: str, outcome: str, reason: str, decided: str = "") -> None:
        try:
            answer = await twin.query(stock, mch_id=MD5_MCH)
        except (UpstreamError, SignatureError):
            assert outcome == "error"
        else:
            assert outcome != "error", answer
            got = "success" if answer.get("result_code") == "SUCCESS" else "business_error"
            assert got == outcome, answer
        calls[(route, outcome)] += 1
        decisions[(decided or route, reason)] += 1

    async def reload(mode: str, **kw: Any) -> None:
        write_config(sandbox_state, path, mode, **kw)
        live.check()

    # 1. legacy
    for _ in range(3):
        await call("1757", "legacy", "success", "mode")
    await call("404404", "legacy", "business_error", "mode")

    # 2. shadow: legacy serves, v3 compared
    await reload("shadow")
    for _ in range(2):
        await call("1757", "legacy", "success", "mode")
        shadow["match"] += 1
    for _ in range(2):
        await call("9000000001", "legacy", "success", "mode")
        shadow["mismatch"] += 1
        fields["coupon_total"] += 1
        fields["is_send_num"] += 1
    emulator.set_fault("v3", "9856020", "http_500", times=1)
    await call("9856020", "legacy", "success", "mode")
    shadow["error"] += 1
    assert await twin.wait_for_shadows(10.0)

    # 3. canary at 50 %: the sticky bucket decides
    await reload("canary", canary=50.0)
    stocks = ["1757", "1717", "9856000", "9856001", "9856002", "9856003", "9856020", "9856030"]
    sides = set()
    for stock in stocks:
        inside = bucket_of(f"{MD5_MCH}:{stock}") < 5000
        sides.add(inside)
        await call(
            stock, "v3" if inside else "legacy", "success", "canary_in" if inside else "canary_out"
        )
    assert sides == {True, False}  # both sides of the canary were exercised

    # 4. v3
    await reload("v3")
    for _ in range(2):
        await call("1757", "v3", "success", "mode")
    await call("9856010", "v3", "success", "mode")
    unmapped["coupon_value"] += 1
    unmapped["coupon_mininumn"] += 1
    await call("404404", "v3", "business_error", "mode")
    emulator.set_fault("v3", "1717", "bad_signature", times=1)
    await call("1717", "v3", "error", "mode")
    errors[("v3", "signature")] += 1
    # v3 fails for good: two calls fall back (the second opens the breaker at 4 failures),
    # the third finds the breaker open
    emulator.set_fault("v3", "*", "http_500")
    for _ in range(2):
        await call("1757", "legacy", "success", "mode", decided="v3")
        fallbacks[("v3", "http_status")] += 1
        errors[("v3", "http_status")] += 1
    await call("1757", "legacy", "success", "mode", decided="v3")
    fallbacks[("v3", "circuit_open")] += 1
    errors[("v3", "circuit_open")] += 1
    # ... and then legacy fails too: an error after a fallback
    emulator.set_fault("v2", "1757", "http_500")
    await call("1757", "legacy", "error", "mode", decided="v3")
    fallbacks[("v3", "circuit_open")] += 1
    errors[("v3", "circuit_open")] += 1
    errors[("legacy", "http_status")] += 1

    # 5. a broken edit is rejected
    await reload("v3", broken=True)
    await twin.close()

    s = scrape(registry)
    assert series(s, "coupon_shim_calls_total") == {
        labels(route=r, outcome=o): n for (r, o), n in calls.items()
    }
    assert series(s, "coupon_shim_routing_decisions_total") == {
        labels(route=r, reason=why): n for (r, why), n in decisions.items()
    }
    assert series(s, "coupon_shim_fallbacks_total") == {
        labels(from_route=r, cause=c): n for (r, c), n in fallbacks.items()
    }
    assert series(s, "coupon_shim_upstream_errors_total") == {
        labels(route=r, kind=k): n for (r, k), n in errors.items()
    }
    assert series(s, "coupon_shim_shadow_comparisons_total") == {
        labels(result=k): n for k, n in shadow.items()
    }
    assert series(s, "coupon_shim_shadow_field_mismatches_total") == {
        labels(field=f): n for f, n in fields.items()
    }
    assert series(s, "coupon_shim_shadow_errors_total") == {labels(kind="http_status"): 1}
    assert series(s, "coupon_shim_unmapped_fields_total") == {
        labels(field=f): n for f, n in unmapped.items()
    }
    by_route: Counter[str] = Counter()
    for (route, _), n in calls.items():
        by_route[route] += n
    assert series(s, "coupon_shim_call_duration_seconds_count") == {
        labels(route=r): n for r, n in by_route.items()
    }
    assert series(s, "coupon_shim_shadow_duration_seconds_count") == {
        labels(route="v3"): sum(shadow.values())
    }
    assert series(s, "coupon_shim_config_reloads_total") == {
        labels(result="applied"): 3,
        labels(result="rejected"): 1,
    }
    # the v3 breaker opened once and is still open; legacy's never opened
    assert series(s, "coupon_shim_circuit_breaker_open") == {labels(route="v3", mch_id=MD5_MCH): 1}
    assert series(s, "coupon_shim_circuit_breaker_transitions_total") == {
        labels(route="v3", mch_id=MD5_MCH, state="open"): 1
    }
    assert s[("coupon_shim_shadow_in_flight", ())] == 0
    # label values are bounded: no stock id anywhere in the exposition
    text = generate_latest(registry).decode()
    for stock in (*stocks, "9000000001", "404404", "9856010"):
        assert f'"{stock}"' not in text


def test_every_documented_metric_is_exposed() -> None:
    """Each name in METRIC_NAMES is a family in the exposition, with its help text."""
    registry = CollectorRegistry()
    metrics_for(registry)
    families = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    # the parser names counters without their _total suffix
    exposed = {n if n in families else f"{n}_total" for n in families}
    for name in METRIC_NAMES:
        assert name in exposed or name.removesuffix("_total") in families, name


def test_one_metrics_object_per_registry(make_config: Callable[..., Any]) -> None:
    """Shims sharing a registry (the default one too) share its metric objects."""
    registry = CollectorRegistry()
    a = CouponStockShim(make_config("legacy"), registry=registry, env={})
    b = CouponStockShim(make_config("legacy"), registry=registry, env={})
    c = CouponStockShim(make_config("legacy"), env={})
    d = CouponStockShim(make_config("legacy"), env={})
    try:
        assert a.metrics is b.metrics and a.metrics is not None
        assert c.metrics is d.metrics and c.metrics is not a.metrics
    finally:
        for s in (a, b, c, d):
            s.close()


def test_field_labels_are_bounded() -> None:
    """A field name no v2 answer defines is counted as ``other``, never as itself."""
    from shim.metrics import _field  # private: the label bounding helper, tested directly

    assert _field("coupon_total") == "coupon_total"
    assert _field("x" * 200) == "other"
    assert _field("9000000001") == "other"


def test_the_per_call_updates_record_what_prometheus_own_methods_record() -> None:
    """The bound per-call updates (counter +1, histogram observe) leave exactly the samples
    that ``Counter.inc`` and ``Histogram.observe`` leave, bucket boundaries included."""
    from prometheus_client import Counter, Histogram

    # private: the reduced per-call updates, held to prometheus_client's own methods
    from shim.metrics import DURATION_BUCKETS, _counting, _observing

    amounts = [0.0, -1.0, 1e-9, float("inf"), float("nan"), 10.0, 10.000001, 123.0]
    for bound in DURATION_BUCKETS:
        amounts += [bound, bound - 1e-12, bound + 1e-12, bound / 2]
    scraped = []
    for fast in (False, True):
        registry = CollectorRegistry()
        hist = Histogram("h_seconds", "h", ["route"], buckets=DURATION_BUCKETS, registry=registry)
        count = Counter("c", "c", ["route"], registry=registry)
        observe = (_observing if fast else lambda c: c.observe)(hist.labels("v3"))
        inc = (_counting if fast else lambda c: c.inc)(count.labels("v3"))
        for amount in amounts:
            observe(amount)
            inc()
        scraped.append(
            {k: v for k, v in scrape(registry).items() if not k[0].endswith("_created")}
        )
    slow, fast_ = scraped
    nan_free = {k: v for k, v in slow.items() if v == v}
    assert {k: v for k, v in fast_.items() if v == v} == nan_free
    assert set(fast_) == set(slow) and len(nan_free) > len(DURATION_BUCKETS)


def test_answer_field_labels_come_from_the_mapping() -> None:
    """V2_ANSWER_FIELDS is derived, not hand-listed: every v2 key the shipped mapping can
    produce, plus the envelope the shim signs (nonce_str, sign) and the business-error pair its
    error rules fill; nothing else (the older doc's unmapped locked_num is ``other``)."""
    # private: the mapping's model, loader and converters, tested below the facade
    from shim._mapping.load import default_mapping_dir, load_mapping  # the mapping is the oracle

    # private: the label bounding helper, tested directly
    from shim.metrics import V2_ANSWER_FIELDS, _field

    table = load_mapping(default_mapping_dir())
    produced = {rule.v2_key for rule in table.fields}
    business = {r.kind for r in table.errors.values()} & {"business"}
    assert business  # so err_code / err_code_des are fields the mapping produces
    assert produced | {"nonce_str", "sign", "err_code", "err_code_des"} == V2_ANSWER_FIELDS
    assert _field("locked_num") == "other"


def test_render_latest_aggregates_worker_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, render_latest sums what two worker processes counted."""
    folder = tmp_path / "prom"
    folder.mkdir()
    worker = textwrap.dedent(
        """
        from shim.metrics import metrics_for
        m = metrics_for()
        m.calls.labels("v3", "success").inc(3)
        m.breaker_open.labels("v3", "10000098").set(1)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    render = textwrap.dedent(
        """
        from shim.metrics import render_latest
        body, ctype = render_latest()
        print(ctype)
        print(body.decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", render],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    ctype, _, body = out.partition("\n")
    assert ctype.startswith("text/plain")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }
    assert values[("coupon_shim_calls_total", labels(route="v3", outcome="success"))] == 6


def test_render_latest_single_process() -> None:
    """Without the multiprocess folder, render_latest renders the given registry."""
    registry = CollectorRegistry()
    metrics_for(registry)
    body, ctype = render_latest(registry)
    assert b"coupon_shim_calls_total" in body and ctype.startswith("text/plain")


def test_metrics_can_be_turned_off(make_config: Callable[..., Any], emulator: Emulator) -> None:
    """metrics=False records nothing, even with prometheus_client installed."""
    with CouponStockShim(
        make_config("legacy"), metrics=False, env={}, transport=emulator.mock_transport()
    ) as s:
        assert s.metrics is None
        assert s.query_coupon_stock("1757", mch_id=MD5_MCH)["result_code"] == "SUCCESS"
