"""Publishes a generation's deltas: to the replay log first, then to the viewers.

Log first: a viewer that read the log before this append is already listening and gets
the delta live; one that read after has it in its snapshot. The layer makes both in one
round trip (`ConversationLayer.publish_logged`). If that fails (Redis away), the delta
still goes out by a plain publish, and the log is rewritten whole at the next flush that
reaches Redis, so it never holds a text with a hole in it.
"""

import logging
import uuid
from collections.abc import Awaitable

from chat.fanout import events, get_layer, groups
from chat.fanout.layer import LogEntry
from chat.fanout.publish import publish
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
        self._conversation_id = str(conversation_id)
        self._message_id = str(message_id)
        self._group = groups.conversation(conversation_id)
        self._texts: list[str] = []
        self._log_intact = True

    def __call__(self, seq: int, text: str) -> Awaitable[None]:
        """Publish delta `seq`; the result completes once it is confirmed (or went out by
        the fallback). The write starts now when nothing needs awaiting first (the
        frames before the first delta are out, the log is intact): the runner calls this
        as its flush window ends, so the delta does not wait another turn of the loop."""
        if self._after is None and self._log_intact:
            return self._confirm(seq, text, self._start(seq, text))
        return self._publish(seq, text)

    def _start(self, seq: int, text: str) -> tuple[dict, Awaitable | None]:
        self._texts.append(text)
        event = events.delta(self._message_id, seq, text)
        entry = LogEntry(self._conversation_id, self._message_id, seq, text)
        try:
            return event, get_layer().publish_logged(self._group, event, entry)
        except Exception as exc:
            self._append_failed(seq, exc)
            return event, None

    async def _confirm(self, seq: int, text: str, started: tuple[dict, Awaitable | None]) -> None:
        event, confirming = started
        published = False
        if confirming is not None:
            try:
                await confirming
                published = True
            except Exception as exc:
                self._append_failed(seq, exc)
        await self._fall_back_unless(published, event)

    async def _publish(self, seq: int, text: str) -> None:
        if self._after is not None:
            after, self._after = self._after, None
            await after
        if self._log_intact:
            await self._confirm(seq, text, self._start(seq, text))
            return
        self._texts.append(text)
        event = events.delta(self._message_id, seq, text)
        entry = LogEntry(self._conversation_id, self._message_id, seq, text)
        try:
            await get_layer().replay.rewrite(entry, self._texts)
            self._log_intact = True
            log.info("replay log of %s rebuilt up to seq %s", self._message_id, seq)
        except Exception as exc:
            self._append_failed(seq, exc)
        await self._fall_back_unless(False, event)

    def _append_failed(self, seq: int, exc: Exception) -> None:
        # The PUBLISH may have gone out before the failure: viewers drop a delta whose
        # seq they have already shown, so sending it again is safe.
        self._log_intact = False
        log.warning("replay log append failed for %s seq %s: %r", self._message_id, seq, exc)

    async def _fall_back_unless(self, published: bool, event: dict) -> None:
        metrics.deltas_published.inc()
        if not published and not await publish(self._conversation_id, event):
            metrics.layer_drops.inc()
