"""One channel-layer subscription per conversation per process, shared by its sockets.

Each socket used to join the conversation group with its own layer channel, so every
group event cost, per socket: a queue put and get, a msgpack decode, a task wake-up and
a round of `asyncio.wait` in Channels' dispatch loop, several times what sending the
frame costs. The hub receives each event once per process and hands it to the local
sockets of the conversation in turn (bench/REPORT.md measures both). Events keep their
order for every socket. On the Redis pub/sub layer the hub subscribes to the group's
Redis channel itself, on one connection of its own (chat/fanout/redis_subscriber.py), and
hands each event to the sockets as the connection reads it: most sockets take it
without awaiting anything (a frame written straight to the socket), and only what must
be awaited waits for the group's pump task, with every later event queued behind it.
On other layers the hub joins the group with a layer channel and the pump receives.
"""

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.layers import get_channel_layer

from chat.fanout import publish as fanout
from chat.fanout.redis_subscriber import get_subscriber
from chat.per_loop import PerLoop

log = logging.getLogger(__name__)


class Member(Protocol):
    def deliver_now(self, event: dict[str, Any]) -> bool: ...

    async def deliver(self, event: dict[str, Any]) -> None: ...


Delivery = tuple[dict[str, Any], list[Member]]  # an event and the sockets still to get it


@dataclass(eq=False)
class _Group:
    ready: asyncio.Future[None]
    members: dict[Member, None] = field(default_factory=dict)  # insertion-ordered set
    channel: str = ""  # the layer channel in the group, or
    redis_channel: str | None = None  # the Redis channel subscribed to directly,
    on_message: Callable[[bytes], None] | None = None  # ... with this callback, and
    backlog: asyncio.Queue[Delivery] | None = None  # ... what waits for the pump
    busy: bool = False  # the pump is delivering from the backlog
    pump: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # the pump awaits its input


class Hub:
    """The conversation groups this process's sockets belong to."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    async def join(self, group: str, member: Member) -> None:
        """Add a socket; returns once the group's events reach it (join before reading
        a snapshot, as with the layer's own group_add)."""
        entry = self._groups.get(group)
        if entry is None:
            entry = _Group(ready=asyncio.get_running_loop().create_future())
            self._groups[group] = entry
            layer = get_channel_layer()
            try:
                entry.redis_channel = fanout.group_pubsub_channel(group)
                if entry.redis_channel is not None:
                    entry.backlog = asyncio.Queue()
                    entry.on_message = functools.partial(self._receive, group, entry)
                    await get_subscriber().subscribe(entry.redis_channel, entry.on_message)
                else:
                    entry.channel = await layer.new_channel()
                    await layer.group_add(group, entry.channel)
            except BaseException as exc:
                self._groups.pop(group, None)
                entry.ready.set_exception(exc)
                entry.ready.exception()  # retrieved here; waiting joiners get it raised
                raise
            entry.pump = asyncio.create_task(self._pump(group, entry), name=f"hub {group}")
            entry.ready.set_result(None)
        await asyncio.shield(entry.ready)
        entry.members[member] = None

    async def leave(self, group: str, member: Member) -> None:
        entry = self._groups.get(group)
        if entry is None:
            return
        entry.members.pop(member, None)
        if entry.members or not entry.ready.done():
            return
        self._groups.pop(group, None)
        if asyncio.current_task() is entry.pump:
            # The last socket left while handling this group's own event (member
            # removed, conversation deleted): the pump is stopped once it has finished.
            task = asyncio.get_running_loop().create_task(self._stop(group, entry))
            _stopping.add(task)
            task.add_done_callback(_stopping.discard)
        else:
            await self._stop(group, entry)

    async def refresh(self, group: str) -> None:
        """Renew the group membership (in-memory and core Redis layers expire it)."""
        entry = self._groups.get(group)
        if entry is not None and entry.channel:
            await get_channel_layer().group_add(group, entry.channel)

    async def _stop(self, group: str, entry: _Group) -> None:
        if entry.pump is not None:
            # Cancelled only while it waits for the layer, never mid-delivery; the
            # pub/sub layer unsubscribes a channel when a receive on it is cancelled.
            await entry.idle.wait()
            entry.pump.cancel()
            await asyncio.gather(entry.pump, return_exceptions=True)
        if entry.on_message is not None:
            get_subscriber().unsubscribe(entry.redis_channel, entry.on_message)
            return
        try:
            await get_channel_layer().group_discard(group, entry.channel)
        except Exception:
            log.debug("group_discard of %s failed", group, exc_info=True)

    def _receive(self, group: str, entry: _Group, payload: bytes) -> None:
        """A message of the group's Redis channel, as the subscriber reads it: handed to
        every socket that takes it without awaiting; from the first that does not, it
        waits for the pump, and so does every event after it until the pump is done."""
        try:
            event = fanout.deserialize(payload)
        except Exception:
            log.warning("an event for %s could not be read", group, exc_info=True)
            return
        members = list(entry.members)
        if entry.busy or not entry.backlog.empty():
            entry.backlog.put_nowait((event, members))
            return
        for index, member in enumerate(members):
            try:
                if member.deliver_now(event):
                    continue
            except Exception as exc:
                _delivery_failed(event, exc)
                continue
            entry.backlog.put_nowait((event, members[index:]))
            return

    async def _pump(self, group: str, entry: _Group) -> None:
        layer = get_channel_layer()
        backlog = entry.backlog
        while True:
            entry.idle.set()
            try:
                if backlog is not None:
                    event, members = await backlog.get()
                else:
                    event, members = await layer.receive(entry.channel), None
                entry.idle.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("receiving for %s failed", group, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            entry.busy = True
            try:
                await _deliver(event, list(entry.members) if members is None else members)
            finally:
                entry.busy = False


async def _deliver(event: dict[str, Any], members: list[Member]) -> None:
    for member in members:
        try:
            # Most events to most sockets need no awaiting (a frame written straight to
            # the socket): no coroutine per socket for those.
            if not member.deliver_now(event):
                await member.deliver(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _delivery_failed(event, exc)


def _delivery_failed(event: dict[str, Any], exc: Exception) -> None:
    # Typically a socket that closed while this event was on its way (its disconnect is
    # still queued); the others still get theirs.
    log.warning("delivering %s to a socket failed: %r", event.get("type"), exc)


_stopping: set[asyncio.Task[None]] = set()

# One hub per event loop: layer channels and tasks belong to their loop (tests run many).
_hubs: PerLoop[Hub] = PerLoop()


def get_hub() -> Hub:
    return _hubs.get(Hub)
