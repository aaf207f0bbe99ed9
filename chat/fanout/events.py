"""The conversation events that travel through the layer, and their wire form.

Every event is a dict with a `type` a consumer handles (`chat.frame`, `chat.delta`,
`chat.done`, `chat.member_removed`...). A frame's JSON `text` is built once, where it is
published; every viewer forwards that text as it is. On Redis an event travels as
msgpack, decoded once per process.
"""

from typing import Any

import msgpack

from chat import protocol


def frame(frame_dict: dict[str, Any]) -> dict[str, Any]:
    """A server frame for every viewer, serialized once."""
    return {"type": "chat.frame", "text": protocol.dumps(frame_dict)}


def delta(message_id: str, seq: int, text: str) -> dict[str, Any]:
    """One coalesced delta; `seq` lets viewers drop what a snapshot held, and `text` is
    the frame's JSON."""
    return {
        "type": "chat.delta",
        "message_id": message_id,
        "seq": seq,
        "text": protocol.delta_frame_text(message_id, seq, text),
    }


def done(message_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """An answer's final state (`done` with its `Message`): viewers forward it and then
    drop any delta of that message that still arrives."""
    return {
        "type": "chat.done",
        "message_id": message_id,
        "text": protocol.dumps(protocol.done_frame(message)),
    }


def resync() -> dict[str, Any]:
    """Events of the group may have been lost on their way to this process (its
    subscription was made again after a lost connection): each viewer owes its client a
    snapshot. Made by the layer itself, for its listeners; never published."""
    return {"type": "chat.resync"}


def serialize(event: dict[str, Any]) -> bytes:
    """An event as it travels between processes."""
    return msgpack.packb(event, use_bin_type=True)


def deserialize(data: bytes) -> dict[str, Any]:
    return msgpack.unpackb(data, raw=False)
