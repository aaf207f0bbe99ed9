"""In-process websocket clients: the real ASGI router (origin check, session auth, URL
routing) driven by `channels.testing.WebsocketCommunicator`."""

import json

from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from project.asgi import application


async def connect(
    user,
    conversation_id,
    client: AsyncClient | None = None,
    *,
    expect_snapshot: bool = True,
    wait_presence: bool = True,
    subprotocols: list[str] | None = None,
) -> WebsocketCommunicator:
    """A signed-in socket on the conversation; its snapshot is kept as `comm.snapshot`
    and the subprotocol the server chose as `comm.subprotocol`. With `wait_presence`,
    the announcement of our own join is consumed too."""
    if client is None:
        client = AsyncClient()
        await client.aforce_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    comm = WebsocketCommunicator(
        application,
        f"/ws/chat/{conversation_id}/",
        headers=[(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", cookie)],
        subprotocols=subprotocols,
    )
    connected, comm.subprotocol = await comm.connect()
    assert connected
    if not expect_snapshot:
        return comm
    snapshot = json.loads(await comm.receive_from(10))
    assert snapshot["type"] == "snapshot"
    comm.snapshot = snapshot
    if wait_presence:
        await frames_until(comm, lambda f: f["type"] == "presence")
    return comm


async def frames_until(comm: WebsocketCommunicator, predicate, timeout: float = 10) -> list[dict]:
    """Frames received up to and including the first that matches `predicate`."""
    seen = []
    while True:
        frame = json.loads(await comm.receive_from(timeout))
        seen.append(frame)
        if predicate(frame):
            return seen
