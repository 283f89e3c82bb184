"""The job store: job records, their timelines and the support indexes, in Redis.

Layout (``ns`` is the key namespace, ``handover:`` by default)::

    {ns}job:{id}                 hash: "core" → job JSON, "run:{connector}" → run JSON
    {ns}job:{id}:events          stream: the append-only timeline
    {ns}idx:created              zset: job id → created_at (ms)
    {ns}idx:due                  zset: job id → due_at (ms)
    {ns}idx:open                 zset: job id → due_at (ms), live jobs whose clock runs
    {ns}idx:status:{status}      zset: job id → created_at (ms)
    {ns}idx:kind:{kind}          zset: job id → created_at (ms)
    {ns}idx:subject:{subject}    zset: job id → created_at (ms)
    {ns}idx:connector:{name}     zset: job id → created_at (ms)
    {ns}idx:expires              zset: job id → archive expires_at (ms), until it expires
    {ns}counts                   hash: "{kind}:{status}" → number of jobs
    {ns}gate:{subject}           hash: the job running for the subject; set ":waiting"
    {ns}active:{kind}:{subject}  string: the subject's one live job of that kind

A new job is written by :meth:`JobStore.create` in one Lua script: the subject's
live-job mark claimed (or nothing written), the record, its indexes, counts and
``created`` event, the arq tasks that begin it, its audit entry and what is stored
alongside it (the subject's acknowledgement, :func:`jobs.notices.queued_with_job`), all
or nothing, in one round trip. When the connection drops before its answer is read, the
script is sent once more: it finds the record, answers it as stored and writes nothing
twice. Once the tasks are queued, a worker of the same process (``handover serve``) is told
(:meth:`jobs.queue.QueueClient.queued_due`), so that it polls at once. A script cache found
empty is loaded again once; empty again (a failover meanwhile), Redis counts as unavailable.
The :meth:`JobStore.get` reads and the new jobs' scripts asked for in one turn of the
event loop (an API answering many requests at once) go to Redis in one pipeline.

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
A job that ended long enough ago is deleted whole by :meth:`JobStore.delete_ended`
(:mod:`jobs.records`); ``counts`` keeps counting it, in the status it ended in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from jobs.audit import AuditEntry
from jobs.model import (
    ActiveJobExists,
    ConnectorRun,
    Event,
    Job,
    JobStatus,
    check_transition,
    epoch_ms,
    utcnow,
)
from jobs.queue import QUEUE_NAME, REDIS_UNAVAILABLE, QueueClient
from jobs.search import JobPage, JobQuery, JobSearch, job_indexes


def _core(job: Job) -> bytes:
    """The job's record without its runs, which are stored one field each."""
    return job.model_dump_json(exclude={"connectors"}).encode()


def _run(run: ConnectorRun) -> bytes:
    return run.model_dump_json().encode()


def last_activity(job: Job, last_event: datetime | None) -> datetime:
    """When the job last changed: its last change or timeline event, or its archive's expiry.

    For a job that has ended, this is its end as Handover's own retention counts it
    (:mod:`jobs.records`): a download, a notice, an archive expiring all come after the
    job's status did, and an archive a subject may still download keeps its job.
    """
    moments = [job.updated_at]
    if last_event is not None:
        moments.append(last_event)
    if job.result is not None:
        moments.append(job.result.expires_at)
    return max(moments)


@dataclass(frozen=True)
class QueuedTask:
    """An arq task queued with a new job, as ``ArqRedis.enqueue_job`` would queue it.

    ``payload`` is arq's serialised job; it is queued on ``queue`` at ``score_ms`` and
    kept ``expires_ms``, unless a task or a result with its id exists already.
    """

    task_id: str
    queue: str
    payload: bytes
    score_ms: int
    expires_ms: int

    @classmethod
    def now(cls, redis: ArqRedis, function: str, *args: Any, task_id: str) -> QueuedTask:
        """arq's task ``function(*args)`` as ``enqueue_job`` would queue it now, undeferred."""
        now = timestamp_ms()
        payload = serialize_job(function, args, {}, None, now, serializer=redis.job_serializer)
        return cls(task_id, QUEUE_NAME, payload, now, redis.expires_extra_ms)


@dataclass(frozen=True)
class Alongside:
    """What another module stores with a new job, in the same step (:meth:`JobStore.create`).

    ``commands`` are Redis commands, each as its words; ``tasks`` are arq tasks queued
    as the job's own are; ``events`` go on the job's timeline after its ``created``
    event, each as its type, actor and data (:func:`jobs.notices.queued_with_job`).
    """

    commands: Sequence[Sequence[str]] = ()
    tasks: Sequence[QueuedTask] = ()
    events: Sequence[tuple[str, str, dict[str, Any]]] = ()


#: The whole of a new job, in one step (:meth:`JobStore.create`). KEYS[1]: its record;
#: ARGV[1]: JSON (one argument packs faster than many): ``mark``, the live-job mark to
#: claim ("" for none), ``id``, ``jobs`` (the prefix of job records), ``terminal`` (the
#: statuses that end a job), ``arq`` (arq's job and result key prefixes), ``tasks``
#: (each: task id, queue, payload, score, expiry in ms) and ``writes`` (each: a command's
#: words). Nothing is written when the record exists (a retry: the answer holds the
#: record) or the mark is taken. The tasks are queued last: Lua rolls nothing back, so a
#: write that fails leaves no task behind to run for a job or notice that is not there.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', redis.call('HGETALL', KEYS[1])} end
local new = cjson.decode(ARGV[1])
if new.mark ~= '' then
  local holder = redis.call('GET', new.mark)
  if holder and holder ~= new.id then
    local core = redis.call('HGET', new.jobs .. holder, 'core')
    if core then
      local status = cjson.decode(core)['status']
      local ended = false
      for _, terminal in ipairs(new.terminal) do ended = ended or terminal == status end
      if not ended then return {'active', holder} end
    end
  end
  redis.call('SET', new.mark, new.id)
end
for _, words in ipairs(new.writes) do redis.call(unpack(words)) end
for _, task in ipairs(new.tasks) do
  local job_key, result_key = new.arq[1] .. task[1], new.arq[2] .. task[1]
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, task[5], task[3])
    redis.call('ZADD', task[2], task[4], task[1])
  end
end
return {'created'}
"""


#: The subject's gate for a job (:meth:`JobStore.claim_subject`). KEYS[1]: the gate,
#: KEYS[2]: its waiting set; ARGV[1]: the job's id, ARGV[2]: the prefix of job records,
#: ARGV[3] on: the statuses that end a job. The live holder's id, the job then waiting;
#: or nothing, the job holding the gate. Sent again after its answer was lost, it finds
#: the gate as it left it, and answers the same.
_CLAIM_SUBJECT = """
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] then
  local core = redis.call('HGET', ARGV[2] .. holder, 'core')
  local live = core ~= false
  if live then
    local status = cjson.decode(core)['status']
    for i = 3, #ARGV do live = live and ARGV[i] ~= status end
  end
  if live then
    redis.call('SADD', KEYS[2], ARGV[1])
    return holder
  end
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return false
"""
#: The gate freed by a job that ended (:meth:`JobStore.release_subject`): KEYS as above,
#: ARGV[1] the job's id; the jobs that were waiting.
_RELEASE_SUBJECT = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('HDEL', KEYS[1], 'holder') end
local waiting = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
return waiting
"""
#: The statuses that end a job, as the scripts take them.
_TERMINAL = [status.value for status in JobStatus if status.terminal]


class _Writes:
    """Writes recorded as a pipeline would queue them, to be run by a Lua script."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []

    def _write(self, *words: Any) -> None:
        self.writes.append([word if type(word) is str else _word(word) for word in words])

    def hset(
        self, key: str, field: str | None = None, value: Any = None, mapping: Any = None
    ) -> None:
        pairs = [*([field, value] if field is not None else []), *_flat(mapping or {})]
        self._write("HSET", key, *pairs)

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        self._write("ZADD", key, *(w for member, score in mapping.items() for w in (score, member)))

    def xadd(self, key: str, fields: Mapping[str, Any]) -> None:
        self._write("XADD", key, "*", *_flat(fields))

    def __getattr__(self, command: str) -> Callable[..., None]:
        """Any other command whose arguments are its words (``zrem``, ``hincrby``, ``sadd``…)."""
        if command.startswith("_"):
            raise AttributeError(command)
        return lambda *words: self._write(command.upper(), *words)


def _flat(mapping: Mapping[str, Any]) -> list[Any]:
    return [word for pair in mapping.items() for word in pair]


def _word(value: Any) -> str:
    """A command's word as JSON carries it to the script: text (every value here is UTF-8)."""
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else str(value)


class _Batch:
    """The commands asked for in one turn of the event loop, sent in one pipeline.

    Fifty requests answered at once (fifty reads of a job, fifty new jobs' scripts) cost
    one write to Redis and one read back, not fifty of each. A command's error is its
    own asker's; a lost connection fails the batch.
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, *words: Any) -> asyncio.Future[Any]:
        """``words`` run as a command (answered as redis-py answers it) with this turn's."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests): what waited on another is void
            self._loop, self._waiting = loop, []
        answer: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:  # the first this turn: send them all once the turn is over
            task = loop.create_task(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._waiting.append((words, answer))
        return answer

    async def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            if len(batch) == 1:
                answers = [await self.redis.execute_command(*batch[0][0])]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for words, _ in batch:
                        pipe.execute_command(*words)
                    answers = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:
            answers = [exc] * len(batch)
        for (_, answer), raw in zip(batch, answers, strict=True):
            if answer.done():  # its request was canceled meanwhile
                continue
            if isinstance(raw, BaseException):
                answer.set_exception(raw)
            else:
                answer.set_result(raw)


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
        self._create = self.redis.register_script(_CREATE)
        self._claim_subject = self.redis.register_script(_CLAIM_SUBJECT)
        self._release_subject = self.redis.register_script(_RELEASE_SUBJECT)
        self._batch = _Batch(self.redis)

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
        tasks: Sequence[QueuedTask] = (),
        claim_active: bool = False,
        audit: AuditEntry | None = None,
        alongside: Sequence[Alongside] = (),
    ) -> Job:
        """Store a new job, its indexes and its ``created`` event, with ``tasks`` queued,
        ``audit`` recorded and what other modules store ``alongside`` it (a notice to the
        subject), all in one step (nothing is written when anything refuses).

        With ``claim_active`` the job becomes the subject's one live job of its kind, or
        :class:`~jobs.model.ActiveJobExists` names the live one that is and nothing is
        written; a recorded job that has ended no longer counts.
        """
        pipe = _Writes()  # the writes, as a transaction would queue them
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
        self._queue_event(pipe, job.id, "created", job.requested_by, {"status": job.status.value})
        for extra in alongside:
            for command in extra.commands:
                pipe.writes.append([_word(word) for word in command])
            for event, actor, data in extra.events:
                self._queue_event(pipe, job.id, event, actor, data)
        if audit is not None:
            pipe.xadd(audit.stream, {"body": audit.body})
        queued = [*tasks, *(task for extra in alongside for task in extra.tasks)]
        new = {
            "mark": f"{self.ns}active:{job.kind.value}:{job.subject}" if claim_active else "",
            "id": job.id,
            "jobs": f"{self.ns}job:",
            "terminal": _TERMINAL,
            "arq": [job_key_prefix, result_key_prefix],
            "tasks": [
                [t.task_id, t.queue, _word(t.payload), str(t.score_ms), str(t.expires_ms)]
                for t in queued
            ],
            "writes": pipe.writes,
        }
        call = ("EVALSHA", self._create.sha, 1, self._job_key(job.id), orjson.dumps(new))
        try:
            answer = await self._run_create(call)
        except REDIS_UNAVAILABLE:  # the script may have run, its answer lost: ask once more
            answer = await self._run_create(call)
        if answer[0] == b"active":
            raise ActiveJobExists(job.kind, answer[1].decode())
        if answer[0] == b"exists":  # stored already (the first send ran): that job stands
            stored = answer[1]
            return self.decode(dict(zip(stored[::2], stored[1::2], strict=True)))
        if isinstance(self.redis, QueueClient):  # a worker of this process polls at once
            now = timestamp_ms()
            for queue in {task.queue for task in queued if task.score_ms <= now}:
                self.redis.queued_due(queue)
        return job

    async def _run_create(self, call: tuple[Any, ...]) -> Any:
        """The create script's answer to ``call``, sent with the other scripts and reads of
        this turn of the event loop; the script loaded first if Redis has lost it."""
        try:
            return await self._batch.call(*call)
        except NoScriptError:  # a Redis new or restarted: the script is loaded, and run
            await self.redis.script_load(_CREATE)
        try:
            return await self._batch.call(*call)
        except NoScriptError as exc:  # lost again (a failover meanwhile): Redis is not there yet
            raise RedisConnectionError("Redis lost its scripts while a job was created") from exc

    async def get(self, job_id: str) -> Job:
        """The job with this id; :class:`JobNotFound` if there is none.

        Reads asked for in the same turn of the event loop go to Redis in one pipeline.
        """
        return self.decode(await self.record(job_id))

    async def record(self, job_id: str) -> dict[bytes, bytes]:
        """The job's record as stored (``core`` and a ``run:{name}`` per run), for a reader
        that needs no :class:`Job` (the API's view of a job); read as :meth:`get` reads it.
        :meth:`decode` makes the job of it."""
        raw: dict[bytes, bytes] = await self._batch.call("HGETALL", self._job_key(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return raw

    async def _read_watched(self, pipe: Any, key: str, job_id: str) -> Job:
        """Read the job through ``pipe``, which watches its key (a transaction's attempt)."""
        raw = await pipe.hgetall(key)
        if not raw:
            raise JobNotFound(job_id)
        return self.decode(raw)

    def decode(self, raw: Mapping[bytes, bytes]) -> Job:
        """The job a stored record (:meth:`record`) holds."""
        job = Job.model_validate_json(raw[b"core"])
        job.connectors = {
            key.decode()[4:]: ConnectorRun.model_validate_json(value)
            for key, value in raw.items()
            if key.startswith(b"run:")
        }
        return job

    def _index(
        self,
        pipe: Any,
        job: Job,
        previous: JobStatus | None,
        previous_due: datetime | None,
        was_open: bool = False,
    ) -> None:
        """Queue the index and count changes that take the job from its previous state.

        ``idx:open`` holds the live jobs whose clock runs (:attr:`Job.open_due`).
        """
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
        if (
            previous != job.status
            or previous_due != job.due_at
            or was_open != (job.open_due is not None)
        ):
            due_ms = epoch_ms(job.due_at)
            pipe.zadd(f"{self.ns}idx:due", {job.id: due_ms})
            if job.open_due is None:  # ended, or its clock stopped (jobs.lifecycle)
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
            previous, previous_due, was_open = job.status, job.due_at, job.open_due is not None
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
            self._index(pipe, job, previous, previous_due, was_open)
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
        """Append an event that changes no state (e.g. a download): one ``XADD``."""
        await self.redis.execute_command(*self.event_command(job_id, event, actor, data))

    def event_command(
        self, job_id: str, event: str, actor: str, data: dict[str, Any] | None = None
    ) -> list[str]:
        """The ``XADD`` words that append an event, for another module's script to run
        in the step that makes it true (:func:`jobs.notices.notify_subject`)."""
        writes = _Writes()
        self._queue_event(writes, job_id, event, actor, data or {})
        return writes.writes[0]

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
        holder: bytes | None = await self._claim_subject(
            keys=[gate, f"{gate}:waiting"],
            args=[job_id, self._job_key(""), *_TERMINAL],
        )
        return None if holder is None else holder.decode()

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
        waiting = await self._release_subject(keys=[gate, f"{gate}:waiting"], args=[job_id])
        return sorted(member.decode() for member in waiting)

    async def ids_created_before(
        self, status: JobStatus, moment: datetime, *, skip: int = 0, limit: int = 1000
    ) -> list[str]:
        """Ids of jobs in ``status`` created before ``moment``, oldest first, after ``skip``."""
        raw = await self.redis.zrangebyscore(
            self._status_key(status), "-inf", f"({epoch_ms(moment)}", start=skip, num=limit
        )
        return [item.decode() for item in raw]

    async def ended_at(self, job_id: str) -> tuple[Job, datetime] | None:
        """The job and its end (:func:`last_activity`) if it has ended; ``None`` if live or gone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._job_key(job_id))
            pipe.xrevrange(self._events_key(job_id), count=1)
            raw, last = await pipe.execute()
        if not raw:
            return None
        job = self.decode(raw)
        if not job.status.terminal:
            return None
        return job, last_activity(job, _event(*last[0]).at if last else None)

    async def once_keys(self) -> list[str]:
        """The notify-once sets (:meth:`first_time`), found in one pass over the key space."""
        found = self.redis.scan_iter(match=f"{self.ns}once:*", count=1000)
        return sorted({key.decode() async for key in found})

    async def delete_ended(
        self,
        job_id: str,
        *,
        ended_before: datetime,
        once: Sequence[str] = (),
        also: Callable[[Any, Job], None] | None = None,
    ) -> Job | None:
        """Delete a job that ended before ``ended_before``, and everything the store holds of it.

        Its record, its timeline, its entries in every index (:func:`jobs.search.job_indexes`)
        and the marks that name it (its subject's gate and live-job marks, the notify-once
        sets ``once``), in one transaction that watches the record and the timeline;
        ``also(pipe, job)`` queues other modules' deletions of the job in it. A job that
        is live, or whose end (:func:`last_activity`) is not before ``ended_before``, is
        left as it is and the answer is ``None``, as when there is no such job; so is one
        retried or changed meanwhile, read again. The counts stay: they count every job
        there has been.
        """
        key, events = self._job_key(job_id), self._events_key(job_id)
        mark = job_id.encode()

        async def attempt(pipe: Any) -> Job | None:
            raw = await pipe.hgetall(key)
            last = await pipe.xrevrange(events, count=1)
            job = self.decode(raw) if raw else None
            if (
                job is None
                or not job.status.terminal
                or last_activity(job, _event(*last[0]).at if last else None) >= ended_before
            ):
                await pipe.unwatch()  # the refusal stands as read
                return None
            gate = self._gate_key(job.subject)
            active = f"{self.ns}active:{job.kind.value}:{job.subject}"
            await pipe.watch(gate, active)
            holder = await pipe.hget(gate, "holder")
            marked = await pipe.get(active)
            pipe.multi()
            pipe.delete(key, events)
            for index in job_indexes(self.ns, job):
                pipe.zrem(index, job_id)
            for topic in once:
                pipe.srem(topic, job_id)
            pipe.srem(f"{gate}:waiting", job_id)
            if holder == mark:
                pipe.hdel(gate, "holder")
            if marked == mark:
                pipe.delete(active)
            if also is not None:
                also(pipe, job)
            return job

        deleted: Job | None = await self.redis.transaction(
            attempt, key, events, value_from_callable=True
        )
        return deleted

    async def counts(self) -> dict[str, dict[str, int]]:
        """How many jobs there have been of each kind in each status (purged ones as they ended)."""
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
        return [self.decode(raw) for raw in raws if raw]


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(
        id=entry_id.decode(),
        at=datetime.fromisoformat(fields[b"at"].decode()),
        type=fields[b"type"].decode(),
        actor=fields[b"actor"].decode(),
        data=orjson.loads(fields[b"data"]),
    )
