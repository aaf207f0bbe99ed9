"""Clients that stop reading hold a bounded amount of the server: a socket no more than
WS_MAX_UNSENT_BYTES, not by being fed frames nobody reads, not by asking for snapshot
after snapshot (`sync`, 15 bytes, answered with the whole conversation); an event stream
no more than SSE_MAX_STREAM_BYTES of live events. Everyone else is unaffected."""

import asyncio
import contextlib
import socket

import psutil
import pytest
from websockets.asyncio.client import connect

from tests.live import Deployment, Server, Session
from tests.sse_client import SseParser, events_url

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

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


# The socket's bound needs the daphne internals (the measure of what waits for a socket).
@pytest.mark.daphne_internals
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


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body as (body, whether its last chunk arrived)."""
    body, rest = b"", raw
    while b"\r\n" in rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, True
        body, rest = body + rest[:size], rest[size + 2 :]
    return body, False


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_an_event_stream_that_is_not_read_ends_after_its_byte_bound(deployment: Deployment):
    bound = 20_000
    server = deployment.start_server(SSE_MAX_STREAM_BYTES=str(bound))
    alice, bob = await Session(server, "alice").login(), await Session(server, "bob").login()
    try:
        conv = await alice.create_conversation(members={"bob": "member"})
        asker = await alice.viewer(conv)
        # bob's event stream, on a connection with a small receive buffer read by nobody.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        request = (
            f"GET {events_url(conv)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: {bob.cookie_header()}\r\nAccept: text/event-stream\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        streamed = 0
        for _ in range(3):  # answers worth several times the bound
            _, placeholder = await asker.prompt("Tell me [[sim words=6000 chunk_ms=0]]")
            streamed += len((await asker.done(placeholder["id"], timeout=60))["content"])
        assert streamed > 4 * bound

        # Read now: the response has ended (its last chunk is there) after the bound.
        raw = b""
        async with asyncio.timeout(30):  # keep-alive comments would go on forever
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                chunk = await reader.read(65536)
                assert chunk, "the connection closed before the response ended"
                raw += chunk
        head, _, chunked = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        body, complete = dechunk(chunked)
        assert complete
        events = SseParser().feed(body)
        assert events[0].event == "snapshot"
        live = body.split(b"\n\n", 1)[1]  # after the snapshot event
        biggest = max(len(e.data) for e in events[1:]) + 200
        assert bound < len(live) <= bound + biggest
        writer.close()
        server.assert_clean_log()
        await asker.close()
    finally:
        await alice.close()
        await bob.close()
        server.process.stop()
