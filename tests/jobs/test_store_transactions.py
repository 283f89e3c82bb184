"""The job store's optimistic transactions against a real Redis.

A write that lands between an attempt's read and its EXEC makes the attempt run
again on a fresh read; a refusal stands as read; the subject gate and the active
claims hand the subject over as their docstrings say.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis

from jobs.ids import new_ulid
from jobs.model import ActiveJobExists, ConnectorRun, Job, JobKind, JobStatus, utcnow
from jobs.queue import API_RETRIES, connect
from jobs.store import JobStore
from tests.factories import options_for
from tests.faults import counting_round_trips, cutting_proxy


@pytest.fixture
def store(redis: ArqRedis) -> JobStore:
    return JobStore(redis)


@pytest.fixture
def other(redis: ArqRedis) -> JobStore:
    """Another actor on the same Redis (its own client state, the same keys)."""
    return JobStore(redis)


async def stored(
    store: JobStore,
    status: JobStatus = JobStatus.QUEUED,
    *,
    kind: JobKind = JobKind.EXPORT,
    claim_active: bool = False,
) -> Job:
    now = utcnow()
    job = Job(
        id=new_ulid(),
        kind=kind,
        subject="alice",
        status=status,
        requested_by="alice",
        created_at=now,
        updated_at=now,
        due_at=now + timedelta(days=30),
        options=options_for(kind),
        connectors={"crm": ConnectorRun()},
    )
    return await store.create(job, claim_active=claim_active)


def count_records(run: ConnectorRun) -> None:
    run.records = 7


def after_first_read(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, interfere: Callable[[], Awaitable[Any]]
) -> list[Job]:
    """Run ``interfere`` once, right after ``store`` first reads a job in a transaction.

    Returns the list of jobs ``store`` reads, one per attempt.
    """
    read = store._read_watched
    reads: list[Job] = []

    async def read_then_interfere(pipe: Any, key: str, job_id: str) -> Job:
        job = await read(pipe, key, job_id)
        reads.append(job)
        if len(reads) == 1:
            await interfere()
        return job

    monkeypatch.setattr(store, "_read_watched", read_then_interfere)
    return reads


async def test_a_change_runs_again_on_a_fresh_read_when_the_job_changed_meanwhile(
    store: JobStore, other: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await stored(store)
    reads = after_first_read(
        store,
        monkeypatch,
        lambda: other.update_run(job.id, "crm", count_records, generation=job.generation),
    )
    changed: list[Job] = []
    result = await store.modify(job.id, changed.append, actor="support", event="noted")
    assert len(reads) == 2 and changed == reads and changed[0] is not changed[1]
    assert changed[0].connectors["crm"].records == 0
    assert result is changed[1] and result.connectors["crm"].records == 7
    assert (await store.get(job.id)).connectors["crm"].records == 7
    assert [e.type for e in await store.events(job.id)] == ["created", "noted"]


async def test_a_refusal_stands_as_read_even_if_the_job_moves_before_exec(
    store: JobStore, other: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await stored(store)
    reads = after_first_read(
        store, monkeypatch, lambda: other.transition(job.id, JobStatus.RUNNING, actor="worker")
    )
    changed: list[Job] = []
    result = await store.modify(
        job.id, changed.append, actor="worker", event="noted", expect=[JobStatus.RUNNING]
    )
    assert result is None and changed == [] and len(reads) == 1
    assert (await store.get(job.id)).status is JobStatus.RUNNING
    assert [e.type for e in await store.events(job.id)] == ["created", "running"]


async def test_a_stale_generation_is_refused_as_read_even_if_the_job_changes_before_exec(
    store: JobStore, other: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await stored(store)
    reads = after_first_read(
        store,
        monkeypatch,
        lambda: other.update_run(job.id, "crm", count_records, generation=job.generation),
    )
    updates: list[ConnectorRun] = []
    result = await store.update_run(
        job.id, "crm", updates.append, generation=job.generation + 1, event="progress"
    )
    assert result is None and updates == [] and len(reads) == 1


async def test_the_gate_lets_one_job_run_per_subject_and_hands_over_the_waiting(
    store: JobStore,
) -> None:
    first, second, third = [await stored(store) for _ in range(3)]
    assert await store.claim_subject("alice", first.id) is None
    assert await store.claim_subject("alice", first.id) is None
    assert await store.claim_subject("alice", second.id) == first.id
    assert await store.claim_subject("alice", third.id) == first.id
    assert await store.subject_busy_with_another("alice", second.id)
    assert await store.release_subject("alice", second.id) == sorted([second.id, third.id])
    assert await store.subject_busy_with_another("alice", second.id)
    assert await store.release_subject("alice", first.id) == []
    assert await store.claim_subject("alice", second.id) is None


async def test_the_gate_is_one_round_trip_each_way_and_answers_alike_when_sent_again(
    store: JobStore,
) -> None:
    first, second = await stored(store), await stored(store)
    await store.claim_subject("alice", first.id)  # the scripts are loaded
    await store.release_subject("alice", first.id)
    with counting_round_trips() as round_trips:
        assert await store.claim_subject("alice", first.id) is None
        assert await store.claim_subject("alice", second.id) == first.id
        assert await store.release_subject("alice", first.id) == [second.id]
    assert round_trips.count == 3

    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        client = await connect(url, retries=API_RETRIES)
        stack.push_async_callback(client.aclose)
        through = JobStore(client)
        for job_id, answer in ((second.id, None), (first.id, second.id)):
            proxy.arm(0, lost=False, stay_down=False)  # Redis runs it; its answer is lost
            assert await through.claim_subject("alice", job_id) == answer
            assert proxy.cut
    assert await store.release_subject("alice", second.id) == [first.id]


async def test_a_gate_held_by_an_ended_job_is_free(store: JobStore) -> None:
    ended, waiting = await stored(store, JobStatus.FAILED), await stored(store)
    assert await store.claim_subject("alice", ended.id) is None
    assert await store.claim_subject("alice", waiting.id) is None
    assert not await store.subject_busy_with_another("alice", waiting.id)


async def test_a_new_job_claims_one_live_job_per_kind_and_subject(
    store: JobStore, redis: ArqRedis
) -> None:
    first = await stored(store, claim_active=True)
    with pytest.raises(ActiveJobExists) as refused:
        await stored(store, claim_active=True)
    assert refused.value.job_id == first.id
    assert await redis.zcard("handover:idx:created") == 1  # the refused job wrote nothing
    await stored(store, kind=JobKind.ERASURE, claim_active=True)  # another kind's own claim
    await store.transition(first.id, JobStatus.CANCELED, actor="alice")
    second = await stored(store, claim_active=True)  # an ended job no longer counts
    assert await redis.get("handover:active:export:alice") == second.id.encode()
