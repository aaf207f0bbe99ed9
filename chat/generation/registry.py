"""Runs generations as tasks owned by this process, not by the socket that asked.

The originating browser may close its tab and the answer still completes and is stored.
The registry keeps a strong reference to every task (asyncio drops unreferenced tasks),
lets a cancel reach the runner from any process through the generation's group, and
stores every running message as `interrupted` on shutdown.
"""

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

from channels.layers import get_channel_layer
from django.conf import settings

from chat import moderation, protocol
from chat.domain import services
from chat.domain.db import db
from chat.fanout import publish as fanout
from chat.fanout import replay
from chat.fanout.redis_subscriber import get_subscriber
from chat.generation.relay import Relay
from chat.generation.runner import INTERRUPTED, LOST, StreamOutcome, StreamRequest, StreamRunner
from chat.models import Message
from chat.ops import logs, metrics
from chat.upstream.client import get_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    request: StreamRequest
    # The frames that show the answer (its prompt, its placeholder), still being
    # published when the job starts: the first delta and the `done` wait for them. It
    # never raises: a failed publish is logged and reported by `fanout.publish`.
    announced: Awaitable[None] | None = None


class Registry:
    """The generations running in this process."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, StreamRunner] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, job: Job) -> asyncio.Task[None]:
        key = str(job.message_id)
        task = asyncio.create_task(self._run(job), name=f"generation-{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))
        return task

    def stop(self, message_id: str, reason: str) -> bool:
        """Stop a generation of this process; False if it does not run here."""
        runner = self._runners.get(str(message_id))
        if runner is None:
            return False
        runner.stop(reason)
        return True

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no generation runs here, or `timeout` seconds."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Store every running generation as `interrupted` with all its text so far."""
        for runner in list(self._runners.values()):
            runner.stop(INTERRUPTED)
        tasks = list(self._tasks.values())
        if tasks:
            log.info("shutdown: storing %d running generation(s) as interrupted", len(tasks))
            await asyncio.wait(tasks, timeout=timeout)

    async def _run(self, job: Job) -> None:
        key = str(job.message_id)
        logs.stream_id.set(key)  # every log line of this task names its stream
        runner = StreamRunner(
            get_client(),
            job.request,
            publish=Relay(job.conversation_id, job.message_id, after=job.announced),
            checkpoint=lambda text, seq: db(services.message_checkpoint)(
                message_id=job.message_id, content=text, seq=seq
            ),
            flush_s=settings.STREAM_FLUSH_MS / 1000,
            checkpoint_s=settings.STREAM_CHECKPOINT_S,
            idle_timeout_s=settings.OPENAI_TIMEOUT_S,
        )
        self._runners[key] = runner
        listener = asyncio.create_task(_listen_for_cancel(job.message_id, runner))
        try:
            outcome = await runner.run()
        except asyncio.CancelledError:
            # The loop itself is going away: keep what we can, as `interrupted`.
            runner.stop(INTERRUPTED)
            outcome = runner.outcome()
            await asyncio.shield(_store(job, outcome))
            raise
        finally:
            listener.cancel()
            self._runners.pop(key, None)
        await _store(job, outcome)


async def _listen_for_cancel(message_id: uuid.UUID, runner: StreamRunner) -> None:
    group = fanout.generation_group(message_id)
    redis_channel = fanout.group_pubsub_channel(group)
    try:
        if redis_channel is not None:
            await _listen_on_redis(redis_channel, runner)
        else:
            await _listen_on_layer(group, runner)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.warning("cancel listener for %s stopped", message_id, exc_info=True)


async def _listen_on_redis(redis_channel: str, runner: StreamRunner) -> None:
    # On the process's own subscriber connection, as the hub does: through the pub/sub
    # layer each generation's SUBSCRIBE queued behind the layer's one lock, which its
    # PUBLISHes share, and held up the prompt frames of every other answer starting then
    # (seconds at 100 answers starting at once, bench/REPORT.md).
    def on_message(payload: bytes) -> None:
        _on_generation_event(fanout.deserialize(payload), runner)

    subscriber = get_subscriber()
    await subscriber.subscribe(redis_channel, on_message)
    try:
        # Until the generation ends and cancels this listener.
        await asyncio.get_running_loop().create_future()
    finally:
        subscriber.unsubscribe(redis_channel, on_message)


async def _listen_on_layer(group: str, runner: StreamRunner) -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        while True:
            # Keep listening until cancelled: the pub/sub layer unsubscribes a channel
            # only when a receive on it is cancelled.
            _on_generation_event(await layer.receive(channel), runner)
    finally:
        try:
            await asyncio.shield(layer.group_discard(group, channel))
        except Exception:
            log.debug("group_discard failed for %s", group, exc_info=True)


def _on_generation_event(event: dict, runner: StreamRunner) -> None:
    kind = event.get("type")
    if kind == "generation.cancel":
        runner.stop("cancelled")
    elif kind == "generation.lost":
        runner.stop(LOST)  # the sweeper stored the message: stop relaying at once


async def _store(job: Job, outcome: StreamOutcome) -> None:
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
    await fanout.publish_done(
        job.conversation_id, job.message_id, protocol.message_payload(message)
    )
    try:
        await replay.finish(str(job.message_id))
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


registry = Registry()
