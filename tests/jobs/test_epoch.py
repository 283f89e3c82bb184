"""Redis that lost its data says so: the epoch marker, its watchers, readiness and the keys.

An API with its worker in one process (as ``handover serve`` runs them) and a
``handover worker`` process each see the test Redis database flushed under them: each
logs one ERROR line naming the lost epoch,
``/readyz`` answers 503 with the ``epoch`` check naming it until an operator runs
``handover epoch acknowledge``, the worker's heartbeat is back within seconds and the
signing key is published again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.archive.signing import Signer
from jobs.epoch import WATCH_INTERVAL, Epoch, Epochs, EpochWatch
from jobs.keyring import KeyRing
from jobs.queue import HEALTH_CHECK_KEY
from jobs.resources import NAMESPACE
from jobs.settings import Secret
from jobs.worker import WorkerContext, create_worker
from service.app import create_app
from service.auth import TokenAuthority
from tests.conftest import REDIS_URL, free_port
from tests.faults import HandoverProcess
from tests.polling import eventually
from tests.service.conftest import JWT_SECRET, Api, ApiFactory
from tests.service.conftest import api_factory as api_factory  # the API fixture, shared

LOST = "Redis lost its data: epoch "


def handover(*args: str, redis_url: str = REDIS_URL) -> subprocess.CompletedProcess[str]:
    """The ``handover`` command line, as an operator runs it, on the test Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env["HANDOVER_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shared_key(tmp_path: Path) -> tuple[Path, Signer]:
    """A signing key file, as docker-compose makes one for the API and the workers."""
    path = tmp_path / "keys" / "signing-key.pem"
    return path, Signer.from_file(path, create=True)


def loss_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "handover.epoch" and record.levelno == logging.ERROR
    ]


async def readiness(api: Api) -> tuple[int, dict[str, str]]:
    status, _, body = await api.request("GET", "/readyz", sub=None)
    checks: dict[str, str] = body["checks"]
    return status, checks


async def published(api: Api) -> list[str]:
    status, _, body = await api.request("GET", "/v1/keys", sub=None)
    assert status == 200, body
    return [key["kid"] for key in body["keys"]]


async def marker(redis: ArqRedis) -> Epoch | None:
    return await Epochs(redis, NAMESPACE).current()


@asynccontextmanager
async def serve(resources_factory: Callable[..., Any], **overrides: Any) -> AsyncIterator[Api]:
    """The API with a worker inside it, as ``handover serve`` runs them, over real HTTP."""
    async with (
        resources_factory(
            {"crm": MemoryConnector("crm")}, jwt_secret=Secret(JWT_SECRET), **overrides
        ) as resources,
        ClientSession() as session,
    ):
        server = TestServer(create_app(resources.settings, resources=resources, run_worker=True))
        await server.start_server()
        try:
            yield Api(
                base=str(server.make_url("")).rstrip("/"),
                session=session,
                resources=resources,
                authority=TokenAuthority(JWT_SECRET),
            )
        finally:
            await server.close()


async def test_a_flush_under_a_running_api_and_worker_is_logged_once_and_fails_readiness(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_file, signer = shared_key(tmp_path)
    async with serve(resources_factory, signing_key_file=key_file) as api:
        await eventually(
            lambda: readiness(api),
            until=lambda answer: answer[0] == 200,
            timeout=10,
            what="the API to be ready",
        )
        before = await marker(redis)
        assert before is not None

        await redis.flushdb()
        flushed = time.monotonic()
        status, checks = await readiness(api)  # at once: the marker is gone
        assert status == 503
        assert checks["epoch"].startswith("Redis lost its data: "), checks
        status, checks = await eventually(
            lambda: readiness(api),
            until=lambda answer: answer[1].get("epoch", "").startswith(LOST),
            timeout=15,
            what="/readyz to say that Redis lost its data",
        )
        assert status == 503
        assert checks["epoch"].startswith(f"{LOST}{before.id} (begun ")
        assert checks["epoch"].endswith("acknowledge with `handover epoch acknowledge`")
        assert checks["redis"] == "ok"
        # The worker writes its heartbeat again within seconds, and the API its signing key.
        await eventually(
            lambda: readiness(api),
            until=lambda answer: answer[1]["worker"] == "ok",
            timeout=10,
            what="the worker's heartbeat to be back",
        )
        assert time.monotonic() - flushed < 12
        assert await published(api) == [signer.key_id]
        lines = loss_lines(caplog)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{LOST}{before.id} (begun ")
        assert "jobs created before " in lines[0]
        assert "`handover epoch acknowledge`" in lines[0]
        after = await marker(redis)
        assert after is not None and after.lost is not None
        assert after.lost.epoch == before.id and after.id != before.id

        shown = await asyncio.to_thread(handover, "epoch", "show")
        assert shown.returncode == 1, shown.stderr
        assert f"{LOST}{before.id}" in shown.stdout
        assert "not acknowledged" in shown.stdout
        acknowledged = await asyncio.to_thread(handover, "epoch", "acknowledge")
        assert acknowledged.returncode == 0, acknowledged.stderr
        assert f"epoch {after.id}" in acknowledged.stdout
        assert "acknowledged " in acknowledged.stdout
        status, checks = await readiness(api)
        assert (status, checks["epoch"]) == (200, "ok"), checks
        assert len(loss_lines(caplog)) == 1


async def test_the_api_publishes_the_shared_signing_key_as_it_starts(
    api_factory: ApiFactory, redis: ArqRedis, tmp_path: Path
) -> None:
    key_file, signer = shared_key(tmp_path)
    assert await redis.dbsize() == 0
    api = await api_factory(
        {"crm": MemoryConnector("crm")}, worker=False, signing_key_file=key_file
    )
    assert await published(api) == [signer.key_id]


async def test_an_api_with_a_key_of_its_own_publishes_nothing_it_does_not_sign_with(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": MemoryConnector("crm")}, worker=False)
    assert await published(api) == []


async def test_a_watch_logs_a_loss_once_and_records_it_for_every_process(
    redis: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    epochs = Epochs(redis, NAMESPACE)
    republished: list[str] = []

    async def republish() -> None:
        republished.append("key")

    first = EpochWatch(epochs, on_lost=republish)
    second = EpochWatch(epochs)
    began = await first.start()
    assert await second.start() == began  # the second process joins the first one's epoch
    assert await first.check() is None

    await redis.flushdb()
    loss = await first.check()
    assert loss is not None and loss.epoch == began.id
    assert await first.check() is None
    current = await epochs.current()
    assert current is not None and current.lost == loss
    # The other process finds the new epoch, logs its own line, and keeps the first record.
    other = await second.check()
    assert other is not None and other.epoch == began.id
    assert await epochs.current() == current
    assert republished == ["key"]
    assert len(loss_lines(caplog)) == 2

    # Redis emptied again, and a process that never knew the old epoch began a new one
    # before this one looked: the loss is added to that epoch.
    await redis.flushdb()
    fresh = await epochs.begin()
    assert fresh.lost is None
    again = await first.check()
    assert again is not None and again.epoch == current.id
    recorded = await epochs.current()
    assert recorded is not None and recorded.id == fresh.id and recorded.lost == again


async def test_a_worker_process_notices_the_loss_and_reports_in_again(
    redis: ArqRedis, tmp_path: Path
) -> None:
    key_file, signer = shared_key(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_DATA_DIR=str(tmp_path / "data"),
        HANDOVER_JWT_SECRET="epoch-test-secret-" + "e" * 40,
        HANDOVER_SIGNING_KEY_FILE=str(key_file),
    )
    log = tmp_path / "worker.log"
    worker = HandoverProcess(env, log, ("worker",))
    try:
        await eventually(
            lambda: redis.get(HEALTH_CHECK_KEY),
            timeout=30,
            what="the worker to report in",
            diagnose=log.read_text,
        )
        before = await marker(redis)
        assert before is not None

        await redis.flushdb()
        flushed = time.monotonic()

        def lines() -> list[str]:
            return [line for line in log.read_text().splitlines() if LOST in line]

        found = await eventually(
            lines, timeout=15, what="the worker to log the loss", diagnose=log.read_text
        )
        assert f"{LOST}{before.id}" in found[0]
        assert '"level": "error"' in found[0]
        await eventually(
            lambda: redis.get(HEALTH_CHECK_KEY),
            timeout=10,
            what="the worker's heartbeat to be back",
        )
        # The key is published again once the loss is recorded (after the line above),
        # beside the heartbeat, not before it.
        keys = await eventually(
            KeyRing(redis, NAMESPACE, timedelta(days=7)).active,
            timeout=10,
            what="the worker to publish its key again",
            diagnose=log.read_text,
        )
        assert time.monotonic() - flushed < 12
        assert [key["kid"] for key in keys] == [signer.key_id]
        after = await marker(redis)
        assert after is not None and after.lost is not None and after.lost.epoch == before.id
        assert len(lines()) == 1
        assert worker.alive
    finally:
        worker.terminate()


def test_the_epoch_command_says_when_redis_does_not_answer() -> None:
    result = handover("epoch", "show", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("handover: epoch: HANDOVER_REDIS_URL: Redis at 127.0.0.1:")
    assert "cannot be used" in lines[0]


async def test_the_epoch_command_on_a_redis_without_a_marker(redis: ArqRedis) -> None:
    result = await asyncio.to_thread(handover, "epoch", "acknowledge")
    assert result.returncode == 1
    assert result.stderr.startswith("handover: epoch: no epoch marker")
    began = await Epochs(redis, NAMESPACE).begin()
    shown = await asyncio.to_thread(handover, "epoch", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"epoch {began.id}, begun ")
    assert shown.stdout.strip().endswith(": intact")


async def test_a_loss_is_recorded_on_an_epoch_another_process_began_in_between(
    redis: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker gone, and another process starting (a clean epoch) between this one
    finding it gone and beginning its own: the loss is recorded on that clean epoch."""
    starting = EpochWatch(Epochs(redis, NAMESPACE))

    class Racing(Epochs):
        async def current(self) -> Epoch | None:
            found = await super().current()
            if found is None and starting.epoch is None:
                await starting.start()  # a process starts on the emptied Redis right now
            return found

    watch = EpochWatch(Racing(redis, NAMESPACE))
    began = await watch.start()
    await redis.flushdb()
    loss = await watch.check()
    assert loss is not None and loss.epoch == began.id
    assert starting.epoch is not None and starting.epoch.lost is None
    recorded = await marker(redis)
    assert recorded is not None and recorded.id == starting.epoch.id
    assert recorded.lost == loss, "the loss must be stored, or /readyz stays green"
    assert watch.epoch == recorded
    assert len(loss_lines(caplog)) == 1


async def test_beginning_gives_up_on_a_marker_that_keeps_vanishing(redis: ArqRedis) -> None:
    class Vanishing(Epochs):
        """A marker there for each ``SET NX`` and gone for each read after it."""

        async def current(self) -> Epoch | None:
            return None

    await Epochs(redis, NAMESPACE).begin()
    with pytest.raises(RuntimeError, match=r"^the epoch marker handover:epoch vanished between"):
        await Vanishing(redis, NAMESPACE).begin()


async def test_a_worker_watches_the_epoch_from_a_task_of_its_own(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    """No cron (which would run on any worker, and wait for a free slot): each worker's
    own task checks its own epoch, from start-up to shut-down."""
    async with resources_factory({"crm": MemoryConnector("crm")}) as resources:
        worker = create_worker(resources.settings, redis=redis, resources=resources)
        assert "check_epoch" not in {job.name for job in worker.cron_jobs}
        context = WorkerContext(resources.settings, resources=resources)
        ctx: dict[str, Any] = {}
        await context.on_startup(ctx)  # no worker polls: only the watch can notice
        try:
            before = await marker(redis)
            assert before is not None
            await redis.flushdb()
            after = await eventually(
                lambda: marker(redis),
                until=lambda epoch: epoch is not None and epoch.lost is not None,
                timeout=WATCH_INTERVAL.total_seconds() * 3,
                what="the worker's watch to record the loss",
            )
            assert after is not None and after.lost is not None
            assert after.lost.epoch == before.id
            assert len(running("EpochWatch.watch")) == 1
        finally:
            await context.on_shutdown(ctx)
        assert running("EpochWatch.watch") == [], "the watch must stop with the worker"


def running(qualname: str) -> list[asyncio.Task[Any]]:
    """This event loop's unfinished tasks that run the coroutine function ``qualname``."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == qualname
    ]
