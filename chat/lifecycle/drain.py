"""Graceful drain of this process on SIGTERM (a rolling restart, a scale-in).

1. Stop taking work: `/readyz` answers 503 and new sockets are closed with 1012.
2. Send the open sockets elsewhere at once: close them with 1012 ("service restart");
   clients reconnect (through the proxy, to another process) and resume by snapshot,
   still receiving the answers this process keeps generating, through Redis.
3. Let running answers finish for up to DRAIN_S, then store the rest `interrupted`.
"""

import asyncio
import logging

from django.conf import settings

from chat import moderation
from chat.ops import serving
from chat.protocol import CLOSE_SERVICE_RESTART
from chat.realtime import sockets
from chat.upstream import client as upstream

log = logging.getLogger(__name__)


async def drain() -> None:
    from chat.generation.registry import registry

    serving.stop_accepting()
    open_sockets = sockets.live()
    log.info(
        "draining: moving %d socket(s) away, %d answer(s) running",
        len(open_sockets),
        len(registry),
    )
    await asyncio.gather(
        *(s.leave_for_restart(CLOSE_SERVICE_RESTART) for s in open_sockets),
        return_exceptions=True,
    )
    await registry.wait_idle(settings.DRAIN_S)
    await registry.shutdown()
    # Answers that just finished are being moderated through the same client: let those
    # calls end (each is bounded by MODERATION_TIMEOUT_S) before the client closes under
    # them. A case left pending is retried by any process later.
    try:
        async with asyncio.timeout(settings.MODERATION_TIMEOUT_S + 1):
            await moderation.drain()
    except TimeoutError:
        log.warning("draining: moderation calls still running; their cases stay pending")
    await upstream.close_client()
    log.info("drained")
