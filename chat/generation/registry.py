"""Runs generations as tasks owned by this process, not by the socket that asked.

The originating browser may close its tab and the answer still completes and is stored.
The registry keeps a strong reference to every task (asyncio drops unreferenced tasks),
lets a cancel reach the runner from any process through the generation's group, and
stores every running message as `interrupted` on shutdown.
"""

import asyncio
import logging
import uuid

from django.conf import settings

from chat.domain import services
from chat.domain.db import db
from chat.fanout import get_layer, groups
from chat.fanout.layer import Listener
from chat.generation.relay import Relay
from chat.generation.runner import INTERRUPTED, LOST, StreamRunner
from chat.generation.store import Job, store
from chat.ops import logs
from chat.upstream.client import get_client

log = logging.getLogger(__name__)


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
        stops = await _listen_for_stops(job.message_id, runner)
        try:
            outcome = await runner.run()
        except asyncio.CancelledError:
            # The loop itself is going away: keep what we can, as `interrupted`.
            runner.stop(INTERRUPTED)
            outcome = runner.outcome()
            await asyncio.shield(store(job, outcome))
            raise
        finally:
            if stops is not None:
                get_layer().unlisten(groups.generation(job.message_id), stops)
            self._runners.pop(key, None)
        await store(job, outcome)


async def _listen_for_stops(message_id: uuid.UUID, runner: StreamRunner) -> Listener | None:
    """Listen on the generation's group, where any process asks it to stop; None (and
    the answer runs on, unstoppable from elsewhere) when the layer cannot subscribe."""

    def on_event(event: dict) -> None:
        kind = event.get("type")
        if kind == "generation.cancel":
            runner.stop("cancelled")
        elif kind == "generation.lost":
            runner.stop(LOST)  # the sweeper stored the message: stop relaying at once

    try:
        await get_layer().listen(groups.generation(message_id), on_event)
    except Exception as exc:
        log.warning("stop requests for %s cannot reach it: %r", message_id, exc)
        return None
    return on_event


registry = Registry()
