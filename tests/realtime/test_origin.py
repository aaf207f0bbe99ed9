"""Websocket handshakes only from the site's own origin (chat/realtime/origin.py), in-process
through the real ASGI application: scheme, host and port of the Origin must be the
handshake's own (or a trusted origin), the Host one of ALLOWED_HOSTS."""

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from project.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


async def handshake(
    user, conversation_id, *, origin: str | None, host: str | None, scheme: str = "ws", **extra
) -> bool:
    """Whether a signed-in user's handshake with these headers opens the conversation
    (its snapshot arrives); False when it is refused before being accepted (HTTP 403)."""
    client = AsyncClient()
    await client.aforce_login(user)
    headers = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]
    headers += [(b"origin", origin.encode())] if origin is not None else []
    headers += [(b"host", host.encode())] if host is not None else []
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    comm = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    comm.scope["scheme"] = scheme
    connected, _ = await comm.connect()
    if connected:
        assert json.loads(await comm.receive_from(10))["type"] == "snapshot"
    await comm.disconnect()
    return connected


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost", "localhost", "ws", True),  # the same origin
        ("http://localhost:8101", "localhost:8101", "ws", True),
        ("http://LOCALHOST:8101", "localhost:8101", "ws", True),  # hosts ignore case
        ("http://[::1]:8101", "[::1]:8101", "ws", True),
        ("https://localhost:8101", "localhost:8101", "wss", True),
        # The reported case: another port of the same host.
        ("http://localhost:9999", "localhost:8101", "ws", False),
        ("http://localhost", "localhost:8101", "ws", False),
        ("http://localhost:8101", "localhost", "ws", False),
        # Another scheme.
        ("https://localhost:8101", "localhost:8101", "ws", False),
        ("http://localhost:8101", "localhost:8101", "wss", False),
        # Another host, or a subdomain of ours.
        ("http://evil.example:8101", "localhost:8101", "ws", False),
        ("http://127.0.0.1:8101", "localhost:8101", "ws", False),
        ("http://a.localhost:8101", "localhost:8101", "ws", False),
        # Nothing to compare: missing or opaque.
        (None, "localhost:8101", "ws", False),
        ("null", "localhost:8101", "ws", False),
        ("", "localhost:8101", "ws", False),
        # The Host must be ours even when the Origin matches it.
        ("http://evil.example:8101", "evil.example:8101", "ws", False),
        ("http://localhost", None, "ws", False),
    ],
)
async def test_only_the_sites_own_origin_opens_a_socket(
    users, conversation, origin, host, scheme, allowed
):
    opened = await handshake(
        users["alice"], conversation.id, origin=origin, host=host, scheme=scheme
    )
    assert opened is allowed


async def test_a_trusted_origin_opens_a_socket(users, conversation, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    alice = users["alice"]
    for origin in ("https://chat.example.com", "https://app.example.org"):
        assert await handshake(alice, conversation.id, origin=origin, host="localhost:8101")
    for origin in ("http://chat.example.com", "https://chat.example.com:8443", "https://x.com"):
        assert not await handshake(alice, conversation.id, origin=origin, host="localhost:8101")
    # A trusted origin does not make a foreign Host ours.
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    assert not await handshake(
        alice, conversation.id, origin="https://chat.example.com", host="localhost:8101"
    )


async def test_behind_a_tls_proxy_the_origin_is_https(users, conversation, settings):
    """With DJANGO_BEHIND_TLS_PROXY the proxy's X-Forwarded-Proto gives the scheme."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    alice, conv = users["alice"], conversation.id
    tls = {"x_forwarded_proto": "https"}
    assert await handshake(
        alice, conv, origin="https://localhost:8080", host="localhost:8080", **tls
    )
    assert not await handshake(
        alice, conv, origin="http://localhost:8080", host="localhost:8080", **tls
    )
    plain = {"x_forwarded_proto": "http"}
    assert await handshake(
        alice, conv, origin="http://localhost:8080", host="localhost:8080", **plain
    )
    assert not await handshake(
        alice, conv, origin="https://localhost:8080", host="localhost:8080", **plain
    )
    # Without the setting the header is not believed.
    settings.SECURE_PROXY_SSL_HEADER = None
    assert not await handshake(
        alice, conv, origin="https://localhost:8080", host="localhost:8080", **tls
    )


async def test_two_origin_or_host_headers_are_refused(users, conversation):
    client = AsyncClient()
    await client.aforce_login(users["alice"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    for doubled in ((b"origin", b"http://localhost"), (b"host", b"localhost")):
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", cookie)]
        comm = WebsocketCommunicator(
            application, f"/ws/chat/{conversation.id}/", headers=[*headers, doubled]
        )
        connected, _ = await comm.connect()
        assert connected is False
