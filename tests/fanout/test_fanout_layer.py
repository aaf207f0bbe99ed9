"""The project's channel layer (chat/fanout/layer.py) on both backends: the cases of
channels_redis's own layer test suite that apply to it (tests/test_pubsub.py and
tests/test_core.py there: send and receive, groups, capacity, names, serialization,
reconnection), then what it adds: listeners, logged publishing, the stores."""

import asyncio
import inspect
import random
import uuid
from collections.abc import AsyncIterator

import pytest
import redis as sync_redis
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

from chat.fanout import events
from chat.fanout.layer import LogEntry
from chat.fanout.memory import InProcessLayer
from chat.fanout.redis.layer import RedisLayer
from tests import services
from tests.live import OwnRedis

pytestmark = pytest.mark.timeout(30)

BACKENDS = ["in-process", pytest.param("redis", marks=pytest.mark.redis)]


def make_layer(backend: str, prefix: str, **config) -> InProcessLayer | RedisLayer:
    if backend == "in-process":
        return InProcessLayer(prefix=prefix, **config)
    services.require("redis")
    return RedisLayer(url=f"{services.REDIS_BASE_URL}/0", prefix=prefix, **config)


@pytest.fixture(params=BACKENDS)
async def channel_layer(request) -> AsyncIterator[InProcessLayer | RedisLayer]:
    layer = make_layer(request.param, f"t{uuid.uuid4().hex[:8]}")
    layer.backend = request.param
    yield layer
    await asyncio.wait_for(layer.flush(), 1)


@pytest.fixture
async def redis_layer() -> AsyncIterator[RedisLayer]:
    """For what only Redis has: other processes (here, other layer instances or loops)."""
    layer = make_layer("redis", f"t{uuid.uuid4().hex[:8]}")
    yield layer
    await asyncio.wait_for(layer.flush(), 1)


# ---- channels_redis's cases -----------------------------------------------------------


async def test_send_receive(channel_layer):
    channel = await channel_layer.new_channel()
    await channel_layer.send(channel, {"type": "test.message", "text": "Ahoy-hoy!"})
    message = await channel_layer.receive(channel)
    assert message == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_multi_send_receive(channel_layer):
    channel = await channel_layer.new_channel()
    for n in (1, 2, 3):
        await channel_layer.send(channel, {"type": f"message.{n}"})
    for n in (1, 2, 3):
        assert (await channel_layer.receive(channel))["type"] == f"message.{n}"


async def test_groups_basic(channel_layer):
    names = [await channel_layer.new_channel(prefix=f"test-gr-chan-{n}") for n in (1, 2, 3)]
    for name in names:
        await channel_layer.group_add("test-group", name)
    await channel_layer.group_discard("test-group", names[1])
    await channel_layer.group_send("test-group", {"type": "message.1"})
    async with asyncio.timeout(1):
        assert (await channel_layer.receive(names[0]))["type"] == "message.1"
        assert (await channel_layer.receive(names[2]))["type"] == "message.1"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await channel_layer.receive(names[1])


async def test_groups_same_prefix(channel_layer):
    names = [await channel_layer.new_channel(prefix="test-gr-chan") for _ in range(3)]
    for name in names:
        await channel_layer.group_add("test-group", name)
    await channel_layer.group_send("test-group", {"type": "message.1"})
    async with asyncio.timeout(1):
        for name in names:
            assert (await channel_layer.receive(name))["type"] == "message.1"


@pytest.mark.redis
async def test_receive_on_a_channel_another_layer_instance_owns(redis_layer):
    channel_layer = redis_layer
    other = make_layer("redis", channel_layer.prefix)
    receiving = asyncio.create_task(other.receive("test-channel"))
    await asyncio.sleep(0.1)  # its receive subscribes first
    await channel_layer.send("test-channel", {"type": "message.1"})
    try:
        async with asyncio.timeout(1):
            assert (await receiving) == {"type": "message.1"}
    finally:
        receiving.cancel()
        await other.flush()


@pytest.mark.redis
def test_send_receive_from_another_event_loop():
    channel_layer = make_layer("redis", f"t{uuid.uuid4().hex[:8]}")
    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(channel_layer.new_channel())
    async_to_sync(channel_layer.send, force_new_loop=True)(channel, {"type": "test.message"})
    assert loop.run_until_complete(channel_layer.receive(channel)) == {"type": "test.message"}
    loop.run_until_complete(channel_layer.flush())
    loop.close()


async def test_seeding_random_does_not_repeat_channel_names(channel_layer):
    random.seed(1)
    first = await channel_layer.new_channel()
    random.seed(1)
    assert await channel_layer.new_channel() != first


def test_the_wire_form_is_msgpack():
    message = {"a": True, "b": None, "c": {"d": []}}
    serialized = events.serialize(message)
    assert serialized == b"\x83\xa1a\xc3\xa1b\xc0\xa1c\x81\xa1d\x90"
    assert events.deserialize(serialized) == message


def test_the_api_methods_are_coroutine_functions(channel_layer):
    for name in ("send", "receive", "new_channel", "group_add", "group_discard", "group_send"):
        assert inspect.iscoroutinefunction(getattr(channel_layer, name)), name


async def test_a_receive_with_nothing_to_receive_waits(channel_layer):
    channel = await channel_layer.new_channel(prefix="test-channel")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel_layer.receive(channel), timeout=0.5)


@pytest.mark.redis
async def test_groups_come_back_after_redis_drops_the_connections(tmp_path):
    own = OwnRedis(tmp_path)  # a fault test: never the shared Redis
    own.start()
    channel_layer = RedisLayer(url=own.url, prefix="t")
    try:
        names = [await channel_layer.new_channel(prefix=f"test-gr-chan-{n}") for n in (1, 2, 3)]
        await channel_layer.group_add("test-group", names[0])
        await channel_layer.group_add("test-group", names[1])
        admin = sync_redis.Redis.from_url(own.url)
        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # as a Redis restart does
        await channel_layer.group_add("test-group", names[2])
        await channel_layer.group_discard("test-group", names[1])
        await asyncio.sleep(1)  # the subscriber reconnects and subscribes everything again
        await channel_layer.group_send("test-group", {"type": "message.1"})
        async with asyncio.timeout(5):
            assert (await channel_layer.receive(names[0]))["type"] == "message.1"
            assert (await channel_layer.receive(names[2]))["type"] == "message.1"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await channel_layer.receive(names[1])
    finally:
        await channel_layer.flush()
        own.process.stop()


@pytest.mark.redis
async def test_listeners_are_told_to_resync_once_their_subscriptions_are_back(tmp_path):
    own = OwnRedis(tmp_path)  # a fault test: never the shared Redis
    own.start()
    channel_layer = RedisLayer(url=own.url, prefix="t")
    publisher = sync_redis.Redis.from_url(own.url)
    heard: asyncio.Queue[dict] = asyncio.Queue()
    after = {"type": "chat.frame", "text": "after"}

    def listener(event: dict) -> None:
        heard.put_nowait(event)
        if event["type"] == "chat.resync":
            # Told only once the subscription is live again: what is published from
            # here on arrives.
            publisher.publish(channel_layer.group_channel("conv.r"), events.serialize(after))

    try:
        await channel_layer.listen("conv.r", listener)
        await channel_layer.group_send("conv.r", {"type": "chat.frame", "text": "before"})
        async with asyncio.timeout(5):
            assert (await heard.get())["text"] == "before"
        # Only the pub/sub connection is lost: Redis itself answers all along.
        publisher.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        async with asyncio.timeout(10):
            assert await heard.get() == {"type": "chat.resync"}
            assert await heard.get() == after
        assert heard.empty()
    finally:
        publisher.close()
        await channel_layer.flush()
        own.process.stop()


async def test_discard_before_add(channel_layer):
    channel = await channel_layer.new_channel(prefix="test-channel")
    await channel_layer.group_discard("test-group", channel)


async def test_a_full_channel_refuses_a_send_and_drops_group_messages(channel_layer):
    small = make_layer(channel_layer.backend, channel_layer.prefix, capacity=3)
    channel = await small.new_channel()
    for n in range(3):
        await small.send(channel, {"type": f"m.{n}"})
    with pytest.raises(ChannelFull):
        await small.send(channel, {"type": "one too many"})
    await small.group_add("test-group", channel)
    await small.group_send("test-group", {"type": "dropped"})  # never raises
    received = [(await small.receive(channel))["type"] for _ in range(3)]
    assert received == ["m.0", "m.1", "m.2"]
    await small.flush()


async def test_flush_forgets_the_loops_channels_and_groups(channel_layer):
    channel = await channel_layer.new_channel()
    await channel_layer.group_add("test-group", channel)
    await channel_layer.flush()
    assert not channel_layer.wants("test-group")


# ---- listeners, logged publishing, stores -------------------------------------------------


async def test_a_listener_gets_each_event_once_in_order_beside_the_groups_channels(
    channel_layer,
):
    heard: list[dict] = []
    await channel_layer.listen("conv.a", heard.append)
    channel = await channel_layer.new_channel()
    await channel_layer.group_add("conv.a", channel)
    for n in range(5):
        await channel_layer.group_send("conv.a", {"type": "chat.frame", "n": n})
    async with asyncio.timeout(2):
        assert [(await channel_layer.receive(channel))["n"] for _ in range(5)] == list(range(5))
    assert [e["n"] for e in heard] == list(range(5))
    channel_layer.unlisten("conv.a", heard.append)
    await channel_layer.group_discard("conv.a", channel)
    assert not channel_layer.wants("conv.a")


async def test_a_failing_listener_costs_the_others_nothing(channel_layer):
    heard: list[dict] = []

    def broken(event: dict) -> None:
        raise RuntimeError("a bug")

    await channel_layer.listen("conv.b", broken)
    await channel_layer.listen("conv.b", heard.append)
    await channel_layer.group_send("conv.b", {"type": "x"})
    for _ in range(100):
        if heard:
            break
        await asyncio.sleep(0.01)
    assert heard == [{"type": "x"}]


async def test_a_logged_delta_is_in_the_log_before_anyone_sees_it(channel_layer):
    conversation, message = str(uuid.uuid4()), str(uuid.uuid4())
    seen_logs: list = []

    def on_event(event: dict) -> None:
        # A listener that reads the log as the delta arrives would see it there: the
        # append went first. (Recorded here; read below, where awaiting is allowed.)
        seen_logs.append(event["seq"])

    group = f"conv.{uuid.UUID(conversation).hex}"
    await channel_layer.listen(group, on_event)
    for seq, text in enumerate(["Hel", "lo"], start=1):
        entry = LogEntry(conversation, message, seq, text)
        await channel_layer.publish_logged(group, events.delta(message, seq, text), entry)
    for _ in range(100):
        if len(seen_logs) == 2:
            break
        await asyncio.sleep(0.01)
    assert seen_logs == [1, 2]
    assert await channel_layer.replay.read(conversation, message) == ("Hello", 2)
    assert await channel_layer.replay.entries(conversation, message, 1) == [(2, "lo")]
    await channel_layer.replay.rewrite(LogEntry(conversation, message, 3, "!"), ["Hi", " ", "!"])
    assert await channel_layer.replay.read(conversation, message) == ("Hi !", 3)
    await channel_layer.replay.finish(conversation, message)
    assert await channel_layer.replay.read(conversation, message) == ("Hi !", 3)  # for a while


async def test_presence_and_connection_counts(channel_layer):
    conversation = str(uuid.uuid4())
    await channel_layer.presence.join(conversation, "a!1", "alice")
    await channel_layer.presence.join(conversation, "a!2", "alice")
    await channel_layer.presence.join(conversation, "b!1", "bob")
    await channel_layer.presence.leave(conversation, "a!1", "alice")
    assert await channel_layer.presence.usernames(conversation) == {"alice", "bob"}
    await channel_layer.presence.leave(conversation, "a!2", "alice")
    assert await channel_layer.presence.usernames(conversation) == {"bob"}

    user = random.randrange(10**9)
    assert [await channel_layer.connections.open(user, f"s!{n}") for n in range(3)] == [1, 2, 3]
    await channel_layer.connections.close(user, "s!1")
    assert await channel_layer.connections.count(user) == 2
