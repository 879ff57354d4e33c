"""The fault matrix as data: every emulator fault x mode x fallback, with its documented outcome.

Shared by ``tests/test_fault_matrix.py`` (which runs every case through both twins) and
``tests/render_fault_matrix.py`` (which prints the README table), so the table cannot drift
from what is tested.

How a case is set up (the config is :data:`MATRIX_TABLES`):

- ``v3`` and ``canary`` (``canary_percent = 100``, so v3 serves): the fault is on the v3 side.
- ``shadow`` (``shadow_serve = "legacy"``): the fault is on v3, the shadowed side; the served
  answer is unaffected and the shadow records the outcome.
- ``legacy``: the fault is on the v2 side; fallback means ``fallback_to_v3``.
- "fallback on" sets both ``fallback_to_legacy`` and ``fallback_to_v3``; "off" clears both.

What a fault does is one of a few *effects*, and the outcome follows from the effect, the mode
and the fallback switch:

- ``transient`` (connection error, timeout, 429, 5xx): retried (``attempts`` requests), then
  served by the other side when fallback is on, else an :class:`UpstreamError` of that kind.
- ``protocol`` (malformed body, wrong content type, over the size cap, a DTD): one request, an
  :class:`UpstreamError` of kind ``protocol``; not retried, not fallen back from (the same
  request would get the same answer, and a broken upstream contract must be loud).
- ``signature``: one request, a :class:`SignatureError`; never retried, never fallen back from.
- ``unmapped`` (a signed v3 4xx the mapping has no v2 form for): one request, an
  :class:`UpstreamError` of kind ``http_status``; not fallen back from.
- ``business`` / ``return_fail``: a signed answer the caller receives as a v2 dict.
- ``reduced``: an unsigned ``return_code=FAIL`` carrying forged data; the caller receives only
  its ``return_code`` and ``return_msg``.
- ``stall`` (a drip: every byte inside the read timeout, the whole answer never in time): one
  request, cut at the deadline (the serving route's, which leaves the fallback its share); then
  served by the other side when fallback is on, else an :class:`UpstreamError`. These cases run
  with ``budget_s = STALL_BUDGET_S``.
- ``credentials`` (v3 refuses the shim's own credentials: an unsigned 401, as WeChat Pay sends
  it): one request, not retried; served by legacy when ``fallback_to_legacy`` is on (event
  ``fallback_kind`` and metrics cause ``credentials_refused``), else the mapping's
  ``return_code=FAIL`` answer for ``401 SIGN_ERROR`` (built by the shim, nothing of the
  unsigned body in it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig

# private: the config loader's steps, tested one by one
from shim._loader import parse_config
from shim.sandbox import Emulator, SandboxState
from tests.conftest import Twin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Mode = Literal["v3", "canary", "shadow", "legacy"]
Effect = Literal[
    "none",
    "transient",
    "protocol",
    "signature",
    "unmapped",
    "business",
    "return_fail",
    "reduced",
    "stall",
    "credentials",
]

STOCK_ID = "1757"
MCH_ID = "10000098"
#: Attempts per route in the matrix config.
ATTEMPTS = 2
#: Budget of one call in the matrix config.
BUDGET_S = 2.0
#: Delay of a ``delay`` fault: longer than the read timeout, so it times out.
DELAY_S = 1.0
#: Pause between the bytes of a drip fault: far inside the read timeout.
DRIP_S = 0.02
#: ``header_drip`` per side: a v2 head is about 80 bytes, a v3 head about 700 (its signature
#: header), so the whole head takes about 2.5 s on either side, several budgets.
HEAD_DRIP_S = {"v2": 0.03, "v3": 0.004}
#: Budget and read timeout of a call in the ``stall`` cases (a drip runs until the deadline
#: cuts it; the fallback then has ``min(timeout_s, budget_s / 2)`` = 0.3 s).
STALL_BUDGET_S = 0.8
STALL_TIMEOUT_S = 0.3
#: What the emulator's encoding bombs inflate to in the matrix (``stacked_encodings``: 4x):
#: far over ``max_body_bytes`` (1 MiB), small enough for a test run.
BOMB_BYTES = 8 * 1024 * 1024
#: A stalled call ends as the deadline cuts it: ``budget`` (the shim's own deadline check) or
#: ``timeout`` (a socket or task deadline), whichever fires first.
STALL_KIND = "budget|timeout"

#: Config tables of every matrix case (``routing`` is completed per case).
MATRIX_TABLES: dict[str, dict[str, Any]] = {
    "upstream": {"timeout_s": 0.15, "connect_timeout_s": 0.5, "budget_s": BUDGET_S},
    "retry": {"attempts": ATTEMPTS, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
    "circuit_breaker": {"failure_threshold": 5, "reset_after_s": 30.0},
    "shadow": {"timeout_s": 1.0},
}


@dataclass(frozen=True)
class Fault:
    """One emulator fault and what it does to a call.

    Attributes:
        side: the emulator side it is armed on (``v2`` or ``v3``).
        fault: the emulator fault (``FAULT_KINDS``, with arguments), or ``""`` for none.
        effect: what it does (see the module docstring).
        kind: the :class:`UpstreamError` kind raised on that side (transient, protocol,
            unmapped), or the shadow label of a signature failure.
        status: the HTTP status the error carries, when there is one.
        err_code: the v2 ``err_code`` of a business answer.
        loopback_only: the fault needs a real socket (every mode runs over loopback only).
    """

    side: Literal["v2", "v3"]
    fault: str
    effect: Effect
    kind: str | None = None
    status: int | None = None
    err_code: str | None = None
    loopback_only: bool = False

    @property
    def delay_s(self) -> float:
        """The ``delay_s`` the fault is armed with."""
        if self.fault == "header_drip":
            return HEAD_DRIP_S[self.side]
        return DRIP_S if self.fault.endswith("_drip") else DELAY_S

    @property
    def label(self) -> str:
        """The fault's name in ids and tables."""
        return self.fault or "(none)"


V3_FAULTS: tuple[Fault, ...] = (
    Fault("v3", "", "none"),
    Fault("v3", "http_500", "transient", "http_status", 500),
    Fault("v3", "http_502", "transient", "http_status", 502),
    Fault("v3", "http_503", "transient", "http_status", 503),
    Fault("v3", "http_429", "transient", "http_status", 429),
    Fault("v3", "delay", "transient", "timeout"),
    Fault("v3", "reset", "transient", "connection"),
    Fault("v3", "truncated", "transient", "connection"),
    Fault("v3", "malformed", "protocol", "protocol"),
    Fault("v3", "wrong_content_type", "protocol", "protocol"),
    Fault("v3", "huge_body", "protocol", "protocol"),
    Fault("v3", "bad_signature", "signature"),
    Fault("v3", "missing_signature", "signature"),
    Fault("v3", "stale_signature", "signature"),
    Fault("v3", "unknown_serial", "signature"),
    Fault("v3", "signtest", "signature"),
    Fault("v3", "tampered_body", "signature"),
    Fault("v3", "v3_error:500:SYSTEM_ERROR", "transient", "http_status", 500),
    Fault("v3", "v3_error:403:SOME_NEW_CODE", "unmapped", "http_status", 403),
    Fault("v3", "v3_error:404:RESOURCE_NOT_EXISTS", "business", err_code="COUPON_STOCK_NOT_FOUND"),
    Fault("v3", "v3_error:401:SIGN_ERROR", "credentials", "http_status"),
    Fault("v3", "header_drip", "stall", STALL_KIND, loopback_only=True),
    Fault("v3", "body_drip", "stall", STALL_KIND),
    Fault("v3", "encoding_bomb", "protocol", "protocol"),
    Fault("v3", "stacked_encodings", "protocol", "protocol"),
    Fault("v3", "oversized_headers", "transient", "connection"),
    Fault("v3", "wrong_stock", "protocol", "protocol"),
    Fault("v3", "wrong_merchant", "protocol", "protocol"),
)

V2_FAULTS: tuple[Fault, ...] = (
    Fault("v2", "", "none"),
    Fault("v2", "http_500", "transient", "http_status", 500),
    Fault("v2", "http_502", "transient", "http_status", 502),
    Fault("v2", "http_503", "transient", "http_status", 503),
    Fault("v2", "http_429", "transient", "http_status", 429),
    Fault("v2", "delay", "transient", "timeout"),
    Fault("v2", "reset", "transient", "connection"),
    Fault("v2", "truncated", "transient", "connection"),
    Fault("v2", "malformed", "protocol", "protocol"),
    Fault("v2", "wrong_content_type", "protocol", "protocol"),
    Fault("v2", "huge_body", "protocol", "protocol"),
    Fault("v2", "billion_laughs", "protocol", "protocol"),
    Fault("v2", "bad_signature", "signature"),
    Fault("v2", "missing_signature", "signature"),
    Fault("v2", "tampered_body", "signature"),
    Fault("v2", "err_code:SYSTEMERROR", "business", err_code="SYSTEMERROR"),
    Fault("v2", "header_drip", "stall", STALL_KIND, loopback_only=True),
    Fault("v2", "body_drip", "stall", STALL_KIND),
    Fault("v2", "encoding_bomb", "protocol", "protocol"),
    Fault("v2", "stacked_encodings", "protocol", "protocol"),
    Fault("v2", "oversized_headers", "transient", "connection"),
    Fault("v2", "wrong_stock", "protocol", "protocol"),
    Fault("v2", "wrong_merchant", "protocol", "protocol"),
    Fault("v2", "wrong_appid", "protocol", "protocol"),
    Fault("v2", "unsigned_fail", "reduced"),
)

#: Faults that only make full sense over real sockets: also run over loopback.
SOCKET_FAULTS = frozenset(
    {
        "reset",
        "truncated",
        "delay",
        "body_drip",
        "encoding_bomb",
        "stacked_encodings",
        "oversized_headers",
    }
)

_SIDE_ROUTE = {"v2": "legacy", "v3": "v3"}


@dataclass(frozen=True)
class Expect:
    """The documented outcome of one case.

    Attributes:
        served_by: the route whose answer the caller gets, or None when an error is raised.
        err_code: the ``err_code`` of the answer (None: a success answer or an error).
        return_fail: the answer is ``return_code=FAIL``.
        reduced: that answer holds ``return_code`` and ``return_msg`` only.
        fallback_cause: the event's ``fallback_cause`` when it is not the error kind.
        error: ``(exception class name, kind)`` of the raised error.
        shadow: the shadow outcome (``match``, ``mismatch``, ``error:<kind>``) in shadow mode.
        requests: requests each emulator side receives (``{"v2": n, "v3": m}``).
        fallback: the call was served by the other side after the primary failed.
    """

    served_by: str | None
    err_code: str | None = None
    return_fail: bool = False
    error: tuple[str, str] | None = None
    shadow: str | None = None
    requests: tuple[tuple[str, int], ...] = ()
    fallback: bool = False
    reduced: bool = False
    fallback_cause: str | None = None


@dataclass(frozen=True)
class Case:
    """One row x column of the matrix."""

    fault: Fault
    mode: Mode
    fallback: bool
    via: Literal["inprocess", "loopback"] = "inprocess"

    @property
    def budget_s(self) -> float:
        """The call's budget in this case."""
        return STALL_BUDGET_S if self.fault.effect == "stall" else BUDGET_S

    @property
    def timeout_s(self) -> float:
        """The read timeout of one attempt in this case."""
        if self.fault.effect == "stall":
            return STALL_TIMEOUT_S
        return float(MATRIX_TABLES["upstream"]["timeout_s"])

    @property
    def id(self) -> str:
        """A pytest id."""
        fb = "fb-on" if self.fallback else "fb-off"
        return f"{self.mode}-{fb}-{self.fault.side}-{self.fault.label}-{self.via}"

    def routing(self) -> dict[str, Any]:
        """The ``[routing]`` table of this case."""
        return {
            "canary_percent": 100.0 if self.mode == "canary" else 0.0,
            "shadow_serve": "legacy",
            "fallback_to_legacy": self.fallback,
            "fallback_to_v3": self.fallback,
        }

    def expect(self) -> Expect:
        """The documented outcome, derived from the fault's effect, the mode and fallback."""
        f = self.fault
        if self.mode == "shadow":
            return Expect("legacy", shadow=_shadow_label(f), requests=(("v2", 1), ("v3", 1)))
        primary = "legacy" if self.mode == "legacy" else "v3"
        other = "v3" if primary == "legacy" else "legacy"
        side = "v2" if primary == "legacy" else "v3"
        other_side = "v3" if side == "v2" else "v2"
        if f.effect == "none":
            return Expect(primary, requests=((side, 1), (other_side, 0)))
        if f.effect == "business":
            return Expect(primary, err_code=f.err_code, requests=((side, 1), (other_side, 0)))
        if f.effect == "return_fail":
            return Expect(primary, return_fail=True, requests=((side, 1), (other_side, 0)))
        if f.effect == "reduced":
            return Expect(
                primary, return_fail=True, reduced=True, requests=((side, 1), (other_side, 0))
            )
        if f.effect in ("stall", "credentials"):
            assert f.kind is not None
            if self.fallback and (f.effect == "stall" or other == "legacy"):
                cause = "credentials_refused" if f.effect == "credentials" else None
                return Expect(
                    other,
                    requests=((side, 1), (other_side, 1)),
                    fallback=True,
                    fallback_cause=cause,
                )
            if f.effect == "credentials":
                return Expect(primary, return_fail=True, requests=((side, 1), (other_side, 0)))
            return Expect(
                None, error=("UpstreamError", f.kind), requests=((side, 1), (other_side, 0))
            )
        if f.effect == "transient":
            if self.fallback:
                return Expect(other, requests=((side, ATTEMPTS), (other_side, 1)), fallback=True)
            assert f.kind is not None
            return Expect(
                None,
                error=("UpstreamError", f.kind),
                requests=((side, ATTEMPTS), (other_side, 0)),
            )
        if f.effect == "signature":
            return Expect(
                None, error=("SignatureError", "protocol"), requests=((side, 1), (other_side, 0))
            )
        assert f.kind is not None
        return Expect(None, error=("UpstreamError", f.kind), requests=((side, 1), (other_side, 0)))


def _shadow_label(f: Fault) -> str:
    if f.effect == "none":
        return "match"
    if f.effect in ("business", "return_fail", "reduced", "credentials"):
        return "mismatch"
    if f.effect == "signature":
        return "error:signature"
    return f"error:{f.kind}".replace("|", " or error:")


V3_MODES: tuple[Mode, ...] = ("v3", "canary", "shadow")


def matrix_cases() -> list[Case]:
    """Every case: v3-side faults x {v3, canary, shadow} x fallback, v2-side faults x legacy x
    fallback, in-process; plus the loopback variant of every socket fault (modes v3, legacy)."""
    cases: list[Case] = []
    for fault in V3_FAULTS:
        for mode in V3_MODES:
            for fb in (True, False):
                cases.append(
                    Case(fault, mode, fb, "loopback" if fault.loopback_only else "inprocess")
                )
    for fault in V2_FAULTS:
        for fb in (True, False):
            cases.append(
                Case(fault, "legacy", fb, "loopback" if fault.loopback_only else "inprocess")
            )
    for case in list(cases):
        if (
            case.fault.fault in SOCKET_FAULTS
            and case.mode in ("v3", "legacy")
            and case.via == "inprocess"
        ):
            cases.append(Case(case.fault, case.mode, case.fallback, "loopback"))
    return cases


# ---------------------------------------------------------------------------- the README table


def _cell(case: Case) -> str:
    e = case.expect()
    if e.shadow is not None:
        return f"legacy serves; shadow `{e.shadow}`"
    tries = dict(e.requests)
    side = case.fault.side
    if e.error is not None:
        cls, kind = e.error
        kind = kind.replace("|", " or ")
        text = f"`{cls}` {kind}" if cls != "SignatureError" else "`SignatureError`"
        return text + (f" ({tries[side]} tries)" if tries[side] > 1 else "")
    assert e.served_by is not None
    if e.fallback:
        if e.fallback_cause:
            return f"**{e.served_by}** serves (cause `{e.fallback_cause}`)"
        return f"**{e.served_by}** serves ({_SIDE_ROUTE[side]} tried {tries[side]}×)"
    if e.err_code:
        return f"{e.served_by} answers `{e.err_code}`"
    if e.reduced:
        return f"{e.served_by} answers `return_code=FAIL` with only `return_code`, `return_msg`"
    if e.return_fail:
        return f"{e.served_by} answers `return_code=FAIL`"
    return f"{e.served_by} serves"


def render_table() -> str:
    """The README's fault matrix (Markdown), generated from :func:`matrix_cases`."""
    cases = [c for c in matrix_cases() if c.via == "inprocess" or c.fault.loopback_only]
    by_key = {(c.fault, c.mode, c.fallback): c for c in cases}
    lines = [
        "Faults armed on the v3 side (the serving side in `v3` and `canary`, the shadowed side "
        "in `shadow`):",
        "",
        "| v3 fault | `v3`, fallback on | `v3`, fallback off | `canary` 100 %, fallback on "
        "| `canary` 100 %, fallback off | `shadow` (legacy serves), fallback on or off |",
        "|---|---|---|---|---|---|",
    ]
    for fault in V3_FAULTS:
        cells = [_cell(by_key[(fault, m, fb)]) for m in ("v3", "canary") for fb in (True, False)]
        on, off = _cell(by_key[(fault, "shadow", True)]), _cell(by_key[(fault, "shadow", False)])
        assert on == off
        lines.append(f"| `{fault.label}` | " + " | ".join([*cells, on]) + " |")
    lines += [
        "",
        "Faults armed on the v2 side, mode `legacy` (fallback = `fallback_to_v3`):",
        "",
        "| v2 fault | fallback on | fallback off |",
        "|---|---|---|",
    ]
    for fault in V2_FAULTS:
        cells = [_cell(by_key[(fault, "legacy", fb)]) for fb in (True, False)]
        lines.append(f"| `{fault.label}` | " + " | ".join(cells) + " |")
    socket = ", ".join(f"`{k}`" for k in sorted(SOCKET_FAULTS))
    only = sorted({f.fault for f in (*V3_FAULTS, *V2_FAULTS) if f.loopback_only})
    loopback_only = ", ".join(f"`{k}`" for k in only)
    lines += [
        "",
        f"Config: `timeout_s = {MATRIX_TABLES['upstream']['timeout_s']}`, "
        f"`budget_s = {BUDGET_S}` (drips: `budget_s = {STALL_BUDGET_S}`, `timeout_s = "
        f"{STALL_TIMEOUT_S}`), `[retry] attempts = "
        f"{ATTEMPTS}`, `canary_percent = 100`, `delay` faults wait {DELAY_S} s, drips send one "
        f"byte every {DRIP_S} s (a head: every {HEAD_DRIP_S['v2']} s on v2, "
        f"{HEAD_DRIP_S['v3']} s on v3, about 2.5 s in all), encoding bombs inflate to "
        f"{BOMB_BYTES // 2**20} MiB (stacked: "
        f"{4 * BOMB_BYTES // 2**20} MiB). Every case runs through both twins over the "
        f"in-process transport ({loopback_only} over real loopback sockets only); {socket} "
        "also run over real loopback sockets (modes `v3` and `legacy`), with the same "
        "outcomes. Every case with a delay or a drip is timed, side by side with the "
        "others, and finishes within its `budget_s` (+1 s margin; +0.5 s for the drips); "
        "every error is a `ShimError` with no secret in its text.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- building shims
#
# Parsing a config loads (and validates) each merchant's RSA key, which costs tens of
# milliseconds; the matrix parses one config per transport and derives each case's config
# from it with ``dataclasses.replace``.


def parse_emulator_config(
    state: SandboxState, folder: Path, url: str, tables: dict[str, dict[str, Any]]
) -> ShimConfig:
    """The emulator's own ``shim.toml`` pointing at ``url``, with ``tables`` merged in."""
    path = state.write_config(folder / "shim.toml", v2_base_url=url, v3_base_url=url)
    with path.open("rb") as f:
        data = tomllib.load(f)
    for name, table in tables.items():
        data.setdefault(name, {}).update(table)
    return parse_config(data, source="test-shim.toml", base_dir=folder, env={})


def case_config(base: ShimConfig, mode: str, **routing: Any) -> ShimConfig:
    """``base`` with ``[routing] mode`` and other routing keys replaced."""
    return replace(base, routing=replace(base.routing, mode=mode, **routing))


def build_twin(
    kind: str, config: ShimConfig, emulator: Emulator, *, inprocess: bool, **kwargs: Any
) -> Twin:
    """A sync or async shim over the emulator (in-process transport, or the config's URL)."""
    kwargs.setdefault("env", {})
    if kind == "async":
        if inprocess:
            kwargs["transport"] = emulator.mock_transport()
        return Twin(kind, AsyncCouponStockShim(config, **kwargs))
    if inprocess:
        kwargs["transport"] = emulator.mock_transport()
    return Twin(kind, CouponStockShim(config, **kwargs))
