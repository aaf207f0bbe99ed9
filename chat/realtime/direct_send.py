"""The project's one reach into daphne's, autobahn's and Twisted's internals.

Everything here is reached past the servers' public API, so it is checked at import
(`AVAILABLE`: the attributes it uses exist and the installed versions are within
`VERSION_BOUNDS`, which pyproject.toml repeats), can be turned off (`DAPHNE_INTERNALS=0`),
and says at startup which path runs (`describe`). Nothing else touches these names.

For a websocket under daphne, `socket_for(send)` gives a `Socket` that
* writes a frame prepared once per event (`prepare`) straight to the connection,
  skipping the per-socket UTF-8 encoding and framing of ASGI's `websocket.send`;
* tells how many bytes wait unsent for the peer (`unsent`), so a peer that stops
  reading can be held to a bound (WS_MAX_UNSENT_BYTES) instead of growing the process;
* closes with a code autobahn's `sendClose` refuses from a server (`close`): 1009,
  1012 and 1013, which the protocol promises and browsers understand.

`install` also makes an open websocket's TCP transport send a frame at once when
nothing is queued before it (Twisted otherwise queues every write until the reactor's
next turn, two `epoll_ctl` calls per frame), and makes autobahn close a connection that
broke the protocol (a message over daphne's size cap) with its close code instead of
dropping it (its `failByDrop`), so an oversized frame ends with 1009 either way.

With the internals off or unavailable, `socket_for` answers None and callers take the
ASGI path: frames through `websocket.send`, closes through `websocket.close` (where
daphne refuses 1009/1012/1013 the caller uses 4009/4012/4013), no unsent-bytes bound.
"""

import functools
import logging
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger(__name__)

# The releases this module was written and tested against (pyproject.toml says the same).
VERSION_BOUNDS = {
    "daphne": ((4, 2, 2), (4, 3)),
    "autobahn": ((24, 4), (27,)),
    "twisted": ((24, 3), (27,)),
}

try:
    from autobahn.websocket.protocol import PreparedMessage
    from autobahn.websocket.protocol import WebSocketProtocol as _Autobahn
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import tcp
except ImportError:  # served by another ASGI server
    WebSocketProtocol = None


def _release(package: str) -> tuple[int, ...]:
    parts = []
    for piece in version(package).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _self_check() -> str | None:
    """Why the internals cannot be used here, or None when they can."""
    if WebSocketProtocol is None:
        return "daphne is not installed"
    for package, (low, high) in VERSION_BOUNDS.items():
        try:
            found = _release(package)
        except PackageNotFoundError:
            return f"{package} is not installed"
        if not low <= found < high:
            return f"{package} {'.'.join(map(str, found))} is outside the tested range"
    # Class-level names; the instance attributes they go with (the transport's queue,
    # the protocol's state) come with the same releases, which the bounds above pin.
    needed = (
        (WebSocketProtocol, ("onOpen", "STATE_OPEN", "sendCloseFrame", "transport")),
        (tcp.Connection, ("write", "dataBuffer", "offset", "connected", "disconnecting")),
        (PreparedMessage, ("__init__",)),
    )
    for owner, names in needed:
        missing = [name for name in names if not hasattr(owner, name)]
        if missing:
            return f"{owner.__name__} lacks {', '.join(missing)}"
    if "failByDrop" not in getattr(_Autobahn, "CONFIG_ATTRS_COMMON", ()):
        return "autobahn's protocol has no failByDrop option"
    return None


UNAVAILABLE_BECAUSE = _self_check()
AVAILABLE = UNAVAILABLE_BECAUSE is None
_enabled = False


def wanted() -> bool:
    """Whether the internals are to be used: the installed versions have them, and the
    setting does not turn them off."""
    from django.conf import settings

    return AVAILABLE and settings.DAPHNE_INTERNALS


def describe() -> str:
    """The startup log's line about this module."""
    from django.conf import settings

    if _enabled:
        return (
            "daphne internals on: frames written straight to sockets, close codes "
            "1009/1012/1013, unsent bytes per socket bounded"
        )
    if not settings.DAPHNE_INTERNALS:
        return "daphne internals off (DAPHNE_INTERNALS=0): the ASGI path only"
    return f"daphne internals off ({UNAVAILABLE_BECAUSE}): the ASGI path only"


def install() -> bool:
    """Hook daphne's websockets (once per process) when the internals are on."""
    global _enabled
    if not wanted():
        return False
    _enabled = True
    if getattr(WebSocketProtocol, "_writes_at_once", False):
        return True
    opened = WebSocketProtocol.onOpen

    def onOpen(self) -> None:
        # A protocol violation (a message over daphne's cap) closes with its code, 1009
        # for a big message, rather than dropping the connection without one.
        self.failByDrop = False
        write_at_once_on(self.transport)
        opened(self)

    WebSocketProtocol.onOpen = onOpen
    WebSocketProtocol._writes_at_once = True
    return True


def write_at_once_on(transport: object) -> None:
    """Route a plain TCP transport's writes through `write_at_once`. Under TLS the
    websocket writes to the TLS layer, whose records reach the TCP transport queued."""
    if isinstance(transport, tcp.Connection) and "write" not in vars(transport):
        transport.write = functools.partial(write_at_once, transport)


def _queued(transport) -> int:
    """Bytes Twisted holds for the transport, not yet handed to the kernel."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def write_at_once(transport, data: bytes) -> None:
    """`transport.write(data)`, sending at once what the socket takes when nothing is
    queued before it; the rest (or all of it, on an error) is queued as Twisted would."""
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or the peer is gone: the queued path's `doWrite` meets the same
            # condition on the reactor's next turn and handles it (waits, or loses the
            # connection with the usual callbacks).
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    type(transport).write(transport, data)


def prepare(text: str) -> bytes:
    """A server text frame carrying `text`, ready for any number of sockets."""
    return PreparedMessage(
        text.encode("utf-8"), isBinary=False, applyMask=False, doNotCompress=True
    ).payloadHybi


class Socket:
    """A daphne websocket's connection, for the consumer that owns it."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def write(self, frame: bytes) -> bool:
        """Write a `prepare`d frame; False when it cannot go this way now (not open, or
        autobahn keeps a queue of its own): the caller then sends through ASGI, which
        raises or queues as it always has."""
        protocol = self._protocol
        if protocol.state != WebSocketProtocol.STATE_OPEN or protocol.send_queue:
            return False
        protocol.transport.write(frame)
        return True

    def unsent(self) -> int:
        """Bytes written to this socket that the peer has not taken yet (beyond what the
        kernel's buffer holds)."""
        transport = self._protocol.transport
        if not isinstance(transport, tcp.Connection):
            return 0  # TLS in daphne itself: not measured
        return _queued(transport)

    def close(self, code: int) -> bool:
        """Send a close frame with `code` (any code, 1009/1012/1013 included); False when
        the socket is not open."""
        protocol = self._protocol
        if protocol.state != WebSocketProtocol.STATE_OPEN:
            return False
        protocol.sendCloseFrame(code=code, isReply=False)
        return True


def socket_for(send: object) -> Socket | None:
    """The `Socket` behind a daphne websocket's ASGI `send`; None when the internals
    are off or another server serves it."""
    if not _enabled or not isinstance(send, functools.partial):
        return None
    protocol = send.args[0] if send.args else None
    if not isinstance(protocol, WebSocketProtocol):
        return None
    return Socket(protocol)
