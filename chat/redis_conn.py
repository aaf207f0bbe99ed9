"""One asyncio Redis client per event loop (redis-py connections belong to their loop)."""

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def get_redis() -> aioredis.Redis:
    """The Redis client of the running loop, created on first use."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=30,
        )
        _clients[loop] = client
    return client


def key(*parts: str) -> str:
    """A Redis key under this deployment's prefix."""
    return ":".join((settings.CHANNEL_PREFIX, *parts))
