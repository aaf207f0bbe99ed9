"""The loop-lag measure the flush window stretches by, and the stretch's bounds."""

import asyncio
import time

import pytest

from chat import loop_lag
from chat.streaming import MAX_STRETCH, StreamRequest, StreamRunner

pytestmark = pytest.mark.timeout(30)


async def test_a_blocked_loop_shows_as_lag_and_the_lag_decays_after():
    task = loop_lag.start()
    try:
        await asyncio.sleep(0.1)
        for _ in range(5):
            # The loop is stuck: what a saturated server looks like, on purpose here.
            time.sleep(0.05)  # noqa: ASYNC251
            await asyncio.sleep(0)
        stuck = loop_lag.current()
        assert stuck > 0.01
        await asyncio.sleep(0.5)
        assert loop_lag.current() < stuck / 2
    finally:
        task.cancel()


async def test_a_loop_nothing_measures_has_no_lag():
    assert loop_lag.current() == 0.0


def runner(flush_s: float, lag_s: float) -> StreamRunner:
    request = StreamRequest(model="m", messages=[])
    return StreamRunner(None, request, publish=None, flush_s=flush_s, stretch=lambda: lag_s)


@pytest.mark.parametrize(
    ("flush_s", "lag_s", "window_s"),
    [
        (0.03, 0.0, 0.03),  # an idle loop: the window as configured
        (0.03, 0.01, 0.04),  # a late loop: longer by the lag
        (0.03, 5.0, 0.03 * (1 + MAX_STRETCH)),  # however late: at most four windows
        (0.0, 0.2, 0.0),  # coalescing off stays off
    ],
)
def test_the_window_stretches_by_the_lag_within_bounds(flush_s, lag_s, window_s):
    assert runner(flush_s, lag_s)._window_s() == pytest.approx(window_s)
