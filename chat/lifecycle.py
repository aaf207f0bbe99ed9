"""Per-process background duties: the periodic sweeper and the graceful-shutdown hook.

Started lazily from the first connection or generation, because daphne offers no
startup hook (it does not speak the ASGI lifespan protocol).
"""

import asyncio
import logging
import sys

from django.conf import settings

log = logging.getLogger(__name__)

_started_loops: set[int] = set()
_background: set[asyncio.Task[None]] = set()


def ensure_started() -> None:
    """Start this loop's sweeper and hook shutdown, once per event loop."""
    loop = asyncio.get_running_loop()
    if id(loop) in _started_loops:
        return
    _started_loops.add(id(loop))
    if settings.STREAM_SWEEP_INTERVAL_S > 0:
        task = loop.create_task(_sweep_forever(), name="stream-sweeper")
        _background.add(task)
        task.add_done_callback(_background.discard)
    _hook_twisted_shutdown()


async def _sweep_forever() -> None:
    from chat import sweeper

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
        from chat.generation import registry

        log.info("shutting down: interrupting %d generation(s)", len(registry))
        return defer.Deferred.fromFuture(asyncio.ensure_future(registry.shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
