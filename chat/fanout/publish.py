"""Group naming and publishing to the viewers of a conversation.

Every server frame goes through the channel layer as `{"type": "chat.frame", "text": ...}`
with the JSON text built once here; consumers forward the text without re-encoding.
"""

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from chat import protocol
from chat.fanout.redis_lane import get_lane

log = logging.getLogger(__name__)


def _hex(value: uuid.UUID | str) -> str:
    # Group names allow only [a-zA-Z0-9-_.] and must stay under 100 characters: build
    # them from validated ids, never from user text.
    return uuid.UUID(str(value)).hex


def conversation_group(conversation_id: uuid.UUID | str) -> str:
    """The group every open socket of a conversation joins."""
    return f"conv.{_hex(conversation_id)}"


def user_group(user_id: int) -> str:
    """The group every open socket of a user joins (sign-out and deactivation)."""
    return f"user.{int(user_id)}"


def generation_group(message_id: uuid.UUID | str) -> str:
    """The group a running generation listens on for cancel requests from any process."""
    return f"gen.{_hex(message_id)}"


async def publish(conversation_id: uuid.UUID | str, event: dict[str, Any]) -> bool:
    """Send one event to the conversation group; False (logged) if it could not be.

    Under the pub/sub layer the event is PUBLISHed on this process's lane
    (chat/fanout/redis_lane.py), where the deltas go: in order with them, and clear of the
    layer's one lock, which every SUBSCRIBE through the layer holds for a round trip
    (bench/REPORT.md). The layer is the way when there is no lane, and the fallback."""
    channel = pubsub_channel(conversation_id)
    if channel is not None:
        try:
            await get_lane().round_trip(("PUBLISH", channel, serialize(event)))
            return True
        except Exception as exc:
            log.info("lane publish to %s failed, trying the layer: %r", conversation_id, exc)
    group = conversation_group(conversation_id)
    for attempt in (1, 2):
        try:
            await get_channel_layer().group_send(group, event)
            return True
        except Exception as exc:  # the layer's errors vary by backend (Redis, capacity...)
            # After a Redis restart the layer's first publish fails on its stale
            # connection and reconnects: one retry saves that frame.
            if attempt == 2:
                log.warning("group_send to conversation %s failed: %r", conversation_id, exc)
    return False


async def publish_frame(conversation_id: uuid.UUID | str, frame: dict[str, Any]) -> bool:
    """Broadcast a server frame to every viewer of the conversation."""
    return await publish(conversation_id, {"type": "chat.frame", "text": protocol.dumps(frame)})


async def publish_frames(
    conversation_id: uuid.UUID | str, frames: Sequence[dict[str, Any]]
) -> None:
    """Broadcast server frames one after another, each once the last is published."""
    for frame in frames:
        await publish_frame(conversation_id, frame)


def delta_event(message_id: str, seq: int, text: str) -> dict[str, Any]:
    """The group event of one coalesced delta; `seq` lets consumers drop what a
    snapshot held, and `text` is the frame's JSON, built once for every viewer."""
    return {
        "type": "chat.delta",
        "message_id": message_id,
        "seq": seq,
        "text": protocol.delta_frame_text(message_id, seq, text),
    }


def done_event(message_id: str, text: str) -> dict[str, Any]:
    """The group event of an answer's `done` frame (serialized once, as `text`): viewers
    forward it and then drop any delta of that message that still arrives."""
    return {"type": "chat.done", "message_id": message_id, "text": text}


async def publish_done(
    conversation_id: uuid.UUID | str, message_id: uuid.UUID | str, message: dict[str, Any]
) -> bool:
    """Broadcast an answer's final state (`done` with its `Message`)."""
    text = protocol.dumps(protocol.done_frame(message))
    return await publish(conversation_id, done_event(str(message_id), text))


async def publish_delta(
    conversation_id: uuid.UUID | str, message_id: str, seq: int, text: str
) -> bool:
    """Broadcast one coalesced delta through the layer."""
    return await publish(conversation_id, delta_event(message_id, seq, text))


def pubsub_channel(conversation_id: uuid.UUID | str) -> str | None:
    """The Redis channel the pub/sub layer PUBLISHes the conversation's events on, so
    the relay can send a delta in the same round trip as its replay-log append (DESIGN:
    "XADD per flush in the same round trip as the publish"), serialized by
    `serialize`. None when the layer is not `RedisPubSubChannelLayer` on the one Redis
    of `REDIS_URL`: then use `publish`.
    """
    return group_pubsub_channel(conversation_group(conversation_id))


def group_pubsub_channel(group: str) -> str | None:
    """The Redis channel of a group under the pub/sub layer (see `pubsub_channel`);
    the hub subscribes to it directly (chat/fanout/redis_subscriber.py)."""
    layer = get_channel_layer()
    if not isinstance(layer, RedisPubSubChannelLayer) or not settings.REDIS_URL:
        return None
    loop_layer = layer._get_layer()  # the layer's naming is private: pinned in the lock
    if len(loop_layer._shards) != 1:
        return None
    return loop_layer._get_group_channel_name(group)


def serialize(event: dict[str, Any]) -> bytes:
    """An event as the layer puts it on the wire (msgpack)."""
    return get_channel_layer().serialize(event)


def deserialize(data: bytes) -> dict[str, Any]:
    """An event from the layer's wire form."""
    return get_channel_layer().deserialize(data)


async def request_cancel(message_id: uuid.UUID | str, *, kind: str = "cancel") -> bool:
    """Ask the generation of this message to stop, wherever it runs: `cancel` (a
    member's Stop), or `lost` (its message was stored elsewhere: store nothing)."""
    try:
        await get_channel_layer().group_send(
            generation_group(message_id), {"type": f"generation.{kind}"}
        )
    except Exception as exc:
        log.warning("%s for message %s not sent: %r", kind, message_id, exc)
        return False
    return True


async def publish_member_removed(conversation_id: uuid.UUID | str, user_id: int) -> bool:
    """Tell every socket of the conversation that a user lost access (they close 4403)."""
    return await publish(conversation_id, {"type": "chat.member_removed", "user_id": user_id})


async def publish_signed_out(user_id: int, session_key: str | None) -> None:
    """Close the user's sockets (4401): those of one session, or all when None."""
    try:
        await get_channel_layer().group_send(
            user_group(user_id), {"type": "chat.signed_out", "session_key": session_key}
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
