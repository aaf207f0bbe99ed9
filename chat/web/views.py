"""The chat page and the health endpoint."""

import asyncio
import logging
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.crypto import constant_time_compare

from chat.fanout import get_layer
from chat.ops import metrics, serving

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
    # As healthy as its transport (Redis answers a ping); the in-process one always is.
    try:
        return bool(await asyncio.wait_for(get_layer().ping(), 2))
    except Exception:
        log.warning("health: channel layer check failed", exc_info=True)
        return False


async def _checks() -> dict[str, bool]:
    return {"database": await sync_to_async(_database_ok)(), "channel_layer": await _layer_ok()}


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: 200 when the database and the channel layer answer, else 503."""
    checks = await _checks()
    ok = all(checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: as /healthz, and 503 while the process drains for a restart."""
    checks = {**await _checks(), "accepting": serving.accepting()}
    ok = all(checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text for this process; only for METRICS_ALLOWED_IPS or the token."""
    token = settings.METRICS_TOKEN
    bearer = request.headers.get("Authorization", "")
    allowed = request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS or (
        token and constant_time_compare(bearer, f"Bearer {token}")
    )
    if not allowed:
        return HttpResponse(status=404)
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4")
