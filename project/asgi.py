"""ASGI entry point: HTTP through Django, websockets through the chat consumer.

Outermost, for both: the client's address as a trusted proxy names it (chat/web/forwarded.py).
Websocket handshakes pass only from the site's own origin (chat/realtime/origin.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.lifecycle import gc_tuning, startup  # noqa: E402
from chat.lifecycle.background import StartOnFirstConnection  # noqa: E402
from chat.realtime import direct_send  # noqa: E402
from chat.realtime.origin import SameOriginValidator  # noqa: E402
from chat.realtime.socket_auth import SocketAuthMiddlewareStack  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.web.forwarded import ForwardedClientMiddleware  # noqa: E402

direct_send.install()
startup.log_configuration()

application = ForwardedClientMiddleware(
    StartOnFirstConnection(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": SameOriginValidator(
                    SocketAuthMiddlewareStack(URLRouter(websocket_urlpatterns))
                ),
            }
        )
    )
)

# Last: what is loaded by now lives as long as the process (chat/lifecycle/gc_tuning.py).
gc_tuning.tune_for_serving()
