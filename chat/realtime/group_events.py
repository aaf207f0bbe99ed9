"""What a conversation socket does with the events of its group (from the hub).

Frames are forwarded as the text they were serialized to once; deltas are forwarded in
`seq` order, dropped when already shown or when their message is final (a `done` or a
snapshot said so), and healed by a snapshot when some were lost; access changes close
the socket at once. A peer that stops reading gets no more live frames once
WS_MAX_UNSENT_BYTES wait for it, and one fresh snapshot when it has read them. Mixed
into `ChatConsumer`, which provides `send`, `build_snapshot`, `_refuse` and the
socket's state.
"""

import asyncio
import logging
from typing import Any

from django.conf import settings

from chat import protocol
from chat.ops import metrics
from chat.protocol import CLOSE_NO_CONVERSATION, CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN
from chat.realtime import direct_send, snapshots
from chat.realtime.hub import get_hub

log = logging.getLogger(__name__)

# The forms a frame is sent in: where the event keeps its text, and its prepared frame.
# Every event carries its `text`; a delta's compact text is made from it when first asked.
LONG = ("text", "frame:text")
COMPACT = ("compact", "frame:compact")  # the client negotiated protocol.COMPACT_SUBPROTOCOL

# Events that only carry what a snapshot also shows: a socket that is behind may skip them.
_STATE_EVENTS = frozenset({"chat.delta", "chat.frame", "chat.done"})
# How often a socket that is behind looks whether its peer has read what waits.
CATCH_UP_POLL_S = 0.25


class GroupEvents:
    # Set by the consumer: the last seq shown per message, and events that arrived
    # before the first snapshot (None once it is sent).
    sent_seq: dict[str, int]
    _held: list[dict[str, Any]] | None = None
    # The daphne connection (frames written straight to it, its unsent bytes), or None.
    socket: direct_send.Socket | None = None
    # The form this socket's deltas go in (LONG or COMPACT); other frames are always LONG.
    delta_form = LONG
    # A snapshot is owed (the peer fell behind, or asked while one was still queued)
    # and the task that sends it once the peer has read what waits.
    _catching_up: asyncio.Task[None] | None = None

    def deliver_now(self, event: dict[str, Any]) -> bool:
        """The common case of a group event, handled without awaiting anything: the
        next delta, or a frame for every viewer, written straight to the socket under
        daphne. Its frame is built once per event for every socket of this process (the
        first socket keeps it in the event). False when `deliver` must handle it (held
        before the snapshot, a gap, another event, a socket that is not open)."""
        if self._held is not None or self.socket is None:
            return False
        kind = event.get("type")
        if kind not in _STATE_EVENTS:
            return False
        if self._catching_up is not None or self._fell_behind():
            return True  # the snapshot it is owed will show this
        if kind == "chat.delta":
            step = self._delta_step(event)
            if step <= 0:
                return True  # already shown (in the snapshot, or a resent delta)
            if step > 1 or not self._write_now(event, self.delta_form):
                return False
            self.sent_seq[event["message_id"]] = event["seq"]
            return True
        if not self._write_now(event, LONG):
            return False
        if kind == "chat.done":
            self.sent_seq[event["message_id"]] = snapshots.FINAL
        return True

    def _delta_step(self, event: dict[str, Any]) -> int:
        """How far a delta is past what this socket has shown of its message: 1 for the
        next one, 0 or less when already shown (or the message is final), more when
        some were lost before it."""
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
        if not self.socket.write(frame):
            return False
        metrics.frames_sent.inc()
        metrics.frames_direct.inc()
        return True

    # ---- a peer that does not read ---------------------------------------------------

    def _fell_behind(self) -> bool:
        """Whether more than WS_MAX_UNSENT_BYTES wait for the peer; if so, live frames
        stop and a snapshot is owed for when it has read them."""
        if self.socket is None or self.socket.unsent() <= settings.WS_MAX_UNSENT_BYTES:
            return False
        log.info("socket of user %s is not reading: live frames held back", self.user.pk)
        metrics.sockets_behind.inc()
        self.owe_snapshot()
        return True

    def owe_snapshot(self) -> None:
        """Send one fresh snapshot once what waits for the peer is small (at once when
        nothing waits); live frames wait until it is sent. More calls meanwhile add
        nothing: at most one snapshot is ever pending per socket."""
        if self._catching_up is None:
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            # Polled: the server signals nothing when its buffer for a peer empties.
            while self.joined and self.socket is not None and self._still_full():  # noqa: ASYNC110
                await asyncio.sleep(CATCH_UP_POLL_S)
            if not self.joined:
                return
            # Hold what arrives while the snapshot is built, as at connect.
            self._held = []
            self._catching_up = None
            await self.send_snapshot()
            while self._held:
                await self.dispatch(self._held.pop(0))
        except Exception as exc:
            log.warning("catch-up snapshot failed: %r", exc)
        finally:
            self._held = None
            self._catching_up = None

    def _still_full(self) -> bool:
        return self.socket.unsent() > settings.WS_MAX_UNSENT_BYTES // 2

    # ---- the awaited path -------------------------------------------------------------

    async def deliver(self, event: dict[str, Any]) -> None:
        """A conversation group event, from this process's hub."""
        if self._held is not None:
            self._held.append(event)  # a snapshot is being built: it goes after it
            return
        await self.dispatch(event)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs `aclose_old_connections()` before every handler: a thread hop
        # through the one thread-sensitive executor, per event and per socket, which
        # also queues every database call of the process behind it. Forwarding a frame
        # touches no database (a resync snapshot goes through chat.db.db, which closes
        # old connections itself), so skip it on the hot path.
        kind = message.get("type")
        if kind in _STATE_EVENTS:
            if self._catching_up is not None or self._fell_behind():
                return
            if kind == "chat.delta":
                await self.chat_delta(message)
            else:
                await self.chat_frame(message)
        else:
            await super().dispatch(message)

    async def chat_frame(self, event: dict[str, Any]) -> None:
        """A frame for every viewer, already serialized (a `done` also marks its message
        final: no delta of it is forwarded after)."""
        await self.send(text_data=event["text"])
        if event["type"] == "chat.done":
            self.sent_seq[event["message_id"]] = snapshots.FINAL
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
            self.owe_snapshot()

    async def chat_member_removed(self, event: dict[str, Any]) -> None:
        """A member lost access: if it is this socket's user, close at once."""
        if event["user_id"] == self.user.pk:
            await self._refuse(CLOSE_NOT_MEMBER, "removed from the conversation")

    async def chat_conversation_deleted(self, event: dict[str, Any]) -> None:
        """The conversation was deleted: close at once (4404)."""
        await self._refuse(CLOSE_NO_CONVERSATION, "conversation deleted")

    async def chat_signed_out(self, event: dict[str, Any]) -> None:
        """The user signed out (this session), or every session of the user ended (a
        password change, deactivation, deletion): close at once."""
        session = self.scope.get("session")
        key = event.get("session_key")
        if key is None or (session is not None and session.session_key == key):
            await self._refuse(CLOSE_NOT_SIGNED_IN, "signed out")
