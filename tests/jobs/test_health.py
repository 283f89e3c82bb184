"""Readiness: Redis, the workers and object storage, each "ok" or what is wrong.

A worker stays ready while its event loop is busy: its heartbeat outlives a stall.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs import health
from jobs.embedded import redis_server
from jobs.epoch import Epochs
from jobs.health import check_readiness
from jobs.queue import HEALTH_CHECK_KEY, connect
from jobs.resources import Resources
from jobs.storage.local import LocalStore
from jobs.worker import HEALTH_KEY_TTL, create_worker
from tests.conftest import free_port
from tests.polling import eventually, eventually_sync

NO_WORKER = f"no worker has reported in the last {HEALTH_KEY_TTL.seconds} s"
#: How a managed Redis service turns ``CONFIG`` off.
NO_CONFIG = ("--appendonly", "no", "--rename-command", "CONFIG", "")


@pytest.fixture
async def resources(resources_factory: Callable[..., Any]) -> AsyncIterator[Resources]:
    async with resources_factory() as opened:
        await Epochs(opened.redis, opened.store.ns).begin()  # as each process does at start
        yield opened


class EvictingRedis:
    """A Redis that answers but is configured to evict keys under memory pressure."""

    async def ping(self) -> bool:
        return True

    async def config_get(self, name: str) -> dict[str, str]:
        return {name: "allkeys-lru"}

    async def get(self, key: str) -> bytes | None:
        return b"worker info" if key == HEALTH_CHECK_KEY else None


async def test_ready_when_redis_answers_a_worker_reported_and_storage_works(
    resources: Resources, redis: ArqRedis
) -> None:
    await redis.set(HEALTH_CHECK_KEY, "j_complete=0 j_failed=0", ex=31)
    readiness = await check_readiness(resources)
    assert readiness.checks == {"redis": "ok", "worker": "ok", "epoch": "ok", "storage": "ok"}
    assert readiness.ready


async def test_not_ready_while_no_worker_has_reported(resources: Resources) -> None:
    readiness = await check_readiness(resources)
    assert readiness.checks == {"redis": "ok", "worker": NO_WORKER, "epoch": "ok", "storage": "ok"}
    assert not readiness.ready


async def test_an_evicting_redis_is_not_ready(resources: Resources) -> None:
    evicting = dataclasses.replace(resources, redis=EvictingRedis())  # type: ignore[arg-type]
    readiness = await check_readiness(evicting)
    assert readiness.checks["redis"] == "maxmemory-policy is allkeys-lru, must be noeviction"
    assert readiness.checks["worker"] == "ok"
    assert not readiness.ready


async def test_an_unreachable_redis_says_why_and_skips_the_worker_check(
    resources: Resources,
) -> None:
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    unreachable = dataclasses.replace(resources, redis=nobody)
    try:
        readiness = await check_readiness(unreachable)
    finally:
        await nobody.aclose()
    assert readiness.checks["redis"].startswith("unreachable: ConnectionError: ")
    assert list(readiness.checks) == ["redis", "storage"]
    assert not readiness.ready


async def test_unusable_storage_says_why(resources: Resources, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    broken = LocalStore(blocker / "objects", link_secret=b"s" * 32, base_url="http://x")
    readiness = await check_readiness(dataclasses.replace(resources, storage=broken))
    assert readiness.checks["storage"].startswith("unusable: cannot write under ")
    assert not readiness.ready


@pytest.fixture
def redis_without_config() -> Iterator[str]:
    """A real Redis with ``CONFIG`` disabled, as managed services ship it; its URL."""
    port = free_port()
    server = subprocess.Popen(
        [str(redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *NO_CONFIG],
        stdout=subprocess.DEVNULL,
    )
    try:
        with SyncRedis(port=port) as client:
            eventually_sync(
                client.ping,
                timeout=10,
                what="the Redis without CONFIG to answer",
                ignoring=(RedisConnectionError,),
            )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_redis_that_refuses_config_is_still_ready_and_says_so_once(
    resources: Resources, redis_without_config: str, caplog: pytest.LogCaptureFixture
) -> None:
    health._policy_unknown.cache_clear()  # said once per process: this test's process
    managed = await connect(redis_without_config)
    try:
        await managed.set(HEALTH_CHECK_KEY, "j_complete=0", ex=31)
        with caplog.at_level(logging.WARNING, logger="handover.health"):
            for _ in range(2):
                readiness = await check_readiness(dataclasses.replace(resources, redis=managed))
                assert readiness.checks["redis"] == "ok", readiness.checks
                assert readiness.checks["worker"] == "ok", readiness.checks
    finally:
        await managed.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.name == "handover.health"]
    assert len(warnings) == 1, warnings
    assert "cannot check that maxmemory-policy is noeviction" in warnings[0]


async def test_a_worker_whose_event_loop_is_busy_for_a_while_stays_ready(
    resources: Resources, redis: ArqRedis
) -> None:
    """Every slot running an export keeps the event loop busy; the worker must not drop
    out of readiness for it (a stall of 7 s here, longer than a 5 s interval plus 1 s)."""
    worker = create_worker(
        resources.settings, redis=redis, resources=resources, handle_signals=False, poll_delay=0.01
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await eventually(
            lambda: redis.exists(HEALTH_CHECK_KEY),
            until=lambda found: found == 1,
            timeout=20,
            what="the worker to report in",
        )
        time.sleep(7)  # noqa: ASYNC251 -- the point: nothing on this event loop runs meanwhile
        assert (await check_readiness(resources)).checks["worker"] == "ok"
    finally:
        await worker.stop(task, grace=0)  # on_shutdown: the heartbeat stops
