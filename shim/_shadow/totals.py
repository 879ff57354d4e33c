"""The shadow totals: thread-safe counters of outcomes and their immutable snapshot."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from shim._shadow.outcome import ShadowOutcome

__all__ = ["ShadowStats", "ShadowTotals"]


@dataclass(frozen=True, slots=True)
class ShadowTotals:
    """An immutable snapshot of the shadow totals.

    ``calls == matches + mismatches + errors + dropped + sampled_out`` and
    ``compared == matches + mismatches``.
    """

    calls: int = 0
    compared: int = 0
    matches: int = 0
    mismatches: int = 0
    mismatches_by_field: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    errors: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    dropped: int = 0
    sampled_out: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The totals as a JSON-ready dict (per-field and per-kind counts sorted by name)."""
        return {
            "calls": self.calls,
            "compared": self.compared,
            "matches": self.matches,
            "mismatches": self.mismatches,
            "mismatches_by_field": dict(sorted(self.mismatches_by_field.items())),
            "errors": self.errors,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "dropped": self.dropped,
            "sampled_out": self.sampled_out,
        }


class ShadowStats:
    """Thread-safe running totals of shadow outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._by_field: Counter[str] = Counter()
        self._by_kind: Counter[str] = Counter()

    def record(self, outcome: ShadowOutcome) -> None:
        """Add one outcome to the totals."""
        with self._lock:
            self._counts[outcome.kind] += 1
            if outcome.kind == "mismatch":
                self._by_field.update(d.field for d in outcome.diffs)
            elif outcome.kind == "error":
                self._by_kind[outcome.error_kind or "unexpected"] += 1

    def snapshot(self) -> ShadowTotals:
        """A consistent, immutable copy of the totals."""
        with self._lock:
            c = self._counts
            return ShadowTotals(
                calls=sum(c.values()),
                compared=c["match"] + c["mismatch"],
                matches=c["match"],
                mismatches=c["mismatch"],
                mismatches_by_field=MappingProxyType(dict(self._by_field)),
                errors=c["error"],
                errors_by_kind=MappingProxyType(dict(self._by_kind)),
                dropped=c["dropped"],
                sampled_out=c["sampled_out"],
            )
