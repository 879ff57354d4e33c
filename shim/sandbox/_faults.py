"""Fault kinds the emulator can inject, and the per-(side, stock) fault table.

Kinds (``FAULT_KINDS``); ``err_code`` and ``v3_error`` take arguments (``err_code:<CODE>``,
``v3_error:<STATUS>:<CODE>``):

================== ==== ==== =============================================================
kind               v2   v3   what the answer is
================== ==== ==== =============================================================
http_500/502/503   yes  yes  that HTTP status. v2: a text/html gateway page, unsigned. v3: a
http_429                     signed JSON error (SYSTEM_ERROR, SERVICE_UNAVAILABLE,
                             FREQUENCY_LIMIT_EXCEED)
delay              yes  yes  sleep ``delay_s`` then answer normally (asyncio.sleep over ASGI,
                             time.sleep in the MockTransport's sync path)
reset              yes  yes  no answer: the connection is dropped (see the server module)
truncated          yes  yes  Content-Length promises more bytes than are sent, then the
                             connection closes
malformed          yes  yes  invalid JSON / XML body, correctly signed (v3 header; v2 sign
                             computed over the fields before the XML was broken)
wrong_content_type yes  yes  the normal, correctly signed body served as text/html
bad_signature      yes  yes  a well-formed signature that does not verify
missing_signature  yes  yes  no Wechatpay-Signature header / no v2 ``sign`` element
stale_signature    no   yes  Wechatpay-Timestamp 10 minutes old, correctly signed
unknown_serial     no   yes  Wechatpay-Serial names no key the client has, otherwise signed
signtest           no   yes  Wechatpay-Signature starts ``WECHATPAY/SIGNTEST/``
tampered_body      yes  yes  one value changed after signing
huge_body          yes  yes  a valid, correctly signed body of several MB
billion_laughs     yes  no   an XML entity-expansion body
err_code:<CODE>    yes  no   signed v2 business error with that err_code
v3_error:<S>:<C>   no   yes  v3 error ``{"code": C, "message": ...}`` with status S, signed
                             (a 401 is unsigned, as WeChat Pay sends it)
header_drip        yes  yes  the status line and headers sent one byte every ``delay_s``
                             seconds (each byte well inside any read timeout), then the
                             answer; in-process: a plain wait of the whole drip
body_drip          yes  yes  headers at once, then the body one byte every ``delay_s`` s
encoding_bomb      yes  yes  ``Content-Encoding: gzip``: a small body that inflates to
                             ``bomb_bytes`` (64 MiB by default)
stacked_encodings  yes  yes  ``Content-Encoding: gzip, gzip``: a body of about 1 KB that
                             inflates twice to ``bomb_bytes`` x 4
wrong_stock        yes  yes  a correctly signed answer about another stock
wrong_merchant     yes  yes  a correctly signed answer naming another merchant (v2
                             ``mch_id``, v3 ``stock_creator_mchid``)
wrong_appid        yes  no   a correctly signed answer naming another ``appid``
oversized_headers  yes  yes  the normal answer with 64 extra headers of 4 KiB each (256 KiB
                             of headers, over what HTTP clients accept)
unsigned_fail      yes  no   an unsigned ``return_code=FAIL`` that also carries forged data
                             (``result_code=SUCCESS``, the stock, ``coupon_value=999999``)
================== ==== ==== =============================================================

Drips use ``delay_s`` as the pause between bytes (give a small one, e.g. ``0.05``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

Side = Literal["v2", "v3"]

HTTP_500 = "http_500"
HTTP_502 = "http_502"
HTTP_503 = "http_503"
HTTP_429 = "http_429"
DELAY = "delay"
RESET = "reset"
TRUNCATED = "truncated"
MALFORMED = "malformed"
WRONG_CONTENT_TYPE = "wrong_content_type"
BAD_SIGNATURE = "bad_signature"
MISSING_SIGNATURE = "missing_signature"
STALE_SIGNATURE = "stale_signature"
UNKNOWN_SERIAL = "unknown_serial"
SIGNTEST = "signtest"
TAMPERED_BODY = "tampered_body"
HUGE_BODY = "huge_body"
BILLION_LAUGHS = "billion_laughs"
ERR_CODE = "err_code"
V3_ERROR = "v3_error"
HEADER_DRIP = "header_drip"
BODY_DRIP = "body_drip"
ENCODING_BOMB = "encoding_bomb"
STACKED_ENCODINGS = "stacked_encodings"
WRONG_STOCK = "wrong_stock"
WRONG_MERCHANT = "wrong_merchant"
WRONG_APPID = "wrong_appid"
OVERSIZED_HEADERS = "oversized_headers"
UNSIGNED_FAIL = "unsigned_fail"

#: Every fault kind (``err_code`` and ``v3_error`` are written with their arguments).
FAULT_KINDS: tuple[str, ...] = (
    HTTP_500,
    HTTP_502,
    HTTP_503,
    HTTP_429,
    DELAY,
    RESET,
    TRUNCATED,
    MALFORMED,
    WRONG_CONTENT_TYPE,
    BAD_SIGNATURE,
    MISSING_SIGNATURE,
    STALE_SIGNATURE,
    UNKNOWN_SERIAL,
    SIGNTEST,
    TAMPERED_BODY,
    HUGE_BODY,
    BILLION_LAUGHS,
    ERR_CODE,
    V3_ERROR,
    HEADER_DRIP,
    BODY_DRIP,
    ENCODING_BOMB,
    STACKED_ENCODINGS,
    WRONG_STOCK,
    WRONG_MERCHANT,
    WRONG_APPID,
    OVERSIZED_HEADERS,
    UNSIGNED_FAIL,
)

_V3_ONLY = frozenset({STALE_SIGNATURE, UNKNOWN_SERIAL, SIGNTEST, V3_ERROR})
_V2_ONLY = frozenset({BILLION_LAUGHS, ERR_CODE, WRONG_APPID, UNSIGNED_FAIL})

#: Fault kinds that apply to the v2 side / the v3 side.
V2_FAULT_KINDS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k not in _V3_ONLY)
V3_FAULT_KINDS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k not in _V2_ONLY)

#: A stock id that matches every stock (and requests whose stock id cannot be read).
ANY_STOCK = "*"

_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class SandboxConnectionDropped(ConnectionError):
    """Raised by the ASGI app to drop a connection when it cannot reach the transport."""


@dataclass(frozen=True)
class Fault:
    """One armed fault.

    Attributes:
        side: ``"v2"`` or ``"v3"``.
        stock_id: the stock it applies to, or :data:`ANY_STOCK`.
        fault: the kind as given (``err_code:SYSTEMERROR`` keeps its argument).
        kind: the bare kind (``err_code``).
        args: the kind's arguments.
        times: how many more requests it applies to (None: until cleared).
        delay_s: the delay of a ``delay`` fault; the pause between bytes of a drip.
    """

    side: Side
    stock_id: str
    fault: str
    kind: str
    args: tuple[str, ...]
    times: int | None
    delay_s: float

    def to_json(self) -> dict[str, object]:
        """A JSON-able description (for the admin endpoint)."""
        return {
            "side": self.side,
            "stock_id": self.stock_id,
            "fault": self.fault,
            "times": self.times,
            "delay_s": self.delay_s,
        }


def make_fault(
    side: str, stock_id: str, fault: str, times: int | None = None, delay_s: float = 1.0
) -> Fault:
    """Validate and build a :class:`Fault`.

    Raises:
        ValueError: unknown side or kind, a kind meaningless on that side, bad arguments.
    """
    if side not in ("v2", "v3"):
        raise ValueError(f"side must be 'v2' or 'v3', not {side!r}")
    if not isinstance(stock_id, str) or not stock_id:
        raise ValueError("stock_id must be a non-empty string (or '*')")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError("times must be a positive integer or None")
    if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or delay_s < 0:
        raise ValueError("delay_s must be a non-negative number")
    kind, _, rest = fault.partition(":")
    args: tuple[str, ...] = tuple(rest.split(":")) if rest else ()
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {fault!r}; known: {', '.join(FAULT_KINDS)}")
    if kind == ERR_CODE:
        if len(args) != 1 or not _CODE.match(args[0]):
            raise ValueError("err_code fault is written err_code:<CODE>, e.g. err_code:SYSTEMERROR")
    elif kind == V3_ERROR:
        if (
            len(args) != 2
            or not args[0].isdigit()
            or not 400 <= int(args[0]) <= 599
            or not _CODE.match(args[1])
        ):
            raise ValueError("v3_error fault is written v3_error:<STATUS>:<CODE>, status 400-599")
    elif args:
        raise ValueError(f"fault {kind!r} takes no arguments")
    if side == "v2" and kind in _V3_ONLY:
        raise ValueError(f"fault {kind!r} is meaningless on the v2 side")
    if side == "v3" and kind in _V2_ONLY:
        raise ValueError(f"fault {kind!r} is meaningless on the v3 side")
    checked_side: Side = "v2" if side == "v2" else "v3"
    return Fault(checked_side, stock_id, fault, kind, args, times, float(delay_s))


class FaultTable:
    """Thread-safe table of armed faults keyed by (side, stock id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[tuple[str, str], Fault] = {}

    def set(self, fault: Fault) -> None:
        """Arm ``fault``, replacing any fault on the same (side, stock id)."""
        with self._lock:
            self._faults[(fault.side, fault.stock_id)] = fault

    def clear(self, side: str | None = None, stock_id: str | None = None) -> None:
        """Disarm faults (all of them, or those matching side and/or stock id)."""
        with self._lock:
            for key in list(self._faults):
                if (side is None or key[0] == side) and (stock_id is None or key[1] == stock_id):
                    del self._faults[key]

    def take(self, side: str, stock_id: str | None) -> Fault | None:
        """The fault for this request (exact stock first, then ``*``), consuming one use."""
        with self._lock:
            keys = [(side, stock_id)] if stock_id is not None else []
            keys.append((side, ANY_STOCK))
            for key in keys:
                found = self._faults.get(key)
                if found is None:
                    continue
                if found.times is not None:
                    if found.times <= 1:
                        del self._faults[key]
                    else:
                        self._faults[key] = replace(found, times=found.times - 1)
                return found
            return None

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._faults.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)
