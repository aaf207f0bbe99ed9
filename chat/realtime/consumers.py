"""The websocket endpoint of a conversation: authenticate, validate, delegate.

No model call happens here: a prompt is stored and handed to the generation registry,
whose task outlives this socket. Every frame the runner publishes reaches this consumer
through the conversation group and is forwarded as the text it was serialized to once.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY

from chat import protocol
from chat.domain import selectors, services
from chat.domain.db import db
from chat.exceptions import (
    BadFrame,
    ChatError,
    Flood,
    Forbidden,
    NotFound,
    TooManyConnections,
)
from chat.fanout import presence
from chat.fanout import publish as fanout
from chat.generation.registry import Job, registry
from chat.generation.runner import StreamRequest
from chat.models import Membership, Message
from chat.ops import logs, metrics
from chat.protocol import (
    CLOSE_FLOOD,
    CLOSE_NO_CONVERSATION,
    CLOSE_NOT_MEMBER,
    CLOSE_NOT_SIGNED_IN,
    CLOSE_SERVICE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    fallback_close_code,
)
from chat.realtime import direct_send, group_events, limits, snapshots, sockets
from chat.realtime.group_events import GroupEvents
from chat.realtime.hub import get_hub

log = logging.getLogger(__name__)

VIEWERS_MAY_NOT_WRITE = "Viewers can read but not prompt or cancel."


try:  # what daphne (autobahn) raises when sending on a socket that has just closed
    from autobahn.exception import Disconnected as _Disconnected

    SOCKET_GONE: tuple[type[Exception], ...] = (_Disconnected,)
except ImportError:  # served by another ASGI server
    SOCKET_GONE = ()


class ChatConsumer(GroupEvents, AsyncWebsocketConsumer):
    """One open socket on `/ws/chat/<conversation_id>/`."""

    socket: direct_send.Socket | None = None

    conversation_id: uuid.UUID
    membership: Membership | None = None
    joined = False

    async def __call__(self, scope, receive, send) -> None:
        # Whatever ends this socket (a close, a crash in a handler, a cancellation by the
        # server) runs its cleanup: a socket that left without it would stay counted
        # among its user's connections and in presence.
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if "base_send" in vars(self):
                raise  # a handler failed: the server logs it and closes with 1011
            # The channel layer could not give this socket a channel (Redis is down):
            # accept, then close with "try again later", as a refusal after accept.
            log.warning("connect failed, channel layer unavailable: %r", exc)
            await _refuse_before_start(receive, send)
        finally:
            await self._cleanup()

    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        # A group event can be handled after the peer has gone but before the server's
        # disconnect event reaches this consumer: that frame has no one to go to.
        try:
            if text_data is not None and not close:
                # Under daphne, written to the connection itself: autobahn would refuse a
                # message over daphne's cap (WS_MAX_FRAME_BYTES, meant for what clients
                # send) in this direction too, and a snapshot can be bigger.
                if self.socket is not None and self.socket.write(direct_send.prepare(text_data)):
                    return
                # Straight to the server, without the two generic layers of Channels' `send`.
                await self.base_send({"type": "websocket.send", "text": text_data})
            else:
                await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except SOCKET_GONE:
            log.debug("frame dropped: the socket closed first")

    async def close(self, code=None, reason=None) -> None:
        await _close(self.base_send, code, reason)

    async def connect(self) -> None:
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.group = fanout.conversation_group(self.conversation_id)
        # The last seq of each message this socket has shown (by snapshot or delta):
        # deltas at or below it are dropped, and one beyond the next means frames were
        # lost on the way (layer overflow or outage), healed with a fresh snapshot.
        self.sent_seq: dict[str, int] = {}
        user = self.scope.get("user")
        # Accept, then close: a refusal before accept reaches browsers as a bare HTTP 403
        # with no code, and the page could not tell "sign in" from "not a member".
        compact = protocol.COMPACT_SUBPROTOCOL in self.scope.get("subprotocols", ())
        self.delta_form = group_events.COMPACT if compact else group_events.LONG
        await self.accept(subprotocol=protocol.COMPACT_SUBPROTOCOL if compact else None)
        self.socket = direct_send.socket_for(self.base_send)
        logs.connection_id.set(self.channel_name.rsplit("!", 1)[-1][-12:])
        if not sockets.accepting():
            await self.close(code=CLOSE_SERVICE_RESTART)
            return
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user = user
        self.frames = limits.TokenBucket(settings.WS_FRAMES_PER_SECOND, settings.WS_FRAME_BURST)
        self.membership = await db(self._connect_access)()
        if self.membership is None:
            # The same answer whether the conversation exists or not: its id is not
            # probeable (the API answers 404 alike).
            await self.close(code=CLOSE_NO_CONVERSATION)
            return
        if await self._over_connection_limit():
            return
        try:
            await self.channel_layer.group_add(fanout.user_group(user.pk), self.channel_name)
            # Join the group before reading the snapshot, so no delta falls between them.
            # Through the process's hub: one layer subscription per conversation. What
            # arrives before the snapshot is sent waits for it: the snapshot is the first
            # frame after connect (protocol), and deltas it already holds are dropped.
            self._held = []
            await get_hub().join(self.group, self)
            self.joined = True
            await self.send_snapshot()
            while self._held:
                await self.dispatch(self._held.pop(0))
            self._held = None
        except Exception as exc:
            # The layer (Redis) is down: ask the client to come back rather than show
            # a view that would miss deltas.
            log.warning("connect failed, channel layer unavailable: %r", exc)
            if self.joined:
                # Joined but no snapshot: disconnect() skips sockets that never fully
                # joined, so leave the hub here or it keeps handing events to this one.
                with contextlib.suppress(Exception):
                    await get_hub().leave(self.group, self)
            self.joined = False
            self._held = None
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        sockets.add(self)
        try:
            await presence.join(str(self.conversation_id), self.channel_name, user.username)
            await self._announce_presence(joined=True)
        except Exception as exc:
            log.warning("presence update failed: %r", exc)

    async def disconnect(self, code: int) -> None:
        await self._cleanup()

    async def _cleanup(self) -> None:
        """Take this socket out of the hub, presence, its user's connection count and
        user group; once, whatever ended it."""
        sockets.discard(self)
        if self._catching_up is not None:
            self._catching_up.cancel()
        if not self.joined:
            return
        self.joined = False
        # Each step on its own: one that fails (Redis down) must not leave this socket in
        # the hub, in presence or in the connection count. Local state goes first.
        conversation_id, user_id = str(self.conversation_id), self.user.pk
        for step in (
            lambda: get_hub().leave(self.group, self),
            lambda: presence.leave(conversation_id, self.channel_name, self.user.username),
            self._announce_presence,
            lambda: limits.connection_close(user_id, self.channel_name),
            lambda: self.channel_layer.group_discard(fanout.user_group(user_id), self.channel_name),
        ):
            try:
                await step()
            except Exception:
                log.warning("cleanup after disconnect failed", exc_info=True)

    # ---- client frames ------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined:
            return
        if not self.frames.allow(time.monotonic()):
            # A flood: daphne queues incoming frames without bound, so stop it here.
            log.warning("closing socket of user %s: frame flood", self.user.pk)
            await self._send_error(Flood())
            await self._refuse(CLOSE_FLOOD, "frame flood")
            return
        if text_data is None:
            await self._send_error(BadFrame("Binary frames are not supported; send JSON text."))
            return
        if len(text_data) * 4 > settings.WS_MAX_FRAME_BYTES and (
            len(text_data.encode("utf-8", "surrogatepass")) > settings.WS_MAX_FRAME_BYTES
        ):
            await self._refuse(CLOSE_TOO_BIG, "frame over WS_MAX_FRAME_BYTES")
            return
        client_msg_id = _peek_client_msg_id(text_data)
        try:
            frame = protocol.parse_client_frame(text_data)
            await self._dispatch(frame)
        except ChatError as error:
            log.info("refused %s from user %s: %s", error.code, self.user.pk, error.detail)
            await self._send_error(error, client_msg_id=client_msg_id)
        except Exception:
            log.exception("frame handling failed")
            await self._send_error(
                ChatError("The server could not handle that frame."), client_msg_id=client_msg_id
            )

    async def _dispatch(self, frame: Any) -> None:
        # A prompt or a regenerate checks access in the same trip as its write.
        if isinstance(frame, protocol.PromptFrame):
            await self._prompt(frame)
            return
        if isinstance(frame, protocol.RegenerateFrame):
            await self._regenerate(frame.message_id)
            return
        membership = await self._current_membership()
        if membership is None:
            return
        if isinstance(frame, protocol.SyncFrame):
            # At most one snapshot pending per socket: sent once the peer has read what
            # waits for it, however many times it asks meanwhile.
            self.owe_snapshot()
            return
        if not membership.can_write:
            raise Forbidden(VIEWERS_MAY_NOT_WRITE)
        if isinstance(frame, protocol.CancelFrame):
            await self._cancel(frame.message_id)

    async def _prompt(self, frame: protocol.PromptFrame) -> None:
        submitted = await self._submit_if_allowed(
            services.prompt_submit,
            conversation_id=self.conversation_id,
            user=self.user,
            content=frame.content,
            client_msg_id=frame.client_msg_id,
            model=settings.OPENAI_MODEL,
        )
        if submitted is None:
            return
        if not submitted.created:
            # A retried send: the first one is stored (and running or done); show it
            # to this socket again and start nothing.
            await self.send(
                text_data=protocol.dumps(
                    protocol.message_frame(protocol.message_payload(submitted.user_message))
                )
            )
            return
        self._start(
            submitted, protocol.message_frame(protocol.message_payload(submitted.user_message))
        )

    async def _regenerate(self, message_id: str) -> None:
        submitted = await self._submit_if_allowed(
            services.regenerate_submit,
            conversation_id=self.conversation_id,
            user=self.user,
            message_id=message_id,
            model=settings.OPENAI_MODEL,
        )
        if submitted is not None:
            self._start(submitted)

    def _start(self, submitted: services.Submitted, *frames: dict[str, Any]) -> None:
        """Start the answer, and publish `frames` and its placeholder meanwhile: the
        upstream request does not wait for those round trips to Redis; the answer's
        first delta, or its `done`, does (generation.Job.announced)."""
        assistant = submitted.assistant_message
        frames = (*frames, protocol.message_frame(protocol.message_payload(assistant)))
        announced = asyncio.create_task(fanout.publish_frames(self.conversation_id, frames))
        request = StreamRequest(
            model=settings.OPENAI_MODEL,
            messages=submitted.history,
            max_tokens=settings.OPENAI_MAX_TOKENS,
        )
        registry.start(Job(self.conversation_id, assistant.id, request, announced=announced))

    async def _cancel(self, message_id: str) -> None:
        message = await db(selectors.message_get)(
            conversation_id=self.conversation_id, message_id=message_id
        )
        if message is None or message.status != Message.Status.STREAMING:
            raise NotFound("No running generation with that id in this conversation.")
        if not registry.stop(str(message.id), "cancelled"):
            await fanout.request_cancel(message.id)

    async def _current_membership(self) -> Membership | None:
        """Re-check, for every action, what connect checked: roles change, members are
        removed, accounts are deactivated and sessions end while sockets stay open."""
        return await self._admit(*await db(self._frame_access)())

    def _connect_access(self) -> Membership | None:
        """The membership this socket starts with; notes the auth hash its session was
        signed in with, which every later frame checks against the user's password."""
        session = self.scope.get("session")
        self.session_hash = session.get(HASH_SESSION_KEY) if session is not None else None
        return selectors.membership_get(conversation_id=self.conversation_id, user=self.user)

    def _frame_access(self) -> tuple[bool, Membership | None]:
        return selectors.frame_access(
            session=self.scope.get("session"),
            session_hash=self.session_hash,
            conversation_id=self.conversation_id,
            user=self.user,
        )

    async def _admit(self, signed_in: bool, membership: Membership | None) -> Membership | None:
        """The membership a frame acts with, or None once the socket is refused."""
        self.membership = membership if signed_in else None
        if not signed_in:
            await self._refuse(CLOSE_NOT_SIGNED_IN, "session ended")
        elif membership is None:
            await self._refuse(CLOSE_NOT_MEMBER, "no longer a member")
        return self.membership

    async def _submit_if_allowed(
        self, submit: Callable[..., services.Submitted], **kwargs: Any
    ) -> services.Submitted | None:
        """`submit(**kwargs)`, run only if the frame's access check (`_current_membership`)
        lets this member write, in the same trip to the database thread: one thread hop
        and one entry in that thread's queue per prompt, not two (docs/decisions.md has
        the measurement). None when the socket was refused."""

        def check_then_submit() -> tuple[bool, Membership | None, services.Submitted | None]:
            signed_in, membership = self._frame_access()
            may_write = signed_in and membership is not None and membership.can_write
            return signed_in, membership, submit(**kwargs) if may_write else None

        signed_in, membership, submitted = await db(check_then_submit)()
        if await self._admit(signed_in, membership) is None:
            return None
        if not membership.can_write:
            raise Forbidden(VIEWERS_MAY_NOT_WRITE)
        return submitted

    async def _over_connection_limit(self) -> bool:
        try:
            count = await limits.connection_open(self.user.pk, self.channel_name)
        except Exception as exc:
            log.warning("connection count unavailable: %r", exc)
            return False
        if count <= settings.WS_MAX_CONNECTIONS_PER_USER:
            return False
        log.warning("refusing socket of user %s: %d connections", self.user.pk, count)
        await limits.connection_close(self.user.pk, self.channel_name)
        await self._send_error(TooManyConnections())
        await self.close(code=CLOSE_FLOOD)
        return True

    async def leave_for_restart(self, code: int) -> None:
        """This process is draining: send the client to reconnect elsewhere."""
        if self.joined:
            await self._refuse(code, "process draining")

    async def refresh_liveness(self) -> None:
        """Keep this socket counted among its user's connections and in presence."""
        if self.joined:
            await limits.connection_refresh(self.user.pk, self.channel_name)
            await presence.refresh(str(self.conversation_id), self.channel_name, self.user.username)

    async def _refuse(self, code: int, why: str) -> None:
        """Close this socket and stop its group deliveries at once."""
        log.info("closing socket of user %s on %s: %s", self.user.pk, self.conversation_id, why)
        await self._cleanup()
        await self.close(code=code)

    # ---- server frames ------------------------------------------------------------

    async def send_snapshot(self) -> None:
        frame = await snapshots.build(self.membership)
        self.sent_seq.update(snapshots.shown_seqs(frame))
        await self.send(text_data=protocol.dumps(frame))
        metrics.frames_sent.inc()

    async def _announce_presence(self, *, joined: bool = False) -> None:
        if not await presence.announce(str(self.conversation_id)) and joined:
            # The broadcast waits for the end of the interval; a page that just joined
            # shows who is here at once.
            await self.send(text_data=await presence.frame_text(str(self.conversation_id)))

    async def _send_error(self, error: ChatError, *, client_msg_id: str | None = None) -> None:
        await self.send(
            text_data=protocol.dumps(protocol.error_frame(error, client_msg_id=client_msg_id))
        )


async def _close(send, code: int | None, reason: str | None = None) -> None:
    """Close a socket with `code`. The codes daphne refuses to send (1009, 1012, 1013)
    go through its internals when they are on; otherwise, where the server refuses one,
    its twin from the private range (4009, 4012, 4013) carries the same meaning."""
    socket = direct_send.socket_for(send)
    if socket is not None and code is not None:
        socket.close(code)
        return
    message = {"type": "websocket.close", "code": code or 1000}
    if reason:
        message["reason"] = reason
    try:
        await send(message)
    except SOCKET_GONE:
        log.debug("close skipped: the socket closed first")
    except Exception:
        fallback = fallback_close_code(code)
        if fallback is None:
            raise
        await send({"type": "websocket.close", "code": fallback})


async def _refuse_before_start(receive, send) -> None:
    """Answer a handshake the consumer could not take on: accept, then close 1013."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await _close(send, CLOSE_TRY_AGAIN_LATER)


def _peek_client_msg_id(text: str) -> str | None:
    """The frame's client_msg_id if it has a usable one, to label an error with it."""
    if '"client_msg_id"' not in text:
        return None
    try:
        value = json.loads(text).get("client_msg_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None
