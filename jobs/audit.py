"""The audit log: who did what to which request, append-only and hash-chained.

Each entry carries the hash of the one before it (``prev``) and its own hash,
``sha256(prev ‖ body)``; the newest hash is also kept as the log's head. So
:meth:`AuditLog.verify` detects an entry changed (its hash no longer matches), an
entry inserted or removed in the middle (the next ``prev`` no longer matches) and
entries removed from the end (the head no longer matches the last entry). Entries
name subjects only by their keyed pseudonym.

Recording and chaining are two steps, so that no request waits on the chain:

- :meth:`AuditLog.record` adds the entry's body to the ``pending`` stream: one
  ``XADD``, no ``WATCH`` (a new job's entry is added by the very script that creates
  the job, :meth:`jobs.store.JobStore.create`, so the job and its entry exist
  together or not at all). Redis keeps it from then on: nothing recorded is lost.
- :meth:`AuditLog.seal` chains the pending entries in the order they were recorded:
  it reads the head and a batch, hashes them here, and one Lua script appends the
  batch to the chain, removes it from ``pending`` and moves the head, only if the
  head is still the one read (another process sealing meanwhile makes it read
  again). Each process seals in the background about :data:`SEAL_DELAY` after it
  records (one seal covers every entry recorded meanwhile, from any process), and
  tries again, backing off, while Redis is away;
  :meth:`AuditLog.entries` and :meth:`AuditLog.verify` (``handover audit verify``)
  seal first, so they see every entry recorded until then, including those of a
  process that died before it sealed. :meth:`AuditLog.append` records, seals and
  returns the entry's hash.

Layout: ``{ns}audit`` (stream: prev, hash, body, seq = the entry's id in ``pending``),
``{ns}audit:head`` (string), ``{ns}audit:pending`` (stream: body).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.model import utcnow

log = logging.getLogger("handover.audit")

GENESIS = "0" * 64
#: How long after recording an entry its process seals: entries recorded meanwhile
#: share one seal.
SEAL_DELAY = 0.05
#: Entries one seal chains at most (a longer backlog takes several).
SEAL_BATCH = 500
#: A background seal that fails (Redis away) is tried this many times, backing off
#: from :data:`SEAL_DELAY` to :data:`MAX_SEAL_BACKOFF` (about 20 s in all).
SEAL_ATTEMPTS = 10
MAX_SEAL_BACKOFF = 5.0

#: Appends a batch to the chain if the head is still ``ARGV[1]`` ("" for none); each
#: entry is ARGV ``pending id, prev, hash, body`` after it. 1 if sealed, 0 if the head moved.
_SEAL = """
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 4 do
  redis.call('XADD', KEYS[2], '*', 'prev', ARGV[i + 1], 'hash', ARGV[i + 2],
             'body', ARGV[i + 3], 'seq', ARGV[i])
  redis.call('XDEL', KEYS[3], ARGV[i])
end
redis.call('SET', KEYS[1], ARGV[#ARGV - 1])
return 1
"""


def chain_hash(prev: str, body: bytes) -> str:
    """The hash of an entry whose predecessor's hash is ``prev``."""
    return hashlib.sha256(prev.encode() + body).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry to record: its body, and the stream it waits in until sealed."""

    stream: str
    body: bytes


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
    """Records, seals and verifies the hash-chained audit stream."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis: Any = redis
        self.key = f"{namespace}audit"
        self.head_key = f"{namespace}audit:head"
        self.pending_key = f"{namespace}audit:pending"
        self._seal_script = self.redis.register_script(_SEAL)
        self._sealer: asyncio.Task[None] | None = None
        self._more = False
        self._settling = False

    def entry(self, actor: str, action: str, job_id: str, **details: Any) -> AuditEntry:
        """The entry for ``action`` done now by ``actor`` on ``job_id``, not yet recorded."""
        body = {"at": utcnow().isoformat(), "actor": actor, "action": action, "job": job_id}
        return AuditEntry(
            self.pending_key, orjson.dumps({**body, **details}, option=orjson.OPT_SORT_KEYS)
        )

    async def record(self, entry: AuditEntry) -> str:
        """Record ``entry`` (one ``XADD``) and seal it soon; returns its id in ``pending``."""
        pending: bytes = await self.redis.xadd(self.pending_key, {"body": entry.body})
        self.seal_soon()
        return pending.decode()

    async def append(self, actor: str, action: str, job_id: str, **details: Any) -> str:
        """Add one entry and seal it at once; returns its hash."""
        pending: bytes = await self.redis.xadd(
            self.pending_key, {"body": self.entry(actor, action, job_id, **details).body}
        )
        sealed = await self.seal()
        if pending in sealed:
            return sealed[pending]
        newest = "+"  # another process sealed it first: find it in the chain, newest first
        while page := await self.redis.xrevrange(self.key, max=newest, count=SEAL_BATCH):
            for _, fields in page:
                if fields.get(b"seq") == pending:
                    return str(fields[b"hash"].decode())
            newest = f"({page[-1][0].decode()}"
        raise RedisError(f"audit entry {pending.decode()} is neither pending nor sealed")

    def seal_soon(self) -> None:
        """Seal what is pending shortly, in the background (once per burst of records)."""
        self._more = True
        loop = asyncio.get_running_loop()
        if self._sealer is None or self._sealer.done() or self._sealer.get_loop() is not loop:
            self._sealer = loop.create_task(self._seal_in_background())

    async def settle(self) -> None:
        """Wait for this process's background seal, if one is under way, without its retries:
        if Redis is away, the entries stay pending for the next seal."""
        sealer = self._sealer
        if sealer is not None and sealer.get_loop() is asyncio.get_running_loop():
            self._settling = True
            try:
                await asyncio.shield(sealer)
            finally:
                self._settling = False

    async def _seal_in_background(self) -> None:
        delay, failures = SEAL_DELAY, 0
        while self._more:
            await asyncio.sleep(delay)
            self._more = False
            try:
                await self.seal()
            except (RedisError, OSError) as exc:
                # Recorded entries stay pending in Redis: this seal is tried again, then the
                # next seal anywhere (or ``audit verify``) chains them.
                failures += 1
                log.warning("audit entries not sealed yet (%s: %s)", type(exc).__name__, exc)
                if failures == SEAL_ATTEMPTS or self._settling:
                    return
                self._more = True
                delay = min(SEAL_DELAY * 2**failures, MAX_SEAL_BACKOFF)
            else:
                delay, failures = SEAL_DELAY, 0

    async def seal(self) -> dict[bytes, str]:
        """Chain every entry recorded so far, oldest first; returns the hash of each entry
        this call chained, by its id in ``pending``."""
        sealed: dict[bytes, str] = {}
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(self.head_key)
                pipe.xrange(self.pending_key, count=SEAL_BATCH)
                raw_head, batch = await pipe.execute()
            if not batch:
                return sealed
            head = raw_head.decode() if raw_head is not None else ""
            prev = head or GENESIS
            args: list[bytes | str] = [head]
            hashes: dict[bytes, str] = {}
            for entry_id, fields in batch:
                digest = chain_hash(prev, fields[b"body"])
                args += [entry_id, prev, digest, fields[b"body"]]
                hashes[entry_id] = prev = digest
            keys = [self.head_key, self.key, self.pending_key]
            if await self._seal_script(keys=keys, args=args):
                sealed.update(hashes)

    async def entries(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` entries, newest first (what is pending is sealed first)."""
        await self.seal()
        raw = await self.redis.xrevrange(self.key, count=count)
        return [
            {"id": entry_id.decode(), **orjson.loads(fields[b"body"])} for entry_id, fields in raw
        ]

    async def verify(self, batch: int = 1000) -> AuditVerification:
        """Seal what is pending, then walk the whole chain from the start; report every break."""
        await self.seal()
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
