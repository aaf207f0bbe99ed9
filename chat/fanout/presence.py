"""Who is viewing a conversation now: one entry per open socket or event stream, kept
by the layer's presence store (every process's, on Redis), announced to its viewers.

A removal the store refuses (Redis restarting) is retried in the background for a while
and then announced; on Redis an entry nobody confirms for a few minutes is not shown
either, so presence heals itself.
"""

import asyncio
import logging

from django.conf import settings

from chat import protocol
from chat.fanout import get_layer
from chat.fanout.announcer import Announcer
from chat.fanout.publish import publish
from chat.per_loop import PerLoop

log = logging.getLogger(__name__)

# Retries of a leave that the store refused, in seconds.
LEAVE_RETRIES_S = (0.5, 2.0, 8.0, 30.0)

_retrying: set[asyncio.Task[None]] = set()
# One per event loop: its tasks belong to their loop (tests run many loops).
_announcers: PerLoop[Announcer] = PerLoop()


async def join(conversation_id: str, viewer_id: str, username: str) -> None:
    await get_layer().presence.join(conversation_id, viewer_id, username)


async def refresh(conversation_id: str, viewer_id: str, username: str) -> None:
    """Confirm a viewer still here (called periodically for every open one)."""
    await get_layer().presence.refresh(conversation_id, viewer_id, username)


async def leave(conversation_id: str, viewer_id: str, username: str) -> None:
    """Remove a viewer; a removal the store refuses is retried in the background."""
    try:
        await get_layer().presence.leave(conversation_id, viewer_id, username)
    except Exception:
        task = asyncio.get_running_loop().create_task(
            _retry_leave(conversation_id, viewer_id, username)
        )
        _retrying.add(task)
        task.add_done_callback(_retrying.discard)
        raise


async def _retry_leave(conversation_id: str, viewer_id: str, username: str) -> None:
    for pause in LEAVE_RETRIES_S:
        await asyncio.sleep(pause)
        try:
            await get_layer().presence.leave(conversation_id, viewer_id, username)
        except Exception as exc:
            log.debug("presence leave retry failed: %r", exc)
            continue
        await announce(conversation_id)
        return
    log.warning("presence entry of %s left to expire", username)


async def viewers(conversation_id: str) -> list[dict[str, str]]:
    """Distinct usernames viewing now, sorted (one entry per user, not per tab)."""
    names = await get_layer().presence.usernames(conversation_id)
    return [{"username": name} for name in sorted(names)]


async def frame_text(conversation_id: str) -> str:
    """The `presence` frame of a conversation, serialized."""
    return protocol.dumps({"type": "presence", "viewers": await viewers(conversation_id)})


async def _publish(conversation_id: str) -> None:
    await publish(
        conversation_id, {"type": "chat.frame", "text": await frame_text(conversation_id)}
    )


async def announce(conversation_id: str) -> bool:
    """The viewers of a conversation changed: tell every viewer, now (True) or with the
    other changes of the same PRESENCE_INTERVAL_MS (False)."""
    announcer = _announcers.get(lambda: Announcer(_publish, settings.PRESENCE_INTERVAL_MS / 1000))
    return await announcer.changed(conversation_id)
