"""The work queue as the API sees it."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import JobStatus

from jobs import queue
from jobs.model import utcnow
from jobs.queue import (
    API_RETRIES,
    QUEUE_NAME,
    SENTINEL_PORT,
    Queue,
    QueueClient,
    connect,
    describe,
    redis_settings,
)
from tests.faults import counting_round_trips, cutting_proxy


async def test_depth_counts_waiting_and_deferred_tasks(redis: ArqRedis) -> None:
    queue = Queue(redis)
    assert await queue.depth() == 0
    await redis.enqueue_job("run_connector", "job-1", _job_id="t-1")
    await redis.enqueue_job("run_connector", "job-2", _job_id="t-2", _defer_by=3600)
    assert await queue.depth() == 2


async def test_depth_is_of_its_own_queue_only(redis: ArqRedis) -> None:
    await redis.enqueue_job("run_connector", "job-1", _queue_name="elsewhere")
    assert await Queue(redis).depth() == 0
    assert await Queue(redis, "elsewhere").depth() == 1


async def test_an_enqueue_due_now_is_told_to_the_listeners_and_no_other(redis: ArqRedis) -> None:
    assert isinstance(redis, QueueClient)
    told: list[str] = []
    stop = redis.on_queued_due(told.append)

    await redis.enqueue_job("run_connector", "job-1", _job_id="due")
    await redis.enqueue_job("run_connector", "job-1", _job_id="due")  # queued already
    await redis.enqueue_job("run_connector", "job-2", _queue_name="elsewhere")
    await redis.enqueue_job("run_connector", "job-3", _defer_by=timedelta(0))
    await redis.enqueue_job("run_connector", "job-4", _defer_until=utcnow() - timedelta(seconds=1))
    await redis.enqueue_job("run_connector", "job-5", _defer_by=3600)
    await redis.enqueue_job("run_connector", "job-6", _defer_until=utcnow() + timedelta(hours=1))
    assert told == [QUEUE_NAME, "elsewhere", QUEUE_NAME, QUEUE_NAME]

    stop()
    await redis.enqueue_job("run_connector", "job-7")
    assert len(told) == 4


async def test_an_enqueue_is_queued_as_arq_queues_it_in_one_round_trip(redis: ArqRedis) -> None:
    await redis.script_load(queue._ENQUEUE)
    with counting_round_trips() as round_trips:
        job = await redis.enqueue_job("run_connector", "job-1", 2, _job_id="t-1", _defer_by=60)
    assert round_trips.count == 1
    assert job is not None and job.job_id == "t-1"
    assert await job.status() is JobStatus.deferred
    info = await job.info()
    assert info is not None and (info.function, list(info.args)) == ("run_connector", ["job-1", 2])
    assert info.job_try is None  # arq's own: None until a worker tries it
    score = await redis.zscore(QUEUE_NAME, "t-1")
    assert score == info.enqueue_time.timestamp() * 1000 + 60_000
    ttl = await redis.pttl(job_key_prefix + "t-1")
    assert 60_000 + redis.expires_extra_ms - 5_000 < ttl <= 60_000 + redis.expires_extra_ms
    assert await redis.enqueue_job("run_connector", "job-1", _job_id="t-1") is None
    await redis.set(result_key_prefix + "t-2", b"done")
    assert await redis.enqueue_job("run_connector", "job-2", _job_id="t-2") is None
    assert await redis.zcard(QUEUE_NAME) == 1
    with pytest.raises(RuntimeError, match="defer_until"):
        await redis.enqueue_job("run_connector", _defer_by=1, _defer_until=utcnow())


async def test_an_enqueue_whose_answer_was_lost_is_sent_again_and_queued_once() -> None:
    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        client = await connect(url, retries=API_RETRIES)
        stack.push_async_callback(client.aclose)
        await client.script_load(queue._ENQUEUE)
        proxy.arm(0, lost=False, stay_down=False)  # Redis queues it; the answer is lost

        assert await client.enqueue_job("run_connector", "job-1", _job_id="t-lost") is None
        assert proxy.cut
        assert await client.zrange(QUEUE_NAME, 0, -1) == [b"t-lost"]
        assert await client.exists(job_key_prefix + "t-lost") == 1


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    settings = redis_settings("redis+sentinel://user:p%40ss@s1:26380,s2,[::1]:26381/orders/3")

    assert settings.sentinel
    assert settings.host == [("s1", 26380), ("s2", SENTINEL_PORT), ("::1", 26381)]
    assert settings.sentinel_master == "orders"
    assert settings.database == 3
    assert (settings.username, settings.password) == ("user", "p@ss")
    assert describe(settings) == "master 'orders' of Sentinels s1:26380,s2:26379,::1:26381"


def test_a_sentinel_url_without_a_database_uses_database_0() -> None:
    settings = redis_settings("redis+sentinel://s1/orders")

    assert (settings.database, settings.password) == (0, None)


def test_a_sentinel_url_gets_the_retries_a_server_url_gets() -> None:
    server = redis_settings("redis://127.0.0.1:6379/4")
    sentinel = redis_settings("redis+sentinel://s1/orders/4")

    assert server.retry is not None and sentinel.retry is not None
    for name in ("retry_on_error", "retry_on_timeout", "conn_timeout", "conn_retries", "database"):
        assert getattr(sentinel, name) == getattr(server, name), name
