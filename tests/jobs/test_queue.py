"""The work queue as the API sees it."""

from __future__ import annotations

from arq.connections import ArqRedis

from jobs.queue import Queue


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
