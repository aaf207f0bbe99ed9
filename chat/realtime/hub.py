"""One listener per group per process, shared by the process's viewers of it.

A socket (or event stream) joins the hub rather than the layer: the hub listens on the
group once (`ConversationLayer.listen`) and hands each event to the group's viewers in
turn, as the layer receives it. Most viewers take it without awaiting anything (a frame
written straight to the socket, `deliver_now`); from the first that needs awaiting (a
snapshot not sent yet, a gap, a closing socket), the event waits for the group's pump
task, and every later event of the group queues behind it until the pump is done, so
each viewer sees the group's events in order.
"""

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat.fanout import get_layer
from chat.per_loop import PerLoop

log = logging.getLogger(__name__)


class Member(Protocol):
    def deliver_now(self, event: dict[str, Any]) -> bool: ...

    async def deliver(self, event: dict[str, Any]) -> None: ...


Delivery = tuple[dict[str, Any], list[Member]]  # an event and the viewers still to get it


@dataclass(eq=False)
class _Group:
    ready: asyncio.Future[None]
    members: dict[Member, None] = field(default_factory=dict)  # insertion-ordered set
    backlog: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    busy: bool = False  # the pump is delivering from the backlog
    pump: asyncio.Task[None] | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # the pump awaits its input
    listener: Any = None


class Hub:
    """The groups this process's viewers belong to."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    async def join(self, group: str, member: Member) -> None:
        """Add a viewer; returns once the group's events reach it (join before reading
        a snapshot, so no event falls between them)."""
        entry = self._groups.get(group)
        if entry is None:
            entry = _Group(ready=asyncio.get_running_loop().create_future())
            self._groups[group] = entry
            entry.listener = functools.partial(self._receive, group, entry)
            try:
                await get_layer().listen(group, entry.listener)
            except BaseException as exc:
                self._groups.pop(group, None)
                entry.ready.set_exception(exc)
                entry.ready.exception()  # retrieved here; waiting joiners get it raised
                raise
            entry.pump = asyncio.create_task(self._pump(entry), name=f"hub {group}")
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
        get_layer().unlisten(group, entry.listener)
        if asyncio.current_task() is entry.pump:
            # The last viewer left while handling this group's own event (member removed,
            # conversation deleted): the pump is stopped once it has finished.
            task = asyncio.get_running_loop().create_task(self._stop(entry))
            _stopping.add(task)
            task.add_done_callback(_stopping.discard)
        else:
            await self._stop(entry)

    async def _stop(self, entry: _Group) -> None:
        if entry.pump is not None:
            await entry.idle.wait()  # cancelled only while it waits, never mid-delivery
            entry.pump.cancel()
            await asyncio.gather(entry.pump, return_exceptions=True)

    def _receive(self, group: str, entry: _Group, event: dict[str, Any]) -> None:
        """An event of the group, as the layer receives it: handed to every viewer that
        takes it without awaiting; from the first that does not, it waits for the pump,
        and so does every event after it until the pump is done."""
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

    async def _pump(self, entry: _Group) -> None:
        while True:
            entry.idle.set()
            event, members = await entry.backlog.get()
            entry.idle.clear()
            entry.busy = True
            try:
                await _deliver(event, members)
            finally:
                entry.busy = False


async def _deliver(event: dict[str, Any], members: list[Member]) -> None:
    for member in members:
        try:
            # Most events to most viewers need no awaiting: no coroutine per viewer.
            if not member.deliver_now(event):
                await member.deliver(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _delivery_failed(event, exc)


def _delivery_failed(event: dict[str, Any], exc: Exception) -> None:
    # Typically a socket that closed while this event was on its way (its disconnect is
    # still queued); the others still get theirs.
    log.warning("delivering %s to a viewer failed: %r", event.get("type"), exc)


_stopping: set[asyncio.Task[None]] = set()

# One hub per event loop: its tasks belong to their loop (tests run many).
_hubs: PerLoop[Hub] = PerLoop()


def get_hub() -> Hub:
    return _hubs.get(Hub)
