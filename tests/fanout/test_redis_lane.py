"""The flush's Redis lane against the real Redis: replies in order however many round
trips are in flight on its one connection, errors raised without disturbing the replies
after them, and a connection that broke or timed out replaced."""

import asyncio
import uuid

import pytest
import redis.exceptions

from chat.fanout.redis.lane import Lane
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
    first = lane._link.connection
    assert await lane.round_trip(
        ("GET", lane_key),
    ) == [b"2"]
    assert lane._link.connection is first  # one connection, reused


async def test_an_error_reply_is_raised_and_the_replies_after_it_stay_matched(lane_key):
    lane = Lane(services.REDIS_BASE_URL)
    await lane.round_trip(("SET", lane_key, "1"))
    with pytest.raises(redis.exceptions.ResponseError):
        # XADD without fields fails; the GET's reply is still read as this call's.
        await lane.round_trip(("XADD", lane_key + ":s", "*", "s"), ("GET", lane_key))
    assert await lane.round_trip(
        ("INCR", lane_key),
    ) == [2]  # not the GET's b"1"


async def test_send_now_writes_before_anything_is_awaited_and_confirm_reads_the_replies(
    lane_key, monkeypatch
):
    from chat.fanout.redis import lane as redis_lane

    lane = Lane(services.REDIS_BASE_URL)
    assert lane.send_now(("SET", lane_key, "1")) is None  # no connection yet: round_trip
    await lane.round_trip(("SET", lane_key, "1"))
    sent = lane.send_now(("INCR", lane_key), ("GET", lane_key))
    assert sent is not None and sent[0] is lane._link.connection
    assert len(sent[0].calls) == 1  # written, its replies awaited by nobody yet
    assert await lane.confirm(sent) == [2, b"2"]

    with pytest.raises(redis.exceptions.ResponseError):
        await lane.confirm(lane.send_now(("XADD", lane_key + ":s", "*", "s")))
    monkeypatch.setattr(redis_lane, "TIMEOUT_S", 0.2)
    first = lane._link.connection
    with pytest.raises(TimeoutError):
        await lane.confirm(lane.send_now(("BLPOP", lane_key + ":empty", "1")))
    assert not first.is_open  # as after a round trip that timed out
    assert lane.send_now(("GET", lane_key)) is None


async def test_a_round_trip_that_times_out_closes_the_connection(lane_key, monkeypatch):
    from chat.fanout.redis import lane as redis_lane

    lane = Lane(services.REDIS_BASE_URL)
    await lane.round_trip(("SET", lane_key, "1"))
    first = lane._link.connection
    monkeypatch.setattr(redis_lane, "TIMEOUT_S", 0.2)
    with pytest.raises(TimeoutError):
        await lane.round_trip(("BLPOP", lane_key + ":empty", "1"))  # answers after 1 s
    monkeypatch.setattr(redis_lane, "TIMEOUT_S", 5.0)
    # The late answer can never be taken for the next round trip's.
    assert await lane.round_trip(("INCR", lane_key)) == [2]
    assert lane._link.connection is not first


async def test_overlapping_round_trips_each_get_their_own_replies(lane_key):
    lane = Lane(services.REDIS_BASE_URL)
    replies = await asyncio.gather(
        *(lane.round_trip(("ECHO", f"a{n}"), ("ECHO", f"b{n}")) for n in range(20))
    )
    assert replies == [[f"a{n}".encode(), f"b{n}".encode()] for n in range(20)]


async def test_after_redis_drops_the_connection_the_round_trips_in_flight_fail_then_it_heals(
    lane_key,
):
    import redis as sync_redis

    lane = Lane(services.REDIS_BASE_URL)
    [client_id] = await lane.round_trip(("CLIENT", "ID"))
    admin = sync_redis.Redis.from_url(services.REDIS_BASE_URL)
    admin.execute_command("CLIENT", "KILL", "ID", client_id)  # what a Redis restart does
    results = await asyncio.gather(
        *(lane.round_trip(("INCR", lane_key)) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await lane.round_trip(("INCR", lane_key)) == [1]
    assert await lane.round_trip(("CLIENT", "ID")) != [client_id]
