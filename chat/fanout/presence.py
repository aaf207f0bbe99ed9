"""Who is viewing a conversation now, across processes (Redis) or in this process.

With Redis every open socket or event stream is an entry with the time it was last
confirmed alive: each process confirms its own every PRESENCE_REFRESH_S, and an entry
older than PRESENCE_STALE_S is not shown, so a viewer whose leave was lost (its process
died, or Redis failed the removal) disappears by itself. A failed leave is also retried
in the background for a while.
"""

import asyncio
import logging
import time
from collections import defaultdict

from django.conf import settings

from chat import protocol
from chat.fanout import publish as fanout
from chat.fanout.announcer import get_announcer
from chat.fanout.redis_client import get_redis, key, redis_enabled

log = logging.getLogger(__name__)

PRESENCE_REFRESH_S = 60.0
PRESENCE_STALE_S = 180.0
# Retries of a leave that Redis refused (a connection broken by a restart), in seconds.
LEAVE_RETRIES_S = (0.5, 2.0, 8.0, 30.0)

_memory: dict[str, dict[str, str]] = defaultdict(dict)
_retrying: set[asyncio.Task[None]] = set()


def _key(conversation_id: str) -> str:
    return key("presence", conversation_id)


def _entry(viewer_id: str, username: str) -> str:
    # Viewer ids (channel names) never hold a newline; usernames come after it.
    return f"{viewer_id}\n{username}"


async def join(conversation_id: str, viewer_id: str, username: str) -> None:
    if not redis_enabled():
        _memory[conversation_id][viewer_id] = username
        return
    now = time.time()
    pipe = get_redis().pipeline(transaction=False)
    pipe.zremrangebyscore(_key(conversation_id), "-inf", now - PRESENCE_STALE_S)
    pipe.zadd(_key(conversation_id), {_entry(viewer_id, username): now})
    pipe.expire(_key(conversation_id), int(PRESENCE_STALE_S) * 2)
    await pipe.execute()


async def refresh(conversation_id: str, viewer_id: str, username: str) -> None:
    """Confirm a viewer still here (called periodically for every open one)."""
    if redis_enabled():
        pipe = get_redis().pipeline(transaction=False)
        pipe.zadd(_key(conversation_id), {_entry(viewer_id, username): time.time()})
        pipe.expire(_key(conversation_id), int(PRESENCE_STALE_S) * 2)
        await pipe.execute()


async def leave(conversation_id: str, viewer_id: str, username: str) -> None:
    """Remove a viewer; a removal Redis refuses is retried in the background."""
    if not redis_enabled():
        _memory[conversation_id].pop(viewer_id, None)
        if not _memory[conversation_id]:
            del _memory[conversation_id]
        return
    try:
        await _remove(conversation_id, viewer_id, username)
    except Exception:
        task = asyncio.get_running_loop().create_task(
            _retry_leave(conversation_id, viewer_id, username)
        )
        _retrying.add(task)
        task.add_done_callback(_retrying.discard)
        raise


async def _remove(conversation_id: str, viewer_id: str, username: str) -> None:
    await get_redis().zrem(_key(conversation_id), _entry(viewer_id, username))


async def _retry_leave(conversation_id: str, viewer_id: str, username: str) -> None:
    for pause in LEAVE_RETRIES_S:
        await asyncio.sleep(pause)
        try:
            await _remove(conversation_id, viewer_id, username)
        except Exception as exc:
            log.debug("presence leave retry failed: %r", exc)
            continue
        await announce(conversation_id)
        return
    log.warning("presence entry of %s left to expire", username)


async def viewers(conversation_id: str) -> list[dict[str, str]]:
    """Distinct usernames viewing now, sorted (one entry per user, not per tab)."""
    if not redis_enabled():
        names = set(_memory.get(conversation_id, {}).values())
    else:
        live = await get_redis().zrangebyscore(
            _key(conversation_id), time.time() - PRESENCE_STALE_S, "+inf"
        )
        names = {entry.decode().partition("\n")[2] for entry in live}
    return [{"username": name} for name in sorted(names)]


async def frame_text(conversation_id: str) -> str:
    """The `presence` frame of a conversation, serialized."""
    return protocol.dumps({"type": "presence", "viewers": await viewers(conversation_id)})


async def _publish(conversation_id: str) -> None:
    await fanout.publish(
        conversation_id, {"type": "chat.frame", "text": await frame_text(conversation_id)}
    )


async def announce(conversation_id: str) -> bool:
    """The viewers of a conversation changed: tell every viewer, now (True) or with the
    other changes of the same PRESENCE_INTERVAL_MS (False)."""
    announcer = get_announcer(_publish, settings.PRESENCE_INTERVAL_MS / 1000)
    return await announcer.changed(conversation_id)
