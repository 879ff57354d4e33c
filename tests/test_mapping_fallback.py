"""A v3 answer the mapping cannot use: fallback to legacy when allowed, MappingError otherwise."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shim import MappingError

# private: the mapping's model, loader and converters, tested below the facade
from shim._mapping.load import default_mapping_dir
from shim.sandbox import Emulator
from tests.conftest import MD5_MCH, Twin

REQUIRED_CARD = """
[[fields]]
v2 = "card_id"
v3 = "card_id"
convert = "text"
required = true
"""


@pytest.fixture
def strict_mappings(tmp_path: Path) -> Path:
    """A mapping copy that requires v3 card_id, which stock 1757 does not have."""
    folder = tmp_path / "strict"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "query_coupon_stock.toml"
    text = path.read_text(encoding="utf-8")
    marker = "\n[[fields]]\n"
    head, tail = text.split(marker, 1)
    path.write_text(head + "\n" + REQUIRED_CARD + marker + tail, encoding="utf-8")
    return folder


async def test_mapping_error_falls_back_to_legacy(
    make_shim: Callable[..., Twin], emulator: Emulator, strict_mappings: Path
) -> None:
    """With fallback_to_legacy, an unmappable v3 answer is served by legacy, and said so."""
    twin = make_shim("v3", via="inprocess", mapping={"dir": str(strict_mappings)})
    with capture_logs() as logs:
        answer = await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert answer["result_code"] == "SUCCESS"
    assert emulator.request_counts["v3"] == 1 and emulator.request_counts["v2"] == 1
    event = next(e for e in logs if e["event"] == "coupon_stock.query")
    assert event["route"] == "legacy" and event["fallback"] is True
    assert event["fallback_cause"] == "MappingError"


async def test_mapping_error_without_fallback_is_raised(
    make_shim: Callable[..., Twin], emulator: Emulator, strict_mappings: Path
) -> None:
    """Without fallback, the caller gets a MappingError naming the v2 key; v3 is not retried."""
    twin = make_shim(
        "v3",
        via="inprocess",
        mapping={"dir": str(strict_mappings)},
        routing={"fallback_to_legacy": False},
    )
    with pytest.raises(MappingError) as info:
        await twin.query(coupon_stock_id="1757", mch_id=MD5_MCH)
    assert info.value.v2_key == "card_id"
    assert emulator.request_counts["v3"] == 1 and emulator.request_counts["v2"] == 0
