"""Reconciling storage with Redis, in real S3 (moto) and the local store.

Job folders whose job does not exist are deleted once their newest object is older
than the safety delay; young ones, those of existing jobs, those a writer is still
writing and anything that is not a job folder stay. A dry run deletes nothing. The
worker's cron does the same with the delay from the settings, but only to folders
last written in the current epoch, and not at all while a loss is unacknowledged;
without an epoch marker, or without Redis, nothing is deleted.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from connectors.testing import MemoryConnector
from jobs.epoch import Epochs, EpochWatch
from jobs.export import ExportPipeline
from jobs.ids import new_ulid
from jobs.kinds import build_pipelines
from jobs.model import JobKind, utcnow
from jobs.reconcile import AUDIT_ACTION, ReconcileError, Reconciler
from jobs.resources import Resources
from jobs.storage.local import LocalStore
from jobs.worker import create_worker, reconcile_storage
from tests.conftest import free_port
from tests.factories import options_for

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


@pytest.fixture(params=["s3", "local"])
async def resources(
    request: pytest.FixtureRequest, resources_factory: Callable[..., Any]
) -> AsyncIterator[Resources]:
    """Resources on the moto bucket or the local store, in an epoch a process began."""
    overrides: dict[str, Any] = {"s3_bucket": None} if request.param == "local" else {}
    async with resources_factory({"crm": MemoryConnector("crm")}, **overrides) as opened:
        await Epochs(opened.redis, opened.store.ns).begin()
        yield opened


class Layout:
    """An existing job's folders, two lost jobs' folders, and objects that are no job folder."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.job_id = ""
        self.lost_export = new_ulid()
        self.lost_run = new_ulid()
        prefix = resources.prefix
        self.foreign = [
            f"{prefix}archives/not-a-job/notes.txt",
            f"{prefix}staging/loose.bin",
            f"{prefix}elsewhere/{self.lost_export}/kept.bin",
        ]

    async def write(self) -> None:
        resources = self.resources
        pipeline = ExportPipeline(resources)
        job = pipeline.new_job(
            JobKind.EXPORT,
            subject="alice",
            requested_by="alice",
            connectors=["crm"],
            options=options_for(JobKind.EXPORT),
        )
        await resources.store.create(job)
        self.job_id = job.id
        storage = resources.storage
        await storage.put(resources.archive_key(job.id), b"archive")
        await storage.put(resources.staging_prefix(job.id) + "crm.part", b"part")
        await storage.put(resources.archive_key(self.lost_export), b"lost archive")
        await storage.put(resources.staging_prefix(self.lost_export) + "crm.part", b"lost part")
        for name in ("crm.part", "billing.part", "devices.part"):
            await storage.put(resources.staging_prefix(self.lost_run) + name, b"lost")
        for key in self.foreign:
            await storage.put(key, b"not a job's")

    def owned(self) -> set[str]:
        resources = self.resources
        return {
            resources.archive_key(self.job_id),
            resources.staging_prefix(self.job_id) + "crm.part",
            *self.foreign,
        }

    async def keys(self) -> set[str]:
        return {item.key async for item in self.resources.storage.list_objects("")}


def deleted_ids(result: Any) -> set[tuple[str, str, int]]:
    return {(orphan.area, orphan.job_id, orphan.objects) for orphan in result.deleted}


async def test_orphans_older_than_the_delay_are_deleted_and_nothing_else(
    resources: Resources,
) -> None:
    layout = Layout(resources)
    await layout.write()
    everything = await layout.keys()
    assert len(everything) == 10
    reconciler = Reconciler.of(resources)
    orphans = {
        ("archives", layout.lost_export, 1),
        ("staging", layout.lost_export, 1),
        ("staging", layout.lost_run, 3),
    }

    young = await reconciler.run(min_age=HOUR, actor="test")
    assert young.deleted == []
    assert {(o.area, o.job_id, o.objects) for o in young.young} == orphans
    assert young.owned == 2
    dry = await reconciler.run(min_age=HOUR, actor="test", dry_run=True, now=utcnow() + 2 * HOUR)
    assert deleted_ids(dry) == orphans
    assert (
        dry.lines()[0] == f"would delete archives of 1 job(s) (1 object(s)): {layout.lost_export}"
    )
    assert await layout.keys() == everything
    assert await resources.audit.entries() == []

    done = await reconciler.run(min_age=HOUR, actor="test", now=utcnow() + 2 * HOUR)
    assert deleted_ids(done) == orphans
    both = ", ".join(sorted([layout.lost_export, layout.lost_run]))  # in key order
    assert done.lines()[:2] == [
        f"deleted archives of 1 job(s) (1 object(s)): {layout.lost_export}",
        f"deleted staged parts of 2 job(s) (4 object(s)): {both}",
    ]
    assert await layout.keys() == layout.owned()
    entries = await resources.audit.entries()
    assert {(e["action"], e["actor"], e["area"], e["job"], e["objects"]) for e in entries} == {
        (AUDIT_ACTION, "test", area, job_id, objects) for area, job_id, objects in orphans
    }
    assert (await resources.audit.verify()).ok
    again = await reconciler.run(min_age=HOUR, actor="test", now=utcnow() + 2 * HOUR)
    assert again.deleted == []
    assert again.lines()[0].startswith("nothing to delete")


async def test_the_worker_cron_reconciles_after_the_configured_delay(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory(
        {"crm": MemoryConnector("crm")}, reconcile_min_age=timedelta(minutes=30)
    ) as resources:
        # Begun a while before the folders were written (S3 keeps whole seconds).
        await Epochs(resources.redis, resources.store.ns).begin(now=utcnow() - 2 * SECOND)
        layout = Layout(resources)
        await layout.write()
        worker = create_worker(resources.settings, redis=resources.redis, resources=resources)
        hourly = {job.name: (job.minute, job.unique) for job in worker.cron_jobs}
        assert hourly["reconcile_storage"] == ({30}, True)  # once an hour, on one worker
        ctx = {"handover_pipelines": build_pipelines(resources)}
        assert await reconcile_storage(ctx, now=utcnow() + timedelta(minutes=20)) == 0
        assert len(await layout.keys()) == 10
        assert await reconcile_storage(ctx, now=utcnow() + timedelta(minutes=40)) == 3
        assert await layout.keys() == layout.owned()
        entries = await resources.audit.entries()
        assert {e["actor"] for e in entries} == {"cleanup"}
        assert {e["job"] for e in entries} == {layout.lost_export, layout.lost_run}


async def test_nothing_is_deleted_on_a_redis_without_an_epoch_marker(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory({"crm": MemoryConnector("crm")}) as resources:
        layout = Layout(resources)
        await layout.write()
        await redis.flushdb()  # a Redis no Handover process runs on: every folder looks lost
        with pytest.raises(ReconcileError, match="no epoch marker"):
            await Reconciler.of(resources).run(min_age=HOUR, actor="test", now=utcnow() + 2 * HOUR)
        ctx = {"handover_pipelines": build_pipelines(resources)}
        assert await reconcile_storage(ctx, now=utcnow() + 2 * HOUR) == 0
        assert len(await layout.keys()) == 10


async def test_nothing_is_deleted_when_redis_does_not_answer(resources: Resources) -> None:
    layout = Layout(resources)
    await layout.write()
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        reconciler = Reconciler(nobody, resources.storage, resources.prefix)
        with pytest.raises(ReconcileError, match="^Redis does not answer .*; nothing deleted$"):
            await reconciler.run(min_age=HOUR, actor="test", now=utcnow() + 2 * HOUR)
    finally:
        await nobody.aclose()
    assert len(await layout.keys()) == 10


async def test_a_listing_is_in_key_order_with_sizes_and_times(resources: Resources) -> None:
    storage = resources.storage
    # S3 keeps whole seconds, and a file system's clock may run a tick behind.
    before = utcnow() - timedelta(seconds=1)
    for key in ("b/2", "a/1", "b/10", "c", "bb/3"):
        await storage.put(f"{resources.prefix}{key}", key.encode() * 2)
    unfinished = []
    if isinstance(storage, LocalStore):  # a write in progress is listed under its own name
        writer = storage.writer(f"{resources.prefix}b/unfinished")
        await writer.write(b"half")
        unfinished = [("b/.unfinished.partial", -1)]
    listed = [item async for item in storage.list_objects(f"{resources.prefix}b")]
    shown = [(item.key.removeprefix(resources.prefix), item.size) for item in listed]
    if unfinished:  # its name ends in a random part; its size is what reached the disk
        assert shown[0][0].startswith("b/.unfinished.") and shown[0][0].endswith(".partial")
        shown[0] = ("b/.unfinished.partial", -1)
    assert shown == [*unfinished, ("b/10", 8), ("b/2", 6), ("bb/3", 8)]
    assert all(before <= item.modified <= utcnow() + timedelta(seconds=1) for item in listed)
    assert [item async for item in storage.list_objects(f"{resources.prefix}nothing/")] == []


async def test_the_cron_leaves_folders_older_than_the_epoch_to_the_operator(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    """A worker on an emptied or wrong Redis begins the epoch itself: every folder then
    looks lost, and is older than that epoch. The cron keeps them; the command deletes."""
    async with resources_factory({"crm": MemoryConnector("crm")}) as resources:
        layout = Layout(resources)
        await layout.write()
        everything = await layout.keys()
        await redis.flushdb()  # the jobs are gone, or this was never their Redis
        await EpochWatch(Epochs(redis, resources.store.ns)).start(now=utcnow() + 2 * SECOND)
        ctx = {"handover_pipelines": build_pipelines(resources)}
        assert await reconcile_storage(ctx, now=utcnow() + 2 * HOUR) == 0
        assert await layout.keys() == everything
        kept = await Reconciler.of(resources).run(
            min_age=HOUR,
            actor="test",
            dry_run=True,
            current_epoch_only=True,
            now=utcnow() + 2 * HOUR,
        )
        assert kept.deleted == []
        assert {(o.area, o.job_id) for o in kept.older} == {
            ("archives", layout.job_id),
            ("archives", layout.lost_export),
            ("staging", layout.job_id),
            ("staging", layout.lost_export),
            ("staging", layout.lost_run),
        }
        assert any("left to `handover storage reconcile`" in line for line in kept.lines())
        done = await Reconciler.of(resources).run(
            min_age=HOUR, actor="cli", now=utcnow() + 2 * HOUR
        )
        assert len(done.deleted) == 5, "the operator's command deletes them"


async def test_the_cron_deletes_nothing_while_a_loss_is_unacknowledged(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory({"crm": MemoryConnector("crm")}) as resources:
        epochs = Epochs(redis, resources.store.ns)
        watch = EpochWatch(epochs)
        await watch.start(now=utcnow() - 4 * SECOND)
        await redis.flushdb()
        assert await watch.check(now=utcnow() - 2 * SECOND) is not None  # the loss, recorded
        layout = Layout(resources)
        await layout.write()  # stragglers of lost jobs, written in the new epoch
        ctx = {"handover_pipelines": build_pipelines(resources)}
        assert await reconcile_storage(ctx, now=utcnow() + 2 * HOUR) == 0
        assert len(await layout.keys()) == 10
        with pytest.raises(ReconcileError, match="no operator has acknowledged it"):
            await Reconciler.of(resources).run(
                min_age=HOUR, actor="cleanup", current_epoch_only=True, now=utcnow() + 2 * HOUR
            )
        await epochs.acknowledge()
        assert await reconcile_storage(ctx, now=utcnow() + 2 * HOUR) == 3
        assert await layout.keys() == layout.owned()


async def test_a_folder_a_writer_is_still_writing_is_kept(
    resources_factory: Callable[..., Any],
) -> None:
    """On local disk, a job folder whose finished objects are old but whose writer is
    still at work (its ``.partial`` file fresh) is young."""
    async with resources_factory({"crm": MemoryConnector("crm")}, s3_bucket=None) as resources:
        await Epochs(resources.redis, resources.store.ns).begin(now=utcnow() - 3 * HOUR)
        storage = resources.storage
        assert isinstance(storage, LocalStore)
        lost = new_ulid()
        finished = resources.staging_prefix(lost) + "crm.part"
        await storage.put(finished, b"old part")
        two_hours_ago = (utcnow() - 2 * HOUR).timestamp()
        os.utime(storage.root / finished, (two_hours_ago, two_hours_ago))
        writer = storage.writer(resources.staging_prefix(lost) + "billing.part")
        await writer.write(b"still being written")
        result = await Reconciler.of(resources).run(min_age=HOUR, actor="test")
        assert result.deleted == []
        assert [(o.job_id, o.objects) for o in result.young] == [(lost, 2)]
        assert await storage.exists(finished)
        await writer.complete()
        assert await storage.exists(resources.staging_prefix(lost) + "billing.part")
