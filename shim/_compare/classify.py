"""Classifying a stock from both routes' results, summing up, and the verdict (pure).

The diff itself is :func:`shim._diff.diff_answers`, the one the shadow comparison uses.

Each stock is one of:

* ``match`` — both routes give the same v2 answer (after ``[shadow] ignore_fields``);
* ``expected_gap`` — they differ only in keys the mapping leaves out for this stock (a
  ``required = false`` v3-sourced key that v3 could not fill, recorded as unmapped): ready;
* ``value_differs`` — any other difference, a business error on one side only included;
* ``not_found_both`` — both routes answer the same business error (e.g.
  ``COUPON_STOCK_NOT_FOUND``): excluded from readiness;
* ``error`` — a route gave no usable answer (a typed error, or ``return_code=FAIL``).

Readiness is ``(match + expected_gap) / (all − not_found_both)``; with nothing comparable
there is no readiness, and the verdict is "not ready".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from shim._compare.model import (
    CompareRow,
    CompareSummary,
    ErrorGroup,
    RouteError,
    RowClass,
    Verdict,
)
from shim._diff import diff_answers
from shim._errors import MappingError, Route, ShimError, SignatureError, UpstreamError

if TYPE_CHECKING:
    from shim._flow import RouteResult
    from shim._mapping.model import MappingTable

__all__ = ["classify", "gap_keys", "judge", "route_error", "summarise", "top_counts"]


_MAX_MESSAGE: Final = 300
_ROUTE_NAME: Final[Mapping[str, str]] = {"legacy": "v2 (legacy)", "v3": "v3"}
_CREDENTIALS_HINT: Final[Mapping[str, str]] = {
    "v3": "check v3_private_key, v3_cert_serial and the clock",
    "legacy": "check v2_key and v2_sign_type",
}


def _clip(text: str) -> str:
    message = " ".join(text.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _return_fail_rule(table: MappingTable | None, return_msg: str) -> tuple[int, str] | None:
    """The (status, code) of the mapping's ``return_fail`` rule whose message this is."""
    if table is None:
        return None
    for (status, code), rule in table.errors.items():
        if rule.kind == "return_fail" and rule.return_msg == return_msg:
            return status, code
    return None


def _is_credentials(route: Route, status: int | None, code: str | None) -> bool:
    if route == "v3":
        return status == 401 or code == "SIGN_ERROR"
    return code == "SIGN_ERROR"


def _credentials_cause(route: Route, what: str) -> str:
    side = _ROUTE_NAME[route]
    return f"{side} refused the shim's credentials ({what}; {_CREDENTIALS_HINT[route]})"


def route_error(
    route: Route, failure: ShimError | Mapping[str, str], table: MappingTable | None = None
) -> RouteError:
    """Describe a failed route: a typed error, or an answer with ``return_code`` not SUCCESS.

    The cause is what errors are grouped by: it names the route and the kind of failure, and
    never a stock id or a value, so 18 stocks refused for one reason make one line.
    """
    side = _ROUTE_NAME[route]
    if not isinstance(failure, ShimError):
        msg = str(failure.get("return_msg", ""))
        found = _return_fail_rule(table, msg) if route == "v3" else None
        if found is not None:
            rule_status, rule_code = found
            refused = _is_credentials(route, rule_status, rule_code)
            if refused:
                cause = _credentials_cause(route, f"HTTP {rule_status} {rule_code}")
            else:
                cause = f"{side} answered HTTP {rule_status} {rule_code} (return_code=FAIL)"
            return RouteError(
                route, "return_code=FAIL", _clip(msg), cause, refused, rule_status, rule_code
            )
        cause = f"{side} answered return_code=FAIL: {_clip(msg)[:80] or '(no return_msg)'}"
        return RouteError(route, "return_code=FAIL", _clip(msg), cause)
    message = _clip(str(failure))
    status: int | None = getattr(failure, "status", None)
    code: str | None = getattr(failure, "code", None)
    if isinstance(failure, SignatureError):
        name = "SignatureError"
        cause = f"{side} answer failed signature verification"
    elif isinstance(failure, UpstreamError):
        name = f"UpstreamError({failure.kind})"
        kind = failure.kind
        if _is_credentials(route, status, code) and kind == "http_status":
            cause = _credentials_cause(route, f"HTTP {status} {code or ''}".rstrip())
        elif kind == "timeout":
            cause = f"{side} timed out"
        elif kind == "connection":
            cause = f"{side} connection failed"
        elif kind == "http_status":
            cause = f"{side} answered HTTP {status} {code or ''}".rstrip()
        elif kind == "budget":
            cause = f"{side} ran out of the call's time budget"
        else:
            cause = f"{side} gave an unusable answer ({kind})"
    elif isinstance(failure, MappingError):
        name = "MappingError"
        cause = f"{side} answer could not be mapped onto the v2 answer"
    else:
        name = type(failure).__name__
        cause = f"{side}: {name}"
    credentials = _is_credentials(route, status, code) and (
        isinstance(failure, UpstreamError) and failure.kind == "http_status"
    )
    return RouteError(route, name, message, cause, credentials, status, code)


def _is_answer(answer: Mapping[str, str]) -> bool:
    return answer.get("return_code") == "SUCCESS"


def _business_error(answer: Mapping[str, str]) -> str | None:
    if answer.get("result_code") != "SUCCESS" or answer.get("err_code"):
        return answer.get("err_code") or "(no err_code)"
    return None


def gap_keys(table: MappingTable | None) -> frozenset[str]:
    """The v2 keys the mapping may leave out: v3-sourced and ``required = false``."""
    if table is None:
        return frozenset()
    return frozenset(r.v2_key for r in table.fields if r.kind == "v3" and not r.required)


def classify(
    stock_id: str,
    legacy: RouteResult | ShimError,
    v3: RouteResult | ShimError,
    *,
    ignore: frozenset[str],
    table: MappingTable | None = None,
) -> CompareRow:
    """Classify one stock from both routes' results (see the module docstring).

    A key counts as an expected gap when legacy has it, v3's answer lacks it, the v3 route
    recorded it as unmapped for this stock, and the mapping declares it as a v3-sourced,
    ``required = false`` key: all three come from the mapping and the answer, none from a list.
    """
    results: dict[Route, RouteResult] = {}
    errors: list[RouteError] = []
    for route, got in (("legacy", legacy), ("v3", v3)):
        if isinstance(got, ShimError):
            errors.append(route_error(route, got, table))  # type: ignore[arg-type]
        elif not _is_answer(got.answer):
            errors.append(route_error(route, got.answer, table))  # type: ignore[arg-type]
        else:
            results[route] = got  # type: ignore[index]
    if errors:
        return CompareRow(stock_id, "error", errors=tuple(errors))
    old, new = results["legacy"], results["v3"]
    old_err, new_err = _business_error(old.answer), _business_error(new.answer)
    if old_err is not None and old_err == new_err:
        return CompareRow(stock_id, "not_found_both", err_code=old_err)
    diffs = diff_answers(old.answer, new.answer, ignore=ignore)
    allowed = gap_keys(table) & set(new.unmapped)
    gaps = tuple(d.field for d in diffs if d.other is None and d.field in allowed)
    values = tuple(d for d in diffs if d.field not in gaps)
    if values:
        return CompareRow(stock_id, "value_differs", diffs=values, gaps=gaps)
    if gaps:
        return CompareRow(stock_id, "expected_gap", gaps=gaps)
    return CompareRow(stock_id, "match")


def summarise(rows: Sequence[CompareRow]) -> CompareSummary:
    """Count the classes, the differing and gap fields, and group the errors by cause."""
    counts: Counter[RowClass] = Counter(r.klass for r in rows)
    by_field: Counter[str] = Counter()
    gaps: Counter[str] = Counter()
    groups: dict[tuple[Route, str], list[tuple[str, RouteError]]] = defaultdict(list)
    for row in rows:
        by_field.update(d.field for d in row.diffs)
        gaps.update(row.gaps)
        for err in row.errors:
            groups[(err.route, err.cause)].append((row.stock_id, err))
    error_groups = sorted(
        (
            ErrorGroup(
                cause=cause,
                route=route,
                count=len(items),
                stock_ids=tuple(s for s, _ in items),
                sample_message=items[0][1].message,
                credentials=items[0][1].credentials,
            )
            for (route, cause), items in groups.items()
        ),
        key=lambda g: (-g.count, g.route, g.cause),
    )
    return CompareSummary(
        total=len(rows),
        counts=dict(counts),
        mismatches_by_field=dict(by_field),
        gaps_by_field=dict(gaps),
        error_groups=tuple(error_groups),
    )


def top_counts(counter: Mapping[str, int], n: int = 4) -> str:
    """The ``n`` largest counts as ``"name count, ..."`` (ties by name), and how many more."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return text + (f", +{len(items) - n} more" if len(items) > n else "")


def judge(summary: CompareSummary, threshold: float) -> Verdict:
    """The verdict against ``threshold`` percent (readiness must be at least that)."""
    c = summary.counts
    excluded = c.get("not_found_both", 0)
    note = f"; {excluded} found on neither route (excluded)" if excluded else ""
    pct = summary.readiness_percent
    if pct is None:
        reason = (
            f"no stock was found on either route ({excluded} of {summary.total})"
            if summary.total
            else "no stock was compared"
        )
        return Verdict(False, threshold, f"NOT READY: {reason}; nothing to judge", (reason,))
    gaps = c.get("expected_gap", 0)
    gap_note = f" ({gaps} differ only by documented gaps)" if gaps else ""
    head = (
        f"{pct:.2f}% of comparable stocks ({summary.ready} of {summary.comparable}) give the "
        f"same answer on v3{gap_note}"
    )
    if summary.ready * 100.0 >= threshold * summary.comparable:  # unrounded
        return Verdict(True, threshold, f"READY: {head}, threshold {threshold:.2f}%{note}")
    reasons: list[str] = []
    if c.get("value_differs"):
        reasons.append(
            f"{c['value_differs']} differ in values ({top_counts(summary.mismatches_by_field)})"
        )
    for g in summary.error_groups:
        reasons.append(f"{g.count} × {g.cause}")
    text = f"NOT READY: {head}, below {threshold:.2f}%"
    if reasons:
        text += ": " + "; ".join(reasons)
    return Verdict(False, threshold, text + note, tuple(reasons))
