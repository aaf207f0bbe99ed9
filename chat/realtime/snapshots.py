"""The `snapshot` frame: a conversation's stored messages, with streaming ones brought up
to date from the replay log, and who is viewing. Callers subscribe to the conversation
group *before* building it, then drop live deltas at or below each message's `seq`."""

import logging
from typing import Any

from chat import protocol
from chat.domain import selectors
from chat.domain.db import db
from chat.fanout import get_layer, presence
from chat.models import Membership, Message

log = logging.getLogger(__name__)


async def build(membership: Membership) -> dict[str, Any]:
    """The snapshot frame for this member (the conversation must be loaded on it)."""
    conversation = membership.conversation
    messages = await db(selectors.message_list)(conversation_id=conversation.id)
    payloads = []
    for message in messages:
        payload = protocol.message_payload(message)
        if message.status == Message.Status.STREAMING:
            await _merge_replay_log(payload, str(conversation.id))
        payloads.append(payload)
    return {
        "type": "snapshot",
        "conversation": {
            "id": str(conversation.id),
            "title": conversation.title,
            "role": membership.role,
        },
        "messages": payloads,
        "viewers": await _viewers(str(conversation.id)),
    }


# The "last seq shown" of a message that is final: no delta of it is shown any more (one
# that arrives after its `done`, from a runner that lost its claim, is dropped).
FINAL = 1 << 62


def shown_seqs(frame: dict[str, Any]) -> dict[str, int]:
    """Message id -> the last seq a snapshot frame shows of each assistant message: its
    `seq` while streaming, FINAL once it is final."""
    return {
        m["id"]: m["seq"] if m["status"] == "streaming" else FINAL
        for m in frame["messages"]
        if m["role"] == "assistant"
    }


async def _merge_replay_log(payload: dict[str, Any], conversation_id: str) -> None:
    """Bring a streaming message's text up to the replay log (ahead of the checkpoint)."""
    try:
        logged = await get_layer().replay.read(conversation_id, payload["id"])
    except Exception:
        log.warning("replay log unreadable; snapshot uses the checkpoint", exc_info=True)
        return
    if logged is not None and logged[1] >= payload["seq"]:
        payload["content"], payload["seq"] = logged


async def _viewers(conversation_id: str) -> list[dict[str, str]]:
    try:
        return await presence.viewers(conversation_id)
    except Exception:
        log.warning("presence unreadable; snapshot without viewers", exc_info=True)
        return []
