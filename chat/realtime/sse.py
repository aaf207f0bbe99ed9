"""`GET /api/conversations/<id>/events`: a conversation as server-sent events, for clients
that cannot hold a websocket. A `snapshot`, then every group event named by its frame type;
`delta` events carry `id: <message_id>:<seq>`, so a client reconnecting with Last-Event-ID
gets only the deltas it missed (from the replay log) instead of a new snapshot."""

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from chat import protocol
from chat.domain import selectors
from chat.domain.db import db
from chat.exceptions import TooManyConnections
from chat.fanout import presence, replay
from chat.fanout import publish as fanout
from chat.models import Membership, Message
from chat.realtime import limits, snapshots

log = logging.getLogger(__name__)

# Seconds of silence before a comment line: proxies close idle connections (often after
# 30-60 s). The setting SSE_KEEPALIVE_S overrides it.
KEEPALIVE_S = 15.0
# A stream refused for the user's connection limit asks EventSource to wait this long.
RETRY_AFTER_REFUSAL_MS = 30_000
# protocol.dumps keeps the key order of the frames it is given; all of ours start with
# "type", so the event name is read without parsing the whole (maybe long) frame.
_FRAME_TYPE = re.compile(r'\{"type":"([a-z_]{1,32})"')


def _error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


@require_GET
async def events(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """Authorize as the API does (401, then 404 for "not yours" and "no such id"), stream.

    No `lifecycle.ensure_started()` here, unlike the consumer: a task started from a view
    (behind sync middleware) keeps the request's CurrentThreadExecutor, dead after it.
    """
    user = await request.auser()
    if not user.is_authenticated:
        return _error("not_signed_in", "Sign in first.", 401)
    membership = await db(selectors.membership_get)(conversation_id=conversation_id, user=user)
    if membership is None:
        return _error("not_found", "No such conversation.", 404)
    if await _at_connection_limit(user.pk):
        error = TooManyConnections()
        return _error(error.code, error.detail, 429)
    last_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id", "")
    # Subscribe in the generator, not here: it owns every resource, so a client gone
    # before streaming starts (the generator never runs) leaks nothing.
    stream = _stream(
        membership, user.get_username(), request.session.session_key, _parse_event_id(last_id)
    )
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would buffer the stream otherwise
    return response


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


async def _missing_deltas(
    conversation_id: uuid.UUID, message_id: str, seq: int
) -> list[tuple[int, str]] | None:
    """Deltas after `seq` as (seq, text), or None when only a snapshot will do."""
    message = await db(selectors.message_get)(
        conversation_id=conversation_id, message_id=message_id
    )
    if message is None or message.status != Message.Status.STREAMING:
        return None  # finished (its `done` went by) or not ours: the snapshot has it
    try:
        return await replay.entries(message_id, seq)
    except Exception:
        log.warning("replay log unreadable; resuming with a snapshot", exc_info=True)
        return None


def _revoked(event: dict[str, Any], user_id: int, session_key: str | None) -> str | None:
    """The `error` frame ending the stream if the event takes this client's access away."""
    kind = event.get("type")
    if kind == "chat.member_removed" and event["user_id"] == user_id:
        error = ("forbidden", "You are no longer a member of this conversation.")
    elif kind == "chat.conversation_deleted":
        error = ("not_found", "The conversation was deleted.")
    elif kind == "chat.signed_out" and event.get("session_key") in (None, session_key):
        error = ("not_signed_in", "Signed out.")
    else:
        return None
    return protocol.dumps({"type": "error", "code": error[0], "detail": error[1]})


async def _snapshot(membership: Membership, held: dict[str, int]) -> str:
    frame = await snapshots.build(membership)
    held.update(snapshots.shown_seqs(frame))
    return _event("snapshot", protocol.dumps(frame))


async def _at_connection_limit(user_id: int) -> bool:
    """Whether the user already holds WS_MAX_CONNECTIONS_PER_USER sockets and streams."""
    try:
        return await limits.connection_count(user_id) >= settings.WS_MAX_CONNECTIONS_PER_USER
    except Exception as exc:
        log.warning("connection count unavailable: %r", exc)
        return False


class _Viewer:
    """An event stream as a viewer of its conversation: counted among its user's
    connections (WS_MAX_CONNECTIONS_PER_USER, with the sockets) and shown in presence."""

    def __init__(self, membership: Membership, username: str) -> None:
        self.id = f"sse.{uuid.uuid4().hex}"
        self.user_id = membership.user_id
        self.username = username
        self.conversation_id = str(membership.conversation_id)
        self.counted = self.present = False
        self.confirmed_at = 0.0

    async def arrive(self) -> bool:
        """Count in and show; False when that goes over the user's limit."""
        try:
            count = await limits.connection_open(self.user_id, self.id)
            self.counted = True
        except Exception as exc:
            log.warning("connection count unavailable: %r", exc)
            count = 0
        if count > settings.WS_MAX_CONNECTIONS_PER_USER:
            return False
        try:
            await presence.join(self.conversation_id, self.id, self.username)
            self.present = True
            await presence.announce(self.conversation_id)
        except Exception as exc:
            log.warning("presence update failed: %r", exc)
        self.confirmed_at = asyncio.get_running_loop().time()
        return True

    async def still_here(self) -> None:
        """Confirm this stream alive, as every socket is every CONNECTION_REFRESH_S."""
        now = asyncio.get_running_loop().time()
        if now - self.confirmed_at < limits.CONNECTION_REFRESH_S:
            return
        self.confirmed_at = now
        try:
            await limits.connection_refresh(self.user_id, self.id)
            await presence.refresh(self.conversation_id, self.id, self.username)
        except Exception as exc:
            log.warning("event stream refresh failed: %r", exc)

    async def depart(self) -> None:
        """Leave presence and the connection count; each step on its own."""
        steps = []
        if self.present:
            steps += [
                lambda: presence.leave(self.conversation_id, self.id, self.username),
                lambda: presence.announce(self.conversation_id),
            ]
        if self.counted:
            steps.append(lambda: limits.connection_close(self.user_id, self.id))
        for step in steps:
            try:
                await step()
            except Exception:
                log.warning("event stream cleanup failed", exc_info=True)


async def _stream(
    membership: Membership,
    username: str,
    session_key: str | None,
    resume: tuple[str, int] | None,
) -> AsyncIterator[str]:
    """One client's events. A disconnect cancels it (daphne) or closes it; `finally` cleans."""
    viewer = _Viewer(membership, username)
    try:
        if not await viewer.arrive():
            error = TooManyConnections()
            yield f"retry: {RETRY_AFTER_REFUSAL_MS}\n\n"
            yield _event("error", protocol.dumps(protocol.error_frame(error)))
            return
        async for event in _events(membership, session_key, resume, viewer):
            yield event
    finally:
        await asyncio.shield(viewer.depart())


async def _events(
    membership: Membership,
    session_key: str | None,
    resume: tuple[str, int] | None,
    viewer: _Viewer,
) -> AsyncIterator[str]:
    layer, loop = get_channel_layer(), asyncio.get_running_loop()
    # The user's group too, as for a websocket: sign-out and deactivation end the stream.
    groups = (
        fanout.conversation_group(membership.conversation_id),
        fanout.user_group(membership.user_id),
    )
    channel, pending = "", None
    held: dict[str, int] = {}  # message id -> last seq the client has
    try:
        channel = await layer.new_channel()
        # One receive stays pending from here to the end: cancelling it is how a pub/sub
        # channel is unsubscribed, and abandoning it would leak the subscription.
        pending = asyncio.ensure_future(layer.receive(channel))
        # Join before reading the snapshot or the log, so no delta falls between them.
        joined_at = await _join(layer, groups, channel)
        missing = resume and await _missing_deltas(membership.conversation_id, *resume)
        if resume and missing is not None:
            message_id, held[message_id] = resume
            for seq, text in missing:
                held[message_id] = seq
                frame_text = protocol.delta_frame_text(message_id, seq, text)
                yield _event("delta", frame_text, f"{message_id}:{seq}")
        else:
            yield await _snapshot(membership, held)
        keepalive = float(getattr(settings, "SSE_KEEPALIVE_S", KEEPALIVE_S))
        # The in-memory and core Redis layers drop a member group_expiry s after it joined.
        rejoin_s = (getattr(layer, "group_expiry", None) or float("inf")) / 3
        while True:
            if loop.time() - joined_at > rejoin_s:
                joined_at = await _join(layer, groups, channel)
            # Not wait_for: its timeout would cancel the receive, which unsubscribes a
            # pub/sub channel and drops whatever is published until the next receive.
            done, _ = await asyncio.wait({pending}, timeout=min(keepalive, rejoin_s))
            await viewer.still_here()
            if not done:
                yield ": keep-alive\n\n"
                continue
            event, pending = pending.result(), asyncio.ensure_future(layer.receive(channel))
            kind = event.get("type")
            if kind == "chat.delta":
                message_id, seq = event["message_id"], event["seq"]
                last = held.get(message_id, 0)
                if seq > last + 1:  # some were lost (layer overflow or outage): start over
                    yield await _snapshot(membership, held)
                elif seq == last + 1:
                    held[message_id] = seq
                    yield _event("delta", event["text"], f"{message_id}:{seq}")
            elif kind == "chat.frame":
                yield _event(_frame_type(event["text"]), event["text"])
            elif kind == "chat.done":
                held[event["message_id"]] = snapshots.FINAL  # no delta of it after this
                yield _event("done", event["text"])
            elif (error := _revoked(event, membership.user_id, session_key)) is not None:
                yield _event("error", error)
                return
    except Exception:
        # The layer or the database failed: end the stream rather than go silent; the
        # client reconnects (EventSource does by itself) and resumes from Last-Event-ID.
        log.warning("event stream on %s ended by an error", groups[0], exc_info=True)
    finally:
        await _leave(layer, groups, channel, pending)


async def _join(layer: Any, groups: tuple[str, ...], channel: str) -> float:
    for group in groups:
        await layer.group_add(group, channel)
    return asyncio.get_running_loop().time()


async def _leave(layer: Any, groups: tuple[str, ...], channel: str, pending: Any) -> None:
    """Cancel the pending receive (pub/sub unsubscribes then) and leave the groups."""
    if pending is not None:
        await asyncio.sleep(0)  # a receive cancelled before its first step cleans nothing
        pending.cancel()
        await asyncio.wait({pending})
        if not pending.cancelled():
            pending.exception()  # retrieve it, or asyncio logs "never retrieved"
    for group in groups if channel else ():
        try:
            await layer.group_discard(group, channel)
        except Exception:
            log.warning("group_discard of an event stream failed", exc_info=True)
