"""Fixed-window rate limits, counted in each process and added up in Redis.

Layout::

    {ns}rate:{scope}:{window}    string: requests counted in that window; expires
                                 a second after the window ends

``window`` is the Unix time divided by the window's length, so every process
agrees on where a window starts and ends without talking to the others.

A request costs no round trip while its caller is far from the limit: the process counts
it in memory and adds its counts to Redis every :data:`FLUSH_INTERVAL` (one script call:
an ``INCRBY`` and an ``EXPIRE`` per window it counted in, atomically), learning every
process's total in return. Once the total it knows of, with its own uncounted hits,
reaches half the limit, each request is added to Redis at once (with what the process
had not added yet) and answered from the total Redis returns. So one process counts
exactly, and across N processes a caller gets at most the limit plus what the other
processes let through for them in one flush interval, never more than the limit ×
(N + 1) / 2: each process admits at most half the limit without asking Redis, and past
that every process asks. A process stopped between two flushes takes its last interval's
counts with it.

A flush touches only the windows counted in since the last one, and forgets the
windows that have ended by the moment each ends: its cost follows the interval's
requests, not how many callers and subjects the process has seen this hour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("handover.ratelimit")

#: How often a process adds its counts to Redis.
FLUSH_INTERVAL = 0.1

#: KEYS: windows; ARGV: each window's hits, then each window's lifetime (seconds).
#: Adds each window's hits and keeps it that long; every window's total, in order.
_ADD = """
local totals = {}
for i, key in ipairs(KEYS) do
  totals[i] = redis.call('INCRBY', key, ARGV[i])
  redis.call('EXPIRE', key, ARGV[#KEYS + i])
end
return totals
"""


@dataclass
class _Window:
    """One scope's current window, as this process knows it."""

    seconds: int
    ends_at: int
    #: Every process's count, as Redis last told this process.
    known: int = 0
    #: This process's hits not added to Redis yet.
    pending: int = 0
    #: This process's hits on their way to Redis, not in ``known`` yet: still counted
    #: locally, or a process could admit another half limit while a flush is under way.
    in_flight: int = 0


class RateLimiter:
    """Counts hits per scope and window, and says how long to wait past a limit."""

    def __init__(
        self, redis: Redis, namespace: str, *, flush_interval: float = FLUSH_INTERVAL
    ) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace
        self.flush_interval = flush_interval
        self._add_script = self.redis.register_script(_ADD)
        self._windows: dict[str, _Window] = {}
        #: The windows with hits not added to Redis yet, by key.
        self._pending: dict[str, _Window] = {}
        #: The keys of the windows known, by the moment their window ends.
        self._ending: dict[int, list[str]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def hit(self, scope: str, window_seconds: int, limit: int) -> int:
        """Count one request in ``scope``'s current window; seconds to wait if over ``limit``."""
        now = int(time.time())
        window = now // window_seconds
        key = f"{self.ns}rate:{scope}:{window}"
        state = self._windows.get(key)
        if state is None:
            state = self._windows[key] = _Window(window_seconds, (window + 1) * window_seconds)
            self._ending.setdefault(state.ends_at, []).append(key)
        if state.known + state.in_flight + state.pending < limit // 2:
            state.pending += 1  # far from the limit: counted here, added within the interval
            self._pending[key] = state
            self._flush_soon()
            return 0
        adding, state.pending = state.pending + 1, 0
        self._pending.pop(key, None)
        try:
            count = await self._add({key: (state, adding)})
        except BaseException:
            state.pending += adding - 1  # not counted in Redis: the earlier hits still wait
            if state.pending:
                self._pending[key] = state
            raise
        return 0 if count[key] <= limit else state.ends_at - now

    async def flush(self) -> None:
        """Add this process's uncounted hits to Redis, and learn every process's totals."""
        batch = {key: (state, state.pending) for key, state in self._pending.items()}
        self._pending = {}
        for state, _ in batch.values():
            state.pending = 0
        try:
            if batch:
                await self._add(batch)
        except BaseException:
            for key, (state, adding) in batch.items():
                state.pending += adding
                self._pending[key] = state
            raise
        self._forget_ended(time.time())

    def _forget_ended(self, now: float) -> None:
        """Forget the windows that ended by ``now``, but those with hits still to add."""
        for ends_at in [moment for moment in self._ending if moment <= now]:
            kept = []
            for key in self._ending.pop(ends_at):
                if key in self._pending:
                    kept.append(key)
                else:
                    del self._windows[key]
            if kept:
                self._ending[ends_at] = kept

    async def _add(self, batch: dict[str, tuple[_Window, int]]) -> dict[str, int]:
        """``INCRBY`` each key by its hits (and keep it a second past its window); the totals."""
        for state, adding in batch.values():
            state.in_flight += adding
        try:
            answers = await self._add_script(
                keys=list(batch),
                args=[adding for _, adding in batch.values()]
                + [state.seconds + 1 for state, _ in batch.values()],
            )
        finally:
            for state, adding in batch.values():
                state.in_flight -= adding
        totals = dict(zip(batch, answers, strict=True))
        for key, (state, _) in batch.items():
            state.known = max(state.known, totals[key])
        return totals

    def _flush_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush_while_counting())

    async def _flush_while_counting(self) -> None:
        """Flush every interval while there is something to add; then stop."""
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning(
                    "rate limit counts not added to Redis yet (%s: %s)", type(exc).__name__, exc
                )
            if not self._pending:
                return
