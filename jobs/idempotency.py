"""Idempotency keys: the first request with a key claims it, then keeps its response.

A claim is short-lived (:data:`PENDING_SECONDS`), so a request whose process
died frees its key by itself; a kept response lasts :data:`KEPT_SECONDS`. Keys
belong to a caller, so one caller's key never finds another's request. What a
request is (its fingerprint) and what a response looks like on the wire are the
caller's business; this module keeps them.

Layout::

    {ns}idem:{caller digest}:{key digest}   string (JSON), with a TTL:
        {"fingerprint", "state": "pending"}                    while the first runs
        {"fingerprint", "state": "done", "status", "headers", "body" (base64)}
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

PENDING_SECONDS = 60
KEPT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class StoredResponse:
    """The first request's response, as it is replayed."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Earlier:
    """What the first request with a key left: its fingerprint, and its response once done."""

    fingerprint: str
    response: StoredResponse | None


class IdempotencyStore:
    """Claims, keeps and releases idempotency keys in Redis."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace

    def _slot(self, caller: str, key: str) -> str:
        caller_digest = hashlib.sha256(caller.encode()).hexdigest()[:16]
        return f"{self.ns}idem:{caller_digest}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def claim(self, caller: str, key: str, fingerprint: str) -> bool:
        """Claim ``caller``'s ``key`` for the request ``fingerprint``; ``False`` if already used."""
        pending = orjson.dumps({"fingerprint": fingerprint, "state": "pending"})
        claimed: bool | None = await self.redis.set(
            self._slot(caller, key), pending, nx=True, ex=PENDING_SECONDS
        )
        return bool(claimed)

    async def earlier(self, caller: str, key: str) -> Earlier | None:
        """What the request that used ``key`` left; ``None`` if it has just released it."""
        raw = await self.redis.get(self._slot(caller, key))
        if raw is None:
            return None
        entry = orjson.loads(raw)
        response = None
        if entry["state"] == "done":
            response = StoredResponse(
                status=entry["status"],
                headers=entry["headers"],
                body=base64.b64decode(entry["body"]),
            )
        return Earlier(fingerprint=entry["fingerprint"], response=response)

    async def keep(self, caller: str, key: str, fingerprint: str, response: StoredResponse) -> None:
        """Store the claimed request's response for replay, for :data:`KEPT_SECONDS`."""
        entry = {
            "fingerprint": fingerprint,
            "state": "done",
            "status": response.status,
            "headers": response.headers,
            "body": base64.b64encode(response.body).decode(),
        }
        await self.redis.set(self._slot(caller, key), orjson.dumps(entry), ex=KEPT_SECONDS)

    async def release(self, caller: str, key: str) -> None:
        """Free ``key`` (the request failed), so the caller may send it again."""
        await self.redis.delete(self._slot(caller, key))
