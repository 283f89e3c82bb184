"""The work queue: arq on Redis, with JSON payloads and connections that survive outages."""

from __future__ import annotations

from typing import Any

import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

QUEUE_NAME = "handover:queue"
#: What Redis raises when it cannot be reached: callers answer "try again shortly".
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)
#: Where each worker reports that it is alive (arq's health check), read by readiness checks.
HEALTH_CHECK_KEY = "handover:worker:health"


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def serialize(payload: dict[str, Any]) -> bytes:
    """arq payloads as JSON: readable in Redis, and no pickle to execute.

    A failed task's result is its exception, kept as its type and message.
    """
    return orjson.dumps(payload, default=_fallback)


def deserialize(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`serialize`."""
    result: dict[str, Any] = orjson.loads(data)
    return result


#: Workers ride out a Redis restart; the API gives up within about a second and answers 503.
PATIENT_RETRIES = 20
API_RETRIES = 3


def redis_settings(url: str, retries: int = PATIENT_RETRIES) -> RedisSettings:
    """arq settings for ``url`` that retry a lost connection ``retries`` times, backing off."""
    settings = RedisSettings.from_dsn(url)
    cap = 2.0 if retries > API_RETRIES else 0.5
    settings.retry = Retry(ExponentialBackoff(cap=cap, base=0.05), retries)
    settings.retry_on_error = [ConnectionError, TimeoutError, OSError]
    settings.retry_on_timeout = True
    settings.conn_timeout = 2
    settings.conn_retries = 5
    return settings


async def connect(url: str, retries: int = PATIENT_RETRIES) -> ArqRedis:
    """A Redis client that can also enqueue arq jobs."""
    pool: ArqRedis = await create_pool(
        redis_settings(url, retries),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )
    return pool


class Queue:
    """The arq work queue, as seen from outside the workers."""

    def __init__(self, redis: ArqRedis, name: str = QUEUE_NAME) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.name = name

    async def depth(self) -> int:
        """Tasks in the queue: waiting, deferred or running (arq drops a task when it ends)."""
        depth: int = await self.redis.zcard(self.name)
        return depth


def embedded_redis() -> ArqRedis:
    """An in-process Redis-compatible store, for the embedded mode (one process only)."""
    from fakeredis import FakeAsyncRedis, FakeServer

    fake = FakeAsyncRedis(server=FakeServer())
    return ArqRedis(
        connection_pool=fake.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )
