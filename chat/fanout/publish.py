"""What the app tells the viewers of a conversation, its users and its running answers,
through the layer (`chat.fanout.layer`): every server frame is serialized once here and
forwarded as that text by every socket and event stream."""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from chat.fanout import events, get_layer, groups

log = logging.getLogger(__name__)


async def publish(conversation_id: uuid.UUID | str, event: dict[str, Any]) -> bool:
    """Send one event to everyone viewing the conversation; False (logged) if it could
    not be sent."""
    try:
        await get_layer().group_send(groups.conversation(conversation_id), event)
    except Exception as exc:  # a transport failure (Redis away): the frame is lost
        log.warning("event to conversation %s not sent: %r", conversation_id, exc)
        return False
    return True


async def publish_frame(conversation_id: uuid.UUID | str, frame: dict[str, Any]) -> bool:
    """Broadcast a server frame to every viewer of the conversation."""
    return await publish(conversation_id, events.frame(frame))


async def publish_frames(
    conversation_id: uuid.UUID | str, frames: Sequence[dict[str, Any]]
) -> None:
    """Broadcast server frames one after another, each once the last is published."""
    for frame in frames:
        await publish_frame(conversation_id, frame)


async def publish_delta(
    conversation_id: uuid.UUID | str, message_id: str, seq: int, text: str
) -> bool:
    """Broadcast one coalesced delta, without its replay-log append (the relay makes
    both in one trip: `ConversationLayer.publish_logged`)."""
    return await publish(conversation_id, events.delta(message_id, seq, text))


async def publish_done(
    conversation_id: uuid.UUID | str, message_id: uuid.UUID | str, message: dict[str, Any]
) -> bool:
    """Broadcast an answer's final state (`done` with its `Message`)."""
    return await publish(conversation_id, events.done(str(message_id), message))


async def request_cancel(message_id: uuid.UUID | str, *, kind: str = "cancel") -> bool:
    """Ask the generation of this message to stop, wherever it runs: `cancel` (a
    member's Stop), or `lost` (its message was stored elsewhere: store nothing)."""
    try:
        await get_layer().group_send(groups.generation(message_id), {"type": f"generation.{kind}"})
    except Exception as exc:
        log.warning("%s for message %s not sent: %r", kind, message_id, exc)
        return False
    return True


async def publish_member_removed(conversation_id: uuid.UUID | str, user_id: int) -> bool:
    """Tell every socket of the conversation that a user lost access (they close 4403)."""
    return await publish(conversation_id, {"type": "chat.member_removed", "user_id": user_id})


async def publish_signed_out(user_id: int, session_key: str | None) -> None:
    """Close the user's sockets and event streams (4401): those of one session, or all
    when None."""
    try:
        await get_layer().group_send(
            groups.user(user_id), {"type": "chat.signed_out", "session_key": session_key}
        )
    except Exception as exc:
        log.warning("sign-out of user %s not broadcast: %r", user_id, exc)


async def publish_conversation_deleted(conversation_id: uuid.UUID | str) -> bool:
    """Tell every socket of a deleted conversation to close (4404)."""
    return await publish(conversation_id, {"type": "chat.conversation_deleted"})


async def publish_conversation_renamed(conversation_id: uuid.UUID | str, title: str) -> bool:
    """Show a new title to every viewer: a `conversation` frame (pages ignore unknown
    frame types, so older clients are unaffected)."""
    frame = {"type": "conversation", "conversation": {"id": str(conversation_id), "title": title}}
    return await publish_frame(conversation_id, frame)


async def publish_redacted(conversation_id: uuid.UUID | str, message_id: uuid.UUID | str) -> bool:
    """Moderation hid a message: every open page drops its text at once."""
    frame = {"type": "redacted", "message_id": str(message_id)}
    return await publish_frame(conversation_id, frame)


async def publish_restored(conversation_id: uuid.UUID | str, message: dict[str, Any]) -> bool:
    """A redaction was undone: a `restored` frame with the whole `Message` (pages ignore
    unknown frame types, so older clients show it again at their next snapshot)."""
    return await publish_frame(conversation_id, {"type": "restored", "message": message})
