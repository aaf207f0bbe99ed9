"""Clients that stop reading hold no more of the server than WS_MAX_UNSENT_BYTES each:
not by being fed frames nobody reads, not by asking for snapshot after snapshot (`sync`,
15 bytes, answered with the whole conversation). Everyone else is unaffected."""

import asyncio
import contextlib

import psutil
import pytest
from websockets.asyncio.client import connect

from tests.live import Server, Session

# The bound needs the daphne internals (the measure of what waits for a socket).
pytestmark = [pytest.mark.multiprocess, pytest.mark.daphne_internals, pytest.mark.timeout(180)]

STALLED = 5
SYNCS_EACH = 200


def rss_mib(server: Server) -> float:
    return psutil.Process(server.process.proc.pid).memory_info().rss / 2**20


async def stalled_socket(server: Server, session: Session, conversation_id: str):
    """A socket that reads almost nothing: the client library stops taking bytes from
    the connection once one message waits unread."""
    return await connect(
        f"{server.ws_url}/ws/chat/{conversation_id}/",
        origin=server.url,
        additional_headers={"Cookie": session.cookie_header()},
        max_queue=1,
        max_size=None,
        compression=None,
        ping_interval=None,
    )


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_readers_that_stop_reading_cost_a_bounded_amount_and_slow_no_one(
    sessions, server, deployment
):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    asker = await alice.viewer(conv)
    # A conversation worth a big snapshot: about 0.6 MB of stored text.
    for _ in range(8):
        _, placeholder = await asker.prompt("Tell me [[sim words=12000 chunk_ms=0]]")
        await asker.done(placeholder["id"], timeout=60)

    before = rss_mib(server)
    stalled = [await stalled_socket(server, bob, conv) for _ in range(STALLED)]
    for ws in stalled:  # each asks for the whole conversation, again and again
        for _ in range(SYNCS_EACH):
            await ws.send('{"type":"sync"}')
    # Meanwhile an answer streams to everyone; the one who reads gets all of it.
    _, placeholder = await asker.prompt("More [[sim words=20000 chunk_ms=0]]")
    final = await asker.done(placeholder["id"], timeout=90)
    assert asker.texts[placeholder["id"]] == final["content"] and asker.breaches == []
    await asyncio.sleep(1)  # what the stalled sockets' frames would still pile up
    grown = rss_mib(server) - before

    # Unbounded, five sockets asking 200 times for a 0.6 MB snapshot queue 600 MB.
    assert grown < 60, f"the server grew {grown:.0f} MiB for {STALLED} sockets that do not read"
    for ws in stalled:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
    await asker.close()
