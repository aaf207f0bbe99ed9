"""The client's own address behind a reverse proxy, believed only from the proxy.

Behind nginx every connection comes from the proxy, so per-address limits (failed
sign-ins, sign-ups) would count the whole site as one client. The proxy names the client
in `X-Forwarded-For`, but anyone can send that header, so it is read only when the
connecting peer is one of `TRUSTED_PROXIES`, and only as far as trusted hops vouch for
it: each hop appends the address it received the request from, so the list is read from
the right, and the first address that is not a trusted proxy is the client (what a
client wrote itself is further left and never reached). This is the "rightmost" rule of
MDN's X-Forwarded-For page
(https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Headers/X-Forwarded-For#selecting_an_ip_address).
daphne's own `--proxy-headers` is not used: it believes any peer and takes the leftmost,
client-written address.

`ForwardedClientMiddleware` wraps the whole ASGI application (HTTP and websockets), so
`scope["client"]`, and with it Django's `REMOTE_ADDR`, is the client's address everywhere.
"""

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADER = b"x-forwarded-for"


@lru_cache(maxsize=8)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """Addresses and CIDR networks (`127.0.0.1`, `10.0.0.0/8`, `::1`) as networks.

    Raises ValueError naming the first entry that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {entry!r}") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """One address as a proxy writes it (`203.0.113.7`, `2001:db8::1`, `[2001:db8::1]`,
    also with a port), IPv4-mapped IPv6 as IPv4; None for anything else (`unknown`, an
    obfuscated name, garbage)."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text, closed, _ = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def forwarded_client(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str | None:
    """The client's address, or None to keep the peer as the client.

    Only a trusted peer's header is read. Its entries are walked from the right: the
    first that is not a trusted proxy is the client; if every entry is a trusted proxy,
    the leftmost is. An entry that is not an address ends the walk at the last trusted
    hop read (nothing to its left can be believed), so a broken header never makes up an
    address. Returned addresses are normalized (`str(ip_address)`).
    """
    peer_address = parse_address(peer) if peer else None
    if peer_address is None or not _trusted(peer_address, trusted):
        return None
    entries = [e for value in forwarded_for for e in value.split(",") if e.strip()]
    client: Address | None = None
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return None if client is None else str(client)


def _header_values(scope: dict[str, Any]) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == HEADER]


class ForwardedClientMiddleware:
    """ASGI middleware: `scope["client"]` becomes the client named by a trusted proxy.

    Reads `settings.TRUSTED_PROXIES` (addresses or CIDR networks; empty: no peer is
    trusted and no header is read) on every connection, so a settings change in tests
    applies. The client's port is unknown behind a proxy and is given as 0.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] in ("http", "websocket") and settings.TRUSTED_PROXIES:
            peer = scope.get("client")
            client = forwarded_client(
                peer[0] if peer else None,
                _header_values(scope),
                parse_networks(tuple(settings.TRUSTED_PROXIES)),
            )
            if client is not None:
                scope = {**scope, "client": [client, 0]}
        return await self.app(scope, receive, send)
