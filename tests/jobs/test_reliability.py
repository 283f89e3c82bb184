"""No job lost or half-done, whatever fails underneath: each fault injected for real.

Workers run as ``handover worker`` processes on a private Redis (AOF on) and
moto's S3 server behind a proxy that fails on purpose. Tests are bounded in time
and count; every wait polls with a deadline.

Every job reaches an end: staged output that vanishes is staged again, a bounded
number of times; a job that makes no progress is failed after a bounded number of
sweeps; object storage failing is classed ``storage``, transient or permanent. Those
tests run their worker in the test's process (a tiny disk's in its own), fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import random
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from aiohttp import ClientSession
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from connectors.items import Item, Subject
from connectors.testing import MemoryConnector, SyntheticConnector
from jobs.archive.verify import verify_archive
from jobs.commands import Actor, Commands
from jobs.model import Job, JobStatus, RunStatus, iso, utcnow
from jobs.pipeline import MAX_RESTAGES, RetryPolicy, last_progress
from jobs.queue import HEALTH_CHECK_KEY, connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from jobs.storage.local import LocalStore
from jobs.storage.s3 import S3Store
from jobs.worker import STALL_SWEEPS, SWEEP_QUIET, WorkerContext, create_worker, sweep
from tests.conftest import REDIS_URL, free_port, wait_for_port
from tests.faults import HandoverProcess, RedisServer, S3FaultProxy, on_a_tiny_disk
from tests.polling import eventually

JWT = "reliability-secret-" + "r" * 40


@dataclass
class Cluster:
    """A private Redis, S3 behind a fault proxy, and any number of worker processes."""

    tmp: Path
    redis_server: RedisServer
    proxy: S3FaultProxy
    bucket: str
    s3_endpoint: str
    env: dict[str, str]
    resources: Resources
    workers: list[HandoverProcess] = field(default_factory=list)

    @functools.cached_property
    def s3_client(self) -> Any:
        """One client of S3 itself (not the proxy), made once for all of the test's reads."""
        return boto3.client("s3", endpoint_url=self.s3_endpoint)

    def worker(self) -> HandoverProcess:
        process = HandoverProcess(self.env, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(process)
        return process

    def worker_logs(self) -> str:
        return "\n".join(w.log.read_text()[-1500:] for w in self.workers)

    async def wait(self, job_id: str, statuses: set[JobStatus], deadline: float) -> Job:
        """The job once it is in one of ``statuses``; Redis may be down meanwhile."""
        return await eventually(
            lambda: self.resources.store.get(job_id),
            until=lambda job: job.status in statuses,
            timeout=deadline,
            what=f"job {job_id} to be {' or '.join(sorted(s.value for s in statuses))}",
            ignoring=(Exception,),
            diagnose=self.worker_logs,
        )

    async def event_types(self, job_id: str) -> list[str]:
        return [e.type for e in await self.resources.store.events(job_id)]

    async def wait_event(self, job_id: str, event: str, deadline: float) -> None:
        await eventually(
            lambda: self.event_types(job_id),
            until=lambda types: event in types,
            timeout=deadline,
            what=f"a {event} event for job {job_id}",
        )

    async def archive_body(self, job: Job) -> bytes:
        """The job's archive as stored, read straight from S3 (not through the proxy)."""
        assert job.result is not None
        client = self.s3_client
        body: bytes = await asyncio.to_thread(
            lambda: client.get_object(Bucket=self.bucket, Key=job.result.key)["Body"].read()  # type: ignore[union-attr]
        )
        return body

    async def archive(self, job: Job) -> zipfile.ZipFile:
        return zipfile.ZipFile(io.BytesIO(await self.archive_body(job)))


def config(tmp: Path, records: int, record_bytes: int = 200) -> Path:
    path = tmp / "handover.toml"
    path.write_text(
        "[connectors.telemetry]\n"
        f'type = "synthetic"\nrecords = {records}\nrecord_bytes = {record_bytes}\nseed = 11\n'
        "[connectors.crm]\n"
        'type = "memory"\n'
        '[connectors.crm.records.alice]\ncontacts = [{id = 1, email = "alice@example.com"}]\n'
    )
    return path


@pytest.fixture
def cluster_factory(tmp_path: Path, s3_endpoint: str, bucket: str) -> Callable[..., Any]:
    @contextlib.asynccontextmanager
    async def start(
        records: int = 50, fail_ratio: float = 0.0, **env: str
    ) -> AsyncIterator[Cluster]:
        redis_server = RedisServer(tmp_path / "redis")
        redis_server.start()
        proxy = S3FaultProxy(s3_endpoint, fail_ratio=fail_ratio, seed=7)
        await proxy.start()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
        environ.update(
            HANDOVER_CONFIG=str(config(tmp_path, records)),
            HANDOVER_REDIS_URL=redis_server.url,
            HANDOVER_S3_BUCKET=bucket,
            HANDOVER_S3_ENDPOINT_URL=proxy.url,
            HANDOVER_S3_PART_SIZE="5MiB",
            HANDOVER_JWT_SECRET=JWT,
            HANDOVER_DATA_DIR=str(tmp_path / "data"),
            **env,
        )
        settings = Settings.load(environ)
        redis = await connect(redis_server.url)
        cluster: Cluster | None = None
        try:
            async with open_resources(settings, redis=redis) as resources:
                cluster = Cluster(
                    tmp_path, redis_server, proxy, bucket, s3_endpoint, environ, resources
                )
                yield cluster
        finally:
            if cluster is not None:
                for worker in cluster.workers:
                    if worker.alive:
                        worker.kill()
            await redis.aclose()
            await proxy.stop()
            redis_server.stop()

    return start


def telemetry_seqs(archive: zipfile.ZipFile) -> list[int]:
    return [
        orjson.loads(line)["seq"]
        for line in archive.read("telemetry/telemetry.ndjson").splitlines()
    ]


@pytest.mark.slow
async def test_a_killed_worker_s_job_finishes_on_another_within_60_s(
    cluster_factory: Callable[..., Any], capsys: Any
) -> None:
    async with cluster_factory(records=400_000) as cluster:
        doomed = cluster.worker()
        job = await Commands(cluster.resources).request_export(
            Actor("alice", staff=False),
            subject="alice",
            formats=["ndjson"],
            connectors=["telemetry"],
        )
        await cluster.wait_event(job.id, "connector.started", 30)
        doomed.kill()
        killed_at = time.monotonic()
        cluster.worker()
        done = await cluster.wait(job.id, {JobStatus.SUCCEEDED, JobStatus.FAILED}, 90)
        recovered_in = time.monotonic() - killed_at
        assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
        assert recovered_in < 60
        seqs = telemetry_seqs(await cluster.archive(done))
        assert seqs == list(range(400_000))  # every record, none twice
        assert "recovered" in await cluster.event_types(job.id)
        with capsys.disabled():
            print(f"\n[kill] job finished {recovered_in:.1f} s after its worker was SIGKILLed")


async def test_sigterm_lets_work_finish_or_requeues_it(cluster_factory: Callable[..., Any]) -> None:
    async with cluster_factory(records=300_000) as cluster:
        stopping = cluster.worker()
        job = await Commands(cluster.resources).request_export(
            Actor("alice", staff=False),
            subject="alice",
            formats=["ndjson"],
            connectors=["telemetry"],
        )
        await cluster.wait_event(job.id, "connector.started", 30)
        cluster.worker()
        assert await asyncio.to_thread(stopping.terminate) == 0
        done = await cluster.wait(job.id, {JobStatus.SUCCEEDED, JobStatus.FAILED}, 90)
        assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
        assert telemetry_seqs(await cluster.archive(done)) == list(range(300_000))


async def test_redis_outage_gives_503s_then_everything_resumes(
    cluster_factory: Callable[..., Any], tmp_path: Path
) -> None:
    async with cluster_factory(records=100) as cluster:
        worker = cluster.worker()
        port = free_port()
        api = HandoverProcess(cluster.env, tmp_path / "api.log", ("api", "--port", str(port)))
        try:
            await asyncio.to_thread(wait_for_port, port, 30)
            from service.auth import TokenAuthority

            headers = {"Authorization": f"Bearer {TokenAuthority(JWT).issue('alice', ['subject'])}"}
            base = f"http://127.0.0.1:{port}"
            async with ClientSession() as session:
                async with session.post(f"{base}/v1/exports", json={}, headers=headers) as response:
                    first = await response.json()
                await cluster.wait(first["id"], {JobStatus.SUCCEEDED}, 60)

                cluster.redis_server.kill()
                started = time.monotonic()
                async with session.get(
                    f"{base}/v1/jobs/{first['id']}", headers=headers
                ) as response:
                    assert response.status == 503
                    assert response.content_type == "application/problem+json"
                    problem = await response.json()
                assert time.monotonic() - started < 10
                assert "traceback" not in str(problem).lower()
                async with session.get(f"{base}/readyz") as response:
                    assert response.status == 503

                cluster.redis_server.start()
                async with session.post(f"{base}/v1/exports", json={}, headers=headers) as response:
                    assert response.status == 202, await response.text()
                    second = await response.json()
                # A task cut off by the outage is recovered by the sweeper (30 s quiet).
                done = await cluster.wait(
                    second["id"], {JobStatus.SUCCEEDED, JobStatus.FAILED}, 120
                )
                assert done.status is JobStatus.SUCCEEDED
                assert worker.alive
                async with session.get(
                    f"{base}/v1/jobs/{first['id']}", headers=headers
                ) as response:
                    assert response.status == 200  # kept across the restart (AOF)
        finally:
            api.terminate()


async def test_storage_failures_and_an_outage_are_ridden_out(
    cluster_factory: Callable[..., Any],
) -> None:
    async with cluster_factory(records=120_000, fail_ratio=0.2) as cluster:
        cluster.worker()
        jobs = [
            await Commands(cluster.resources).request_export(
                Actor(subject, staff=False), subject=subject, formats=["ndjson"]
            )
            for subject in ("alice", "bob", "carol")
        ]
        await cluster.wait_event(jobs[0].id, "connector.started", 30)
        cluster.proxy.outage = True
        await asyncio.sleep(10)  # the outage itself: ten seconds of every S3 call failing
        cluster.proxy.outage = False
        for job in jobs:
            done = await cluster.wait(job.id, {JobStatus.SUCCEEDED, JobStatus.FAILED}, 120)
            assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
            archive = await cluster.archive(done)
            assert telemetry_seqs(archive) == list(range(120_000))
        assert cluster.proxy.failed > 10
        client = boto3.client("s3", endpoint_url=cluster.s3_endpoint)
        uploads = client.list_multipart_uploads(Bucket=cluster.bucket).get("Uploads", [])
        assert uploads == []


async def inject_faults(cluster: Cluster, rng: random.Random) -> tuple[int, int]:
    """The chaos, one fault every 0.5 to 1.5 s: four workers SIGKILLed (each replaced by a
    new one), then Redis killed and restarted a second later. Returns (kills, restarts)."""
    kills = 0
    for _ in range(4):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        rng.choice([w for w in cluster.workers if w.alive]).kill()
        cluster.worker()
        kills += 1
    await asyncio.sleep(rng.uniform(0.5, 1.5))
    cluster.redis_server.kill()
    await asyncio.sleep(1)
    cluster.redis_server.start()
    return kills, 1


async def ended_exports(cluster: Cluster) -> int:
    counts = (await cluster.resources.store.counts()).get("export", {})
    return counts.get("succeeded", 0) + counts.get("failed", 0)


async def unfinished_story(cluster: Cluster, jobs: list[Job]) -> dict[str, Any]:
    """Each unfinished job's runs (status, queued task, in-progress TTL, queue score),
    its timeline, and every lease: what a chaos failure is diagnosed from."""
    redis = cluster.resources.redis
    story: dict[str, Any] = {"counts": await cluster.resources.store.counts()}
    for job in jobs:
        current = await cluster.resources.store.get(job.id)
        if current.status.terminal:
            continue
        tasks = {}
        for name in current.connectors:
            tid = f"run:{job.id}:{current.generation}:{name}"
            tasks[name] = (
                current.connectors[name].status.value,
                await redis.exists(f"arq:job:{tid}"),
                await redis.ttl(f"arq:in-progress:{tid}"),
                await redis.zscore("handover:queue", tid),
            )
        events = [
            (e.at.isoformat()[11:23], e.type) for e in await cluster.resources.store.events(job.id)
        ]
        story[job.id] = (tasks, events)
    story["leases"] = await redis.zrange("handover:leases", 0, -1, withscores=True)
    return story


@pytest.mark.slow
async def test_chaos_200_exports_while_workers_die_redis_restarts_and_storage_fails(
    cluster_factory: Callable[..., Any], capsys: Any
) -> None:
    rng = random.Random(2024)
    async with cluster_factory(
        records=50, fail_ratio=0.1, HANDOVER_WORKER_CONCURRENCY="20"
    ) as cluster:
        for _ in range(3):
            cluster.worker()
        commands = Commands(cluster.resources)
        jobs = [
            await commands.request_export(
                Actor(f"user-{n}", staff=False), subject=f"user-{n}", formats=["ndjson"]
            )
            for n in range(200)
        ]
        chaos = asyncio.create_task(inject_faults(cluster, rng))

        async def diagnosis() -> dict[str, Any]:
            return {"faults": chaos, **await unfinished_story(cluster, jobs)}

        try:
            await eventually(
                lambda: ended_exports(cluster),
                until=lambda ended: ended >= 200,
                timeout=150,
                what="all 200 exports to end while workers die and Redis restarts",
                ignoring=(RedisConnectionError, RedisTimeoutError),
                diagnose=diagnosis,
            )
            kills, restarts = await chaos
        finally:
            chaos.cancel()
            await asyncio.gather(chaos, return_exceptions=True)
        duplicated: Counter[str] = Counter()
        out_of_order: list[str] = []
        succeeded = verified = 0
        public_key = cluster.resources.signer.public_key
        client = cluster.s3_client
        for job in jobs:
            done = await cluster.resources.store.get(job.id)
            assert done.status is JobStatus.SUCCEEDED, (job.id, done.error, done.connectors)
            succeeded += 1
            body = await cluster.archive_body(done)
            seqs = telemetry_seqs(zipfile.ZipFile(io.BytesIO(body)))
            duplicated["records in an archive"] += len(seqs) - len(set(seqs))
            duplicated["finishes of a job"] += (await cluster.event_types(job.id)).count(
                "succeeded"
            ) - 1
            if seqs != list(range(50)):
                out_of_order.append(job.id)
            path = cluster.tmp / "chaos.zip"
            path.write_bytes(body)
            assert verify_archive(path, [public_key]).ok
            verified += 1
        counted = (await cluster.resources.store.counts())["export"]
        duplicated["successes counted"] = counted.get("succeeded", 0) - succeeded
        archives = f"{cluster.resources.prefix}archives/"
        listed = await asyncio.to_thread(
            lambda: [
                item["Key"]
                for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=cluster.bucket, Prefix=archives
                )
                for item in page.get("Contents", [])
            ]
        )
        per_job = Counter(key.removeprefix(archives).split("/")[0] for key in listed)
        assert set(per_job) == {job.id for job in jobs}
        duplicated["archives of a job"] = sum(count - 1 for count in per_job.values())
        assert all(count == 0 for count in duplicated.values()), duplicated
        assert out_of_order == []  # every archive holds records 0 to 49 once, in order
        with capsys.disabled():
            print(
                f"\n[chaos] 200 exports: {succeeded} succeeded, {verified} verified, "
                f"{duplicated.total()} duplicated (records, finishes, archives); "
                f"{kills} workers SIGKILLed, {restarts} Redis restart, "
                f"{cluster.proxy.failed} of {cluster.proxy.requests} S3 calls failed on purpose"
            )


FAST = RetryPolicy(max_tries=4, base_delay=0.01, max_delay=0.05)
ALICE = {"alice": {"contacts": [{"id": 1, "email": "alice@example.com"}]}}


async def drain(redis: ArqRedis, resources: Resources) -> None:
    """Run a worker until the queue is empty (retries included)."""
    worker = create_worker(
        resources.settings,
        redis=redis,
        resources=resources,
        burst=True,
        poll_delay=0,
        handle_signals=False,
        retry_policy=FAST,
    )
    await worker.main()


@contextlib.asynccontextmanager
async def worker_running(redis: ArqRedis, resources: Resources) -> AsyncIterator[None]:
    """A worker in this process, started (its storage checked) before the block runs."""
    worker = create_worker(
        resources.settings,
        redis=redis,
        resources=resources,
        poll_delay=0.01,
        handle_signals=False,
        retry_policy=FAST,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await eventually(
            lambda: redis.exists(HEALTH_CHECK_KEY),
            until=lambda found: found == 1,
            timeout=20,
            what="the worker to start",
        )
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ended(
    resources: Resources, job_id: str, diagnose: Callable[[], Any] | None = None
) -> Job:
    return await eventually(
        lambda: resources.store.get(job_id),
        until=lambda job: job.status.terminal,
        timeout=30,
        what=f"job {job_id} to end",
        diagnose=diagnose,
    )


async def event_data(resources: Resources, job_id: str, event: str) -> list[dict[str, Any]]:
    return [e.data for e in await resources.store.events(job_id) if e.type == event]


def staged_key(resources: Resources, job: Job, generation: int, connector: str) -> str:
    return f"{resources.staging_prefix(job.id)}{generation}/{connector}.bin"


class Gated(MemoryConnector):
    """Exports once ``gate`` opens: the test acts between the other runs and the finish."""

    def __init__(self, name: str, gate: asyncio.Event, **options: Any) -> None:
        super().__init__(name, **options)
        self.gate = gate

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        await self.gate.wait()
        async for item in super().export(subject):
            yield item


def delete_staging(resources: Resources, job_id: str) -> int:
    """Delete the job's staged objects in the store itself (moto, or the files on disk)."""
    prefix = resources.staging_prefix(job_id)
    storage = resources.storage
    if isinstance(storage, LocalStore):
        staged = [path for path in (storage.root / prefix).rglob("*") if path.is_file()]
        shutil.rmtree(storage.root / prefix)
        return len(staged)
    assert isinstance(storage, S3Store)
    client = boto3.client("s3", endpoint_url=resources.settings.s3_endpoint_url)
    listed = client.list_objects_v2(Bucket=storage.bucket, Prefix=prefix).get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=storage.bucket, Key=item["Key"])
    return len(listed)


@pytest.mark.usefixtures("finish_reads_the_store")
@pytest.mark.parametrize("store", ["s3", "local"])
async def test_staged_output_deleted_before_the_finish_is_staged_again_and_the_archive_whole(
    resources_factory: Callable[..., Any], redis: ArqRedis, tmp_path: Path, store: str
) -> None:
    gate = asyncio.Event()
    connectors = {
        "crm": MemoryConnector("crm", records=ALICE),
        "tickets": Gated("tickets", gate, records={"alice": {"tickets": [{"id": 7}]}}),
    }
    overrides = {"s3_bucket": None} if store == "local" else {}
    async with (
        resources_factory(connectors, **overrides) as resources,
        worker_running(redis, resources),
    ):
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await eventually(
            lambda: resources.store.get(job.id),
            until=lambda job: job.connectors["crm"].status is RunStatus.SUCCEEDED,
            timeout=20,
            what="crm to stage its output",
        )
        # crm's one staged object: its data, then its datasets' previews
        assert await asyncio.to_thread(delete_staging, resources, job.id) == 1
        gate.set()
        done = await ended(resources, job.id)

        assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
        assert await event_data(resources, job.id, "staging.lost") == [
            {
                "connectors": ["crm"],
                "missing": [staged_key(resources, job, 1, "crm")],
                "restage": 1,
                "max_restages": MAX_RESTAGES,
                "generation": 2,
            }
        ]
        assert done.generation == 2
        assert done.connectors["crm"].restages == 1
        assert done.connectors["tickets"].restages == 0
        assert done.result is not None
        path = tmp_path / "archive.zip"
        path.write_bytes(await resources.storage.get(done.result.key))
        assert verify_archive(path, [resources.signer.public_key]).ok
        with zipfile.ZipFile(path) as archive:
            assert b"alice@example.com" in archive.read("crm/contacts.json")
            assert b"7" in archive.read("tickets/tickets.json")


@pytest.mark.usefixtures("finish_reads_the_store")
async def test_staged_output_that_keeps_vanishing_fails_the_job_after_the_restages(
    resources_factory: Callable[..., Any], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    proxy = S3FaultProxy(s3_endpoint, forget=f"/{bucket}/handover/staging/")
    await proxy.start()
    try:
        crm = MemoryConnector("crm", records=ALICE)
        async with resources_factory({"crm": crm}, s3_endpoint_url=proxy.url) as resources:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice"
            )
            await drain(redis, resources)
            done = await resources.store.get(job.id)
            lost = await event_data(resources, job.id, "staging.lost")
            types = [e.type for e in await resources.store.events(job.id)]
    finally:
        await proxy.stop()

    keys = [staged_key(resources, job, n, "crm") for n in range(1, MAX_RESTAGES + 2)]
    assert done.status is JobStatus.FAILED
    assert [(d["restage"], d["missing"]) for d in lost] == [
        (n, [keys[n - 1]]) for n in range(1, MAX_RESTAGES + 1)
    ]
    assert done.error == (
        f"staged output vanished again after {MAX_RESTAGES} restages of crm; "
        f"missing: crm ({keys[-1]})"
    )
    run = done.connectors["crm"]
    assert (run.status, run.error_class, run.restages) == (
        RunStatus.FAILED,
        "storage",
        MAX_RESTAGES,
    )
    assert run.error == f"permanent storage error: staged output {keys[-1]!r} gone"
    assert proxy.forgotten == MAX_RESTAGES + 1  # each staging: one object, previews at its end
    assert "finish.retrying" not in types and types[-1] == "failed"


async def test_a_finish_that_never_gets_through_ends_after_the_sweeps_with_its_last_error(
    settings_factory: Callable[..., Settings], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    proxy = S3FaultProxy(s3_endpoint, unavailable=f"/{bucket}/handover/archives/")
    await proxy.start()
    storage = S3Store(bucket, endpoint_url=proxy.url, part_size=5 * 2**20, max_attempts=1)
    crm = MemoryConnector("crm", records=ALICE)
    try:
        async with open_resources(
            settings_factory(s3_endpoint_url=proxy.url),
            redis=redis,
            storage=storage,
            connectors={"crm": crm},
        ) as resources:
            ctx: dict[str, Any] = {}
            await WorkerContext(resources.settings, resources=resources).on_startup(ctx)
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice"
            )
            await drain(redis, resources)
            stuck = await resources.store.get(job.id)
            assert stuck.status is JobStatus.RUNNING
            moment = utcnow()
            for _ in range(STALL_SWEEPS):
                moment += SWEEP_QUIET
                assert await sweep(ctx, now=moment) == 1
                await drain(redis, resources)
            stall_timeout = resources.settings.stall_timeout
            assert await sweep(ctx, now=last_progress(stuck) + stall_timeout) == 1
            done = await resources.store.get(job.id)
            errors = await event_data(resources, job.id, "finish.error")
    finally:
        await storage.close()
        await proxy.stop()

    assert done.status is JobStatus.FAILED
    assert len(errors) == STALL_SWEEPS + 1  # the first finish, then one per sweep: no more
    assert done.error == (
        f"stalled: no progress since {iso(last_progress(stuck))} though its work was queued "
        f"again {STALL_SWEEPS} times; its finish step never completed; "
        f"last error: {errors[-1]['error']}"
    )
    assert errors[-1]["error"].startswith(
        f"transient storage error: S3 InternalError on '{resources.archive_key(job.id)}'"
    )


async def test_a_missing_bucket_fails_the_run_at_once_as_a_permanent_storage_error(
    resources_factory: Callable[..., Any], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    crm = MemoryConnector("crm", records=ALICE)
    async with resources_factory({"crm": crm}) as resources, worker_running(redis, resources):
        client = boto3.client("s3", endpoint_url=s3_endpoint)
        await asyncio.to_thread(client.delete_bucket, Bucket=bucket)
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        done = await ended(resources, job.id)
        retries = await event_data(resources, job.id, "connector.retrying")

    run = done.connectors["crm"]
    assert (done.status, run.status, run.error_class, run.attempts) == (
        JobStatus.FAILED,
        RunStatus.FAILED,
        "storage",
        1,
    )
    key = staged_key(resources, job, 1, "crm")
    assert run.error is not None
    assert run.error.startswith(f"permanent storage error: S3 NoSuchBucket on {key!r}")
    assert done.error == f"connector(s) failed: crm: {run.error}"
    assert retries == []


async def test_an_unavailable_store_fails_the_run_as_a_transient_storage_error_after_retries(
    settings_factory: Callable[..., Settings], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    proxy = S3FaultProxy(s3_endpoint, unavailable=f"/{bucket}/handover/staging/")
    await proxy.start()
    storage = S3Store(bucket, endpoint_url=proxy.url, part_size=5 * 2**20, max_attempts=1)
    crm = MemoryConnector("crm", records=ALICE)
    try:
        async with open_resources(
            settings_factory(s3_endpoint_url=proxy.url),
            redis=redis,
            storage=storage,
            connectors={"crm": crm},
        ) as resources:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice"
            )
            await drain(redis, resources)
            done = await resources.store.get(job.id)
            retries = await event_data(resources, job.id, "connector.retrying")
    finally:
        await storage.close()
        await proxy.stop()

    run = done.connectors["crm"]
    assert (done.status, run.error_class, run.attempts) == (
        JobStatus.FAILED,
        "storage",
        FAST.max_tries,
    )
    assert run.error is not None
    key = staged_key(resources, job, 1, "crm")
    assert run.error.startswith(f"transient storage error: S3 InternalError on {key!r}")
    assert len(retries) == FAST.max_tries - 1


async def test_a_finish_the_store_denies_fails_the_job_at_once_saying_so(
    resources_factory: Callable[..., Any], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    proxy = S3FaultProxy(s3_endpoint, deny=f"/{bucket}/handover/archives/")
    await proxy.start()
    try:
        crm = MemoryConnector("crm", records=ALICE)
        async with resources_factory({"crm": crm}, s3_endpoint_url=proxy.url) as resources:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice"
            )
            await drain(redis, resources)
            done = await resources.store.get(job.id)
            failed = await event_data(resources, job.id, "failed")
            types = [e.type for e in await resources.store.events(job.id)]
    finally:
        await proxy.stop()

    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.startswith(
        f"could not finish: permanent storage error: S3 AccessDenied on "
        f"'{resources.archive_key(job.id)}'"
    )
    assert [(d["error_class"], f"could not finish: {d['error']}") for d in failed] == [
        ("storage", done.error)
    ]
    assert "finish.retrying" not in types


async def test_a_full_disk_fails_the_run_at_once_as_a_permanent_storage_error(
    resources_factory: Callable[..., Any], redis: ArqRedis, tmp_path: Path
) -> None:
    disk = tmp_path / "tiny-disk"
    disk.mkdir()
    config = tmp_path / "handover.toml"
    config.write_text('[connectors.telemetry]\ntype = "synthetic"\nrecords = 2000\nentropy = 1.0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(
        HANDOVER_CONFIG=str(config),
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_DATA_DIR=str(disk),
        HANDOVER_JWT_SECRET=JWT,
    )
    telemetry = SyntheticConnector("telemetry", records=2000, entropy=1.0)
    async with resources_factory({"telemetry": telemetry}, s3_bucket=None) as resources:
        worker = HandoverProcess(env, tmp_path / "worker.log", prefix=on_a_tiny_disk(disk))
        try:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice", formats=["ndjson"]
            )
            done = await ended(resources, job.id, diagnose=lambda: worker.log.read_text())
        finally:
            assert await asyncio.to_thread(worker.terminate) == 0

    run = done.connectors["telemetry"]
    assert (done.status, run.status, run.error_class, run.attempts) == (
        JobStatus.FAILED,
        RunStatus.FAILED,
        "storage",
        1,
    )
    key = staged_key(resources, job, 1, "telemetry")
    assert run.error == (
        f"permanent storage error: local store cannot write {key!r}: No space left on device"
    )
    assert list(disk.iterdir()) == []  # the tiny disk was the worker's alone, and is gone
