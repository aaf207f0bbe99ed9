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

from django.conf import settings

from chat import moderation
from chat.fanout import get_layer
from chat.generation import sweeper
from chat.realtime import sockets
from chat.realtime.attendance import LIVENESS_REFRESH_S

log = logging.getLogger(__name__)

LAYER_WATCH_INTERVAL_S = 1.0

# Weak: a closed loop's id may be reused by a new one (tests start many loops).
_started_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()
_background: set[asyncio.Task[None]] = set()


def ensure_started() -> None:
    """Start this loop's duties and hook shutdown, once per event loop."""
    loop = asyncio.get_running_loop()
    if loop in _started_loops:
        return
    _started_loops.add(loop)
    duties = {"liveness-refresh": _confirm_viewers(), "layer-watch": _watch_layer()}
    if settings.STREAM_SWEEP_INTERVAL_S > 0:
        duties["stream-sweeper"] = _sweep_forever()
    # With a moderation worker, retries are its work too.
    if (
        settings.MODERATION_ENABLED
        and not settings.MODERATION_WORKER
        and settings.MODERATION_RETRY_INTERVAL_S > 0
    ):
        duties["moderation-retry"] = moderation.run_forever()
    for name, duty in duties.items():
        task = loop.create_task(duty, name=name)
        _background.add(task)
        task.add_done_callback(_background.discard)
    _hook_twisted_shutdown()


async def _confirm_viewers() -> None:
    # Connection counts and presence keep a last-seen time per viewer (on Redis), so the
    # viewers of a process that died stop counting; this process's are confirmed here.
    while True:
        await asyncio.sleep(LIVENESS_REFRESH_S)
        for viewer in sockets.live():
            try:
                await viewer.refresh_liveness()
            except Exception as exc:
                log.warning("liveness refresh failed: %r", exc)
                break


async def _watch_layer() -> None:
    # Says when Redis stops and starts answering. The viewers' snapshots after an
    # outage come from the layer, once its subscriptions are confirmed again.
    healthy = True
    while True:
        await asyncio.sleep(LAYER_WATCH_INTERVAL_S)
        try:
            up = await asyncio.wait_for(get_layer().ping(), LAYER_WATCH_INTERVAL_S)
        except Exception:
            up = False
        if up and not healthy:
            log.warning("Redis answers again")
        elif healthy and not up:
            log.warning("Redis is unreachable: live frames are lost until it returns")
        healthy = up


async def _sweep_forever() -> None:
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
