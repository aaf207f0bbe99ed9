"""How late this process's event loop runs what is due, smoothed over about 100 ms.

The stream runners stretch their flush window by it (chat/streaming.py). A loop that
runs late has more to do than it can: more frames to send than it sends. There, fewer
and larger frames carry the same text and the lag falls again, where a fixed window
kept every stream flushing as often and every frame queued behind the others.
"""

import asyncio
import weakref

INTERVAL_S = 0.02
SMOOTHING = 0.2  # the weight of each new sample


class LoopLag:
    def __init__(self) -> None:
        self.seconds = 0.0

    async def measure_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            late = max(0.0, loop.time() - due)
            self.seconds += SMOOTHING * (late - self.seconds)


_lags: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag]" = weakref.WeakKeyDictionary()


def start() -> "asyncio.Task[None]":
    """Measure the running loop from now on (once per loop: chat.lifecycle)."""
    loop = asyncio.get_running_loop()
    lag = _lags[loop] = LoopLag()
    return loop.create_task(lag.measure_forever(), name="loop-lag")


def current() -> float:
    """The running loop's smoothed lag in seconds; 0 where nothing measures it."""
    lag = _lags.get(asyncio.get_running_loop())
    return 0.0 if lag is None else lag.seconds
