"""Whether viewers see a message (docs/moderation.md, "Redaction"): `Message.redacted`
derived from the message's cases, and the frames that tell its open pages when it
changes. The stored text never changes: staff keep reading it.
"""

import uuid
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings

from chat import protocol
from chat.domain import selectors, sql
from chat.fanout import publish as fanout
from chat.models import Message, ModerationCase

State = ModerationCase.State


@dataclass(frozen=True)
class VisibilityChange:
    """A message became hidden (or visible again); viewers must be told."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    hidden: bool
    payload: dict[str, Any] | None = None  # the message as viewers now see it


def _refresh_visibility(*, message_id: uuid.UUID | str) -> VisibilityChange | None:
    """Derive `Message.redacted` from the message's cases; the change, if any."""
    # Two statements, not one UPDATE deriving and comparing with an EXISTS: that one
    # costs more Python (two subqueries to build) than the round trip it saves
    # (docs/decisions.md). Written out, as every finished answer's verdict runs them.
    hide, params = "c.state = %s", [State.REJECTED]
    if settings.MODERATION_HOLD_FLAGGED:
        # Held: flagged by the model and no human decision yet. A report alone never
        # hides a message, or any member could hide any answer.
        hide = "(c.state = %s OR (c.state = %s AND c.flagged = %s))"
        params = [State.REJECTED, State.FLAGGED, True]
    message_param = sql.uuid_param(message_id)
    (hidden,) = sql.fetch_one(
        f"SELECT EXISTS (SELECT 1 FROM {sql.table(ModerationCase)} c"
        f" WHERE c.message_id = %s AND {hide})",
        [message_param, *params],
    )
    hidden = bool(hidden)  # SQLite answers 0 or 1
    changed = sql.update(
        Message, {"redacted": hidden}, "id = %s AND redacted = %s", [message_param, not hidden]
    )
    if not changed:
        return None
    message = selectors.message_with_author(message_id=message_id)
    return VisibilityChange(
        conversation_id=message.conversation_id,
        message_id=message.pk,
        hidden=hidden,
        payload=None if hidden else protocol.message_payload(message),
    )


async def announce(change: VisibilityChange) -> None:
    """Tell the conversation's viewers that a message was hidden or shown again."""
    if change.hidden:
        await fanout.publish_redacted(change.conversation_id, change.message_id)
    elif change.payload is not None:
        await fanout.publish_restored(change.conversation_id, change.payload)


def announce_sync(change: VisibilityChange | None) -> None:
    """`announce` from sync code (admin views, management commands)."""
    if change is not None:
        async_to_sync(announce)(change)
