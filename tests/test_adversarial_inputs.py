"""Every bad caller argument is an InputError naming the argument, before any I/O (issue 15
point 12), through both twins, with the loopback emulator counting requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim import CouponStockShim, InputError, ShimConfig
from shim.sandbox import Emulator
from tests.conftest import MD5_MCH, Twin

BAD_CALLS: dict[str, tuple[dict[str, Any], str]] = {
    "huge_int_stock": ({"coupon_stock_id": 10**5000, "mch_id": MD5_MCH}, "coupon_stock_id"),
    "21_digit_int_stock": ({"coupon_stock_id": 10**20, "mch_id": MD5_MCH}, "coupon_stock_id"),
    "negative_int_stock": ({"coupon_stock_id": -1757, "mch_id": MD5_MCH}, "coupon_stock_id"),
    "bool_stock": ({"coupon_stock_id": True, "mch_id": MD5_MCH}, "coupon_stock_id"),
    "float_stock": ({"coupon_stock_id": 1757.0, "mch_id": MD5_MCH}, "coupon_stock_id"),
    "xml_mixed_keys": (
        {"xml": {"coupon_stock_id": "1757", "mch_id": MD5_MCH, 1: "x"}},
        "xml",
    ),
    "xml_only_int_keys": ({"xml": {1: "1757", 2: MD5_MCH}}, "xml"),
    "xml_unknown_field": (
        {"xml": {"coupon_stock_id": "1757", "mch_id": MD5_MCH, "zz": "1"}},
        "zz",
    ),
    "xml_not_a_mapping": ({"xml": [("coupon_stock_id", "1757")]}, "xml"),
    "xml_and_fields": ({"xml": {"mch_id": MD5_MCH}, "coupon_stock_id": "1757"}, "xml"),
    "falsy_int_appid": ({"coupon_stock_id": "1757", "mch_id": MD5_MCH, "appid": 0}, "appid"),
    "false_appid": ({"coupon_stock_id": "1757", "mch_id": MD5_MCH, "appid": False}, "appid"),
    "empty_list_appid": ({"coupon_stock_id": "1757", "mch_id": MD5_MCH, "appid": []}, "appid"),
    "bytes_appid": ({"coupon_stock_id": "1757", "mch_id": MD5_MCH, "appid": b""}, "appid"),
    "unknown_mch_no_appid": ({"coupon_stock_id": "1757", "mch_id": "10000777"}, "mch_id"),
    "bad_mch_no_appid": ({"coupon_stock_id": "1757", "mch_id": "a b"}, "mch_id"),
    "int_mch": ({"coupon_stock_id": "1757", "mch_id": 10000098}, "mch_id"),
    "no_mch": ({"coupon_stock_id": "1757"}, "mch_id"),
    "non_ascii_stock": ({"coupon_stock_id": "١٧٥٧", "mch_id": MD5_MCH}, "coupon_stock_id"),
    "long_device": (
        {"coupon_stock_id": "1757", "mch_id": MD5_MCH, "device_info": "x" * 33},
        "device_info",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
async def test_bad_argument_is_an_input_error_before_io(
    name: str, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Each bad argument: InputError whose field names it; the emulator saw no request."""
    kwargs, field = BAD_CALLS[name]
    twin = make_shim("shadow")
    with pytest.raises(InputError) as info:
        await twin.query(**kwargs)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    assert len(str(info.value)) < 300
    assert emulator.request_counts == {}


async def test_unknown_merchant_without_appid_says_no_merchant_entry(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """An unknown mch_id without appid says "no merchant entry", not "appid is required"."""
    twin = make_shim("legacy")
    with pytest.raises(InputError, match="no merchant entry for '10000777'"):
        await twin.query("1757", mch_id="10000777")
    assert emulator.request_counts == {}


@pytest.mark.parametrize("route", ["v4", "V3", "", None, 3, "legacy "])
async def test_query_via_refuses_unknown_routes(
    route: Any, make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """query_via with anything but "legacy" or "v3" is an InputError naming route, no I/O."""
    twin = make_shim("legacy")
    with pytest.raises(InputError) as info:
        await twin.query_via(route, coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.field == "route"
    assert emulator.request_counts == {}


class _LooksLikeAStock:
    """Hashes and compares like the string "1757", but is no string."""

    def __hash__(self) -> int:
        return hash("1757")

    def __eq__(self, other: object) -> bool:
        return other == "1757"


async def test_an_object_equal_to_a_served_argument_is_still_validated(
    make_shim: Callable[..., Twin], emulator: Emulator
) -> None:
    """Repeated arguments skip validation only when they are plain strings: an object that
    compares equal to a stock id just served is still refused, before any I/O."""
    twin = make_shim("legacy")
    await twin.query("1757", mch_id=MD5_MCH)
    with pytest.raises(InputError) as info:
        await twin.query(_LooksLikeAStock(), mch_id=MD5_MCH)
    assert info.value.field == "coupon_stock_id"
    assert emulator.request_counts == {"v2": 1}


async def test_good_int_stock_and_left_out_appid_still_work(
    make_shim: Callable[..., Twin],
) -> None:
    """The lenient forms stay: an int stock id in range, appid left out (None or "")."""
    twin = make_shim("legacy")
    for appid in (None, ""):
        answer = await twin.query(1757, mch_id=MD5_MCH, appid=appid)
        assert answer["coupon_stock_id"] == "1757"


_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=2),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stock=_ANY,
    appid=_ANY,
    mch_id=_ANY,
    op_user_id=_ANY,
    xml=st.one_of(
        st.none(),
        st.dictionaries(st.one_of(st.text(max_size=16), st.integers()), _ANY, max_size=4),
    ),
)
def test_any_argument_gives_an_answer_or_an_input_error(
    stock: Any,
    appid: Any,
    mch_id: Any,
    op_user_id: Any,
    xml: Any,
    make_config: Callable[..., ShimConfig],
    emulator: Emulator,
) -> None:
    """Property (sync twin, in-process): any argument values give an answer or an InputError
    that names one of the arguments; no other exception escapes."""
    shim = _property_shim(make_config, emulator)
    try:
        if xml is not None:
            shim.query_coupon_stock(xml=xml)
        else:
            shim.query_coupon_stock(stock, appid, mch_id, op_user_id)
    except InputError as err:
        assert err.field is not None
    except Exception as err:  # the property: nothing else
        pytest.fail(f"{type(err).__name__}: {err}")


_SHIMS: dict[int, CouponStockShim] = {}


def _property_shim(make_config: Callable[..., ShimConfig], emulator: Emulator) -> CouponStockShim:
    key = id(emulator)
    if key not in _SHIMS:
        _SHIMS[key] = CouponStockShim(
            make_config("legacy"), env={}, transport=emulator.mock_transport()
        )
    return _SHIMS[key]


@pytest.fixture(autouse=True, scope="module")
def _close_property_shims() -> Any:
    yield
    for shim in _SHIMS.values():
        shim.close()
    _SHIMS.clear()
