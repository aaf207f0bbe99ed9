"""A Redis connection on an asyncio protocol, for the layer's two hot paths: the lane
(publishing, and a flush's round trip) and the subscriber.

Bytes go out in one `write` per call and replies are parsed by hiredis as they arrive
(`data_received`).
Commands are pipelined: any number of calls may be in flight, each gets its own replies
because Redis answers in order. On a subscribed connection every array reply
(messages, subscription confirmations, PING answers) goes to `on_push` instead.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import hiredis
from redis.asyncio.connection import parse_url

Command = Sequence[bytes | str | int]

CONNECT_TIMEOUT_S = 5.0


def encode(commands: Sequence[Command]) -> bytes:
    """Commands in the Redis protocol, ready for one write."""
    parts = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
            parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Call:
    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[object]], count: int) -> None:
        self.future, self.remaining, self.replies = future, count, []


class RespConnection(asyncio.Protocol):
    """One connection; replies to `call` in order, pushes to `on_push` if subscribed."""

    def __init__(self, on_push: Callable[[list], None] | None = None) -> None:
        self.on_push = on_push
        self.on_lost: Callable[[RespConnection], None] | None = None
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.calls: deque[_Call] = deque()
        self.data_at = self.loop.time()  # when data last arrived (liveness checks)
        self.client_id: object = None

    @property
    def is_open(self) -> bool:
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data_at = self.loop.time()
        self.reader.feed(data)
        on_push, calls = self.on_push, self.calls
        while (reply := self.reader.gets()) is not False:
            if on_push is not None and (type(reply) is list or not calls):
                # Subscribed: pushes, and a PING answered `+PONG` once no channel is left.
                on_push(reply if type(reply) is list else [reply])
                continue
            if not calls:  # a reply nobody asked for: out of step, so never trusted again
                self.close()
                return
            call = calls[0]
            call.replies.append(reply)
            call.remaining -= 1
            if call.remaining == 0:
                calls.popleft()
                if not call.future.done():  # a caller that gave up (timeout) is skipped
                    call.future.set_result(call.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        error = ConnectionError(f"Redis connection lost: {exc!r}" if exc else "Redis closed")
        while self.calls:
            future = self.calls.popleft().future
            if not future.done():
                future.set_exception(error)
        if self.on_lost is not None:
            self.on_lost(self)

    def send(self, *commands: Command) -> None:
        """Write commands whose replies nobody waits for (subscribed connections)."""
        if self.transport is None:
            raise ConnectionError("Redis connection is closed")
        self.transport.write(encode(commands))

    def call(self, *commands: Command) -> asyncio.Future[list[object]]:
        """Send `commands` in one write; the future gets their replies, in order (error
        replies are `hiredis.ReplyError` values), or ConnectionError."""
        future: asyncio.Future[list[object]] = self.loop.create_future()
        if self.transport is None:
            future.set_exception(ConnectionError("Redis connection is closed"))
            return future
        self.calls.append(_Call(future, len(commands)))
        self.transport.write(encode(commands))
        return future

    def close(self) -> None:
        """Close now: no call is sent on it any more; those in flight fail."""
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.close()


async def connect(url: str, *, name: str, on_push: Callable[[list], None] | None = None):
    """A connection to the Redis of `url` (redis://, rediss:// or unix://, with its
    password), named `name` in CLIENT LIST, its id in `client_id`."""
    params = parse_url(url)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        if "path" in params:
            _, conn = await loop.create_unix_connection(
                lambda: RespConnection(on_push), params["path"]
            )
        else:
            context = None
            if url.startswith("rediss:"):
                context = ssl.create_default_context()
                if params.get("ssl_cert_reqs") in ("none", "optional"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            _, conn = await loop.create_connection(
                lambda: RespConnection(on_push),
                params.get("host", "localhost"),
                params.get("port", 6379),
                ssl=context,
            )
        try:
            setup: list[Command] = []
            if params.get("password"):
                user = [params["username"]] if params.get("username") else []
                setup.append(("AUTH", *user, params["password"]))
            if params.get("db") and on_push is None:
                setup.append(("SELECT", params["db"]))
            setup += [("CLIENT", "SETNAME", name), ("CLIENT", "ID")]
            replies = await conn.call(*setup)
            for command, reply in zip(setup, replies, strict=True):
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"Redis refused {command[0]}: {reply}")
            conn.client_id = replies[-1]
        except BaseException:
            conn.close()
            raise
    return conn


class OnDemand:
    """One connection at a time, made by `make` when first asked for and again once it
    has closed; callers that ask while it is being made share that attempt."""

    def __init__(self, make: Callable[[], Awaitable[RespConnection]]) -> None:
        self._make = make
        self.connection: RespConnection | None = None
        self._making: asyncio.Future[RespConnection] | None = None

    async def get(self) -> RespConnection:
        connection = self.connection
        if connection is not None and connection.is_open:
            return connection
        if self._making is None:
            self._making = asyncio.ensure_future(self._attempt())
            # Retrieved even when every caller gave up (timeout): no "never retrieved".
            self._making.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._making)

    async def _attempt(self) -> RespConnection:
        try:
            self.connection = await self._make()
            return self.connection
        finally:
            self._making = None
