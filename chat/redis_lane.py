"""Connections of their own for the one Redis round trip every flush makes.

A flush appends to the replay log and publishes the delta in one round trip. Through
redis-py's client and pipeline that round trip also paid for a task per send (the
socket timeout is an `asyncio.wait_for` on Python 3.11), a task for the shielded return
of the pooled connection, and the pipeline's bookkeeping: more CPU than the commands
themselves (bench/REPORT.md). Here a flush takes an idle connection of this loop's lane
(or opens one), sends the packed commands and reads the replies under one
`asyncio.timeout`, and puts it back. A connection that failed in any way is closed, so
a half-read reply never reaches the next flush, and one that broke (a restarted Redis)
takes the idle ones with it; the caller decides what a failed flush means (the relay
publishes through the layer and rebuilds the log).
"""

import asyncio
from typing import Any

from django.conf import settings
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from chat.per_loop import PerLoop

# The whole round trip, connecting included: what `socket_timeout` was for the pipeline.
TIMEOUT_S = 5.0
# Connections kept open between flushes; more are opened while more flushes overlap.
IDLE_MAX = 32
# Failures that say the connection, not the command, broke (asyncio.timeout raises the
# builtin TimeoutError; a reset socket an OSError).
BROKEN = (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError)


class Lane:
    def __init__(self, url: str) -> None:
        # The pool only makes connections (URL, TLS, auth); it never lends them.
        self._factory = ConnectionPool.from_url(url, socket_connect_timeout=2)
        self._idle: list[AbstractConnection] = []

    async def round_trip(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` in one write and return their replies, in order; raises the
        first error reply, or the connection's error."""
        conn = self._idle.pop() if self._idle else self._factory.make_connection()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                if not conn.is_connected:
                    await conn.connect()
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies = [await conn.read_response() for _ in commands]
        except BaseException as exc:
            await conn.disconnect(nowait=True)
            if isinstance(exc, BROKEN):
                # Redis restarted or the network broke: the idle connections are as
                # stale as this one, and each would fail a flush of its own.
                idle, self._idle = self._idle, []
                for stale in idle:
                    await stale.disconnect(nowait=True)
            raise
        if len(self._idle) < IDLE_MAX:
            self._idle.append(conn)
        else:
            await conn.disconnect()
        return replies


_lanes: PerLoop[Lane] = PerLoop()


def get_lane() -> Lane:
    """The lane of the running loop (redis-py connections belong to their loop)."""
    return _lanes.get(lambda: Lane(settings.REDIS_URL))
