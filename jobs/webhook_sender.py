"""The HTTP side of webhooks: signed notifications posted through aiohttp.

Kept apart from :mod:`jobs.webhooks` (events, payloads, signatures, which targets are
allowed) so that only a delivery imports aiohttp: :func:`jobs.webhooks.send` imports
this module with a worker's first delivery, and a worker with no webhook to deliver
never holds the HTTP client in memory. Names are resolved through
:class:`GuardedResolver`, which checks each address again at delivery; redirects are
not followed.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from jobs.webhooks import (
    SIGNATURE_HEADER,
    DeliveryFailed,
    forbidden_address,
    shown,
    sign,
    target_problem,
)


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses a host whose addresses are all forbidden."""

    def __init__(self, *, allow_link_local: bool = False) -> None:
        self._resolver = aiohttp.ThreadedResolver()
        self.allow_link_local = allow_link_local

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = [
            result
            for result in await self._resolver.resolve(host, port, family)
            if self.allow_link_local or not forbidden_address(result["host"])
        ]
        if not results:
            raise OSError(f"{host} resolves only to link-local or forbidden addresses")
        return results

    async def close(self) -> None:
        await self._resolver.close()


@dataclass(frozen=True)
class Sender:
    """Posts signed notifications over one HTTP session."""

    session: aiohttp.ClientSession
    secret: str
    timeout: float = 10.0
    allow_link_local: bool = False

    async def send(self, url: str, body: bytes) -> None:
        """One delivery attempt; :class:`DeliveryFailed` unless the receiver answers 2xx."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "User-Agent": "Handover-Webhooks/1",
        }
        problem = None if self.allow_link_local else target_problem(url)
        if problem is not None:
            raise DeliveryFailed(problem)
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,  # a redirect could lead anywhere: not followed
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"{shown(url)} answered {response.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"{shown(url)} unreachable: {type(exc).__name__}") from exc


def session(*, allow_link_local: bool = False) -> aiohttp.ClientSession:
    """An HTTP session for deliveries, resolving names through :class:`GuardedResolver`."""
    resolver = GuardedResolver(allow_link_local=allow_link_local)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))
