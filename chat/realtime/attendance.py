"""A viewer's place among its user's connections and in its conversation's presence.

Every socket and event stream counts in WS_MAX_CONNECTIONS_PER_USER (across processes,
through the layer's store) and shows in presence while it is open; each process confirms
its own viewers every LIVENESS_REFRESH_S so that what a dead process left behind stops
counting. Each step runs whatever the others did: a failure (Redis down) never leaves a
viewer counted or shown.
"""

import asyncio
import logging

from django.conf import settings

from chat.fanout import get_layer, presence
from chat.fanout.layer import LIVENESS_REFRESH_S

log = logging.getLogger(__name__)


class Attendance:
    def __init__(self, *, viewer_id: str, user_id: int, username: str, conversation_id: str):
        self.viewer_id, self.user_id, self.username = viewer_id, user_id, username
        self.conversation_id = conversation_id
        self.counted = self.present = False
        self.confirmed_at = 0.0

    async def count_in(self) -> bool:
        """Count this viewer among its user's connections; False when that goes over
        WS_MAX_CONNECTIONS_PER_USER (it is counted out again at once). A count that
        cannot be read lets it in."""
        try:
            count = await get_layer().connections.open(self.user_id, self.viewer_id)
        except Exception as exc:
            log.warning("connection count unavailable: %r", exc)
            return True
        self.counted = True
        if count <= settings.WS_MAX_CONNECTIONS_PER_USER:
            return True
        log.warning("refusing a viewer of user %s: %d connections", self.user_id, count)
        await self._count_out()
        return False

    async def show(self) -> bool:
        """Show this viewer in presence and tell the others; whether it was announced
        now (else with the interval's other changes)."""
        try:
            await presence.join(self.conversation_id, self.viewer_id, self.username)
            self.present = True
            return await presence.announce(self.conversation_id)
        except Exception as exc:
            log.warning("presence update failed: %r", exc)
            return True
        finally:
            self.confirmed_at = asyncio.get_running_loop().time()

    async def confirm(self) -> None:
        """Confirm this viewer alive (due every LIVENESS_REFRESH_S; cheap to call more)."""
        now = asyncio.get_running_loop().time()
        if now - self.confirmed_at < LIVENESS_REFRESH_S:
            return
        self.confirmed_at = now
        if self.counted:
            await get_layer().connections.refresh(self.user_id, self.viewer_id)
        if self.present:
            await presence.refresh(self.conversation_id, self.viewer_id, self.username)

    async def depart(self) -> None:
        """Leave presence (announced) and the connection count; each step on its own."""
        steps = []
        if self.present:
            self.present = False
            steps += [
                lambda: presence.leave(self.conversation_id, self.viewer_id, self.username),
                lambda: presence.announce(self.conversation_id),
            ]
        if self.counted:
            steps.append(self._count_out)
        for step in steps:
            try:
                await step()
            except Exception:
                log.warning("viewer cleanup failed", exc_info=True)

    async def _count_out(self) -> None:
        self.counted = False
        await get_layer().connections.close(self.user_id, self.viewer_id)
