"""What a viewer of a conversation does with the events of its group, whatever carries
them to the client: a websocket (`consumers.ChatConsumer`) or an event stream
(`sse.EventStream`).

Frames are forwarded as the text they were serialized to once. Deltas are forwarded in
`seq` order, dropped when already shown or when their message is final (a `done` or a
snapshot said so), and healed by a snapshot when some were lost. Access changes end the
viewer at once. A client that stops reading gets no more live frames once
WS_MAX_UNSENT_BYTES wait for it, and one fresh snapshot once it has read them; a `sync`
is answered the same way, so at most one snapshot is ever pending.

A transport provides `socket` (the daphne connection, or None), `send_text` (a frame),
`send_delta` (a delta, in its form), `build_snapshot`, `refuse`, `dispatch_other` (the
events that are not frames), `user` and `joined`.
"""

import asyncio
import logging
from typing import Any

from django.conf import settings

from chat import protocol
from chat.ops import metrics
from chat.protocol import CLOSE_NO_CONVERSATION, CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN
from chat.realtime import direct_send, snapshots

log = logging.getLogger(__name__)

# The forms a frame is sent in: where the event keeps its text, and its prepared frame.
# Every event carries its `text`; a delta's compact text is made from it when first asked.
LONG = ("text", "frame:text")
COMPACT = ("compact", "frame:compact")  # the client negotiated protocol.COMPACT_SUBPROTOCOL

# Events that only carry what a snapshot also shows: a viewer that is behind may skip them.
STATE_EVENTS = frozenset({"chat.delta", "chat.frame", "chat.done"})
# How often a viewer that is behind looks whether its client has read what waits.
CATCH_UP_POLL_S = 0.25


class Viewer:
    # The last seq shown per message (FINAL once it is final), and events that arrived
    # while a snapshot was being built (None otherwise).
    sent_seq: dict[str, int]
    _held: list[dict[str, Any]] | None = None
    # The daphne connection (frames written straight to it, its unsent bytes), or None.
    socket: direct_send.Socket | None = None
    # The form this viewer's deltas go in (LONG or COMPACT); other frames are always LONG.
    delta_form = LONG
    joined = False
    # The task sending the one snapshot owed, once the client has read what waits.
    _catching_up: asyncio.Task[None] | None = None

    # ---- what a transport provides ------------------------------------------------------

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def send_delta(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def build_snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    async def refuse(self, code: int, why: str) -> None:
        raise NotImplementedError

    async def dispatch_other(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---- the hub's fast path ------------------------------------------------------------

    def deliver_now(self, event: dict[str, Any]) -> bool:
        """The common case of a group event, handled without awaiting anything: the
        next delta, or a frame for every viewer, written straight to the socket under
        daphne. Its frame is built once per event for every socket of this process (the
        first socket keeps it in the event). False when `deliver` must handle it (held
        while a snapshot is built, a gap, another event, a socket that is not open)."""
        if self._held is not None or self.socket is None:
            return False
        kind = event.get("type")
        if kind not in STATE_EVENTS:
            return False
        if self._catching_up is not None or self._fell_behind():
            return True  # the snapshot it is owed will show this
        if kind == "chat.delta":
            step = self.delta_step(event)
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

    def delta_step(self, event: dict[str, Any]) -> int:
        """How far a delta is past what this viewer has shown of its message: 1 for the
        next one, 0 or less when already shown (or the message is final), more when
        some were lost before it."""
        return event["seq"] - self.sent_seq.get(event["message_id"], 0)

    @staticmethod
    def text_of(event: dict[str, Any], form: tuple[str, str]) -> str:
        """The event's frame text in `form`; a delta's compact text is made by the first
        viewer of this process that asks for it and kept in the event for the others."""
        text = event.get(form[0])
        if text is None:
            text = event[form[0]] = protocol.compact_delta_text(
                event["message_id"], event["seq"], event["text"]
            )
        return text

    def _write_now(self, event: dict[str, Any], form: tuple[str, str]) -> bool:
        frame = event.get(form[1])
        if frame is None:
            frame = event[form[1]] = direct_send.prepare(self.text_of(event, form))
        if not self.socket.write(frame):
            return False
        metrics.frames_sent.inc()
        metrics.frames_direct.inc()
        return True

    # ---- a client that does not read ----------------------------------------------------

    def _fell_behind(self) -> bool:
        """Whether more than WS_MAX_UNSENT_BYTES wait for the client; if so, live frames
        stop and a snapshot is owed for when it has read them."""
        if self.socket is None or self.socket.unsent() <= settings.WS_MAX_UNSENT_BYTES:
            return False
        log.info("viewer of user %s is not reading: live frames held back", self.user.pk)
        metrics.sockets_behind.inc()
        self.owe_snapshot()
        return True

    def owe_snapshot(self) -> None:
        """Send one fresh snapshot once what waits for the client is small (at once when
        nothing waits); live frames wait until it is sent. More calls meanwhile add
        nothing: at most one snapshot is ever pending per viewer."""
        if self._catching_up is None:
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            # Polled: the server signals nothing when its buffer for a client empties.
            while self.joined and self._still_full():  # noqa: ASYNC110
                await asyncio.sleep(CATCH_UP_POLL_S)
            if not self.joined:
                return
            self._catching_up = None
            await self.send_snapshot_holding_events()
        except Exception as exc:
            log.warning("catch-up snapshot failed: %r", exc)
        finally:
            self._catching_up = None

    def _still_full(self) -> bool:
        return self.socket is not None and (
            self.socket.unsent() > settings.WS_MAX_UNSENT_BYTES // 2
        )

    # ---- snapshots ------------------------------------------------------------------------

    async def send_snapshot(self) -> None:
        frame = await self.build_snapshot()
        self.sent_seq.update(snapshots.shown_seqs(frame))
        await self.send_text(protocol.dumps(frame))

    async def send_snapshot_holding_events(self) -> None:
        """A snapshot, with the group's events that arrive while it is built held and
        sent after it (a snapshot is the first frame after connecting, and the deltas it
        already holds are then dropped)."""
        self._held = []
        try:
            await self.send_snapshot()
            while self._held:
                await self.dispatch(self._held.pop(0))
        finally:
            self._held = None

    # ---- the awaited path -------------------------------------------------------------

    async def deliver(self, event: dict[str, Any]) -> None:
        """A group event, from this process's hub."""
        if self._held is not None:
            self._held.append(event)  # a snapshot is being built: it goes after it
            return
        await self.dispatch(event)

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in STATE_EVENTS:
            await self.dispatch_other(message)
            return
        if self._catching_up is not None or self._fell_behind():
            return
        if kind == "chat.delta":
            await self._delta(message)
            return
        await self.send_text(message["text"])
        if kind == "chat.done":
            self.sent_seq[message["message_id"]] = snapshots.FINAL
        metrics.frames_sent.inc()

    async def _delta(self, event: dict[str, Any]) -> None:
        """Forwarded if it is the next one, dropped if already shown, replaced by a
        snapshot if some were lost before it."""
        message_id, seq = event["message_id"], event["seq"]
        step = self.delta_step(event)
        if step <= 0:
            return
        if step > 1:
            metrics.layer_drops.inc(step - 1)
            log.info(
                "viewer missed deltas %d..%d of %s: resyncing", seq - step + 1, seq - 1, message_id
            )
            await self.send_snapshot()
            return
        self.sent_seq[message_id] = seq
        await self.send_delta(event)
        metrics.frames_sent.inc()

    async def chat_resync(self, event: dict[str, Any]) -> None:
        """Events may have been lost on their way to this process (chat.fanout.events
        `resync`): send a fresh snapshot."""
        if self.joined:
            self.owe_snapshot()

    # ---- access taken away ------------------------------------------------------------

    async def chat_member_removed(self, event: dict[str, Any]) -> None:
        """A member lost access: if it is this viewer's user, end at once."""
        if event["user_id"] == self.user.pk:
            await self.refuse(CLOSE_NOT_MEMBER, "removed from the conversation")

    async def chat_conversation_deleted(self, event: dict[str, Any]) -> None:
        """The conversation was deleted: end at once."""
        await self.refuse(CLOSE_NO_CONVERSATION, "conversation deleted")

    async def chat_signed_out(self, event: dict[str, Any]) -> None:
        """The user signed out (this session), or every session of the user ended (a
        password change, deactivation, deletion): end at once."""
        key = event.get("session_key")
        if key is None or key == self.session_key:
            await self.refuse(CLOSE_NOT_SIGNED_IN, "signed out")

    @property
    def session_key(self) -> str | None:
        raise NotImplementedError
