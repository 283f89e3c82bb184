"""Redis without a single point of failure: Handover on Redis Sentinel, through a failover.

A primary, its replica and three Sentinels run here as real ``redis-server``
processes; ``handover api`` and ``handover worker`` run on
``redis+sentinel://…/m/0``. Exports are submitted through the API while the primary
is SIGKILLed: the Sentinels promote the replica, the worker follows it without
exiting, and every export the API accepted ends ``succeeded``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientError, ClientSession
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.model import JobStatus
from jobs.queue import connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from service.auth import TokenAuthority
from tests.conftest import free_port, wait_for_port
from tests.faults import HandoverProcess
from tests.polling import eventually

JWT = "sentinel-test-secret-" + "s" * 40
MASTER = "m"
JOBS = 60
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, OSError)


def redis_server_binary() -> str:
    """``redis-server``; its absence fails the test (``make test`` installs it), never skips."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; `make test` (scripts/ensure-services) installs it"
        )
    return binary


class Node:
    """One ``redis-server`` process: a primary, a replica or a Sentinel, on 127.0.0.1."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        directory.mkdir(parents=True)
        self.log = directory.joinpath("log").open("wb")
        self.process = subprocess.Popen(
            [redis_server_binary(), *args, "--port", str(self.port), "--bind", "127.0.0.1"],
            cwd=directory,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, 20)
        except BaseException:
            self.stop()
            raise

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def kill(self) -> None:
        """Crash it: SIGKILL, as a machine that dies."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()


def data_node(directory: Path, *args: str) -> Node:
    return Node(directory, "--save", "", "--appendonly", "no", "--dir", str(directory), *args)


def sentinel(directory: Path, primary: Node) -> Node:
    """A Sentinel watching ``primary``: down after 1 s unanswered, quorum of two."""
    directory.mkdir(parents=True)
    config = directory / "sentinel.conf"
    config.write_text(
        f"dir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    return Node(directory / "run", str(config), "--sentinel")


class Topology:
    """A primary, a replica of it, and three Sentinels that all know both and each other."""

    def __init__(self, tmp: Path) -> None:
        self.nodes: list[Node] = []
        try:
            self.primary = self._add(data_node(tmp / "primary"))
            self.replica = self._add(
                data_node(tmp / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
            )
            self.sentinels = [
                self._add(sentinel(tmp / f"sentinel-{n}", self.primary)) for n in range(3)
            ]
        except BaseException:
            self.stop()
            raise

    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    async def settled(self) -> bool:
        """Every Sentinel sees the replica in sync and the two other Sentinels."""
        for node in self.sentinels:
            async with node.client() as client:
                replicas = await client.sentinel_slaves(MASTER)  # type: ignore[no-untyped-call]
                peers = await client.sentinel_sentinels(MASTER)  # type: ignore[no-untyped-call]
            in_sync = [r for r in replicas if r.get("master-link-status") == "ok"]
            if not in_sync or len(peers) < 2:
                return False
        return True

    async def master_port(self) -> int:
        """The primary's port, as the first Sentinel that answers names it."""
        for node in self.sentinels:
            async with node.client() as client:
                address = await client.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
            if address:
                return int(address[1])
        raise AssertionError("no Sentinel names a primary")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    nodes = Topology(tmp_path / "redis")
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def resources(
    topology: Topology, tmp_path: Path, s3_endpoint: str, bucket: str
) -> AsyncIterator[tuple[Resources, dict[str, str]]]:
    """The environment ``handover`` processes get, and the test's own view of the jobs."""
    await eventually(
        topology.settled, timeout=20, what="the Sentinels to know the replica and each other"
    )
    config = tmp_path / "handover.toml"
    config.write_text(
        "[connectors.telemetry]\n"
        'type = "synthetic"\nrecords = 20\nrecord_bytes = 100\nseed = 5\n'
        "[connectors.crm]\n"
        'type = "memory"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(
        HANDOVER_CONFIG=str(config),
        HANDOVER_REDIS_URL=topology.url,
        HANDOVER_S3_BUCKET=bucket,
        HANDOVER_S3_ENDPOINT_URL=s3_endpoint,
        HANDOVER_S3_PART_SIZE="5MiB",
        HANDOVER_JWT_SECRET=JWT,
        HANDOVER_DATA_DIR=str(tmp_path / "data"),
        HANDOVER_WORKER_CONCURRENCY="20",
    )
    redis = await connect(topology.url)
    try:
        async with open_resources(Settings.load(env), redis=redis) as opened:
            yield opened, env
    finally:
        await redis.aclose()


class Submitter:
    """Asks for one export per subject through the API, retrying 503s with the same
    ``Idempotency-Key``; remembers which it got and when the API answered 202 again."""

    def __init__(self, session: ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.authority = TokenAuthority(JWT)
        self.accepted: dict[str, str] = {}
        self.accepted_at: list[float] = []
        self.refused: Counter[int] = Counter()

    async def export(self, subject: str) -> None:
        headers = {
            "Authorization": f"Bearer {self.authority.issue(subject, ['subject'])}",
            "Idempotency-Key": f"export-{subject}",
        }

        async def post() -> int:
            async with self.session.post(
                f"{self.base}/v1/exports", json={}, headers=headers
            ) as response:
                if response.status == 202:
                    self.accepted[subject] = (await response.json())["id"]
                    self.accepted_at.append(time.monotonic())
                else:
                    self.refused[response.status] += 1
                return response.status

        await eventually(
            post,
            until=lambda status: status == 202,
            timeout=30,
            interval=0.1,
            what=f"the API to accept an export for {subject}",
            ignoring=(ClientError,),
            diagnose=lambda: f"refusals so far, by status: {dict(self.refused)}",
        )

    async def keep_submitting(self, count: int) -> None:
        """The load: ``count`` exports, a new one every 0.1 s, four at most in flight, so
        that they keep arriving before, during and after a failover."""
        slots = asyncio.Semaphore(4)

        async def one(subject: str) -> None:
            async with slots:
                await self.export(subject)

        pending = []
        for n in range(count):
            pending.append(asyncio.create_task(one(f"user-{n}")))
            await asyncio.sleep(0.1)  # the load's pace, not a wait for something to happen
        await asyncio.gather(*pending)


async def test_a_failover_loses_no_job_and_the_worker_follows_the_new_primary(
    topology: Topology, resources: tuple[Resources, dict[str, str]], tmp_path: Path, capsys: Any
) -> None:
    opened, env = resources
    worker = HandoverProcess(env, tmp_path / "worker.log")
    port = free_port()
    api = HandoverProcess(env, tmp_path / "api.log", ("api", "--port", str(port)))
    try:
        await asyncio.to_thread(wait_for_port, port, 30)

        def logs() -> str:
            return "\n".join(p.log.read_text()[-3000:] for p in (worker, api))

        async def succeeded() -> int:
            counts = (await opened.store.counts()).get("export", {})
            return counts.get("succeeded", 0)

        async with ClientSession() as session:
            submitter = Submitter(session, f"http://127.0.0.1:{port}")
            submitting = asyncio.create_task(submitter.keep_submitting(JOBS))
            await eventually(
                succeeded,
                until=lambda n: n >= 5,
                timeout=30,
                what="exports under way",
                diagnose=logs,
            )
            old_port = topology.primary.port
            killed_at = time.monotonic()
            killed_wall = datetime.now(UTC)
            topology.primary.kill()
            await eventually(
                topology.master_port,
                until=lambda p: p == topology.replica.port,
                timeout=20,
                what="the Sentinels to promote the replica",
                ignoring=REDIS_AWAY,
            )
            promoted_in = time.monotonic() - killed_at
            await asyncio.wait_for(submitting, 60)

        assert len(submitter.accepted) == JOBS
        jobs = list(submitter.accepted.values())

        async def statuses() -> list[JobStatus]:
            return [(await opened.store.get(job_id)).status for job_id in jobs]

        final = await eventually(
            statuses,
            until=lambda found: all(s.terminal for s in found),
            timeout=60,
            what=f"all {JOBS} exports to end after the failover",
            ignoring=REDIS_AWAY,
            diagnose=logs,
        )
        assert final == [JobStatus.SUCCEEDED] * JOBS, logs()
        assert worker.alive, logs()
        assert await topology.master_port() != old_port
        finished = sorted([(await opened.store.get(job_id)).updated_at for job_id in jobs])
        paused = min(at for at in finished if at > killed_wall) - killed_wall
        refusing = min(at for at in submitter.accepted_at if at > killed_at) - killed_at
        counts = (await opened.store.counts())["export"]
        assert counts == {"succeeded": JOBS}, counts
        with capsys.disabled():
            print(
                f"\n[sentinel] primary SIGKILLed: replica promoted in {promoted_in:.1f} s; "
                f"first export finished {paused.total_seconds():.1f} s after the kill; "
                f"the API accepted exports again after {refusing:.1f} s (refusals retried, by "
                f"status: {dict(submitter.refused)}); {JOBS} of {JOBS} exports succeeded; "
                "worker alive"
            )
    finally:
        for process in (worker, api):
            if process.alive:
                process.kill()
