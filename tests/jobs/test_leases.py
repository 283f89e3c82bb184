"""Leases against a real Redis: one live owner per unit, released only by its owner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import cast

from arq.connections import ArqRedis

from jobs.leases import Leases


def owner(redis: ArqRedis, name: str, ttl: float = 20.0) -> Leases:
    return Leases(redis, "handover:", owner=name, ttl=ttl)


async def recorded_owner(redis: ArqRedis, unit: str) -> bytes | None:
    """The owner Redis holds for ``unit``, as raw bytes.

    redis-py types ``hget`` for its sync and async clients at once (and as ``str``, though
    arq's client does not decode): on ``ArqRedis`` it is a coroutine of bytes.
    """
    return await cast("Awaitable[bytes | None]", redis.hget("handover:lease:owners", unit))


async def test_a_live_lease_keeps_other_owners_out(redis: ArqRedis) -> None:
    a, b = owner(redis, "a"), owner(redis, "b")
    assert await a.acquire("run|j1|1|crm", "run_connector", ["j1", 1, "crm"])
    assert not await b.acquire("run|j1|1|crm", "run_connector", ["j1", 1, "crm"])
    assert await a.acquire("run|j1|1|crm", "run_connector", ["j1", 1, "crm"])


async def test_only_the_owner_releases(redis: ArqRedis) -> None:
    a, b = owner(redis, "a"), owner(redis, "b")
    await a.acquire("unit", "finish_job", ["j1", 1])
    await b.release("unit")
    assert await recorded_owner(redis, "unit") == b"a"
    await a.release("unit")
    assert await recorded_owner(redis, "unit") is None
    assert await redis.zscore("handover:leases", "unit") is None
    assert await b.acquire("unit", "finish_job", ["j1", 1])


async def test_an_expired_lease_can_be_taken_over(redis: ArqRedis) -> None:
    a, b = owner(redis, "a", ttl=-1.0), owner(redis, "b")
    await a.acquire("unit", "finish_job", ["j1", 1])
    assert await b.acquire("unit", "finish_job", ["j1", 1])
    assert await recorded_owner(redis, "unit") == b"b"


async def test_concurrent_acquires_let_exactly_one_owner_win(redis: ArqRedis) -> None:
    contenders = [owner(redis, f"owner-{n}") for n in range(8)]
    won = await asyncio.gather(*(c.acquire("unit", "finish_job", ["j1", 1]) for c in contenders))
    assert won.count(True) == 1
    winner = contenders[won.index(True)].owner
    assert await recorded_owner(redis, "unit") == winner.encode()
