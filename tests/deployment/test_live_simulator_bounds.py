"""A prompt that asks the simulator for a billion words, on real daphne processes: the
server's OPENAI_MAX_TOKENS cuts the answer, the process the simulator runs in stays
small while it streams, and another user's answer completes meanwhile. Once with the
in-process simulator (inside daphne) and once with the simulator as its own server."""

import asyncio
from urllib.parse import urlsplit

import psutil
import pytest

from chat.simulator import reply_for, tokenize
from tests.live import Deployment, Server, Session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

MB = 2**20
# Building a reply of the size asked for takes about 75 bytes a word: gigabytes here.
GROWTH_LIMIT = 150 * MB
MAX_TOKENS = 50_000  # OPENAI_MAX_TOKENS of the test servers (tests/conftest.py)
HUGE = "Tell me everything [[sim words=1000000000 chunk_ms=0 ttft_ms=0]]"
# The same reply at the documented maximum size.
AT_MAXIMUM = "Tell me everything [[sim words=100000]]"


def simulator_hosts(deployment: Deployment, server: Server) -> list[psutil.Process]:
    """The processes the simulator answers from: daphne (in-process simulator) and the
    deployment's simulator server, if it has one."""
    hosts = [psutil.Process(server.process.proc.pid)]
    base_url = deployment.env.get("OPENAI_BASE_URL")
    if base_url:
        port = str(urlsplit(base_url).port)
        hosts += [
            child
            for child in psutil.Process().children()
            if "simulate_openai" in child.cmdline() and port in child.cmdline()
        ]
        assert len(hosts) == 2, "the deployment's simulator process was not found"
    return hosts


class PeakRss:
    """Samples the resident memory of some processes until stopped."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        self.processes = processes
        self.baseline = {p.pid: p.memory_info().rss for p in processes}
        self.peak = dict(self.baseline)
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            for process in self.processes:
                self.peak[process.pid] = max(self.peak[process.pid], process.memory_info().rss)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def growth(self) -> dict[int, int]:
        """The largest growth seen, per process id."""
        return {pid: self.peak[pid] - self.baseline[pid] for pid in self.peak}


async def test_a_billion_words_stream_in_small_memory(
    deployment: Deployment, server: Server, sessions: dict[str, Session]
) -> None:
    alice, bob = sessions["alice"], sessions["bob"]
    huge_conv = await alice.create_conversation()
    other_conv = await bob.create_conversation()
    asker, other = await alice.viewer(huge_conv), await bob.viewer(other_conv)
    rss = PeakRss(simulator_hosts(deployment, server))
    rss.start()
    try:
        _, huge = await asker.prompt(HUGE)
        await asker.wait_for(
            lambda f: f["type"] == "delta" and f["message_id"] == huge["id"], what="first delta"
        )
        _, ordinary = await other.prompt("Count to 20")
        ordinary_final = await other.done(ordinary["id"])
        final = await asker.done(huge["id"], timeout=150)
    finally:
        await rss.stop()

    assert ordinary_final["status"] == "complete"
    assert ordinary_final["content"] == ", ".join(str(i) for i in range(1, 21))
    assert final["status"] == "complete"
    growth = rss.growth()
    assert max(growth.values()) < GROWTH_LIMIT, {
        pid: f"{b / MB:.0f} MB" for pid, b in growth.items()
    }
    assert final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == MAX_TOKENS
    assert final["content"] == "".join(
        tokenize(reply_for([{"role": "user", "content": AT_MAXIMUM}]))[:MAX_TOKENS]
    )
    assert asker.breaches == [] and other.breaches == []
    await asker.close()
    await other.close()
