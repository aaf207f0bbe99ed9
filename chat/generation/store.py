"""An answer's end: its one final write, then its `done` to every viewer, then its
moderation, once the runner has returned."""

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

from django.conf import settings

from chat import moderation, protocol
from chat.domain import services
from chat.domain.db import db
from chat.fanout import get_layer
from chat.fanout.publish import publish_done
from chat.generation.runner import LOST, StreamOutcome, StreamRequest
from chat.models import Message
from chat.ops import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    request: StreamRequest
    # The frames that show the answer (its prompt, its placeholder), still being
    # published when the job starts: the first delta and the `done` wait for them. It
    # never raises: a failed publish is logged and reported by the publisher.
    announced: Awaitable[None] | None = None


async def store(job: Job, outcome: StreamOutcome) -> None:
    """Save the final state, then announce it; a failed save is retried briefly."""
    if outcome.status == LOST:
        _count(outcome)
        log.warning("message %s was stored elsewhere; this runner stored nothing", job.message_id)
        return
    usage = outcome.usage
    error = outcome.error
    kwargs = {
        "message_id": job.message_id,
        "status": outcome.status,
        "content": outcome.content,
        "seq": outcome.seq,
        "model": outcome.model,
        "finish_reason": outcome.finish_reason,
        "usage": (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        if usage
        else None,
        "usage_estimated": bool(usage and usage.estimated),
        "error_code": error.code if error else "",
        "error_detail": error.detail if error else "",
        "error_retry_after": error.retry_after if error else None,
        "ttft_ms": outcome.ttft_ms,
        "duration_ms": outcome.duration_ms,
    }
    _count(outcome)
    message, stored = None, False
    for attempt in range(5):
        try:
            message = await db(_finish)(kwargs)
            stored = True
            break
        except Exception:
            log.warning(
                "storing message %s failed (attempt %d)", job.message_id, attempt + 1, exc_info=True
            )
            await asyncio.sleep(0.5 * 2**attempt)
    if not stored:
        log.error("message %s could not be stored; the sweeper will recover it", job.message_id)
        return
    if message is None:
        # Deleted with its conversation, or stored by the sweeper while this runner was
        # held up: either way its one final write and `done` are not this runner's.
        log.warning("message %s was no longer streaming; nothing stored", job.message_id)
        return
    log.info(
        "message %s %s: %d chars, %d deltas, ttft %s ms, %s ms",
        job.message_id,
        outcome.status,
        len(outcome.content),
        outcome.seq,
        outcome.ttft_ms,
        outcome.duration_ms,
    )
    if not settings.MODERATION_WORKER:
        # Its own task, which starts once `done` is on its way: moderation never delays
        # or fails the answer, and whoever sees `done` can already wait for it.
        moderation.schedule(job.message_id)
    if job.announced is not None:
        await job.announced
    await publish_done(job.conversation_id, job.message_id, protocol.message_payload(message))
    try:
        await get_layer().replay.finish(str(job.conversation_id), str(job.message_id))
    except Exception:
        log.warning("replay log expiry failed for %s", job.message_id, exc_info=True)


def _finish(kwargs: dict) -> Message | None:
    """The answer's final write; with a moderation worker, its case is opened in the
    same trip to the database thread."""
    message = services.message_finish(**kwargs)
    if message is not None:
        moderation.open_for_worker(message_id=message.pk)
    return message


def _count(outcome: StreamOutcome) -> None:
    metrics.generations.inc(label_value=outcome.status)
    if outcome.error is not None:
        metrics.upstream_errors.inc(label_value=outcome.error.code)
    if outcome.ttft_ms is not None:
        metrics.ttft.observe(outcome.ttft_ms / 1000)
