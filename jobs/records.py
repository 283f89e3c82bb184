"""Handover's own records: a finished job is kept for the accountability period, then deleted.

A job's record (its timeline, its connector runs and their reports, an erasure's
signed receipt, the journals behind them) is the evidence that a request was
answered, and how (GDPR Art. 5(2), accountability). It is personal data too (whose
request, what was asked), so it is not kept forever (Art. 5(1)(e), storage
limitation): :meth:`Records.purge_finished_jobs` deletes every job that ended more than
``HANDOVER_RECORD_RETENTION`` (3 years by default) ago. The worker runs it daily
(:func:`jobs.worker.purge_records`); ``handover jobs purge [--dry-run]`` runs it by hand.

- A job's end is its last recorded activity (:func:`jobs.store.last_activity`): its
  last change or timeline event (a download, an archive expiring), or its archive's
  expiry when later. A live job is never purged, whatever its age.
- In Redis, one transaction per job (:meth:`jobs.store.JobStore.delete_ended`) checks,
  as it deletes, that the job has ended and ended before the cutoff (one retried
  meanwhile is kept), and deletes its record, timeline, index entries, the marks that
  name it, its erasure journals (:mod:`jobs.journal`), what :mod:`jobs.recipients` keeps
  of it, the sweeper's count of it
  (:mod:`jobs.worker`) and its tasks' ids in arq's abort set.
- In object storage, what is left under ``archives/<id>/`` and ``staging/<id>/`` (an
  archive has normally expired already; a failed job's staged parts have not). When
  storage fails, the run goes on without it and says how many jobs' objects it left:
  :mod:`jobs.reconcile` deletes them, since they now belong to no job.
- In embedded mode, the messages filed for it in the maildir
  (:func:`jobs.notices.maildir_path`: notices to the subject, messages to recipients and
  processors), found by their ``X-Handover-Job`` header: they hold addresses, the job's
  id and what staff wrote. The maildir is read once a run, at the first job purged, and a
  job's messages removed right after its transaction. When the maildir fails, the run
  goes on without it and says how many jobs' messages it left (the audit log's
  ``job.purged`` entries name the jobs).

What stays: the hash-chained audit log, which names jobs by id and subjects by keyed
pseudonym only, and gets a ``job.purged`` entry per job in the transaction that purges
it (with the ``handover_jobs_purged_total`` count); and the counts behind
``/v1/stats`` and the ``handover_jobs`` metric, kept as jobs change status, not
computed from the jobs present, so they go on counting a purged job in the status it
ended in. What expires by itself (idempotency records, download-link marks, notices'
state, arq's results) is gone before: the retention is at least 30 days
(:data:`jobs.settings.MIN_RECORD_RETENTION`).

Candidates are read :data:`PURGE_BATCH` at a time from each ended status's index,
oldest first, among jobs created before the cutoff (a job ends after it is created);
a run that purges finds the notify-once sets in one pass over the key space. A second
run finds nothing more to do. The log says counts, never ids.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from arq.constants import abort_jobs_ss
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.audit import AuditLog
from jobs.mail import maildir_keys_by_job, remove_from_maildir
from jobs.metrics import Metrics
from jobs.model import Job, JobStatus, utcnow
from jobs.notices import maildir_path
from jobs.pipeline import resolve_task_id, run_task_id
from jobs.recipients import recipient_keys
from jobs.reconcile import AREAS
from jobs.resources import NAMESPACE, Resources, StartupError, shared_redis_and_storage
from jobs.settings import Settings
from jobs.storage.base import ObjectStore, StorageError
from jobs.store import JobStore

log = logging.getLogger("handover.records")

#: Candidate jobs read from an index at a time.
PURGE_BATCH = 200
#: The statuses a job ends in: succeeded, failed, canceled, expired, refused.
ENDED = tuple(status for status in JobStatus if status.terminal)
AUDIT_ACTION = "job.purged"
#: The journal of Handover's own copies that an erasure deleted (:mod:`jobs.journal`).
COPIES = "handover-copies"
PURGED_METRIC = "handover_jobs_purged_total"


class RecordsError(Exception):
    """Purging could not start, or stopped; the message says why in one line."""


def span(duration: timedelta) -> str:
    """A duration as settings write it: ``3y``, ``90d``, ``12h``, ``15m``, ``30s``."""
    seconds = int(duration.total_seconds())
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class Purge:
    """What one run purged (or, on a dry run, would purge): jobs by kind and status, objects."""

    dry_run: bool
    retention: timedelta
    cutoff: datetime
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)
    objects: int = 0
    #: Jobs purged whose objects storage could not delete (after its first failure, the
    #: run does not ask it again), and the failure.
    objects_left: int = 0
    storage_error: str = ""
    #: Whether notices are filed in a maildir (embedded mode), whose messages go too.
    maildir: bool = False
    messages: int = 0
    #: Jobs purged whose messages the maildir could not remove, and the failure.
    messages_left: int = 0
    maildir_error: str = ""

    @property
    def count(self) -> int:
        """How many jobs."""
        return sum(self.jobs.values())

    def lines(self) -> list[str]:
        """The outcome for an operator: counts only, one line per fact."""
        ended = (
            f"ended before {self.cutoff:%Y-%m-%d %H:%M} UTC "
            f"(HANDOVER_RECORD_RETENTION {span(self.retention)})"
        )
        if not self.count:
            return [f"nothing to purge: no finished job {ended}"]
        verb = "would purge" if self.dry_run else "purged"
        detail = ", ".join(
            f"{number} {kind} {status}" for (kind, status), number in sorted(self.jobs.items())
        )
        lines = [f"{verb} {self.count} finished job(s) that {ended}: {detail}"]
        if self.dry_run:
            lines.append("nothing deleted (dry run)")
            return lines
        lines.append(f"deleted {self.objects} object(s) of theirs from storage")
        if self.objects_left:
            lines.append(
                f"left the objects of {self.objects_left} job(s) in storage "
                f"({self.storage_error}): `handover storage reconcile` deletes them, as they "
                "belong to no job now"
            )
        if self.maildir:
            lines.append(f"deleted {self.messages} message(s) of theirs from the maildir")
        if self.messages_left:
            lines.append(
                f"left the messages of {self.messages_left} job(s) in the maildir "
                f"({self.maildir_error}): the audit log's job.purged entries name the jobs, "
                "their X-Handover-Job header the messages"
            )
        return lines


class Records:
    """Purges finished jobs past the retention, from Redis, object storage and the maildir."""

    def __init__(
        self,
        redis: Redis,
        storage: ObjectStore,
        *,
        prefix: str,
        retention: timedelta,
        namespace: str = NAMESPACE,
        batch: int = PURGE_BATCH,
        maildir: Path | None = None,
    ) -> None:
        """``batch``: how many candidate jobs are read from an index at a time; ``maildir``:
        where messages are filed (embedded mode), None when they are not."""
        self.storage = storage
        self.maildir = maildir
        self.batch = batch
        self.prefix = prefix
        self.retention = retention
        self.ns = namespace
        self.store = JobStore(redis, namespace)
        self.audit = AuditLog(redis, namespace)
        self.metrics = Metrics(redis, namespace)

    @classmethod
    def of(cls, resources: Resources) -> Records:
        """Over a process's own resources (the worker's cron)."""
        return cls(
            resources.redis,
            resources.storage,
            prefix=resources.prefix,
            retention=resources.settings.record_retention,
            namespace=resources.store.ns,
            maildir=maildir_path(resources.settings),
        )

    async def purge_finished_jobs(
        self, *, actor: str, dry_run: bool = False, now: datetime | None = None
    ) -> Purge:
        """Delete (unless ``dry_run``) every job that ended more than the retention ago.

        ``actor`` names who purges in the audit log; ``now`` is the current time (tests
        pass one). Redis and storage errors are the caller's (:class:`RecordsError` from
        :func:`open_records`).
        """
        now = now or utcnow()
        result = Purge(
            dry_run=dry_run,
            retention=self.retention,
            cutoff=now - self.retention,
            maildir=self.maildir is not None,
        )
        once: list[str] | None = None
        mail: dict[str, list[str]] | None = None  # the maildir's messages by job, read once
        for status in ENDED:
            kept = 0
            while True:
                batch = await self.store.ids_created_before(
                    status, result.cutoff, skip=kept, limit=self.batch
                )
                for job_id in batch:
                    if dry_run:
                        found = await self.store.ended_at(job_id)
                        if found is not None and found[1] < result.cutoff:
                            result.jobs[found[0].kind.value, found[0].status.value] += 1
                        kept += 1
                        continue
                    if once is None:
                        once = await self.store.once_keys()
                    recipients = await recipient_keys(self.store.redis, self.ns, job_id)
                    job = await self.store.delete_ended(
                        job_id,
                        ended_before=result.cutoff,
                        once=once,
                        also=partial(self._delete_traces, actor, recipients),
                    )
                    if job is None:
                        kept += 1
                        continue
                    result.jobs[job.kind.value, job.status.value] += 1
                    await self._delete_objects(job, result)
                    if self.maildir is not None:
                        mail = await self._delete_messages(self.maildir, job, result, mail)
                if len(batch) < self.batch:
                    break
        if result.count and not dry_run:
            await self.audit.seal()
            log.info("%s", "; ".join(result.lines()))
        return result

    def _delete_traces(self, actor: str, recipients: list[str], pipe: Any, job: Job) -> None:
        """Queue, in the job's purge's transaction, what goes with it.

        The deletion of what other modules keep of the job: its erasure journals
        (:mod:`jobs.journal`), the sweeper's count (:mod:`jobs.worker`), ``recipients`` (what
        :mod:`jobs.recipients` keeps of it, read before the transaction), and the ids of its
        tasks that arq keeps in its abort set when a job is canceled before they ran
        (:meth:`jobs.pipeline.Pipeline.abort_tasks`), which arq never drops. And the
        purge's audit entry and count, so that a purge is recorded if and only if it happened.
        """
        journals = [f"{self.ns}journal:{job.id}:{name}" for name in (*job.connectors, COPIES)]
        pipe.delete(*journals, *recipients, f"{self.ns}sweeps:{job.id}")
        tasks = [resolve_task_id(job), *(run_task_id(job, name) for name in job.connectors)]
        pipe.zrem(abort_jobs_ss, *tasks)
        kind, status = job.kind.value, job.status.value
        details = {"kind": kind, "status": status, "retention": span(self.retention)}
        entry = self.audit.entry(actor, AUDIT_ACTION, job.id, **details)
        pipe.xadd(entry.stream, {"body": entry.body})
        self.metrics.queue_count(pipe, PURGED_METRIC, kind=kind, status=status)

    async def _delete_objects(self, job: Job, result: Purge) -> None:
        """Delete what is left of the job in object storage, unless storage failed already."""
        if result.storage_error:
            result.objects_left += 1
            return
        try:
            for area in AREAS:
                result.objects += await self.storage.delete_prefix(f"{self.prefix}{area}/{job.id}/")
        except StorageError as exc:
            result.objects_left += 1
            result.storage_error = str(exc).replace(job.id, "<job id>")  # counts, not ids

    async def _delete_messages(
        self, maildir: Path, job: Job, result: Purge, mail: dict[str, list[str]] | None
    ) -> dict[str, list[str]] | None:
        """Remove the job's messages from the maildir, unless it failed already; ``mail``: its
        messages by job, read here at the first call of a run. Returns it for the next."""
        if result.maildir_error:
            result.messages_left += 1
            return mail
        try:
            if mail is None:
                mail = await asyncio.to_thread(maildir_keys_by_job, maildir)
            keys = mail.pop(job.id, [])
            if keys:
                result.messages += await asyncio.to_thread(remove_from_maildir, maildir, keys)
        except (OSError, mailbox.Error) as exc:  # mailbox's own: the maildir vanished
            result.messages_left += 1
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            result.maildir_error = f"the maildir {maildir}: {reason}"
        return mail


@asynccontextmanager
async def open_records(settings: Settings) -> AsyncIterator[Records]:
    """Records on the shared Redis and the object store that ``settings`` name."""
    try:
        async with shared_redis_and_storage(settings) as (redis, storage):
            yield Records(
                redis,
                storage,
                prefix=settings.s3_prefix,
                retention=settings.record_retention,
                maildir=maildir_path(settings),
            )
    except StartupError as exc:
        raise RecordsError(f"{exc}; nothing purged") from None


async def purge(settings: Settings, *, actor: str, dry_run: bool = False) -> Purge:
    """One run on the shared Redis and object store ``settings`` name (``handover jobs purge``).

    :class:`RecordsError` when Redis cannot be used, before or during the run.
    """
    async with open_records(settings) as records:
        try:
            return await records.purge_finished_jobs(actor=actor, dry_run=dry_run)
        except RedisError as exc:
            raise RecordsError(
                f"stopped: Redis: {exc}; the jobs purged before are gone, run it again for the rest"
            ) from exc
