"""A runner whose process froze (SIGSTOP: a VM stall, a long pause) while another
process's sweeper stored its answer: when it wakes it stops, and the answer keeps exactly
one final write and one `done`; nothing of it is relayed after that `done`."""

import asyncio
import signal

import pytest

from tests.live import Deployment, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
]


@pytest.fixture
async def runner_and_sweeper(redis_postgres: Deployment):
    # STREAM_STALE_S is 4 s and sweeps run every second (tests/conftest.py).
    servers = redis_postgres.start_server(), redis_postgres.start_server()
    yield servers
    for server in servers:
        server.process.proc.send_signal(signal.SIGCONT)
        server.process.stop()
        server.assert_clean_log()


async def test_a_frozen_runner_that_wakes_after_the_sweep_writes_and_relays_nothing(
    runner_and_sweeper,
):
    runner, sweeper = runner_and_sweeper
    alice = await Session(runner, "alice").login()
    bob = await Session(sweeper, "bob").login()
    conv = await alice.create_conversation(members={"bob": "member"})
    asker = await alice.viewer(conv)
    watcher = await bob.viewer(conv)
    _, placeholder = await asker.prompt("Count to 3000 [[sim chunk_ms=3]]")
    mid = placeholder["id"]
    await watcher.wait_for(lambda f: f["type"] == "delta" and f["seq"] >= 5, what="deltas")

    runner.process.proc.send_signal(signal.SIGSTOP)
    done = await watcher.done(mid, timeout=30)  # the sweeper's, on the other process
    assert done["status"] == "interrupted"
    runner.process.proc.send_signal(signal.SIGCONT)
    await asyncio.sleep(3)  # the runner wakes, with deltas it had not sent yet
    latecomer = await bob.viewer(conv)
    await asyncio.sleep(2)

    frames = [
        f
        for f in watcher.frames
        if f.get("message", {}).get("id") == mid or f.get("message_id") == mid
    ]
    dones = [i for i, f in enumerate(frames) if f["type"] == "done"]
    assert len(dones) == 1
    assert all(f["type"] != "delta" for f in frames[dones[0] :])
    assert watcher.texts[mid] == done["content"]
    assert [f["type"] for f in latecomer.frames].count("snapshot") == 1
    stored = {m["id"]: m for m in await bob.messages(conv)}[mid]
    assert stored["status"] == "interrupted"
    assert stored["content"] == done["content"]
    # Charged an estimate of what it produced, not the whole reservation (50,000+).
    assert stored["usage_estimated"] is True
    assert stored["usage"]["total_tokens"] < 10_000
    assert "stored elsewhere" in runner.process.log() or "no longer streaming" in (
        runner.process.log()
    )
    for viewer in (asker, watcher, latecomer):
        await viewer.close()
    await alice.close()
    await bob.close()
