"""What a conversation socket does with the events of its group (from the hub).

Frames are forwarded as the text they were serialized to once; deltas are forwarded in
`seq` order, dropped when already shown and healed by a snapshot when some were lost;
access changes close the socket at once. Mixed into `ChatConsumer`, which provides
`send`, `send_snapshot`, `_refuse` and the socket's state.
"""

import logging
from typing import Any

from chat import direct_send, metrics, protocol
from chat.hub import get_hub
from chat.protocol import CLOSE_NO_CONVERSATION, CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN

log = logging.getLogger(__name__)

# The forms a frame is sent in: where the event keeps its text, and its prepared frame.
# Every event carries its `text`; a delta's compact text is made from it when first asked.
LONG = ("text", "frame:text")
COMPACT = ("compact", "frame:compact")  # the client negotiated protocol.COMPACT_SUBPROTOCOL


class GroupEvents:
    # Set by the consumer: the last seq shown per message, and events that arrived
    # before the first snapshot (None once it is sent).
    sent_seq: dict[str, int]
    _held: list[dict[str, Any]] | None = None
    # Writes a prepared frame straight to the socket (daphne), or None: see deliver_now.
    write_frame: direct_send.FrameWriter | None = None
    # The form this socket's deltas go in (LONG or COMPACT); other frames are always LONG.
    delta_form = LONG

    def deliver_now(self, event: dict[str, Any]) -> bool:
        """The common case of a group event, handled without awaiting anything: the
        next delta, or a frame for every viewer, written straight to the socket under
        daphne. Its frame is built once per event for every socket of this process (the
        first socket keeps it in the event). False when `deliver` must handle it (held
        before the snapshot, a gap, another event, a socket that is not open)."""
        if self._held is not None or self.write_frame is None:
            return False
        kind = event.get("type")
        if kind == "chat.delta":
            step = self._delta_step(event)
            if step <= 0:
                return True  # already shown (in the snapshot, or a resent delta)
            if step > 1 or not self._write_now(event, self.delta_form):
                return False
            self.sent_seq[event["message_id"]] = event["seq"]
            return True
        return kind == "chat.frame" and self._write_now(event, LONG)

    def _delta_step(self, event: dict[str, Any]) -> int:
        """How far a delta is past what this socket has shown of its message: 1 for the
        next one, 0 or less when already shown, more when some were lost before it."""
        return event["seq"] - self.sent_seq.get(event["message_id"], 0)

    @staticmethod
    def _text(event: dict[str, Any], form: tuple[str, str]) -> str:
        """The event's frame text in `form`; a delta's compact text is made by the first
        socket of this process that asks for it and kept in the event for the others."""
        text = event.get(form[0])
        if text is None:
            text = event[form[0]] = protocol.compact_delta_text(
                event["message_id"], event["seq"], event["text"]
            )
        return text

    def _write_now(self, event: dict[str, Any], form: tuple[str, str]) -> bool:
        frame = event.get(form[1])
        if frame is None:
            frame = event[form[1]] = direct_send.prepare(self._text(event, form))
        if not self.write_frame(frame):
            return False
        metrics.frames_sent.inc()
        metrics.frames_direct.inc()
        return True

    async def deliver(self, event: dict[str, Any]) -> None:
        """A conversation group event, from this process's hub."""
        if self._held is not None:
            self._held.append(event)  # connect has not sent the snapshot yet
            return
        await self.dispatch(event)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs `aclose_old_connections()` before every handler: a thread hop
        # through the one thread-sensitive executor, per event and per socket, which
        # also queues every database call of the process behind it. Forwarding a frame
        # touches no database (a resync snapshot goes through chat.db.db,
        # which closes old connections itself), so skip it on the hot path: at 10
        # viewers a socket it halved the server's CPU per delivery (bench/REPORT.md).
        kind = message.get("type")
        if kind == "chat.delta":
            await self.chat_delta(message)
        elif kind == "chat.frame":
            await self.chat_frame(message)
        else:
            await super().dispatch(message)

    async def chat_frame(self, event: dict[str, Any]) -> None:
        """A frame for every viewer, already serialized."""
        await self.send(text_data=event["text"])
        metrics.frames_sent.inc()

    async def chat_delta(self, event: dict[str, Any]) -> None:
        """A delta: forwarded if it is the next one, dropped if already shown, and
        replaced by a snapshot if some were lost before it."""
        message_id, seq = event["message_id"], event["seq"]
        step = self._delta_step(event)
        if step <= 0:
            return
        if step > 1:
            metrics.layer_drops.inc(step - 1)
            log.info(
                "socket missed deltas %d..%d of %s: resyncing", seq - step + 1, seq - 1, message_id
            )
            await self.send_snapshot()
            return
        self.sent_seq[message_id] = seq
        await self.send(text_data=self._text(event, self.delta_form))
        metrics.frames_sent.inc()

    async def refresh_group(self) -> None:
        """Renew this socket's group membership before the layer's group expiry."""
        if self.joined:
            await get_hub().refresh(self.group)

    async def resync(self) -> None:
        """Send a fresh snapshot after frames may have been lost (a layer outage)."""
        if self.joined:
            try:
                await self.send_snapshot()
            except Exception as exc:
                log.warning("resync snapshot failed: %r", exc)

    async def chat_member_removed(self, event: dict[str, Any]) -> None:
        """A member lost access: if it is this socket's user, close at once."""
        if event["user_id"] == self.user.pk:
            await self._refuse(CLOSE_NOT_MEMBER, "removed from the conversation")

    async def chat_conversation_deleted(self, event: dict[str, Any]) -> None:
        """The conversation was deleted: close at once (4404)."""
        await self._refuse(CLOSE_NO_CONVERSATION, "conversation deleted")

    async def chat_signed_out(self, event: dict[str, Any]) -> None:
        """The user signed out (this session, or all when deactivated): close at once."""
        session = self.scope.get("session")
        key = event.get("session_key")
        if key is None or (session is not None and session.session_key == key):
            await self._refuse(CLOSE_NOT_SIGNED_IN, "signed out or deactivated")
