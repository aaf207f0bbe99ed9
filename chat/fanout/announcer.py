"""Presence announcements: at most one per conversation per interval, per process.

The first change of a conversation's viewers is announced at once, and the changes that
follow within `interval_s` are folded into one announcement at its end, which reads the
list as it is then: every viewer ends with the current list, and n viewers joining at
once (a page of reconnects after a deploy) cost O(n) frames, not O(n^2).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Announce = Callable[[str], Awaitable[None]]


class Announcer:
    def __init__(self, announce: Announce, interval_s: float) -> None:
        self._announce = announce
        self._interval_s = interval_s
        self._last: dict[str, float] = {}  # conversation -> loop time of its last announcement
        self._pending: dict[str, asyncio.Task[None]] = {}

    async def changed(self, conversation_id: str) -> bool:
        """The viewers of a conversation changed: announce now (True) or at the end of
        the interval (False)."""
        if conversation_id in self._pending:
            return False  # the announcement at the end of this interval carries the change
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self._last.get(conversation_id, float("-inf")) + self._interval_s - now
        if wait <= 0:
            self._forget_older_than(now - self._interval_s)
            self._last[conversation_id] = now
            await self._announce(conversation_id)
            return True
        task = loop.create_task(self._later(conversation_id, wait), name="presence-announce")
        self._pending[conversation_id] = task
        return False

    async def _later(self, conversation_id: str, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._pending.pop(conversation_id, None)
        self._last[conversation_id] = asyncio.get_running_loop().time()
        try:
            await self._announce(conversation_id)
        except Exception as exc:
            log.warning("presence announcement failed: %r", exc)

    def _forget_older_than(self, cutoff: float) -> None:
        # Keeps the map to the conversations active within the last interval.
        for conversation_id in [c for c, t in self._last.items() if t < cutoff]:
            del self._last[conversation_id]
