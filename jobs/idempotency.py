"""Idempotency keys: the first request with a key claims it, then keeps its response.

A claim is short-lived (:data:`PENDING_SECONDS`), so a request whose process
died frees its key by itself; a kept response lasts :data:`KEPT_SECONDS`. A claim
carries a random token of its own: a claim whose answer was lost, which the Redis
client sends again, finds its own claim and holds the key, where a concurrent request
with the same key and body finds another's and is told the first still runs. Keys
belong to a caller, so one caller's key never finds another's request. What a
request is (its fingerprint) and what a response looks like on the wire are the
caller's business; this module keeps them.

Layout::

    {ns}idem:{caller digest}:{key digest}   string (JSON), with a TTL:
        {"fingerprint", "state": "pending", "claim"}           while the first runs
        {"fingerprint", "state": "done", "status", "headers", "body" (base64)}
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

PENDING_SECONDS = 60
KEPT_SECONDS = 24 * 3600

#: KEYS: the slot; ARGV: the claim, its lifetime. 1 if the slot is now this claim's.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


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
        self._claim = self.redis.register_script(_CLAIM)

    def _slot(self, caller: str, key: str) -> str:
        caller_digest = hashlib.sha256(caller.encode()).hexdigest()[:16]
        return f"{self.ns}idem:{caller_digest}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def claim(self, caller: str, key: str, fingerprint: str) -> bool:
        """Claim ``caller``'s ``key`` for the request ``fingerprint``; ``False`` if already used."""
        pending = orjson.dumps(
            {"fingerprint": fingerprint, "state": "pending", "claim": secrets.token_hex(8)}
        )
        claimed: int = await self._claim(
            keys=[self._slot(caller, key)], args=[pending, PENDING_SECONDS]
        )
        return claimed == 1

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
