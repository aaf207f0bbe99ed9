"""The hub's own pub/sub connection (chat/fanout/redis/subscriber.py) against real Redis
servers: messages in order, unsubscribing, and a connection that is killed, goes silent
or cannot be made."""

import asyncio
import time
import uuid

import pytest
import redis

from chat.fanout.redis import subscriber as redis_subscriber
from chat.fanout.redis.subscriber import Subscriber
from tests import services
from tests.live import free_port, spawn

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


@pytest.fixture
def channel():
    services.require("redis")
    return f"subscriber-test:{uuid.uuid4().hex}"


@pytest.fixture
def publisher():
    return redis.Redis.from_url(services.REDIS_BASE_URL)


async def subscribed(subscriber: Subscriber, channel: str) -> asyncio.Queue:
    """The channel's payloads, on a queue."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    await subscriber.subscribe(channel, queue.put_nowait)
    return queue


async def received(queue: asyncio.Queue, n: int) -> list[bytes]:
    async with asyncio.timeout(5):
        return [await queue.get() for _ in range(n)]


async def until(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_messages_arrive_in_order_until_unsubscribed(channel, publisher):
    subscriber = Subscriber(services.REDIS_BASE_URL)
    queue = await subscribed(subscriber, channel)
    other = await subscribed(subscriber, channel + ":other")
    for n in range(50):
        publisher.publish(channel, f"m{n}")
    publisher.publish(channel + ":other", b"\x00binary\xff")
    assert await received(queue, 50) == [f"m{n}".encode() for n in range(50)]
    assert await received(other, 1) == [b"\x00binary\xff"]

    subscriber.unsubscribe(channel, queue.put_nowait)
    await until(lambda: publisher.publish(channel, "late") == 0, "the unsubscribe")
    publisher.publish(channel + ":other", "still")
    assert await received(other, 1) == [b"still"]
    assert queue.empty()


async def test_a_channel_stays_subscribed_while_another_callback_listens(channel, publisher):
    # A conversation left and joined again at once: the new subscription must survive
    # the old one's unsubscribe.
    subscriber = Subscriber(services.REDIS_BASE_URL)
    old = await subscribed(subscriber, channel)
    new = await subscribed(subscriber, channel)
    publisher.publish(channel, "both")
    assert await received(old, 1) == await received(new, 1) == [b"both"]

    subscriber.unsubscribe(channel, old.put_nowait)
    publisher.publish(channel, "new only")
    assert await received(new, 1) == [b"new only"]
    assert old.empty()
    subscriber.unsubscribe(channel, new.put_nowait)
    await until(lambda: publisher.publish(channel, "late") == 0, "the unsubscribe")


async def test_a_failing_callback_costs_no_other_message(channel, publisher, caplog):
    subscriber = Subscriber(services.REDIS_BASE_URL)

    def broken(payload: bytes) -> None:
        raise ValueError(payload)

    await subscriber.subscribe(channel + ":broken", broken)
    queue = await subscribed(subscriber, channel)
    with publisher.pipeline(transaction=False) as pipe:  # in one read of the connection
        pipe.publish(channel + ":broken", "first")
        pipe.publish(channel, "second")
        pipe.execute()
    assert await received(queue, 1) == [b"second"]
    assert "handling a message" in caplog.text


async def test_a_killed_connection_is_replaced_and_its_channels_subscribed_again(
    channel, publisher
):
    subscriber = Subscriber(services.REDIS_BASE_URL)
    queue = await subscribed(subscriber, channel)
    first = subscriber._link.connection
    names = {c["name"] for c in publisher.client_list(_type="pubsub")}
    assert "livechat-hub" in names
    publisher.execute_command("CLIENT", "KILL", "ID", first.client_id)  # as a restart does

    await until(lambda: publisher.publish(channel, "after") == 1, "the resubscription")
    assert subscriber._link.connection is not first
    assert await received(queue, 1) == [b"after"]


async def test_a_silent_connection_is_dropped_and_replaced(channel, publisher, monkeypatch):
    monkeypatch.setattr(redis_subscriber, "PING_EVERY_S", 0.2)
    monkeypatch.setattr(redis_subscriber, "TIMEOUT_S", 0.5)
    subscriber = Subscriber(services.REDIS_BASE_URL)
    queue = await subscribed(subscriber, channel)
    first = subscriber._link.connection
    first.transport.pause_reading()  # nothing arrives any more: a partition, as seen here

    await until(lambda: subscriber._link.connection not in (None, first), "a new connection")
    await until(lambda: publisher.publish(channel, "again") == 1, "the resubscription")
    assert (await received(queue, 1))[-1] == b"again"


async def test_subscribing_without_a_reachable_redis_raises():
    subscriber = Subscriber(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionRefusedError):
        await subscribed(subscriber, "nowhere")
    assert subscriber.handlers == {}


@pytest.fixture
def redis_with_password(tmp_path):
    port = free_port()
    server = spawn(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--requirepass", "s3cret", "--dir", str(tmp_path)),
        ],
        {"PATH": "/usr/bin:/bin:/usr/sbin:/usr/local/bin"},
        tmp_path / "redis.log",
    )
    client = redis.Redis(port=port, password="s3cret", socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port, client
    server.stop()


async def test_the_password_of_the_url_is_used_and_a_wrong_one_refused(redis_with_password):
    port, client = redis_with_password
    subscriber = Subscriber(f"redis://:s3cret@127.0.0.1:{port}/0")
    queue = await subscribed(subscriber, "guarded")
    client.publish("guarded", "hello")
    assert await received(queue, 1) == [b"hello"]
    with pytest.raises(ConnectionError):
        await subscribed(Subscriber(f"redis://:wrong@127.0.0.1:{port}/0"), "guarded")


async def test_a_ping_after_the_last_channel_is_gone_is_no_error(channel, monkeypatch, caplog):
    # With no channel left Redis leaves subscriber mode and answers PING with +PONG.
    monkeypatch.setattr(redis_subscriber, "PING_EVERY_S", 0.05)
    monkeypatch.setattr(redis_subscriber, "TIMEOUT_S", 0.05)
    subscriber = Subscriber(services.REDIS_BASE_URL)
    queue = await subscribed(subscriber, channel)
    connection = subscriber._link.connection
    subscriber.unsubscribe(channel, queue.put_nowait)
    await asyncio.sleep(0.2)
    unsubscribed_by = connection.data_at
    await until(lambda: connection.data_at > unsubscribed_by, "a PING answered")
    await asyncio.sleep(0.2)  # and more
    assert connection.is_open and subscriber._link.connection is connection
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
