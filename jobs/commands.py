"""Every change a person can ask for, in one place: requests, and the decisions on them.

::

    request_export · request_erasure (erasure or restriction)
    confirm · cancel · retry · extend · refuse · ask · answer · resume
    add_identifiers · go_without · record_download

Extensions, refusals and requests for information follow the job's jurisdiction
(:mod:`jobs.lifecycle`) and tell the subject (:func:`jobs.notices.notify_subject`):
an extension only while the law still allows one to be announced, with its reason; a
refusal with its grounds, reason and where to complain; a request for information with
what is needed, the clock standing still meanwhile when the jurisdiction says so.

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
from datetime import datetime, timedelta
from typing import Any

from jobs.archive.formats import FORMATS
from jobs.audit import AuditEntry
from jobs.erasure import ErasurePipeline
from jobs.export import protection_of
from jobs.identity import checked_identifiers
from jobs.kinds import build_pipelines
from jobs.lifecycle import Jurisdiction, NotAllowed, RefusalGrounds, Unit
from jobs.model import (
    ConnectorRun,
    DownloadLimitReached,
    ErasureOptions,
    ExportOptions,
    ExportScope,
    Identity,
    IllegalTransition,
    InformationRequest,
    InvalidRequest,
    Job,
    JobEnded,
    JobKind,
    JobStatus,
    Refusal,
    RunStatus,
    check_transition,
    iso,
    utcnow,
)
from jobs.notices import notify_subject
from jobs.pipeline import LIVE, Pipeline
from jobs.resources import Resources


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
        """Record ``action`` in the audit log (chained in the background, :mod:`jobs.audit`)."""
        await self.resources.audit.record(self.audit_entry(actor, action, job, **details))

    def audit_entry(self, actor: Actor, action: str, job: Job, **details: Any) -> AuditEntry:
        """The audit entry of ``action``; subjects appear as pseudonyms, never by id."""
        pseudonym = self.resources.signer.pseudonym
        if actor.via != "api":
            details["via"] = actor.via
        return self.resources.audit.entry(
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
        jurisdiction: str | None = None,
        locale: str | None = None,
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
                locale=locale,
            ),
            identity=identity,
            archive_password=password,
            jurisdiction=jurisdiction,
        )
        # One step: the subject's one live export claimed, the job, its first task, its entry.
        await pipeline.submit(
            job, claim_active=True, audit=self.audit_entry(actor, "export.requested", job)
        )
        await notify_subject(self.resources, job, "acknowledged")
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
        jurisdiction: str | None = None,
        locale: str | None = None,
    ) -> Job:
        """A new erasure (Art. 17) or restriction (Art. 18); a real erasure awaits confirmation.

        The subject is told it was received; an erasure, that it awaits their confirmation.
        """
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
                {"kind": kind.value, "dry_run": dry_run, "reason": reason, "locale": locale}
            ),
            status=JobStatus.AWAITING_CONFIRMATION if confirm else JobStatus.QUEUED,
            identity=identity,
            jurisdiction=jurisdiction,
        )
        entry = self.audit_entry(actor, f"{kind.value}.requested", job, dry_run=dry_run)
        await pipeline.submit(job, audit=entry)
        # Every request is acknowledged (CCPA: within 10 business days); an erasure that
        # waits for its confirmation also says so, a letter that may be skipped if the
        # subject confirms before it goes.
        await notify_subject(self.resources, job, "acknowledged")
        if confirm:
            await notify_subject(self.resources, job, "awaiting_confirmation")
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

    async def extend(
        self,
        actor: Actor,
        job_id: str,
        *,
        reason: str,
        months: int | None = None,
        days: int | None = None,
    ) -> Job:
        """Extend the deadline as the job's jurisdiction allows, and tell the subject why.

        Only while an extension may still be announced (GDPR Art. 12(3): within the
        first month), by at most what the law allows in all (GDPR: two further months;
        CCPA: 45 days, once), counted in its unit: ``months`` or ``days``; neither
        given, by all that is left. Past the window, or where the law allows none, it is
        refused with :class:`~jobs.lifecycle.NotAllowed` naming the rule.
        """
        reason = reason.strip()
        if len(reason) < 3:
            raise InvalidRequest("reason", "say why; the subject is told (GDPR Art. 12(3))")
        settings = self.resources.settings
        now = utcnow()
        told: dict[str, Any] = {"reason": reason}

        def extended(job: Job) -> None:
            profile = settings.profile(job.jurisdiction)
            by, used = _extension(profile, job, months, days)
            paused = job.paused_for(now)
            profile.check_extension(
                by=by,
                used=used,
                received=job.created_at,
                paused=paused,
                zone=settings.zone,
                now=now,
            )
            assert profile.extension is not None  # check_extension refused otherwise
            if profile.extension.unit is Unit.MONTHS:
                job.extended_months = used + by
            else:
                job.extended_days = used + by
            job.due_at = profile.due_at(
                job.created_at,
                settings.zone,
                extended=used + by,
                paused=timedelta(milliseconds=job.clock_paused_ms),
            )
            told.update(
                {profile.extension.unit.value.replace(" ", "_"): by, "due_at": iso(job.due_at)}
            )

        job = await self._change(
            job_id, extended, actor, "extended", told, action="extend its deadline"
        )
        await self.audit(
            actor, "job.extended", job, **{k: v for k, v in told.items() if k != "reason"}
        )
        await self._decided(job, "extended")
        await notify_subject(self.resources, job, "extended", reason=reason, due_at=job.due_at)
        return job

    async def refuse(self, actor: Actor, job_id: str, *, grounds: str, reason: str) -> Job:
        """Refuse a request (GDPR Art. 12(4), 12(5)): it ends ``refused``, its work stops.

        The subject is told the grounds, the reason and where to complain: the
        supervisory authority of the job's jurisdiction (``HANDOVER_COMPLAINT_AUTHORITY``
        and ``HANDOVER_COMPLAINT_URL`` where the profile names none), and that a judicial
        remedy is open to them. Its tasks are aborted and its subject released, as a
        cancel does.
        """
        try:
            ground = RefusalGrounds(grounds)
        except ValueError:
            known = ", ".join(g.value for g in RefusalGrounds)
            raise InvalidRequest(
                "grounds", f"unknown grounds {grounds!r}; known: {known}"
            ) from None
        reason = reason.strip()
        if len(reason) < 3:
            raise InvalidRequest("reason", "say why; the subject is told (GDPR Art. 12(4))")
        settings = self.resources.settings
        now = utcnow()
        before: dict[str, Job] = {}

        def refused(job: Job) -> None:
            profile = settings.profile(job.jurisdiction)
            job.refusal = Refusal(
                grounds=ground.value,
                reason=reason,
                by=actor.id,
                at=now,
                authority=profile.authority or settings.complaint_authority,
                authority_url=profile.authority_url or settings.complaint_url,
            )
            before["job"] = job.model_copy(deep=True)  # with the subject's address, forgotten next

        job = await self._move(
            job_id,
            JobStatus.REFUSED,
            actor,
            expect=LIVE,
            change=refused,
            data={"grounds": ground.value, "reason": reason},
        )
        # The subject is told first: the job no longer holds their address, and nothing
        # after this may stand between the refusal and its notice (Art. 12(4)).
        refusal = before["job"].refusal
        assert refusal is not None and refusal.authority and refusal.authority_url
        await notify_subject(
            self.resources,
            before["job"],
            "refused",
            grounds=ground.value,
            reason=reason,
            authority=refusal.authority,
            authority_url=refusal.authority_url,
        )
        pipeline = self.pipelines[job.kind]
        await pipeline.abort_tasks(job)
        await pipeline.cleanup(job)
        await pipeline.ended(job)
        await self.audit(actor, "job.refused", job, grounds=ground.value)
        await self._decided(job, "refused")
        return job

    async def ask(
        self, actor: Actor, job_id: str, *, needs: str, resume_on_answer: bool = False
    ) -> Job:
        """Ask the subject for what is needed (GDPR Art. 12(6)); the job waits in
        ``awaiting_information``, holding no worker and no subject.

        Its unfinished work is stopped and will run again, as a new generation, once it
        resumes (:meth:`answer`, :meth:`resume`); what finished keeps its output. Where
        the jurisdiction says so (GDPR: the period starts once the information is
        received), the clock stands still until the answer.
        """
        needs = needs.strip()
        if len(needs) < 3:
            raise InvalidRequest("needs", "say what the subject must provide")
        settings = self.resources.settings
        current = await self.resources.store.get(job_id)
        pauses = settings.profile(current.jurisdiction).pauses_for_information
        now = utcnow()
        told: dict[str, Any] = {"needs": needs, "clock_paused": pauses}
        before: dict[str, Job] = {}

        def asked(job: Job) -> None:
            if job.status is JobStatus.AWAITING_INFORMATION:
                raise NotAllowed(
                    "already-awaiting-information",
                    f"job {job.id} already waits for the subject's information",
                )
            before["job"] = job.model_copy(deep=True)
            check_transition(job.id, job.status, JobStatus.AWAITING_INFORMATION)
            told.update({"from": job.status.value, "status": JobStatus.AWAITING_INFORMATION.value})
            working = job.status is not JobStatus.AWAITING_CONFIRMATION
            job.status = JobStatus.AWAITING_INFORMATION
            job.information = InformationRequest(
                needs=needs,
                asked_by=actor.id,
                asked_at=now,
                pauses_clock=pauses,
                resume_on_answer=resume_on_answer,
                resume_to=JobStatus.QUEUED if working else JobStatus.AWAITING_CONFIRMATION,
            )
            _start_again(job)  # a new generation: stale work changes nothing, notices go again

        job = await self._change(
            job_id,
            asked,
            actor,
            "information.requested",
            told,
            action="ask the subject for information",
        )
        # Told first: a failure below must not leave the subject unasked (a second ask
        # is refused as already waiting).
        await notify_subject(self.resources, job, "information_needed", needed=needs)
        previous = before["job"]
        if previous.status is not JobStatus.AWAITING_CONFIRMATION:
            pipeline = self.pipelines[job.kind]
            await pipeline.abort_tasks(previous)
            await pipeline.release_subject(job)
        await self.pipelines[job.kind].notify(job, "job.awaiting_information")
        await self.audit(actor, "job.information_requested", job, clock_paused=pauses)
        await self._decided(job, "information_requested")
        return job

    async def answer(
        self,
        actor: Actor,
        job_id: str,
        *,
        answer: str,
        identifiers: Mapping[str, str] | None = None,
    ) -> Job:
        """The subject answers a request for information; the clock runs again.

        Identifiers the subject offers pass the intake checks and wait on the job until
        support accepts them, saying how they were verified (:meth:`resume`): a subject's
        word alone never makes a processor hand over data. An answer resumes the job by
        itself when support asked so and it offers no identifiers.
        """
        answer = answer.strip()
        if not answer:
            raise InvalidRequest("answer", "say what was asked for")
        offered = checked_identifiers(identifiers or {})
        settings = self.resources.settings
        now = utcnow()

        def answered(job: Job) -> None:
            info = job.information
            if job.status is not JobStatus.AWAITING_INFORMATION or info is None:
                raise NotAllowed(
                    "not-awaiting-information",
                    f"job {job.id} is {job.status.value}: no information was asked for",
                )
            if info.answered_at is not None:
                raise NotAllowed(
                    "already-answered",
                    f"job {job.id}: the information asked for was given already; "
                    "support resumes the request",
                )
            _restart_clock(job, settings.profile(job.jurisdiction), settings.zone, now)
            info.answer = answer
            info.answered_at = now
            info.offered = offered

        job = await self._change(
            job_id,
            answered,
            actor,
            "information.received",
            {"identifiers": sorted(offered)},
            action="answer a request for information",
        )
        await self.audit(actor, "job.information_received", job, identifiers=sorted(offered))
        info = job.information
        if info is not None and info.resume_on_answer and not offered:
            return await self.resume(actor, job.id)
        return job

    async def resume(self, actor: Actor, job_id: str, *, verified_by: str | None = None) -> Job:
        """A job waiting for the subject's information goes on (to ``queued``, or back to
        ``awaiting_confirmation``), its clock running again.

        Identifiers the subject offered are added when ``verified_by`` says how support
        checked them, and dropped otherwise; the identity sources run again.
        """
        verified = (verified_by or "").strip()
        settings = self.resources.settings
        current = await self.resources.store.get(job_id)
        info = current.information
        if current.status is not JobStatus.AWAITING_INFORMATION or info is None:
            raise NotAllowed(
                "not-awaiting-information",
                f"job {job_id} is {current.status.value}: it waits for no information",
            )
        if verified and not info.offered:
            raise InvalidRequest("verified_by", "the subject offered no identifiers to accept")
        offered = sorted(info.offered)
        now = utcnow()

        def resumed(job: Job) -> None:
            waiting = job.information
            assert waiting is not None
            _restart_clock(job, settings.profile(job.jurisdiction), settings.zone, now)
            if waiting.offered and verified:
                job.identity.add(
                    waiting.offered, {"source": "subject", "verified_by": verified, "by": actor.id}
                )
            waiting.offered = {}
            waiting.resumed_at = now
            waiting.resumed_by = actor.id
            job.identity.resolved = False

        outcome = {"accepted" if verified else "dropped": offered} if offered else {}
        job = await self._move(
            job_id,
            info.resume_to,
            actor,
            event="resumed",
            expect={JobStatus.AWAITING_INFORMATION},
            change=resumed,
            data={"identifiers": outcome} if outcome else None,
        )
        if job.status is JobStatus.QUEUED:
            wait = job.not_before - now if job.not_before is not None else None
            await self.pipelines[job.kind].enqueue_runs(
                job, defer=wait if wait is not None and wait > timedelta(0) else None
            )
        await self.audit(actor, "job.resumed", job, **outcome)
        return job

    async def _decided(self, job: Job, decision: str) -> None:
        """Count a lifecycle decision, by jurisdiction (``/metrics``)."""
        await self.resources.metrics.count(
            "handover_lifecycle_decisions_total", decision=decision, jurisdiction=job.jurisdiction
        )

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


def _extension(
    profile: Jurisdiction, job: Job, months: int | None, days: int | None
) -> tuple[int, int]:
    """How much an extension adds, in the profile's unit, and how much was used before."""
    if profile.extension is None:
        return 0, 0  # the profile's check refuses it, naming the rule
    in_months = profile.extension.unit is Unit.MONTHS
    given, other = (months, days) if in_months else (days, months)
    if other is not None:
        unit = profile.extension.unit.value
        raise InvalidRequest(
            "days" if in_months else "months",
            f"{profile.label} extends a deadline in {unit}: give {unit.replace(' ', '_')}",
        )
    used = job.extended_months if in_months else job.extended_days
    by = given if given is not None else max(profile.extension.count - used, 1)
    if by < 1:
        raise InvalidRequest("months" if in_months else "days", "extend by at least one")
    return by, used


def _start_again(job: Job) -> None:
    """The job's unfinished work will run again as a new generation; finished runs keep theirs."""
    job.generation += 1
    job.error = None
    job.identity.resolved = False
    for name, run in job.connectors.items():
        if run.status not in {RunStatus.SUCCEEDED, RunStatus.NOT_ASKED}:
            job.connectors[name] = ConnectorRun(attempts=run.attempts, restages=run.restages)


def _restart_clock(job: Job, profile: Jurisdiction, zone: Any, now: datetime) -> None:
    """End a pause of the clock, if one is under way: its length moves the due date."""
    if job.information is None or not job.information.clock_stopped:
        return
    stopped = max(now - job.information.asked_at, timedelta(0))
    job.clock_paused_ms += int(stopped.total_seconds() * 1000)
    job.due_at = profile.due_at(
        job.created_at,
        zone,
        extended=job.extended_months or job.extended_days,
        paused=timedelta(milliseconds=job.clock_paused_ms),
    )


__all__ = ["Actor", "Commands"]
