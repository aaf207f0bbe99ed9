"""Viewers joining, leaving and rejoining at random points of long streams end with
exactly the stored text: no gap, no duplicate (on both deployments)."""

import asyncio
import json
import random

import pytest

from tests.live import Deployment, Session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


async def follow(
    session: Session, conv: str, message_id: str, rng: random.Random, reconnects: int
) -> str:
    """Join now; drop and rejoin `reconnects` times at random moments; return the text
    this viewer shows once the message is done."""
    viewer = await session.viewer(conv)
    for _ in range(reconnects):
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        if message_id in viewer.final:
            break
        assert viewer.breaches == []
        await viewer.close()
        viewer = await session.viewer(conv)
    final = await viewer.done(message_id, timeout=60)
    assert viewer.breaches == [], viewer.breaches
    shown = viewer.texts[message_id]
    assert shown == final["content"]
    await viewer.close()
    return shown


async def test_random_joins_and_reconnects_end_with_the_stored_text(sessions, server):
    rng = random.Random(20261122)
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    asker = await alice.viewer(conv)
    _, placeholder = await asker.prompt("Count to 700 [[sim chunk_ms=3]]")

    followers = []
    for index in range(10):
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        session = alice if index % 2 else bob
        followers.append(
            asyncio.create_task(follow(session, conv, placeholder["id"], rng, reconnects=index % 4))
        )
    shown = await asyncio.gather(*followers)
    stored = {m["id"]: m for m in await alice.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "complete"
    assert stored["content"] == count_to(700)
    assert all(text == stored["content"] for text in shown)
    assert asker.texts[placeholder["id"]] == stored["content"]
    await asker.close()


@pytest.mark.redis
@pytest.mark.postgres
async def test_the_same_client_msg_id_racing_on_two_processes_makes_one_generation(
    redis_postgres: Deployment,
):
    first, second = redis_postgres.start_server(), redis_postgres.start_server()
    on_first, on_second = (
        await Session(first, "alice").login(),
        await Session(second, "alice").login(),
    )
    try:
        conv = await on_first.create_conversation()
        a, b = await on_first.viewer(conv), await on_second.viewer(conv)
        frame = {"type": "prompt", "content": "Count to 40", "client_msg_id": "retry-42"}
        for _ in range(3):
            await asyncio.gather(a.send(frame), b.send(frame))
        assistant = await a.wait_for(
            lambda f: f["type"] == "message" and f["message"]["role"] == "assistant",
            what="placeholder",
        )
        await a.done(assistant["message"]["id"])
        await asyncio.sleep(0.5)  # let any second generation show itself
        stored = await on_first.messages(conv)
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[1]["content"] == count_to(40)
        assert not [f for f in a.frames + b.frames if f["type"] == "error"]
        await a.close()
        await b.close()
    finally:
        await on_first.close()
        await on_second.close()
        first.process.stop()
        second.process.stop()


async def test_a_viewer_that_stops_reading_slows_no_one_and_catches_up(sessions, server):
    from websockets.asyncio.client import connect

    from chat.domain.merge import ConversationView

    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    # A paused tab: a socket whose reader has stopped (one frame buffered, then TCP
    # back-pressure), next to a normal viewer.
    paused = await connect(
        f"{server.ws_url}/ws/chat/{conv}/",
        origin=server.url,
        max_queue=1,
        additional_headers={"Cookie": bob.cookie_header()},
        compression=None,
    )
    watcher = await alice.viewer(conv)
    _, placeholder = await watcher.prompt("Write [[sim words=6000 chunk_ms=0 ttft_ms=0]]")
    final = await watcher.done(placeholder["id"], timeout=60)
    assert final["status"] == "complete" and watcher.breaches == []

    # Resumed, the paused viewer catches up from what the server kept for it.
    view = ConversationView()
    async for raw in paused:
        frame = json.loads(raw)
        assert not view.apply(frame), "the paused viewer saw a gap"
        if frame["type"] == "done" and frame["message"]["id"] == placeholder["id"]:
            break
    assert view.text(placeholder["id"]) == final["content"]
    await paused.close()
    await watcher.close()
