"""A bare ASGI websocket broadcast app (no Django, no Channels, no Redis), for daphne.

The ceiling our fan-out is compared with: the same server (daphne), the same load
generator and the same frame shape, minus everything of ours. Any socket may send
`{"blast": R, "size": S}`; the app then sends R frames shaped like our deltas (S
characters of text each) to every open socket, one round after another, yielding to the
loop between rounds as a real broadcaster would.

    daphne -b 127.0.0.1 -p 9000 bench.asgi_ceiling:application
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

_sends: list[Any] = []
_tasks: set[asyncio.Task[None]] = set()
MESSAGE_ID = "00000000-0000-4000-8000-000000000000"


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    _sends.append(send)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text and text.startswith("{"):
                command = json.loads(text)
                if "blast" in command:
                    task = asyncio.ensure_future(
                        _blast(int(command["blast"]), int(command["size"]))
                    )
                    _tasks.add(task)
                    task.add_done_callback(_tasks.discard)
    finally:
        _sends.remove(send)


async def _blast(rounds: int, size: int) -> None:
    body = "x" * size
    for seq in range(1, rounds + 1):
        text = json.dumps(
            {"type": "delta", "message_id": MESSAGE_ID, "seq": seq, "text": body},
            separators=(",", ":"),
        )
        for send in list(_sends):
            await send({"type": "websocket.send", "text": text})
        await asyncio.sleep(0)
