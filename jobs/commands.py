"""Every change a person can ask for, in one place: requests, and the decisions on them.

::

    request_export · request_erasure (erasure or restriction)
    confirm · cancel · retry · extend · add_identifiers · go_without · record_download

The API's handlers and the dashboard's actions call these (the command-line tools
go through the API), so each change is made one way wherever it is asked for: the
move is checked and written through the job store, what follows is queued, and
the hash-chained audit log gets its entry, naming the actor (a subject under their
keyed pseudonym, staff by id) and the door they came through. Pipelines
(:mod:`jobs.pipeline`) hold only the work. A new request kind plugs in as commands
here, a pipeline (:mod:`jobs.kinds`) and a connector capability.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobs.archive.formats import FORMATS
from jobs.erasure import ErasurePipeline
from jobs.export import protection_of
from jobs.identity import checked_identifiers
from jobs.kinds import build_pipelines
from jobs.model import (
    ActiveJobExists,
    ConnectorRun,
    DownloadLimitReached,
    ErasureOptions,
    ExportOptions,
    ExportScope,
    Identity,
    IllegalTransition,
    InvalidRequest,
    Job,
    JobEnded,
    JobKind,
    JobStatus,
    RunStatus,
    check_transition,
    iso,
    utcnow,
)
from jobs.pipeline import LIVE, Pipeline
from jobs.resources import Resources

#: Art. 12(3): the deadline may be extended by two further months, a month being 30 days.
MAX_EXTENSION_MONTHS = 2
MONTH = timedelta(days=30)


@dataclass(frozen=True)
class Actor:
    """Who asks for a change: a subject or staff (support, admin), and through which door."""

    id: str
    staff: bool
    via: str = "api"


class Commands:
    """The changes people ask for; one instance per process, over its resources."""

    def __init__(
        self, resources: Resources, pipelines: Mapping[JobKind, Pipeline] | None = None
    ) -> None:
        self.resources = resources
        self.pipelines = dict(pipelines or build_pipelines(resources))

    def pipeline(self, kind: JobKind) -> Pipeline:
        """The pipeline that does jobs of ``kind``."""
        return self.pipelines[kind]

    async def audit(self, actor: Actor, action: str, job: Job, **details: Any) -> None:
        """Record ``action`` in the audit log; subjects appear as pseudonyms, never by id."""
        pseudonym = self.resources.signer.pseudonym
        if actor.via != "api":
            details["via"] = actor.via
        await self.resources.audit.append(
            actor.id if actor.staff else pseudonym(actor.id),
            action,
            job.id,
            kind=job.kind.value,
            subject=pseudonym(job.subject),
            **details,
        )

    # Requests.

    async def request_export(
        self,
        actor: Actor,
        *,
        subject: str,
        formats: Sequence[str] | None = None,
        connectors: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        password: str | None = None,
        age_recipient: str | None = None,
        identity: Identity | None = None,
    ) -> Job:
        """A new export (GDPR Art. 15 and 20); one live export per subject at a time.

        ``password`` (AES-256 ZIP) or ``age_recipient`` protect the archive end to
        end; a password is kept with the job only until the archive is written. The
        job's ``scope`` records what was asked and which processors were left out,
        so a partial export is never mistaken for a complete one.
        """
        pipeline = self.pipelines[JobKind.EXPORT]
        formats = list(dict.fromkeys(formats or self.resources.settings.default_formats))
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise InvalidRequest(
                "formats", f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}"
            )
        chosen = pipeline.select_connectors(connectors, categories)
        job = pipeline.new_job(
            JobKind.EXPORT,
            subject=subject,
            requested_by=actor.id,
            connectors=chosen,
            options=ExportOptions(
                formats=formats,
                categories=sorted(set(categories or [])),
                protection=protection_of(password, age_recipient),
                scope=ExportScope(
                    connectors=sorted(set(connectors)) if connectors else "all",
                    categories=sorted(set(categories)) if categories else "all",
                    left_out=[name for name in self.resources.connectors if name not in chosen],
                ),
            ),
            identity=identity,
            archive_password=password,
        )
        active = await self.resources.store.claim_active(JobKind.EXPORT, subject, job.id)
        if active is not None:
            raise ActiveJobExists(JobKind.EXPORT, active)
        await pipeline.submit(job)
        await self.audit(actor, "export.requested", job)
        return job

    async def request_erasure(
        self,
        actor: Actor,
        kind: JobKind,
        *,
        subject: str,
        connectors: Sequence[str] | None = None,
        dry_run: bool = False,
        reason: str | None = None,
        identity: Identity | None = None,
    ) -> Job:
        """A new erasure (Art. 17) or restriction (Art. 18); a real erasure awaits confirmation."""
        pipeline = self.pipelines[kind]
        if not isinstance(pipeline, ErasurePipeline):
            raise InvalidRequest("kind", f"{kind.value} is not an erasure or a restriction")
        confirm = kind is JobKind.ERASURE and not dry_run
        job = pipeline.new_job(
            kind,
            subject=subject,
            requested_by=actor.id,
            connectors=pipeline.select_connectors(connectors),
            options=ErasureOptions.model_validate(
                {"kind": kind.value, "dry_run": dry_run, "reason": reason}
            ),
            status=JobStatus.AWAITING_CONFIRMATION if confirm else JobStatus.QUEUED,
            identity=identity,
        )
        await pipeline.submit(job)
        await self.audit(actor, f"{kind.value}.requested", job, dry_run=dry_run)
        return job

    # Decisions on a request.

    async def confirm(self, actor: Actor, job_id: str) -> Job:
        """Confirm an erasure: it runs after the grace period (``HANDOVER_ERASURE_GRACE``)."""
        now = utcnow()
        grace = self.resources.settings.grace

        def confirmed(job: Job) -> None:
            job.erasure_options.confirmed_at = now
            job.erasure_options.confirmed_by = actor.id
            job.not_before = now + grace

        job = await self._move(
            job_id,
            JobStatus.QUEUED,
            actor,
            event="confirmed",
            expect={JobStatus.AWAITING_CONFIRMATION},
            change=confirmed,
            data={"runs_after": (now + grace).isoformat()},
        )
        await self.pipelines[job.kind].enqueue_runs(job, defer=grace)
        await self.audit(actor, "erasure.confirmed", job)
        return job

    async def cancel(self, actor: Actor, job_id: str, reason: str | None = None) -> Job:
        """Stop a job that has not ended; running connector work is aborted within seconds."""
        job = await self._move(
            job_id,
            JobStatus.CANCELED,
            actor,
            expect=LIVE,
            data={"reason": reason} if reason else None,
        )
        pipeline = self.pipelines[job.kind]
        await pipeline.abort_tasks(job)
        await pipeline.cleanup(job)
        await pipeline.ended(job)
        await self.audit(actor, "job.canceled", job)
        return job

    async def retry(self, actor: Actor, job_id: str) -> Job:
        """Run a failed job again: only its failed connectors; finished ones keep their output."""

        def again(job: Job) -> None:
            job.generation += 1
            job.error = None
            job.identity.resolved = False
            for name, run in job.connectors.items():
                if run.status not in {RunStatus.SUCCEEDED, RunStatus.NOT_ASKED}:
                    job.connectors[name] = ConnectorRun(attempts=run.attempts)

        job = await self._move(
            job_id,
            JobStatus.QUEUED,
            actor,
            event="retried",
            expect={JobStatus.FAILED},
            change=again,
        )
        await self.pipelines[job.kind].enqueue_runs(job)
        await self.audit(actor, "job.retried", job)
        return job

    async def extend(self, actor: Actor, job_id: str, *, months: int, reason: str) -> Job:
        """Extend the deadline by ``months`` (Art. 12(3): two further months at most)."""
        if months < 1:
            raise InvalidRequest("months", "extend by at least one month")

        def extended(job: Job) -> None:
            used = job.extended_months
            if used + months > MAX_EXTENSION_MONTHS:
                raise InvalidRequest(
                    "months",
                    f"the deadline may be extended by {MAX_EXTENSION_MONTHS} months in all; "
                    f"{used} already used",
                )
            job.extended_months = used + months
            job.due_at += months * MONTH

        job = await self._change(
            job_id,
            extended,
            actor,
            "extended",
            {"months": months, "reason": reason},
            action="extend its deadline",
        )
        await self.audit(actor, "job.extended", job, months=months)
        return job

    async def add_identifiers(
        self, actor: Actor, job_id: str, identifiers: Mapping[str, str], verified_by: str
    ) -> Job:
        """Staff supply identifiers, saying how they were verified; only the processors that
        could not be asked run again (after the identity sources, which may now find more).

        A value already known is never replaced. A job that needed attention resumes.
        """
        fresh = checked_identifiers(identifiers)
        if not fresh:
            raise InvalidRequest("identities", "name at least one identifier")
        if not verified_by.strip():
            raise InvalidRequest("verified_by", "say how the subject's identity was verified")

        def added(job: Job) -> None:
            known = job.identity.identifiers
            clashing = sorted(n for n, v in fresh.items() if known.get(n, v) != v)
            if clashing:
                raise InvalidRequest(
                    "identities",
                    f"{', '.join(clashing)} already known with another value; "
                    "cancel this request and file a new one if the subject is someone else",
                )
            new = job.identity.add(
                fresh, {"source": "staff", "verified_by": verified_by.strip(), "by": actor.id}
            )
            if not new:
                raise InvalidRequest("identities", "every identifier named is already known")
            job.identity.resolved = False
            for run in job.connectors.values():
                if run.status is RunStatus.UNIDENTIFIED:
                    run.status = RunStatus.PENDING
                    run.error = None
            if job.status is JobStatus.NEEDS_ATTENTION:
                check_transition(job.id, job.status, JobStatus.QUEUED)
                job.status = JobStatus.QUEUED

        job = await self._change(
            job_id,
            added,
            actor,
            "identifiers.added",
            {"identifiers": sorted(fresh), "verified_by": verified_by.strip()},
            action="add identifiers",
        )
        if job.status in {JobStatus.QUEUED, JobStatus.RUNNING}:
            await self.pipelines[job.kind].enqueue_runs(job)
        await self.audit(actor, "job.identifiers_added", job, identifiers=sorted(fresh))
        return job

    async def go_without(
        self, actor: Actor, job_id: str, connectors: Sequence[str], reason: str
    ) -> Job:
        """Record the decision to finish without processors that could not be asked.

        Each named run must be ``unidentified``; it becomes ``not_asked`` with the
        reason, who decided and when, and every signed document says so. Once no run
        waits, the job finishes.
        """
        if not reason.strip():
            raise InvalidRequest("reason", "say why the request may go without these processors")
        names = list(dict.fromkeys(connectors))
        if not names:
            raise InvalidRequest("connectors", "name the processors to go without")
        decided_at = iso(utcnow())

        def decided(job: Job) -> None:
            for name in names:
                run = job.connectors.get(name)
                if run is None or run.status is not RunStatus.UNIDENTIFIED:
                    state = "not part of this job" if run is None else run.status.value
                    raise InvalidRequest(
                        "connectors", f"{name} is {state}; only unidentified processors qualify"
                    )
                run.status = RunStatus.NOT_ASKED
                run.decision = {"reason": reason.strip(), "by": actor.id, "at": decided_at}
            waiting = any(run.status is RunStatus.UNIDENTIFIED for run in job.connectors.values())
            if job.status is JobStatus.NEEDS_ATTENTION and not waiting:
                check_transition(job.id, job.status, JobStatus.QUEUED)
                job.status = JobStatus.QUEUED

        job = await self._change(
            job_id,
            decided,
            actor,
            "connectors.not_asked",
            {"connectors": names, "reason": reason.strip()},
            action="decide to go without a processor",
        )
        if job.status is JobStatus.QUEUED:
            await self.pipelines[job.kind].enqueue_runs(job)
        await self.audit(actor, "job.not_asked", job, connectors=names)
        return job

    async def record_download(self, actor: Actor, job_id: str, link_ttl_seconds: int) -> Job:
        """Count a download (refusing one past ``HANDOVER_MAX_DOWNLOADS``) and log it."""
        limit = self.resources.settings.max_downloads

        def counted(job: Job) -> None:
            options = job.export_options
            if limit and options.downloads >= limit:
                raise DownloadLimitReached(job.id, limit)
            options.downloads += 1

        job = await self._change(
            job_id,
            counted,
            actor,
            "downloaded",
            {"link_ttl_seconds": link_ttl_seconds},
            action="download it",
            expect={JobStatus.SUCCEEDED},
        )
        await self.audit(actor, "archive.downloaded", job)
        return job

    async def spend_link(self, signature: str, expires: int) -> bool:
        """Use a local-store download link once: ``False`` if it was used already.

        ``HANDOVER_MAX_DOWNLOADS`` counts links minted; a link being single-use makes
        that a count of fetches too. Remembered until the link expires anyway.
        """
        key = f"{self.resources.store.ns}link-used:{signature}"
        ttl_ms = max(1, int((expires - time.time()) * 1000))
        spent: bool | None = await self.resources.redis.set(key, 1, nx=True, px=ttl_ms)
        return bool(spent)

    async def _move(
        self,
        job_id: str,
        target: JobStatus,
        actor: Actor,
        *,
        expect: Iterable[JobStatus],
        event: str | None = None,
        change: Callable[[Job], None] | None = None,
        data: dict[str, Any] | None = None,
    ) -> Job:
        """Move the job to ``target`` from one of ``expect``; from elsewhere, say it can't."""
        job = await self.resources.store.transition(
            job_id, target, actor=actor.id, event=event, data=data, expect=expect, change=change
        )
        if job is None:
            current = await self.resources.store.get(job_id)
            raise IllegalTransition(job_id, current.status, target)
        return job

    async def _change(
        self,
        job_id: str,
        change: Callable[[Job], None],
        actor: Actor,
        event: str,
        data: dict[str, Any],
        *,
        action: str,
        expect: Iterable[JobStatus] = LIVE,
    ) -> Job:
        """Apply ``change`` to a job in one of ``expect`` (a live one by default); from any
        other state, say the job has ended and what could not be done."""
        job = await self.resources.store.modify(
            job_id, change, actor=actor.id, event=event, data=data, expect=expect
        )
        if job is None:
            current = await self.resources.store.get(job_id)
            raise JobEnded(job_id, current.status, action)
        return job


__all__ = ["Actor", "Commands"]
