"""An event loop with a clock of its own: `loop.time()` moves only when the loop has
nothing left to run and would wait for its next timer, and then it jumps straight to
that timer. Code that takes its time from the running loop (`loop.time()`,
`asyncio.sleep`, `asyncio.timeout`, `call_later`) runs its delays in order and at once,
and reads exactly when each one was due, however loaded the machine: a test asserts
those times instead of measuring elapsed time.

Only for code that does not wait on I/O of its own: a read from a socket would see the
clock jump to the next timer instead of waiting for the peer.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits for a timer: moves the clock to it instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # asyncio passes the time until its next timer when nothing is ready, and None
        # when no timer is set either: then only I/O or another thread can wake the
        # loop, so that wait is real.
        if timeout is not None and timeout > 0:
            self.now += timeout
            timeout = 0
        return super().select(timeout)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on the clock of `_JumpingSelector`, starting at 0."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        """The loop's clock: where the last jump to a timer left it."""
        return self._jumping.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
