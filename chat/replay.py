"""The replay log of a streaming message: every published delta, in `seq` order.

A viewer that joins mid-stream subscribes to the group first and then reads this log to
build its snapshot, so it misses nothing and drops the live deltas it already has. With
Redis the log is a Redis Stream per message (shared by every process, and it outlives
the runner, so a sweeper can recover the exact text of a runner that died); without
Redis an in-process dict stands in behind the same functions.
"""

import asyncio
from dataclasses import dataclass

from chat.redis_conn import get_redis, key, redis_enabled

# How long a log outlives its stream: late `sync`s still find it, then Redis frees it.
FINISHED_TTL_S = 120
# A log whose runner vanished without finishing is freed after this long.
RUNNING_TTL_S = 6 * 3600


@dataclass(frozen=True)
class LogState:
    """The text of deltas 1..seq joined."""

    text: str
    seq: int


_memory_logs: dict[str, list[str]] = {}


def _stream_key(message_id: str) -> str:
    return key("log", message_id)


async def append(message_id: str, seq: int, text: str) -> None:
    """Record delta `seq` (the caller publishes deltas in order, one at a time)."""
    if not redis_enabled():
        _memory_logs.setdefault(message_id, []).append(text)
        return
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(_stream_key(message_id), {"s": seq, "t": text})
    pipe.expire(_stream_key(message_id), RUNNING_TTL_S)
    await pipe.execute()


async def read(message_id: str) -> LogState | None:
    """The whole log, or None when there is none (never streamed, or expired)."""
    if not redis_enabled():
        parts = _memory_logs.get(message_id)
        return None if parts is None else LogState("".join(parts), len(parts))
    entries = await get_redis().xrange(_stream_key(message_id))
    if not entries:
        return None
    texts = [fields[b"t"].decode() for _, fields in entries]
    return LogState("".join(texts), int(entries[-1][1][b"s"]))


async def finish(message_id: str) -> None:
    """The message is stored: keep the log briefly for stragglers, then drop it."""
    if not redis_enabled():
        loop = asyncio.get_running_loop()
        loop.call_later(FINISHED_TTL_S, _memory_logs.pop, message_id, None)
        return
    await get_redis().expire(_stream_key(message_id), FINISHED_TTL_S)
