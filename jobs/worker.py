"""The arq worker: task functions, their typed context, and the worker's wiring.

``ctx`` is arq's per-worker dict; :func:`pipeline` is the one way tasks read it.
Resources open in ``on_startup`` and close in ``on_shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, suppress
from datetime import datetime, timedelta
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Retry, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from connectors.base import Connector
from jobs.arqworker import PatientWorker
from jobs.breach_notices import MAX_TRIES as BREACH_NOTICES_TRIES
from jobs.breach_notices import TASK as BREACH_NOTICES_TASK
from jobs.breach_notices import TASK_TIMEOUT as BREACH_NOTICES_TIMEOUT
from jobs.breach_notices import BreachNotices
from jobs.breaches import WEBHOOK_TASK as BREACH_WEBHOOK_TASK
from jobs.breaches import BreachRegister
from jobs.breaches import webhook_payload as breach_webhook_payload
from jobs.disclosures import DisclosureRegister
from jobs.epoch import Epochs, EpochWatch
from jobs.handoff import Handoffs
from jobs.kinds import build_pipelines
from jobs.model import Job, JobKind, JobStatus, utcnow
from jobs.notices import MAX_TRIES as NOTICE_TRIES
from jobs.notices import NOTICE_TASK, deliver_notice
from jobs.pipeline import (
    FINISH_TASK,
    RESOLVE_TASK,
    RUN_TASK,
    Pipeline,
    RetryPolicy,
    last_progress,
    progress_mark,
    takes_gate,
)
from jobs.queue import HEALTH_CHECK_KEY, QUEUE_NAME, REDIS_UNAVAILABLE, deserialize, serialize
from jobs.recipients import RECIPIENT_TASK, Recipients
from jobs.reconcile import ReconcileError, Reconciler
from jobs.records import Records
from jobs.resources import Resources, open_resources
from jobs.search import JobQuery
from jobs.settings import Settings
from jobs.storage.base import ExpiringStore, ObjectMissing
from jobs.webhooks import DELIVER_TASK, DeliveryFailed, encode, payload, shown
from jobs.webhooks import MAX_TRIES as WEBHOOK_TRIES
from jobs.webhooks import backoff as webhook_backoff
from jobs.webhooks import digest as webhook_digest
from jobs.webhooks import send as webhook_send

log = logging.getLogger("handover.worker")

_PIPELINES = "handover_pipelines"
_STACK = "handover_stack"
_BACKGROUND = "handover_background"
FINISH_TIMEOUT = timedelta(hours=6)
EXPIRING_SOON = timedelta(days=1)
EVERY_5_MINUTES = set(range(0, 60, 5))
EVERY_10_SECONDS = set(range(0, 60, 10))
#: Seconds between a worker's heartbeats: short, so that readiness finds a worker again
#: soon after Redis lost its data.
HEALTH_CHECK_INTERVAL = 5
#: How long a heartbeat (the health key) lives: through five missed beats, so that a
#: worker whose event loop is busy for a while (every slot running an export) stays ready.
HEALTH_KEY_TTL = timedelta(seconds=30)
SWEEP_QUIET = timedelta(seconds=30)
#: A live job whose work the sweeper queued again this many times with no progress in
#: between (no run started or finished, the job unchanged) is failed at the next sweep.
STALL_SWEEPS = 5
#: How long the sweeper remembers a job's sweeps after its last one.
SWEEP_MEMORY = timedelta(days=1)
#: On SIGTERM, running work gets this long to finish before it is canceled and re-queued.
SHUTDOWN_GRACE_SECONDS = 10
#: When the daily purge of finished jobs runs (the worker's local time), and how long it may take.
PURGE_HOUR, PURGE_MINUTE = 4, 10
PURGE_TIMEOUT = timedelta(hours=2)


def pipelines(ctx: Mapping[str, Any]) -> dict[JobKind, Pipeline]:
    """The pipeline of each job kind, built at start-up."""
    value: dict[JobKind, Pipeline] = ctx[_PIPELINES]
    return value


@contextlib.asynccontextmanager
async def _redis_outage_retries(ctx: Mapping[str, Any]) -> AsyncIterator[None]:
    """A task that loses Redis mid-way is queued again, not failed and forgotten."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        delay = min(30.0, 2.0 ** ctx.get("job_try", 1))
        log.warning("Redis unavailable during a task; queued again in %.0f s", delay)
        raise Retry(defer=delay) from exc


async def resolve_identity(ctx: dict[str, Any], kind: str, job_id: str, generation: int) -> None:
    """Task: a job's first step, learning the subject's identifiers."""
    async with _redis_outage_retries(ctx):
        await pipelines(ctx)[JobKind(kind)].resolve(job_id, generation, attempt=ctx["job_try"])


async def run_connector(
    ctx: dict[str, Any], kind: str, job_id: str, connector: str, generation: int
) -> None:
    """Task: one connector's share of a job."""
    pipeline = pipelines(ctx)[JobKind(kind)]
    async with _redis_outage_retries(ctx):
        await pipeline.run_connector(job_id, connector, generation, attempt=ctx["job_try"])


async def finish(ctx: dict[str, Any], kind: str, job_id: str, generation: int) -> None:
    """Task: end a job whose connector runs have all finished."""
    async with _redis_outage_retries(ctx):
        await pipelines(ctx)[JobKind(kind)].finish(job_id, generation, attempt=ctx["job_try"])


async def _waiting_in_queue(resources: Resources, job: Job) -> bool:
    """Whether one of the job's tasks sits in the queue, not yet picked up (nothing lost).

    Copies queued again under a fresh id (``…|again|…`` by the sweeper,
    ``…|recovered|…`` by the watchdog) count too: every task id of the job's
    generation holds ``<job id>:<generation>`` or ``|<job id>|<generation>|``.
    """
    patterns = (f"*:{job.id}:{job.generation}*", f"*|{job.id}|{job.generation}|*")
    queued: set[str] = set()
    for pattern in patterns:
        async for member, _ in resources.redis.zscan_iter(QUEUE_NAME, match=pattern):
            queued.add(member.decode() if isinstance(member, bytes) else str(member))
    if not queued:
        return False
    async with resources.redis.pipeline(transaction=False) as pipe:
        for task_id in sorted(queued):
            pipe.exists(in_progress_key_prefix + task_id)
        running = await pipe.execute()
    return not all(running)


def _sweeps_key(resources: Resources, job_id: str) -> str:
    return f"{resources.store.ns}sweeps:{job_id}"


async def _sweeps_without_progress(resources: Resources, job: Job) -> int:
    """How many times the sweeper queued the job's work again since it last progressed.

    Kept in Redis beside the job (any worker's sweeper continues the count) as the
    progress mark (:func:`jobs.pipeline.progress_mark`) and the count since that mark.
    """
    redis: Any = resources.redis  # redis-py types async results as sync-or-async unions
    raw = await redis.hgetall(_sweeps_key(resources, job.id))
    if raw.get(b"mark", b"").decode() != progress_mark(job):
        return 0
    return int(raw.get(b"count", 0))


async def _count_sweep(resources: Resources, job: Job, count: int) -> None:
    key = _sweeps_key(resources, job.id)
    async with resources.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"mark": progress_mark(job), "count": count})
        pipe.expire(key, SWEEP_MEMORY)
        await pipe.execute()


async def sweep(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, every 10 s: queue again any live job's work that nothing has touched for 30 s.

    The safety net under leases: a task lost to a Redis outage or a crash between
    two writes leaves a live job whose runs are neither queued, nor leased, nor
    finished. Queuing is idempotent (deterministic task ids), so sweeping a job
    whose task is merely waiting in the queue changes nothing. ``now`` is the
    current time (tests pass one).

    Never forever: the sweeps of a job are counted (in Redis) until it progresses,
    and a job swept :data:`STALL_SWEEPS` times with no progress in between, for
    ``HANDOVER_STALL_TIMEOUT`` or longer (an object store down for a few minutes must
    not fail jobs), is failed at the next sweep, with the reason
    (:meth:`jobs.pipeline.Pipeline.fail_stalled`).
    Returns how many jobs it queued again or ended.
    """
    resources = _resources(ctx)
    store = resources.store
    now = now or utcnow()
    swept = 0
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        for job_id in await store.ids_by_status(status, limit=10_000):
            job = await store.get(job_id)
            if job.not_before is not None and now < job.not_before:
                continue
            if now - last_progress(job) < SWEEP_QUIET:
                continue
            if job.waiting_on_processor:
                continue  # no work is lost: a person's reply queues it (jobs.handoff)
            if takes_gate(job) and await store.subject_busy_with_another(job.subject, job.id):
                continue
            if await resources.leases.any_live(f"|{job.id}|{job.generation}|"):
                continue
            if await _waiting_in_queue(resources, job):
                continue
            pipeline = pipelines(ctx)[job.kind]
            sweeps = await _sweeps_without_progress(resources, job)
            stalled_for = now - last_progress(job)
            if sweeps >= STALL_SWEEPS and stalled_for >= resources.settings.stall_timeout:
                if await pipeline.fail_stalled(job, sweeps) is not None:
                    log.warning("job %s failed: no progress through %d sweeps", job.id, sweeps)
                    await resources.redis.delete(_sweeps_key(resources, job.id))
                    swept += 1
                continue
            if (
                job.status is JobStatus.RUNNING
                and job.identity.resolved
                and all(run.status.settled for run in job.connectors.values())
            ):
                await pipeline.fan_in(job, again=True)
            else:
                await pipeline.enqueue_runs(job, again=True)
            await _count_sweep(resources, job, sweeps + 1)
            await store.add_event(
                job.id, "swept", "watchdog", {"without_progress": sweeps + 1, "of": STALL_SWEEPS}
            )
            swept += 1
    return swept


async def watchdog(ctx: dict[str, Any]) -> int:
    """Cron, every 10 s: queue again the work of workers that stopped renewing their lease."""
    resources = _resources(ctx)
    recovered = 0
    for lease in await resources.leases.reap():
        await resources.redis.enqueue_job(
            lease.function, *lease.args, _job_id=f"{lease.unit}|recovered|{uuid.uuid4().hex[:8]}"
        )
        job_id = str(lease.args[1])
        with suppress(Exception):
            await resources.store.add_event(job_id, "recovered", "watchdog", {"unit": lease.unit})
        log.warning("lease on %s expired: its worker stopped; queued again", lease.unit)
        recovered += 1
    return recovered


def _resources(ctx: Mapping[str, Any]) -> Resources:
    return pipelines(ctx)[JobKind.EXPORT].resources


async def expire_archives(ctx: dict[str, Any]) -> int:
    """Cron: delete archives past their expiry and move their jobs to ``expired``."""
    resources = _resources(ctx)
    store = resources.store
    expired = 0
    for job_id in await store.archives_expiring_before(utcnow(), limit=10_000):
        job = await store.get(job_id)
        if job.result is not None:
            with suppress(ObjectMissing):
                await resources.storage.delete(job.result.key)
        moved = await store.transition(
            job_id, JobStatus.EXPIRED, actor="cleanup", expect={JobStatus.SUCCEEDED}
        )
        expired += moved is not None
    if expired:
        log.info("expired %d archive(s)", expired)
    return expired


async def chase_processors(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, every 5 minutes: remind processors served by hand, escalate those overdue.

    See :meth:`jobs.handoff.Handoffs.chase`; each run escalated now gets the
    ``job.processor_overdue`` webhook. Returns how many were escalated.
    """
    escalated = await Handoffs(_resources(ctx)).chase(now)
    for job, _ in escalated:
        await pipelines(ctx)[job.kind].notify(job, "job.processor_overdue")
    return len(escalated)


async def watch_deadlines(ctx: dict[str, Any]) -> int:
    """Cron: notify once per job when a request is at risk or an archive expires within a day."""
    resources = _resources(ctx)
    store = resources.store
    notifier = pipelines(ctx)[JobKind.EXPORT]
    now = utcnow()
    sent = 0
    cursor = None
    while True:
        page = await store.search(JobQuery(at_risk=True, limit=200, cursor=cursor), now=now)
        for job in page.jobs:
            if await store.first_time("job.at_risk", job.id):
                await notifier.notify(job, "job.at_risk")
                sent += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    for job_id in await store.archives_expiring_before(now + EXPIRING_SOON):
        events = await store.events(job_id)
        if any(event.type == "downloaded" for event in events):
            continue
        if await store.first_time("job.expiring_soon", job_id):
            await notifier.notify(await store.get(job_id), "job.expiring_soon")
            sent += 1
    return sent


async def deliver_webhook(ctx: dict[str, Any], target: str, job_id: str, event: str) -> None:
    """Task: one webhook delivery, retried with backoff until the receiver accepts it.

    The task names the job, not its content, so no personal data sits in the queue
    or in the worker's log of the task's arguments; and it names the configured URL
    by its digest (:func:`jobs.webhooks.digest`), so no token in a URL does either.
    """
    settings = _resources(ctx).settings
    url = next((u for u in settings.webhook_urls if webhook_digest(u) == target), None)
    if url is None:
        log.error("webhook %s dropped: that URL is no longer configured", shown(target))
        return
    secret = settings.webhook_secret
    if secret is None:
        log.error("webhook to %s dropped: HANDOVER_WEBHOOK_SECRET is not set", shown(url))
        return
    body = encode(payload(await _resources(ctx).store.get(job_id), event))
    allow = settings.webhook_allow_link_local
    try:
        await webhook_send(url, body, secret.reveal(), allow_link_local=allow)
    except DeliveryFailed as exc:
        attempt = ctx["job_try"]
        if attempt >= WEBHOOK_TRIES:
            log.error("webhook to %s given up after %d attempts: %s", shown(url), attempt, exc)
            return
        raise Retry(defer=webhook_backoff(attempt)) from exc


async def deliver_breach_webhook(
    ctx: dict[str, Any], target: str, breach_id: str, event: str
) -> None:
    """Task: one breach webhook (``breach.at_risk``, ``breach.overdue``), retried with backoff.

    Like a job's, it names the breach and the URL's digest only; the payload says the
    clock, never what happened (:func:`jobs.breaches.webhook_payload`).
    """
    resources = _resources(ctx)
    settings = resources.settings
    url = next((u for u in settings.webhook_urls if webhook_digest(u) == target), None)
    if url is None or settings.webhook_secret is None:
        log.error("breach webhook %s dropped: that URL or the secret is no longer set", target)
        return
    breach = await BreachRegister.of(resources).get(breach_id)
    body = encode(breach_webhook_payload(breach, event, utcnow()))
    allow = settings.webhook_allow_link_local
    try:
        await webhook_send(url, body, settings.webhook_secret.reveal(), allow_link_local=allow)
    except DeliveryFailed as exc:
        attempt = ctx["job_try"]
        if attempt >= WEBHOOK_TRIES:
            log.error("webhook to %s given up after %d attempts: %s", shown(url), attempt, exc)
            return
        raise Retry(defer=webhook_backoff(attempt)) from exc


async def send_breach_notices(ctx: dict[str, Any], breach_id: str, chunk: int) -> int:
    """Task: the Art. 34 notices of one chunk of a breach's affected subjects
    (:mod:`jobs.breach_notices`); returns how many were sent now."""
    async with _redis_outage_retries(ctx):
        return await BreachNotices.of(_resources(ctx)).send_chunk(
            breach_id, chunk, attempt=ctx["job_try"]
        )


async def watch_breach_clocks(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, every 5 minutes: webhooks for breaches that reached 48 h or 72 h unnotified
    (:meth:`jobs.breaches.BreachRegister.watch`), and the unfinished chunks of Art. 34
    fan-outs queued again (:meth:`jobs.breach_notices.BreachNotices.resume`); returns how
    many webhooks were queued."""
    resources = _resources(ctx)
    await BreachNotices.of(resources).resume()
    return await BreachRegister.of(resources).watch(now)


async def tell_deferred_disclosures(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, every minute: the ``disclosed`` notices whose deferral ended by ``now``, queued
    (:meth:`jobs.disclosures.DisclosureRegister.tell_due`); returns how many."""
    return await DisclosureRegister(_resources(ctx)).tell_due(now)


async def send_notice(
    ctx: dict[str, Any], job_id: str, notice: str, generation: int, occasion: str = ""
) -> None:
    """Task: one notice to a subject, retried with backoff (:mod:`jobs.notices`).

    Like a webhook's, the task names the job, not the subject: the address waits
    in a key of its own until the message is handed over.
    """
    async with _redis_outage_retries(ctx):
        await deliver_notice(
            _resources(ctx), job_id, notice, generation, occasion, attempt=ctx["job_try"]
        )


async def tell_recipient(ctx: dict[str, Any], job_id: str, recipient: str) -> None:
    """Task: tell one recipient that is not a connector of what a job did (GDPR Art. 19),
    retried with backoff (:mod:`jobs.recipients`). It names the job and the recipient only."""
    async with _redis_outage_retries(ctx):
        await Recipients(_resources(ctx)).deliver(job_id, recipient, attempt=ctx["job_try"])


async def heartbeat(redis: ArqRedis) -> None:
    """Write the worker's health key every :data:`HEALTH_CHECK_INTERVAL` s until cancelled.

    A task of its own, not arq's poll loop (which writes its key only between polls,
    late when the worker is busy); the key lives :data:`HEALTH_KEY_TTL`. Readiness
    (:mod:`jobs.health`) looks for any worker's.
    """
    while True:
        try:
            await redis.psetex(
                HEALTH_CHECK_KEY,
                int(HEALTH_KEY_TTL.total_seconds() * 1000),
                f"pid {os.getpid()} at {utcnow().isoformat()}",
            )
        except REDIS_UNAVAILABLE as exc:  # readiness says so; the next beat tries again
            log.debug("heartbeat not written: Redis unavailable: %s", exc)
        except Exception:
            log.exception("heartbeat not written")
        await asyncio.sleep(HEALTH_CHECK_INTERVAL)


async def reconcile_storage(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, hourly: delete the archives and staged parts no job owns (:mod:`jobs.reconcile`).

    Only folders older than ``HANDOVER_RECONCILE_MIN_AGE`` and last written in the
    current epoch, and nothing while a loss of Redis's data is unacknowledged: older
    folders are left to ``handover storage reconcile``. Returns how many were deleted.
    ``now`` is the current time (tests pass one).
    """
    resources = _resources(ctx)
    try:
        result = await Reconciler.of(resources).run(
            min_age=resources.settings.reconcile_min_age,
            actor="cleanup",
            current_epoch_only=True,
            now=now,
        )
    except ReconcileError as exc:
        log.warning("storage not reconciled: %s", exc)
        return 0
    if result.deleted:
        log.info("storage reconciled: %s", "; ".join(result.lines()))
    return len(result.deleted)


async def purge_records(ctx: dict[str, Any], now: datetime | None = None) -> int:
    """Cron, daily: delete the jobs that ended over ``HANDOVER_RECORD_RETENTION`` ago.

    See :mod:`jobs.records`; returns how many were purged. ``now`` is the current time
    (tests pass one). Redis unavailable: one warning, and the next day's run does it.
    """
    resources = _resources(ctx)
    try:
        result = await Records.of(resources).purge_finished_jobs(actor="retention", now=now)
    except REDIS_UNAVAILABLE as exc:
        log.warning("finished jobs not purged: Redis unavailable (%s); tomorrow's run will", exc)
        return 0
    return result.count


class WorkerContext:
    """Builds the ``on_startup`` / ``on_shutdown`` pair for given settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: ArqRedis | None = None,
        connectors: Mapping[str, Connector] | None = None,
        resources: Resources | None = None,
        retry_policy: RetryPolicy | None = None,
        watch_epoch: bool = True,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.connectors = connectors
        self.resources = resources
        self.retry_policy = retry_policy
        self.watch_epoch = watch_epoch

    async def on_startup(self, ctx: dict[str, Any]) -> None:
        """Open the resources, join the epoch, and start the heartbeat and the epoch watch."""
        stack = AsyncExitStack()
        resources = self.resources
        if resources is None:
            resources = await stack.enter_async_context(
                open_resources(self.settings, redis=self.redis, connectors=self.connectors)
            )
        if isinstance(resources.storage, ExpiringStore):  # an S3 bucket
            await resources.storage.ensure_lifecycle(resources.prefix, self.settings.archive_ttl)
        watch = await _join_epoch(resources) if self.watch_epoch else None
        await resources.keyring.publish(resources.signer)
        ctx[_STACK] = stack
        ctx[_PIPELINES] = build_pipelines(resources, self.retry_policy)
        # Tasks of their own: a cron would run on whichever worker picked it up, and wait
        # for a free slot. Inside the API (``serve``) the API watches the epoch.
        background = [asyncio.create_task(heartbeat(resources.redis))]
        if watch is not None:
            background.append(asyncio.create_task(watch.watch()))
        ctx[_BACKGROUND] = background

    async def on_shutdown(self, ctx: dict[str, Any]) -> None:
        """Stop the heartbeat and the epoch watch, then close the resources."""
        background: list[asyncio.Task[None]] = ctx.pop(_BACKGROUND, [])
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        stack = ctx.pop(_STACK, None)
        if stack is not None:
            await stack.aclose()


async def _join_epoch(resources: Resources) -> EpochWatch:
    async def publish_key() -> None:
        await resources.keyring.publish(resources.signer)

    watch = EpochWatch(Epochs(resources.redis, resources.store.ns), on_lost=publish_key)
    await watch.start()
    return watch


def create_worker(
    settings: Settings,
    *,
    redis: ArqRedis,
    connectors: Mapping[str, Connector] | None = None,
    resources: Resources | None = None,
    retry_policy: RetryPolicy | None = None,
    burst: bool = False,
    poll_delay: float | None = None,
    handle_signals: bool = True,
    watch_epoch: bool = True,
) -> PatientWorker:
    """An arq worker for Handover's tasks on ``redis``.

    ``watch_epoch=False`` leaves noticing a Redis that lost its data to the API the
    worker runs inside (``handover serve``), which watches for the whole process.
    A task due now that the process queues through ``redis`` or ``resources.redis`` (the
    API's own, in ``handover serve``) has the worker poll at once (:mod:`jobs.arqworker`).
    """
    context = WorkerContext(
        settings,
        redis=redis,
        connectors=connectors,
        resources=resources,
        retry_policy=retry_policy,
        watch_epoch=watch_epoch,
    )
    connector_timeout = settings.connector_timeout.total_seconds() + 60
    return PatientWorker(
        functions=[
            # keep_result=0: a run that found its subject busy can be queued again when woken.
            func(
                resolve_identity,
                name=RESOLVE_TASK,
                timeout=connector_timeout,
                max_tries=8,
                keep_result=0,
            ),
            func(
                run_connector, name=RUN_TASK, timeout=connector_timeout, max_tries=8, keep_result=0
            ),
            func(
                finish,
                name=FINISH_TASK,
                timeout=FINISH_TIMEOUT.total_seconds(),
                keep_result=0,
                max_tries=10,
            ),
            func(deliver_webhook, name=DELIVER_TASK, timeout=60, max_tries=WEBHOOK_TRIES + 1),
            func(send_notice, name=NOTICE_TASK, timeout=120, max_tries=NOTICE_TRIES + 1),
            func(tell_recipient, name=RECIPIENT_TASK, timeout=120, max_tries=NOTICE_TRIES + 1),
            func(
                send_breach_notices,
                name=BREACH_NOTICES_TASK,
                timeout=BREACH_NOTICES_TIMEOUT.total_seconds(),
                max_tries=BREACH_NOTICES_TRIES + 1,
                keep_result=0,
            ),
            func(
                deliver_breach_webhook,
                name=BREACH_WEBHOOK_TASK,
                timeout=60,
                max_tries=WEBHOOK_TRIES + 1,
            ),
        ],
        cron_jobs=[
            cron(expire_archives, name="expire_archives", minute=EVERY_5_MINUTES, unique=True),
            cron(watch_deadlines, name="watch_deadlines", minute=EVERY_5_MINUTES, unique=True),
            cron(chase_processors, name="chase_processors", minute=EVERY_5_MINUTES, unique=True),
            cron(
                watch_breach_clocks,
                name="watch_breach_clocks",
                minute=EVERY_5_MINUTES,
                unique=True,
            ),
            cron(
                tell_deferred_disclosures,
                name="tell_deferred_disclosures",
                second={20},
                unique=True,
            ),
            cron(
                watchdog, name="watchdog", second=EVERY_10_SECONDS, unique=True, run_at_startup=True
            ),
            cron(sweep, name="sweep", second={5, 15, 25, 35, 45, 55}, unique=True),
            cron(reconcile_storage, name="reconcile_storage", minute={30}, unique=True),
            cron(
                purge_records,
                name="purge_records",
                hour={PURGE_HOUR},
                minute={PURGE_MINUTE},
                unique=True,
                timeout=PURGE_TIMEOUT.total_seconds(),
            ),
        ],
        queue_name=QUEUE_NAME,
        redis_pool=redis,
        enqueuers=[] if resources is None else [resources.redis],
        on_startup=context.on_startup,
        on_shutdown=context.on_shutdown,
        max_jobs=settings.worker_concurrency,
        burst=burst,
        poll_delay=(
            settings.worker_poll_delay.total_seconds() if poll_delay is None else poll_delay
        ),
        handle_signals=handle_signals,
        job_serializer=serialize,
        job_deserializer=deserialize,
        keep_result=3600,
        allow_abort_jobs=True,
        job_completion_wait=SHUTDOWN_GRACE_SECONDS,
    )
