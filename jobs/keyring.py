"""The published signing keys: every public key still needed to verify a live archive.

Each process that signs publishes its public key in Redis when it starts and
marks it used whenever it signs; a key stays listed until the last archive it
signed has expired (plus a day), then drops out of ``GET /v1/keys``. The API,
which signs nothing, publishes the key it shares with the workers
(``HANDOVER_SIGNING_KEY_FILE``) when it starts; and every process publishes its key
again when it finds that Redis lost its data (:mod:`jobs.epoch`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.archive.signing import Signer, public_jwk
from jobs.model import utcnow


class KeyRing:
    """Public keys in a Redis hash ``{ns}keys``: key id → JWK and until when it is needed."""

    def __init__(self, redis: Redis, namespace: str, archive_ttl: timedelta) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.key = f"{namespace}keys"
        self.archive_ttl = archive_ttl

    async def publish(self, signer: Signer, now: datetime | None = None) -> None:
        """Record that ``signer`` signs from now on (and so its key is needed until TTL later)."""
        needed_until = (now or utcnow()) + self.archive_ttl + timedelta(days=1)
        entry = {"jwk": public_jwk(signer.public_key), "needed_until": needed_until.isoformat()}
        await self.redis.hset(self.key, signer.key_id, orjson.dumps(entry))

    async def active(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The JWKs still needed, each with its ``needed_until``; forgets the rest."""
        now = now or utcnow()
        keys = []
        stale = []
        for kid, raw in (await self.redis.hgetall(self.key)).items():
            entry = orjson.loads(raw)
            needed_until = datetime.fromisoformat(entry["needed_until"])
            if needed_until < now:
                stale.append(kid)
                continue
            keys.append({**entry["jwk"], "needed_until": entry["needed_until"]})
        if stale:
            await self.redis.hdel(self.key, *stale)
        return sorted(keys, key=lambda jwk: str(jwk["needed_until"]), reverse=True)
