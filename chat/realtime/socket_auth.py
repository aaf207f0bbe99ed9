"""The session and user of a websocket, without Channels' per-frame session check.

Channels' `SessionMiddleware` wraps `send` so that a modified session is saved before an
HTTP response starts. A websocket never sends that response (cookies travel only with the
handshake, and no socket writes the session), so here the session is read from its cookie
the same way and `send` is passed through untouched (docs/decisions.md says what the
check cost).
"""

from importlib import import_module

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware
from django.conf import settings


class SocketSessionMiddleware:
    """Puts the cookie's session (loaded lazily by the store) in `scope["session"]`."""

    def __init__(self, inner):
        self.inner = inner
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        return await self.inner(dict(scope, session=self.store(session_key)), receive, send)


def SocketAuthMiddlewareStack(inner):  # named like Channels' stacks
    return CookieMiddleware(SocketSessionMiddleware(AuthMiddleware(inner)))
