"""Per-socket frame rate and per-user connection count.

The frame bucket is pure and per socket. Connections are counted across processes in a
Redis sorted set per user (score: last refresh), so a process that died without saying
goodbye stops counting once its entries go stale; without Redis, a dict stands in.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field

from chat.fanout.redis_client import get_redis, key, redis_enabled

# Entries not refreshed for this long belong to a dead process.
CONNECTION_STALE_S = 180.0
CONNECTION_REFRESH_S = 60.0


@dataclass
class TokenBucket:
    """`rate` frames a second on average, bursts up to `burst`."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    last: float = field(default=0.0)

    def allow(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


_memory: dict[int, dict[str, float]] = defaultdict(dict)


def _key(user_id: int) -> str:
    return key("conn", str(user_id))


async def connection_open(user_id: int, channel_name: str) -> int:
    """Count this socket in; returns the user's live sockets, this one included."""
    now = time.time()
    if not redis_enabled():
        _memory[user_id][channel_name] = now
        return len(_memory[user_id])
    pipe = get_redis().pipeline(transaction=False)
    pipe.zremrangebyscore(_key(user_id), "-inf", now - CONNECTION_STALE_S)
    pipe.zadd(_key(user_id), {channel_name: now})
    pipe.expire(_key(user_id), int(CONNECTION_STALE_S) * 2)
    pipe.zcard(_key(user_id))
    return int((await pipe.execute())[-1])


async def connection_count(user_id: int) -> int:
    """The user's live sockets and event streams, across processes."""
    if not redis_enabled():
        return len(_memory.get(user_id, ()))
    return int(await get_redis().zcount(_key(user_id), time.time() - CONNECTION_STALE_S, "+inf"))


async def connection_refresh(user_id: int, channel_name: str) -> None:
    """Mark a socket alive (called periodically for every open socket)."""
    if redis_enabled():
        pipe = get_redis().pipeline(transaction=False)
        pipe.zadd(_key(user_id), {channel_name: time.time()})
        pipe.expire(_key(user_id), int(CONNECTION_STALE_S) * 2)
        await pipe.execute()


async def connection_close(user_id: int, channel_name: str) -> None:
    if not redis_enabled():
        _memory[user_id].pop(channel_name, None)
        if not _memory[user_id]:
            del _memory[user_id]
        return
    await get_redis().zrem(_key(user_id), channel_name)
