"""The job store: job records, their timelines and the support indexes, in Redis.

Layout (``ns`` is the key namespace, ``handover:`` by default)::

    {ns}job:{id}                 hash: "core" → job JSON, "run:{connector}" → run JSON
    {ns}job:{id}:events          stream: the append-only timeline
    {ns}idx:created              zset: job id → created_at (ms)
    {ns}idx:due                  zset: job id → due_at (ms)
    {ns}idx:status:{status}      zset: job id → created_at (ms)
    {ns}idx:kind:{kind}          zset: job id → created_at (ms)
    {ns}idx:subject:{subject}    zset: job id → created_at (ms)
    {ns}idem:{actor}:{key}       string: idempotency record, kept 24 h

Job records carry no TTL: a live job is never lost to expiry. Every change of a
job's status happens in :meth:`JobStore.transition`, inside one optimistic Redis
transaction that checks the move, writes it, moves the indexes and appends the event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from jobs.model import (
    ConnectorRun,
    Event,
    Job,
    JobStatus,
    check_transition,
    utcnow,
)

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class JobNotFound(Exception):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused with a different request body."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was used for job {job_id} with another body")
        self.key = key
        self.job_id = job_id


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class JobStore:
    """Reads and writes jobs; safe to share between tasks and processes."""

    def __init__(self, redis: Redis, namespace: str = "handover:") -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace

    def _job_key(self, job_id: str) -> str:
        return f"{self.ns}job:{job_id}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.ns}job:{job_id}:events"

    def _status_key(self, status: JobStatus) -> str:
        return f"{self.ns}idx:status:{status.value}"

    async def create(
        self,
        job: Job,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> tuple[Job, bool]:
        """Store a new job and its ``created`` event; returns ``(job, created)``.

        With an ``idempotency_key`` a repeat of the same request (same requester, key
        and ``fingerprint`` of the body) returns the job made the first time.
        """
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
            idem_key = f"{self.ns}idem:{job.requested_by}:{digest}"
            record = orjson.dumps({"job_id": job.id, "fingerprint": fingerprint})
            stored = await self.redis.set(idem_key, record, nx=True, ex=IDEMPOTENCY_TTL_SECONDS)
            if not stored:
                previous = await self.redis.get(idem_key)
                if previous is not None:
                    earlier = orjson.loads(previous)
                    if earlier["fingerprint"] != fingerprint:
                        raise IdempotencyConflict(idempotency_key, earlier["job_id"])
                    return await self.get(earlier["job_id"]), False
        created_ms = _ms(job.created_at)
        async with self.redis.pipeline(transaction=True) as pipe:
            mapping = {"core": orjson.dumps(job.core_dict())}
            mapping.update(
                {f"run:{n}": orjson.dumps(r.to_dict()) for n, r in job.connectors.items()}
            )
            pipe.hset(self._job_key(job.id), mapping=mapping)
            pipe.zadd(f"{self.ns}idx:created", {job.id: created_ms})
            pipe.zadd(f"{self.ns}idx:due", {job.id: _ms(job.due_at)})
            pipe.zadd(self._status_key(job.status), {job.id: created_ms})
            pipe.zadd(f"{self.ns}idx:kind:{job.kind.value}", {job.id: created_ms})
            pipe.zadd(f"{self.ns}idx:subject:{job.subject}", {job.id: created_ms})
            self._queue_event(
                pipe, job.id, "created", job.requested_by, {"status": job.status.value}
            )
            await pipe.execute()
        return job, True

    async def get(self, job_id: str) -> Job:
        """The job with this id; :class:`JobNotFound` if there is none."""
        raw = await self.redis.hgetall(self._job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return self._decode(raw)

    def _decode(self, raw: dict[bytes, bytes]) -> Job:
        core = orjson.loads(raw[b"core"])
        runs = {
            key.decode()[4:]: ConnectorRun.from_dict(orjson.loads(value))
            for key, value in raw.items()
            if key.startswith(b"run:")
        }
        return Job.from_parts(core, runs)

    async def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        actor: str,
        event: str | None = None,
        data: dict[str, Any] | None = None,
        expect: Iterable[JobStatus] | None = None,
        change: Callable[[Job], None] | None = None,
    ) -> Job | None:
        """Move the job to ``target``, writing the event, atomically.

        ``expect`` lists the states this caller moves from; from any other state the
        call changes nothing and returns ``None`` (another worker got there first).
        A move the state machine forbids raises
        :class:`~jobs.model.IllegalTransition`. ``change`` may edit the job (result,
        error, generation) in the same transaction.
        """
        expected = frozenset(expect) if expect is not None else None
        key = self._job_key(job_id)
        pipe: Any
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hgetall(key)
                    if not raw:
                        raise JobNotFound(job_id)
                    job = self._decode(raw)
                    if expected is not None and job.status not in expected:
                        return None
                    previous = job.status
                    check_transition(job_id, previous, target)
                    job.status = target
                    job.updated_at = utcnow()
                    if change is not None:
                        change(job)
                    pipe.multi()
                    pipe.hset(key, "core", orjson.dumps(job.core_dict()))
                    if previous != target:
                        created_ms = _ms(job.created_at)
                        pipe.zrem(self._status_key(previous), job_id)
                        pipe.zadd(self._status_key(target), {job_id: created_ms})
                    event_data = {"status": target.value, "from": previous.value, **(data or {})}
                    self._queue_event(pipe, job_id, event or target.value, actor, event_data)
                    await pipe.execute()
                    return job
                except WatchError:
                    continue

    async def update_run(
        self,
        job_id: str,
        connector: str,
        update: Callable[[ConnectorRun], None],
        *,
        generation: int,
        event: str | None = None,
        actor: str = "worker",
        data: dict[str, Any] | None = None,
    ) -> Job | None:
        """Apply ``update`` to one connector's run and return the whole job after it.

        Refuses (returns ``None``) when the job has moved to another generation (it
        was retried) or has ended, so a late, stale worker cannot overwrite newer work.
        Reading every run in the same transaction lets exactly-one caller see that
        the last run has just finished.
        """
        key = self._job_key(job_id)
        field = f"run:{connector}"
        pipe: Any
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hgetall(key)
                    if not raw:
                        raise JobNotFound(job_id)
                    job = self._decode(raw)
                    if job.generation != generation or job.status.terminal:
                        return None
                    run = job.connectors[connector]
                    update(run)
                    pipe.multi()
                    pipe.hset(key, field, orjson.dumps(run.to_dict()))
                    if event is not None:
                        self._queue_event(
                            pipe, job_id, event, actor, {"connector": connector, **(data or {})}
                        )
                    await pipe.execute()
                    return job
                except WatchError:
                    continue

    async def add_event(
        self, job_id: str, event: str, actor: str, data: dict[str, Any] | None = None
    ) -> None:
        """Append an event that changes no state (e.g. a download)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_event(pipe, job_id, event, actor, data or {})
            await pipe.execute()

    def _queue_event(
        self, pipe: Any, job_id: str, event: str, actor: str, data: dict[str, Any]
    ) -> None:
        pipe.xadd(
            self._events_key(job_id),
            {"type": event, "actor": actor, "at": utcnow().isoformat(), "data": orjson.dumps(data)},
        )

    async def events(self, job_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """The job's timeline, oldest first, from after event id ``after``."""
        start = after if after == "-" else f"({after}"
        entries = await self.redis.xrange(self._events_key(job_id), min=start, count=count)
        return [
            Event(
                id=entry_id.decode(),
                at=datetime.fromisoformat(fields[b"at"].decode()),
                type=fields[b"type"].decode(),
                actor=fields[b"actor"].decode(),
                data=orjson.loads(fields[b"data"]),
            )
            for entry_id, fields in entries
        ]

    async def ids_by_status(self, status: JobStatus, limit: int = 1000) -> list[str]:
        """Ids of jobs in ``status``, oldest first."""
        raw = await self.redis.zrange(self._status_key(status), 0, limit - 1)
        return [item.decode() for item in raw]

    def _gate_key(self, subject: str) -> str:
        return f"{self.ns}gate:{subject}"

    async def claim_subject(self, subject: str, job_id: str) -> str | None:
        """Let ``job_id`` run for ``subject``, or queue it behind the job that runs.

        One job per subject runs at a time (an export never overlaps an erasure).
        Returns ``None`` when ``job_id`` holds the subject; otherwise the id of the
        live job that does, and ``job_id`` is recorded as waiting for it. A holder
        that has ended without releasing (its worker died) no longer counts.
        """
        gate = self._gate_key(subject)
        pipe: Any
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(gate)
                    raw = await pipe.hget(gate, "holder")
                    holder: str | None = raw.decode() if raw else None
                    if holder and holder != job_id and await self._is_live(holder):
                        pipe.multi()
                        pipe.sadd(f"{gate}:waiting", job_id)
                        await pipe.execute()
                        return holder
                    pipe.multi()
                    pipe.hset(gate, "holder", job_id)
                    pipe.srem(f"{gate}:waiting", job_id)
                    await pipe.execute()
                    return None
                except WatchError:
                    continue

    async def _is_live(self, job_id: str) -> bool:
        raw = await self.redis.hget(self._job_key(job_id), "core")
        return raw is not None and not JobStatus(orjson.loads(raw)["status"]).terminal

    async def release_subject(self, subject: str, job_id: str) -> list[str]:
        """``job_id`` has ended: free the subject; returns the jobs that were waiting."""
        gate = self._gate_key(subject)
        pipe: Any
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(gate)
                    raw = await pipe.hget(gate, "holder")
                    pipe.multi()
                    if raw is not None and raw.decode() == job_id:
                        pipe.hdel(gate, "holder")
                    pipe.smembers(f"{gate}:waiting")
                    pipe.delete(f"{gate}:waiting")
                    results = await pipe.execute()
                    return sorted(member.decode() for member in results[-2])
                except WatchError:
                    continue
