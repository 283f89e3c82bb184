"""Staged objects at the finish and after it: objects staged before previews followed the
data, objects cut short or misaligned, and deletions S3 refuses key by key.

Real moto S3 (behind :class:`tests.faults.S3FaultProxy` where S3 must refuse a delete)
and the real local store; the objects are damaged in the store itself, between the
runs and the finish, and the finish reads them there (as one in another process than
the runs' does).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import boto3
import orjson
import pytest
from aiohttp import web
from arq.connections import ArqRedis

import jobs.export
from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.export import ExportPipeline, old_preview_key
from jobs.model import Job, JobStatus, RunStatus
from jobs.resources import Resources
from jobs.storage.base import StorageError
from jobs.storage.local import LocalStore
from jobs.storage.s3 import S3Store
from tests.faults import S3FaultProxy
from tests.jobs.test_reliability import (
    ALICE,
    Gated,
    ended,
    event_data,
    staged_key,
    worker_running,
)
from tests.polling import eventually

# The objects are damaged where the finish reads them: in the store, not in the memory of
# the process that staged them (jobs.export.Kept).
pytestmark = pytest.mark.usefixtures("finish_reads_the_store")

DELETE_REFUSED = """<?xml version="1.0" encoding="UTF-8"?>
<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{}</DeleteResult>"""
KEY_REFUSED = (
    "<Error><Key>{}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
)


class RefusingDeletes(S3FaultProxy):
    """Forwards to moto, but answers a ``DeleteObjects`` naming a key under ``refuse`` as
    S3 does when it may not delete some keys: the others deleted, 200, each refused key
    in ``Errors``."""

    def __init__(self, upstream: str, *, refuse: str) -> None:
        super().__init__(upstream)
        self.refuse = refuse
        self.refused: list[str] = []
        self.deletes = 0

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and "delete" in request.query:
            self.deletes += 1
            keys = re.findall(r"<Key>(.*?)</Key>", (await request.read()).decode())
            refused = [key for key in keys if key.startswith(self.refuse)]
            if refused:
                self.refused += refused
                others = [key for key in keys if key not in refused]
                if others:
                    bucket = request.path.strip("/").split("/")[0]
                    client = boto3.client("s3", endpoint_url=self.upstream)
                    await asyncio.to_thread(
                        client.delete_objects,
                        Bucket=bucket,
                        Delete={"Objects": [{"Key": key} for key in others], "Quiet": True},
                    )
                body = DELETE_REFUSED.format("".join(KEY_REFUSED.format(k) for k in refused))
                return web.Response(status=200, body=body, content_type="application/xml")
        return await super()._forward(request)


def moto(resources: Resources) -> tuple[Any, str]:
    """A client of the S3 server itself (not through Handover's store), and the bucket."""
    storage = resources.storage
    assert isinstance(storage, S3Store)
    return boto3.client("s3", endpoint_url=resources.settings.s3_endpoint_url), storage.bucket


def raw_get(resources: Resources, key: str) -> bytes:
    """The object's bytes as the store itself holds them (moto, or the file on disk)."""
    storage = resources.storage
    if isinstance(storage, LocalStore):
        return (storage.root / key).read_bytes()
    client, bucket = moto(resources)
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def raw_put(resources: Resources, key: str, data: bytes) -> None:
    """Replace the object in the store itself."""
    storage = resources.storage
    if isinstance(storage, LocalStore):
        path = storage.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    client, bucket = moto(resources)
    client.put_object(Bucket=bucket, Key=key, Body=data)


def raw_exists(resources: Resources, key: str) -> bool:
    storage = resources.storage
    if isinstance(storage, LocalStore):
        return (storage.root / key).exists()
    client, bucket = moto(resources)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    return any(item["Key"] == key for item in listed)


def data_end(job: Job, connector: str) -> int:
    parts = job.connectors[connector].parts
    return max(start + length for part in parts for start, length in part.chunks)


async def export_with_staged(resources: Resources, change: Callable[[Resources, Job], None]) -> Job:
    """An export of crm and tickets: ``change`` is applied once crm has staged, before
    tickets runs (and so before the finish); returns the ended job."""
    gate = resources.connectors["tickets"].gate  # type: ignore[attr-defined]
    job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
    staged = await eventually(
        lambda: resources.store.get(job.id),
        until=lambda job: job.connectors["crm"].status is RunStatus.SUCCEEDED,
        timeout=20,
        what="crm to stage its output",
    )
    await asyncio.to_thread(change, resources, staged)
    gate.set()
    return await ended(resources, job.id)


def connectors() -> dict[str, Any]:
    return {
        "crm": MemoryConnector("crm", records=ALICE),
        "tickets": Gated("tickets", asyncio.Event(), records={"alice": {"tickets": [{"id": 7}]}}),
    }


def overrides(store: str) -> dict[str, Any]:
    return {"s3_bucket": None} if store == "local" else {}


async def archive_member(resources: Resources, job: Job, name: str) -> bytes:
    assert job.result is not None
    with zipfile.ZipFile(io.BytesIO(await resources.storage.get(job.result.key))) as archive:
        return archive.read(name)


@pytest.mark.parametrize("store", ["s3", "local"])
async def test_an_object_staged_before_previews_followed_the_data_keeps_its_previews(
    resources_factory: Callable[..., Any], redis: ArqRedis, store: str
) -> None:
    def old_layout(resources: Resources, job: Job) -> None:
        key = staged_key(resources, job, 1, "crm")
        whole = raw_get(resources, key)
        end = data_end(job, "crm")
        assert orjson.loads(whole[end:])["contacts"]  # the previews, after the data
        raw_put(resources, key, whole[:end])
        raw_put(resources, old_preview_key(key), whole[end:])

    async with (
        resources_factory(connectors(), **overrides(store)) as resources,
        worker_running(redis, resources),
    ):
        done = await export_with_staged(resources, old_layout)
        index = await archive_member(resources, done, "index.html")

        assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
        assert done.generation == 1
        # crm's preview, read from the old key: its one contact's address, shown
        assert b"alice@example.com" in index
        key = staged_key(resources, done, 1, "crm")
        # the known keys deleted (after the job ended), the old previews' object among them
        keys = (key, old_preview_key(key))

        async def left() -> list[str]:
            return [k for k in keys if await asyncio.to_thread(raw_exists, resources, k)]

        await eventually(left, until=lambda found: not found, timeout=20, what="deletion")


@pytest.mark.parametrize("store", ["s3", "local"])
async def test_a_staged_object_whose_previews_do_not_parse_is_staged_again(
    resources_factory: Callable[..., Any], redis: ArqRedis, store: str
) -> None:
    def misaligned(resources: Resources, job: Job) -> None:
        key = staged_key(resources, job, 1, "crm")
        raw_put(resources, key, raw_get(resources, key) + b"\x00garbage")

    async with (
        resources_factory(connectors(), **overrides(store)) as resources,
        worker_running(redis, resources),
    ):
        done = await export_with_staged(resources, misaligned)
        lost = await event_data(resources, done.id, "staging.lost")
        contacts = await archive_member(resources, done, "crm/contacts.json")

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    assert [d["missing"] for d in lost] == [[staged_key(resources, done, 1, "crm")]]
    assert done.generation == 2
    assert b"alice@example.com" in contacts


@pytest.mark.parametrize("store", ["s3", "local"])
@pytest.mark.parametrize("cut", ["inside the data", "before the data"])
async def test_a_staged_object_cut_short_is_staged_again(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    cut: str,
) -> None:
    # None held whole: the archive reads (or S3 copies) the ranges from the store.
    monkeypatch.setattr(jobs.export, "HELD_OBJECT", 0)

    def cut_short(resources: Resources, job: Job) -> None:
        key = staged_key(resources, job, 1, "crm")
        whole = raw_get(resources, key)
        raw_put(resources, key, whole[: data_end(job, "crm") // 2] if cut.startswith("in") else b"")

    async with (
        resources_factory(connectors(), **overrides(store)) as resources,
        worker_running(redis, resources),
    ):
        done = await export_with_staged(resources, cut_short)
        lost = await event_data(resources, done.id, "staging.lost")
        types = [e.type for e in await resources.store.events(done.id)]
        contacts = await archive_member(resources, done, "crm/contacts.json")

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors, types)
    assert [d["missing"] for d in lost] == [[staged_key(resources, done, 1, "crm")]]
    assert "finish.retrying" not in types
    assert b"alice@example.com" in contacts


@pytest.mark.parametrize("store", ["s3", "local"])
async def test_a_small_staged_object_cut_short_is_staged_again(
    resources_factory: Callable[..., Any], redis: ArqRedis, store: str
) -> None:
    def cut_short(resources: Resources, job: Job) -> None:
        key = staged_key(resources, job, 1, "crm")
        raw_put(resources, key, raw_get(resources, key)[: data_end(job, "crm") - 1])

    async with (
        resources_factory(connectors(), **overrides(store)) as resources,
        worker_running(redis, resources),
    ):
        done = await export_with_staged(resources, cut_short)
        lost = await event_data(resources, done.id, "staging.lost")

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    assert [d["missing"] for d in lost] == [[staged_key(resources, done, 1, "crm")]]


async def test_a_cleanup_s3_refuses_leaves_the_objects_but_the_job_ended(
    resources_factory: Callable[..., Any], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    proxy = RefusingDeletes(s3_endpoint, refuse="handover/staging/")
    await proxy.start()
    try:
        async with (
            resources_factory(connectors(), s3_endpoint_url=proxy.url) as resources,
            worker_running(redis, resources),
        ):
            done = await export_with_staged(resources, lambda resources, job: None)
            failed = await eventually(
                lambda: event_data(resources, done.id, "cleanup.failed"),
                until=bool,
                timeout=20,
                what="the cleanup's failure to be recorded",
            )
            types = [e.type for e in await resources.store.events(done.id)]
            holder = await resources.redis.hget(
                resources.store._gate_key("alice"),
                "holder",
            )
            key = staged_key(resources, done, 1, "crm")
            left = await asyncio.to_thread(raw_exists, resources, key)
    finally:
        await proxy.stop()

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    assert key in proxy.refused
    assert failed[0]["error_class"] == "storage"
    assert "AccessDenied" in failed[0]["error"]
    # ended: the subject's gate released, and the finish not retried as if it had failed
    assert holder is None
    assert "finish.retrying" not in types
    # left behind, for the records purge to delete with the job
    assert left


@contextlib.asynccontextmanager
async def refusing_store(
    s3_endpoint: str, bucket: str, refuse: str, keys: Sequence[str]
) -> AsyncIterator[tuple[S3Store, RefusingDeletes]]:
    """A store on the bucket through :class:`RefusingDeletes`, ``keys`` put in it."""
    proxy = RefusingDeletes(s3_endpoint, refuse=refuse)
    await proxy.start()
    try:
        store = S3Store(bucket, endpoint_url=proxy.url)
        for key in keys:
            await store.put(key, b"x")
        yield store, proxy
    finally:
        await proxy.stop()


async def test_a_listed_delete_s3_refuses_a_key_of_is_not_counted_as_done(
    s3_endpoint: str, bucket: str
) -> None:
    refusing = refusing_store(s3_endpoint, bucket, "area/b", ["area/a", "area/b"])
    async with refusing as (store, proxy):
        with pytest.raises(StorageError, match="AccessDenied") as raised:
            await store.delete_prefix("area/")
        assert raised.value.transient
        with pytest.raises(StorageError, match="AccessDenied"):
            await store.delete_prefix("area/", holding=["area/a", "area/b"])
        left = [item.key async for item in store.list_objects("area/")]

    assert left == ["area/b"]  # the refused key; S3 deleted the other
    assert proxy.refused == ["area/b", "area/b"]


async def test_s3_deletions_asked_together_fail_only_the_caller_whose_key_failed(
    s3_endpoint: str, bucket: str
) -> None:
    keys = ["area/a/1", "area/b/1", "area/c/1"]
    async with refusing_store(s3_endpoint, bucket, "area/b/", keys) as (store, proxy):
        answers = await asyncio.gather(
            *(store.delete_prefix(f"area/{name}/", holding=[f"area/{name}/1"]) for name in "abc"),
            return_exceptions=True,
        )
        left = [item.key async for item in store.list_objects("area/")]

    assert answers[0] == 1 and answers[2] == 1
    assert isinstance(answers[1], StorageError)
    assert "AccessDenied deleting 'area/b/1' (1 of 1 key(s) not deleted)" in str(answers[1])
    assert left == ["area/b/1"]
    assert proxy.deletes == 1  # the three callers' keys went in one request


async def test_what_the_finish_holds_in_memory_counts_the_previews_too(
    resources_factory: Callable[..., Any], redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    crm = MemoryConnector("crm", records=ALICE)
    async with (
        resources_factory({"crm": crm, "tickets": Gated("tickets", gate)}) as resources,
        worker_running(redis, resources),
    ):
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        staged = await eventually(
            lambda: resources.store.get(job.id),
            until=lambda job: job.connectors["crm"].status is RunStatus.SUCCEEDED,
            timeout=20,
            what="crm to stage its output",
        )
        key = staged_key(resources, staged, 1, "crm")
        whole = await resources.storage.get(key)
        end = data_end(staged, "crm")
        assert len(whole) > end  # its previews follow its data
        pipeline = ExportPipeline(resources)

        # Room for its data, not for its previews: read whole, but not held.
        monkeypatch.setattr(jobs.export, "HELD_TOTAL", end)
        previews, held = await pipeline._staged(staged)
        assert held == {}
        assert ("crm", "contacts") in previews

        monkeypatch.setattr(jobs.export, "HELD_TOTAL", len(whole))
        previews, held = await pipeline._staged(staged)
        assert held == {key: whole}
        assert ("crm", "contacts") in previews
        gate.set()
        await ended(resources, job.id)
