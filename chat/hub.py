"""One channel-layer subscription per conversation per process, shared by its sockets.

Each socket used to join the conversation group with its own layer channel, so every
group event cost, per socket: a queue put and get, a msgpack decode, a task wake-up and
a round of `asyncio.wait` in Channels' dispatch loop, several times what sending the
frame costs. The hub receives each event once per process and hands it to the local
sockets of the conversation in turn (bench/REPORT.md measures both). Events keep their
order: one pump per group delivers them one after another. On the Redis pub/sub layer
the hub subscribes to the group's Redis channel itself, on one connection of its own
(chat/redis_subscriber.py); on other layers it joins the group with a layer channel.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.layers import get_channel_layer

from chat import fanout
from chat.per_loop import PerLoop
from chat.redis_subscriber import get_subscriber

log = logging.getLogger(__name__)


class Member(Protocol):
    def deliver_now(self, event: dict[str, Any]) -> bool: ...

    async def deliver(self, event: dict[str, Any]) -> None: ...


@dataclass(eq=False)
class _Group:
    ready: asyncio.Future[None]
    members: dict[Member, None] = field(default_factory=dict)  # insertion-ordered set
    channel: str = ""  # the layer channel in the group, or
    redis_channel: str | None = None  # the Redis channel subscribed to directly
    payloads: asyncio.Queue[bytes] | None = None  # ... and its messages
    pump: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # the pump awaits the layer


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
                    entry.payloads = await get_subscriber().subscribe(entry.redis_channel)
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
        if entry.redis_channel is not None:
            get_subscriber().unsubscribe(entry.redis_channel)
            return
        try:
            await get_channel_layer().group_discard(group, entry.channel)
        except Exception:
            log.debug("group_discard of %s failed", group, exc_info=True)

    async def _pump(self, group: str, entry: _Group) -> None:
        layer = get_channel_layer()
        payloads = entry.payloads
        while True:
            entry.idle.set()
            try:
                if payloads is not None:
                    event = fanout.deserialize(await payloads.get())
                else:
                    event = await layer.receive(entry.channel)
                entry.idle.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("receiving for %s failed", group, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for member in list(entry.members):
                try:
                    # Most events to most sockets need no awaiting (a frame written
                    # straight to the socket): no coroutine per socket for those.
                    if not member.deliver_now(event):
                        await member.deliver(event)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Typically a socket that closed while this event was on its way
                    # (its disconnect is still queued); the others still get theirs.
                    log.warning("delivering %s to a socket failed: %r", event.get("type"), exc)


_stopping: set[asyncio.Task[None]] = set()

# One hub per event loop: layer channels and tasks belong to their loop (tests run many).
_hubs: PerLoop[Hub] = PerLoop()


def get_hub() -> Hub:
    return _hubs.get(Hub)
