"""Readiness: whether a process can do its work, each check "ok" or what is wrong.

- ``redis``: it answers, and it never evicts keys (``maxmemory-policy`` unset or
  ``noeviction``): an evicting Redis would silently drop jobs and queued tasks.
- ``worker``: some worker's arq health key is present (each worker refreshes it
  every 30 s, see :mod:`jobs.worker`). Not checked when Redis does not answer.
- ``storage``: the object store is usable (:meth:`~jobs.storage.base.ObjectStore.check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.queue import HEALTH_CHECK_KEY
from jobs.resources import Resources
from jobs.storage.base import StorageError

OK = "ok"


@dataclass(frozen=True)
class Readiness:
    """The outcome of every check, by name, in the order they ran."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """Every check passed."""
        return all(value == OK for value in self.checks.values())


async def check_readiness(resources: Resources) -> Readiness:
    """Check Redis, the workers and object storage."""
    checks = await _check_redis(resources.redis)
    checks["storage"] = await _check_storage(resources)
    return Readiness(checks)


async def _check_redis(redis: Any) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        await redis.ping()
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        checks["redis"] = (
            OK
            if policy in (None, "noeviction")
            else f"maxmemory-policy is {policy}, must be noeviction"
        )
        heartbeat = await redis.get(HEALTH_CHECK_KEY)
        checks["worker"] = OK if heartbeat else "no worker has reported in the last 60 s"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
    return checks


async def _check_storage(resources: Resources) -> str:
    try:
        await resources.storage.check()
    except StorageError as exc:
        return f"unusable: {exc}"
    return OK
