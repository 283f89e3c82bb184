"""The export pipeline: fan-out, fan-in, at-least-once execution, failures, retries."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import boto3
import orjson
import pytest
from arq.connections import ArqRedis

import jobs.export
from connectors.base import Connector
from connectors.errors import PermanentError, RateLimited, TransientError
from connectors.items import Dataset, Item, Record, Subject
from connectors.reports import ErasureReport, RetentionRule
from connectors.testing import MemoryConnector, SyntheticConnector
from jobs.commands import Actor, Commands
from jobs.export import ExportPipeline, Kept
from jobs.model import InvalidRequest, JobStatus, RunStatus
from jobs.pipeline import RetryPolicy
from jobs.resources import Resources
from jobs.worker import create_worker
from tests.factories import staged_part
from tests.jobs.test_storage import watch_traffic

FAST_RETRIES = RetryPolicy(max_tries=4, base_delay=0.01, max_delay=0.05)


async def drain(
    redis: ArqRedis, resources: Resources, retry_policy: RetryPolicy | None = None
) -> Any:
    """Run a worker until the queue is empty; returns it, for its counters."""
    worker = create_worker(
        resources.settings,
        redis=redis,
        resources=resources,
        burst=True,
        poll_delay=0,
        handle_signals=False,
        retry_policy=retry_policy,
    )
    await worker.main()
    return worker


async def archive_of(resources: Resources, job_id: str) -> zipfile.ZipFile:
    job = await resources.store.get(job_id)
    assert job.result is not None, job
    return zipfile.ZipFile(io.BytesIO(await resources.storage.get(job.result.key)))


class ExportOnly(Connector):
    """A test connector that holds nothing to erase."""

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


class Barrier(ExportOnly):
    """Finishes only if its partner starts while it is running: proof of concurrency."""

    datasets: ClassVar[tuple[Dataset, ...]] = (Dataset("seen", "usage"),)

    def __init__(self, name: str, mine: asyncio.Event, partner: asyncio.Event) -> None:
        super().__init__(name)
        self.mine = mine
        self.partner = partner

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        self.mine.set()
        try:
            await asyncio.wait_for(self.partner.wait(), timeout=10)
        except TimeoutError:
            raise PermanentError(
                f"{self.name} ran alone: connectors did not run concurrently"
            ) from None
        yield Record("seen", {"by": self.name})


class Flaky(ExportOnly):
    """Fails with ``errors`` in turn, then answers."""

    datasets: ClassVar[tuple[Dataset, ...]] = (Dataset("events", "usage"),)

    def __init__(self, name: str, errors: list[Exception]) -> None:
        super().__init__(name)
        self.errors = errors
        self.calls = 0

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        yield Record("events", {"n": 1})


async def test_connectors_run_concurrently(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    connectors = {"a": Barrier("a", first, second), "b": Barrier("b", second, first)}
    async with resources_factory(connectors) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, done.connectors


async def test_a_job_executed_twice_yields_one_archive_without_duplicates(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    connectors = {
        "crm": MemoryConnector(
            "crm", records={"alice": {"contacts": [{"id": i} for i in range(50)]}}
        ),
        "telemetry": SyntheticConnector("telemetry", records=2000),
    }
    async with resources_factory(connectors) as resources:
        pipeline = ExportPipeline(resources)
        commands = Commands(resources)
        job = await commands.request_export(
            Actor("alice", staff=False), subject="alice", formats=["ndjson"]
        )
        # arq delivers at least once: every task of the job runs twice, some at the same time.
        await asyncio.gather(pipeline.resolve(job.id, 1), pipeline.resolve(job.id, 1))
        await asyncio.gather(
            pipeline.run_connector(job.id, "crm", 1),
            pipeline.run_connector(job.id, "crm", 1),
            pipeline.run_connector(job.id, "telemetry", 1),
        )
        await pipeline.run_connector(job.id, "telemetry", 1)
        await asyncio.gather(pipeline.finish(job.id, 1), pipeline.finish(job.id, 1))
        first = await resources.store.get(job.id)
        assert first.status is JobStatus.SUCCEEDED
        worker = await drain(redis, resources)  # the queued duplicates run too, and change nothing
        assert worker.jobs_failed == 0
        again = await resources.store.get(job.id)
        assert again.result is not None and first.result is not None
        assert again.result == first.result  # the same archive: its key, size, CRC-32
        archive = await archive_of(resources, job.id)
        ids = [
            orjson.loads(line)["id"] for line in archive.read("crm/contacts.ndjson").splitlines()
        ]
        assert ids == list(range(50))
        assert len(archive.read("telemetry/telemetry.ndjson").splitlines()) == 2000
        events = [e.type for e in await resources.store.events(job.id)]
        assert events.count("succeeded") == 1


async def test_a_crash_after_staging_restages_without_duplicates(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    connectors = {
        "crm": MemoryConnector(
            "crm", records={"alice": {"contacts": [{"id": i} for i in range(10)]}}
        )
    }
    async with resources_factory(connectors) as resources:
        pipeline = ExportPipeline(resources)
        commands = Commands(resources)
        job = await commands.request_export(
            Actor("alice", staff=False), subject="alice", formats=["json"]
        )
        # A worker staged the output and died before recording it: the staged object
        # exists, the run still says running.
        await pipeline._stage(
            resources.connectors["crm"], job, f"{resources.staging_prefix(job.id)}1/crm.bin"
        )
        await drain(redis, resources)
        archive = await archive_of(resources, job.id)
        assert [r["id"] for r in orjson.loads(archive.read("crm/contacts.json"))] == list(range(10))


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "read from the store"])
async def test_a_small_export_finished_where_it_was_staged_reads_nothing_back(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    kept: bool,
) -> None:
    if not kept:  # as a finish in another process than the runs' reads them
        request.getfixturevalue("finish_reads_the_store")
    connectors = {
        "crm": MemoryConnector(
            "crm", records={"alice": {"contacts": [{"id": i} for i in range(10)]}}
        ),
        "telemetry": SyntheticConnector("telemetry", records=200),
    }
    async with resources_factory(connectors) as resources:
        traffic = watch_traffic(resources.storage.client, monkeypatch)
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", formats=["ndjson"]
        )
        await drain(redis, resources)
        reads = traffic.calls["get_object"]
        archive = await archive_of(resources, job.id)

    assert reads == (0 if kept else 2)  # each connector's staged object, data and previews
    assert [
        orjson.loads(line)["id"] for line in archive.read("crm/contacts.ndjson").splitlines()
    ] == list(range(10))
    assert len(archive.read("telemetry/telemetry.ndjson").splitlines()) == 200
    assert b"contacts" in archive.read("index.html")  # the previews, from the same bytes


def test_a_kept_object_goes_once_and_only_to_a_finish_naming_the_parts_it_was_staged_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = Kept()
    parts = [staged_part()]
    kept.keep("staging/j1/1/crm.bin", parts, b"staged")
    # A run done again elsewhere staged other bytes there, and its parts are the record's.
    assert kept.take("staging/j1/1/crm.bin", [staged_part(sha256="1" * 64)]) is None
    assert kept.take("staging/j1/1/crm.bin", parts) is None  # let go with the refusal
    kept.keep("staging/j1/1/crm.bin", parts, b"staged")
    assert kept.take("staging/j1/1/crm.bin", [p.model_copy() for p in parts]) == b"staged"
    assert kept.take("staging/j1/1/crm.bin", parts) is None  # once

    kept.keep("staging/j2/1/crm.bin", parts, b"a")
    kept.keep("staging/j20/1/crm.bin", parts, b"b")
    kept.forget("staging/j2/")  # the job cleaned up, or canceled
    assert kept.take("staging/j2/1/crm.bin", parts) is None
    assert kept.take("staging/j20/1/crm.bin", parts) == b"b"

    now = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    kept.keep("staging/old/1/crm.bin", parts, b"old")
    now[0] += jobs.export.KEPT_FOR + 1
    assert kept.take("staging/old/1/crm.bin", parts) is None  # its finish came too late
    kept.keep("staging/old/1/crm.bin", parts, b"old")
    now[0] += jobs.export.KEPT_FOR + 1
    kept.keep("staging/new/1/crm.bin", parts, b"new")  # the old one goes as this comes
    assert kept._objects.keys() == {"staging/new/1/crm.bin"}

    monkeypatch.setattr(jobs.export, "HELD_TOTAL", 10)
    kept.keep("staging/a/1/crm.bin", parts, b"x" * 6)
    kept.keep("staging/b/1/crm.bin", parts, b"y" * 6)  # over the budget: the oldest go
    assert list(kept._objects) == ["staging/b/1/crm.bin"]
    assert kept._size == 6


async def test_transient_errors_are_retried_then_succeed(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    flaky = Flaky(
        "processor",
        [TransientError("502 from processor"), RateLimited("slow down", retry_after=0.05)],
    )
    async with resources_factory({"processor": flaky}) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        worker = await drain(redis, resources, FAST_RETRIES)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.SUCCEEDED
        assert flaky.calls == 3 and done.connectors["processor"].attempts == 3
        assert worker.jobs_retried == 2
        retries = [
            e for e in await resources.store.events(job.id) if e.type == "connector.retrying"
        ]
        assert [r.data["error"] for r in retries] == ["502 from processor", "slow down"]
        assert retries[1].data["delay"] == 0.05


async def test_transient_errors_past_the_limit_fail_the_connector(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    flaky = Flaky("processor", [TransientError(f"timeout {n}") for n in range(10)])
    async with resources_factory({"processor": flaky}) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources, FAST_RETRIES)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.FAILED
        run = done.connectors["processor"]
        assert run.status is RunStatus.FAILED and run.error_class == "transient"
        assert run.error == "timeout 3" and flaky.calls == 4


async def test_an_unexpected_exception_fails_only_that_connector(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    class Buggy(MemoryConnector):
        async def export(self, subject: Subject) -> AsyncIterator[Item]:
            yield Record("contacts", {"id": 1})
            raise KeyError("email")

    connectors = {
        "buggy": Buggy("buggy", records={"alice": {"contacts": []}}),
        "crm": MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}}),
    }
    async with resources_factory(connectors) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.FAILED
        assert done.connectors["buggy"].error_class == "internal"
        assert done.connectors["crm"].status is RunStatus.SUCCEEDED
        # A client of its own: the store's has no ListMultipartUploads (jobs/storage/s3model.py).
        s3 = boto3.client("s3", endpoint_url=resources.settings.s3_endpoint_url)
        uploads = s3.list_multipart_uploads(Bucket=resources.storage.bucket)
        assert uploads.get("Uploads", []) == []


async def test_categories_select_connectors_and_datasets(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": 1}], "visits": [{"page": "/"}]}},
        datasets=[
            {"name": "contacts", "category": "contact"},
            {"name": "visits", "category": "usage"},
        ],
    )
    connectors = {"crm": crm, "telemetry": SyntheticConnector("telemetry", records=10)}
    async with resources_factory(connectors) as resources:
        commands = Commands(resources)
        job = await commands.request_export(
            Actor("alice", staff=False), subject="alice", categories=["contact"]
        )
        assert list(job.connectors) == ["crm"]
        await drain(redis, resources)
        archive = await archive_of(resources, job.id)
        assert [n for n in archive.namelist() if n.startswith("crm/")] == ["crm/contacts.json"]
        with pytest.raises(InvalidRequest, match="genetic"):
            await commands.request_export(
                Actor("alice", staff=False), subject="alice", categories=["genetic"]
            )


async def test_an_undeclared_dataset_fails_the_connector(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    class Sloppy(SyntheticConnector):
        async def export(self, subject: Subject) -> AsyncIterator[Item]:
            yield Record("mystery", {"x": 1})

    async with resources_factory({"sloppy": Sloppy("sloppy")}) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert (
            done.connectors["sloppy"].error
            == "connector 'sloppy' yielded undeclared dataset 'mystery'"
        )
