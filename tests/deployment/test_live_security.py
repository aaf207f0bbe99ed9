"""The upstream key never leaves the server: not in a page, a frame, an API answer, an
error or a log line, whatever happens (on the deployment that has a key); and a page of
another origin cannot open a signed-in user's socket on a real daphne."""

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.live import Deployment, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(90),
]


async def test_the_upstream_key_appears_nowhere(redis_postgres: Deployment):
    key = redis_postgres.env["OPENAI_API_KEY"]
    server = redis_postgres.start_server(LOG_LEVEL="DEBUG")
    alice = await Session(server, "alice").login()
    seen: list[str] = []
    try:
        for path in ("/", "/accounts/login/", "/healthz", "/api/conversations/"):
            response = await alice.http.get(path)
            seen.append(response.text)
            seen.append(str(response.headers))
        conv = await alice.create_conversation()
        seen.append((await alice.http.get(f"/c/{conv}/")).text)
        viewer = await alice.viewer(conv)
        for prompt in (
            "Count to 20",
            "Count to 20 [[sim fault=http_429 retry_after_ms=10]]",
            "Count to 20 [[sim fault=http_500]]",
            "Count to 20 [[sim fault=drop_after n=5]]",
            "Count to 20 [[sim fault=error_after n=5]]",
        ):
            _, placeholder = await viewer.prompt(prompt)
            await viewer.done(placeholder["id"])
        await viewer.ws.send("{broken")
        await viewer.wait_for(lambda f: f["type"] == "error", what="error")
        seen.append((await alice.http.get(f"/api/conversations/{conv}/messages/")).text)
        await viewer.close()
        seen.extend(str(frame) for frame in viewer.frames)
    finally:
        await alice.close()
        server.process.stop()
    seen.append(server.process.log())
    seen.extend(p.read_text(errors="replace") for p in redis_postgres.tmp.glob("*.log"))
    assert len(seen) > 10
    leaks = [text[max(0, text.find(key) - 200) :][:400] for text in seen if key in text]
    assert leaks == []


async def test_a_page_on_another_port_or_scheme_cannot_open_a_users_socket(
    redis_postgres: Deployment,
):
    """The reported case: a page on http://localhost:9999 opened a signed-in user's
    socket on localhost:<port> (the Origin's host matched ALLOWED_HOSTS). Now the whole
    origin must be the server's own: refused at the handshake with HTTP 403."""
    server = redis_postgres.start_server()
    port = server.url.rsplit(":", 1)[1]
    alice = await Session(server, "alice").login()
    try:
        conv = await alice.create_conversation()
        url = f"ws://localhost:{port}/ws/chat/{conv}/"
        cookie = {"Cookie": alice.cookie_header()}
        for origin in (
            "http://localhost:9999",
            f"https://localhost:{port}",
            f"http://127.0.0.1:{port}",
            "http://localhost",
        ):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin=origin, additional_headers=cookie)
            assert refused.value.response.status_code == 403, origin
        # Without an Origin, likewise.
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=cookie)
        assert refused.value.response.status_code == 403
        # The page's own origin opens it.
        async with connect(url, origin=f"http://localhost:{port}", additional_headers=cookie) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
    finally:
        await alice.close()
        server.process.stop()
    server.assert_clean_log()
