"""Every close code the protocol promises, as a client of a real daphne process sees it:
1009 for a frame over the limit (the socket's cleanup runs, so no number of them locks
the account out), 1012 when the process drains, 1013 when Redis is down at connect,
4404 alike for a conversation that does not exist and one the user is not in; and
their private-range twins when the daphne internals are off."""

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import live_redis_postgres
from tests.live import (
    DAPHNE_INTERNALS,
    UNHANDLED,
    Deployment,
    OwnRedis,
    Server,
    Session,
    expected_close,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]

NO_SUCH_CONVERSATION = "00000000-0000-4000-8000-000000000000"


async def close_code(server: Server, cookie: str, conversation_id: str, *send: str) -> int:
    """Open a socket, send `send`, and read until the server closes it: its close code."""
    ws = await connect(
        f"{server.ws_url}/ws/chat/{conversation_id}/",
        origin=server.url,
        additional_headers={"Cookie": cookie} if cookie else {},
        max_size=None,
    )
    with contextlib.suppress(ConnectionClosed):
        for text in send:
            await ws.send(text)
        async for _ in ws:
            pass
    return ws.close_code


async def test_refusals_close_with_their_codes_and_hide_whether_a_conversation_exists(
    sessions, server
):
    alice, dave = sessions["alice"], sessions["dave"]
    conv = await alice.create_conversation()
    assert await close_code(server, "", conv) == 4401
    # Not a member, or no such conversation: the same answer.
    assert await close_code(server, dave.cookie_header(), conv) == 4404
    assert await close_code(server, dave.cookie_header(), NO_SUCH_CONVERSATION) == 4404
    assert await close_code(server, alice.cookie_header(), NO_SUCH_CONVERSATION) == 4404
    # A foreign origin is refused at the handshake.
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            f"{server.ws_url}/ws/chat/{conv}/",
            origin="http://evil.example",
            additional_headers={"Cookie": alice.cookie_header()},
        )
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("size", [300_000, 1_100_000], ids=["over-the-limit", "over-1MiB"])
async def test_oversized_frames_close_1009_and_never_lock_the_account_out(sessions, server, size):
    alice = sessions["alice"]
    conv = await alice.create_conversation()
    frame = '{"type":"prompt","content":"' + "x" * size + '"}'
    # More than WS_MAX_CONNECTIONS_PER_USER (20): each socket's cleanup must have run.
    for _ in range(22):
        # Without the internals autobahn drops the connection (1006); either way the
        # socket's cleanup runs.
        closed = await close_code(server, alice.cookie_header(), conv, frame)
        assert closed == (1009 if DAPHNE_INTERNALS else 1006)
    viewer = await alice.viewer(conv)  # not refused for too many connections
    assert await alice.metric("livechat_connected_viewers") == 1
    _, placeholder = await viewer.prompt("Count to 3")
    assert (await viewer.done(placeholder["id"]))["content"] == "1, 2, 3"
    await viewer.close()
    server.assert_clean_log()


@pytest.fixture
def two_servers(redis_postgres: Deployment) -> Iterator[tuple[Server, Server]]:
    servers = redis_postgres.start_server(DRAIN_S="30"), redis_postgres.start_server()
    yield servers
    for server in servers:
        server.process.stop()
        server.assert_clean_log()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_draining_process_sends_its_viewers_away_with_1012_at_once(two_servers):
    draining, other = two_servers
    alice = await Session(draining, "alice").login()
    conv = await alice.create_conversation()
    viewer = await alice.viewer(conv)
    _, placeholder = await viewer.prompt("Count to 3000 [[sim chunk_ms=5]]")
    await viewer.wait_for(lambda f: f["type"] == "delta", what="a delta")
    draining.process.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        await viewer.wait_for(lambda f: False, what="the close", timeout=15)
    assert viewer.close_code == expected_close(1012)
    # Sent while its answer still streams: the process has not exited yet.
    assert draining.process.proc.poll() is None
    follower = await Session(other, "alice").login()
    resumed = await follower.viewer(conv, heal=True)
    assert await resumed.final_text(placeholder["id"], timeout=60)
    await resumed.close()
    await follower.close()
    await alice.close()
    assert draining.process.proc.wait(60) == 0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis_server = OwnRedis(tmp_path)
    redis_server.start()
    yield redis_server
    if redis_server.process is not None:
        redis_server.process.stop()


@pytest.mark.redis
@pytest.mark.postgres
async def test_connecting_while_redis_is_down_is_accepted_then_closed_1013(own_redis, tmp_path):
    for deployment in live_redis_postgres(tmp_path / "deployment", redis_url=own_redis.url):
        server = deployment.start_server()
        alice = await Session(server, "alice").login()
        conv = await alice.create_conversation()
        own_redis.kill()
        # Accepted (no HTTP 500 at the handshake), then closed: try again shortly.
        assert await close_code(server, alice.cookie_header(), conv) == expected_close(1013)
        own_redis.start()
        for _ in range(50):  # the page retries with a backoff; so does this test
            try:
                viewer = await alice.viewer(conv)
                break
            except AssertionError:
                await asyncio.sleep(0.2)
        assert viewer.frames[0]["type"] == "snapshot"
        await viewer.close()
        await alice.close()
        server.process.stop()
        server.assert_clean_log()


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
async def test_without_the_daphne_internals_the_private_twins_close(deployment):
    server = deployment.start_server(DAPHNE_INTERNALS="0", DRAIN_S="30")
    alice = await Session(server, "alice").login()
    conv = await alice.create_conversation()
    assert "daphne internals off (DAPHNE_INTERNALS=0)" in server.process.log()
    # Over daphne's cap (set to WS_MAX_FRAME_BYTES) autobahn drops the connection (1006)
    # without the internals; either way the socket's cleanup runs.
    frame = '{"type":"prompt","content":"' + "x" * 300_000 + '"}'
    for _ in range(22):
        assert await close_code(server, alice.cookie_header(), conv, frame) in (4009, 1006)
    viewer = await alice.viewer(conv)
    await viewer.prompt("Count to 3000 [[sim chunk_ms=5]]")
    server.process.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        await viewer.wait_for(lambda f: False, what="the close", timeout=15)
    assert viewer.close_code == 4012
    await alice.close()
    assert server.process.proc.wait(60) == 0
    assert UNHANDLED.search(server.process.log()) is None, server.process.log()[-4000:]
