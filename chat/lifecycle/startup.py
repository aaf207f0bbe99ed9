"""What a server process says about its configuration when it starts (no secrets)."""

import logging

from django.conf import settings

from chat.realtime import direct_send
from chat.upstream import chunks
from chat.upstream.client import describe_upstream

log = logging.getLogger("chat")


def channel_layer_description() -> str:
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if backend.endswith("InProcessLayer"):
        return "in-process (fan-out limited to this one process; set REDIS_URL to scale out)"
    return f"{backend.rsplit('.', 1)[-1]} on Redis"


def log_configuration() -> None:
    log.info("replies come from %s", describe_upstream())
    log.info("channel layer: %s", channel_layer_description())
    log.info(direct_send.describe())
    log.info(chunks.describe())
    for name in settings.RETIRED_SETTINGS:
        log.warning("%s is set but no longer read: one channel layer carries everything", name)
