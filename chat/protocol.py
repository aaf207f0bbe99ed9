"""Websocket frames of the chat protocol (DESIGN section 4), both directions.

Client frames are parsed into pydantic models with size limits; a parse failure is a
`ChatError` the consumer answers with an `error` frame. Server frames are built by the
small functions below so the wire shape lives in one place.
"""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chat.exceptions import BadFrame, ChatError, TooLong
from chat.models import Message
from chat.text import clean_user_text

ClientMsgId = Annotated[str, Field(min_length=1, max_length=100)]
MessageId = Annotated[str, Field(min_length=1, max_length=64)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PromptFrame(_Frame):
    type: Literal["prompt"]
    content: str
    client_msg_id: ClientMsgId | None = None


class CancelFrame(_Frame):
    type: Literal["cancel"]
    message_id: MessageId


class RegenerateFrame(_Frame):
    type: Literal["regenerate"]
    message_id: MessageId


class SyncFrame(_Frame):
    type: Literal["sync"]


ClientFrame = Annotated[
    PromptFrame | CancelFrame | RegenerateFrame | SyncFrame, Field(discriminator="type")
]
_client_frame = TypeAdapter(ClientFrame)


class BadJson(ChatError):
    """The frame is not a JSON object."""

    code = "bad_json"
    default_detail = "The frame is not valid JSON."


# Websocket close codes (DESIGN: the protocol's closes).
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_NOT_SIGNED_IN = 4401
CLOSE_NOT_MEMBER = 4403
CLOSE_NO_CONVERSATION = 4404
CLOSE_FLOOD = 4429

# A server that refuses to send a code of the 1xxx range (daphne without its internals,
# chat/realtime/direct_send.py) closes with its twin of the private range, meaning the same.
_PRIVATE_TWINS = {CLOSE_TOO_BIG: 4009, CLOSE_SERVICE_RESTART: 4012, CLOSE_TRY_AGAIN_LATER: 4013}


def fallback_close_code(code: int | None) -> int | None:
    """The private-range twin of a 1xxx close code, or None when it has none."""
    return _PRIVATE_TWINS.get(code)


def parse_client_frame(text: str) -> PromptFrame | CancelFrame | RegenerateFrame | SyncFrame:
    """Parse one text frame, raising a ChatError whose code says what was wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadJson() from exc
    if not isinstance(data, dict):
        raise BadJson("The frame must be a JSON object.")
    if data.get("type") not in {"prompt", "cancel", "regenerate", "sync"}:
        raise BadFrame("Unknown or missing frame type.")
    try:
        frame = _client_frame.validate_python(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors()[:3])
        raise BadFrame(f"Invalid field(s): {fields}.") from exc
    if isinstance(frame, PromptFrame):
        return frame.model_copy(update={"content": clean_prompt(frame.content)})
    return frame


def clean_prompt(content: str) -> str:
    """The prompt as stored, or a ChatError: empty, too long, or unstorable text."""
    if len(content) > settings.PROMPT_MAX_CHARS:
        raise TooLong(f"The prompt is over {settings.PROMPT_MAX_CHARS} characters.")
    content = clean_user_text(content, field="prompt")
    if not content.strip():
        raise BadFrame("The prompt is empty.")
    return content


# ---- server -> client -------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_payload(message: Message, *, author_name: str | None = None) -> dict[str, Any]:
    """The `Message` object of the protocol (new fields may be added, none removed)."""
    error = None
    if message.error_code:
        error = {"code": message.error_code, "detail": message.error_detail}
        if message.error_retry_after is not None:
            error["retry_after"] = message.error_retry_after
    if author_name is None and message.author_id is not None:
        author_name = message.author.username
    return {
        "id": str(message.id),
        "role": message.role,
        "author": author_name,
        # Moderation hid it: viewers get no text (staff still see it in the admin).
        "content": "" if message.redacted else message.content,
        "status": message.status,
        "model": message.model or None,
        "finish_reason": message.finish_reason or None,
        "usage": message.usage,
        "usage_estimated": message.usage_estimated,
        "error": error,
        "created_at": _iso(message.created_at),
        "completed_at": _iso(message.completed_at),
        "seq": message.seq,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "reply_to": str(message.reply_to_id) if message.reply_to_id else None,
        "redacted": message.redacted,
    }


def dumps(frame: dict[str, Any] | list[Any]) -> str:
    """Serialize a server frame (compact, UTF-8 safe)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def error_frame(error: ChatError, *, client_msg_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": error.code, "detail": error.detail}
    if error.retry_after is not None:
        frame["retry_after"] = error.retry_after
    if getattr(error, "reset_at", None):
        frame["reset_at"] = error.reset_at
    if client_msg_id:
        frame["client_msg_id"] = client_msg_id
    return frame


def delta_frame_text(message_id: str, seq: int, text: str) -> str:
    """A `delta` frame, serialized once by the runner and forwarded verbatim."""
    return dumps({"type": "delta", "message_id": message_id, "seq": seq, "text": text})


# A client that offers this websocket subprotocol receives each delta as
# `["d",message_id,seq,text]`: the same four values with 37 fewer bytes of keys, so the
# frame costs about 52 bytes plus the text instead of 89 (docs/decisions.md). Every other
# frame, and the form a client that does not offer it gets, are unchanged.
COMPACT_SUBPROTOCOL = "livechat.compact"

_DELTA_HEAD = len('{"type":"delta","message_id":"","seq":,"text":')


def compact_delta_text(message_id: str, seq: int, frame_text: str) -> str:
    """The compact form of the delta whose `delta_frame_text` is `frame_text`. The text's
    JSON is cut from that frame rather than encoded again: this runs once per delta per
    process, and `dumps` writes the keys in a fixed order with nothing escaped in an id."""
    start = _DELTA_HEAD + len(message_id) + len(str(seq))
    if frame_text[start - 8 : start] != ',"text":':  # not the shape above: build it anew
        frame = json.loads(frame_text)
        return dumps(["d", frame["message_id"], frame["seq"], frame["text"]])
    return f'["d","{message_id}",{seq},{frame_text[start:-1]}]'


def message_frame(payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "message": payload}


def done_frame(payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "done", "message": payload}
