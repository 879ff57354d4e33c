"""``coupon-shim check``: validate a config and its mapping, show the routing each merchant
gets, and with ``--probe`` try each merchant on each route.

What it prints never includes a secret value: a key is shown as present, with where it comes
from (``env:NAME``, ``file:PATH`` or ``literal``), never as its content.

Exit codes: 0 ok; 1 findings (a problem the config does not refuse but an operator must fix,
or a probe that failed); 3 the config or the mapping does not validate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from shim._commands import Command, ExitCode

__all__ = ["COMMAND", "CheckReport", "ProbeResult", "check_config", "probe"]

DEFAULT_PROBE_STOCK = "1"
#: v2 business error codes that mean the merchant or its credentials are wrong, not the stock.
_CREDENTIAL_CODES = frozenset({"SIGN_ERROR", "MCH_ID_EMPTY", "CODE_2_ID_ERR", "REQ_PARAM_XML_ERR"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class ProbeResult:
    """One probe call: a merchant on a route."""

    mch_id: str
    route: str
    ok: bool
    outcome: str
    detail: str
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mch_id": self.mch_id,
            "route": self.route,
            "ok": self.ok,
            "outcome": self.outcome,
            "detail": self.detail,
            "latency_ms": round(self.latency_ms, 1),
        }


@dataclass
class CheckReport:
    """What ``check`` found: the resolved settings, findings and probe results."""

    source: str
    summary: dict[str, Any]
    merchants: list[dict[str, Any]]
    findings: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and all(p.ok for p in self.probes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.source,
            "valid": True,
            **self.summary,
            "merchants": self.merchants,
            "findings": self.findings,
            "probes": [p.as_dict() for p in self.probes],
            "ok": self.ok,
        }


def _origin(secret: Any) -> str:
    """``env:NAME`` / ``file:PATH`` / ``literal`` of a :class:`~shim._values.Secret`."""
    return str(getattr(secret, "_origin", "literal"))


def _percent(value: float) -> str:
    return f"{value:g} %"


def _merchant_routing(cfg: Any, m: Any, kill: bool) -> tuple[str, list[str]]:
    """How routing treats this merchant (one line) and the findings it raises."""
    from shim._routing import bucket_of, routing_key

    r = cfg.routing
    findings: list[str] = []
    needs_v3 = False
    if kill:
        line = f"legacy (kill switch {r.kill_switch_env} is on)"
    elif m.mch_id in r.force_legacy_mch_ids:
        line = "legacy (force_legacy_mch_ids)"
        if m.mch_id in r.force_v3_mch_ids:
            line += "; also in force_v3_mch_ids, legacy wins"
    elif m.mch_id in r.force_v3_mch_ids:
        line, needs_v3 = "v3 (force_v3_mch_ids)", True
    else:
        mode = r.mode
        if r.flag_source == "openfeature":
            prefix = f"from OpenFeature flag {r.openfeature_flag!r}; if it gives nothing: "
        else:
            prefix = ""
        bucket_by = m.bucket_by or r.bucket_by
        if mode == "legacy":
            line = "legacy"
        elif mode == "v3":
            line, needs_v3 = "v3", True
        elif mode == "shadow":
            other = "v3" if r.shadow_serve == "legacy" else "legacy"
            share = _percent(cfg.shadow.sample_ratio * 100)
            line = f"shadow: {r.shadow_serve} serves, {other} compared ({share} sampled)"
            needs_v3 = True
        else:
            share = _percent(r.canary_percent)
            if bucket_by == "mch_id":
                bucket = bucket_of(routing_key("mch_id", m.mch_id, ""))
                side = "v3" if bucket < r.canary_buckets else "legacy"
                line = f"canary {share}: bucket {bucket} of this merchant -> {side}"
            else:
                line = f"canary {share} of keys (mch_id:coupon_stock_id) on v3, the rest legacy"
            if r.canary_shadow:
                line += ", other side shadowed"
            needs_v3 = r.canary_percent > 0 or r.canary_shadow
        line = prefix + line
        if r.flag_source == "openfeature":
            needs_v3 = True  # the flag may say v3 at any time
    if r.force_v3_stock_ids and not kill and m.mch_id not in r.force_legacy_mch_ids:
        needs_v3 = True
    if needs_v3 and m.v3 is None:
        findings.append(
            f'merchants."{m.mch_id}": no v3 credentials, but routing would send it to v3; it '
            "is served by legacy (reason no_v3_credentials) until v3_private_key, "
            "v3_cert_serial and a WeChat Pay key are configured"
        )
        line += " [no v3 credentials: legacy]"
    return line, findings


def _url_finding(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK:
        return f"upstream.{name}: plain http to {parts.hostname!r}; use https outside loopback"
    return None


def check_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> tuple[CheckReport, Any]:
    """Load and validate ``path`` (config and mapping) and resolve its routing per merchant.

    Returns:
        The report and the loaded :class:`~shim._values.ShimConfig`.

    Raises:
        ConfigError: the config or its mapping does not validate.
    """
    from shim._environ import kill_switch_on
    from shim._loader import load_config
    from shim._mapping.load import load_mapping
    from shim._secrets import LiteralSecretWarning
    from shim._values import ENV_CANARY_PERCENT, ENV_MODE

    env = os.environ if env is None else env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LiteralSecretWarning)
        cfg = load_config(path, env=env)
    findings = [f"{w.message}" for w in caught if issubclass(w.category, LiteralSecretWarning)]
    table = cfg.mapping or load_mapping(cfg.mapping_dir)
    r = cfg.routing
    kill = kill_switch_on(r, env)
    overrides = {k: env[k] for k in (ENV_MODE, ENV_CANARY_PERCENT) if env.get(k)}
    up = cfg.upstream
    for name in ("v2_base_url", "v3_base_url"):
        found = _url_finding(name, getattr(up, name))
        if found:
            findings.append(found)
    known = set(cfg.merchants)
    for list_name in ("force_v3_mch_ids", "force_legacy_mch_ids"):
        for mch in sorted(getattr(r, list_name) - known):
            findings.append(f"routing.{list_name}: {mch!r} has no merchant entry")
    if not cfg.merchants:
        findings.append("merchants: none configured; every call would fail")
    summary: dict[str, Any] = {
        "mapping": {
            "dir": str(cfg.mapping_dir) if cfg.mapping_dir else "packaged",
            "fields": len(table.fields),
            "error_rules": len(table.errors),
        },
        "upstream": {
            "v2_base_url": up.v2_base_url,
            "v3_base_url": up.v3_base_url,
            "timeout_s": up.timeout_s,
            "budget_s": up.budget_s,
        },
        "routing": {
            "mode": r.mode,
            "canary_percent": r.canary_percent,
            "bucket_by": r.bucket_by,
            "shadow_serve": r.shadow_serve,
            "fallback_to_legacy": r.fallback_to_legacy,
            "fallback_to_v3": r.fallback_to_v3,
            "flag_source": r.flag_source,
            "kill_switch_env": r.kill_switch_env,
            "kill_switch_on": kill,
            "env_overrides": overrides,
            "force_v3_mch_ids": sorted(r.force_v3_mch_ids),
            "force_legacy_mch_ids": sorted(r.force_legacy_mch_ids),
            "force_v3_stock_ids": sorted(r.force_v3_stock_ids),
            "force_legacy_stock_ids": sorted(r.force_legacy_stock_ids),
        },
        "shadow": {
            "sample_ratio": cfg.shadow.sample_ratio,
            "max_in_flight": cfg.shadow.max_in_flight,
            "workers": cfg.shadow.workers,
            "timeout_s": cfg.shadow.timeout_s,
        },
    }
    merchants: list[dict[str, Any]] = []
    for mch_id, m in sorted(cfg.merchants.items()):
        routing_line, more = _merchant_routing(cfg, m, kill)
        findings += more
        v3: dict[str, Any] | None = None
        if m.v3 is not None:
            v3 = {
                "cert_serial": m.v3.cert_serial,
                "verifiers": sorted(m.v3.verifiers),
            }
        merchants.append(
            {
                "mch_id": mch_id,
                "appid": m.appid,
                "v2_key": _origin(m.v2_key),
                "v2_sign_type": m.v2_sign_type,
                "v3": v3,
                "routing": routing_line,
            }
        )
    return CheckReport(str(path), summary, merchants, findings), cfg


def _probe_outcome(answer: Mapping[str, str]) -> tuple[bool, str, str]:
    if answer.get("return_code") != "SUCCESS":
        return False, "fail", f"return_code=FAIL: {answer.get('return_msg', '')}"
    code = answer.get("err_code")
    if answer.get("result_code") != "SUCCESS" or code:
        if code in _CREDENTIAL_CODES:
            return False, "business_error", f"{code}: {answer.get('err_code_des', '')}"
        return True, "business_error", f"{code} (a verified answer: credentials work)"
    return True, "success", "a verified answer"


def probe(cfg: Any, stock_id: str, *, events: bool = False) -> list[ProbeResult]:
    """One call per merchant on each route it can use, no retry, no fallback, no shadow.

    Any verified answer counts as working, a business error included (the probe stock need
    not exist); a refused signature, a credential error or no answer does not. Per-call
    events are logged only with ``events`` (the report says it all).
    """
    from shim._client import CouponStockShim
    from shim._errors import ShimError
    from shim._values import RetryConfig

    probe_cfg = replace(cfg, retry=RetryConfig(attempts=1))
    results: list[ProbeResult] = []
    quiet = (
        None
        if events
        else structlog.wrap_logger(
            None, wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
        )
    )
    with CouponStockShim(probe_cfg, env={}, logger=quiet) as shim:
        for mch_id, m in sorted(cfg.merchants.items()):
            routes = ["legacy", "v3"] if m.v3 is not None else ["legacy"]
            for route in routes:
                started = time.monotonic()
                try:
                    answer = shim.query_via(route, coupon_stock_id=stock_id, mch_id=mch_id)  # type: ignore[arg-type]
                except ShimError as exc:
                    kind = getattr(exc, "kind", None)
                    label = f"{type(exc).__name__}{':' + kind if kind else ''}"
                    ms = (time.monotonic() - started) * 1000
                    results.append(
                        ProbeResult(mch_id, route, False, "error", f"{label}: {exc}", ms)
                    )
                    continue
                ms = (time.monotonic() - started) * 1000
                ok, outcome, detail = _probe_outcome(answer)
                results.append(ProbeResult(mch_id, route, ok, outcome, detail, ms))
            if m.v3 is None:
                results.append(ProbeResult(mch_id, "v3", True, "skipped", "no v3 credentials", 0.0))
    return results


def render(report: CheckReport) -> str:
    """The report as text for a terminal."""
    s = report.summary
    r, up, sh, mp = s["routing"], s["upstream"], s["shadow"], s["mapping"]
    lines = [f"config: {report.source}: valid"]
    lines.append(
        f"mapping: {mp['dir']} ({mp['fields']} v2 keys, {mp['error_rules']} error rules): valid"
    )
    lines.append(
        f"upstream: v2 {up['v2_base_url']}, v3 {up['v3_base_url']} "
        f"(timeout {up['timeout_s']:g} s, budget {up['budget_s']:g} s)"
    )
    mode = r["mode"]
    if mode == "canary":
        mode += f" {_percent(r['canary_percent'])} (bucket_by {r['bucket_by']})"
    lines.append(
        f"routing: mode {mode}; fallback to legacy {'on' if r['fallback_to_legacy'] else 'off'},"
        f" to v3 {'on' if r['fallback_to_v3'] else 'off'}; flag source {r['flag_source']}; "
        f"kill switch {r['kill_switch_env']} {'ON' if r['kill_switch_on'] else 'off'}"
    )
    if r["env_overrides"]:
        shown = ", ".join(f"{k}={v}" for k, v in r["env_overrides"].items())
        lines.append(f"         environment overrides: {shown}")
    for name in ("force_v3_mch_ids", "force_legacy_mch_ids", "force_v3_stock_ids",
                 "force_legacy_stock_ids"):  # fmt: skip
        if r[name]:
            lines.append(f"         {name}: {', '.join(r[name])}")
    lines.append(
        f"shadow: sample {_percent(sh['sample_ratio'] * 100)}, max_in_flight "
        f"{sh['max_in_flight']}, workers {sh['workers']}, timeout {sh['timeout_s']:g} s"
    )
    lines.append("")
    lines.append("merchants:")
    for m in report.merchants:
        v3 = m["v3"]
        v3_text = (
            f"yes (serial {v3['cert_serial']}, verifies with {', '.join(v3['verifiers'])})"
            if v3
            else "no"
        )
        lines.append(f"  {m['mch_id']}  appid {m['appid']}")
        lines.append(f"    v2 key: present ({m['v2_key']}), sign type {m['v2_sign_type']}")
        lines.append(f"    v3 credentials: {v3_text}")
        lines.append(f"    routing: {m['routing']}")
    if report.probes:
        lines.append("")
        lines.append("probes:")
        for p in report.probes:
            state = "ok  " if p.ok and p.outcome != "skipped" else "--  " if p.ok else "FAIL"
            lines.append(
                f"  {p.mch_id}  {p.route:<6}  {state}  {p.detail}"
                + (f"  ({p.latency_ms:.0f} ms)" if p.outcome != "skipped" else "")
            )
    lines.append("")
    if report.findings:
        lines.append(f"findings ({len(report.findings)}):")
        lines += [f"  - {f}" for f in report.findings]
    failed = [p for p in report.probes if not p.ok]
    verdict = (
        "ok" if report.ok else (f"{len(report.findings)} finding(s), {len(failed)} failed probe(s)")
    )
    lines.append(f"result: {verdict}")
    return "\n".join(lines)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the shim.toml to check")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also make one call per merchant on each route against the configured upstream",
    )
    p.add_argument(
        "--probe-stock",
        default=DEFAULT_PROBE_STOCK,
        metavar="STOCK_ID",
        help=(
            "the stock id the probes query (default: %(default)s; it need not exist: a "
            "verified 'not found' answer proves the credentials work)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run(args: argparse.Namespace) -> int:
    report, cfg = check_config(Path(args.config))
    if args.probe:
        report.probes = probe(cfg, args.probe_stock, events=args.verbose)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(render(report))
    return ExitCode.OK if report.ok else ExitCode.FINDINGS


COMMAND = Command(
    name="check",
    help="validate a config and its mapping; show each merchant's routing; --probe each route",
    description=(
        "Validate shim.toml and its mapping, print the resolved routing per merchant (mode, "
        "canary share, force lists, which credentials are present: never their values), and "
        "flag what the config allows but an operator must fix. With --probe, make one call per "
        "merchant on each route against the configured upstream and report what works."
    ),
    epilog=(
        "exit codes: 0 ok, 1 findings or a failed probe, 3 the config or mapping is invalid\n"
        "example:\n  coupon-shim check --config shim.toml --probe"
    ),
    add_arguments=_add_arguments,
    run=_run,
)
