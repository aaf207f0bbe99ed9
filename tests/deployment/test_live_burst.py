"""Hundreds of sockets joining and leaving at the same moment (a proxy restart, a network
blip): every one is counted in and out, and presence forgets every viewer that left.

redis-py's asyncio pool refuses a command beyond its connection cap instead of waiting,
so a burst of cleanups used to fail half-way and leave stale presence behind.
"""

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from chat.fanout import groups
from tests.live import Deployment, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
]

# Well past redis-py's default cap of 100 connections per pool.
SOCKETS = 240


async def test_a_burst_of_joins_and_leaves_is_counted_and_cleaned_up(redis_postgres: Deployment):
    server = redis_postgres.start_server(WS_MAX_CONNECTIONS_PER_USER=str(SOCKETS + 10))
    alice = await Session(server, "alice").login()
    bob = await Session(server, "bob").login()
    conv = await alice.create_conversation(members={"bob": "member"})
    redis = aioredis.Redis.from_url(redis_postgres.env["REDIS_URL"])
    prefix = redis_postgres.env["CHANNEL_PREFIX"]
    try:
        # All at once: the server holds every handshake in flight together.
        viewers = await asyncio.gather(*(alice.viewer(conv) for _ in range(SOCKETS)))
        assert await alice.metric("livechat_connected_viewers") == SOCKETS
        assert await redis.zcard(f"{prefix}:presence:{{{groups.conversation(conv)}}}") == SOCKETS
        observer = await bob.viewer(conv)

        await asyncio.gather(*(v.ws.close() for v in viewers))
        await asyncio.gather(*(v.close() for v in viewers))

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = await redis.zcard(f"{prefix}:presence:{{{groups.conversation(conv)}}}")
            if left == 1 and await alice.metric("livechat_connected_viewers") == 1:
                break
            await asyncio.sleep(0.2)
        assert await redis.zcard(f"{prefix}:presence:{{{groups.conversation(conv)}}}") == 1
        assert await alice.metric("livechat_connected_viewers") == 1
        # The per-user connection counts hold bob's one socket and nothing of alice's.
        counted = [await redis.zcard(k) async for k in redis.scan_iter(f"{prefix}:conn:*")]
        assert sum(counted) == 1
        final = await observer.wait_for(
            lambda f: f["type"] == "presence" and [v["username"] for v in f["viewers"]] == ["bob"],
            what="presence of bob alone",
        )
        assert final["viewers"] == [{"username": "bob"}]
        await observer.close()
    finally:
        await redis.aclose()
        await alice.close()
        await bob.close()
        server.process.stop()
    log = server.process.log()
    assert "cleanup after disconnect failed" not in log, log[-3000:]
    assert "Too many connections" not in log, log[-3000:]
    assert "Redis is unreachable" not in log, log[-3000:]
