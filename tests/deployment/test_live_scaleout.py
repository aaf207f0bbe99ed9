"""Several daphne processes on one Redis and one PostgreSQL: fan-out across processes,
cancel from another process, and what a crash or a shutdown leaves behind."""

import signal

import pytest

from tests.live import UNHANDLED, Deployment, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


@pytest.fixture
async def two_servers(redis_postgres: Deployment):
    # A short drain: these tests are about what SIGTERM leaves once the drain is over.
    first, second = (
        redis_postgres.start_server(DRAIN_S="1"),
        redis_postgres.start_server(DRAIN_S="1"),
    )
    alice_a = await Session(first, "alice").login()
    bob_b = await Session(second, "bob").login()
    yield first, second, alice_a, bob_b
    await alice_a.close()
    await bob_b.close()
    for server in (first, second):
        server.process.stop()
        log = server.process.log()
        assert UNHANDLED.search(log) is None, log[-5000:]


async def test_a_viewer_on_another_process_sees_the_whole_stream(two_servers):
    _, _, alice_a, bob_b = two_servers
    conv = await alice_a.create_conversation(members={"bob": "member"})
    asker, remote = await alice_a.viewer(conv), await bob_b.viewer(conv)

    _, placeholder = await asker.prompt("Count to 200, with a comma between each number")
    final = await remote.done(placeholder["id"])
    assert final["status"] == "complete" and final["content"] == count_to(200)
    assert remote.texts[placeholder["id"]] == count_to(200)
    assert remote.breaches == [] and asker.breaches == []
    assert [f["seq"] for f in remote.delta_frames(placeholder["id"])] == [
        f["seq"] for f in asker.delta_frames(placeholder["id"])
    ]
    # Presence spans processes too.
    presence = await remote.wait_for(
        lambda f: f["type"] == "presence" and len(f["viewers"]) == 2, what="both viewers"
    )
    assert {v["username"] for v in presence["viewers"]} == {"alice", "bob"}
    await asker.close()
    await remote.close()


async def test_cancel_from_another_process_stops_the_runner(two_servers):
    _, _, alice_a, bob_b = two_servers
    conv = await alice_a.create_conversation(members={"bob": "member"})
    asker, remote = await alice_a.viewer(conv), await bob_b.viewer(conv)
    _, placeholder = await asker.prompt("Count to 2000 [[sim chunk_ms=5]]")
    await remote.wait_for(lambda f: f["type"] == "delta" and f["seq"] >= 3, what="deltas")

    await remote.send({"type": "cancel", "message_id": placeholder["id"]})
    final = await remote.done(placeholder["id"], timeout=10)
    assert final["status"] == "cancelled"
    assert count_to(2000).startswith(final["content"]) and final["content"]
    assert remote.texts[placeholder["id"]] == final["content"]
    await asker.close()
    await remote.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_dead_runner_leaves_an_interrupted_message_with_the_text_seen(two_servers, sig):
    first, second, alice_a, bob_b = two_servers
    conv = await alice_a.create_conversation(members={"bob": "member"})
    asker, remote = await alice_a.viewer(conv), await bob_b.viewer(conv)
    _, placeholder = await asker.prompt("Count to 3000 [[sim chunk_ms=5]]")
    await remote.wait_for(lambda f: f["type"] == "delta" and f["seq"] >= 5, what="deltas")

    first.process.proc.send_signal(sig)
    # SIGTERM: the process stores what it has before exiting. SIGKILL: the sweeper of
    # the surviving process notices the stale heartbeat and recovers the replay log.
    # The timeout only bounds a hang.
    final = await remote.done(placeholder["id"], timeout=60)
    assert final["status"] == "interrupted"
    assert final["content"] and count_to(3000).startswith(final["content"])
    # Nothing the viewer saw is lost: the stored text holds every delta it received.
    assert final["content"].startswith(remote.texts[placeholder["id"]])
    stored = {m["id"]: m for m in await bob_b.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "interrupted" and stored["content"] == final["content"]
    if sig == signal.SIGTERM:
        # The dying process stored it itself, with every delta it had published.
        assert first.process.proc.wait(15) == 0
        assert "running generation(s) as interrupted" in first.process.log()
        assert remote.texts[placeholder["id"]] == final["content"]
    else:
        # The survivor's sweeper did, from its own process.
        assert f"message {placeholder['id']} had no live runner" in second.process.log()
    await remote.close()
    await asker.close()
