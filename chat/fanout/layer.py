"""The project's channel layer: one seam for every conversation event.

`ConversationLayer` implements Channels' channel layer API, so a plain Channels consumer
works on it, and adds what the app needs beside it:

* **Listeners**, the fast path: `listen(group, callback)` registers a callback that gets
  every event of the group once per process, decoded once, in order, as it arrives; the
  hub hands each to the process's sockets of that conversation. Plain consumers still
  receive on their own channel.
* **`publish_logged`**: an answer's delta appended to its replay log and published, log
  first, in one round trip, started at once when nothing needs awaiting.
* **Stores** shared by every process of the deployment: the replay log of a streaming
  answer (`replay`), who views a conversation (`presence`) and each user's open sockets
  and streams (`connections`).

Two backends implement it, chosen once, by `CHANNEL_LAYERS` in the settings:
`chat.fanout.memory.InProcessLayer` (one process) and `chat.fanout.redis.layer.RedisLayer`
(every process of a deployment, through Redis). Nothing else in the app decides between
routes. Everything that belongs to an event loop (queues, connections) is kept per loop.
"""

import asyncio
import logging
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from chat.fanout import events
from chat.ops import metrics
from chat.per_loop import PerLoop

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]
# How long a replay log outlives its stream: late `sync`s still find it, then it is freed.
FINISHED_LOG_TTL_S = 120
# How often a process confirms its own viewers in the shared stores (presence, connection
# counts); entries unconfirmed for much longer belong to a process that is gone.
LIVENESS_REFRESH_S = 60.0
# A channel nobody has received on for this long is forgotten with its group memberships
# (a consumer that ended without leaving its groups).
IDLE_CHANNEL_EXPIRY_S = 300.0


@dataclass(frozen=True)
class LogEntry:
    """One delta of a streaming answer, for its replay log."""

    conversation_id: str
    message_id: str
    seq: int
    text: str


class ReplayLog(Protocol):
    """Every published delta of a streaming answer, in `seq` order."""

    async def read(self, conversation_id: str, message_id: str) -> tuple[str, int] | None: ...

    async def entries(
        self, conversation_id: str, message_id: str, after_seq: int
    ) -> list[tuple[int, str]] | None: ...

    async def rewrite(self, entry: LogEntry, texts: list[str]) -> None: ...

    async def finish(self, conversation_id: str, message_id: str) -> None: ...


class Presence(Protocol):
    """Who has a conversation open, one entry per socket or event stream."""

    async def join(self, conversation_id: str, viewer_id: str, username: str) -> None: ...

    async def refresh(self, conversation_id: str, viewer_id: str, username: str) -> None: ...

    async def leave(self, conversation_id: str, viewer_id: str, username: str) -> None: ...

    async def usernames(self, conversation_id: str) -> set[str]: ...


class Connections(Protocol):
    """Each user's open sockets and event streams, across processes."""

    async def open(self, user_id: int, viewer_id: str) -> int: ...

    async def refresh(self, user_id: int, viewer_id: str) -> None: ...

    async def close(self, user_id: int, viewer_id: str) -> None: ...

    async def count(self, user_id: int) -> int: ...


@dataclass(eq=False)
class _Channel:
    queue: asyncio.Queue[dict[str, Any]]
    groups: set[str] = field(default_factory=set)
    receivers: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class LoopState:
    """What a layer holds for one event loop: its channels, their groups, the listeners,
    and the transport to other processes (`_publish_group`, `_publish_channel`, `_watch`
    and `_unwatch`, given by each backend)."""

    def __init__(self, layer: "ConversationLayer") -> None:
        self.layer = layer
        self.channels: dict[str, _Channel] = {}
        self.members: dict[str, set[str]] = {}
        self.listeners: dict[str, list[Listener]] = {}
        # What is watched, or being watched: later callers wait for the first's answer.
        self._watched: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def _ensure_watched(self, name: str, kind: str) -> None:
        key = (kind, name)
        watched = self._watched.get(key)
        if watched is None:
            watched = self._watched[key] = asyncio.get_running_loop().create_future()
            try:
                await self._watch(name, kind)
            except BaseException as exc:
                del self._watched[key]
                watched.set_exception(exc)
                watched.exception()  # retrieved: the callers waiting on it raise it
                raise
            watched.set_result(None)
        await asyncio.shield(watched)

    def _stop_watching(self, name: str, kind: str) -> None:
        if self._watched.pop((kind, name), None) is not None:
            self._unwatch(name, kind)

    # -- transport, per backend --

    async def _publish_group(self, group: str, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _publish_channel(self, channel: str, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _watch(self, name: str, kind: str) -> None:
        """Start receiving what is published to a group or channel (`kind`)."""

    def _unwatch(self, name: str, kind: str) -> None:
        """Stop receiving it."""

    def publish_logged(self, group: str, message: dict[str, Any], entry: LogEntry) -> Awaitable:
        raise NotImplementedError

    # -- local delivery --

    def deliver(self, group: str, message: dict[str, Any]) -> None:
        """An event of `group`, to this process: every listener, then every member."""
        for listener in tuple(self.listeners.get(group, ())):
            try:
                listener(message)
            except Exception:
                # One listener's bug must not cost the others (or the connection) the event.
                log.exception("a listener of %s failed", group)
        for channel in tuple(self.members.get(group, ())):
            self._put(channel, message, strict=False)

    def resubscribed(self) -> None:
        """This process's subscriptions were made again after a lost connection: every
        listener of every group is told that events may be missing (`events.resync`).
        Plain channels are not: the channel layer API is at most once."""
        for group in tuple(self.listeners):
            for listener in tuple(self.listeners.get(group, ())):
                try:
                    listener(events.resync())
                except Exception:
                    log.exception("a listener of %s failed", group)

    def deliver_to_channel(self, channel: str, message: dict[str, Any]) -> None:
        self._put(channel, message, strict=False)

    def _put(self, name: str, message: dict[str, Any], *, strict: bool) -> None:
        channel = self.channels.get(name)
        if channel is None:
            return  # nobody here receives on it (any more)
        try:
            channel.queue.put_nowait(message)
        except asyncio.QueueFull:
            # At most once, as the channel layer spec says of a full channel; a socket
            # that misses a delta sees the gap and heals it with a snapshot.
            metrics.layer_drops.inc()
            if strict:
                raise ChannelFull(name) from None

    def channel(self, name: str) -> _Channel:
        found = self.channels.get(name)
        if found is None:
            found = self.channels[name] = _Channel(asyncio.Queue(self.layer.capacity))
        return found

    # -- the channel layer API --

    async def send(self, name: str, message: dict[str, Any]) -> None:
        if name in self.channels:
            self._put(name, message, strict=True)
        else:
            await self._publish_channel(name, message)

    async def receive(self, name: str) -> dict[str, Any]:
        channel = self.channel(name)
        await self._ensure_watched(name, "channel")
        channel.receivers += 1
        try:
            return await channel.queue.get()
        finally:
            channel.receivers -= 1
            channel.idle_since = time.monotonic()

    async def new_channel(self, prefix: str) -> str:
        self._forget_idle_channels()
        name = f"{prefix}.{self.layer.process}!{_random_suffix()}"
        self.channel(name)
        try:
            await self._ensure_watched(name, "channel")
        except BaseException:
            del self.channels[name]
            raise
        return name

    async def group_add(self, group: str, name: str) -> None:
        channel = self.channel(name)
        try:
            await self._ensure_watched(group, "group")
        except BaseException:
            self._unwatch_if_unused(group)
            raise
        channel.groups.add(group)
        self.members.setdefault(group, set()).add(name)

    async def group_discard(self, group: str, name: str) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.groups.discard(group)
        members = self.members.get(group)
        if members is None or name not in members:
            return
        members.discard(name)
        self._unwatch_if_unused(group)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._publish_group(group, message)

    async def listen(self, group: str, listener: Listener) -> None:
        try:
            await self._ensure_watched(group, "group")
        except BaseException:
            self._unwatch_if_unused(group)
            raise
        self.listeners.setdefault(group, []).append(listener)

    def unlisten(self, group: str, listener: Listener) -> None:
        listeners = self.listeners.get(group)
        if listeners is None or listener not in listeners:
            return
        listeners.remove(listener)
        self._unwatch_if_unused(group)

    def _unwatch_if_unused(self, group: str) -> None:
        if self.members.get(group) or self.listeners.get(group):
            return
        self.members.pop(group, None)
        self.listeners.pop(group, None)
        self._stop_watching(group, "group")

    def _forget_idle_channels(self) -> None:
        """Channels whose receiver went away without leaving (a consumer that crashed)
        are forgotten after IDLE_CHANNEL_EXPIRY_S, with their groups."""
        cutoff = time.monotonic() - IDLE_CHANNEL_EXPIRY_S
        for name, channel in list(self.channels.items()):
            if channel.receivers == 0 and channel.idle_since < cutoff:
                del self.channels[name]
                self._stop_watching(name, "channel")
                for group in channel.groups:
                    members = self.members.get(group)
                    if members is not None:
                        members.discard(name)
                        self._unwatch_if_unused(group)

    async def close(self) -> None:
        """Forget everything of this loop (flush)."""
        for kind, name in list(self._watched):
            self._stop_watching(name, kind)
        self.channels.clear()
        self.members.clear()
        self.listeners.clear()


def _random_suffix() -> str:
    # SystemRandom: a test that seeds `random` must not make two channels alike.
    return "".join(_SYSTEM_RANDOM.choices(string.ascii_letters, k=12))


_SYSTEM_RANDOM = random.SystemRandom()


class ConversationLayer(BaseChannelLayer):
    """The channel layer API (send, receive, new_channel; groups; flush) with listeners,
    logged publishing and the shared stores (see the module docstring)."""

    extensions = ["groups", "flush"]

    def __init__(self, *, prefix: str = "chat", capacity: int = 1000, expiry: int = 86400):
        super().__init__(expiry=expiry, capacity=capacity)
        self.prefix = prefix
        self.process = _random_suffix()
        self._states: PerLoop[LoopState] = PerLoop()
        self.replay: ReplayLog
        self.presence: Presence
        self.connections: Connections

    def _state(self) -> LoopState:
        return self._states.get(self._new_state)

    def _new_state(self) -> LoopState:
        raise NotImplementedError

    # ---- Channel layer API ------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message onto a channel (ChannelFull when a local one is full)."""
        self.require_valid_channel_name(channel)
        await self._state().send(channel, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of a channel; waits for one."""
        self.require_valid_channel_name(channel)
        return await self._state().receive(channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new channel name, unique to this process and loop, ready to receive on."""
        return await self._state().new_channel(prefix)

    # ---- Groups extension -------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._state().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._state().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send a message to every channel and listener of the group, in every process;
        a full channel misses it (at most once), never the others."""
        self.require_valid_group_name(group)
        await self._state().group_send(group, message)

    # ---- Flush extension --------------------------------------------------------------

    async def flush(self) -> None:
        """Forget this loop's channels, groups and listeners."""
        state = self._states.pop()
        if state is not None:
            await state.close()

    # ---- Listeners: the fast path -----------------------------------------------------

    async def listen(self, group: str, listener: Listener) -> None:
        """Call `listener` with every event of `group` this process receives, once per
        event, in order, as it arrives (it must not block or await); returns once events
        published after it will reach it. Raises when the transport cannot subscribe."""
        self.require_valid_group_name(group)
        await self._state().listen(group, listener)

    def unlisten(self, group: str, listener: Listener) -> None:
        """Stop calling `listener`; the group is left once nothing of this process wants it."""
        self._state().unlisten(group, listener)

    # ---- Conversation events --------------------------------------------------------

    def publish_logged(self, group: str, message: dict[str, Any], entry: LogEntry) -> Awaitable:
        """Append `entry` to its answer's replay log, then send `message` to `group`: one
        round trip, log first, so a viewer that sees the delta live could also have read
        it from the log. The write starts now when nothing needs awaiting first; the
        result completes once it is confirmed and raises if it failed (neither, or only
        the append, may then have happened)."""
        return self._state().publish_logged(group, message, entry)

    def wants(self, group: str) -> bool:
        """Whether this process (this loop) receives the group's events now."""
        state = self._state()
        return bool(state.members.get(group) or state.listeners.get(group))

    async def ping(self) -> bool:
        """Whether the transport answers (the in-process one always does)."""
        return True
