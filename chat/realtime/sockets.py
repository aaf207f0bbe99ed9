"""This process's open conversation viewers (sockets and event streams).

The consumers register here; the process's background duties (liveness refreshes, the
drain on SIGTERM) and its gauges read from here, so
none of them imports the consumer.
"""

import weakref
from typing import Protocol


class LiveSocket(Protocol):
    async def refresh_liveness(self) -> None: ...

    async def leave_for_restart(self, code: int) -> None: ...


# Weak: a socket that ended without saying so (a crash) is not kept alive by this set.
_open: "weakref.WeakSet[LiveSocket]" = weakref.WeakSet()


def add(socket: LiveSocket) -> None:
    _open.add(socket)


def discard(socket: LiveSocket) -> None:
    _open.discard(socket)


def live() -> list[LiveSocket]:
    """The open, joined sockets of this process."""
    return list(_open)
