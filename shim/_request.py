"""The caller's arguments, normalised into a validated v2 request (beside :mod:`shim._v2`).

Both facades (and ``query_via``) take the v2 call signature, the same fields as a dict
(``xml={...}``), or keyword fields; this module turns any of them into one
:class:`~shim._v2.V2Request` and its fields, before any network call:

* ``xml={...}`` is a dict of v2 request fields: ``nonce_str``, ``sign`` and ``sign_type`` in it
  are ignored (the shim signs its own request), and it may not be combined with fields;
* a left-out ``appid`` is the merchant's configured one (looked up only for a plausible
  ``mch_id``, so an unknown merchant is named as such rather than as a missing appid);
* validation (:func:`shim._v2.validate_request`) is memoised for plain-string arguments: it is a
  pure function of them and hot traffic repeats them; the memo is bounded (cleared when full)
  and never holds a rejected argument.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from shim import _v2 as v2
from shim._errors import InputError

if TYPE_CHECKING:
    from shim._values import ShimConfig

__all__ = ["Requests", "call_values", "via_values"]

_IGNORED_PAYLOAD_KEYS: Final = frozenset({"nonce_str", "sign", "sign_type"})
_REQUEST_FIELD_SET: Final = frozenset(v2.REQUEST_FIELDS)
#: Validated argument tuples kept by one shim's memo before it starts afresh.
_MEMO_SIZE: Final = 4096


def call_values(
    coupon_stock_id: Any,
    appid: Any,
    mch_id: Any,
    op_user_id: Any,
    device_info: Any,
    version: Any,
    type_: Any,
) -> dict[str, Any]:
    """The positional v2 call signature as a dict of request fields (None: not given)."""
    return {
        "coupon_stock_id": coupon_stock_id,
        "appid": appid,
        "mch_id": mch_id,
        "op_user_id": op_user_id,
        "device_info": device_info,
        "version": version,
        "type": type_,
    }


def via_values(route: object, fields: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """``query_via(route, **fields)``'s arguments: (request fields, ``xml`` or None).

    Raises:
        InputError: ``route`` is not ``legacy`` or ``v3``, or a keyword is not a request field.
    """
    if route not in ("legacy", "v3"):
        shown = repr(route) if isinstance(route, str) else type(route).__name__
        raise InputError(f"must be 'legacy' or 'v3', got {shown[:24]}", field="route")
    xml = fields.pop("xml", None)
    values = call_values(*(fields.pop(k, None) for k in v2.REQUEST_FIELDS))
    if fields:
        raise InputError("is not a field of query_coupon_stock", field=sorted(fields)[0])
    return values, xml


class Requests:
    """One shim's request normaliser: arguments in, ``(V2Request, its fields)`` out.

    Thread-safe in the way the facades need: the memo is a dict whose values are never
    mutated, and a lost race only validates twice.
    """

    __slots__ = ("_valid",)

    def __init__(self) -> None:
        # validated arguments -> (request, its fields); shared, never mutated
        self._valid: dict[tuple[Any, ...], tuple[v2.V2Request, dict[str, str]]] = {}

    def normalise(
        self,
        values: dict[str, Any],
        xml: Mapping[str, Any] | None,
        config: ShimConfig,
    ) -> tuple[v2.V2Request, dict[str, str]]:
        """The validated request of one call and its fields.

        Args:
            values: the fields given as arguments (None: not given); may be filled in.
            xml: the ``xml={...}`` dict, or None.
            config: the snapshot in force (a left-out appid is its merchant's; an unknown
                merchant raises).

        Raises:
            InputError: the arguments are invalid (or name an unknown merchant).
        """
        if xml is not None:
            if any(v is not None for v in values.values()):
                raise InputError("pass either xml={...} or the fields, not both", field="xml")
            if not isinstance(xml, Mapping):
                raise InputError("must be a dict of v2 request fields", field="xml")
            values = {k: v for k, v in xml.items() if k not in _IGNORED_PAYLOAD_KEYS}
        mch_id = values.get("mch_id")
        appid = values.get("appid")
        if (appid is None or (isinstance(appid, str) and not appid)) and v2.is_plausible_id(mch_id):
            # left out: the merchant's own (an unknown merchant is named as such, not as a
            # missing appid); a falsy non-string appid is the caller's error, not "left out"
            values["appid"] = config.merchant(mch_id).appid
        return self._validated(values)

    def _validated(self, values: dict[str, Any]) -> tuple[v2.V2Request, dict[str, str]]:
        key = tuple([values.get(name) for name in v2.REQUEST_FIELDS])
        if values.keys() <= _REQUEST_FIELD_SET and all(type(v) is str or v is None for v in key):
            hit = self._valid.get(key)
            if hit is None:
                request = v2.validate_request(values)
                if len(self._valid) >= _MEMO_SIZE:
                    self._valid.clear()
                hit = self._valid[key] = (request, request._asdict())
            return hit
        request = v2.validate_request(values)
        return request, request._asdict()
