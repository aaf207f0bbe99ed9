"""One asyncio Redis client per event loop (redis-py connections belong to their loop)."""

import redis.asyncio as aioredis
from django.conf import settings

from chat.per_loop import PerLoop

_clients: PerLoop[aioredis.Redis] = PerLoop()


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def get_redis() -> aioredis.Redis:
    """The Redis client of the running loop, created on first use.

    Its pool waits for a free connection: redis-py's default pool raises "Too many
    connections" past 100 commands in flight, and hundreds of sockets closing at once
    (a proxy restart) would lose their cleanups to it."""
    return _clients.get(
        lambda: aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URL,
                max_connections=settings.REDIS_MAX_CONNECTIONS,
                timeout=settings.REDIS_POOL_WAIT_S,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=30,
            )
        )
    )


def key(*parts: str) -> str:
    """A Redis key under this deployment's prefix."""
    return ":".join((settings.CHANNEL_PREFIX, *parts))
