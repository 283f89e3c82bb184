"""Reconciling object storage with Redis: archives and staged parts that no job owns are deleted.

Every object Handover writes belongs to one job, under ``{prefix}archives/<job id>/``
or ``{prefix}staging/<job id>/``, and is written after its job was created. A job
folder whose job does not exist is an orphan: the job was lost with Redis's data
(:mod:`jobs.epoch`), or a crash left the folder behind. :meth:`Reconciler.run`
deletes orphans folder by folder, once the folder's newest object is older than a
safety delay (``HANDOVER_RECONCILE_MIN_AGE``, 1 h): a straggling task of a lost job
may still be writing.

Safe by construction:

- a folder whose job exists is never touched, whatever the job's state;
- a folder that is not named by a job id (a ULID) is not Handover's and is left alone;
- it refuses when Redis does not answer, or holds no epoch marker: a Redis that no
  Handover process runs on (a wrong ``HANDOVER_REDIS_URL``) would make every folder
  look orphaned.

The worker's hourly cron (:func:`jobs.worker.reconcile_storage`) runs unattended, so
it does less (``current_epoch_only``): it deletes only folders whose newest object
is newer than the current epoch's ``created_at``, and nothing at all while the epoch
holds a loss no operator has acknowledged. A worker started on a wrong or emptied
Redis begins an epoch there itself, and after a loss the lost jobs' folders are
older than the new epoch: those are left to ``handover storage reconcile``, which an
operator runs deliberately (after restoring Redis, if it can be).

Each deletion is logged (job id, area, object count: keys hold no personal data) and
recorded in the audit log as ``storage.orphans_deleted``. ``handover storage
reconcile`` (:mod:`service.cli.storage`) and the worker's hourly cron both run
:meth:`Reconciler.run`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.audit import AuditLog
from jobs.epoch import Epoch, Epochs
from jobs.ids import is_ulid
from jobs.model import utcnow
from jobs.resources import NAMESPACE, Resources, StartupError, shared_redis_and_storage
from jobs.settings import Settings
from jobs.storage.base import ObjectStore, StorageError
from jobs.store import JobNotFound, JobStore

log = logging.getLogger("handover.reconcile")

#: The areas a job's objects live in, and what each holds.
AREAS = {"archives": "archives", "staging": "staged parts"}
AUDIT_ACTION = "storage.orphans_deleted"


class ReconcileError(Exception):
    """Reconciling refused to start, or stopped; the message says why in one line."""


def _span(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Orphan:
    """A job folder whose job does not exist: how many objects, and the newest one's time."""

    job_id: str
    area: str
    objects: int
    newest: datetime


@dataclass
class Reconciliation:
    """What one run found: folders deleted (or, on a dry run, that would be), and kept."""

    dry_run: bool
    min_age: timedelta
    deleted: list[Orphan] = field(default_factory=list)
    young: list[Orphan] = field(default_factory=list)
    #: Kept by the cron: last written before the current epoch began (``epoch``).
    older: list[Orphan] = field(default_factory=list)
    epoch: Epoch | None = None
    owned: int = 0

    def lines(self) -> list[str]:
        """The outcome for an operator: counts and job ids, one line per area and verdict."""
        verb = "would delete" if self.dry_run else "deleted"
        lines = []
        for area, what in AREAS.items():
            orphans = [orphan for orphan in self.deleted if orphan.area == area]
            if orphans:
                objects = sum(orphan.objects for orphan in orphans)
                ids = ", ".join(orphan.job_id for orphan in orphans)
                lines.append(f"{verb} {what} of {len(orphans)} job(s) ({objects} object(s)): {ids}")
        if not self.deleted:
            lines.append(
                f"nothing to delete: no archives or staged parts without a job, older than "
                f"{_span(self.min_age)}"
            )
        if self.young:
            ids = ", ".join(f"{orphan.job_id} ({orphan.area})" for orphan in self.young)
            lines.append(
                f"kept {len(self.young)} folder(s) without a job, younger than "
                f"{_span(self.min_age)}: {ids}"
            )
        if self.older and self.epoch is not None:
            ids = ", ".join(f"{orphan.job_id} ({orphan.area})" for orphan in self.older)
            lines.append(
                f"kept {len(self.older)} folder(s) without a job, last written before epoch "
                f"{self.epoch.id} began ({self.epoch.created_at:%Y-%m-%d %H:%M:%S} UTC), "
                f"left to `handover storage reconcile`: {ids}"
            )
        lines.append(f"kept {self.owned} folder(s) of existing jobs")
        return lines


class Reconciler:
    """Compares the job folders in object storage with the jobs in Redis."""

    def __init__(
        self, redis: Redis, storage: ObjectStore, prefix: str, namespace: str = NAMESPACE
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.store = JobStore(redis, namespace)
        self.audit = AuditLog(redis, namespace)
        self.epochs = Epochs(redis, namespace)

    @classmethod
    def of(cls, resources: Resources) -> Reconciler:
        """The reconciler over a process's own resources (the worker's cron)."""
        return cls(resources.redis, resources.storage, resources.prefix, resources.store.ns)

    async def run(
        self,
        *,
        min_age: timedelta,
        actor: str,
        dry_run: bool = False,
        current_epoch_only: bool = False,
        now: datetime | None = None,
    ) -> Reconciliation:
        """Delete (unless ``dry_run``) every job folder without a job, older than ``min_age``.

        ``current_epoch_only`` (the cron) keeps the folders last written before the
        current epoch began, and refuses while its loss is unacknowledged. ``actor``
        names who reconciles in the audit log; ``now`` is the current time (tests pass
        one). :class:`ReconcileError` when Redis or the store fails.
        """
        now = now or utcnow()
        result = Reconciliation(dry_run=dry_run, min_age=min_age)
        try:
            epoch = await self.epochs.current()
        except RedisError as exc:
            raise ReconcileError(f"Redis does not answer ({exc}); nothing deleted") from exc
        if epoch is None:
            raise ReconcileError(
                "Redis holds no epoch marker: no Handover process runs on it (is "
                "HANDOVER_REDIS_URL right?), or it was emptied and none has noticed yet; "
                "nothing deleted"
            )
        if current_epoch_only:
            self._refuse_unacknowledged(epoch)
            result.epoch = epoch
        try:
            for area in AREAS:
                async for orphan in self._orphans(area, result):
                    if now - orphan.newest < min_age:
                        result.young.append(orphan)
                        continue
                    if current_epoch_only and orphan.newest <= epoch.created_at:
                        result.older.append(orphan)
                        continue
                    if not dry_run:
                        await self._delete(orphan, actor)
                    result.deleted.append(orphan)
        except (RedisError, StorageError) as exc:
            done = "nothing" if dry_run else f"{len(result.deleted)} job folder(s)"
            raise ReconcileError(f"stopped: {exc}; {done} deleted before") from exc
        return result

    @staticmethod
    def _refuse_unacknowledged(epoch: Epoch) -> None:
        loss = epoch.unacknowledged_loss
        if loss is not None:
            raise ReconcileError(
                f"Redis lost its data (epoch {loss.epoch}) and no operator has acknowledged "
                "it (`handover epoch acknowledge`): the lost jobs might be restored; "
                "nothing deleted"
            )

    async def _orphans(self, area: str, result: Reconciliation) -> AsyncIterator[Orphan]:
        """The area's job folders whose job does not exist; counts those whose job does."""
        async for job_id, objects, newest in self._folders(f"{self.prefix}{area}/"):
            if await self._job_exists(job_id):
                result.owned += 1
            else:
                yield Orphan(job_id, area, objects, newest)

    async def _folders(self, area_prefix: str) -> AsyncIterator[tuple[str, int, datetime]]:
        """Each job folder under ``area_prefix``: its job id, object count and newest time.

        A listing comes in key order and job ids have one length, so a folder's
        objects come together: one folder is held at a time.
        """
        job_id: str | None = None
        objects = 0
        newest = datetime.min
        async for item in self.storage.list_objects(area_prefix):
            folder, slash, _ = item.key.removeprefix(area_prefix).partition("/")
            if not slash or not is_ulid(folder):
                continue
            if folder != job_id:
                if job_id is not None:
                    yield job_id, objects, newest
                job_id, objects, newest = folder, 0, item.modified
            objects += 1
            newest = max(newest, item.modified)
        if job_id is not None:
            yield job_id, objects, newest

    async def _job_exists(self, job_id: str) -> bool:
        try:
            await self.store.get(job_id)
        except JobNotFound:
            return False
        except ValueError:  # a record that does not parse is still a job's
            return True
        return True

    async def _delete(self, orphan: Orphan, actor: str) -> None:
        deleted = await self.storage.delete_prefix(f"{self.prefix}{orphan.area}/{orphan.job_id}/")
        await self.audit.append(
            actor, AUDIT_ACTION, orphan.job_id, area=orphan.area, objects=deleted
        )
        log.info(
            "deleted the %s of job %s, which does not exist: %d object(s)",
            AREAS[orphan.area],
            orphan.job_id,
            deleted,
        )


@asynccontextmanager
async def open_reconciler(settings: Settings) -> AsyncIterator[Reconciler]:
    """A reconciler on the shared Redis and the object store that ``settings`` name."""
    try:
        async with shared_redis_and_storage(settings) as (redis, storage):
            yield Reconciler(redis, storage, settings.s3_prefix)
    except StartupError as exc:
        raise ReconcileError(f"{exc}; nothing deleted") from None
