"""The client's address behind a trusted proxy (chat/web/forwarded.py): X-Forwarded-For is
believed only from TRUSTED_PROXIES, read from the right, and never made up."""

import os
import subprocess
import sys
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from chat.web.forwarded import ForwardedClientMiddleware, forwarded_client, parse_networks
from tests.live import ROOT

LOOPBACK = parse_networks(("127.0.0.1",))
PROXIES = parse_networks(("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "client"),
    [
        # The proxy names the client.
        ("127.0.0.1", ["203.0.113.7"], LOOPBACK, "203.0.113.7"),
        # An untrusted peer's header is ignored: it stays the client.
        ("203.0.113.9", ["198.51.100.1"], LOOPBACK, None),
        ("127.0.0.2", ["127.0.0.1"], LOOPBACK, None),
        # No proxy is trusted by default.
        ("127.0.0.1", ["203.0.113.7"], (), None),
        # A trusted peer without the header is the client.
        ("127.0.0.1", [], LOOPBACK, None),
        ("127.0.0.1", [""], LOOPBACK, None),
        # What the client wrote itself is left of what the proxy appended: never read.
        ("127.0.0.1", ["6.6.6.6, 203.0.113.7"], LOOPBACK, "203.0.113.7"),
        ("127.0.0.1", ["127.0.0.1, 203.0.113.7"], LOOPBACK, "203.0.113.7"),
        # A chain of trusted proxies: the rightmost address that is not one of them.
        ("10.0.0.5", ["6.6.6.6, 203.0.113.7, 10.0.0.4"], PROXIES, "203.0.113.7"),
        ("127.0.0.1", ["6.6.6.6, 203.0.113.7", "10.1.2.3"], PROXIES, "203.0.113.7"),
        # Only trusted proxies in the chain: the leftmost is the client.
        ("127.0.0.1", ["10.0.0.4, 10.0.0.3"], PROXIES, "10.0.0.4"),
        # Garbage from the client, left of the real address, does not matter.
        ("127.0.0.1", ["<script>, unknown, 203.0.113.7"], LOOPBACK, "203.0.113.7"),
        # Garbage where a trusted hop should have written an address ends the walk at
        # the last trusted hop: no address is made up.
        ("127.0.0.1", ["unknown"], LOOPBACK, None),
        ("127.0.0.1", ["not an address"], LOOPBACK, None),
        ("127.0.0.1", ["203.0.113.7, garbage, 10.0.0.4"], PROXIES, "10.0.0.4"),
        ("127.0.0.1", ["999.1.1.1"], LOOPBACK, None),
        ("127.0.0.1", ["[2001:db8::1"], LOOPBACK, None),
        ("127.0.0.1", [" , ,"], LOOPBACK, None),
        # IPv6, bare, bracketed and with a port; normalized.
        ("::1", ["2001:DB8:0:0::7"], PROXIES, "2001:db8::7"),
        ("127.0.0.1", ["[2001:db8::7]:4711"], LOOPBACK, "2001:db8::7"),
        ("fd00::2", ["2001:db8::7, fd00::1"], PROXIES, "2001:db8::7"),
        ("::1", ["2001:db8::7"], LOOPBACK, None),  # ::1 not trusted here
        # IPv4 with a port; IPv4-mapped IPv6 is the IPv4 address (peer and entries).
        ("127.0.0.1", ["203.0.113.7:51000"], LOOPBACK, "203.0.113.7"),
        ("::ffff:127.0.0.1", ["::ffff:203.0.113.7"], LOOPBACK, "203.0.113.7"),
        # A peer that is not an address (a unix socket has none) is never trusted.
        (None, ["203.0.113.7"], LOOPBACK, None),
        ("localhost", ["203.0.113.7"], LOOPBACK, None),
    ],
)
def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy(
    peer: str | None, header: list[str], trusted: Any, client: str | None
) -> None:
    assert forwarded_client(peer, header, trusted) == client


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert [str(n) for n in parse_networks(("127.0.0.1", " 10.1.2.3/8", "::1"))] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ValueError, match="nginx"):
        parse_networks(("nginx",))


def test_the_settings_refuse_a_trusted_proxy_that_is_not_an_address() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings_test"}
    check = [sys.executable, "-c", "import django; django.setup()"]
    refused = subprocess.run(
        check,
        cwd=ROOT,
        env={**env, "TRUSTED_PROXIES": "127.0.0.1,proxy.local"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "TRUSTED_PROXIES: 'proxy.local'" in refused.stderr
    accepted = subprocess.run(
        check,
        cwd=ROOT,
        env={**env, "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert accepted.returncode == 0, accepted.stderr


async def _scope_seen(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope the wrapped application receives."""
    seen: dict[str, Any] = {}

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    await ForwardedClientMiddleware(inner)(scope, None, None)
    return seen


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_the_middleware_rewrites_the_client_of_http_and_websockets(settings, kind) -> None:
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    headers = [(b"host", b"localhost"), (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")]
    scope = {"type": kind, "client": ["127.0.0.1", 40000], "headers": headers}
    seen = await _scope_seen(scope)
    assert seen["client"] == ["203.0.113.7", 0]
    assert seen["headers"] == headers
    assert scope["client"] == ["127.0.0.1", 40000]  # the caller's scope is left alone
    # Another peer's header is ignored.
    untrusted = {**scope, "client": ["198.51.100.4", 5000]}
    assert (await _scope_seen(untrusted))["client"] == ["198.51.100.4", 5000]


async def test_the_middleware_believes_nothing_by_default(settings) -> None:
    settings.TRUSTED_PROXIES = []
    headers = [(b"x-forwarded-for", b"203.0.113.7")]
    scope = {"type": "http", "client": ["127.0.0.1", 40000], "headers": headers}
    assert (await _scope_seen(scope))["client"] == ["127.0.0.1", 40000]


async def test_the_middleware_passes_other_scopes_untouched(settings) -> None:
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    scope = {"type": "lifespan"}
    assert await _scope_seen(scope) == scope
    no_client = {"type": "http", "headers": [(b"x-forwarded-for", b"203.0.113.7")]}
    assert "client" not in await _scope_seen(no_client)


def test_the_asgi_application_is_wrapped_whole() -> None:
    """Outermost, so HTTP and websocket scopes both pass through it."""
    from project.asgi import application

    assert isinstance(application, ForwardedClientMiddleware)


async def _metrics_status(headers: list[tuple[bytes, bytes]], peer: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/metrics",
        "raw_path": b"/metrics",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": [peer, 40000],
        "server": ["127.0.0.1", 8000],
    }
    from project.asgi import application

    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": b""})
    start = await comm.receive_output(10)
    while (await comm.receive_output(10)).get("more_body"):
        pass
    return start["status"]


@pytest.mark.django_db
async def test_django_sees_the_forwarded_client_as_remote_addr(settings) -> None:
    """/metrics answers only METRICS_ALLOWED_IPS (loopback) by REMOTE_ADDR: a request
    the proxy forwards from a remote client is refused, one from the proxy host is not."""
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.METRICS_TOKEN = ""
    assert await _metrics_status([], "127.0.0.1") == 200
    assert await _metrics_status([(b"x-forwarded-for", b"203.0.113.7")], "127.0.0.1") == 404
    # A remote client forging a loopback address is still itself.
    assert await _metrics_status([(b"x-forwarded-for", b"127.0.0.1")], "203.0.113.7") == 404
