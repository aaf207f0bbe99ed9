"""Gauges read when /metrics is scraped (registered on import by chat.apps)."""

from chat.ops.metrics import gauge


@gauge("livechat_active_streams", "Generations running in this process.")
def active_streams() -> float:
    from chat.generation.registry import registry

    return len(registry)


@gauge("livechat_connected_viewers", "Open websockets on this process.")
def connected_viewers() -> float:
    from chat.realtime import sockets

    return len(sockets.live())


@gauge("livechat_moderation_backlog", "Moderation cases pending a call or a human decision.")
def moderation_backlog() -> float:
    from chat.models import ModerationCase

    return ModerationCase.objects.filter(state__in=["pending", "flagged"]).count()
