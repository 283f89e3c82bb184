"""PatientWorker's claims: one it could not confirm is given back once Redis answers.

The restarts themselves are in ``tests/jobs/test_redis_restart.py`` (worker processes,
a Redis killed under load); this covers the one step a restart cannot hit on purpose:
``EXEC``'s reply lost, and the read-back of the claim lost too; its poll, one round
trip that still starts due jobs and cancels aborted ones; and its wake: a task due now
queued in its own process starts at once, not at the next poll, while an idle worker
still polls only every ``poll_delay``, woken polls keep a minimum gap, and a wake owed
while every slot is taken survives a timed poll meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Function, func

from jobs import arqworker
from jobs.arqworker import PatientWorker
from jobs.queue import API_RETRIES, QUEUE_NAME, connect, deserialize, serialize
from tests.conftest import REDIS_URL
from tests.faults import counting_round_trips, cutting_proxy
from tests.polling import eventually


async def noop(ctx: dict[str, object]) -> None:
    return None


async def test_an_unconfirmed_claim_of_its_own_is_given_back_and_no_other(
    redis: ArqRedis,
) -> None:
    worker = PatientWorker(functions=[noop], redis_pool=redis, queue_name=QUEUE_NAME)
    ours, theirs = in_progress_key_prefix + "job-a", in_progress_key_prefix + "job-b"
    claim = worker._claim_value + b":1"
    await redis.set(ours, claim, px=3_600_000)
    await redis.set(theirs, b"handover-worker-someone-else", px=3_600_000)
    worker._unsettled_claims.update({"job-a": claim, "job-b": claim})

    await worker._settle_claims()

    assert await redis.exists(ours) == 0  # the job can be claimed again at once
    assert await redis.get(theirs) == b"handover-worker-someone-else"
    assert worker._unsettled_claims == {}


async def test_a_poll_is_one_round_trip_that_starts_due_jobs_and_cancels_aborted_ones(
    redis: ArqRedis,
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
    with counting_round_trips() as round_trips:
        await worker._poll_iteration()
    assert round_trips.count == 1, "the due jobs and the abort requests, read together"

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


async def test_a_poll_asks_redis_nothing_of_the_jobs_its_worker_is_running(redis: ArqRedis) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def sleepy(ctx: dict[str, object]) -> None:
        started.set()
        await release.wait()

    worker = patient_worker(redis, func(sleepy, name="sleepy"), poll_delay=60)
    await redis.enqueue_job("sleepy", _queue_name=QUEUE_NAME, _job_id="running")
    main = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await redis.zscore(QUEUE_NAME, "running")  # still queued while it runs
        with counting_round_trips() as round_trips:
            await worker._poll_queue()
        assert round_trips.count == 1, "the queue read, and no claim of the job it runs"
        release.set()
        await eventually(
            lambda: redis.zscore(QUEUE_NAME, "running"),
            until=lambda score: score is None,
            timeout=10,
            what="the job to end",
        )
    finally:
        release.set()
        await worker.stop(main, grace=0)


def patient_worker(redis: ArqRedis, *functions: Function, **options: Any) -> PatientWorker:
    """A worker on Handover's queue, as ``create_worker`` makes one, with ``options``."""
    return PatientWorker(
        functions=functions,
        redis_pool=redis,
        queue_name=QUEUE_NAME,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        **options,
    )


async def run_until(worker: PatientWorker, until: Callable[[], object], what: str) -> None:
    """Run ``worker`` until ``until()`` holds (10 s at most), then stop it."""
    main = asyncio.create_task(worker.main())
    try:
        await eventually(until, timeout=10, what=what)
    finally:
        await worker.stop(main, grace=0)


def count_polls(worker: PatientWorker, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each of the worker's polls of the queue begins, as it happens."""
    polls: list[float] = []
    poll_queue = worker._poll_queue

    async def counted() -> None:
        polls.append(time.monotonic())
        await poll_queue()

    monkeypatch.setattr(worker, "_poll_queue", counted)
    return polls


@pytest.fixture
async def other_client() -> AsyncIterator[ArqRedis]:
    """A second client of the test database: the API's own, in ``handover serve``."""
    client = await connect(REDIS_URL)
    yield client
    await client.aclose()


@pytest.mark.parametrize("through", ["its own client", "the client its tasks use"])
async def test_a_task_that_queues_a_due_task_has_its_worker_start_it_at_once(
    redis: ArqRedis, other_client: ArqRedis, through: str
) -> None:
    queued_at: list[float] = []
    started_at: list[float] = []
    tasks_client = redis if through == "its own client" else other_client

    async def first(ctx: dict[str, Any]) -> None:
        queued_at.append(time.monotonic())
        await tasks_client.enqueue_job("second", _queue_name=QUEUE_NAME)

    async def second(ctx: dict[str, Any]) -> None:
        started_at.append(time.monotonic())

    worker = patient_worker(
        redis,
        func(first, name="first"),
        func(second, name="second"),
        poll_delay=5,
        enqueuers=[] if tasks_client is redis else [tasks_client],
    )
    await redis.enqueue_job("first", _queue_name=QUEUE_NAME)  # found by the first poll
    await run_until(worker, lambda: started_at, "the task queued by a task to start")
    assert started_at[0] - queued_at[0] < 1, "at once, not at the next poll, 5 s on"


async def test_an_idle_worker_polls_every_poll_delay_unwoken_by_deferred_or_foreign_tasks(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = patient_worker(redis, func(noop, name="noop"), poll_delay=0.2)
    polls = count_polls(worker, monkeypatch)
    main = asyncio.create_task(worker.main())
    try:
        await eventually(lambda: len(polls) >= 2, timeout=10, what="two polls")
        await redis.enqueue_job("noop", _queue_name=QUEUE_NAME, _defer_by=60)
        await redis.enqueue_job("noop", _queue_name="elsewhere")
        await eventually(lambda: len(polls) >= 6, timeout=10, what="six polls")
    finally:
        await worker.stop(main, grace=0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert min(gaps) > 0.19, f"a poll every 0.2 s, no sooner: {gaps}"


async def test_tasks_queued_while_every_slot_is_taken_start_as_slots_free_one_poll_each(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled_meanwhile: list[int] = []
    fanned_out_at: list[float] = []
    leaves_done: list[float] = []
    running = most_running = 0

    async def fan_out(ctx: dict[str, Any]) -> None:
        before = len(polls)
        for _ in range(20):
            await ctx["redis"].enqueue_job("leaf", _queue_name=QUEUE_NAME)
        polled_meanwhile.append(len(polls) - before)
        fanned_out_at.append(time.monotonic())

    async def leaf(ctx: dict[str, Any]) -> None:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.01)  # long enough for a second leaf to start, were it let
        running -= 1
        leaves_done.append(time.monotonic())

    worker = patient_worker(
        redis, func(fan_out, name="fan_out"), func(leaf, name="leaf"), poll_delay=5, max_jobs=1
    )
    polls = count_polls(worker, monkeypatch)
    await redis.enqueue_job("fan_out", _queue_name=QUEUE_NAME)
    await run_until(worker, lambda: len(leaves_done) == 20, "the 20 tasks to run")
    assert polled_meanwhile == [0], "its one slot taken, the worker does not poll for nothing"
    assert len(polls) == 21, "the first poll, then one each time the slot freed, no more"
    assert leaves_done[-1] - fanned_out_at[0] < 2.5, "each at once, none at a poll 5 s on"
    assert most_running == 1


async def test_cron_jobs_are_still_queued_ahead_by_twice_the_configured_poll_delay(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = patient_worker(redis, func(noop, name="noop"), poll_delay=5)
    windows: list[float] = []

    async def run_cron(now: object, delay: float, num_windows: int = 2) -> None:
        windows.append(delay * num_windows)

    monkeypatch.setattr(worker, "run_cron", run_cron)
    await worker.heart_beat()
    assert windows == [10], "as arq does for a worker polling every 5 s (its loop is told 0)"


async def test_a_poll_owed_while_every_slot_was_taken_outlives_a_timed_poll_meanwhile(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: dict[str, float] = {}

    async def long(ctx: dict[str, Any]) -> None:
        await ctx["redis"].enqueue_job("follow_up", _queue_name=QUEUE_NAME)
        ran["long started"] = time.monotonic()
        await asyncio.sleep(1.5)  # one timed poll, 1 s in, finds the one slot taken
        ran["long ended"] = time.monotonic()

    async def follow_up(ctx: dict[str, Any]) -> None:
        ran["follow-up started"] = time.monotonic()

    worker = patient_worker(
        redis,
        func(long, name="long"),
        func(follow_up, name="follow_up"),
        poll_delay=1.0,
        max_jobs=1,
    )
    polls = count_polls(worker, monkeypatch)
    await redis.enqueue_job("long", _queue_name=QUEUE_NAME)
    await run_until(worker, lambda: "follow-up started" in ran, "the follow-up")
    assert any(ran["long started"] < p < ran["long ended"] for p in polls), "a timed poll came"
    # Unwoken, it would wait for the next timed poll, about 0.5 s after the long task ended.
    assert ran["follow-up started"] - ran["long ended"] < 0.3, "polled as soon as the slot freed"


async def test_a_burst_of_due_tasks_wakes_polls_spaced_by_the_minimum_gap(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    gap = 0.05  # ten times the real one, well apart from back-to-back polls on any machine
    monkeypatch.setattr(arqworker, "MIN_POLL_GAP_SECONDS", gap)
    fanned_out: list[float] = []
    started: list[float] = []

    async def fan_out(ctx: dict[str, Any]) -> None:
        for _ in range(30):
            await ctx["redis"].enqueue_job("leaf", _queue_name=QUEUE_NAME)
            await asyncio.sleep(0.005)  # the burst spans a few gaps
        fanned_out.append(time.monotonic())

    async def leaf(ctx: dict[str, Any]) -> None:
        started.append(time.monotonic())

    worker = patient_worker(
        redis, func(fan_out, name="fan_out"), func(leaf, name="leaf"), poll_delay=5, max_jobs=40
    )
    polls = count_polls(worker, monkeypatch)
    await redis.enqueue_job("fan_out", _queue_name=QUEUE_NAME)
    await run_until(worker, lambda: len(started) == 30, "the 30 tasks to start")
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert len(polls) >= 3, "woken: the first poll, then more during the 150 ms burst"
    assert min(gaps) > 0.99 * gap, f"no two polls closer than the gap: {gaps}"
    assert started[-1] - fanned_out[0] < 1, "each at once, none at a poll 5 s on"


async def test_a_claim_whose_answer_was_lost_holds_when_sent_again(redis: ArqRedis) -> None:
    """Redis runs the claim, its answer is lost, the client sends it again: the claim
    finds the worker's own value and holds (the job runs, not stuck for the in-progress
    timeout); another worker's claim, a job not yet due or gone, are not claimed."""
    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        client = await connect(url, retries=API_RETRIES)
        stack.push_async_callback(client.aclose)
        worker = patient_worker(client, func(noop, name="noop"))
        job = await redis.enqueue_job("noop", _queue_name=QUEUE_NAME, _job_id="lost-answer")
        assert job is not None
        score = await redis.zscore(QUEUE_NAME, "lost-answer")
        await redis.script_load(arqworker._CLAIM)  # the script's first command: its EVALSHA
        proxy.arm(0, lost=False, stay_down=False)

        assert await worker._claim("lost-answer") == score
        assert proxy.cut, "the claim's answer was lost"
        key = in_progress_key_prefix + "lost-answer"
        held = await redis.get(key)
        assert held is not None and held.startswith(worker._claim_value + b":")

        # A claim of the same worker's own kept there (a cron job's, a minute after it
        # ran) refuses another, as arq's does: only the very claim sent again holds.
        assert await worker._claim("lost-answer") is None

        other = patient_worker(redis, func(noop, name="noop"))
        assert await other._claim("lost-answer") is None  # held by the first
        await redis.enqueue_job("noop", _queue_name=QUEUE_NAME, _job_id="later", _defer_by=60)
        assert await other._claim("later") is None
        assert await other._claim("gone") is None
        assert await redis.exists(in_progress_key_prefix + "later") == 0
