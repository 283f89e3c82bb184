"""Readiness: whether a process can do its work, each check "ok" or what is wrong.

- ``redis``: it answers, and it never evicts keys (``maxmemory-policy`` unset or
  ``noeviction``): an evicting Redis would silently drop jobs and queued tasks. A
  managed Redis that disables ``CONFIG`` cannot be asked: that is not a failure (the
  process logs a warning once, to check the policy by the provider's means).
- ``worker``: some worker's health key is present: each worker writes it every 5 s
  from a task of its own, and it lives 30 s (:func:`jobs.worker.heartbeat`), so it is
  missing once no worker has written it for 30 s, or right after Redis lost its data
  (then the ``epoch`` check names the loss, and the heartbeat is back within 5 s).
  Not checked when Redis does not answer.
- ``epoch``: Redis still holds the data of the epoch this deployment works in, or an
  operator acknowledged its loss (see :mod:`jobs.epoch`). Not checked when Redis does
  not answer. It fails on every API at once, taking them all out of their load
  balancer until ``handover epoch acknowledge``: deliberately, an operator must look.
- ``storage``: the object store is usable (:meth:`~jobs.storage.base.ObjectStore.check`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from jobs.epoch import Epochs, readiness_problem
from jobs.queue import HEALTH_CHECK_KEY
from jobs.resources import Resources
from jobs.storage.base import StorageError

OK = "ok"
NO_WORKER = "no worker has reported in the last 30 s"

log = logging.getLogger("handover.health")


@dataclass(frozen=True)
class Readiness:
    """The outcome of every check, by name, in the order they ran."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """Every check passed."""
        return all(value == OK for value in self.checks.values())


async def check_readiness(resources: Resources) -> Readiness:
    """Check Redis, the workers, the epoch and object storage."""
    checks = await _check_redis(resources.redis)
    epoch = await _check_epoch(resources)
    if epoch is not None:
        checks["epoch"] = epoch
    checks["storage"] = await _check_storage(resources)
    return Readiness(checks)


async def _check_redis(redis: Any) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        await redis.ping()
        checks["redis"] = await _check_eviction_policy(redis)
        heartbeat = await redis.get(HEALTH_CHECK_KEY)
        checks["worker"] = OK if heartbeat else NO_WORKER
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
    return checks


async def _check_eviction_policy(redis: Any) -> str:
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
    except ResponseError as exc:  # CONFIG disabled or renamed, as managed services do
        _policy_unknown(str(exc))
        return OK
    if policy in (None, "noeviction"):
        return OK
    return f"maxmemory-policy is {policy}, must be noeviction"


@functools.cache
def _policy_unknown(reason: str) -> None:
    """Say once per process (and reason) that the eviction policy could not be read."""
    log.warning(
        "Redis refuses CONFIG GET (%s): cannot check that maxmemory-policy is noeviction; "
        "make sure it is, by your provider's settings",
        reason,
    )


async def _check_epoch(resources: Resources) -> str | None:
    """What the epoch marker says; ``None`` when Redis does not answer (``redis`` says why)."""
    epochs = Epochs(resources.redis, resources.store.ns)
    try:
        epoch = await epochs.current()
    except (RedisError, OSError):
        return None
    except (ValueError, KeyError) as exc:
        return f"the epoch marker {epochs.key} is unreadable: {exc!r}"
    return readiness_problem(epoch) or OK


async def _check_storage(resources: Resources) -> str:
    try:
        await resources.storage.check()
    except StorageError as exc:
        return f"unusable: {exc}"
    return OK
