"""The layer's command connection of one process and loop: every publish, and the one
round trip every flush makes (its replay-log append and its PUBLISH).

All of them share one pipelined connection (`resp.py`): each round trip is one write,
its replies are matched in order however many are in flight, and the whole round trip
runs under one `asyncio.timeout`. A connection that broke or timed out is closed, failing
the round trips in flight; the next one opens a new connection. The caller decides what
a failure means (the relay publishes again and rebuilds the log). Why not redis-py here:
docs/decisions.md, "The hub's subscription and the flush's round trip bypass redis-py".
"""

import asyncio

import hiredis
from redis import exceptions as redis_errors

from chat.fanout.redis import resp

# The whole round trip, connecting included.
TIMEOUT_S = 5.0

# A write in flight: its connection and the future of its replies.
Sent = tuple[resp.RespConnection, asyncio.Future[list[object]]]


class Lane:
    def __init__(self, url: str) -> None:
        self._link = resp.OnDemand(lambda: resp.connect(url, name="livechat-lane"))

    async def round_trip(self, *commands: resp.Command) -> list[object]:
        """Send `commands` in one write and return their replies, in order; raises the
        first error reply (redis-py's ResponseError), or the connection's error."""
        async with asyncio.timeout(TIMEOUT_S):
            connection = await self._link.get()
            return await _replies(connection, connection.call(*commands))

    def send_now(self, *commands: resp.Command) -> Sent | None:
        """Write `commands` at once when the connection is open (None when it is not:
        use `round_trip`, which connects); `confirm` then waits for their replies. For
        a caller that must not wait a turn of the event loop to start a round trip."""
        connection = self._link.connection
        if connection is None or not connection.is_open:
            return None
        return connection, connection.call(*commands)

    def close(self) -> None:
        """Close the connection; the next round trip opens a new one."""
        if self._link.connection is not None:
            self._link.connection.close()

    async def confirm(self, sent: Sent) -> list[object]:
        """The replies of what `send_now` wrote, as `round_trip` returns them."""
        async with asyncio.timeout(TIMEOUT_S):
            return await _replies(*sent)


async def _replies(
    connection: resp.RespConnection, replies: asyncio.Future[list[object]]
) -> list[object]:
    try:
        result = await replies
    except BaseException:
        # Broken, timed out or cancelled: a late reply must not stay pending on a
        # connection that later round trips would wait behind.
        connection.close()
        raise
    for reply in result:
        if isinstance(reply, hiredis.ReplyError):
            raise redis_errors.ResponseError(str(reply))
    return result
