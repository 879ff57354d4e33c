"""The shipped Grafana dashboard and Prometheus alert rules use only metrics that exist.

No promtool or Grafana here: the files are parsed (JSON, YAML), checked for the structure the
tools require, and every metric, label and label value an expression names is checked
against what ``shim.metrics`` actually exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shim.metrics import METRIC_NAMES, metrics_for

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "coupon-shim.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

_SELECTOR = re.compile(r"\b(coupon_shim_[a-z_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_DURATION = re.compile(r"\A\d+[smhdw]\Z")
_VOCAB = {
    "route": {"legacy", "v3"},
    "from_route": {"legacy", "v3"},
    "outcome": {"success", "business_error", "fail", "error"},
    "result": {"match", "mismatch", "error", "dropped", "sampled_out", "applied", "rejected"},
    "state": {"open", "half_open", "closed"},
}


def _exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every series the shim can export."""
    registry = CollectorRegistry()
    m = metrics_for(registry)
    assert m is not None
    # touch one child of each labelled family so its samples (and labels) are exposed
    m.calls.labels("v3", "success")
    m.duration.labels("v3")
    m.decisions.labels("v3", "mode")
    m.fallbacks.labels("v3", "timeout")
    m.upstream_errors.labels("v3", "timeout")
    m.unmapped.labels("coupon_value")
    m.shadow.labels("match")
    m.mismatches.labels("coupon_total")
    m.shadow_errors.labels("timeout")
    m.shadow_duration.labels("v3")
    m.breaker_open.labels("v3", "10000098")
    m.breaker_changes.labels("v3", "10000098", "open")
    m.reloads.labels("applied")
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    for name in out.values():
        name.discard("le")
    return out


EXPORTED = _exported()


def _check_expr(expr: str) -> set[str]:
    """Assert every selector in ``expr`` names an exported series, labels and values; return
    the metric names used."""
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    used: set[str] = set()
    for name, matchers in _SELECTOR.findall(expr):
        assert name in EXPORTED, f"{name} is not exported (in {expr!r})"
        used.add(name)
        for label, op, value in _MATCHER.findall(matchers):
            assert label in EXPORTED[name], f"{name} has no label {label!r}"
            if label in _VOCAB and op in ("=", "!="):
                assert value in _VOCAB[label], f"{label}={value!r} never occurs"
            if label in _VOCAB and op in ("=~", "!~"):
                assert set(value.split("|")) <= _VOCAB[label], f"{label}=~{value!r}"
    for labels in re.findall(r"\bby \(([^)]*)\)", expr):
        for label in (x.strip() for x in labels.split(",")):
            assert any(label in ls or label == "le" for ls in EXPORTED.values()), label
    return used


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    """Title, uid, schema version, a Prometheus data-source input, unique panel ids, grid
    positions inside the 24 columns, and every panel bound to the input."""
    d = _dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    (ds_input,) = d["__inputs"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    uid = "${" + ds_input["name"] + "}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["refId"] and t["expr"], p["title"]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    """Every query names exported metrics and labels; the core ones are all charted."""
    used: set[str] = set()
    for p in _dashboard()["panels"]:
        for t in p.get("targets", []):
            used |= _check_expr(t["expr"])
    base = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    for name in (
        "coupon_shim_calls_total",
        "coupon_shim_call_duration_seconds",
        "coupon_shim_fallbacks_total",
        "coupon_shim_shadow_comparisons_total",
        "coupon_shim_shadow_field_mismatches_total",
        "coupon_shim_circuit_breaker_open",
        "coupon_shim_config_reloads_total",
    ):
        assert name in base, name
    assert base <= set(METRIC_NAMES)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"} and group["name"]
        rules += group["rules"]
    return rules


def test_alert_rules_have_the_prometheus_structure() -> None:
    """Each rule: a CamelCase alert name, an expression, an optional duration, a severity,
    a summary and a description; names are unique."""
    names = []
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule
        names.append(rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "for" in rule:
            assert _DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("CouponShimShadowMismatchRateHigh", "coupon_shim_shadow_comparisons_total"),
        ("CouponShimFallbackRateHigh", "coupon_shim_fallbacks_total"),
        ("CouponShimCircuitBreakerOpen", "coupon_shim_circuit_breaker_open"),
    ],
)
def test_required_alerts_watch_the_right_metric(alert: str, metric: str) -> None:
    """The mismatch-rate, fallback-rate and breaker-open alerts exist and read their metric."""
    (rule,) = [r for r in _rules() if r["alert"] == alert]
    assert metric in _check_expr(rule["expr"])


def test_every_alert_expression_uses_exported_metrics() -> None:
    """No rule names a metric, label or label value the shim never exports."""
    for rule in _rules():
        assert _check_expr(rule["expr"]), rule["alert"]
