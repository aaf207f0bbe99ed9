"""Marks `streaming` messages whose runner stopped beating as `interrupted`.

A runner checkpoints (text and heartbeat) every STREAM_CHECKPOINT_S; one silent for
STREAM_STALE_S died with its process. Its text is recovered from the replay log when
that still holds more than the last checkpoint, so viewers keep every delta they saw.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chat import protocol
from chat.domain import quota
from chat.domain.db import db
from chat.fanout import get_layer, publish
from chat.models import Message

log = logging.getLogger(__name__)


def _stale() -> list[tuple[str, str, int]]:
    """(message, conversation, checkpointed seq) of each answer whose runner stopped
    beating. A runner that beats after this read is alive: `_mark_interrupted` checks
    again, so the seq read here is the one any UPDATE would replace."""
    cutoff = timezone.now() - timedelta(seconds=settings.STREAM_STALE_S)
    rows = Message.objects.filter(status=Message.Status.STREAMING, heartbeat_at__lt=cutoff)
    return [(str(m), str(c), s) for m, c, s in rows.values_list("id", "conversation_id", "seq")]


def _mark_interrupted(message_id: str, text: str | None, seq: int | None) -> Message | None:
    """Store a stale answer `interrupted` with `text` (the replay log's, when it holds
    more than the checkpoint), its usage estimated from that text and flagged; the
    user's reservation settles to that estimate."""
    fields = {"status": Message.Status.INTERRUPTED, "completed_at": timezone.now()}
    if text is not None:
        fields.update(content=text, seq=seq)
    cutoff = timezone.now() - timedelta(seconds=settings.STREAM_STALE_S)
    # Re-check staleness in the UPDATE: a runner that beat meanwhile is alive.
    with transaction.atomic():
        updated = Message.objects.filter(
            pk=message_id, status=Message.Status.STREAMING, heartbeat_at__lt=cutoff
        ).update(**fields)
        if not updated:
            return None
        message = Message.objects.select_related("author").get(pk=message_id)
        usage = quota.estimate_for_orphan(message=message)
        if usage is not None:
            message.prompt_tokens, message.completion_tokens, message.total_tokens = usage
            message.usage_estimated = True
            message.save(
                update_fields=[
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "usage_estimated",
                ]
            )
        quota.settle(message_id=message_id, used=usage[2] if usage else None)
    return message


async def sweep() -> int:
    """Interrupt every stale streaming message; returns how many were interrupted."""
    count = 0
    for message_id, conversation_id, checkpoint in await db(_stale)():
        text, seq = None, None
        try:
            logged = await get_layer().replay.read(conversation_id, message_id)
        except Exception:
            logged = None
            log.warning("replay log unreadable for %s; keeping the checkpoint", message_id)
        if logged and logged[1] > checkpoint:
            text, seq = logged  # all that viewers saw, beyond the checkpoint
        message = await db(_mark_interrupted)(message_id, text, seq)
        if message is None:
            continue
        count += 1
        log.warning("message %s had no live runner: stored as interrupted", message_id)
        # A runner that was only held up (a frozen process) stops at once when it wakes.
        await publish.request_cancel(message_id, kind="lost")
        await publish.publish_done(conversation_id, message_id, protocol.message_payload(message))
    return count
