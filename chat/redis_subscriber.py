"""The hub's own Redis pub/sub connection: one per process, each conversation's channel
subscribed once, every message parsed once (hiredis) and queued for its group.

Through channels_redis each received event went through redis-py's `get_message` with
a timeout (an `asyncio.timeout` and a retry wrapper per message), a message dict and
the layer's queue: 71 µs of CPU per event against 30 µs here, measured with events
arriving one by one as a flush sends them (bench/REPORT.md). Every process receives
every flush of every conversation its sockets watch, so this is paid per flush and per
process. The layer keeps carrying everything else (its own channels, user and
generation groups, and publishing); events reach the hub here whether the relay or the
layer PUBLISHed them, in the same msgpack form.

A lost connection is retried at once and then with a growing pause (at most a second);
on reconnect every channel is subscribed again. What was published in between is lost,
as with the layer: the Redis watcher resyncs every socket when Redis answers again, and
a socket that sees a `seq` gap asks for a snapshot itself (chat/lifecycle.py,
chat/group_events.py). A connection that stops answering is noticed by a PING every
`PING_EVERY_S` and dropped.
"""

import asyncio
import logging
import ssl
from collections import deque

import hiredis
from django.conf import settings
from redis.asyncio.connection import parse_url

from chat.per_loop import PerLoop

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # connecting, authenticating, or a subscription's confirmation
PING_EVERY_S = 15.0
RETRY_MAX_S = 1.0


def _command(*args: bytes | str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One socket in subscriber mode; hands messages and confirmations to its owner."""

    def __init__(self, owner: "Subscriber") -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.replies: deque[asyncio.Future[object]] = deque()  # AUTH, before subscribing
        self.client_id: object = None
        self.loop = asyncio.get_running_loop()
        self.data_at = self.loop.time()  # when data last arrived (the PING check)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data_at = self.loop.time()
        self.reader.feed(data)
        queues = self.owner.queues
        while (reply := self.reader.gets()) is not False:
            if type(reply) is list and reply and reply[0] == b"message":
                queue = queues.get(reply[1])
                if queue is not None:
                    queue.put_nowait(reply[2])
            elif type(reply) is list and reply:
                self.owner.confirm(reply)
            elif self.replies:
                waiter = self.replies.popleft()
                if not waiter.done():
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for waiter in self.replies:
            if not waiter.done():
                waiter.set_exception(ConnectionError("Redis connection lost"))
        self.owner.lost(self)

    def send(self, *args: bytes | str) -> None:
        if self.transport is not None:
            self.transport.write(_command(*args))

    async def call(self, *args: bytes | str) -> object:
        """A command answered before subscribing (AUTH); raises an error reply."""
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.replies.append(waiter)
        self.send(*args)
        reply = await waiter
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"Redis refused {args[0]!r}: {reply}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Subscriber:
    """This process's subscriptions (per event loop: sockets belong to their loop)."""

    def __init__(self, url: str) -> None:
        self._params = parse_url(url)
        self._tls = url.startswith("rediss:")
        self.queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        """Subscribe to a Redis channel; its messages' payloads arrive on the returned
        queue, in order. Raises when Redis cannot be reached or does not confirm."""
        name = channel.encode()
        connection = await self._connected()
        queue = self.queues.setdefault(name, asyncio.Queue())
        confirmed = self._confirmations.get(name)
        if confirmed is None:
            confirmed = self._confirmations[name] = asyncio.get_running_loop().create_future()
            connection.send("SUBSCRIBE", name)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.shield(confirmed)
        except BaseException:
            self.unsubscribe(channel)
            raise
        return queue

    def unsubscribe(self, channel: str) -> None:
        name = channel.encode()
        self._confirmations.pop(name, None)
        if self.queues.pop(name, None) is not None and self._connection is not None:
            self._connection.send("UNSUBSCRIBE", name)

    def confirm(self, reply: list) -> None:
        """A subscription reply: `[b"subscribe", channel, count]` confirms a channel."""
        if reply[0] == b"subscribe":
            confirmed = self._confirmations.get(reply[1])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def lost(self, connection: _Connection) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        error = ConnectionError("Redis connection lost")
        for name, confirmed in list(self._confirmations.items()):
            if not confirmed.done():
                confirmed.set_exception(error)
                confirmed.exception()  # retrieved: the subscriber waiting on it raises
            del self._confirmations[name]
        if self.queues and self._retrying is None:
            log.warning("Redis pub/sub connection %s lost: reconnecting", connection.client_id)
            self._retrying = asyncio.get_running_loop().create_task(self._reconnect())

    async def _connected(self) -> _Connection:
        if self._connection is not None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, attempt: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None and self.queues:
            # Channels that were subscribed before a reconnect: all again, at once.
            names = list(self.queues)
            for name in names:
                self._confirmations.setdefault(name, asyncio.get_running_loop().create_future())
            attempt.result().send("SUBSCRIBE", *names)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        params = self._params
        async with asyncio.timeout(TIMEOUT_S):
            if "path" in params:
                _, connection = await loop.create_unix_connection(
                    lambda: _Connection(self), params["path"]
                )
            else:
                context = None
                if self._tls:
                    context = ssl.create_default_context()
                    if params.get("ssl_cert_reqs") in ("none", "optional"):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    params.get("host", "localhost"),
                    params.get("port", 6379),
                    ssl=context,
                )
            try:
                if params.get("password"):
                    user = [params["username"]] if params.get("username") else []
                    await connection.call("AUTH", *user, params["password"])
                # Named in CLIENT LIST for operators; the id is in log lines.
                connection.client_id = await connection.call("CLIENT", "ID")
                await connection.call("CLIENT", "SETNAME", "livechat-hub")
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        if self._pinging is None or self._pinging.done():
            self._pinging = loop.create_task(self._ping_forever())
        return connection

    async def _reconnect(self) -> None:
        pause = 0.0
        try:
            while self.queues and self._connection is None:
                await asyncio.sleep(pause)
                try:
                    await self._connected()
                except Exception as exc:
                    log.debug("Redis pub/sub reconnect failed: %r", exc)
                    pause = min(max(pause * 2, 0.1), RETRY_MAX_S)
                else:
                    log.warning("Redis pub/sub connection restored")
        finally:
            self._retrying = None

    async def _ping_forever(self) -> None:
        # A connection that stopped answering (a network partition sends no reset)
        # would otherwise wait forever. Subscribed, PING is answered `[b"pong", b""]`;
        # any data received after it was sent will do.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_EVERY_S)
            connection = self._connection
            if connection is None:
                continue
            sent_at = loop.time()
            connection.send("PING")
            await asyncio.sleep(TIMEOUT_S)
            if connection is self._connection and connection.data_at < sent_at:
                log.warning("Redis pub/sub connection silent for %ss: reconnecting", TIMEOUT_S)
                connection.close()


_subscribers: PerLoop[Subscriber] = PerLoop()


def get_subscriber() -> Subscriber:
    """The running loop's subscriber to `REDIS_URL`."""
    return _subscribers.get(lambda: Subscriber(settings.REDIS_URL))
