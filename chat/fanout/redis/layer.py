"""The Redis backend: conversation events reach every process of the deployment.

Each group and each channel is a Redis pub/sub channel; a process subscribes to it once,
on its own connection (`subscriber.py`), while any of its channels or listeners want it,
and publishes on another (`lane.py`), where a delta's replay-log append rides in the same
write as its PUBLISH. Both reconnect by themselves; what was published while Redis was
away is lost (at most once), and viewers heal from the replay log by snapshot. The stores
use a redis-py client (`client.py`, `stores.py`).
"""

import functools
from typing import Any

import redis.asyncio as aioredis

from chat.fanout import events, groups
from chat.fanout.layer import ConversationLayer, LogEntry, LoopState
from chat.fanout.redis import stores
from chat.fanout.redis.client import make_client
from chat.fanout.redis.lane import Lane
from chat.fanout.redis.subscriber import Subscriber
from chat.per_loop import PerLoop


class _RedisState(LoopState):
    layer: "RedisLayer"

    def __init__(self, layer: "RedisLayer") -> None:
        super().__init__(layer)
        self.subscriber = Subscriber(layer.url, on_resubscribed=self.resubscribed)
        self.lane = Lane(layer.url)
        self._handlers: dict[tuple[str, str], Any] = {}

    async def _publish_group(self, group: str, message: dict[str, Any]) -> None:
        command = ("PUBLISH", self.layer.group_channel(group), events.serialize(message))
        await self._round_trip(command)

    async def _publish_channel(self, channel: str, message: dict[str, Any]) -> None:
        command = ("PUBLISH", self.layer.channel_channel(channel), events.serialize(message))
        await self._round_trip(command)

    async def _round_trip(self, *commands) -> list[object]:
        try:
            return await self.lane.round_trip(*commands)
        except ConnectionError:
            # The lane's connection was found broken (a Redis restart): the failure
            # closed it, and the retry connects anew.
            return await self.lane.round_trip(*commands)

    def publish_logged(self, group: str, message: dict[str, Any], entry: LogEntry):
        commands = stores.log_append_commands(self.layer.prefix, entry)
        commands.append(("PUBLISH", self.layer.group_channel(group), events.serialize(message)))
        sent = self.lane.send_now(*commands)
        if sent is not None:
            return self.lane.confirm(sent)
        return self.lane.round_trip(*commands)

    async def _watch(self, name: str, kind: str) -> None:
        if kind == "group":
            redis_channel, on_message = self.layer.group_channel(name), self._on_group
        else:
            redis_channel, on_message = self.layer.channel_channel(name), self._on_channel
        handler = self._handlers[kind, name] = functools.partial(on_message, name)
        try:
            await self.subscriber.subscribe(redis_channel, handler)
        except BaseException:
            self._handlers.pop((kind, name), None)
            raise

    def _unwatch(self, name: str, kind: str) -> None:
        handler = self._handlers.pop((kind, name), None)
        if handler is None:
            return
        channel = (
            self.layer.group_channel(name)
            if kind == "group"
            else (self.layer.channel_channel(name))
        )
        self.subscriber.unsubscribe(channel, handler)

    def _on_group(self, group: str, payload: bytes) -> None:
        self.deliver(group, events.deserialize(payload))

    def _on_channel(self, channel: str, payload: bytes) -> None:
        self.deliver_to_channel(channel, events.deserialize(payload))

    async def close(self) -> None:
        await super().close()
        self.subscriber.close()
        self.lane.close()


class RedisLayer(ConversationLayer):
    """Conversation events through one Redis (`url`), shared by every process."""

    def __init__(
        self,
        *,
        url: str,
        max_connections: int = 50,
        pool_wait_s: float = 10.0,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        self.url = url
        self._max_connections, self._pool_wait_s = max_connections, pool_wait_s
        self._clients: PerLoop[aioredis.Redis] = PerLoop()
        self.replay = stores.RedisReplayLog(self.prefix, self.client)
        self.presence = stores.RedisPresence(self.prefix, self.client)
        self.connections = stores.RedisConnections(self.prefix, self.client)

    def _new_state(self) -> LoopState:
        return _RedisState(self)

    def client(self) -> aioredis.Redis:
        """The running loop's redis-py client for the stores."""
        return self._clients.get(
            lambda: make_client(
                self.url, max_connections=self._max_connections, pool_wait_s=self._pool_wait_s
            )
        )

    def group_channel(self, group: str) -> str:
        return f"{self.prefix}:group:{groups.hash_tag(group)}"

    def channel_channel(self, channel: str) -> str:
        return f"{self.prefix}:channel:{channel}"

    async def ping(self) -> bool:
        return bool(await self.client().ping())
