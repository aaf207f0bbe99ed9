"""Fan-out frames go from the event straight to the socket under daphne.

Two costs per frame to every viewer that the fan-out does not need to pay:

* **Framing per socket.** Through ASGI, each `websocket.send` is encoded to UTF-8 and
  framed by autobahn once per socket, through daphne's `handle_reply` and four layers
  of autobahn's `sendMessage`. A group event's frame is the same for every socket, so
  `prepare` frames it once (autobahn's `PreparedMessage`, its own broadcast helper) and
  `writer_for` gives a consumer a function that writes those bytes to its connection.
* **The reactor's deferred write.** Twisted's TCP transport never writes inside
  `write()`: it queues the bytes, registers the socket for writability (an
  `epoll_ctl`), sends on the reactor's next turn and unregisters (another
  `epoll_ctl`). That folds an HTTP response's headers and body into one send; for the
  fan-out it folds nothing, since each socket gets one frame per event. `install`
  makes an open websocket's transport hand a frame to `send()` at once when nothing is
  queued before it; what the kernel does not take (a full socket buffer) and any error
  go the queued way, which keeps the order of bytes, back-pressure and Twisted's
  handling of a lost connection as they were. Frames are written whole (header and
  payload in one write) with Nagle off (autobahn's `tcpNoDelay`), so nothing is split.

Anything else (another ASGI server, a closing socket, a queue autobahn keeps for itself)
takes the ordinary ASGI path. bench/REPORT.md has the measurements.
"""

import functools
from collections.abc import Callable

try:
    from autobahn.websocket.protocol import PreparedMessage
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import tcp
except ImportError:  # served by another ASGI server
    WebSocketProtocol = None


def install() -> bool:
    """Make daphne's open websockets write at once; False when not under daphne."""
    if WebSocketProtocol is None:
        return False
    if getattr(WebSocketProtocol, "_writes_at_once", False):
        return True
    opened = WebSocketProtocol.onOpen

    def onOpen(self) -> None:
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


FrameWriter = Callable[[bytes], bool]


def writer_for(send: object) -> FrameWriter | None:
    """For a daphne websocket's ASGI `send`, a function that writes a `prepare`d frame
    to that socket and says whether it did; None under any other server."""
    if WebSocketProtocol is None or not isinstance(send, functools.partial):
        return None
    protocol = send.args[0] if send.args else None
    if not isinstance(protocol, WebSocketProtocol):
        return None
    return functools.partial(_write_frame, protocol)


def _write_frame(protocol, frame: bytes) -> bool:
    # Only while the socket is open (never after a close frame) and autobahn has no
    # queue of its own, the condition under which its `sendData` writes to the
    # transport directly too; otherwise the caller sends through ASGI, which raises
    # or queues as it always has.
    if protocol.state != WebSocketProtocol.STATE_OPEN or protocol.send_queue:
        return False
    protocol.transport.write(frame)
    return True
