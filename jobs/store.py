"""The job store: job records, their timelines and the support indexes, in Redis.

Layout (``ns`` is the key namespace, ``handover:`` by default)::

    {ns}job:{id}                 hash: "core" → job JSON, "run:{connector}" → run JSON
    {ns}job:{id}:events          stream: the append-only timeline
    {ns}idx:created              zset: job id → created_at (ms)
    {ns}idx:due                  zset: job id → due_at (ms)
    {ns}idx:open                 zset: job id → due_at (ms), live jobs only
    {ns}idx:status:{status}      zset: job id → created_at (ms)
    {ns}idx:kind:{kind}          zset: job id → created_at (ms)
    {ns}idx:subject:{subject}    zset: job id → created_at (ms)
    {ns}idx:connector:{name}     zset: job id → created_at (ms)
    {ns}idx:expires              zset: job id → archive expires_at (ms), until it expires
    {ns}counts                   hash: "{kind}:{status}" → number of jobs
    {ns}gate:{subject}           hash: the job running for the subject; set ":waiting"

Job records carry no TTL: a live job is never lost to expiry. A job that ends
loses its identifiers' values in the same transaction (the evidence of their
kinds stays). Every change to a
job happens in :meth:`JobStore.modify` (status moves through
:meth:`JobStore.transition`), inside one optimistic Redis transaction that checks
the change, writes it, keeps the indexes and counts right and appends the event.
Each transaction is an ``attempt`` that redis-py's ``Redis.transaction`` runs on a
pipeline watching the keys it reads, and runs again on a fresh read when one of
them changed before the write. An attempt that refuses unwatches first, so its
answer stands as read and nothing is written.
Searches (:meth:`JobStore.search`, :mod:`jobs.search`) walk these indexes, never the key space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.model import (
    ConnectorRun,
    Event,
    Job,
    JobKind,
    JobStatus,
    check_transition,
    epoch_ms,
    utcnow,
)
from jobs.search import JobPage, JobQuery, JobSearch


def _core(job: Job) -> bytes:
    """The job's record without its runs, which are stored one field each."""
    return job.model_dump_json(exclude={"connectors"}).encode()


def _run(run: ConnectorRun) -> bytes:
    return run.model_dump_json().encode()


class JobNotFound(Exception):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class JobStore:
    """Reads and writes jobs; safe to share between tasks and processes."""

    def __init__(self, redis: Redis, namespace: str = "handover:") -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace
        self._search = JobSearch(redis, namespace)

    def _job_key(self, job_id: str) -> str:
        return f"{self.ns}job:{job_id}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.ns}job:{job_id}:events"

    def _status_key(self, status: JobStatus) -> str:
        return f"{self.ns}idx:status:{status.value}"

    async def create(self, job: Job) -> Job:
        """Store a new job, its indexes and its ``created`` event."""
        async with self.redis.pipeline(transaction=True) as pipe:
            mapping = {"core": _core(job)}
            mapping.update({f"run:{n}": _run(r) for n, r in job.connectors.items()})
            pipe.hset(self._job_key(job.id), mapping=mapping)
            created_ms = epoch_ms(job.created_at)
            pipe.zadd(f"{self.ns}idx:created", {job.id: created_ms})
            pipe.zadd(f"{self.ns}idx:kind:{job.kind.value}", {job.id: created_ms})
            pipe.zadd(f"{self.ns}idx:subject:{job.subject}", {job.id: created_ms})
            for name in job.connectors:
                pipe.zadd(f"{self.ns}idx:connector:{name}", {job.id: created_ms})
            self._index(pipe, job, None, None)
            self._queue_event(
                pipe, job.id, "created", job.requested_by, {"status": job.status.value}
            )
            await pipe.execute()
        return job

    async def get(self, job_id: str) -> Job:
        """The job with this id; :class:`JobNotFound` if there is none."""
        raw = await self.redis.hgetall(self._job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return self._decode(raw)

    async def _read_watched(self, pipe: Any, key: str, job_id: str) -> Job:
        """Read the job through ``pipe``, which watches its key (a transaction's attempt)."""
        raw = await pipe.hgetall(key)
        if not raw:
            raise JobNotFound(job_id)
        return self._decode(raw)

    def _decode(self, raw: dict[bytes, bytes]) -> Job:
        job = Job.model_validate_json(raw[b"core"])
        job.connectors = {
            key.decode()[4:]: ConnectorRun.model_validate_json(value)
            for key, value in raw.items()
            if key.startswith(b"run:")
        }
        return job

    def _index(
        self, pipe: Any, job: Job, previous: JobStatus | None, previous_due: datetime | None
    ) -> None:
        """Queue the index and count changes that take the job from its previous state."""
        created_ms = epoch_ms(job.created_at)
        if previous != job.status:
            if previous is not None:
                pipe.zrem(self._status_key(previous), job.id)
                pipe.hincrby(f"{self.ns}counts", f"{job.kind.value}:{previous.value}", -1)
            pipe.zadd(self._status_key(job.status), {job.id: created_ms})
            pipe.hincrby(f"{self.ns}counts", f"{job.kind.value}:{job.status.value}", 1)
        if job.result is not None and job.status is JobStatus.SUCCEEDED:
            pipe.zadd(f"{self.ns}idx:expires", {job.id: epoch_ms(job.result.expires_at)})
        elif previous is JobStatus.SUCCEEDED:
            pipe.zrem(f"{self.ns}idx:expires", job.id)
        if previous != job.status or previous_due != job.due_at:
            due_ms = epoch_ms(job.due_at)
            pipe.zadd(f"{self.ns}idx:due", {job.id: due_ms})
            if job.status.terminal:
                pipe.zrem(f"{self.ns}idx:open", job.id)
            else:
                pipe.zadd(f"{self.ns}idx:open", {job.id: due_ms})

    async def modify(
        self,
        job_id: str,
        change: Callable[[Job], None],
        *,
        actor: str,
        event: str,
        data: dict[str, Any] | None = None,
        expect: Iterable[JobStatus] | None = None,
    ) -> Job | None:
        """Apply ``change`` to the job and append ``event``, atomically.

        ``expect`` lists the states the caller acts from; from any other state the
        call changes nothing and returns ``None`` (another actor got there first).
        ``change`` may raise to refuse; nothing is written then.
        """
        expected = frozenset(expect) if expect is not None else None
        key = self._job_key(job_id)

        async def attempt(pipe: Any) -> Job | None:
            job = await self._read_watched(pipe, key, job_id)
            if expected is not None and job.status not in expected:
                await pipe.unwatch()  # the refusal stands as read
                return None
            previous, previous_due = job.status, job.due_at
            runs_before = {n: _run(r) for n, r in job.connectors.items()}
            change(job)
            if job.status.terminal:
                job.ended()  # identifiers and a password live on the job only while it is
            job.updated_at = utcnow()
            pipe.multi()
            mapping = {"core": _core(job)}
            for name, run in job.connectors.items():
                if _run(run) != runs_before.get(name):
                    mapping[f"run:{name}"] = _run(run)
            pipe.hset(key, mapping=mapping)
            self._index(pipe, job, previous, previous_due)
            self._queue_event(pipe, job_id, event, actor, data or {})
            return job

        changed: Job | None = await self.redis.transaction(attempt, key, value_from_callable=True)
        return changed

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
        """Move the job to ``target`` (a legal move, or :class:`~jobs.model.IllegalTransition`).

        As :meth:`modify`; ``change`` may also edit the job (result, error,
        generation) in the same transaction. The event records both states.
        """
        event_data: dict[str, Any] = {"status": target.value, **(data or {})}

        def move(job: Job) -> None:
            check_transition(job_id, job.status, target)
            event_data["from"] = job.status.value
            job.status = target
            if change is not None:
                change(job)

        return await self.modify(
            job_id, move, actor=actor, event=event or target.value, data=event_data, expect=expect
        )

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

        async def attempt(pipe: Any) -> Job | None:
            job = await self._read_watched(pipe, key, job_id)
            if job.generation != generation or job.status.terminal:
                await pipe.unwatch()  # the refusal stands as read
                return None
            run = job.connectors[connector]
            update(run)
            pipe.multi()
            pipe.hset(key, field, _run(run))
            if event is not None:
                self._queue_event(
                    pipe, job_id, event, actor, {"connector": connector, **(data or {})}
                )
            return job

        updated: Job | None = await self.redis.transaction(attempt, key, value_from_callable=True)
        return updated

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
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def wait_for_events(self, job_id: str, after: str, block: float) -> list[Event]:
        """Events after ``after``, blocking up to ``block`` seconds for the first one."""
        answer = await self.redis.xread(
            {self._events_key(job_id): after if after != "-" else "0-0"},
            block=max(1, int(block * 1000)),
            count=100,
        )
        return [
            _event(entry_id, fields) for _, entries in answer or [] for entry_id, fields in entries
        ]

    async def ids_by_status(self, status: JobStatus, limit: int = 1000) -> list[str]:
        """Ids of jobs in ``status``, oldest first."""
        raw = await self.redis.zrange(self._status_key(status), 0, limit - 1)
        return [item.decode() for item in raw]

    async def archives_expiring_before(self, moment: datetime, limit: int = 1000) -> list[str]:
        """Ids of succeeded exports whose archive expires before ``moment``, soonest first."""
        raw = await self.redis.zrangebyscore(
            f"{self.ns}idx:expires", "-inf", f"({epoch_ms(moment)}", start=0, num=limit
        )
        return [item.decode() for item in raw]

    async def first_time(self, topic: str, job_id: str) -> bool:
        """True the first time it is asked for this topic and job (notify-once bookkeeping)."""
        added: int = await self.redis.sadd(f"{self.ns}once:{topic}", job_id)
        return added == 1

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

        async def attempt(pipe: Any) -> str | None:
            raw = await pipe.hget(gate, "holder")
            holder: str | None = raw.decode() if raw else None
            if holder and holder != job_id and await self._is_live(holder):
                pipe.multi()
                pipe.sadd(f"{gate}:waiting", job_id)
                return holder
            pipe.multi()
            pipe.hset(gate, "holder", job_id)
            pipe.srem(f"{gate}:waiting", job_id)
            return None

        running: str | None = await self.redis.transaction(attempt, gate, value_from_callable=True)
        return running

    async def claim_active(self, kind: JobKind, subject: str, job_id: str) -> str | None:
        """Record ``job_id`` as the subject's one live job of ``kind``.

        Returns ``None`` when recorded, or the id of the live job that already is.
        A recorded job that has ended no longer counts, so nothing needs releasing.
        """
        key = f"{self.ns}active:{kind.value}:{subject}"

        async def attempt(pipe: Any) -> str | None:
            raw = await pipe.get(key)
            if raw is not None and raw.decode() != job_id and await self._is_live(raw.decode()):
                await pipe.unwatch()  # the refusal stands as read
                return str(raw.decode())
            pipe.multi()
            pipe.set(key, job_id)
            return None

        active: str | None = await self.redis.transaction(attempt, key, value_from_callable=True)
        return active

    async def subject_busy_with_another(self, subject: str, job_id: str) -> bool:
        """Whether a live job other than ``job_id`` holds the subject's gate."""
        raw = await self.redis.hget(self._gate_key(subject), "holder")
        return raw is not None and raw.decode() != job_id and await self._is_live(raw.decode())

    async def _is_live(self, job_id: str) -> bool:
        raw = await self.redis.hget(self._job_key(job_id), "core")
        return raw is not None and not JobStatus(orjson.loads(raw)["status"]).terminal

    async def release_subject(self, subject: str, job_id: str) -> list[str]:
        """``job_id`` has ended: free the subject; returns the jobs that were waiting."""
        gate = self._gate_key(subject)

        async def attempt(pipe: Any) -> None:
            raw = await pipe.hget(gate, "holder")
            pipe.multi()
            if raw is not None and raw.decode() == job_id:
                pipe.hdel(gate, "holder")
            pipe.smembers(f"{gate}:waiting")
            pipe.delete(f"{gate}:waiting")

        results = await self.redis.transaction(attempt, gate)
        return sorted(member.decode() for member in results[-2])

    async def counts(self) -> dict[str, dict[str, int]]:
        """How many jobs there are of each kind in each status."""
        raw = await self.redis.hgetall(f"{self.ns}counts")
        counts: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            kind, status = field.decode().split(":", 1)
            if int(value):
                counts.setdefault(kind, {})[status] = int(value)
        return counts

    async def count_overdue(self, now: datetime) -> int:
        """Live jobs past their deadline."""
        count: int = await self.redis.zcount(f"{self.ns}idx:open", "-inf", f"({epoch_ms(now)}")
        return count

    async def search(self, query: JobQuery, now: datetime | None = None) -> JobPage:
        """Jobs matching ``query``, one page at a time, walking the indexes (:mod:`jobs.search`).

        The walk is driven by the most selective index for the query and ordered
        by creation (newest first) or by due date (soonest first); a page's cursor
        names the last job seen, so pages stay stable while new jobs arrive.
        """
        job_ids, next_cursor = await self._search.find(query, now or utcnow())
        return JobPage(jobs=await self._load(job_ids), next_cursor=next_cursor)

    async def _load(self, job_ids: list[str]) -> list[Job]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._job_key(job_id))
            raws = await pipe.execute()
        return [self._decode(raw) for raw in raws if raw]


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(
        id=entry_id.decode(),
        at=datetime.fromisoformat(fields[b"at"].decode()),
        type=fields[b"type"].decode(),
        actor=fields[b"actor"].decode(),
        data=orjson.loads(fields[b"data"]),
    )
