"""The suite's wall-clock items stay few: the core is tested with a fake clock instead.

``tests/conftest.py`` marks every item whose code measures elapsed time or waits on a real
delay ``wallclock`` (found by ``tests/wallclock.py``); these tests keep that count under the
limit and check that the finder sees what it should. In a partial run they check the items
collected (a subset can only have fewer).
"""

from __future__ import annotations

import pytest

from tests.wallclock import CLOCK_USE, LIMIT, marked


def test_fewer_wallclock_items_than_the_limit(request: pytest.FixtureRequest) -> None:
    """At most LIMIT collected items assert on elapsed time or wait on real delays."""
    items = request.session.items
    clocked = sorted(item.nodeid for item in items if marked(item))
    assert len(clocked) <= LIMIT, (
        f"{len(clocked)} wall-clock test items (limit {LIMIT}): drive the decision through "
        "the clockless contract suite (tests/test_flow_contract.py) or fold real-socket "
        "variants into one concurrent item. Items:\n" + "\n".join(clocked)
    )


@pytest.mark.parametrize(
    "code",
    [
        "started = time.monotonic()",
        "t0 = perf_counter()",
        "assert elapsed < BUDGET",
        "time.sleep(0.2)",
        "await asyncio.sleep(DRIP)",
    ],
)
def test_the_finder_sees_clock_use(code: str) -> None:
    assert CLOCK_USE.search(code), code


@pytest.mark.parametrize(
    "code",
    [
        "await asyncio.sleep(0)",
        "timestamp = int(time.time())",
        "Sleep(0.5)",
        "fake.advance(1)",
        "deadline=time.monotonic() + 5.0",
    ],
)
def test_the_finder_leaves_clockless_code_alone(code: str) -> None:
    assert not CLOCK_USE.search(code), code
