"""Handover's own retention: finished jobs deleted once ``HANDOVER_RECORD_RETENTION`` has passed.

Jobs are made the real way (commands, a worker in burst mode, the worker's crons) on the
real Redis and moto's S3, then aged: :func:`backdate` moves every time their records hold
back, as the years would have. The purge is the worker's cron (:func:`jobs.worker.purge_records`),
told what time it is where a bound is tested. A purged job is looked for everywhere in
Redis (key names, values, members, fields, stream entries), in storage and in the
embedded maildir; only the audit log may still name it. A subject whose every request
was purged is found nowhere.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs import notices
from jobs.commands import Actor, Commands
from jobs.epoch import Epochs
from jobs.idempotency import KEPT_SECONDS
from jobs.mail import read_maildir
from jobs.model import Identity, Job, JobKind, JobStatus, epoch_ms, utcnow
from jobs.reconcile import Reconciler
from jobs.records import AUDIT_ACTION, Records
from jobs.resources import Resources
from jobs.search import job_indexes
from jobs.settings import MIN_RECORD_RETENTION, Settings, SettingsError
from jobs.storage.s3 import S3Store
from jobs.store import JobNotFound
from jobs.webhooks import MAX_TRIES as WEBHOOK_TRIES
from jobs.webhooks import backoff as webhook_backoff
from jobs.worker import (
    PURGE_HOUR,
    PURGE_MINUTE,
    SWEEP_MEMORY,
    WorkerContext,
    create_worker,
    purge_records,
    watch_deadlines,
)
from tests.conftest import free_port
from tests.jobs.test_export import drain

RETENTION = timedelta(days=3 * 365)
DAY = timedelta(days=1)
ALICE = Actor("alice", staff=False)
ADMIN = Actor("admin-1", staff=True)
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry", "ivy")


@pytest.fixture
async def resources(resources_factory: Callable[..., Any]) -> AsyncIterator[Resources]:
    crm = MemoryConnector("crm", records={p: {"contacts": [{"id": p}]} for p in PEOPLE})
    broken = MemoryConnector("billing", fail="billing is down for good")
    async with resources_factory(
        {"crm": crm, "billing": broken}, erasure_grace=timedelta(0)
    ) as opened:
        yield opened


@pytest.fixture
async def ctx(resources: Resources) -> dict[str, Any]:
    """A worker's context over ``resources``, as arq passes it to the crons."""
    context: dict[str, Any] = {}
    await WorkerContext(resources.settings, resources=resources).on_startup(context)
    return context


async def backdate(resources: Resources, job_id: str, by: timedelta) -> None:
    """Make the job's records what they would be ``by`` later: every time they hold, earlier."""
    redis: Any = resources.redis
    store = resources.store
    job = await store.get(job_id)
    job.created_at -= by
    job.updated_at -= by
    job.due_at -= by
    if job.result is not None:
        job.result.expires_at -= by
    key = f"{store.ns}job:{job_id}"
    await redis.hset(key, "core", job.model_dump_json(exclude={"connectors"}))
    for index in job_indexes(store.ns, job):
        score = await redis.zscore(index, job_id)
        if score is not None:
            await redis.zadd(index, {job_id: score - by.total_seconds() * 1000})
    events = await redis.xrange(f"{key}:events")
    await redis.delete(f"{key}:events")
    for _, fields in events:
        at = datetime.fromisoformat(fields[b"at"].decode()) - by
        await redis.xadd(f"{key}:events", {**fields, b"at": at.isoformat().encode()})


async def mentions(redis: ArqRedis, needle: str, *, audit: str) -> list[str]:
    """Everywhere Redis holds ``needle``: key names, values, members, fields, stream entries.

    Left out: the audit stream ``audit``, which names jobs by id for good, and keys that
    expire by themselves before the shortest retention could pass (arq's results).
    """
    client: Any = redis
    found = []
    word = needle.encode()
    async for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key == audit or 0 < await client.ttl(raw) <= MIN_RECORD_RETENTION.total_seconds():
            continue
        if word in raw:
            found.append(f"key {key}")
        kind = (await client.type(raw)).decode()
        if kind == "string":
            values = [await client.get(raw)]
        elif kind == "hash":
            values = [b for pair in (await client.hgetall(raw)).items() for b in pair]
        elif kind == "set":
            values = list(await client.smembers(raw))
        elif kind == "zset":
            values = await client.zrange(raw, 0, -1)
        elif kind == "list":
            values = await client.lrange(raw, 0, -1)
        else:
            entries = await client.xrange(raw)
            values = [b for _, fields in entries for pair in fields.items() for b in pair]
        if any(word in value for value in values):
            found.append(f"{kind} {key}")
    return found


async def objects_of(resources: Resources, job_id: str) -> list[str]:
    keys = []
    for area in ("archives", "staging"):
        async for item in resources.storage.list_objects(f"{resources.prefix}{area}/{job_id}/"):
            keys.append(item.key)
    return keys


async def snapshot(redis: ArqRedis) -> dict[bytes, Any]:
    client: Any = redis
    return {key: await client.dump(key) async for key in client.scan_iter(count=1000)}


async def exported(commands: Commands, subject: str, *connectors: str) -> Job:
    return await commands.request_export(
        Actor(subject, staff=False), subject=subject, connectors=list(connectors) or None
    )


async def test_finished_jobs_are_purged_after_the_retention_and_nothing_else(
    resources: Resources, redis: ArqRedis, ctx: dict[str, Any]
) -> None:
    commands = Commands(resources)
    store = resources.store
    client: Any = redis  # redis-py types async results as sync-or-async unions
    succeeded = await exported(commands, "alice", "crm")
    failed = await exported(commands, "bob", "crm", "billing")  # crm's staged part stays
    canceled = await exported(commands, "dave", "crm")
    await commands.cancel(ADMIN, canceled.id)
    erasure = await commands.request_erasure(
        ALICE, JobKind.ERASURE, subject="carol", connectors=["crm"]
    )
    await commands.confirm(ADMIN, erasure.id)
    recent = await exported(commands, "erin", "crm")
    unconfirmed = await commands.request_erasure(ALICE, JobKind.ERASURE, subject="frank")
    refused = await exported(commands, "henry", "crm")
    await commands.refuse(ADMIN, refused.id, grounds="excessive", reason="the tenth this week")
    asked = await exported(commands, "ivy", "crm")
    await commands.ask(ADMIN, asked.id, needs="the order number of your device")
    await drain(redis, resources)
    queued = await exported(commands, "grace", "crm")  # no worker runs it: live
    old = [succeeded, failed, canceled, erasure, refused]
    ended_in = {job.id: (await store.get(job.id)).status for job in old}
    assert list(ended_in.values()) == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
        JobStatus.SUCCEEDED,
        JobStatus.REFUSED,
    ]
    assert (await store.get(asked.id)).status is JobStatus.AWAITING_INFORMATION
    assert await objects_of(resources, succeeded.id)
    assert await objects_of(resources, failed.id)
    assert await client.exists(f"{store.ns}journal:{erasure.id}:crm")

    for job in old:
        await backdate(resources, job.id, RETENTION + 10 * DAY)
    await backdate(resources, recent.id, RETENTION - DAY)
    live = [unconfirmed, asked, queued]
    for job in live:
        await backdate(resources, job.id, 10 * RETENTION)
    assert await watch_deadlines(ctx) == 2  # both archives "expire within a day": marked once
    assert await client.sismember(f"{store.ns}once:job.expiring_soon", succeeded.id)
    counts = await store.counts()
    audited = len(await resources.audit.entries(1000))

    everything = await snapshot(redis)
    records = Records.of(resources)
    dry = await records.purge_finished_jobs(actor="test", dry_run=True)
    assert dry.count == 5
    assert dry.lines()[-1] == "nothing deleted (dry run)"
    assert await snapshot(redis) == everything

    assert await purge_records(ctx) == 5
    for job in old:
        with pytest.raises(JobNotFound):
            await store.get(job.id)
        where = await mentions(redis, job.id, audit=resources.audit.key)
        assert where == [], (job.id, where)
        assert await objects_of(resources, job.id) == [], job.id
    for subject in ("bob", "carol", "dave", "henry"):  # every request of theirs purged
        assert await mentions(redis, subject, audit=resources.audit.key) == [], subject
    for job in (recent, *live):
        assert (await store.get(job.id)).id == job.id
        assert await mentions(redis, job.id, audit=resources.audit.key)
    assert await store.counts() == counts
    verification = await resources.audit.verify()
    assert verification.ok, verification.problems
    entries = await resources.audit.entries(1000)
    assert len(entries) == audited + 5
    purged = {(e["job"], e["kind"], e["status"]) for e in entries if e["action"] == AUDIT_ACTION}
    assert purged == {(job.id, job.kind.value, ended_in[job.id].value) for job in old}
    metrics = await resources.metrics.render(counts, 0, 0)
    assert 'handover_jobs_purged_total{kind="export",status="canceled"} 1' in metrics
    assert 'handover_jobs_purged_total{kind="erasure",status="succeeded"} 1' in metrics

    assert await purge_records(ctx) == 0
    assert (await resources.audit.verify()).ok


async def test_a_job_is_purged_a_moment_after_the_retention_from_its_last_activity(
    resources: Resources, redis: ArqRedis, ctx: dict[str, Any]
) -> None:
    commands = Commands(resources)
    job = await exported(commands, "alice", "crm")
    await drain(redis, resources)
    ended = await resources.store.ended_at(job.id)
    assert ended is not None
    finished, end = ended
    assert finished.result is not None
    assert end == finished.result.expires_at  # an archive still downloadable keeps its job

    assert await purge_records(ctx, now=end + RETENTION) == 0
    assert await purge_records(ctx, now=end + RETENTION + timedelta(milliseconds=1)) == 1
    with pytest.raises(JobNotFound):
        await resources.store.get(job.id)


async def test_a_live_job_is_never_purged_and_a_failed_one_retried_is_live(
    resources: Resources, redis: ArqRedis, ctx: dict[str, Any]
) -> None:
    commands = Commands(resources)
    job = await exported(commands, "bob", "billing")
    await drain(redis, resources)
    assert (await resources.store.get(job.id)).status is JobStatus.FAILED
    await backdate(resources, job.id, 2 * RETENTION)
    await commands.retry(ADMIN, job.id)
    await backdate(resources, job.id, 2 * RETENTION)
    assert (await resources.store.get(job.id)).status is JobStatus.QUEUED
    far = utcnow() + 20 * RETENTION

    assert await purge_records(ctx, now=far) == 0
    assert (await resources.store.get(job.id)).status is JobStatus.QUEUED
    await drain(redis, resources)
    assert await purge_records(ctx, now=far) == 1


async def test_a_purge_walks_past_a_batch_of_jobs_it_keeps(resources: Resources) -> None:
    """More than a batch of old jobs that ended recently do not hide an older one behind them."""
    commands = Commands(resources)
    oldest = await exported(commands, "alice", "crm")
    await commands.cancel(ADMIN, oldest.id)
    await backdate(resources, oldest.id, RETENTION + DAY)
    store = resources.store
    kept = []
    for subject in ("bob", "carol", "dave", "erin", "frank"):
        job = await exported(commands, subject, "crm")
        await commands.cancel(ADMIN, job.id)
        kept.append(job.id)
    # Created long ago (first in the index, before the oldest), ended just now.
    client: Any = resources.redis
    ms = epoch_ms(utcnow() - 2 * RETENTION)
    await client.zadd(f"{store.ns}idx:status:canceled", dict.fromkeys(kept, ms))
    records = Records(
        resources.redis, resources.storage, prefix=resources.prefix, retention=RETENTION, batch=2
    )

    assert (await records.purge_finished_jobs(actor="test", dry_run=True)).count == 1
    assert (await records.purge_finished_jobs(actor="test")).count == 1
    with pytest.raises(JobNotFound):
        await store.get(oldest.id)
    assert sorted(await store.ids_by_status(JobStatus.CANCELED)) == sorted(kept)


async def test_objects_storage_could_not_delete_are_named_and_reconciled_later(
    resources: Resources, redis: ArqRedis
) -> None:
    commands = Commands(resources)
    failed = await exported(commands, "bob", "crm", "billing")
    canceled = await exported(commands, "carol", "crm")
    await commands.cancel(ADMIN, canceled.id)
    await drain(redis, resources)
    staged = await objects_of(resources, failed.id)
    assert staged
    for job in (failed, canceled):
        await backdate(resources, job.id, RETENTION + DAY)
    unreachable = S3Store("nowhere", endpoint_url=f"http://127.0.0.1:{free_port()}")
    records = Records(redis, unreachable, prefix=resources.prefix, retention=RETENTION)

    result = await records.purge_finished_jobs(actor="test")
    await unreachable.close()
    assert (result.count, result.objects, result.objects_left) == (2, 0, 2)
    assert result.lines()[-1].startswith("left the objects of 2 job(s) in storage (")
    assert result.lines()[-1].endswith(
        "`handover storage reconcile` deletes them, as they belong to no job now"
    )
    with pytest.raises(JobNotFound):
        await resources.store.get(failed.id)
    assert await objects_of(resources, failed.id) == staged
    await Epochs(redis, resources.store.ns).begin()
    await Reconciler.of(resources).run(min_age=timedelta(0), actor="test")
    assert await objects_of(resources, failed.id) == []


async def test_a_purged_jobs_messages_leave_the_embedded_maildir_and_others_stay(
    resources: Resources,
    redis: ArqRedis,
    ctx: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    maildir = notices.maildir_path(resources.settings)
    assert maildir is not None  # the embedded store's settings, no SMTP URL
    commands = Commands(resources)
    jobs = {}
    for subject in ("alice", "bob"):
        jobs[subject] = await commands.request_export(
            Actor(subject, staff=False),
            subject=subject,
            connectors=["crm"],
            identity=Identity(identifiers={"email": f"{subject}@example.org"}),
        )
    old, recent = jobs["alice"], jobs["bob"]
    await drain(redis, resources)

    def filed(job: Job) -> list[str]:
        return sorted(str(mail.notice) for mail in read_maildir(maildir) if mail.job == job.id)

    assert filed(old) == filed(recent) == ["acknowledged", "completed"]
    everything = read_maildir(maildir)
    await backdate(resources, old.id, RETENTION + 10 * DAY)

    dry = await Records.of(resources).purge_finished_jobs(actor="test", dry_run=True)
    assert dry.count == 1
    assert dry.lines()[-1] == "nothing deleted (dry run)"
    assert read_maildir(maildir) == everything

    with caplog.at_level(logging.INFO, logger="handover.records"):
        assert await purge_records(ctx) == 1  # the worker's cron
    assert caplog.messages[-1].endswith("; deleted 2 message(s) of theirs from the maildir")
    assert filed(old) == []
    assert all(
        old.id not in mail.text and "alice@" not in mail.to for mail in read_maildir(maildir)
    )
    assert filed(recent) == ["acknowledged", "completed"]
    assert (await resources.store.get(recent.id)).id == recent.id


def test_the_retention_is_a_duration_of_30_days_at_least_never_off() -> None:
    assert Settings.load({}).record_retention == RETENTION
    assert Settings.load({"HANDOVER_RECORD_RETENTION": "30d"}).record_retention == 30 * DAY
    with pytest.raises(SettingsError) as off:
        Settings.load({"HANDOVER_RECORD_RETENTION": "off"})
    assert str(off.value) == (
        "HANDOVER_RECORD_RETENTION: finished jobs cannot be kept forever (storage limitation, "
        "GDPR Art. 5(1)(e)); give the accountability period, e.g. 3y"
    )
    for short in ("0", "12h", "29d"):
        with pytest.raises(SettingsError) as shorter:
            Settings.load({"HANDOVER_RECORD_RETENTION": short})
        assert str(shorter.value).startswith("HANDOVER_RECORD_RETENTION: must be at least 30d")


def test_what_expires_by_itself_is_gone_before_the_shortest_retention(
    resources: Resources, redis: ArqRedis
) -> None:
    longest_wait = inspect.signature(webhook_backoff).parameters["cap"].default
    assert timedelta(seconds=WEBHOOK_TRIES * longest_wait) <= MIN_RECORD_RETENTION
    assert timedelta(seconds=KEPT_SECONDS) <= MIN_RECORD_RETENTION
    assert SWEEP_MEMORY <= MIN_RECORD_RETENTION
    assert max(notices.STATE_TTL, notices.LETTER_TTL) <= MIN_RECORD_RETENTION
    worker = create_worker(resources.settings, redis=redis, resources=resources)
    assert timedelta(seconds=worker.keep_result_s) <= MIN_RECORD_RETENTION


def test_the_worker_purges_once_a_day(resources: Resources, redis: ArqRedis) -> None:
    worker = create_worker(resources.settings, redis=redis, resources=resources)
    crons = {job.name: job for job in worker.cron_jobs}
    purge = crons["purge_records"]
    assert (purge.hour, purge.minute, purge.unique) == ({PURGE_HOUR}, {PURGE_MINUTE}, True)
