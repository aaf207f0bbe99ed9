"""The websocket of a conversation: authenticate, validate, delegate.

No model call happens here: a prompt is stored and handed to the generation registry
(`actions.py`), whose task outlives this socket. What the conversation's group sends
reaches the socket through the process's hub and is forwarded as the text it was
serialized to once (`viewer.py`).
"""

import json
import logging
import time
import uuid
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import protocol
from chat.domain.db import db
from chat.exceptions import BadFrame, ChatError, Flood, TooManyConnections
from chat.fanout import groups, presence
from chat.ops import logs, metrics, serving
from chat.protocol import (
    CLOSE_FLOOD,
    CLOSE_NO_CONVERSATION,
    CLOSE_NOT_SIGNED_IN,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
)
from chat.realtime import closing, direct_send, limits, snapshots, sockets
from chat.realtime.actions import AccessLost, MemberActions
from chat.realtime.attendance import Attendance
from chat.realtime.hub import get_hub
from chat.realtime.viewer import COMPACT, LONG, Viewer

log = logging.getLogger(__name__)


class ChatConsumer(Viewer, AsyncWebsocketConsumer):
    """One open socket on `/ws/chat/<conversation_id>/`."""

    conversation_id: uuid.UUID
    attendance: Attendance | None = None

    async def __call__(self, scope, receive, send) -> None:
        # Whatever ends this socket (a close, a crash in a handler, a cancellation by the
        # server) runs its cleanup: a socket that left without it would stay counted
        # among its user's connections and in presence.
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if "base_send" in vars(self):
                raise  # a handler failed: the server logs it and closes with 1011
            # The channel layer could not give this socket a channel (Redis is down).
            log.warning("connect failed, channel layer unavailable: %r", exc)
            await closing.refuse_before_start(receive, send)
        finally:
            await self._cleanup()

    # ---- connect and disconnect ---------------------------------------------------------

    async def connect(self) -> None:
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.group = groups.conversation(self.conversation_id)
        self.sent_seq: dict[str, int] = {}
        user = self.scope.get("user")
        # Accept, then close: a refusal before accept reaches browsers as a bare HTTP 403
        # with no code, and the page could not tell "sign in" from "not a member".
        compact = protocol.COMPACT_SUBPROTOCOL in self.scope.get("subprotocols", ())
        self.delta_form = COMPACT if compact else LONG
        await self.accept(subprotocol=protocol.COMPACT_SUBPROTOCOL if compact else None)
        self.socket = direct_send.socket_for(self.base_send)
        logs.connection_id.set(self.channel_name.rsplit("!", 1)[-1][-12:])
        if not serving.accepting():
            await self.close(code=CLOSE_SERVICE_RESTART)
            return
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user = user
        self.frames = limits.TokenBucket(settings.WS_FRAMES_PER_SECOND, settings.WS_FRAME_BURST)
        self.actions = MemberActions(
            conversation_id=self.conversation_id, user=user, session=self.scope.get("session")
        )
        if await db(self.actions.connect_access)() is None:
            # The same answer whether the conversation exists or not: its id is not
            # probeable (the API answers 404 alike).
            await self.close(code=CLOSE_NO_CONVERSATION)
            return
        self.attendance = Attendance(
            viewer_id=self.channel_name,
            user_id=user.pk,
            username=user.get_username(),
            conversation_id=str(self.conversation_id),
        )
        if not await self.attendance.count_in():
            await self._send_error(TooManyConnections())
            await self.close(code=CLOSE_FLOOD)
            return
        try:
            await self.channel_layer.group_add(groups.user(user.pk), self.channel_name)
            # Join before reading the snapshot, so no delta falls between them.
            await get_hub().join(self.group, self)
            self.joined = True
            await self.send_snapshot_holding_events()
        except Exception as exc:
            # The layer (Redis) is down: ask the client to come back rather than show
            # a view that would miss deltas.
            log.warning("connect failed, channel layer unavailable: %r", exc)
            await self.refuse(CLOSE_TRY_AGAIN_LATER, "channel layer unavailable")
            return
        sockets.add(self)
        if not await self.attendance.show():
            # The announcement waits for the end of the interval; a page that just
            # joined shows who is here at once.
            await self.send_text(await presence.frame_text(str(self.conversation_id)))

    async def disconnect(self, code: int) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Take this socket out of the hub, presence, its user's connection count and
        user group; once, whatever ended it. Each step on its own: one that fails (Redis
        down) must not leave the others undone."""
        sockets.discard(self)
        if self._catching_up is not None:
            self._catching_up.cancel()
        attendance, self.attendance = self.attendance, None
        was_joined, self.joined = self.joined, False
        if was_joined:
            try:
                await get_hub().leave(self.group, self)
            except Exception:
                log.warning("leaving the hub failed", exc_info=True)
        if attendance is not None:
            await attendance.depart()
            try:
                await self.channel_layer.group_discard(groups.user(self.user.pk), self.channel_name)
            except Exception:
                log.warning("leaving the user group failed", exc_info=True)

    # ---- client frames ------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined:
            return
        if not self.frames.allow(time.monotonic()):
            # A flood: daphne queues incoming frames without bound, so stop it here.
            await self._send_error(Flood())
            await self.refuse(CLOSE_FLOOD, "frame flood")
            return
        if text_data is None:
            await self._send_error(BadFrame("Binary frames are not supported; send JSON text."))
            return
        if len(text_data) * 4 > settings.WS_MAX_FRAME_BYTES and (
            len(text_data.encode("utf-8", "surrogatepass")) > settings.WS_MAX_FRAME_BYTES
        ):
            await self.refuse(CLOSE_TOO_BIG, "frame over WS_MAX_FRAME_BYTES")
            return
        client_msg_id = _peek_client_msg_id(text_data)
        try:
            await self._act(protocol.parse_client_frame(text_data))
        except AccessLost as lost:
            await self.refuse(lost.code, lost.why)
        except ChatError as error:
            log.info("refused %s from user %s: %s", error.code, self.user.pk, error.detail)
            await self._send_error(error, client_msg_id=client_msg_id)
        except Exception:
            log.exception("frame handling failed")
            error = ChatError("The server could not handle that frame.")
            await self._send_error(error, client_msg_id=client_msg_id)

    async def _act(self, frame: Any) -> None:
        if isinstance(frame, protocol.PromptFrame):
            reply = await self.actions.prompt(frame)
            if reply is not None:
                await self.send_text(reply)
        elif isinstance(frame, protocol.RegenerateFrame):
            await self.actions.regenerate(frame.message_id)
        elif isinstance(frame, protocol.CancelFrame):
            await self.actions.cancel(frame.message_id)
        elif isinstance(frame, protocol.SyncFrame):
            await self.actions.check()
            # At most one snapshot pending: sent once the client has read what waits.
            self.owe_snapshot()

    # ---- what the viewer needs ----------------------------------------------------------

    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        # A group event can be handled after the peer has gone but before the server's
        # disconnect event reaches this consumer: that frame has no one to go to.
        try:
            if text_data is not None and not close:
                await self.send_text(text_data)
            else:
                await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except closing.SOCKET_GONE:
            log.debug("frame dropped: the socket closed first")

    async def send_text(self, text: str) -> None:
        # Under daphne, written to the connection itself: autobahn would refuse a message
        # over daphne's cap (WS_MAX_FRAME_BYTES, meant for what clients send) in this
        # direction too, and a snapshot can be bigger.
        if self.socket is not None and self.socket.write(direct_send.prepare(text)):
            return
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except closing.SOCKET_GONE:
            log.debug("frame dropped: the socket closed first")

    async def send_delta(self, event: dict[str, Any]) -> None:
        await self.send_text(self.text_of(event, self.delta_form))

    async def build_snapshot(self) -> dict[str, Any]:
        frame = await snapshots.build(self.actions.membership)
        metrics.frames_sent.inc()
        return frame

    async def dispatch_other(self, event: dict[str, Any]) -> None:
        await AsyncWebsocketConsumer.dispatch(self, event)

    @property
    def session_key(self) -> str | None:
        session = self.scope.get("session")
        return session.session_key if session is not None else None

    async def close(self, code=None, reason=None) -> None:
        await closing.close(self.base_send, code, reason)

    async def refuse(self, code: int, why: str) -> None:
        """Close this socket and stop its group deliveries at once."""
        log.info("closing socket of user %s on %s: %s", self.user.pk, self.conversation_id, why)
        await self._cleanup()
        await self.close(code=code)

    async def _send_error(self, error: ChatError, *, client_msg_id: str | None = None) -> None:
        frame = protocol.error_frame(error, client_msg_id=client_msg_id)
        await self.send_text(protocol.dumps(frame))

    # ---- the process's duties -----------------------------------------------------------

    async def leave_for_restart(self, code: int) -> None:
        """This process is draining: send the client to reconnect elsewhere."""
        if self.joined:
            await self.refuse(code, "process draining")

    async def refresh_liveness(self) -> None:
        """Keep this socket counted among its user's connections and in presence."""
        if self.attendance is not None:
            await self.attendance.confirm()


def _peek_client_msg_id(text: str) -> str | None:
    """The frame's client_msg_id if it has a usable one, to label an error with it."""
    if '"client_msg_id"' not in text:
        return None
    try:
        value = json.loads(text).get("client_msg_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None
