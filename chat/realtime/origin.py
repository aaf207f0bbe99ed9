"""Websocket handshakes only from the site's own origin (scheme, host and port).

A browser sends a page's cookies with a websocket handshake to any site, so a page on
another origin could open a signed-in user's socket and prompt as them (cross-site
websocket hijacking). Channels' `AllowedHostsOriginValidator` compares only the Origin's
host with ALLOWED_HOSTS, which lets `http://localhost:9999` into `localhost:8101`. Here
the whole origin must be the site's: the rule Django's CSRF middleware applies to an HTTP
request's Origin (`CsrfViewMiddleware._origin_verified`,
https://docs.djangoproject.com/en/5.2/ref/csrf/#how-it-works), that is either

- the origin of the handshake itself: `https` when it arrived over TLS (`wss`, or
  `X-Forwarded-Proto: https` under `DJANGO_BEHIND_TLS_PROXY`), else `http`, and the Host
  header with its port; or
- one of `CSRF_TRUSTED_ORIGINS` (`https://*.example.com` allows subdomains, as in
  Django).

The Host must be one of ALLOWED_HOSTS whatever the Origin. A handshake without exactly
one Origin and one Host is refused. Refusals close before accepting: HTTP 403.
"""

import logging
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

log = logging.getLogger(__name__)


def _allowed_hosts() -> list[str]:
    # As HttpRequest.get_host: localhost variants when debugging with no ALLOWED_HOSTS.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def host_allowed(host: str) -> bool:
    """Whether a Host header names this site (ALLOWED_HOSTS; its port is not compared)."""
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, _allowed_hosts())


def trusted_origin(origin: str) -> bool:
    """Whether `origin` is one of CSRF_TRUSTED_ORIGINS, exactly or by a `*.` pattern."""
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in (o for o in trusted if "*" not in o):
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    patterns = (urlsplit(o) for o in trusted if "*" in o)
    return any(
        p.scheme == parsed.scheme and is_same_domain(parsed.netloc, p.netloc.lstrip("*"))
        for p in patterns
    )


def origin_allowed(origin: str | None, host: str | None, *, secure: bool) -> bool:
    """Whether a handshake with this Origin and Host, over TLS or not, is the site's own.

    Origins are compared as Django's CSRF check compares them: as strings (hosts are
    case-insensitive, so case is ignored), with the port as written in the Host header.
    """
    if origin is None or host is None or not host_allowed(host):
        return False
    own = f"{'https' if secure else 'http'}://{host}"
    return origin.lower() == own.lower() or trusted_origin(origin)


def _headers(scope: dict[str, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


def handshake_secure(scope: dict[str, Any]) -> bool:
    """Whether the handshake came over TLS: HttpRequest.scheme's rule for a websocket.

    With SECURE_PROXY_SSL_HEADER set (DJANGO_BEHIND_TLS_PROXY) and the header present,
    its first value decides; otherwise the socket's own scheme (`wss`)."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        values = _headers(scope, name)
        if values:
            return values[0].split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "wss"


def _single(values: list[str]) -> str | None:
    return values[0] if len(values) == 1 else None


class SameOriginValidator:
    """ASGI middleware for websockets: the handshake passes only from the site's own
    origin (or a trusted one, see the module docstring); any other is denied (403)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards websocket connections only")
        origin = _single(_headers(scope, b"origin"))
        host = _single(_headers(scope, b"host"))
        if origin_allowed(origin, host, secure=handshake_secure(scope)):
            return await self.app(scope, receive, send)
        log.info("websocket refused: origin %.200r is not this site's (host %.200r)", origin, host)
        return await WebsocketDenier()(scope, receive, send)
