"""The work queue: arq on Redis, with JSON payloads and connections that survive outages."""

from __future__ import annotations

from typing import Any

import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

QUEUE_NAME = "handover:queue"


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


def redis_settings(url: str) -> RedisSettings:
    """arq settings for ``url`` that ride out a short Redis outage (FACTS.md)."""
    settings = RedisSettings.from_dsn(url)
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), 20)
    settings.retry_on_error = [ConnectionError, TimeoutError, OSError]
    settings.retry_on_timeout = True
    settings.conn_timeout = 2
    settings.conn_retries = 5
    return settings


async def connect(url: str) -> ArqRedis:
    """A Redis client that can also enqueue arq jobs."""
    pool: ArqRedis = await create_pool(
        redis_settings(url),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )
    return pool


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
