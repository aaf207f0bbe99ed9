"""The simulator over real sockets: a small HTTP/1.1 server on `asyncio.start_server`.

Supports keep-alive, Content-Length request bodies (up to `MAX_BODY` bytes, else 413),
chunked transfer encoding for streams and Content-Length for JSON answers. A client
that disconnects mid-response stops its plan at once; no traceback is logged.

Example::

    server = await serve("127.0.0.1", 0, SimSettings())
    print(server.base_url)  # http://127.0.0.1:<port>/v1
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from http import HTTPStatus

from chat.simulator.plan import Drop, Emit, End, Plan, Sleep, error_plan
from chat.simulator.script import SimSettings, Simulator

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
READ_SIZE = 64 * 1024
YIELD_EVERY = 64
# Errors that only mean the peer went away.
GONE = (ConnectionError, asyncio.IncompleteReadError, OSError)


class ProtocolFault(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PeerClosed(Exception):
    """The client closed the connection."""


class Connection:
    """One client connection: buffered request parsing and plan writing."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        simulator: Simulator,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.simulator = simulator
        self.buffer = bytearray()

    async def _fill(self) -> None:
        """Read more bytes into the buffer; raise PeerClosed at EOF."""
        try:
            data = await self.reader.read(READ_SIZE)
        except ConnectionError as exc:
            raise PeerClosed from exc
        if not data:
            raise PeerClosed
        self.buffer += data

    async def _read_head(self) -> bytes:
        """The request line and headers, without the blank line."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolFault(431, "Request header fields too large")
            await self._fill()
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def _read_body(self, length: int) -> bytes:
        """Exactly `length` body bytes."""
        while len(self.buffer) < length:
            await self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    async def run(self) -> None:
        """Serve requests until the client leaves or asks to close."""
        try:
            while await self._serve_one():
                pass
        except (PeerClosed, *GONE):
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(*GONE):
                await self.writer.wait_closed()

    async def _serve_one(self) -> bool:
        """Read one request and answer it; return whether to keep the connection."""
        try:
            method, target, version, headers = parse_head(await self._read_head())
            length = content_length(headers)
            body = await self._read_body(length)
        except ProtocolFault as fault:
            plan = error_plan(fault.status, str(fault), "invalid_request_error")
            await self._send(plan, keep_alive=False)
            return False
        keep_alive = wants_keep_alive(version, headers)
        plan = self.simulator.handle(method, target, body)
        return await self._send(plan, keep_alive) and keep_alive

    async def _send(self, plan: Plan, keep_alive: bool) -> bool:
        """Write the plan while watching for the client leaving; True if fully sent."""
        writing = asyncio.create_task(self._write_plan(plan, keep_alive))
        watching = asyncio.create_task(self._watch_peer())
        try:
            await asyncio.wait({writing, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writing, watching):
                task.cancel()
            # Reap both so no task outlives the response (and nothing is logged).
            await asyncio.gather(writing, watching, return_exceptions=True)
        if writing.cancelled():
            return False
        error = writing.exception()
        if error is not None:
            if not isinstance(error, GONE):
                log.error("simulator failed writing a response", exc_info=error)
            return False
        return writing.result()

    async def _watch_peer(self) -> None:
        """Return when the client disconnects; keep any early bytes of its next request."""
        with contextlib.suppress(PeerClosed):
            while len(self.buffer) <= MAX_HEAD + MAX_BODY:
                await self._fill()
            # The client pipelines too much: stop reading but keep serving.
            await asyncio.Event().wait()

    async def _write_plan(self, plan: Plan, keep_alive: bool) -> bool:
        """Write status, headers and events; False if the connection must be dropped.
        However it ends (the client leaving cancels it), the plan is closed: no later
        event is made."""
        try:
            return await self._write_events(plan, keep_alive)
        finally:
            close = getattr(plan.events, "close", None)
            if close is not None:
                close()

    async def _write_events(self, plan: Plan, keep_alive: bool) -> bool:
        """Write status, headers and events; False if the connection must be dropped."""
        writer = self.writer
        writer.write(status_head(plan, keep_alive))
        for index, event in enumerate(plan.events):
            if isinstance(event, Sleep):
                await writer.drain()
                await asyncio.sleep(event.seconds)
            elif isinstance(event, Emit):
                data = event.data()
                writer.write(frame(data) if plan.streaming else data)
                await writer.drain()
                if index % YIELD_EVERY == 0:
                    # drain() does not yield while the buffer is small: with zero delays a
                    # long reply would otherwise starve every other connection.
                    await asyncio.sleep(0)
            elif isinstance(event, Drop):
                await writer.drain()
                return False
            elif isinstance(event, End):
                break
        if plan.streaming:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def frame(data: bytes) -> bytes:
    """One chunk of a chunked transfer-encoded body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def status_head(plan: Plan, keep_alive: bool) -> bytes:
    """The status line and headers for a plan."""
    try:
        reason = HTTPStatus(plan.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {plan.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in plan.headers]
    if plan.streaming:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {plan.content_length or 0}")
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Parse the request line and headers (names lower-cased)."""
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError as exc:
        raise ProtocolFault(400, "Malformed request line") from exc
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolFault(400, "Malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


def content_length(headers: dict[str, str]) -> int:
    """The request body length; chunked request bodies are not supported."""
    if "transfer-encoding" in headers:
        raise ProtocolFault(411, "Send request bodies with Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise ProtocolFault(400, "Invalid Content-Length") from exc
    if length < 0:
        raise ProtocolFault(400, "Invalid Content-Length")
    if length > MAX_BODY:
        raise ProtocolFault(413, f"Request body larger than {MAX_BODY} bytes")
    return length


def wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    """HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 must ask."""
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


class SimulatorServer:
    """The simulator listening on a TCP port."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, settings: SimSettings | None = None
    ) -> None:
        self.host = host
        self.requested_port = port
        self.simulator = Simulator(settings or SimSettings())
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._accept, self.host, self.requested_port)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        """The OpenAI base URL for clients."""
        return f"http://{self.host}:{self.port}/v1"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection, tracked so close() can stop it."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await Connection(reader, writer, self.simulator).run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("simulator connection failed")
        finally:
            self._connections.discard(task)

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        tasks: Iterable[asyncio.Task[None]] = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def serve(host: str, port: int, settings: SimSettings | None = None) -> SimulatorServer:
    """Start a simulator server and return it (already listening)."""
    server = SimulatorServer(host, port, settings)
    await server.start()
    return server
