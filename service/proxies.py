"""Requests through trusted reverse proxies: the scheme and client address they forward.

Behind a TLS-terminating proxy the API sees the proxy's plain-HTTP connection, not
the browser's. When the connection comes from one of ``HANDOVER_TRUSTED_PROXIES``
(addresses or networks), :func:`forwarded_middleware` believes what that proxy says
and hands every later middleware and handler a request whose ``scheme``, ``secure``
and ``remote`` are the original client's:

- ``X-Forwarded-Proto``: its last value, the one the proxy in front of us set, when it
  is ``http`` or ``https``;
- ``X-Forwarded-For``: read from the right, skipping addresses that are themselves
  trusted proxies; the first one that is not is the client. What a client wrote into
  the header itself sits further left and is never reached. An entry that is not a
  bare IP address ends the walk: the client is then the last trusted hop.

From any other peer, and with no proxies configured, the forwarded headers are
ignored: nothing a client could have made up is believed. Only the ``X-Forwarded-*``
headers are read (not RFC 7239 ``Forwarded``); configure the proxy to set them.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

from service.api.middleware import Handler
from service.appkeys import SETTINGS

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def _address(text: str | None) -> Address | None:
    """An IP address; an IPv4 one even when a dual-stack socket reports it IPv6-mapped."""
    try:
        address = ip_address((text or "").strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


def forwarded_client(peer: Address, header: str, proxies: Sequence[Network]) -> Address:
    """The client a chain of trusted proxies names in ``X-Forwarded-For``, reached from ``peer``."""
    client = peer
    for entry in reversed(header.split(",")):
        hop = _address(entry)
        if hop is None:
            break
        client = hop
        if not _trusted(hop, proxies):
            break
    return client


@web.middleware
async def forwarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Believe a trusted proxy's ``X-Forwarded-Proto`` and ``X-Forwarded-For``."""
    proxies = request.app[SETTINGS].trusted_proxies
    peer = _address(request.remote)
    if peer is None or not _trusted(peer, proxies):
        return await handler(request)
    proto = ",".join(request.headers.getall("X-Forwarded-Proto", []))
    scheme = proto.rpartition(",")[2].strip().lower()
    forwarded_for = ",".join(request.headers.getall("X-Forwarded-For", []))
    client = forwarded_client(peer, forwarded_for, proxies) if forwarded_for else peer
    return await handler(
        request.clone(
            scheme=scheme if scheme in {"http", "https"} else request.scheme,
            remote=str(client),
        )
    )


__all__ = ["forwarded_client", "forwarded_middleware"]
