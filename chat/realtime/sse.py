"""`GET /api/conversations/<id>/events`: a conversation as server-sent events, for clients
that cannot hold a websocket.

An event stream is a viewer like a socket (`viewer.Viewer`, through the process's hub):
a `snapshot`, then every group event named by its frame type, with the same rules for
`seq`, gaps, final messages and revoked access; it counts among its user's connections
and shows in presence. `delta` events carry `id: <message_id>:<seq>`, so a client
reconnecting with Last-Event-ID gets only the deltas it missed (from the replay log)
instead of a new snapshot.

A stream ends after SSE_MAX_STREAM_BYTES of live events (what it sent at the start is not
counted): the server cannot see how much of a response waits for a reader that stopped
reading, so this bounds it, and EventSource reconnects and resumes from Last-Event-ID.
"""

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from chat import protocol
from chat.domain import selectors
from chat.domain.db import db
from chat.exceptions import TooManyConnections
from chat.fanout import get_layer, groups
from chat.models import Membership, Message
from chat.protocol import CLOSE_NO_CONVERSATION, CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN
from chat.realtime import snapshots, sockets
from chat.realtime.attendance import Attendance
from chat.realtime.hub import get_hub
from chat.realtime.viewer import Viewer

log = logging.getLogger(__name__)

# Seconds of silence before a comment line: proxies close idle connections (often after
# 30-60 s). Each also re-checks the reader's access. The setting SSE_KEEPALIVE_S
# overrides it.
KEEPALIVE_S = 15.0
# A stream refused for the user's connection limit asks EventSource to wait this long.
RETRY_AFTER_REFUSAL_MS = 30_000
# protocol.dumps keeps the key order of the frames it is given; all of ours start with
# "type", so the event name is read without parsing the whole (maybe long) frame.
_FRAME_TYPE = re.compile(r'\{"type":"([a-z_]{1,32})"')
# How an ended stream's last event names the reason it ended.
_ENDINGS = {
    CLOSE_NOT_MEMBER: ("forbidden", "You are no longer a member of this conversation."),
    CLOSE_NO_CONVERSATION: ("not_found", "The conversation was deleted."),
    CLOSE_NOT_SIGNED_IN: ("not_signed_in", "Signed out."),
}
_END = object()


def _error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


@require_GET
async def events(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """Authorize as the API does (401, then 404 for "not yours" and "no such id"; 429
    at the user's connection limit), then stream."""
    user = await request.auser()
    if not user.is_authenticated:
        return _error("not_signed_in", "Sign in first.", 401)
    membership = await db(selectors.membership_get)(conversation_id=conversation_id, user=user)
    if membership is None:
        return _error("not_found", "No such conversation.", 404)
    if await _at_connection_limit(user.pk):
        error = TooManyConnections()
        return _error(error.code, error.detail, 429)
    session_hash = await db(request.session.get)(HASH_SESSION_KEY)
    stream = EventStream(membership, user, request.session, session_hash)
    last_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id", "")
    # Joined in the generator, not here: it owns every resource, so a client gone before
    # streaming starts (the generator never runs) leaks nothing.
    response = StreamingHttpResponse(
        stream.run(_parse_event_id(last_id)), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would buffer the stream otherwise
    return response


async def _at_connection_limit(user_id: int) -> bool:
    """Whether the user already holds WS_MAX_CONNECTIONS_PER_USER sockets and streams."""
    try:
        count = await get_layer().connections.count(user_id)
    except Exception as exc:
        log.warning("connection count unavailable: %r", exc)
        return False
    return count >= settings.WS_MAX_CONNECTIONS_PER_USER


def _parse_event_id(value: str) -> tuple[str, int] | None:
    """`<message_id>:<seq>` as (normalized id, seq), or None if malformed."""
    message_id, _, seq = value.strip().rpartition(":")
    if not (seq.isascii() and seq.isdigit() and len(seq) < 10):
        return None
    try:
        return str(uuid.UUID(message_id)), int(seq)
    except ValueError:
        return None


def _event(name: str, data: str, event_id: str | None = None) -> str:
    # Frames are compact JSON (newlines escaped), so a single data line carries each.
    head = f"id: {event_id}\n" if event_id else ""
    return f"event: {name}\n{head}data: {data}\n\n"


def _frame_type(text: str) -> str:
    match = _FRAME_TYPE.match(text)
    kind = match.group(1) if match else json.loads(text).get("type")
    # An event name must not break the SSE framing (no newline, no colon).
    return kind if isinstance(kind, str) and kind.isidentifier() else "message"


class EventStream(Viewer):
    """One client's event stream of one conversation."""

    def __init__(self, membership: Membership, user: Any, session: Any, session_hash: Any):
        self.membership, self.user, self.session = membership, user, session
        self.session_hash = session_hash
        self.conversation_id = membership.conversation_id
        self.sent_seq = {}
        self.out: asyncio.Queue[str | object] = asyncio.Queue()
        self.attendance = Attendance(
            viewer_id=f"sse.{uuid.uuid4().hex}",
            user_id=user.pk,
            username=user.get_username(),
            conversation_id=str(self.conversation_id),
        )
        self.groups = (groups.conversation(self.conversation_id), groups.user(user.pk))

    # ---- what the viewer needs ----------------------------------------------------------

    async def send_text(self, text: str) -> None:
        self.out.put_nowait(_event(_frame_type(text), text))

    async def send_delta(self, event: dict[str, Any]) -> None:
        event_id = f"{event['message_id']}:{event['seq']}"
        self.out.put_nowait(_event("delta", event["text"], event_id))

    async def build_snapshot(self) -> dict[str, Any]:
        return await snapshots.build(self.membership)

    async def refuse(self, code: int, why: str) -> None:
        """End the stream with an `error` event saying why (a closing code's meaning)."""
        log.info("ending event stream of user %s: %s", self.user.pk, why)
        self.joined = False
        error = _ENDINGS.get(code, ("unavailable", "The server ended the stream."))
        frame = {"type": "error", "code": error[0], "detail": error[1]}
        self.out.put_nowait(_event("error", protocol.dumps(frame)))
        self.out.put_nowait(_END)

    async def dispatch_other(self, event: dict[str, Any]) -> None:
        handler = getattr(self, event.get("type", "").replace(".", "_"), None)
        if handler is not None and event["type"].startswith("chat."):
            await handler(event)

    @property
    def session_key(self) -> str | None:
        return self.session.session_key

    # ---- the process's duties -----------------------------------------------------------

    async def leave_for_restart(self, code: int) -> None:
        """This process is draining: end the stream; EventSource reconnects (through the
        proxy, to another process) and resumes from Last-Event-ID."""
        self.joined = False
        self.out.put_nowait(_END)

    async def refresh_liveness(self) -> None:
        await self.attendance.confirm()

    # ---- the stream ---------------------------------------------------------------------

    async def run(self, resume: tuple[str, int] | None) -> AsyncIterator[str]:
        """The stream's text. A disconnect cancels it (daphne) or closes it; `finally`
        cleans up."""
        hub = get_hub()
        joined: list[str] = []
        try:
            if not await self.attendance.count_in():
                yield f"retry: {RETRY_AFTER_REFUSAL_MS}\n\n"
                yield _event("error", protocol.dumps(protocol.error_frame(TooManyConnections())))
                return
            for group in self.groups:  # joined before the snapshot or the log is read
                await hub.join(group, self)
                joined.append(group)
            self.joined = True
            await self._start(resume)
            # What the start queued (a snapshot, or the deltas a resume missed) is not
            # counted against the bound: it is bounded by itself.
            uncounted, budget = self.out.qsize(), settings.SSE_MAX_STREAM_BYTES
            sockets.add(self)
            await self.attendance.show()
            keepalive = float(getattr(settings, "SSE_KEEPALIVE_S", KEEPALIVE_S))
            while True:
                try:
                    item = await asyncio.wait_for(self.out.get(), keepalive)
                except TimeoutError:
                    if not await self._still_allowed():
                        continue  # refused: the error event and the end are queued
                    await self.attendance.confirm()
                    yield ": keep-alive\n\n"
                    continue
                if item is _END:
                    return
                yield item
                if uncounted:
                    uncounted -= 1
                    continue
                budget -= len(item.encode())
                if budget < 0:
                    log.info("event stream of user %s reached its byte bound", self.user.pk)
                    return
        except Exception:
            # The layer or the database failed: end the stream rather than go silent; the
            # client reconnects (EventSource does by itself) and resumes from Last-Event-ID.
            log.warning("event stream of %s ended by an error", self.groups[0], exc_info=True)
        finally:
            await asyncio.shield(self._leave(joined))

    async def _start(self, resume: tuple[str, int] | None) -> None:
        """Resume from the replay log when it has every delta the client missed, else
        send a snapshot; what the groups send meanwhile waits for it."""
        self._held = []
        try:
            missing = resume and await self._missing_deltas(*resume)
            if resume and missing is not None:
                message_id, self.sent_seq[message_id] = resume
                for seq, text in missing:
                    self.sent_seq[message_id] = seq
                    frame_text = protocol.delta_frame_text(message_id, seq, text)
                    self.out.put_nowait(_event("delta", frame_text, f"{message_id}:{seq}"))
            else:
                await self.send_snapshot()
            while self._held:
                await self.dispatch(self._held.pop(0))
        finally:
            self._held = None

    async def _missing_deltas(self, message_id: str, seq: int) -> list[tuple[int, str]] | None:
        """Deltas after `seq` as (seq, text), or None when only a snapshot will do."""
        message = await db(selectors.message_get)(
            conversation_id=self.conversation_id, message_id=message_id
        )
        if message is None or message.status != Message.Status.STREAMING:
            return None  # finished (its `done` went by) or not ours: the snapshot has it
        try:
            return await get_layer().replay.entries(str(self.conversation_id), message_id, seq)
        except Exception:
            log.warning("replay log unreadable; resuming with a snapshot", exc_info=True)
            return None

    async def _still_allowed(self) -> bool:
        """Re-check the reader's access (as every socket frame does): a broadcast that
        ended it may have been lost."""
        signed_in, membership = await db(selectors.frame_access)(
            session=self.session,
            session_hash=self.session_hash,
            conversation_id=self.conversation_id,
            user=self.user,
        )
        if signed_in and membership is not None:
            self.membership = membership
            return True
        await self.refuse(CLOSE_NOT_SIGNED_IN if not signed_in else CLOSE_NOT_MEMBER, "access")
        return False

    async def _leave(self, joined: list[str]) -> None:
        self.joined = False
        sockets.discard(self)
        if self._catching_up is not None:
            self._catching_up.cancel()
        hub = get_hub()
        for group in joined:
            try:
                await hub.leave(group, self)
            except Exception:
                log.warning("leaving %s failed", group, exc_info=True)
        await self.attendance.depart()
