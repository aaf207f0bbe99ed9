"""Publishes a generation's deltas: to the replay log first, then to the viewers.

Log first: a viewer that read the log before this append is already in the group and
gets the delta live; one that read after has it in its snapshot. On the Redis pub/sub
layer both commands go in one write (chat/fanout/redis_lane.py): one round trip per flush.
If the write fails (Redis outage), the delta still goes out through the layer, which
retries once on a fresh connection, and the log is rewritten whole at the next flush
that reaches Redis, so it never holds a text with a hole in it.
"""

import logging
import uuid
from collections.abc import Awaitable
from typing import Any

from chat.fanout import publish as fanout
from chat.fanout import replay
from chat.fanout.redis_lane import Lane, Sent, get_lane
from chat.ops import metrics

log = logging.getLogger(__name__)


class Relay:
    """The `publish` callback of one generation's stream runner."""

    def __init__(
        self,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        *,
        after: Awaitable[None] | None = None,
    ) -> None:
        # Awaited before the first delta: the frames viewers must see before it.
        self._after = after
        self._conversation_id = conversation_id
        self._message_id = str(message_id)
        self._texts: list[str] = []
        self._log_intact = True
        # Where the layer publishes this conversation's events: fixed for the generation.
        self._channel = fanout.pubsub_channel(conversation_id)

    def __call__(self, seq: int, text: str) -> Awaitable[None]:
        """Publish delta `seq`; the result completes once Redis has answered (or the
        layer has taken the delta instead). The write itself goes out now when nothing
        needs awaiting first (the lane's connection open, the log intact, the frames
        before the first delta out): the runner calls this as its flush window ends,
        so the delta does not wait another turn of the event loop to leave."""
        if self._after is None and self._log_intact and self._channel is not None:
            event, publication = self._event(seq, text)
            commands = replay.append_commands(self._message_id, seq, text, publication)
            lane = get_lane()
            sent = lane.send_now(*commands)
            if sent is not None:
                self._texts.append(text)
                return self._confirm(seq, event, lane, sent)
        return self._publish(seq, text)

    async def _confirm(self, seq: int, event: dict[str, Any], lane: Lane, sent: Sent) -> None:
        published = False
        try:
            await lane.confirm(sent)
            published = True
        except Exception as exc:
            self._append_failed(seq, exc)
        await self._fall_back_unless(published, event)

    async def _publish(self, seq: int, text: str) -> None:
        if self._after is not None:
            after, self._after = self._after, None
            await after
        self._texts.append(text)
        event, publication = self._event(seq, text)
        published = False
        try:
            if self._log_intact:
                await replay.append(self._message_id, seq, text, then_publish=publication)
            else:
                await replay.rewrite(self._message_id, self._texts, then_publish=publication)
                self._log_intact = True
                log.info("replay log of %s rebuilt up to seq %s", self._message_id, seq)
            published = publication is not None
        except Exception as exc:
            self._append_failed(seq, exc)
        await self._fall_back_unless(published, event)

    def _event(self, seq: int, text: str) -> tuple[dict[str, Any], replay.Publication | None]:
        """The delta's group event, and its PUBLISH where the pub/sub layer reads it."""
        event = fanout.delta_event(self._message_id, seq, text)
        if self._channel is None:
            return event, None
        return event, (self._channel, fanout.serialize(event))

    def _append_failed(self, seq: int, exc: Exception) -> None:
        # The PUBLISH may have gone out before the failure: consumers drop a delta whose
        # seq they have already shown, so sending it again through the layer is safe.
        self._log_intact = False
        log.warning("replay log append failed for %s seq %s: %r", self._message_id, seq, exc)

    async def _fall_back_unless(self, published: bool, event: dict[str, Any]) -> None:
        metrics.deltas_published.inc()
        if not published and not await fanout.publish(self._conversation_id, event):
            metrics.layer_drops.inc()
