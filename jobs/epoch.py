"""The epoch marker: which life of Redis a process works in, so that losing its data shows.

Redis holds every job record, the queue, the audit log and the published keys. When
it loses them (restarted without persistence, flushed, failed over to an empty
replica) nothing else would tell: jobs answer 404, ``/v1/keys`` lists nothing and
workers carry on. The marker makes the loss a recorded fact.

Layout: ``{ns}epoch``, a string holding JSON::

    id               ULID of this epoch
    created_at       when the first process found Redis without a marker and began it
    lost             absent, or the epoch this one replaced, as a running process found it:
                     id, created_at, intact_at (last seen whole), noticed_at (seen gone)
    acknowledged_at  absent, or when an operator acknowledged the loss

- Every process (API, worker, embedded ``serve``) joins the epoch when it starts
  (:meth:`EpochWatch.start`): it reads the marker, or begins one when there is none
  (``SET NX``: two processes starting together agree on one), and remembers it.
- While it runs it checks (:meth:`EpochWatch.check`, every :data:`WATCH_INTERVAL`
  from a task of its own: :meth:`EpochWatch.watch`): a marker that is gone, or names
  another epoch, means Redis lost its data under it. The process logs one ERROR line,
  records the loss in the marker (begins a new epoch naming the lost one, or adds the
  loss to an epoch another process began without knowing of it, even one begun
  between this process finding the marker gone and beginning its own), re-publishes
  its signing key and remembers the new epoch.
- Readiness (:mod:`jobs.health`) reads the marker alone, so every API answers alike:
  a marker that is gone, or that holds a loss no one acknowledged, is not ready.
  :meth:`Epochs.acknowledge` (``handover epoch acknowledge``) records the operator's
  acknowledgement, and readiness recovers everywhere at once. Until then every API is
  out of its load balancer: deliberately, an operator must look at what was lost.

A process that starts on an emptied Redis cannot tell it from a new one: only the
processes that run across the loss see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.ids import new_ulid
from jobs.model import utcnow
from jobs.queue import API_RETRIES, REDIS_UNAVAILABLE, connect
from jobs.resources import probe_redis

log = logging.getLogger("handover.epoch")

#: How often every process (API, worker) checks the marker.
WATCH_INTERVAL = timedelta(seconds=5)
#: How many times :meth:`Epochs.begin` tries to write or read a marker that keeps vanishing.
BEGIN_ATTEMPTS = 5


def _moment(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class Loss:
    """An epoch found gone by a running process, and when it was last seen whole."""

    epoch: str
    began_at: datetime
    intact_at: datetime
    noticed_at: datetime

    def describe(self) -> str:
        """What was lost, in the words an operator reads in a log line or ``/readyz``."""
        return (
            f"Redis lost its data: epoch {self.epoch} (begun {_moment(self.began_at)}) is gone; "
            f"jobs created before {_moment(self.intact_at)} are lost, and those created up to "
            f"{_moment(self.noticed_at)} may be"
        )

    def to_json(self) -> dict[str, str]:
        """The loss as the marker stores it."""
        return {
            "id": self.epoch,
            "created_at": self.began_at.isoformat(),
            "intact_at": self.intact_at.isoformat(),
            "noticed_at": self.noticed_at.isoformat(),
        }

    @classmethod
    def from_json(cls, value: dict[str, str]) -> Loss:
        """Inverse of :meth:`to_json`."""
        return cls(
            epoch=value["id"],
            began_at=datetime.fromisoformat(value["created_at"]),
            intact_at=datetime.fromisoformat(value["intact_at"]),
            noticed_at=datetime.fromisoformat(value["noticed_at"]),
        )


@dataclass(frozen=True)
class Epoch:
    """One life of Redis: the marker's content."""

    id: str
    created_at: datetime
    lost: Loss | None = None
    acknowledged_at: datetime | None = None

    @property
    def unacknowledged_loss(self) -> Loss | None:
        """The loss this epoch began with, while no operator has acknowledged it."""
        return self.lost if self.acknowledged_at is None else None

    def encode(self) -> bytes:
        """The marker's JSON."""
        value: dict[str, Any] = {"id": self.id, "created_at": self.created_at.isoformat()}
        if self.lost is not None:
            value["lost"] = self.lost.to_json()
        if self.acknowledged_at is not None:
            value["acknowledged_at"] = self.acknowledged_at.isoformat()
        return orjson.dumps(value)

    @classmethod
    def decode(cls, raw: bytes) -> Epoch:
        """Inverse of :meth:`encode`."""
        value = orjson.loads(raw)
        acknowledged = value.get("acknowledged_at")
        return cls(
            id=value["id"],
            created_at=datetime.fromisoformat(value["created_at"]),
            lost=Loss.from_json(value["lost"]) if "lost" in value else None,
            acknowledged_at=datetime.fromisoformat(acknowledged) if acknowledged else None,
        )


class Epochs:
    """The marker in Redis: read it, begin one, record a loss, acknowledge it."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.key = f"{namespace}epoch"

    async def current(self) -> Epoch | None:
        """The marker, or ``None`` when Redis holds none."""
        raw = await self.redis.get(self.key)
        return None if raw is None else Epoch.decode(raw)

    async def begin(self, lost: Loss | None = None, now: datetime | None = None) -> Epoch:
        """Begin a new epoch unless a marker exists; returns the one that holds.

        A marker that is there for ``SET NX`` and gone when read (Redis flushed again in
        between) is tried again, :data:`BEGIN_ATTEMPTS` times in all; then
        :class:`RuntimeError`, naming the key.
        """
        fresh = Epoch(id=new_ulid(), created_at=now or utcnow(), lost=lost)
        for _ in range(BEGIN_ATTEMPTS):
            if await self.redis.set(self.key, fresh.encode(), nx=True):
                return fresh
            current = await self.current()
            if current is not None:
                return current
        raise RuntimeError(
            f"the epoch marker {self.key} vanished between writing and reading it "
            f"{BEGIN_ATTEMPTS} times: something keeps emptying this Redis"
        )

    async def record_loss(self, epoch_id: str, loss: Loss) -> Epoch | None:
        """Add ``loss`` to epoch ``epoch_id`` unless it records one already; the marker after."""

        async def attempt(pipe: Any) -> Epoch | None:
            raw = await pipe.get(self.key)
            epoch = None if raw is None else Epoch.decode(raw)
            if epoch is None or epoch.id != epoch_id or epoch.lost is not None:
                await pipe.unwatch()
                return epoch
            recorded = Epoch(id=epoch.id, created_at=epoch.created_at, lost=loss)
            pipe.multi()
            pipe.set(self.key, recorded.encode())
            return recorded

        result: Epoch | None = await self.redis.transaction(
            attempt, self.key, value_from_callable=True
        )
        return result

    async def acknowledge(self, now: datetime | None = None) -> Epoch | None:
        """Record that an operator knows of the current epoch's loss; the marker after."""
        moment = now or utcnow()

        async def attempt(pipe: Any) -> Epoch | None:
            raw = await pipe.get(self.key)
            epoch = None if raw is None else Epoch.decode(raw)
            if epoch is None or epoch.unacknowledged_loss is None:
                await pipe.unwatch()
                return epoch
            acknowledged = Epoch(
                id=epoch.id, created_at=epoch.created_at, lost=epoch.lost, acknowledged_at=moment
            )
            pipe.multi()
            pipe.set(self.key, acknowledged.encode())
            return acknowledged

        result: Epoch | None = await self.redis.transaction(
            attempt, self.key, value_from_callable=True
        )
        return result


def readiness_problem(epoch: Epoch | None) -> str | None:
    """Why the marker makes a process not ready, or ``None`` when it does not."""
    if epoch is None:
        return "Redis lost its data: the epoch marker is gone (a running process records the loss)"
    loss = epoch.unacknowledged_loss
    if loss is None:
        return None
    return f"{loss.describe()}; acknowledge with `handover epoch acknowledge`"


class EpochWatch:
    """One process's memory of the epoch it works in, and its check that it still holds."""

    def __init__(
        self, epochs: Epochs, *, on_lost: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """``on_lost`` runs after a loss is recorded (the process re-publishes its key)."""
        self.epochs = epochs
        self.on_lost = on_lost
        self.epoch: Epoch | None = None
        self.intact_at = utcnow()

    async def start(self, now: datetime | None = None) -> Epoch:
        """Join the current epoch, or begin one on a Redis without a marker."""
        now = now or utcnow()
        self.epoch = await self.epochs.begin(now=now)
        self.intact_at = now
        return self.epoch

    async def check(self, now: datetime | None = None) -> Loss | None:
        """Whether the epoch this process joined is gone; a loss is logged and recorded once."""
        if self.epoch is None:
            raise RuntimeError("EpochWatch.check before start")
        now = now or utcnow()
        current = await self.epochs.current()
        if current is not None and current.id == self.epoch.id:
            self.intact_at = now
            return None
        loss = Loss(
            epoch=self.epoch.id,
            began_at=self.epoch.created_at,
            intact_at=self.intact_at,
            noticed_at=now,
        )
        if current is None:
            current = await self.epochs.begin(lost=loss, now=now)
        if current.lost is None:  # an epoch begun by a process that knew of no loss
            current = await self.epochs.record_loss(current.id, loss) or current
        log.error(
            "%s. Epoch %s begins; /readyz answers 503 until `handover epoch acknowledge`; "
            "`handover storage reconcile` deletes the lost jobs' archives and staged parts",
            loss.describe(),
            current.id,
        )
        self.epoch = current
        self.intact_at = now
        if self.on_lost is not None:
            await self.on_lost()
        return loss

    async def watch(self, interval: timedelta = WATCH_INTERVAL) -> None:
        """Check every ``interval`` until cancelled; a Redis that does not answer is skipped."""
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await self.check()
            except REDIS_UNAVAILABLE as exc:  # readiness says so; the next check tries again
                log.debug("epoch not checked: Redis unavailable: %s", exc)
            except Exception:
                log.exception("epoch not checked")


@asynccontextmanager
async def open_epochs(redis_url: str, namespace: str) -> AsyncIterator[Epochs]:
    """The marker on the Redis at ``redis_url``, for the command line.

    A Redis that cannot be used raises :class:`~jobs.resources.StartupError` at once,
    its message one line.
    """
    await probe_redis(redis_url)
    redis = await connect(redis_url, retries=API_RETRIES)
    try:
        yield Epochs(redis, namespace)
    finally:
        await redis.aclose()
