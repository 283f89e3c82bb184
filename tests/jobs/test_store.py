"""The job store against a real Redis: records, transitions, runs, events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis

from jobs.ids import new_ulid
from jobs.model import (
    ArchiveFile,
    ArchiveResult,
    ConnectorRun,
    IllegalTransition,
    Job,
    JobKind,
    JobStatus,
    RunStatus,
    utcnow,
)
from jobs.queue import QUEUE_NAME, QueueClient
from jobs.store import JobNotFound, JobStore, QueuedTask
from tests.factories import options_for, staged_part

CONNECTORS = ("crm", "billing", "devices", "analytics", "support")


@pytest.fixture
def store(redis: ArqRedis) -> JobStore:
    return JobStore(redis)


@pytest.fixture
def job_factory() -> Callable[..., Job]:
    """A new job, by default queued export for alice with one pending run per connector."""

    def make(
        *,
        status: JobStatus = JobStatus.QUEUED,
        connectors: Sequence[str] = CONNECTORS,
        **overrides: Any,
    ) -> Job:
        now = utcnow()
        values: dict[str, Any] = {
            "id": new_ulid(),
            "kind": JobKind.EXPORT,
            "subject": "alice",
            "status": status,
            "requested_by": "alice",
            "created_at": now,
            "updated_at": now,
            "due_at": now + timedelta(days=30),
            "options": options_for(JobKind.EXPORT, ["json", "csv"]),
            "connectors": {name: ConnectorRun() for name in connectors},
        }
        values.update(overrides)
        return Job(**values)

    return make


@pytest.fixture
def stored_job(store: JobStore, job_factory: Callable[..., Job]) -> Callable[..., Any]:
    """Creates a job from ``job_factory``'s arguments in the store and returns it."""

    async def make(**overrides: Any) -> Job:
        return await store.create(job_factory(**overrides))

    return make


def finish(records: int) -> Callable[[ConnectorRun], None]:
    def update(run: ConnectorRun) -> None:
        run.status = RunStatus.SUCCEEDED
        run.records = records
        run.finished_at = utcnow()

    return update


async def test_create_and_get_round_trip(store: JobStore, job_factory: Callable[..., Job]) -> None:
    job = job_factory()
    job.connectors["crm"] = ConnectorRun(
        status=RunStatus.SUCCEEDED,
        attempts=2,
        records=12,
        bytes=3400,
        started_at=utcnow(),
        finished_at=utcnow(),
        staged_key="staging/x/crm",
        parts=[
            staged_part(
                records=12,
                bytes=3400,
                crc32=123456,
                compressed_size=800,
                chunks=[(0, 500), (900, 300)],
            )
        ],
    )

    returned = await store.create(job)

    assert returned is job
    assert await store.get(job.id) == job


async def test_a_create_that_queues_tasks_tells_the_queue_listeners_once(
    redis: ArqRedis, store: JobStore, job_factory: Callable[..., Job]
) -> None:
    assert isinstance(redis, QueueClient)
    told: list[str] = []
    redis.on_queued_due(told.append)
    job = job_factory()
    tasks = [QueuedTask.now(redis, "resolve", job.id, task_id=f"t-{n}") for n in range(3)]

    await store.create(job, tasks=tasks)
    assert told == [QUEUE_NAME]  # a worker of this process polls once, at once

    await store.create(job, tasks=tasks)  # stored already: nothing queued
    await store.create(job_factory())  # no task
    assert told == [QUEUE_NAME]


async def test_result_and_error_round_trip(
    store: JobStore, job_factory: Callable[..., Job]
) -> None:
    result = ArchiveResult(
        key="archives/x.zip",
        size=1234,
        sha256="cd" * 32,
        expires_at=utcnow() + timedelta(days=7),
        key_id="0123456789abcdef",
        files=[
            ArchiveFile(path="manifest.json", connector=None, format="json", records=None, bytes=10)
        ],
    )
    job = job_factory(status=JobStatus.SUCCEEDED, result=result, error=None, generation=3)
    await store.create(job)

    assert await store.get(job.id) == job


async def test_create_writes_the_created_event_and_indexes(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job(status=JobStatus.AWAITING_CONFIRMATION)

    [event] = await store.events(job.id)
    assert event.type == "created"
    assert event.actor == "alice"
    assert event.data == {"status": "awaiting_confirmation"}
    assert await store.ids_by_status(JobStatus.AWAITING_CONFIRMATION) == [job.id]
    assert await store.ids_by_status(JobStatus.QUEUED) == []


async def test_missing_job_raises_job_not_found(store: JobStore) -> None:
    missing = new_ulid()

    with pytest.raises(JobNotFound) as raised:
        await store.get(missing)
    assert raised.value.job_id == missing
    with pytest.raises(JobNotFound):
        await store.transition(missing, JobStatus.RUNNING, actor="worker")
    with pytest.raises(JobNotFound):
        await store.update_run(missing, "crm", finish(1), generation=1)


async def test_transition_moves_status_index_and_writes_event(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job()

    moved = await store.transition(
        job.id, JobStatus.RUNNING, actor="worker-1", data={"worker": "w1"}
    )

    assert moved is not None
    assert moved.status is JobStatus.RUNNING
    assert moved.updated_at >= job.updated_at
    assert (await store.get(job.id)).status is JobStatus.RUNNING
    assert await store.ids_by_status(JobStatus.QUEUED) == []
    assert await store.ids_by_status(JobStatus.RUNNING) == [job.id]
    event = (await store.events(job.id))[-1]
    assert event.type == "running"
    assert event.actor == "worker-1"
    assert event.data == {"status": "running", "from": "queued", "worker": "w1"}


async def test_transition_applies_change_in_the_same_write(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job(status=JobStatus.RUNNING)

    def fail(target: Job) -> None:
        target.error = "crm: timed out"
        target.generation += 1

    await store.transition(job.id, JobStatus.FAILED, actor="worker", event="gave_up", change=fail)

    stored = await store.get(job.id)
    assert (stored.status, stored.error, stored.generation) == (
        JobStatus.FAILED,
        "crm: timed out",
        2,
    )
    assert (await store.events(job.id))[-1].type == "gave_up"


async def test_status_indexes_keep_creation_order(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    now = utcnow()
    first = await stored_job(created_at=now - timedelta(minutes=2))
    second = await stored_job(created_at=now - timedelta(minutes=1))
    third = await stored_job(created_at=now)

    await store.transition(second.id, JobStatus.RUNNING, actor="worker")

    assert await store.ids_by_status(JobStatus.QUEUED) == [first.id, third.id]
    assert await store.ids_by_status(JobStatus.QUEUED, limit=1) == [first.id]
    await store.transition(first.id, JobStatus.RUNNING, actor="worker")
    assert await store.ids_by_status(JobStatus.RUNNING) == [first.id, second.id]


async def test_illegal_transition_raises_and_changes_nothing(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job()

    with pytest.raises(IllegalTransition) as raised:
        await store.transition(job.id, JobStatus.SUCCEEDED, actor="worker")

    assert (raised.value.current, raised.value.target) == (JobStatus.QUEUED, JobStatus.SUCCEEDED)
    assert await store.get(job.id) == job
    assert [event.type for event in await store.events(job.id)] == ["created"]
    assert await store.ids_by_status(JobStatus.QUEUED) == [job.id]
    assert await store.ids_by_status(JobStatus.SUCCEEDED) == []


async def test_unexpected_current_state_returns_none_and_changes_nothing(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job()

    moved = await store.transition(
        job.id, JobStatus.CANCELED, actor="support", expect={JobStatus.RUNNING}
    )

    assert moved is None
    assert await store.get(job.id) == job
    assert [event.type for event in await store.events(job.id)] == ["created"]


async def test_concurrent_transitions_let_exactly_one_win(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job()

    results = await asyncio.gather(
        *(
            store.transition(
                job.id, JobStatus.RUNNING, actor=f"worker-{n}", expect={JobStatus.QUEUED}
            )
            for n in range(10)
        )
    )

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert winners[0].status is JobStatus.RUNNING
    events = await store.events(job.id)
    assert [event.type for event in events] == ["created", "running"]
    assert await store.ids_by_status(JobStatus.RUNNING) == [job.id]
    assert await store.ids_by_status(JobStatus.QUEUED) == []


async def test_update_run_writes_one_run_and_its_event(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job(status=JobStatus.RUNNING)

    updated = await store.update_run(
        job.id, "crm", finish(42), generation=1, event="connector_succeeded", data={"bytes": 9}
    )

    assert updated is not None
    assert updated.connectors["crm"].status is RunStatus.SUCCEEDED
    stored = await store.get(job.id)
    assert stored.connectors["crm"].records == 42
    assert all(stored.connectors[name] == ConnectorRun() for name in CONNECTORS[1:])
    event = (await store.events(job.id))[-1]
    assert (event.type, event.actor, event.data) == (
        "connector_succeeded",
        "worker",
        {"connector": "crm", "bytes": 9},
    )


async def test_concurrent_run_updates_all_land_and_one_sees_the_last(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job(status=JobStatus.RUNNING)

    results = await asyncio.gather(
        *(
            store.update_run(job.id, name, finish(index + 1), generation=1, event="finished")
            for index, name in enumerate(CONNECTORS)
        )
    )

    assert all(result is not None for result in results)
    stored = await store.get(job.id)
    for index, name in enumerate(CONNECTORS):
        assert stored.connectors[name].status is RunStatus.SUCCEEDED
        assert stored.connectors[name].records == index + 1
    saw_all = [
        result
        for result in results
        if result is not None and all(run.status.finished for run in result.connectors.values())
    ]
    assert len(saw_all) == 1
    assert len([e for e in await store.events(job.id) if e.type == "finished"]) == 5


async def test_update_run_of_a_stale_generation_is_refused(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job(status=JobStatus.RUNNING, generation=2)

    assert await store.update_run(job.id, "crm", finish(1), generation=1, event="x") is None
    assert await store.get(job.id) == job
    assert [event.type for event in await store.events(job.id)] == ["created"]


@pytest.mark.parametrize("status", [JobStatus.CANCELED, JobStatus.FAILED, JobStatus.SUCCEEDED])
async def test_update_run_of_an_ended_job_is_refused(
    store: JobStore, stored_job: Callable[..., Any], status: JobStatus
) -> None:
    job = await stored_job(status=status)

    assert await store.update_run(job.id, "crm", finish(1), generation=1) is None
    assert (await store.get(job.id)).connectors["crm"] == ConnectorRun()


async def test_events_after_an_id_are_only_the_later_ones(
    store: JobStore, stored_job: Callable[..., Any]
) -> None:
    job = await stored_job()
    await store.transition(job.id, JobStatus.RUNNING, actor="worker")
    await store.add_event(job.id, "progress", "worker", {"records": 10})
    await store.add_event(job.id, "progress", "worker", {"records": 20})

    events = await store.events(job.id)
    assert [event.type for event in events] == ["created", "running", "progress", "progress"]
    assert [event.id for event in events] == sorted(event.id for event in events)

    later = await store.events(job.id, after=events[1].id)
    assert [(event.type, event.data) for event in later] == [
        ("progress", {"records": 10}),
        ("progress", {"records": 20}),
    ]
    assert await store.events(job.id, after=events[-1].id) == []
    assert [event.id for event in await store.events(job.id, count=2)] == [
        event.id for event in events[:2]
    ]


async def test_jobs_live_under_their_namespace(
    redis: ArqRedis, job_factory: Callable[..., Job]
) -> None:
    tenant_a = JobStore(redis, namespace="a:")
    tenant_b = JobStore(redis, namespace="b:")
    job = job_factory()
    await tenant_a.create(job)

    assert (await tenant_a.get(job.id)).id == job.id
    with pytest.raises(JobNotFound):
        await tenant_b.get(job.id)
    assert all(key.startswith(b"a:") for key in await redis.keys("*"))
