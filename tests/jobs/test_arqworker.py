"""PatientWorker's claims: one it could not confirm is given back once Redis answers.

The restarts themselves are in ``tests/jobs/test_redis_restart.py`` (worker processes,
a Redis killed under load); this covers the one step a restart cannot hit on purpose:
``EXEC``'s reply lost, and the read-back of the claim lost too; and its poll, one round
trip that still starts due jobs and cancels aborted ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import func
from redis.asyncio.connection import AbstractConnection

from jobs.arqworker import PatientWorker
from jobs.queue import QUEUE_NAME, deserialize, serialize


async def noop(ctx: dict[str, object]) -> None:
    return None


async def test_an_unconfirmed_claim_of_its_own_is_given_back_and_no_other(
    redis: ArqRedis,
) -> None:
    worker = PatientWorker(functions=[noop], redis_pool=redis, queue_name=QUEUE_NAME)
    ours, theirs = in_progress_key_prefix + "job-a", in_progress_key_prefix + "job-b"
    await redis.set(ours, worker._claim_value, px=3_600_000)
    await redis.set(theirs, b"handover-worker-someone-else", px=3_600_000)
    worker._unsettled_claims.update({"job-a", "job-b"})

    await worker._settle_claims()

    assert await redis.exists(ours) == 0  # the job can be claimed again at once
    assert await redis.get(theirs) == b"handover-worker-someone-else"
    assert worker._unsettled_claims == set()


async def test_a_poll_is_one_round_trip_that_starts_due_jobs_and_cancels_aborted_ones(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def sleepy(ctx: dict[str, object]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = PatientWorker(
        functions=[func(sleepy, name="sleepy")],
        redis_pool=redis,
        queue_name=QUEUE_NAME,
        allow_abort_jobs=True,
        handle_signals=False,
        poll_delay=0.01,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )
    await worker._poll_iteration()  # arq writes its health key at the first poll
    round_trips = 0
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal round_trips
        round_trips += 1
        await send(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    await worker._poll_iteration()
    assert round_trips == 1, "the due jobs and the abort requests, read together"
    monkeypatch.undo()

    job = await redis.enqueue_job("sleepy", _queue_name=QUEUE_NAME)
    assert job is not None
    main = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(started.wait(), 10)
        with contextlib.suppress(TimeoutError):
            await job.abort(timeout=0)  # as Handover asks (Pipeline.abort_tasks)
        await asyncio.wait_for(cancelled.wait(), 10)
    finally:
        await worker.stop(main, grace=0)
