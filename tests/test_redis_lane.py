"""The flush's Redis lane against the real Redis: replies in order, errors raised, and a
connection that failed is never reused (a reply left unread would answer the next flush)."""

import asyncio
import uuid

import pytest
import redis.exceptions

from chat.redis_lane import Lane
from tests import services

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


@pytest.fixture
def lane_key():
    services.require("redis")
    key = f"lane-test:{uuid.uuid4().hex}"
    yield key
    import redis as sync_redis

    sync_redis.Redis.from_url(services.REDIS_BASE_URL).delete(key)


async def test_replies_come_back_in_order_on_one_connection(lane_key):
    lane = Lane(services.REDIS_BASE_URL)
    assert await lane.round_trip(("SET", lane_key, "1"), ("INCR", lane_key)) == [b"OK", 2]
    assert await lane.round_trip(
        ("GET", lane_key),
    ) == [b"2"]
    assert len(lane._idle) == 1  # one connection, reused


async def test_an_error_reply_is_raised_and_its_connection_is_not_reused(lane_key):
    lane = Lane(services.REDIS_BASE_URL)
    await lane.round_trip(("SET", lane_key, "1"))
    with pytest.raises(redis.exceptions.ResponseError):
        # XADD without fields fails, and the GET's reply is still unread on that socket.
        await lane.round_trip(("XADD", lane_key + ":s", "*", "s"), ("GET", lane_key))
    assert lane._idle == []
    assert await lane.round_trip(
        ("INCR", lane_key),
    ) == [2]  # not the GET's b"1"


async def test_overlapping_round_trips_each_get_their_own_replies(lane_key):
    lane = Lane(services.REDIS_BASE_URL)
    replies = await asyncio.gather(
        *(lane.round_trip(("ECHO", f"a{n}"), ("ECHO", f"b{n}")) for n in range(20))
    )
    assert replies == [[f"a{n}".encode(), f"b{n}".encode()] for n in range(20)]


async def test_after_redis_drops_the_lanes_connections_one_round_trip_fails_not_each(lane_key):
    import redis as sync_redis

    lane = Lane(services.REDIS_BASE_URL)
    ids = await asyncio.gather(*(lane.round_trip(("CLIENT", "ID")) for _ in range(3)))
    assert len(lane._idle) == 3
    admin = sync_redis.Redis.from_url(services.REDIS_BASE_URL)
    for (client_id,) in ids:  # what a Redis restart does to every open connection
        admin.execute_command("CLIENT", "KILL", "ID", client_id)
    with pytest.raises((redis.exceptions.ConnectionError, OSError)):
        await lane.round_trip(("INCR", lane_key))
    assert lane._idle == []  # the other two were as stale: dropped, not tried
    assert await lane.round_trip(("INCR", lane_key)) == [1]
