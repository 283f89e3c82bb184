"""arq's worker, made to ride out Redis going away instead of exiting.

arq 0.28 claims each job in ``Worker.start_jobs`` under ``WATCH``. A connection lost
there surfaces from redis-py as ``WatchError`` ("A ConnectionError occurred on while
watching one or more keys"), which redis-py never retries: raised by the check
before ``EXEC`` it escaped arq's polling loop and ended ``async_run``, so the
``handover worker`` process exited whenever Redis restarted under load; raised by
``EXEC`` itself, arq took it for "claimed by another worker", and a claim that had
reached Redis left the job unclaimable until its ``arq:in-progress`` key expired.
A ``ConnectionError`` (``BusyLoadingError`` while a restarted Redis loads its data)
that outlasts redis-py's retries escaped the loop the same way.

:class:`PatientWorker` treats these as "Redis is away": it logs one warning per outage,
backs off, and polls again, logging once more when Redis answers. It claims a job in
one script (arq's claim is four round trips), with a value of its own: sent again by the
client after its answer was lost, the claim finds its own value and holds; when it
fails with no answer, the worker runs nothing and gives the claim back (if it was
applied) once Redis answers. A job it could not claim stays in the queue for the next
poll; one it runs itself, which arq keeps in the queue until it ends, is not asked
about. Tasks that lose Redis mid-way are handled by the tasks themselves
(``jobs/worker.py``), enqueues by the client (``jobs/queue.py``).

It polls every ``poll_delay`` (``HANDOVER_WORKER_POLL_DELAY``), and at once when code in
its own process queues a task due now on its queue (told by the client,
:meth:`jobs.queue.QueueClient.queued_due`): a task that queues the next step of a chain
(a connector run, then the finish) does not leave it waiting half a poll delay. Wakes
coalesce: those that come while it polls make one more poll, straight after, but never
sooner than :data:`MIN_POLL_GAP_SECONDS` after the start of the last, so that a fan-out
(notices, webhooks, many connector runs) queued in a loop does not set it re-reading the
queue back to back. With every slot taken it does not poll for them, but as soon as a slot
frees, as it does when its last poll found more due jobs than free slots; a wake is owed
until a poll with a free slot reads the queue, one that finds every slot taken meanwhile
does not settle it. arq's loop is handed a ``poll_delay`` of 0 and goes round at once; the
wait is :meth:`PatientWorker._poll_iteration`'s, measured from the start of the previous
poll as arq's is, so an idle worker polls as often as before, and burst mode, the
Redis-away backoff, abort requests, health checks and cron jobs (queued ahead by twice the
configured delay, as arq does) are as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

from arq.connections import ArqRedis
from arq.constants import abort_job_max_age, abort_jobs_ss, in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import ConnectionError, ResponseError, TimeoutError, WatchError

from jobs.queue import QueueClient

log = logging.getLogger("handover.worker")

#: What arq's polling loop raises when Redis is unreachable, restarting or failing over.
REDIS_AWAY: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, WatchError)
#: Pause after the first failed poll; doubled after each further one, up to the cap.
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
#: Least time between the starts of two polls when woken (never more than ``poll_delay``).
#: A poll's cost to Redis does not depend on ``poll_delay``, so neither does this bound:
#: at most 200 woken polls a second, 10 times the idle rate at the default 50 ms.
MIN_POLL_GAP_SECONDS = 0.005
#: Claim a job due by ``ARGV[3]`` (ms) for ``ARGV[4]`` ms: its in-progress key
#: (``KEYS[1]``) set to this claim's own value (``ARGV[1]``), unless another holds it; the
#: job's score in the queue (``KEYS[2]``), or nothing. The same value there already is
#: this claim sent again after its answer was lost: it holds. Any other, this worker's
#: earlier claims' included (a cron job's kept a minute after it ran), refuses, as arq's.
_CLAIM = """
local held = redis.call('get', KEYS[1])
if held and held ~= ARGV[1] then return false end
local score = redis.call('zscore', KEYS[2], ARGV[2])
if not score or tonumber(score) > tonumber(ARGV[3]) then return false end
redis.call('psetex', KEYS[1], ARGV[4], ARGV[1])
return score
"""
#: Delete an in-progress key only if it still holds the claim given.
_RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class PatientWorker(Worker):
    """An arq ``Worker`` whose polling loop survives Redis restarts and failovers, and that
    polls at once when a task due now is queued on its queue through its own Redis client
    (``redis_pool``) or ``enqueuers`` (the clients its tasks queue with, when others)."""

    _failed_polls = 0
    _away_since = 0.0

    def __init__(self, *args: Any, enqueuers: Sequence[ArqRedis] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The configured ``poll_delay``. arq's loop is given 0 and goes round at once:
        #: :meth:`_await_turn` waits, and a wake (:meth:`_queued`) cuts the wait short.
        self.poll_interval = self.poll_delay_s
        self.poll_delay_s = 0
        self._enqueuers = enqueuers
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._woken_poll_gap = min(MIN_POLL_GAP_SECONDS, self.poll_interval)
        self._poll_began_at = float("-inf")

    async def main(self) -> None:
        """arq's ``main``, told of the tasks due now that this process queues meanwhile."""
        clients: list[QueueClient] = []
        for client in (self._pool, *self._enqueuers):
            if isinstance(client, QueueClient) and all(client is not c for c in clients):
                clients.append(client)
        stops: list[Callable[[], None]] = [c.on_queued_due(self._queued) for c in clients]
        try:
            await super().main()
        finally:
            for stop in stops:
                stop()

    def _queued(self, queue_name: str) -> None:
        """A task due now was queued on ``queue_name``: if it is this worker's queue, poll
        at once, or as soon as a slot frees when none is free."""
        if queue_name != self.queue_name:
            return
        self._wake_pending = True
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            self._wake.set()

    async def stop(self, main: asyncio.Task[None], grace: float) -> None:
        """Stop a worker run with ``handle_signals=False`` as a SIGTERM stops one.

        No new work; running work gets ``grace`` seconds, then what still runs is cancelled
        (its lease lapses and it is queued again); then ``main`` (the ``async_run`` task)
        ends and the worker closes. arq's ``close`` alone cancels running jobs and re-raises
        their cancellation.
        """
        self.allow_pick_jobs = False
        running = [t for t in self.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        main.cancel()
        for job in self.tasks.values():
            job.cancel()
        await asyncio.gather(main, *self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await self.close()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """For each job id, claim the job and run it, as arq does, holding a slot while it runs.

        Due jobs left for want of a free slot have the worker poll again once one frees.
        A job this worker runs stays in the queue until it ends: it is passed over without
        asking Redis (arq asks, four round trips for each job running, at every poll),
        and without waiting for a slot.
        """
        for job_id_b in job_ids:
            job_id = job_id_b.decode()
            running = self.tasks.get(job_id)
            if running is not None and not running.done():
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                self._wake_pending = True
                return
            self.job_counter += 1
            try:
                score = await self._claim(job_id)
            except REDIS_AWAY:
                self._release_slot()
                raise
            if score is None:
                self._release_slot()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_slot())
            self.tasks[job_id] = task

    async def _claim(self, job_id: str) -> int | None:
        """The job's queue score once this worker holds its in-progress key; None if it can't.

        None when the job is running elsewhere, gone from the queue, deferred, or claimed
        by another worker meanwhile. One script, one round trip (arq's claim under
        ``WATCH`` takes four).
        """
        key = in_progress_key_prefix + job_id
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        claim = self._claim_value + b":" + uuid.uuid4().hex.encode()
        try:
            score = await self._claim_script(
                keys=[key, self.queue_name], args=[claim, job_id, timestamp_ms(), timeout_ms]
            )
        except ResponseError:
            return None
        except REDIS_AWAY:
            # Not knowing whether it was applied, the job is not run; the claim, if it
            # was, is given back once Redis answers (it would otherwise hold the job for
            # the whole in-progress timeout).
            self._unsettled_claims[job_id] = claim
            raise
        return None if score is None else int(float(score))

    @cached_property
    def _claim_script(self) -> Any:
        return self.pool.register_script(_CLAIM)

    async def _settle_claims(self) -> None:
        """Give back the claims made while Redis was going away and never acted on."""
        pool: Any = self.pool  # redis-py types async results as sync-or-async unions
        for job_id, claim in list(self._unsettled_claims.items()):
            key = in_progress_key_prefix + job_id
            await pool.eval(_RELEASE_IF_OURS, 1, key, claim)
            del self._unsettled_claims[job_id]

    @cached_property
    def _unsettled_claims(self) -> dict[str, bytes]:
        """The claims that may have been applied, never acted on: each job's, by its id."""
        return {}

    @cached_property
    def _claim_value(self) -> bytes:
        """What this worker's claims write into the in-progress keys of the jobs it claims,
        before each claim's own part."""
        return f"handover-worker-{uuid.uuid4().hex}".encode()

    def _release_slot(self) -> None:
        self.job_counter -= 1
        self.sem.release()
        if self._wake_pending and self.allow_pick_jobs:
            self._wake.set()

    async def _poll_iteration(self) -> None:
        await self._await_turn()
        try:
            await self._settle_claims()
            await self._poll_queue()
        except REDIS_AWAY as exc:
            await self._redis_away(exc)
        else:
            self._redis_back()

    async def _await_turn(self) -> None:
        """Wait until ``poll_interval`` has passed since the last poll began, or a wake,
        and in any case until the minimum gap (:data:`MIN_POLL_GAP_SECONDS`) has.

        The first poll waits for nothing, as in arq's loop; nor does one after a Redis
        backoff that outlasted the delay. Wakes that came before the poll starts are all
        answered by it (the owed one only if it can pick jobs: :meth:`_poll_queue`).
        """
        loop = asyncio.get_running_loop()
        delay = self._poll_began_at + self.poll_interval - loop.time()
        if delay > 0 and not self._wake.is_set():
            timer = loop.call_later(delay, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        too_soon = self._poll_began_at + self._woken_poll_gap - loop.time()
        if too_soon > 0:
            await asyncio.sleep(too_soon)
        self._wake.clear()
        self._poll_began_at = loop.time()

    async def heart_beat(self) -> None:
        """arq's, with the cron jobs queued ahead by the configured poll delay, as arq does
        (its own ``poll_delay_s`` is 0 here)."""
        now = datetime.now(tz=self.timezone)
        await self.record_health()
        await self.run_cron(now, max(self.poll_interval, 0.5))

    async def _poll_queue(self) -> None:
        """arq's poll (``Worker._poll_iteration``) in one round trip, not two.

        arq reads the due jobs, then the abort requests in a ``MULTI`` of its own: each
        poll, every ``poll_delay`` (50 ms) even when idle. Sent together in one pipeline,
        the same commands cost an idle worker 86–118 µs of CPU a poll against 145–280 µs.
        The abort requests are read, and acted on, before the due jobs are started rather
        than after: a job started by this poll and aborted meanwhile is cancelled at the
        next poll, or before it starts (arq's ``run_job`` checks).
        """
        count = self.queue_read_limit
        if self.burst and self.max_burst_jobs >= 0:
            remaining = self.max_burst_jobs - self._jobs_started()
            if remaining < 1:
                return
            count = min(remaining, count)
        pick = self.allow_pick_jobs and self.job_counter < self.max_jobs
        if pick:
            self._wake_pending = False  # this read finds every due task queued so far
        pipe: Any
        async with self.pool.pipeline(transaction=False) as pipe:
            if pick:
                pipe.zrangebyscore(
                    self.queue_name,
                    min=float("-inf"),
                    max=timestamp_ms(),
                    start=self._queue_read_offset,
                    num=count,
                )
            if self.allow_abort_jobs:
                pipe.zrange(abort_jobs_ss, start=0, end=-1)
                pipe.zremrangebyscore(
                    abort_jobs_ss, min=timestamp_ms() + abort_job_max_age, max=float("inf")
                )
            replies = await pipe.execute()
        if self.allow_abort_jobs:  # first: starting jobs may wait for a free slot
            await self._cancel_aborted(replies[-2])
        if pick:
            await self.start_jobs(replies[0])
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # arq's: an error in run_job propagates
        await self.heart_beat()

    async def _cancel_aborted(self, abort_ids: list[bytes]) -> None:
        """Cancel this worker's running jobs among ``abort_ids``, as arq does."""
        aborted = {job_id.decode() for job_id in abort_ids} & self.job_tasks.keys()
        if not aborted:
            return
        for job_id in aborted:
            self.job_tasks[job_id].cancel()
        self.aborting_tasks.update(aborted)
        await self.pool.zrem(abort_jobs_ss, *aborted)

    async def _redis_away(self, exc: Exception) -> None:
        backoff = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**self._failed_polls)
        if self._failed_polls == 0:
            self._away_since = time.monotonic()
            log.warning(
                "Redis unavailable while polling (%s: %s); polling again, backing off up to %.0f s",
                type(exc).__name__,
                exc,
                MAX_BACKOFF_SECONDS,
            )
        self._failed_polls += 1
        await asyncio.sleep(backoff)

    def _redis_back(self) -> None:
        if self._failed_polls == 0:
            return
        log.info(
            "Redis answers again: polling resumed after %.1f s (%d failed polls)",
            time.monotonic() - self._away_since,
            self._failed_polls,
        )
        self._failed_polls = 0
