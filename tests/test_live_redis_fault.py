"""Redis stopped mid-stream and started again, with a Redis server of the test's own:
the message is still stored whole, viewers on both processes recover their view by
snapshot, and new prompts work without restarting anything."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import _redis_postgres
from tests.live import Deployment, Process, Session, free_port, spawn

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(150),
]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


class OwnRedis:
    """A redis-server on a free port that the test may kill and restart."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            {"PATH": "/usr/bin:/bin:/usr/sbin:/usr/local/bin"},
            self.tmp / f"redis-{self.port}-{time.monotonic_ns()}.log",
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.stop(sig=9)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.process.stop()


@pytest.fixture
def fault_deployment(own_redis: OwnRedis, tmp_path: Path) -> Iterator[Deployment]:
    yield from _redis_postgres(tmp_path / "deployment", redis_url=own_redis.url)


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
