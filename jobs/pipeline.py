"""What every job kind shares: one task per connector, a gate per subject, fan-in, finish.

::

    submit ──▶ resolve_identity(job, gen) ─┬─▶ run_connector(job, c₁, gen) ─┐ each does its
               takes the subject, runs    ├─▶ run_connector(job, c₂, gen) ─┼─▶ work; the last
               identity sources; a run    └─▶ run_connector(job, cₙ, gen) ─┘ to settle queues
               lacking ids: unidentified                                     finish(job, gen)
                                                                                 │
         succeeded (with the kind's result), or failed naming the connectors, ◀──┘
         or needs_attention naming the processors that could not be asked

arq runs every task at least once, so each step checks before it writes: a
finished run is never redone, a finished job is never refinished, and a stale
generation (the job was retried meanwhile) changes nothing. One job per subject
runs at a time (an export never overlaps an erasure): a job that finds the subject
busy waits and is woken when the running job ends. A disclosure (a kind hidden from
subjects) takes no part in this (:func:`takes_gate`).

A processor that could not be asked never counts as done: its run stays
``unidentified`` until support adds identifiers (:meth:`jobs.commands.Commands.add_identifiers`,
which re-runs only those) or decides, with a reason, to go without it
(:meth:`jobs.commands.Commands.go_without`: the run becomes ``not_asked`` and every
signed document says so). Changes people ask for live in :mod:`jobs.commands`.

Every job reaches an end. Staged output found gone at the finish is made again by
running its connectors as a new generation, :data:`MAX_RESTAGES` times at most; a
permanent storage error at the finish fails the job at once; a job that makes no
progress however often the sweeper queues its work is failed by
:meth:`Pipeline.fail_stalled`. Object storage failing is classed ``storage``
(:func:`classify`), its text saying transient or permanent (:func:`error_text`).

Subclasses say what a connector's work is (:meth:`Pipeline.work`) and what a
finished job's result is (:meth:`Pipeline.complete`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from arq.jobs import Job as ArqJob
from arq.worker import Retry

from connectors.base import Connector
from connectors.byhand import NOT_ASKED_IN_DRY_RUN, ByHandConnector
from connectors.errors import ConnectorError, RateLimited, TransientError, Unidentified
from jobs.audit import AuditEntry
from jobs.handoff import Handoffs
from jobs.identity import (
    check_identifier_value,
    identified,
    resolve_identity,
)
from jobs.ids import new_ulid
from jobs.metrics import seconds_between
from jobs.model import (
    ConnectorRun,
    ErasureOptions,
    Identity,
    InvalidRequest,
    Job,
    JobKind,
    JobStatus,
    Options,
    RunStatus,
    StagedPart,
    iso,
    utcnow,
)
from jobs.notices import notify_subject
from jobs.queue import QUEUE_NAME, REDIS_UNAVAILABLE, deserialize
from jobs.resources import Resources
from jobs.search import HIDDEN_FROM_SUBJECTS
from jobs.storage.base import StorageError
from jobs.store import Alongside, QueuedTask
from jobs.webhooks import DELIVER_TASK
from jobs.webhooks import digest as webhook_digest

log = logging.getLogger("handover.pipeline")

RESOLVE_TASK = "resolve_identity"
RUN_TASK = "run_connector"
FINISH_TASK = "finish"
#: How many times a connector runs again because its staged output vanished before the
#: finish; one more loss fails the job, naming the connectors and the missing objects.
MAX_RESTAGES = 3


@dataclass(frozen=True)
class RetryPolicy:
    """How transient connector failures are retried: exponential backoff with full jitter."""

    max_tries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, error: Exception) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if attempt >= self.max_tries:
            return None
        if isinstance(error, RateLimited):
            return min(max(error.retry_after, 0.0), self.max_delay * 10)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass
class Outcome:
    """What one connector's work produced, recorded on its run."""

    records: int = 0
    bytes: int = 0
    staged_key: str | None = None
    parts: list[StagedPart] = field(default_factory=list)
    report: dict[str, Any] | None = None


class StagingLost(Exception):
    """Staged output that finished runs wrote is gone (e.g. the object store restarted empty).

    ``missing`` maps each connector whose output is gone to the key it was staged at.
    The finish step answers by running those connectors again (:data:`MAX_RESTAGES`
    times at most), not by retrying a read that cannot succeed.
    """

    def __init__(self, missing: Mapping[str, str]) -> None:
        self.missing = dict(sorted(missing.items()))
        super().__init__(
            "staged output gone: " + ", ".join(f"{n} ({k})" for n, k in self.missing.items())
        )


def error_text(exc: BaseException) -> str:
    """An error as one bounded line for the job record; a storage error says which kind."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, StorageError):
        text = f"{exc.kind} storage error: {text}"
    return text if len(text) <= 500 else text[:497] + "..."


def classify(exc: BaseException) -> str:
    """The error classes the API reports: transient, permanent, storage, or internal (a bug).

    ``storage`` is object storage failing (misconfigured, full, unreachable); whether
    it is transient or permanent is in the error's text (:func:`error_text`).
    """
    if isinstance(exc, StorageError):
        return "storage"
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, ConnectorError):
        return "permanent"
    return "internal"


def takes_gate(job: Job) -> bool:
    """Whether ``job`` runs one at a time with its subject's other jobs (the subject's gate).

    A kind hidden from subjects (a disclosure, :data:`jobs.search.HIDDEN_FROM_SUBJECTS`)
    only reads, and its archive is the recipient's, outside the subject's own copies: it
    neither waits for the subject's jobs nor holds them back, so no job the subject sees
    ever waits for, or names, a job they must not learn of.
    """
    return job.kind not in HIDDEN_FROM_SUBJECTS


def last_progress(job: Job) -> datetime:
    """When the job last moved: its record changed, or one of its runs started or finished."""
    moments = [job.updated_at]
    for run in job.connectors.values():
        moments += [m for m in (run.started_at, run.finished_at) if m is not None]
    return max(moments)


def progress_mark(job: Job) -> str:
    """What changes whenever the job makes progress (the sweeper counts sweeps between)."""
    return f"{job.generation}|{job.status.value}|{iso(last_progress(job))}"


def _webhooks(urls: Iterable[str], job: Job, event: str) -> list[tuple[tuple[str, str, str], str]]:
    """The webhook tasks telling ``urls`` of ``event``: arguments and task id of each; none
    for a kind hidden from subjects (a disclosure): the platform acts for its subjects, and
    its hooks would name the subject of a disclosure they may not learn of."""
    if job.kind in HIDDEN_FROM_SUBJECTS:
        return []
    tasks = []
    for url in urls:
        target = webhook_digest(url)  # the task names the URL without its token
        tasks.append(
            ((target, job.id, event), f"webhook:{target}:{job.id}:{event}:{job.generation}")
        )
    return tasks


def run_task_id(job: Job, connector: str) -> str:
    """arq's id for a connector run: deterministic, so a run is queued once at a time."""
    return f"run:{job.id}:{job.generation}:{connector}"


def resolve_task_id(job: Job) -> str:
    """arq's id for the job's identity step: deterministic, like a run's."""
    return f"resolve:{job.id}:{job.generation}"


LIVE = frozenset(
    {
        JobStatus.AWAITING_CONFIRMATION,
        JobStatus.AWAITING_INFORMATION,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.NEEDS_ATTENTION,
    }
)
"""The states of a job that has not ended."""


class Pipeline(ABC):
    """The work of one or more job kinds; one instance per process, shared by tasks."""

    kinds: ClassVar[tuple[JobKind, ...]]

    def __init__(self, resources: Resources, retry_policy: RetryPolicy | None = None) -> None:
        self.resources = resources
        self.retry_policy = retry_policy or RetryPolicy()

    def select_connectors(
        self, names: Sequence[str] | None, categories: Sequence[str] | None = None
    ) -> list[str]:
        """The connectors a request asks for, checked against what is configured."""
        available = self.resources.connectors
        if names:
            unknown = sorted(set(names) - set(available))
            if unknown:
                raise InvalidRequest(
                    "connectors",
                    f"unknown connector(s) {', '.join(unknown)}; known: {', '.join(available)}",
                )
            chosen = [name for name in available if name in set(names)]
        else:
            chosen = list(available)
        if categories:
            wanted = set(categories)
            chosen = [
                name for name in chosen if wanted & {d.category for d in available[name].datasets}
            ]
            if not chosen:
                raise InvalidRequest(
                    "categories", f"no connector holds data in {', '.join(sorted(wanted))}"
                )
        if not chosen:
            raise InvalidRequest("connectors", "no connector is configured")
        return chosen

    def new_job(
        self,
        kind: JobKind,
        *,
        subject: str,
        requested_by: str,
        connectors: Sequence[str],
        options: Options,
        status: JobStatus = JobStatus.QUEUED,
        identity: Identity | None = None,
        archive_password: str | None = None,
        jurisdiction: str | None = None,
    ) -> Job:
        """A job received now, due when its jurisdiction says (default: ``HANDOVER_JURISDICTION``).

        The due date and the acknowledgement deadline are computed here, once
        (:mod:`jobs.lifecycle`), and stored with the job.
        """
        check_identifier_value(subject, "subject")
        settings = self.resources.settings
        profile = settings.profile(jurisdiction)
        now = utcnow()
        return Job(
            id=new_ulid(),
            kind=kind,
            subject=subject,
            status=status,
            requested_by=requested_by,
            created_at=now,
            updated_at=now,
            due_at=profile.due_at(now, settings.zone),
            jurisdiction=profile.name,
            acknowledge_by=profile.acknowledge_by(now, settings.zone),
            options=options,
            connectors={name: ConnectorRun() for name in connectors},
            identity=identity or Identity(),
            archive_password=archive_password,
        )

    async def submit(
        self,
        job: Job,
        *,
        claim_active: bool = False,
        audit: AuditEntry | None = None,
        alongside: Sequence[Alongside] = (),
    ) -> Job:
        """Store a new job with what begins it, in one step (:meth:`JobStore.create`).

        Its ``job.created`` webhooks, its first task if it is queued (the identity
        step, as :meth:`enqueue_runs` would queue it), the subject's one live job of its
        kind with ``claim_active`` (:class:`~jobs.model.ActiveJobExists` otherwise),
        ``audit``'s entry, sealed into the chain in the background, and what is stored
        ``alongside`` it (the subject's notices): all, or nothing.
        """
        tasks = [
            self._task(DELIVER_TASK, *args, task_id=task_id)
            for args, task_id in _webhooks(self.resources.settings.webhook_urls, job, "job.created")
        ]
        if job.status is JobStatus.QUEUED:
            task_id = resolve_task_id(job)
            tasks.append(
                self._task(RESOLVE_TASK, job.kind.value, job.id, job.generation, task_id=task_id)
            )
        await self.resources.store.create(
            job, tasks=tasks, claim_active=claim_active, audit=audit, alongside=alongside
        )
        if audit is not None:
            self.resources.audit.seal_soon()
        return job

    def _task(self, function: str, *args: Any, task_id: str) -> QueuedTask:
        """arq's task ``function(*args)`` as ``enqueue_job`` would queue it now, undeferred."""
        return QueuedTask.now(self.resources.redis, function, *args, task_id=task_id)

    async def notify(self, job: Job, event: str) -> None:
        """Queue a signed webhook to every configured URL (once per job, event and generation)."""
        for args, task_id in _webhooks(self.resources.settings.webhook_urls, job, event):
            await self.resources.redis.enqueue_job(DELIVER_TASK, *args, _job_id=task_id)

    async def enqueue_runs(
        self, job: Job, defer: timedelta | None = None, *, again: bool = False
    ) -> None:
        """Queue the job's next step: its identity step, or its runs that have not settled.

        Until the job runs with its identity resolved, the identity step comes first;
        it takes the subject and queues the runs. Task ids are deterministic, so
        queuing twice queues once. ``again`` queues a fresh copy even so: for a task
        lost with its worker before it took its lease (the lease makes a duplicate
        harmless). A job that cannot run now (waiting for the subject's information or
        confirmation, ended) gets nothing: the step that lets it run queues it. A task
        queued meanwhile would end at once, and its id, kept with its result, would
        refuse that step's (a processor's reply taken while the subject was asked for
        information left the resumed job queued until the sweeper came).
        """
        if job.status not in {JobStatus.QUEUED, JobStatus.RUNNING}:
            return
        nonce = f"|again|{uuid.uuid4().hex[:8]}" if again else ""
        if not job.identity.resolved or job.status is not JobStatus.RUNNING:
            await self.resources.redis.enqueue_job(
                RESOLVE_TASK,
                job.kind.value,
                job.id,
                job.generation,
                _job_id=resolve_task_id(job) + nonce,
                _defer_by=defer,
            )
            return
        for name, run in job.connectors.items():
            if not run.status.settled:
                await self.resources.redis.enqueue_job(
                    RUN_TASK,
                    job.kind.value,
                    job.id,
                    name,
                    job.generation,
                    _job_id=run_task_id(job, name) + nonce,
                    _defer_by=defer,
                )

    @abstractmethod
    async def work(self, connector: Connector, job: Job) -> Outcome:
        """One connector's share of the job. Raise to fail it (transient errors retry)."""

    @abstractmethod
    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Produce the finished job's result; returns the change that records it."""

    async def cleanup(self, job: Job) -> None:
        """Remove what the job no longer needs once it has ended (nothing by default)."""

    async def resolve(self, job_id: str, generation: int, attempt: int = 1) -> None:
        """The job's first step: take the subject, learn its identifiers, queue the runs.

        Done under a lease, like a connector run. Identity sources run in dependency
        order; a transient failure retries the step with backoff, and once retries
        are spent the source's failure is recorded and the job goes on without what
        it would have found. Runs that can be given none of their identifiers end
        ``unidentified`` without being queued.
        """
        unit = f"resolve|{job_id}|{generation}|"
        task_args = [self.kinds[0].value, job_id, generation]
        async with self.resources.leases.hold(unit, RESOLVE_TASK, task_args) as held:
            if held:
                await self._resolve(job_id, generation, attempt)

    async def _resolve(self, job_id: str, generation: int, attempt: int) -> None:
        store = self.resources.store
        job = await store.get(job_id)
        if job.generation != generation or job.status not in {JobStatus.QUEUED, JobStatus.RUNNING}:
            return
        if job.not_before is not None and utcnow() < job.not_before:
            return  # woken early; the deferred step will come
        if job.status is JobStatus.QUEUED:
            holder = await store.claim_subject(job.subject, job.id) if takes_gate(job) else None
            if holder is not None:
                await store.add_event(job_id, "waiting", "worker", {"for": holder})
                return
            started = await store.transition(
                job_id,
                JobStatus.RUNNING,
                actor="worker",
                event="started",
                expect={JobStatus.QUEUED},
            )
            job = started or await store.get(job_id)
            if job.status is not JobStatus.RUNNING or job.generation != generation:
                return
        if job.identity.resolved:
            await self.enqueue_runs(job)
            await self.fan_in(job)
            return
        timeout = self.resources.settings.connector_timeout
        sources = self.resources.identity_sources
        last_try = attempt >= self.retry_policy.max_tries
        try:
            resolution = await resolve_identity(
                sources, job.subject_view, time_limit=timeout, tolerate_transient=last_try
            )
        except TransientError as exc:
            delay = self.retry_policy.delay(attempt, exc) or 0.0
            await store.add_event(job_id, "identity.retrying", "worker", {"error": error_text(exc)})
            raise Retry(defer=delay) from exc
        connectors = self.resources.connectors
        unidentified: list[str] = []

        def resolved(job: Job) -> None:
            for evidence in resolution.evidence:
                found = {name: resolution.found[name] for name in evidence["identifiers"]}
                job.identity.add(found, {k: v for k, v in evidence.items() if k != "identifiers"})
            job.identity.resolved = True
            subject = job.subject_view
            unidentified.clear()
            for name, run in job.connectors.items():
                if run.status is RunStatus.PENDING and not identified(connectors[name], subject):
                    run.status = RunStatus.UNIDENTIFIED
                    run.error = _needs(connectors[name].identifiers)
                    run.error_class = None
                    unidentified.append(name)

        after = await store.modify(
            job_id,
            resolved,
            actor="worker",
            event="identity.resolved",
            data={
                "identifiers": sorted(resolution.found),
                "failures": resolution.failures,
                "unidentified": unidentified,
            },
            expect={JobStatus.RUNNING},
        )
        if after is None or after.generation != generation:
            return
        await self.enqueue_runs(after)
        await self.fan_in(after)

    async def run_connector(
        self, job_id: str, name: str, generation: int, attempt: int = 1
    ) -> None:
        """Do one connector's work for the job; the last run to finish queues the finish.

        The work is done under a lease (:mod:`jobs.leases`): if this worker dies, the
        watchdog queues the run again within seconds; if another live worker holds
        the lease, this (duplicate) delivery does nothing.
        """
        unit = f"run|{job_id}|{generation}|{name}"
        task_args = [self.kinds[0].value, job_id, name, generation]
        async with self.resources.leases.hold(unit, RUN_TASK, task_args) as held:
            if held:
                await self._run_connector(job_id, name, generation, attempt)

    async def _run_connector(self, job_id: str, name: str, generation: int, attempt: int) -> None:
        store = self.resources.store
        job = await store.get(job_id)
        if job.generation != generation or job.status.terminal:
            return
        if job.not_before is not None and utcnow() < job.not_before:
            return  # a run woken early; the deferred one will come
        if not job.identity.resolved:
            return  # the identity step queues the runs once it is done
        if job.connectors[name].status.settled:
            await self.fan_in(job)
            return
        if job.status is not JobStatus.RUNNING:
            return  # the identity step takes the subject and queues the runs

        def started(run: ConnectorRun) -> None:
            run.status = RunStatus.RUNNING
            run.attempts += 1
            run.started_at = utcnow()
            run.error = run.error_class = run.error_detail = None

        if (
            await store.update_run(
                job_id, name, started, generation=generation, event="connector.started"
            )
            is None
        ):
            return
        connector = self.resources.connectors[name]
        timeout = self.resources.settings.connector_timeout
        try:
            if not identified(connector, job.subject_view):
                raise Unidentified(name, connector.identifiers)
            if isinstance(connector, ByHandConnector) and _dry_run(job):
                await self._not_asked_in_dry_run(job_id, name, generation)
                return
            if isinstance(connector, ByHandConnector):
                if job.connectors[name].reply is None:
                    await Handoffs(self.resources).ask(job, connector)
                    return  # the run waits for the person, holding no worker
                connector = Handoffs(self.resources).answered(connector, job)
            async with asyncio.timeout(timeout.total_seconds()):
                outcome = await self.work(connector, job)
        except Unidentified as exc:
            await self._unidentified_run(job_id, name, generation, exc)
            return
        except REDIS_UNAVAILABLE:
            raise  # Handover's own store, not the processor: the task is queued again
        except (TransientError, StorageError) as exc:
            permanent = isinstance(exc, StorageError) and not exc.transient
            delay = None if permanent else self.retry_policy.delay(attempt, exc)
            if delay is None:
                await self._fail_run(job_id, name, generation, exc)
                return
            await store.add_event(
                job_id,
                "connector.retrying",
                "worker",
                {"connector": name, "error": error_text(exc), "delay": round(delay, 3)},
            )
            raise Retry(defer=delay) from exc
        except TimeoutError:
            await self._fail_run(
                job_id, name, generation, TransientError(f"timed out after {timeout}")
            )
            return
        except Exception as exc:
            await self._fail_run(job_id, name, generation, exc)
            return

        def succeeded(run: ConnectorRun) -> None:
            run.status = RunStatus.SUCCEEDED
            run.finished_at = utcnow()
            run.records = outcome.records
            run.bytes = outcome.bytes
            run.staged_key = outcome.staged_key
            run.parts = outcome.parts
            run.report = outcome.report

        after = await store.update_run(
            job_id,
            name,
            succeeded,
            generation=generation,
            event="connector.succeeded",
            data={"records": outcome.records},
        )
        if after is not None:
            run = after.connectors[name]
            await self.resources.metrics.observe(
                "handover_connector_duration_seconds",
                seconds_between(run.started_at, run.finished_at),
                connector=name,
                status="succeeded",
            )
            await self.fan_in(after)

    async def _unidentified_run(
        self, job_id: str, name: str, generation: int, exc: Unidentified
    ) -> None:
        """The processor could not be asked: the run waits for identifiers or a decision."""

        def unidentified(run: ConnectorRun) -> None:
            run.status = RunStatus.UNIDENTIFIED
            run.finished_at = utcnow()
            run.error = _needs(exc.needs)
            run.error_class = None

        after = await self.resources.store.update_run(
            job_id,
            name,
            unidentified,
            generation=generation,
            event="connector.unidentified",
            data={"needs": list(exc.needs)},
        )
        if after is not None:
            await self.fan_in(after)

    async def _not_asked_in_dry_run(self, job_id: str, name: str, generation: int) -> None:
        """A dry run asks no person: the run is ``not_asked``, saying so, and every signed
        document states the processor was not asked (never that it holds nothing)."""
        decision = {"reason": NOT_ASKED_IN_DRY_RUN, "by": "handover", "at": iso(utcnow())}

        def not_asked(run: ConnectorRun) -> None:
            run.status = RunStatus.NOT_ASKED
            run.finished_at = utcnow()
            run.decision = decision

        after = await self.resources.store.update_run(
            job_id,
            name,
            not_asked,
            generation=generation,
            event="connector.not_asked",
            data={"reason": NOT_ASKED_IN_DRY_RUN},
        )
        if after is not None:
            await self.fan_in(after)

    async def _fail_run(self, job_id: str, name: str, generation: int, exc: BaseException) -> None:
        error_class = classify(exc)
        message, detail = error_text(exc), getattr(exc, "detail", None)
        if error_class == "internal":
            # A bug's message may quote anything, the subject's data included: the log
            # gets its class and where it was raised, staff its class, admins its text.
            # Frames only: the message may hold anything, a source line a literal.
            where = "".join(
                f"  {frame.filename}:{frame.lineno} in {frame.name}\n"
                for frame in traceback.extract_tb(exc.__traceback__)
            )
            log.error(
                "connector %s failed unexpectedly in job %s: %s, raised at\n%s",
                name,
                job_id,
                type(exc).__name__,
                where,
            )
            message, detail = f"internal error ({type(exc).__name__}), a bug", message

        def failed(run: ConnectorRun) -> None:
            run.status = RunStatus.FAILED
            run.finished_at = utcnow()
            run.error = message
            run.error_class = error_class
            run.error_detail = detail

        after = await self.resources.store.update_run(
            job_id,
            name,
            failed,
            generation=generation,
            event="connector.failed",
            data={"error": message, "error_class": error_class},
        )
        if after is not None:
            metrics = self.resources.metrics
            run = after.connectors[name]
            await metrics.count(
                "handover_connector_errors_total", connector=name, error_class=error_class
            )
            await metrics.observe(
                "handover_connector_duration_seconds",
                seconds_between(run.started_at, run.finished_at),
                connector=name,
                status="failed",
            )
            await self.fan_in(after)

    async def fan_in(self, job: Job, *, again: bool = False) -> None:
        """Queue the finish once every run has settled (idempotent; ``again`` as above),
        and none waits on a person's reply (:mod:`jobs.handoff` queues the run again)."""
        if job.waiting_on_processor:
            return
        if all(run.status.settled for run in job.connectors.values()):
            task_id = f"finish:{job.id}:{job.generation}"
            if again:
                task_id += f"|again|{uuid.uuid4().hex[:8]}"
            await self.resources.redis.enqueue_job(
                FINISH_TASK, job.kind.value, job.id, job.generation, _job_id=task_id
            )

    async def finish(self, job_id: str, generation: int, attempt: int = 1) -> None:
        """End the job once every run has finished: its result, or a failure naming why.

        Done under a lease, like a connector run. Object storage failing transiently
        (the archive upload) is retried with backoff, the archive rewritten from the
        start; once retries are spent the task fails and the sweeper queues it again,
        until the job counts as stalled (:func:`jobs.worker.sweep`). A permanent
        storage error fails the job at once, saying so. Staged output found gone is
        made again: its connectors run again, as a new generation of the job
        (:data:`MAX_RESTAGES` times at most).
        """
        unit = f"finish|{job_id}|{generation}|"
        task_args = [self.kinds[0].value, job_id, generation]
        async with self.resources.leases.hold(unit, FINISH_TASK, task_args) as held:
            if not held:
                return
            try:
                await self._finish(job_id, generation)
            except StorageError as exc:
                if not exc.transient:
                    await self._fail_finish(job_id, generation, exc)
                    return
                delay = self.retry_policy.delay(attempt, exc)
                await self.resources.store.add_event(
                    job_id,
                    "finish.retrying" if delay is not None else "finish.error",
                    "worker",
                    {"error": error_text(exc), "error_class": "storage"},
                )
                if delay is None:
                    raise
                raise Retry(defer=delay) from exc

    async def _fail_finish(self, job_id: str, generation: int, exc: StorageError) -> None:
        """The finish met a storage error that trying again cannot mend: the job fails."""
        message = error_text(exc)

        def record_failure(job: Job) -> None:
            if job.generation != generation:
                raise _Moved
            job.error = f"could not finish: {message}"

        with contextlib.suppress(_Moved):
            ended = await self.resources.store.transition(
                job_id,
                JobStatus.FAILED,
                actor="worker",
                expect={JobStatus.RUNNING},
                change=record_failure,
                data={"error": message, "error_class": "storage"},
            )
            if ended is not None:
                await self.ended(ended)

    async def _restage(self, job: Job, lost: StagingLost) -> None:
        """Run again the connectors whose staged output is gone, as a new generation.

        A new generation gives the runs fresh task ids, staging keys and a fresh finish,
        and makes any late worker of the old one harmless. A connector whose output
        was already made again :data:`MAX_RESTAGES` times fails instead, with the job.
        """
        names = sorted(lost.missing)
        missing = [lost.missing[name] for name in names]
        spent = [name for name in names if job.connectors[name].restages >= MAX_RESTAGES]
        if spent:
            await self._fail_restaging(job, lost, spent)
            return
        restage = max(job.connectors[name].restages for name in names) + 1

        def restaged(current: Job) -> None:
            if current.generation != job.generation:
                raise _Moved
            current.generation += 1
            for name in names:
                before = current.connectors[name]
                current.connectors[name] = ConnectorRun(
                    attempts=before.attempts,
                    restages=before.restages + 1,
                    handoff=before.handoff,  # a person's reply is not asked for twice
                    reply=before.reply,
                )

        with contextlib.suppress(_Moved):
            after = await self.resources.store.modify(
                job.id,
                restaged,
                actor="worker",
                event="staging.lost",
                data={
                    "connectors": names,
                    "missing": missing,
                    "restage": restage,
                    "max_restages": MAX_RESTAGES,
                    "generation": job.generation + 1,
                },
                expect={JobStatus.RUNNING},
            )
            if after is not None:
                log.warning("job %s: staged output of %s gone; run again", job.id, names)
                await self.enqueue_runs(after)

    async def _fail_restaging(self, job: Job, lost: StagingLost, spent: list[str]) -> None:
        names = sorted(lost.missing)
        gone = ", ".join(f"{name} ({lost.missing[name]})" for name in names)
        reason = (
            f"staged output vanished again after {MAX_RESTAGES} restages of "
            f"{', '.join(spent)}; missing: {gone}"
        )

        def record_failure(current: Job) -> None:
            if current.generation != job.generation:
                raise _Moved
            current.error = reason
            now = utcnow()
            for name in names:
                run = current.connectors[name]
                run.status = RunStatus.FAILED
                run.finished_at = now
                run.error = f"permanent storage error: staged output {lost.missing[name]!r} gone"
                run.error_class = "storage"

        with contextlib.suppress(_Moved):
            ended = await self.resources.store.transition(
                job.id,
                JobStatus.FAILED,
                actor="worker",
                expect={JobStatus.RUNNING},
                change=record_failure,
                data={
                    "connectors": names,
                    "missing": [lost.missing[name] for name in names],
                    "error": reason,
                    "error_class": "storage",
                },
            )
            if ended is not None:
                await self.ended(ended)

    async def fail_stalled(self, job: Job, sweeps: int) -> Job | None:
        """End a live job whose work was queued again ``sweeps`` times without progress.

        Fails it, saying what never finished and the last error seen, unless it made
        progress meanwhile (then ``None``). Failed, not ``needs_attention``: nothing
        a person supplies resumes it, while a retry (:meth:`jobs.commands.Commands.retry`)
        runs its unfinished work again as a new generation.
        """
        since = last_progress(job)
        unsettled = sorted(n for n, run in job.connectors.items() if not run.status.settled)
        if not job.identity.resolved or job.status is JobStatus.QUEUED:
            stuck = "its identity step never completed"
        elif unsettled:
            stuck = "connector(s) never finished: " + ", ".join(
                f"{name} ({job.connectors[name].status.value})" for name in unsettled
            )
        else:
            stuck = "its finish step never completed"
        errors = [
            event.data["error"]
            for event in await self.resources.store.events(job.id)
            if event.at >= since and isinstance(event.data.get("error"), str)
        ]
        reason = (
            f"stalled: no progress since {iso(since)} though its work was queued again "
            f"{sweeps} times; {stuck}" + (f"; last error: {errors[-1]}" if errors else "")
        )

        def record_failure(current: Job) -> None:
            if current.generation != job.generation or last_progress(current) != since:
                raise _Moved  # it moved after all
            current.error = reason
            now = utcnow()
            for name in unsettled:
                run = current.connectors[name]
                run.error = f"stalled: never finished ({run.status.value} when given up)"
                run.status = RunStatus.FAILED
                run.finished_at = now

        with contextlib.suppress(_Moved):
            ended = await self.resources.store.transition(
                job.id,
                JobStatus.FAILED,
                actor="watchdog",
                expect={job.status},
                change=record_failure,
                data={"error": reason, "sweeps": sweeps},
            )
            if ended is not None:
                await self.ended(ended)
            return ended
        return None

    async def _finish(self, job_id: str, generation: int) -> None:
        store = self.resources.store
        job = await store.get(job_id)
        if (
            job.generation != generation
            or job.status is not JobStatus.RUNNING
            or job.waiting_on_processor
        ):
            return
        failed = {
            name: run for name, run in job.connectors.items() if run.status is RunStatus.FAILED
        }
        if failed:
            summary = "; ".join(f"{name}: {run.error}" for name, run in failed.items())

            def record_failure(job: Job) -> None:
                job.error = f"connector(s) failed: {summary}"

            ended = await store.transition(
                job_id,
                JobStatus.FAILED,
                actor="worker",
                expect={JobStatus.RUNNING},
                change=record_failure,
                data={"connectors": sorted(failed)},
            )
        elif any(run.status is RunStatus.UNIDENTIFIED for run in job.connectors.values()):
            waiting = sorted(
                name for name, run in job.connectors.items() if run.status is RunStatus.UNIDENTIFIED
            )
            paused = await store.transition(
                job_id,
                JobStatus.NEEDS_ATTENTION,
                actor="worker",
                expect={JobStatus.RUNNING},
                data={"unidentified": waiting},
            )
            if paused is not None:
                await self.notify(paused, "job.needs_attention")
                await self.release_subject(paused)
            return
        elif all(
            run.status in {RunStatus.SUCCEEDED, RunStatus.NOT_ASKED}
            for run in job.connectors.values()
        ):
            try:
                change = await self.complete(job)
            except StagingLost as lost:
                await self._restage(job, lost)
                return
            # Queued before the move, which forgets the address; the notice waits for it.
            await notify_subject(self.resources, job, "completed")
            ended = await store.transition(
                job_id,
                JobStatus.SUCCEEDED,
                actor="worker",
                expect={JobStatus.RUNNING},
                change=change,
            )
        else:
            return
        if ended is not None:
            await self.ended(ended)
            if ended.status is JobStatus.SUCCEEDED:
                await self._clean_up_after(ended)

    async def _clean_up_after(self, job: Job) -> None:
        """Delete what the succeeded job no longer needs (:meth:`cleanup`), after it ended:
        a store failing here leaves objects behind, never the job unended. They are
        the job's own (not orphans, :mod:`jobs.reconcile`), and go with its record
        (:mod:`jobs.records`); the timeline says so (``cleanup.failed``)."""
        try:
            await self.cleanup(job)
        except StorageError as exc:
            log.warning("job %s: cleanup after it succeeded failed: %s", job.id, exc)
            await self.resources.store.add_event(
                job.id,
                "cleanup.failed",
                "worker",
                {"error": error_text(exc), "error_class": "storage"},
            )

    async def ended(self, job: Job) -> None:
        """The job has ended: tell the platform, free its subject, wake the jobs waiting for it."""
        await self.resources.metrics.observe(
            "handover_job_duration_seconds",
            seconds_between(job.created_at, job.updated_at),
            kind=job.kind.value,
            status=job.status.value,
        )
        await self.notify(job, f"job.{job.status.value}")
        await self.release_subject(job)

    async def release_subject(self, job: Job) -> None:
        """The job no longer works on its subject: wake the jobs waiting for it (none wait
        for a job that never takes the gate, :func:`takes_gate`)."""
        if not takes_gate(job):
            return
        store = self.resources.store
        for waiting_id in await store.release_subject(job.subject, job.id):
            with contextlib.suppress(Exception):
                waiting = await store.get(waiting_id)
                if waiting.status is JobStatus.QUEUED:
                    await self.enqueue_runs(waiting)

    async def abort_tasks(self, job: Job) -> None:
        """Abort the job's queued or running tasks (its identity step and its runs)."""
        for task_id in [resolve_task_id(job), *(run_task_id(job, name) for name in job.connectors)]:
            arq_job = ArqJob(
                task_id,
                self.resources.redis,
                _queue_name=QUEUE_NAME,
                _deserializer=deserialize,
            )
            with contextlib.suppress(TimeoutError):
                await arq_job.abort(timeout=0)


class _Moved(Exception):
    """The job moved on (a new generation, or progress) since it was read: change nothing."""


def _dry_run(job: Job) -> bool:
    """A dry run asks no person: a by-hand processor's run is ``not_asked``."""
    return isinstance(job.options, ErasureOptions) and job.options.dry_run


def _needs(identifiers: Iterable[str]) -> str:
    return f"not asked: needs the subject's {' or '.join(sorted(identifiers))}, and none is known"
