"""The audit log: who did what to which request, append-only and hash-chained.

Each entry carries the hash of the one before it (``prev``) and its own hash,
``sha256(prev ‖ body)``; the newest hash is also kept as the log's head. So
:meth:`AuditLog.verify` detects an entry changed (its hash no longer matches), an
entry inserted or removed in the middle (the next ``prev`` no longer matches) and
entries removed from the end (the head no longer matches the last entry). Entries
name subjects only by their keyed pseudonym.

Layout: ``{ns}audit`` (stream: prev, hash, body), ``{ns}audit:head`` (string).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.model import utcnow

GENESIS = "0" * 64


def chain_hash(prev: str, body: bytes) -> str:
    """The hash of an entry whose predecessor's hash is ``prev``."""
    return hashlib.sha256(prev.encode() + body).hexdigest()


@dataclass
class AuditVerification:
    """The outcome of checking the chain; ``problems`` is empty when it is intact."""

    entries: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The chain is intact."""
        return not self.problems


class AuditLog:
    """Appends to and verifies the hash-chained audit stream."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis: Any = redis
        self.key = f"{namespace}audit"
        self.head_key = f"{namespace}audit:head"

    async def append(self, actor: str, action: str, job_id: str, **details: Any) -> str:
        """Add one entry; returns its hash."""
        entry = {
            "at": utcnow().isoformat(),
            "actor": actor,
            "action": action,
            "job": job_id,
            **details,
        }
        body = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)

        async def attempt(pipe: Any) -> str:
            raw = await pipe.get(self.head_key)
            prev = raw.decode() if raw is not None else GENESIS
            digest = chain_hash(prev, body)
            pipe.multi()
            pipe.xadd(self.key, {"prev": prev, "hash": digest, "body": body})
            pipe.set(self.head_key, digest)
            return digest

        appended: str = await self.redis.transaction(
            attempt, self.head_key, value_from_callable=True
        )
        return appended

    async def entries(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` entries, newest first."""
        raw = await self.redis.xrevrange(self.key, count=count)
        return [
            {"id": entry_id.decode(), **orjson.loads(fields[b"body"])} for entry_id, fields in raw
        ]

    async def verify(self, batch: int = 1000) -> AuditVerification:
        """Walk the whole chain from the start; report every break found."""
        result = AuditVerification()
        expected_prev = GENESIS
        start = "-"
        while True:
            page = await self.redis.xrange(self.key, min=start, count=batch)
            if start != "-":
                page = page[1:]
            if not page:
                break
            for entry_id, fields in page:
                name = entry_id.decode()
                prev = fields.get(b"prev", b"").decode()
                stored = fields.get(b"hash", b"").decode()
                body = fields.get(b"body", b"")
                if prev != expected_prev:
                    result.problems.append(
                        f"entry {name}: does not follow the entry before it "
                        "(an entry was inserted or removed)"
                    )
                if chain_hash(prev, body) != stored:
                    result.problems.append(f"entry {name}: its content was changed")
                expected_prev = stored
                result.entries += 1
            start = page[-1][0].decode()
        raw_head = await self.redis.get(self.head_key)
        result.head = raw_head.decode() if raw_head is not None else GENESIS
        if result.head != expected_prev:
            result.problems.append(
                "the log's head does not match its last entry (entries were removed from the end)"
            )
        return result
