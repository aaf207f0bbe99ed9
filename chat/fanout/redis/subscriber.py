"""A Redis pub/sub connection of the layer's: one per process and loop, each Redis
channel subscribed once, every message parsed once (hiredis) and handed to its
subscribers' callbacks as it is read.

Every process receives every event of every group it wants here, so a message costs
one parse and one callback, nothing per message beyond that.

A lost connection is retried at once and then with a growing pause (at most a second);
on reconnect every channel is subscribed again, and once Redis has confirmed them all,
`on_resubscribed` is called. What was published in between is lost (at most once): the
layer tells its listeners, whose viewers send their clients a snapshot
(chat/fanout/layer.py, chat/realtime/viewer.py). A connection that stops answering is
noticed by a PING every `PING_EVERY_S` and dropped.
"""

import asyncio
import logging
from collections.abc import Callable

from chat.fanout.redis import resp

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # a subscription's confirmation; a PING's answer
PING_EVERY_S = 15.0
RETRY_MAX_S = 1.0

OnMessage = Callable[[bytes], None]


class Subscriber:
    """This process's subscriptions (per event loop: sockets belong to their loop)."""

    def __init__(self, url: str, on_resubscribed: Callable[[], None] | None = None) -> None:
        self._url = url
        self._on_resubscribed = on_resubscribed
        self.handlers: dict[bytes, list[OnMessage]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._link = resp.OnDemand(self._connect)
        self._retrying: asyncio.Task[None] | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str, on_message: OnMessage) -> None:
        """Subscribe `on_message` to a Redis channel: it is called with each message's
        payload, in order, as the connection reads it (so it must not raise or block).
        Returns once Redis confirms; raises when Redis cannot be reached or does not."""
        name = channel.encode()
        connection = await self._link.get()
        self.handlers.setdefault(name, []).append(on_message)
        confirmed = self._confirmations.get(name)
        if confirmed is None:
            confirmed = self._confirmations[name] = asyncio.get_running_loop().create_future()
            connection.send(("SUBSCRIBE", name))
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.shield(confirmed)
        except BaseException:
            self.unsubscribe(channel, on_message)
            raise

    def unsubscribe(self, channel: str, on_message: OnMessage) -> None:
        """Stop calling `on_message`; the channel is unsubscribed once nothing else of
        this process listens to it (a conversation left and joined again at once)."""
        name = channel.encode()
        handlers = self.handlers.get(name)
        if handlers is None or on_message not in handlers:
            return
        handlers.remove(on_message)
        if handlers:
            return
        del self.handlers[name]
        self._confirmations.pop(name, None)
        connection = self._link.connection
        if connection and connection.is_open:
            connection.send(("UNSUBSCRIBE", name))

    def close(self) -> None:
        """Forget every subscription and close the connection (a flush)."""
        self.handlers.clear()
        for task in (self._retrying, self._pinging):
            if task is not None:
                task.cancel()
        connection = self._link.connection
        if connection is not None:
            connection.close()

    def _push(self, reply: list) -> None:
        # `[b"message", channel, payload]`, the common case; or `[b"subscribe", channel,
        # count]`, which confirms a channel; or an UNSUBSCRIBE or PING answer.
        if reply[0] == b"message":
            for on_message in tuple(self.handlers.get(reply[1], ())):
                try:
                    on_message(reply[2])
                except Exception:
                    # A callback's bug must not cost the connection the replies after it.
                    log.exception("handling a message of %r failed", reply[1])
        elif reply[0] == b"subscribe":
            confirmed = self._confirmations.get(reply[1])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _lost(self, connection: resp.RespConnection) -> None:
        if connection is not self._link.connection:
            return
        self._link.connection = None
        error = ConnectionError("Redis connection lost")
        for name, confirmed in list(self._confirmations.items()):
            if not confirmed.done():
                confirmed.set_exception(error)
                confirmed.exception()  # retrieved: the subscriber waiting on it raises
            del self._confirmations[name]
        if self.handlers and self._retrying is None:
            log.warning("Redis pub/sub connection %s lost: reconnecting", connection.client_id)
            self._retrying = asyncio.get_running_loop().create_task(self._reconnect())

    async def _connect(self) -> resp.RespConnection:
        connection = await resp.connect(self._url, name="livechat-hub", on_push=self._push)
        connection.on_lost = self._lost
        if self.handlers:
            # Channels that were subscribed before a reconnect: all again, at once.
            names = list(self.handlers)
            for name in names:
                self._confirmations.setdefault(name, asyncio.get_running_loop().create_future())
            connection.send(("SUBSCRIBE", *names))
        if self._pinging is None or self._pinging.done():
            self._pinging = asyncio.get_running_loop().create_task(self._ping_forever())
        return connection

    async def _reconnect(self) -> None:
        pause = 0.0
        try:
            while self.handlers and self._link.connection is None:
                await asyncio.sleep(pause)
                try:
                    await self._link.get()
                    async with asyncio.timeout(TIMEOUT_S):
                        await asyncio.gather(
                            *(asyncio.shield(f) for f in self._confirmations.values())
                        )
                except Exception as exc:
                    log.debug("Redis pub/sub reconnect failed: %r", exc)
                    pause = min(max(pause * 2, 0.1), RETRY_MAX_S)
                    connection = self._link.connection
                    if connection is not None:
                        connection.close()  # not every channel confirmed: start over
                    continue
                log.warning("Redis pub/sub connection restored")
                if self._on_resubscribed is not None:
                    self._on_resubscribed()
        finally:
            self._retrying = None

    async def _ping_forever(self) -> None:
        # A connection that stopped answering (a network partition sends no reset)
        # would otherwise wait forever. Subscribed, PING is answered `[b"pong", b""]`;
        # any data received after it was sent will do.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_EVERY_S)
            connection = self._link.connection
            if connection is None or not connection.is_open:
                continue
            sent_at = loop.time()
            connection.send(("PING",))
            await asyncio.sleep(TIMEOUT_S)
            if connection is self._link.connection and connection.data_at < sent_at:
                log.warning("Redis pub/sub connection silent for %ss: reconnecting", TIMEOUT_S)
                connection.close()
