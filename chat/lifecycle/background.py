"""Per-process background duties: the periodic sweeper, moderation retries, liveness
refreshes, the Redis watch, and the graceful-shutdown hook.

Started by the first connection the process serves (`StartOnFirstConnection` wraps the
ASGI application), because daphne offers no startup hook (it does not speak the ASGI
lifespan protocol).
"""

import asyncio
import logging
import sys
import weakref

from channels.layers import get_channel_layer
from django.conf import settings

from chat.realtime import sockets

log = logging.getLogger(__name__)

REDIS_WATCH_INTERVAL_S = 1.0
RESYNC_AGAIN_AFTER_S = 3.0

# Weak: a closed loop's id may be reused by a new one (tests start many loops).
_started_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
_background: set[asyncio.Task[None]] = set()


def ensure_started() -> None:
    """Start this loop's sweeper and hook shutdown, once per event loop."""
    loop = asyncio.get_running_loop()
    if loop in _started_loops:
        return
    _started_loops.add(loop)
    if settings.STREAM_SWEEP_INTERVAL_S > 0:
        task = loop.create_task(_sweep_forever(), name="stream-sweeper")
        _background.add(task)
        task.add_done_callback(_background.discard)
    # With a moderation worker, retries are its work too.
    if (
        settings.MODERATION_ENABLED
        and not settings.MODERATION_WORKER
        and settings.MODERATION_RETRY_INTERVAL_S > 0
    ):
        from chat import moderation

        retrier = loop.create_task(moderation.run_forever(), name="moderation-retry")
        _background.add(retrier)
        retrier.add_done_callback(_background.discard)
    group_expiry = getattr(get_channel_layer(), "group_expiry", None)
    if group_expiry:
        refresher = loop.create_task(_refresh_groups(group_expiry), name="group-refresh")
        _background.add(refresher)
        refresher.add_done_callback(_background.discard)
    if settings.REDIS_URL:
        counter = loop.create_task(_refresh_connection_counts(), name="connection-refresh")
        _background.add(counter)
        counter.add_done_callback(_background.discard)
        watcher = loop.create_task(_watch_redis(), name="redis-watch")
        _background.add(watcher)
        watcher.add_done_callback(_background.discard)
    _hook_twisted_shutdown()


async def _refresh_groups(group_expiry: float) -> None:
    # The in-memory and core Redis layers drop a group member `group_expiry` seconds
    # after it joined, however active: a viewer connected longer would go silent.
    while True:
        await asyncio.sleep(max(group_expiry / 3, 0.2))
        for consumer in sockets.live():
            try:
                await consumer.refresh_group()
            except Exception as exc:
                log.warning("group refresh failed: %r", exc)


async def _refresh_connection_counts() -> None:
    # Per-user connection counts live in Redis with a last-seen time per socket, so the
    # sockets of a process that died stop counting; live ones are refreshed here.
    from chat.realtime.limits import CONNECTION_REFRESH_S

    while True:
        await asyncio.sleep(CONNECTION_REFRESH_S)
        for consumer in sockets.live():
            try:
                await consumer.refresh_liveness()
            except Exception as exc:
                log.warning("connection refresh failed: %r", exc)
                break


async def _watch_redis() -> None:
    # Frames published while Redis was down are lost for good (the layer is
    # at-most-once): when it answers again, every socket gets a fresh snapshot, twice,
    # because the layer resubscribes on its own schedule and a `done` may fall between.
    from chat.fanout.redis_client import get_redis

    healthy = True
    while True:
        await asyncio.sleep(REDIS_WATCH_INTERVAL_S)
        try:
            await asyncio.wait_for(get_redis().ping(), REDIS_WATCH_INTERVAL_S)
            up = True
        except Exception:
            up = False
        if up and not healthy:
            log.warning("Redis is back: resyncing the open sockets of this process")
            for delay in (0.0, RESYNC_AGAIN_AFTER_S):
                await asyncio.sleep(delay)
                await sockets.resync_all()
        elif healthy and not up:
            log.warning("Redis is unreachable: live frames are lost until it returns")
        healthy = up


async def _sweep_forever() -> None:
    from chat.generation import sweeper

    while True:
        try:
            await sweeper.sweep()
        except Exception:
            log.warning("sweep failed", exc_info=True)
        await asyncio.sleep(settings.STREAM_SWEEP_INTERVAL_S)


def _hook_twisted_shutdown() -> None:
    # Under daphne, SIGTERM stops the Twisted reactor; a "before shutdown" trigger that
    # returns a Deferred holds the shutdown until every running message is stored.
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    if not getattr(reactor, "running", False):
        return

    def before_shutdown() -> defer.Deferred:
        from chat.lifecycle import drain

        return defer.Deferred.fromFuture(asyncio.ensure_future(drain.drain()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


class StartOnFirstConnection:
    """ASGI middleware: starts this loop's background duties with its first connection."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            ensure_started()
        return await self.app(scope, receive, send)
