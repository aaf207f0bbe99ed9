"""Closing a websocket with the protocol's codes, whatever server carries it.

daphne (through autobahn) refuses to send 1009, 1012 and 1013 from a server; they go
through its internals when those are on (`direct_send.Socket.close`). Otherwise a code
the server refuses is replaced by its twin of the private range (4009, 4012, 4013,
`protocol.fallback_close_code`), which clients treat alike.
"""

import logging

from chat.protocol import CLOSE_TRY_AGAIN_LATER, fallback_close_code
from chat.realtime import direct_send

log = logging.getLogger(__name__)

try:  # what daphne (autobahn) raises when sending on a socket that has just closed
    from autobahn.exception import Disconnected as _Disconnected

    SOCKET_GONE: tuple[type[Exception], ...] = (_Disconnected,)
except ImportError:  # served by another ASGI server
    SOCKET_GONE = ()


async def close(send, code: int | None, reason: str | None = None) -> None:
    """Close the socket of an ASGI `send` with `code` (1000 when None)."""
    socket = direct_send.socket_for(send)
    if socket is not None and code is not None:
        socket.close(code)
        return
    message = {"type": "websocket.close", "code": code or 1000}
    if reason:
        message["reason"] = reason
    try:
        await send(message)
    except SOCKET_GONE:
        log.debug("close skipped: the socket closed first")
    except Exception:
        fallback = fallback_close_code(code)
        if fallback is None:
            raise
        await send({"type": "websocket.close", "code": fallback})


async def refuse_before_start(receive, send) -> None:
    """Answer a handshake no consumer could take on (the layer has no channel for it):
    accept, then close with 1013, "try again later"."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await close(send, CLOSE_TRY_AGAIN_LATER)
