"""One object per running event loop, made on first use.

Redis clients, HTTP clients, the hub and the presence announcer hold connections and
tasks that belong to the loop they were made on; a server has one loop, tests start
many. Weak keys: a closed loop's objects go with it, and a new loop that reuses its id
gets new ones.
"""

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, make: Callable[[], T]) -> T:
        """The running loop's object, made by `make` if it has none yet."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None:
            found = self._by_loop[loop] = make()
        return found

    def pop(self) -> T | None:
        """Forget the running loop's object (to close it) and return it, if any."""
        return self._by_loop.pop(asyncio.get_running_loop(), None)
