"""The client's IP: ``X-Forwarded-For`` believed only when the peer is one of ``server.trusted_proxies``."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ClientIPMiddleware", "TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDED_FOR = b"x-forwarded-for"
_MAX_HOPS = 32  # a longer X-Forwarded-For is cut to its last hops: nobody's real chain is that long


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """``server.trusted_proxies``: IPs and CIDRs, or ``"*"`` for every peer.

    >>> TrustedProxies(["10.0.0.0/8"]).client_ip("10.0.0.2", "198.51.100.7, 10.0.0.9")
    '198.51.100.7'
    """

    def __init__(self, entries: Iterable[str]) -> None:
        entries = list(entries)
        self.everyone = "*" in entries
        self.networks: list[_Network] = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if address is None:
            return False
        return self.everyone or any(address in network for network in self.networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The peer, unless it is trusted: then the nearest untrusted hop of ``X-Forwarded-For``.

        Hops are read right to left (each proxy appends the address it saw), so a client cannot pose as
        another by sending its own header: only what trusted proxies appended is believed.
        """
        if not forwarded_for or not self.trusts(_address(peer or "")):
            return peer
        hops = forwarded_for.split(",")[-_MAX_HOPS:]
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # garbage: stop believing what lies further left
            client = str(address)
            if not self.trusts(address):
                break
        return client


class ClientIPMiddleware:
    """Sets ``scope["state"]["client_ip"]``, which the access log, the rate limiter and sessions read."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted = TrustedProxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            peer = str(client[0]) if client else None
            forwarded = None
            if self.trusted:
                values = [
                    bytes(v).decode("latin-1") for k, v in scope.get("headers") or () if k == _FORWARDED_FOR
                ]
                forwarded = ",".join(values) or None
            state = scope.get("state")
            if state is None:
                state = scope["state"] = {}
            state["client_ip"] = self.trusted.client_ip(peer, forwarded)
        await self.app(scope, receive, send)
