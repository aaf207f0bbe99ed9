"""Redis stopped mid-stream and started again, with a Redis server of the test's own:
the message is still stored whole, viewers on both processes recover their view by
snapshot, and new prompts work without restarting anything."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import live_redis_postgres
from tests.live import Deployment, OwnRedis, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(150),
]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.process.stop()


@pytest.fixture
def fault_deployment(own_redis: OwnRedis, tmp_path: Path) -> Iterator[Deployment]:
    yield from live_redis_postgres(tmp_path / "deployment", redis_url=own_redis.url)


async def test_redis_restart_mid_stream_loses_nothing(fault_deployment, own_redis):
    first, second = fault_deployment.start_server(), fault_deployment.start_server()
    alice = await Session(first, "alice").login()
    bob = await Session(second, "bob").login()
    conv = await alice.create_conversation(members={"bob": "member"})
    asker = await alice.viewer(conv, heal=True)
    remote = await bob.viewer(conv, heal=True)

    _, placeholder = await asker.prompt("Count to 1200 [[sim chunk_ms=4]]")
    await remote.wait_for(lambda f: f["type"] == "delta" and f["seq"] >= 10, what="deltas")
    own_redis.kill()
    await asyncio.sleep(2)
    own_redis.start()

    shown = [await v.final_text(placeholder["id"], timeout=60) for v in (asker, remote)]
    stored = {m["id"]: m for m in await alice.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "complete"
    assert stored["content"] == count_to(1200)
    assert shown == [stored["content"], stored["content"]]
    assert asker.breaches == [] and remote.breaches == []

    # No restart needed: the next prompt streams to both processes' viewers.
    _, again = await remote.prompt("Count to 30")
    for viewer in (asker, remote):
        assert await viewer.final_text(again["id"]) == count_to(30)
    for viewer in (asker, remote):
        await viewer.close()
    await alice.close()
    await bob.close()
    for server in (first, second):
        server.process.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A Redis that keeps its data across a kill, as a production one with persistence."""
    server = OwnRedis(tmp_path / "persistent", persist=True)
    server.tmp.mkdir()
    server.start()
    yield server
    if server.process is not None:
        server.process.stop()


async def test_a_viewer_who_left_while_redis_restarted_leaves_presence(persistent_redis, tmp_path):
    for deployment in live_redis_postgres(tmp_path / "deployment", redis_url=persistent_redis.url):
        server = deployment.start_server()
        alice = await Session(server, "alice").login()
        bob = await Session(server, "bob").login()
        conv = await alice.create_conversation(members={"bob": "member"})
        watcher = await alice.viewer(conv)
        leaving = await bob.viewer(conv)

        def shown(names):
            return lambda f: (
                f["type"] == "presence" and [v["username"] for v in f["viewers"]] == names
            )

        await watcher.wait_for(shown(["alice", "bob"]), what="both present")
        persistent_redis.kill()
        await leaving.close()  # its removal from presence fails: Redis is away
        await asyncio.sleep(1)
        persistent_redis.start()  # with the data, bob's entry included
        start = len(watcher.frames)
        await watcher.wait_for(shown(["alice"]), what="bob gone", start=start, timeout=60)
        await watcher.close()
        await alice.close()
        await bob.close()
        server.process.stop()


async def test_idle_sockets_stay_open_and_counted_once(tmp_path):
    for deployment in live_redis_postgres(tmp_path / "idle"):
        server = deployment.start_server()
        alice = await Session(server, "alice").login()
        conv = await alice.create_conversation()
        tabs = [await alice.viewer(conv) for _ in range(4)]
        # Past the subscriber's first PING and its answer's timeout (15 s + 5 s,
        # chat/fanout/redis/subscriber.py), and redis-py's idle socket timeouts.
        await asyncio.sleep(21)
        assert [tab.close_code for tab in tabs] == [None] * 4
        client = redis.Redis.from_url(deployment.env["REDIS_URL"])
        # Alice is the only user with sockets here: her sorted set of live connections.
        (key,) = client.keys(f"{deployment.env['CHANNEL_PREFIX']}:conn:*")
        assert client.zcard(key) == 4
        client.close()
        for tab in tabs:
            await tab.close()
        await alice.close()
        server.process.stop()
        server.assert_clean_log()
