"""The data model of ``coupon-shim compare``: one row per stock, the summary, the verdict.

Frozen values with their JSON-ready ``as_dict`` forms (the ``coupon-shim.compare/1`` document
that ``coupon-shim report`` reads back). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from shim._diff import FieldDiff
from shim._errors import Route

if TYPE_CHECKING:
    pass

__all__ = [
    "JSON_FORMAT",
    "ROW_CLASSES",
    "CompareReport",
    "CompareRow",
    "CompareSummary",
    "ErrorGroup",
    "RouteError",
    "RowClass",
    "Verdict",
]


RowClass = Literal["match", "expected_gap", "value_differs", "not_found_both", "error"]
ROW_CLASSES: Final[tuple[RowClass, ...]] = (
    "match",
    "expected_gap",
    "value_differs",
    "not_found_both",
    "error",
)
JSON_FORMAT: Final = "coupon-shim.compare/1"


@dataclass(frozen=True, slots=True)
class RouteError:
    """A route that gave no usable answer for a stock.

    Attributes:
        route: ``legacy`` or ``v3``.
        error: the error's class and kind (``UpstreamError(timeout)``), or ``return_code=FAIL``.
        message: the error's message (shim messages hold no secret), cut to 300 characters.
        cause: the human cause the error is grouped by ("v3 refused the shim's credentials
            (HTTP 401 SIGN_ERROR)").
        credentials: the cause is the shim's own credentials being refused.
        status: the HTTP status, when known.
        code: the upstream error code, when known.
    """

    route: Route
    error: str
    message: str
    cause: str
    credentials: bool = False
    status: int | None = None
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "route": self.route,
            "error": self.error,
            "cause": self.cause,
            "message": self.message,
            "credentials": self.credentials,
            "status": self.status,
            "code": self.code,
        }


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One stock, classified.

    Attributes:
        stock_id: the stock.
        klass: one of :data:`ROW_CLASSES`.
        diffs: the fields whose values differ (``value_differs``); ``served`` is legacy.
        gaps: keys v3 leaves out as the mapping documents for this stock (``expected_gap``,
            also kept on a ``value_differs`` row that has both).
        errors: the failed routes (``error``).
        err_code: the business error both routes gave (``not_found_both``).
    """

    stock_id: str
    klass: RowClass
    diffs: tuple[FieldDiff, ...] = ()
    gaps: tuple[str, ...] = ()
    errors: tuple[RouteError, ...] = ()
    err_code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; diffs use ``legacy``/``v3`` for the two values."""
        return {
            "stock_id": self.stock_id,
            "class": self.klass,
            "diffs": [{"field": d.field, "legacy": d.served, "v3": d.other} for d in self.diffs],
            "gaps": list(self.gaps),
            "errors": [e.as_dict() for e in self.errors],
            "err_code": self.err_code,
        }


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Every failed route of one cause: one line in the report, not one per stock."""

    cause: str
    route: Route
    count: int
    stock_ids: tuple[str, ...]
    sample_message: str
    credentials: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (all stock ids of the group)."""
        return {
            "cause": self.cause,
            "route": self.route,
            "count": self.count,
            "credentials": self.credentials,
            "sample_message": self.sample_message,
            "stock_ids": list(self.stock_ids),
        }


@dataclass(frozen=True, slots=True)
class CompareSummary:
    """Totals over all stocks.

    ``readiness_percent`` is ``ready / comparable * 100`` rounded to 2 decimals, where
    ``ready = match + expected_gap`` and ``comparable = total - not_found_both``; ``None`` when
    nothing is comparable.
    """

    total: int
    counts: Mapping[RowClass, int]
    mismatches_by_field: Mapping[str, int]
    gaps_by_field: Mapping[str, int]
    error_groups: tuple[ErrorGroup, ...]

    @property
    def comparable(self) -> int:
        """Stocks that count for readiness (all but ``not_found_both``)."""
        return self.total - self.counts.get("not_found_both", 0)

    @property
    def ready(self) -> int:
        """Stocks that give the same answer on v3 (``match`` + ``expected_gap``)."""
        return self.counts.get("match", 0) + self.counts.get("expected_gap", 0)

    @property
    def readiness_percent(self) -> float | None:
        """Share of comparable stocks that are ready, in percent; ``None`` if none is."""
        if not self.comparable:
            return None
        return round(self.ready * 100.0 / self.comparable, 2)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "total": self.total,
            "comparable": self.comparable,
            "ready": self.ready,
            "counts": {k: self.counts.get(k, 0) for k in ROW_CLASSES},
            "readiness_percent": self.readiness_percent,
            "mismatches_by_field": dict(sorted(self.mismatches_by_field.items())),
            "gaps_by_field": dict(sorted(self.gaps_by_field.items())),
            "error_groups": [g.as_dict() for g in self.error_groups],
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Ready or not against a threshold, with the reasons when not."""

    ready: bool
    threshold: float
    text: str
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ready": self.ready,
            "threshold_percent": self.threshold,
            "text": self.text,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Rows in input order, the summary, the verdict and the run's metadata."""

    rows: tuple[CompareRow, ...]
    summary: CompareSummary
    verdict: Verdict
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``format``, ``metadata``, ``summary``, ``verdict``, ``rows``)."""
        return {
            "format": JSON_FORMAT,
            "metadata": dict(self.metadata),
            "summary": self.summary.as_dict(),
            "verdict": self.verdict.as_dict(),
            "rows": [r.as_dict() for r in self.rows],
        }
