"""No job lost or half-done, whatever fails underneath: each fault injected for real.

Workers run as ``handover worker`` processes on a private Redis (AOF on) and
moto's S3 server behind a proxy that fails on purpose. Tests are bounded in time
and count; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.archive.verify import verify_archive
from jobs.commands import Actor, Commands
from jobs.model import Job, JobStatus
from jobs.queue import connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from tests.conftest import free_port, wait_for_port
from tests.faults import HandoverProcess, RedisServer, S3FaultProxy
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

    async def archive(self, job: Job) -> zipfile.ZipFile:
        assert job.result is not None
        client = boto3.client("s3", endpoint_url=self.s3_endpoint)
        body = await asyncio.to_thread(
            lambda: client.get_object(Bucket=self.bucket, Key=job.result.key)["Body"].read()  # type: ignore[union-attr]
        )
        return zipfile.ZipFile(io.BytesIO(body))


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
        client = boto3.client("s3", endpoint_url=cluster.s3_endpoint)
        for job in jobs:
            done = await cluster.resources.store.get(job.id)
            assert done.status is JobStatus.SUCCEEDED, (job.id, done.error, done.connectors)
            succeeded += 1
            seqs = telemetry_seqs(await cluster.archive(done))
            duplicated["records in an archive"] += len(seqs) - len(set(seqs))
            duplicated["finishes of a job"] += (await cluster.event_types(job.id)).count(
                "succeeded"
            ) - 1
            if seqs != list(range(50)):
                out_of_order.append(job.id)
            path = cluster.tmp / "chaos.zip"
            assert done.result is not None
            await asyncio.to_thread(
                client.download_file, cluster.bucket, done.result.key, str(path)
            )
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
