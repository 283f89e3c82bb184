"""Leases: who is doing a unit of work right now, kept alive by a heartbeat.

arq re-runs a task whose worker was SIGKILLed only after the task's timeout plus
ten seconds (an hour, for a connector run). Handover does not wait that long: each
unit of work (one connector's run, one job's finish) is done under a short lease,
renewed every few seconds while the work goes on. A worker that dies stops
renewing; the watchdog (a cron on every worker, one tick at a time) finds the
lease expired within seconds and queues the unit again, so the job finishes on
another worker. Work is idempotent, so the rare double run changes nothing.

Layout::

    {ns}leases        zset: unit → lease expiry (ms)
    {ns}lease:owners  hash: unit → owner (host:pid:nonce)
    {ns}lease:tasks   hash: unit → the arq task (JSON) that redoes the unit
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

LEASE_SECONDS = 20.0
HEARTBEAT_SECONDS = 5.0

# Each a script, so that one round trip decides and writes: a WATCH on the shared lease
# keys is spoilt by every other unit's acquire or release, and retried, under load.
# KEYS: leases, owners, tasks. ARGV: unit, owner, now (ms), expiry (ms), task (JSON).
_ACQUIRE = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if expiry and tonumber(expiry) > tonumber(ARGV[3]) and holder and holder ~= ARGV[2] then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
return 1
"""
# ARGV: unit, owner, expiry (ms).
_RENEW = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""
# ARGV: unit, owner.
_RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
    return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


def owner_id() -> str:
    """This process's name as a lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ExpiredLease:
    """A unit whose owner stopped renewing, with the task that redoes it."""

    unit: str
    function: str
    args: list[Any]


class Leases:
    """Acquire, renew, release and reap leases."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        owner: str | None = None,
        ttl: float = LEASE_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` gives the time in seconds since the epoch (tests move one by hand)."""
        self.redis: Any = redis
        self.key = f"{namespace}leases"
        self.owners = f"{namespace}lease:owners"
        self.tasks = f"{namespace}lease:tasks"
        self.owner = owner or owner_id()
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.clock = clock
        self._keys = [self.key, self.owners, self.tasks]
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    def _expiry(self) -> int:
        return int((self.clock() + self.ttl) * 1000)

    async def acquire(self, unit: str, function: str, args: list[Any]) -> bool:
        """Take the lease on ``unit`` unless another owner holds a live one."""
        task = orjson.dumps({"function": function, "args": args})
        now_ms = repr(self.clock() * 1000)
        taken = await self._acquire(
            keys=self._keys, args=[unit, self.owner, now_ms, self._expiry(), task]
        )
        return bool(taken)

    async def renew(self, unit: str) -> bool:
        """Extend our lease; ``False`` when it is no longer ours."""
        return bool(await self._renew(keys=self._keys, args=[unit, self.owner, self._expiry()]))

    async def release(self, unit: str) -> None:
        """Give the lease up (only if it is still ours)."""
        await self._release(keys=self._keys, args=[unit, self.owner])

    @contextlib.asynccontextmanager
    async def hold(self, unit: str, function: str, args: list[Any]) -> AsyncIterator[bool]:
        """Hold the lease on ``unit`` for the block, renewing it; yields whether we got it."""
        if not await self.acquire(unit, function, args):
            yield False
            return

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat)
                with contextlib.suppress(Exception):
                    await self.renew(unit)

        heartbeat = asyncio.create_task(beat())
        try:
            yield True
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await asyncio.shield(self.release(unit))

    async def any_live(self, fragment: str) -> bool:
        """Whether a live lease's unit contains ``fragment`` (e.g. ``"|<job id>|<gen>|"``)."""
        now_ms = self.clock() * 1000
        async for _unit, expiry in self.redis.zscan_iter(self.key, match=f"*{fragment}*"):
            if expiry > now_ms:
                return True
        return False

    async def reap(self) -> list[ExpiredLease]:
        """Remove every expired lease and return what each one was doing."""
        now_ms = int(self.clock() * 1000)
        reaped = []
        for raw in await self.redis.zrangebyscore(self.key, "-inf", f"({now_ms}", start=0, num=500):
            unit = raw.decode()
            pipe: Any
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    expiry = await pipe.zscore(self.key, unit)
                    task = await pipe.hget(self.tasks, unit)
                    if expiry is None or expiry >= now_ms:
                        continue  # renewed or released meanwhile
                    pipe.multi()
                    pipe.zrem(self.key, unit)
                    pipe.hdel(self.owners, unit)
                    pipe.hdel(self.tasks, unit)
                    await pipe.execute()
                except WatchError:
                    continue
            if task is not None:
                spec = orjson.loads(task)
                reaped.append(ExpiredLease(unit, spec["function"], spec["args"]))
        return reaped
