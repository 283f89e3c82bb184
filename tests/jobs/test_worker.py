"""Leases, the watchdog and the sweeper on a clock the test moves, over the real Redis.

Leases (:mod:`jobs.leases`) expire on the clock they are given and the sweeper
(:func:`jobs.worker.sweep`) is told what time it is, so nothing here sleeps: time
passes because the test moves it, to a millisecond either side of each bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job as Task

from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.leases import LEASE_SECONDS, ExpiredLease, Leases
from jobs.model import ConnectorRun, Job, JobStatus, RunStatus, iso
from jobs.pipeline import RESOLVE_TASK, RUN_TASK
from jobs.queue import QUEUE_NAME, deserialize
from jobs.resources import NAMESPACE, Resources
from jobs.worker import STALL_SWEEPS, SWEEP_QUIET, WorkerContext, sweep, watchdog

#: Ten milliseconds: well clear of the leases' millisecond resolution and float rounding.
JUST = 0.01


class ManualClock:
    """Seconds since the epoch that move only when the test moves them."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, moment: datetime) -> datetime:
        """Move to ``moment``; returns it, for the sweeper."""
        self.now = moment.timestamp()
        return moment

    def moment(self) -> datetime:
        """The time now, for the sweeper."""
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).timestamp())


@pytest.fixture
async def resources(
    resources_factory: Callable[..., Any], clock: ManualClock
) -> AsyncIterator[Resources]:
    """Resources whose leases run on the test's clock."""
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    async with resources_factory({"crm": crm}) as opened:
        opened.leases = Leases(opened.redis, NAMESPACE, owner="watchdog", clock=clock)
        yield opened


@pytest.fixture
async def ctx(resources: Resources) -> dict[str, Any]:
    """A worker's context over ``resources``, as arq passes it to the crons."""
    context: dict[str, Any] = {}
    await WorkerContext(resources.settings, resources=resources).on_startup(context)
    return context


def worker(redis: ArqRedis, clock: ManualClock, name: str) -> Leases:
    """The leases of one worker process, on the test's clock."""
    return Leases(redis, NAMESPACE, owner=name, clock=clock)


async def fields_in(redis: ArqRedis, key: str) -> int:
    """How many fields the hash ``key`` holds.

    redis-py types ``hlen`` for its sync and async clients at once: here it is a coroutine.
    """
    return await cast("Awaitable[int]", redis.hlen(key))


async def queued(redis: ArqRedis) -> dict[str, tuple[str, list[Any]]]:
    """Every task in the queue: its id, function and arguments."""
    tasks = {}
    for raw in await redis.zrange(QUEUE_NAME, 0, -1):
        task_id = raw.decode()
        info = await Task(task_id, redis, _queue_name=QUEUE_NAME, _deserializer=deserialize).info()
        assert info is not None, task_id
        tasks[task_id] = (info.function, list(info.args))
    return tasks


async def lose_every_task(redis: ArqRedis) -> None:
    """What a Redis outage at the wrong moment does: the queue forgets the job's tasks."""
    await redis.delete(QUEUE_NAME, *[key async for key in redis.scan_iter(match="arq:*")])


async def live_job_with_its_task_lost(resources: Resources) -> Job:
    job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
    assert list((await queued(resources.redis)).values()) == [
        (RESOLVE_TASK, ["export", job.id, job.generation])
    ]
    await lose_every_task(resources.redis)
    return job


async def test_a_lease_not_renewed_expires_and_is_reaped_exactly_once(
    redis: ArqRedis, clock: ManualClock
) -> None:
    dead = worker(redis, clock, "dead")
    assert await dead.acquire("run|j1|1|crm", RUN_TASK, ["export", "j1", "crm", 1])
    reapers = [worker(redis, clock, f"reaper-{n}") for n in range(4)]

    clock.advance(LEASE_SECONDS - JUST)
    assert await reapers[0].reap() == []
    assert await reapers[0].any_live("|j1|1|")

    clock.advance(2 * JUST)
    assert not await reapers[0].any_live("|j1|1|")
    reaped = await asyncio.gather(*(reaper.reap() for reaper in reapers))
    assert sorted(map(len, reaped)) == [0, 0, 0, 1]
    assert [lease for found in reaped for lease in found] == [
        ExpiredLease("run|j1|1|crm", RUN_TASK, ["export", "j1", "crm", 1])
    ]
    clock.advance(LEASE_SECONDS)
    assert [await reaper.reap() for reaper in reapers] == [[], [], [], []]
    assert await redis.zcard(f"{NAMESPACE}leases") == 0
    assert await fields_in(redis, f"{NAMESPACE}lease:owners") == 0
    assert await fields_in(redis, f"{NAMESPACE}lease:tasks") == 0


async def test_a_renewed_lease_is_not_reaped(redis: ArqRedis, clock: ManualClock) -> None:
    alive, reaper = worker(redis, clock, "alive"), worker(redis, clock, "reaper")
    assert await alive.acquire("finish|j1|1|", "finish", ["export", "j1", 1])

    clock.advance(LEASE_SECONDS - 5)
    assert await alive.renew("finish|j1|1|")
    clock.advance(LEASE_SECONDS - JUST)  # past the first expiry, short of the renewed one
    assert await reaper.reap() == []
    assert await reaper.any_live("|j1|1|")
    assert await alive.renew("finish|j1|1|")
    clock.advance(LEASE_SECONDS - JUST)
    assert await reaper.reap() == []

    clock.advance(2 * JUST)  # renewal stopped: one lease period after the last one, it goes
    assert await reaper.reap() == [ExpiredLease("finish|j1|1|", "finish", ["export", "j1", 1])]
    assert not await alive.renew("finish|j1|1|")


async def test_the_watchdog_requeues_the_task_of_an_expired_lease_once(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    unit = f"resolve|{job.id}|{job.generation}|"
    args = ["export", job.id, job.generation]
    assert await worker(resources.redis, clock, "dead").acquire(unit, RESOLVE_TASK, args)

    clock.advance(LEASE_SECONDS - JUST)
    assert await watchdog(ctx) == 0
    assert await queued(resources.redis) == {}

    clock.advance(2 * JUST)
    assert await watchdog(ctx) == 1
    tasks = await queued(resources.redis)
    assert list(tasks.values()) == [(RESOLVE_TASK, args)]
    (task_id,) = tasks
    assert task_id.startswith(f"{unit}|recovered|")
    events = await resources.store.events(job.id)
    assert [(e.type, e.actor, e.data) for e in events if e.type == "recovered"] == [
        ("recovered", "watchdog", {"unit": unit})
    ]

    clock.advance(LEASE_SECONDS)
    assert await watchdog(ctx) == 0
    assert await queued(resources.redis) == tasks
    assert [e.type for e in await resources.store.events(job.id)].count("recovered") == 1


async def test_the_watchdog_leaves_a_renewed_lease_alone(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    unit = f"resolve|{job.id}|{job.generation}|"
    alive = worker(resources.redis, clock, "alive")
    assert await alive.acquire(unit, RESOLVE_TASK, ["export", job.id, job.generation])
    for _ in range(5):  # well past the first expiry, renewed in time each period
        clock.advance(LEASE_SECONDS - JUST)
        assert await watchdog(ctx) == 0
        assert await alive.renew(unit)
    assert await queued(resources.redis) == {}
    assert "recovered" not in [e.type for e in await resources.store.events(job.id)]


async def test_the_sweeper_requeues_a_live_job_nothing_touched_for_the_quiet_period(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)

    quiet_until = job.updated_at + SWEEP_QUIET
    assert await sweep(ctx, now=clock.set(quiet_until - timedelta(milliseconds=1))) == 0
    assert await queued(resources.redis) == {}

    assert await sweep(ctx, now=clock.set(quiet_until)) == 1
    tasks = await queued(resources.redis)
    assert list(tasks.values()) == [(RESOLVE_TASK, ["export", job.id, job.generation])]
    assert [e.type for e in await resources.store.events(job.id)].count("swept") == 1
    # The copy queued under a fresh id is seen waiting: later sweeps queue no more.
    assert await sweep(ctx, now=clock.set(quiet_until + 3 * SWEEP_QUIET)) == 0
    assert len(await queued(resources.redis)) == 1


async def test_the_sweeper_leaves_a_job_whose_run_was_touched_recently_alone(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    touched = job.updated_at + timedelta(seconds=20)

    def started(run: ConnectorRun) -> None:
        run.started_at = touched

    assert await resources.store.update_run(job.id, "crm", started, generation=job.generation)

    assert await sweep(ctx, now=clock.set(job.updated_at + SWEEP_QUIET)) == 0
    assert await sweep(ctx, now=clock.set(touched + SWEEP_QUIET - timedelta(milliseconds=1))) == 0
    assert await queued(resources.redis) == {}
    assert await sweep(ctx, now=clock.set(touched + SWEEP_QUIET)) == 1


async def test_the_sweeper_leaves_a_leased_job_alone(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    clock.set(job.updated_at + SWEEP_QUIET)
    unit = f"resolve|{job.id}|{job.generation}|"
    busy = worker(resources.redis, clock, "busy")
    assert await busy.acquire(unit, RESOLVE_TASK, ["export", job.id, job.generation])

    clock.advance(LEASE_SECONDS - JUST)
    assert await sweep(ctx, now=clock.moment()) == 0
    assert await queued(resources.redis) == {}

    clock.advance(2 * JUST)  # the lease lapsed unrenewed: nothing holds the job now
    assert await sweep(ctx, now=clock.moment()) == 1
    assert list((await queued(resources.redis)).values()) == [
        (RESOLVE_TASK, ["export", job.id, job.generation])
    ]


async def another_worker(resources: Resources) -> dict[str, Any]:
    """The context of another worker process: it shares nothing with the first but Redis."""
    context: dict[str, Any] = {}
    await WorkerContext(resources.settings, resources=resources).on_startup(context)
    return context


async def sweep_and_lose(
    ctx: dict[str, Any], resources: Resources, clock: ManualClock, moment: datetime
) -> None:
    """One sweep that queues the job's lost work again, and that work lost again."""
    assert await sweep(ctx, now=clock.set(moment)) == 1
    assert len(await queued(resources.redis)) == 1
    await lose_every_task(resources.redis)


async def test_the_sweeper_fails_a_job_that_never_progresses_instead_of_sweeping_it_forever(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    moment = job.updated_at + SWEEP_QUIET
    for sweeps in range(STALL_SWEEPS):
        # Every other sweep on another worker: the count lives in Redis, not in a process.
        context = ctx if sweeps % 2 == 0 else await another_worker(resources)
        await sweep_and_lose(context, resources, clock, moment)
        moment += SWEEP_QUIET

    # Within HANDOVER_STALL_TIMEOUT of its last progress it is still swept, not failed:
    # an object store down for a few minutes must not fail jobs.
    assert moment - job.updated_at < resources.settings.stall_timeout
    await sweep_and_lose(ctx, resources, clock, moment)
    moment = job.updated_at + resources.settings.stall_timeout
    assert await sweep(ctx, now=clock.set(moment)) == 1
    assert await queued(resources.redis) == {}
    failed = await resources.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error == (
        f"stalled: no progress since {iso(job.updated_at)} though its work was queued again "
        f"{STALL_SWEEPS + 1} times; its identity step never completed"
    )
    assert failed.connectors["crm"].status is RunStatus.FAILED
    events = [e for e in await resources.store.events(job.id) if e.type in {"swept", "failed"}]
    assert [(e.type, e.data.get("without_progress")) for e in events] == [
        *[("swept", n) for n in range(1, STALL_SWEEPS + 2)],
        ("failed", None),
    ]
    assert events[-1].actor == "watchdog" and events[-1].data["error"] == failed.error
    assert await sweep(ctx, now=clock.set(moment + 10 * SWEEP_QUIET)) == 0

    retried = await Commands(resources).retry(Actor("support-1", staff=True), job.id)
    assert retried.status is JobStatus.QUEUED and retried.generation == 2
    assert retried.connectors["crm"].status is RunStatus.PENDING


async def test_progress_between_sweeps_starts_the_sweepers_count_again(
    resources: Resources, ctx: dict[str, Any], clock: ManualClock
) -> None:
    job = await live_job_with_its_task_lost(resources)
    moment = job.updated_at + SWEEP_QUIET
    for _ in range(STALL_SWEEPS):
        await sweep_and_lose(ctx, resources, clock, moment)
        moment += SWEEP_QUIET

    def started(run: ConnectorRun) -> None:
        run.started_at = moment  # progress: a run started

    assert await resources.store.update_run(job.id, "crm", started, generation=job.generation)
    for _ in range(STALL_SWEEPS):
        moment += SWEEP_QUIET
        await sweep_and_lose(ctx, resources, clock, moment)

    assert (await resources.store.get(job.id)).status is JobStatus.QUEUED
    events = await resources.store.events(job.id)
    swept = [e.data["without_progress"] for e in events if e.type == "swept"]
    assert swept == [n for _ in range(2) for n in range(1, STALL_SWEEPS + 1)]
