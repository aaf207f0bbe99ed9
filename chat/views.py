"""The chat page and the health endpoint."""

import asyncio
import logging
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chat.redis_conn import get_redis, redis_enabled

log = logging.getLogger(__name__)


@login_required
def chat_page(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    return render(
        request,
        "chat/index.html",
        {
            "conversation_id": str(conversation_id) if conversation_id else None,
            "using_simulator": settings.USE_SIMULATOR,
            "model": settings.OPENAI_MODEL,
            "ws_path_template": "/ws/chat/{id}/",
        },
    )


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        log.warning("health: database check failed", exc_info=True)
        return False


async def _layer_ok() -> bool:
    # With Redis the layer is as healthy as Redis (a ping: a test message through the
    # pub/sub layer would leave a subscription behind); in memory it always is.
    if not redis_enabled():
        return True
    try:
        return bool(await asyncio.wait_for(get_redis().ping(), 2))
    except Exception:
        log.warning("health: Redis check failed", exc_info=True)
        return False


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer, else 503."""
    from asgiref.sync import sync_to_async

    checks = {"database": await sync_to_async(_database_ok)(), "channel_layer": await _layer_ok()}
    ok = all(checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)
