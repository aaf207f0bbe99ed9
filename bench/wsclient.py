"""A minimal websocket client on a bare asyncio Protocol, for the load generator.

The `websockets` library costs tens of microseconds per received frame in Python; with
tens of thousands of frames a second on a 2-core machine the load generator would
become the thing measured. This client does only what a viewer needs: the RFC 6455
handshake (with a session cookie and an Origin), unmasked server frames parsed in
`data_received` (text, binary, continuation, ping -> pong, close -> close), and masked
client text frames. Every frame parsed from one read gets the same receive timestamp,
taken once when the bytes arrived.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable

OnText = Callable[[bytes, float], None]

_OP_CONT, _OP_TEXT, _OP_BIN, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


def _mask(payload: bytes) -> tuple[bytes, bytes]:
    key = os.urandom(4)
    n = len(payload)
    if not n:
        return key, b""
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return key, masked


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key, masked = _mask(payload)
    return head + key + masked


class WSClient(asyncio.Protocol):
    """One websocket connection. `opened` resolves after the 101 (or fails)."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        origin: str,
        cookie: str,
        on_text: OnText,
        subprotocol: str | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.origin, self.cookie = origin, cookie
        self.subprotocol = subprotocol
        self.on_text = on_text
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshaken = False
        self._fragments: list[bytes] = []
        self._frag_opcode = 0
        self.close_code: int | None = None
        self.bytes_in = 0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {self.origin}\r\nCookie: {self.cookie}\r\n"
            + (f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n" if self.subprotocol else "")
            + "\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.bytes_in += len(data)
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            response = bytes(buf[:end])
            status = response[: response.find(b"\r\n")]
            del buf[: end + 4]
            granted = f"\r\nsec-websocket-protocol: {self.subprotocol}".encode()
            if b" 101 " not in status:
                refused = status
            elif self.subprotocol and granted not in response.lower():
                refused = b"subprotocol not granted: " + status
            else:
                refused = None
            if refused is not None:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(refused.decode(errors="replace")))
                self.transport.close()
                return
            self._handshaken = True
            if not self.opened.done():
                self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if b1 & 0x80:  # a masked server frame is a protocol error; not expected
                head += 4
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == _OP_TEXT and fin:
                self.on_text(payload, now)
            elif opcode in (_OP_TEXT, _OP_BIN):
                self._frag_opcode, self._fragments = opcode, [payload]
            elif opcode == _OP_CONT:
                self._fragments.append(payload)
                if fin and self._frag_opcode == _OP_TEXT:
                    self.on_text(b"".join(self._fragments), now)
            elif opcode == _OP_PING:
                self.transport.write(client_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.transport.write(client_frame(_OP_CLOSE, payload[:2]))
                self.transport.close()
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # -- sending -----------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(_OP_TEXT, text.encode()))

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(_OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_ws(host: str, port: int, path: str, *, timeout=10.0, **options) -> WSClient:
    """An open `WSClient` (`options` are its keyword arguments)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: WSClient(host, port, path, **options),
            host,
            port,
        ),
        timeout,
    )
    await asyncio.wait_for(proto.opened, timeout)
    return proto
