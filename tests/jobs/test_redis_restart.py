"""Workers ride out Redis restarts under load: ``handover worker`` processes keep running.

arq 0.28's polling loop lets a redis-py ``WatchError`` ("A ConnectionError occurred
on while watching…") or a ``ConnectionError`` raised while it claims a job escape, and
the worker process exits. Here two loaded ``handover worker`` processes work through
exports on a private Redis (AOF on, as in production) that is restarted under them,
killed and started again on the same port and directory: both workers must still be
running after, and every export must succeed.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.commands import Actor, Commands
from jobs.model import JobStatus
from jobs.queue import connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from tests.faults import HandoverProcess, RedisServer
from tests.polling import eventually

JOBS = 120
RESTARTS = 3
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, OSError)


def worker_env(tmp: Path, redis_url: str, s3_endpoint: str, bucket: str) -> dict[str, str]:
    """A ``handover worker``'s environment: the private Redis, moto's S3, test connectors."""
    config = tmp / "handover.toml"
    config.write_text(
        "[connectors.telemetry]\n"
        'type = "synthetic"\nrecords = 20\nrecord_bytes = 100\nseed = 3\n'
        "[connectors.crm]\n"
        'type = "memory"\n'
        '[connectors.crm.records.user-0]\ncontacts = [{id = 1, email = "u0@example.com"}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(
        HANDOVER_CONFIG=str(config),
        HANDOVER_REDIS_URL=redis_url,
        HANDOVER_S3_BUCKET=bucket,
        HANDOVER_S3_ENDPOINT_URL=s3_endpoint,
        HANDOVER_S3_PART_SIZE="5MiB",
        HANDOVER_JWT_SECRET="redis-restart-secret-" + "x" * 40,
        HANDOVER_DATA_DIR=str(tmp / "data"),
        HANDOVER_WORKER_CONCURRENCY="20",
    )
    return env


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def ended(resources: Resources) -> dict[str, int]:
    counts = (await resources.store.counts()).get("export", {})
    return {status: counts.get(status, 0) for status in ("succeeded", "failed", "canceled")}


async def under_way(resources: Resources, succeeded: int) -> bool:
    """Whether more than ``succeeded`` exports succeeded, and some are still to do."""
    counts = await ended(resources)
    return succeeded < counts["succeeded"] < JOBS


async def test_two_workers_ride_out_redis_restarts_under_load(
    redis_server: RedisServer, tmp_path: Path, s3_endpoint: str, bucket: str, capsys: Any
) -> None:
    env = worker_env(tmp_path, redis_server.url, s3_endpoint, bucket)
    workers = [HandoverProcess(env, tmp_path / f"worker-{n}.log") for n in range(2)]
    redis = await connect(redis_server.url)
    try:
        async with open_resources(Settings.load(env), redis=redis) as resources:
            commands = Commands(resources)
            jobs = [
                await commands.request_export(
                    Actor(f"user-{n}", staff=False), subject=f"user-{n}", formats=["ndjson"]
                )
                for n in range(JOBS)
            ]

            def logs() -> str:
                return "\n".join(w.log.read_text()[-3000:] for w in workers)

            outages: list[float] = []
            for restart in range(RESTARTS):
                # Under load: restart while work is under way, not before or after it.
                await eventually(
                    partial(under_way, resources, restart * 10 + 5),
                    timeout=60,
                    what=f"exports under way before restart {restart + 1}",
                    ignoring=REDIS_AWAY,
                    diagnose=logs,
                )
                down = time.monotonic()
                if restart % 2:
                    redis_server.stop()
                else:
                    redis_server.kill()
                redis_server.start()
                outages.append(time.monotonic() - down)
            started = time.monotonic()
            counts = await eventually(
                lambda: ended(resources),
                until=lambda counts: sum(counts.values()) >= JOBS,
                timeout=120,
                what=f"all {JOBS} exports to end after {RESTARTS} Redis restarts",
                ignoring=REDIS_AWAY,
                diagnose=logs,
            )
            for job in jobs:
                done = await resources.store.get(job.id)
                assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors, logs())
            assert counts == {"succeeded": JOBS, "failed": 0, "canceled": 0}
            exits = [w.popen.poll() for w in workers]
            assert exits == [None, None], (exits, logs())
            with capsys.disabled():
                print(
                    f"\n[redis restart] {JOBS} exports, {RESTARTS} restarts "
                    f"(down {max(outages):.2f} s at most): all succeeded "
                    f"{time.monotonic() - started:.1f} s after the last; both workers alive"
                )
    finally:
        await redis.aclose()
        for worker in workers:
            if worker.alive:
                worker.kill()
