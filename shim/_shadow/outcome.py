"""One shadow comparison's result, and the secret-free label of a shadow failure (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from shim._diff import FieldDiff, diff_answers
from shim._errors import (
    ConfigError,
    InputError,
    MappingError,
    ShimError,
    SignatureError,
    UpstreamError,
)

__all__ = [
    "DROPPED",
    "SAMPLED_OUT",
    "OutcomeKind",
    "ShadowOutcome",
    "compare_answers",
    "error_kind_of",
]

OutcomeKind = Literal["match", "mismatch", "error", "dropped", "sampled_out"]


def error_kind_of(exc: BaseException) -> str:
    """A short, secret-free label for a shadow failure, used in the stats.

    ``signature``, the :class:`UpstreamError` kind (``timeout``, ``connection``,
    ``http_status``, ...), ``mapping``, ``input``, ``config``, ``shim``, ``timeout`` for a
    built-in :class:`TimeoutError`, else ``unexpected``.
    """
    if isinstance(exc, SignatureError):
        return "signature"
    if isinstance(exc, UpstreamError):
        return exc.kind
    if isinstance(exc, MappingError):
        return "mapping"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, ShimError):
        return "shim"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "unexpected"


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """The result of one shadow comparison (or of not running it).

    Attributes:
        kind: ``match``, ``mismatch``, ``error``, ``dropped`` (over ``max_in_flight``, or
            not finished because the runner was closed) or ``sampled_out``.
        diffs: the differing fields, for ``mismatch``.
        error_kind: see :func:`error_kind_of`, for ``error``.
        latency_ms: how long the shadow job ran, when it ran.
    """

    kind: OutcomeKind
    diffs: tuple[FieldDiff, ...] = ()
    error_kind: str | None = None
    latency_ms: float | None = None

    @classmethod
    def from_diffs(
        cls, diffs: tuple[FieldDiff, ...], *, latency_ms: float | None = None
    ) -> ShadowOutcome:
        """``match`` when ``diffs`` is empty, else ``mismatch``."""
        return cls("mismatch" if diffs else "match", diffs, None, latency_ms)

    @classmethod
    def from_error(cls, exc: BaseException, *, latency_ms: float | None = None) -> ShadowOutcome:
        """An ``error`` outcome labelled with :func:`error_kind_of`."""
        return cls("error", (), error_kind_of(exc), latency_ms)


def compare_answers(
    served: Mapping[str, str],
    other: Mapping[str, str],
    *,
    ignore: frozenset[str],
    latency_ms: float | None = None,
) -> ShadowOutcome:
    """Diff two answers into a ``match``/``mismatch`` outcome (a shadow job's last step)."""
    return ShadowOutcome.from_diffs(
        diff_answers(served, other, ignore=ignore), latency_ms=latency_ms
    )


DROPPED: Final = ShadowOutcome("dropped")
SAMPLED_OUT: Final = ShadowOutcome("sampled_out")
