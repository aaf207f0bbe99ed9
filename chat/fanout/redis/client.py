"""A redis-py client for the layer's stores (replay log reads, presence, connection
counts): one per event loop, as redis-py's connections belong to their loop."""

import redis.asyncio as aioredis

# A connection that stops answering fails its command after this long; blocking reads
# are not made on these connections (the layer's subscriber has its own).
SOCKET_TIMEOUT_S = 5
CONNECT_TIMEOUT_S = 2
HEALTH_CHECK_INTERVAL_S = 30


def make_client(url: str, *, max_connections: int, pool_wait_s: float) -> aioredis.Redis:
    """A client whose pool waits for a free connection: redis-py's default pool raises
    "Too many connections" past 100 commands in flight, and hundreds of sockets closing
    at once (a proxy restart) would lose their cleanups to it."""
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_wait_s,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
        )
    )
