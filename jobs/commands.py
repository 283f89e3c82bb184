"""Every change a person can ask for, in one place: requests, and the decisions on them.

::

    request_export · request_erasure (erasure or restriction) · request_objection
    request_rectification · lift · request_disclosure (an authority's order)
    confirm · decide · cancel · retry · extend · refuse · ask · answer · resume
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
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.byhand import ByHandConnector
from jobs.archive.formats import FORMATS
from jobs.audit import AuditEntry
from jobs.disclosures import DisclosureRegister, NoticeRequest
from jobs.erasure import ErasurePipeline
from jobs.export import checked_time_zone, protection_of
from jobs.handoff import Handoffs, ReplyLink, Statement, Upload
from jobs.identity import checked_identifiers
from jobs.kinds import build_pipelines
from jobs.lifecycle import Jurisdiction, NotAllowed, RefusalGrounds, Unit
from jobs.lift import blocking_erasure
from jobs.model import (
    ConnectorRun,
    DisclosureOptions,
    DisclosureOrder,
    DownloadLimitReached,
    ErasureOptions,
    ExportOptions,
    ExportPeriod,
    ExportScope,
    Identity,
    IllegalTransition,
    InformationRequest,
    InvalidRequest,
    Job,
    JobEnded,
    JobKind,
    JobStatus,
    LiftOptions,
    ObjectionOptions,
    RectificationOptions,
    Refusal,
    RunStatus,
    StaffDecision,
    check_transition,
    iso,
    utcnow,
)
from jobs.notices import notify_subject, queued_with_job
from jobs.objection import known_purposes, split_purposes
from jobs.pipeline import LIVE, Pipeline
from jobs.rectification import approval_needed, checked_changes
from jobs.resources import Resources
from jobs.store import JobNotFound


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
        since: datetime | None = None,
        until: datetime | None = None,
        time_zone: str | None = None,
    ) -> Job:
        """A new export (GDPR Art. 15 and 20); one live export per subject at a time.

        ``time_zone`` (IANA) is the one the archive's ``index.html`` writes moments in.

        ``since`` (included) and ``until`` (excluded), timezone-aware, ask for a time
        range; each connector applies it where it can (:class:`connectors.items.Period`).

        ``password`` (AES-256 ZIP) or ``age_recipient`` protect the archive end to
        end; a password is kept with the job only until the archive is written. The
        job's ``scope`` records what was asked and which processors were left out,
        so a partial export is never mistaken for a complete one.
        """
        pipeline = self.pipelines[JobKind.EXPORT]
        chosen, options = self._export_options(
            formats, connectors, categories, since, until, locale, time_zone
        )
        options.protection = protection_of(password, age_recipient)
        job = pipeline.new_job(
            JobKind.EXPORT,
            subject=subject,
            requested_by=actor.id,
            connectors=chosen,
            options=options,
            identity=identity,
            archive_password=password,
            jurisdiction=jurisdiction,
        )
        # One step: the subject's one live export claimed, the job, its first task, its entry
        # and the subject's acknowledgement.
        await pipeline.submit(
            job,
            claim_active=True,
            audit=self.audit_entry(actor, "export.requested", job),
            alongside=[queued_with_job(self.resources, job, "acknowledged")],
        )
        return job

    def _export_options(
        self,
        formats: Sequence[str] | None,
        connectors: Sequence[str] | None,
        categories: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        locale: str | None,
        time_zone: str | None,
    ) -> tuple[list[str], ExportOptions]:
        """The connectors an export asks and its options (scope, period, formats), checked."""
        formats = list(dict.fromkeys(formats or self.resources.settings.default_formats))
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise InvalidRequest(
                "formats", f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}"
            )
        if since is not None and until is not None and since >= until:
            raise InvalidRequest("until", "must come after since")
        period = (
            ExportPeriod(
                since=since.astimezone(UTC) if since else None,
                until=until.astimezone(UTC) if until else None,
            )
            if since or until
            else None
        )
        chosen = self.pipelines[JobKind.EXPORT].select_connectors(connectors, categories)
        return chosen, ExportOptions(
            formats=formats,
            categories=sorted(set(categories or [])),
            scope=ExportScope(
                connectors=sorted(set(connectors)) if connectors else "all",
                categories=sorted(set(categories)) if categories else "all",
                left_out=[name for name in self.resources.connectors if name not in chosen],
                period=period,
            ),
            locale=locale,
            time_zone=checked_time_zone(time_zone),
        )

    async def request_disclosure(
        self,
        actor: Actor,
        *,
        subject: str,
        order: DisclosureOrder,
        notice: NoticeRequest,
        identity: Identity,
        connectors: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        formats: Sequence[str] | None = None,
        locale: str | None = None,
    ) -> Job:
        """A disclosure compelled by ``order`` (:mod:`jobs.disclosures`): an export of the
        scope asked, addressed to the authority, and the subject told as ``notice`` says.

        The register's entry is written before the job, so its rule is never lost; the
        subject's own requests are not held up (no live-job claim); nothing is sent to the
        subject but the ``disclosed`` notice, and that only as the rule allows, once the
        authority fetched the archive (:meth:`jobs.disclosures.DisclosureRegister.fetched`).

        Only processors with an API are asked: a by-hand one (:mod:`jobs.handoff`) would be
        told a subject asked. Named, it is refused; otherwise the scope lists it left out.
        """
        pipeline = self.pipelines[JobKind.DISCLOSURE]
        notice = notice.checked(utcnow())
        chosen, export = self._export_options(
            formats, connectors, categories, since, until, locale, None
        )
        available = self.resources.connectors
        by_hand = [name for name in chosen if isinstance(available[name], ByHandConnector)]
        if by_hand and connectors:
            raise InvalidRequest(
                "connectors",
                f"{', '.join(by_hand)}: served by a person, who would be told a subject asked; "
                "a disclosure asks processors with an API only",
            )
        chosen = [name for name in chosen if name not in by_hand]
        if not chosen:
            raise InvalidRequest("connectors", "no processor with an API holds this scope")
        export.scope.left_out = [name for name in available if name not in chosen]
        job = pipeline.new_job(
            JobKind.DISCLOSURE,
            subject=subject,
            requested_by=actor.id,
            connectors=chosen,
            options=DisclosureOptions(
                export=export, order=order, notice=notice.rule, locale=locale
            ),
            identity=identity,
        )
        register = DisclosureRegister(self.resources)
        disclosure = register.new(job, order, notice, identity)
        await register.add(disclosure)
        details = {
            "authority": order.authority,
            "reference": order.reference,
            "notice": notice.rule,
            "notice_until": iso(notice.until),
        }
        try:
            await pipeline.submit(
                job, audit=self.audit_entry(actor, "disclosure.requested", job, **details)
            )
        except BaseException:
            await register.remove(disclosure)
            raise
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
        ground: str | None = None,
        until: datetime | None = None,
    ) -> Job:
        """A new erasure (Art. 17) or restriction (Art. 18); a real erasure awaits confirmation.

        A restriction records its ground (Art. 18(1)(a)-(d)) and, where known, until when it
        holds (a moment to come). The subject is told it was received; an erasure, that it
        awaits their confirmation.
        """
        pipeline = self.pipelines[kind]
        if not isinstance(pipeline, ErasurePipeline):
            raise InvalidRequest("kind", f"{kind.value} is not an erasure or a restriction")
        if kind is not JobKind.RESTRICTION and (ground is not None or until is not None):
            raise InvalidRequest("ground", "a ground and an end date go with a restriction")
        if until is not None and until <= utcnow():
            raise InvalidRequest("until", "the restriction's end must be to come")
        confirm = kind is JobKind.ERASURE and not dry_run
        job = pipeline.new_job(
            kind,
            subject=subject,
            requested_by=actor.id,
            connectors=pipeline.select_connectors(connectors),
            options=ErasureOptions.model_validate(
                {
                    "kind": kind.value,
                    "dry_run": dry_run,
                    "reason": reason,
                    "locale": locale,
                    "ground": ground,
                    "until": until,
                }
            ),
            status=JobStatus.AWAITING_CONFIRMATION if confirm else JobStatus.QUEUED,
            identity=identity,
            jurisdiction=jurisdiction,
        )
        entry = self.audit_entry(actor, f"{kind.value}.requested", job, dry_run=dry_run)
        # Every request is acknowledged (CCPA: within 10 business days); an erasure that
        # waits for its confirmation also says so, a letter that may be skipped if the
        # subject confirms before it goes.
        notices = ["acknowledged", *(["awaiting_confirmation"] if confirm else [])]
        await pipeline.submit(
            job, audit=entry, alongside=[queued_with_job(self.resources, job, *notices)]
        )
        return job

    async def request_objection(
        self,
        actor: Actor,
        *,
        subject: str,
        purposes: Sequence[str],
        connectors: Sequence[str] | None = None,
        reason: str | None = None,
        identity: Identity | None = None,
        jurisdiction: str | None = None,
        locale: str | None = None,
    ) -> list[Job]:
        """A new objection (GDPR Art. 21); one job, or two when it names direct marketing and
        other purposes, each naming the other (``related``).

        Direct marketing runs at once (Art. 21(3)); other purposes wait for staff's
        decision (:meth:`decide`). A purpose no configured connector can act on (direct
        marketing too, unless a processor is served by hand) is refused: the subject would be
        told of nothing done.
        The subject is told each was received.
        """
        known = known_purposes(self.resources.connectors)
        unknown = [purpose for purpose in purposes if purpose not in known]
        if unknown:
            raise InvalidRequest(
                "purposes",
                f"unknown purpose(s) {', '.join(unknown)}: no processor here can act on it; "
                f"known: {', '.join(known) or 'none'}",
            )
        at_once, decided = split_purposes(purposes)
        if not at_once and not decided:
            raise InvalidRequest("purposes", "name at least one purpose objected to")
        pipeline = self.pipelines[JobKind.OBJECTION]
        chosen = pipeline.select_connectors(connectors)
        jobs = [
            pipeline.new_job(
                JobKind.OBJECTION,
                subject=subject,
                requested_by=actor.id,
                connectors=chosen,
                options=ObjectionOptions(purposes=named, reason=reason, locale=locale),
                status=status,
                identity=identity.model_copy(deep=True) if identity is not None else None,
                jurisdiction=jurisdiction,
            )
            for named, status in (
                (at_once, JobStatus.QUEUED),
                (decided, JobStatus.AWAITING_CONFIRMATION),
            )
            if named
        ]
        if len(jobs) == 2:
            jobs[0].objection_options.related = jobs[1].id
            jobs[1].objection_options.related = jobs[0].id
        for job in jobs:
            purposes_named = job.objection_options.purposes
            entry = self.audit_entry(actor, "objection.requested", job, purposes=purposes_named)
            acknowledged = queued_with_job(self.resources, job, "acknowledged")
            await pipeline.submit(job, audit=entry, alongside=[acknowledged])
            if job.status is JobStatus.AWAITING_CONFIRMATION:
                await pipeline.notify(job, "job.awaiting_decision")
        return jobs

    async def request_rectification(
        self,
        actor: Actor,
        *,
        subject: str,
        changes: Sequence[Mapping[str, Any]],
        reason: str | None = None,
        identity: Identity | None = None,
        jurisdiction: str | None = None,
        locale: str | None = None,
    ) -> Job:
        """A new rectification (GDPR Art. 16) at the connectors its changes name.

        Each change is checked (:func:`jobs.rectification.checked_changes`): a field not
        rectifiable or a value of the wrong type is refused, naming the change. It waits
        for staff's approval when ``HANDOVER_RECTIFICATION_APPROVAL`` says (by default,
        a change to an identity field such as an email). The subject is told it was received.
        """
        refs, values = checked_changes(self.resources.connectors, changes)
        pipeline = self.pipelines[JobKind.RECTIFICATION]
        needed = approval_needed(self.resources.settings.rectification_approval, refs)
        job = pipeline.new_job(
            JobKind.RECTIFICATION,
            subject=subject,
            requested_by=actor.id,
            connectors=list(dict.fromkeys(ref.connector for ref in refs)),
            options=RectificationOptions(
                changes=refs, reason=reason, approval_needed=needed, locale=locale
            ),
            status=JobStatus.AWAITING_CONFIRMATION if needed else JobStatus.QUEUED,
            identity=identity,
            jurisdiction=jurisdiction,
        )
        job.new_values = values
        fields = [f"{ref.connector}/{ref.dataset}.{ref.field}" for ref in refs]
        entry = self.audit_entry(actor, "rectification.requested", job, fields=fields)
        acknowledged = queued_with_job(self.resources, job, "acknowledged")
        await pipeline.submit(job, audit=entry, alongside=[acknowledged])
        if needed:
            await pipeline.notify(job, "job.awaiting_decision")
        return job

    async def lift(
        self,
        actor: Actor,
        restriction_id: str,
        *,
        reason: str,
        lifts_at: datetime | None = None,
        identity: Identity | None = None,
    ) -> Job:
        """Lift a restriction in force (GDPR Art. 18(3)): the subject is told first.

        The ``restriction_lifting`` notice goes at once, to the address in ``identity``,
        recorded on the restriction's timeline; a lift job (:mod:`jobs.lift`) runs from
        ``lifts_at`` (default now) and unblocks nothing until that notice is sent. A
        restriction lifted already (by a lift not failed or canceled), not in force, or of a
        subject with an erasure under way or run (:func:`jobs.lift.blocking_erasure`) is
        refused; so is a lift without the subject's email, as they could not be told. Each
        lift's notice is its own (keyed by the lift's id): a new lift after one whose notice
        failed tells the subject afresh.
        """
        reason = reason.strip()
        if len(reason) < 3:
            raise InvalidRequest("reason", "say why; the subject is told (GDPR Art. 18(3))")
        now = utcnow()
        lifts = lifts_at or now
        if lifts < now - timedelta(minutes=1):
            raise InvalidRequest("lifts_at", "a restriction is lifted now or later, not before")
        restriction = await self.resources.store.get(restriction_id)
        await self._check_liftable(restriction)
        earlier = await self._given_up_lift(restriction)

        def unclaimed(current: Job) -> None:
            lifted_by = current.erasure_options.lifted_by
            if lifted_by is not None and lifted_by != earlier:
                raise NotAllowed(
                    "already-lifted", f"job {restriction_id} is lifted by job {lifted_by}"
                )

        unclaimed(restriction)  # refused as lifted before being asked for an address
        if identity is None or not identity.identifiers.get("email"):
            raise InvalidRequest(
                "identifiers",
                "the subject's email is needed: they are told before anything is lifted "
                "(GDPR Art. 18(3)), and the restriction, ended, no longer holds it",
            )
        pipeline = self.pipelines[JobKind.LIFT]
        restricted = [
            name
            for name, run in restriction.connectors.items()
            if run.status is RunStatus.SUCCEEDED and (run.report or {}).get("supported")
        ]
        if not restricted:
            raise NotAllowed("nothing-restricted", f"job {restriction_id} restricted nowhere")
        options = restriction.erasure_options
        job = pipeline.new_job(
            JobKind.LIFT,
            subject=restriction.subject,
            requested_by=actor.id,
            connectors=restricted,
            options=LiftOptions(
                restriction=restriction_id,
                ground=options.ground,
                reason=reason,
                lifts_at=lifts,
                locale=options.locale,
            ),
            status=JobStatus.AWAITING_CONFIRMATION,
            identity=identity,
            jurisdiction=restriction.jurisdiction,
        )

        def claimed(current: Job) -> None:
            unclaimed(current)
            current.erasure_options.lifted_by = job.id

        data = {"lift": job.id, "lifts_at": iso(lifts)}
        await self._change(
            restriction_id,
            claimed,
            actor,
            "lift.requested",
            data,
            action="lift it",
            expect={JobStatus.SUCCEEDED},
        )
        # Told first, on the restriction (received when it was asked for): Art. 18(3).
        told = restriction.model_copy(deep=True)
        told.identity = job.identity.model_copy(deep=True)
        await notify_subject(
            self.resources,
            told,
            "restriction_lifting",
            occasion=job.id,
            lifts_at=lifts,
            reason=reason,
        )
        await pipeline.submit(job, audit=self.audit_entry(actor, "lift.requested", job))
        wait = lifts - now
        job.not_before = lifts if wait > timedelta(0) else None

        def scheduled(current: Job) -> None:
            current.not_before = job.not_before

        job = await self._move(
            job.id,
            JobStatus.QUEUED,
            actor,
            event="scheduled",
            expect={JobStatus.AWAITING_CONFIRMATION},
            change=scheduled,
            data={"runs_after": iso(lifts)},
        )
        await pipeline.enqueue_runs(job, defer=wait if wait > timedelta(0) else None)
        return job

    async def _given_up_lift(self, restriction: Job) -> str | None:
        """The restriction's earlier lift if it ended failed or canceled, or never came to be
        (a crash between the claim and its submission): a new lift may take its place."""
        lifted_by = restriction.erasure_options.lifted_by
        if lifted_by is None:
            return None
        try:
            earlier = await self.resources.store.get(lifted_by)
        except JobNotFound:
            return lifted_by
        return lifted_by if earlier.status in _GIVEN_UP else None

    async def _check_liftable(self, restriction: Job) -> None:
        """Refuse a lift of anything but a restriction in force of a subject not erased since."""
        if restriction.kind is not JobKind.RESTRICTION:
            raise NotAllowed(
                "not-a-restriction", f"job {restriction.id} is an {restriction.kind.value}"
            )
        if restriction.status is not JobStatus.SUCCEEDED or restriction.erasure_options.dry_run:
            state = "a dry run" if restriction.erasure_options.dry_run else restriction.status.value
            raise NotAllowed("not-in-force", f"job {restriction.id} is {state}: nothing to lift")
        erasure = await blocking_erasure(self.resources, restriction.subject)
        if erasure is not None:
            raise NotAllowed(
                "erased",
                f"the subject's data was erased since, or is being erased (job {erasure.id}): "
                "what the law kept stays blocked, and is not lifted",
            )

    # Decisions on a request.

    async def decide(
        self,
        actor: Actor,
        job_id: str,
        *,
        upheld: bool,
        grounds: str | None = None,
        verified_by: str | None = None,
    ) -> Job:
        """Staff's decision on a request waiting for one: an objection (GDPR Art. 21(1)), or
        a rectification that needs approval (``HANDOVER_RECTIFICATION_APPROVAL``).

        Upheld (approved), it runs. Rejected, it ends ``refused`` with the grounds stated
        (an objection's: the compelling legitimate grounds), and the subject is told them
        and where to complain, as :meth:`refuse` tells them. Whoever asked for the job, or
        is its subject, may not decide it (:class:`~jobs.lifecycle.NotAllowed`,
        ``decided-by-requester``). Approving a change to an identity field needs
        ``verified_by``: how the new value was checked, recorded in the decision and the
        receipt.
        """
        grounds = (grounds or "").strip()
        verified_by = (verified_by or "").strip()
        current = await self.resources.store.get(job_id)
        kind = current.kind
        if kind not in _DECIDED_KINDS:
            raise NotAllowed(
                "no-decision-awaited",
                f"job {job_id} is an {kind.value}: only objections and rectifications "
                "wait for a decision",
            )
        if actor.id in {current.requested_by, current.subject}:
            raise NotAllowed(
                "decided-by-requester",
                f"job {job_id} was asked for by {actor.id!r} or concerns them: another "
                "member of staff decides it",
            )
        if not upheld and len(grounds) < 3:
            raise InvalidRequest("grounds", _DECIDED_KINDS[kind][1])
        if (
            upheld
            and kind is JobKind.RECTIFICATION
            and any(ref.identity for ref in current.rectification_options.changes)
            and len(verified_by) < 3
        ):
            raise InvalidRequest(
                "verified_by",
                "say how the new value of the identity field was checked (for instance, a "
                "confirmation mail to the new address); it is recorded in the receipt",
            )
        now = utcnow()
        decision = StaffDecision(
            upheld=upheld,
            grounds=grounds or None,
            by=actor.id,
            at=now,
            verified_by=verified_by or None,
        )
        if not upheld:
            return await self._reject(actor, job_id, decision)

        def decided(job: Job) -> None:
            _decided_options(job).decision = decision

        job = await self._move(
            job_id,
            JobStatus.QUEUED,
            actor,
            event=f"{kind.value}.upheld",
            expect={JobStatus.AWAITING_CONFIRMATION},
            change=decided,
        )
        await self.pipelines[job.kind].enqueue_runs(job)
        await self.audit(actor, f"{kind.value}.upheld", job)
        return job

    async def _reject(self, actor: Actor, job_id: str, decision: StaffDecision) -> Job:
        """An objection or rectification rejected: ``refused``, the subject told the grounds
        first."""
        settings = self.resources.settings
        before: dict[str, Job] = {}
        kind = (await self.resources.store.get(job_id)).kind
        grounds = _DECIDED_KINDS[kind][0]
        assert decision.grounds is not None  # decide requires them

        def rejected(job: Job) -> None:
            profile = settings.profile(job.jurisdiction)
            _decided_options(job).decision = decision
            job.refusal = Refusal(
                grounds=grounds,
                reason=decision.grounds or "",
                by=actor.id,
                at=decision.at,
                authority=profile.authority or settings.complaint_authority,
                authority_url=profile.authority_url or settings.complaint_url,
            )
            before["job"] = job.model_copy(deep=True)  # with the subject's address

        job = await self._move(
            job_id,
            JobStatus.REFUSED,
            actor,
            event=f"{kind.value}.rejected",
            expect={JobStatus.AWAITING_CONFIRMATION},
            change=rejected,
            data={"grounds": decision.grounds},
        )
        refusal = before["job"].refusal
        assert refusal is not None and refusal.authority and refusal.authority_url
        await notify_subject(
            self.resources,
            before["job"],
            "refused",
            grounds=grounds,
            reason=refusal.reason,
            authority=refusal.authority,
            authority_url=refusal.authority_url,
        )
        pipeline = self.pipelines[job.kind]
        await pipeline.ended(job)
        await self.audit(actor, f"{kind.value}.rejected", job)
        await self._decided(job, f"{kind.value}_rejected")
        return job

    async def confirm(self, actor: Actor, job_id: str) -> Job:
        """Confirm an erasure: it runs after the grace period (``HANDOVER_ERASURE_GRACE``)."""
        now = utcnow()
        grace = self.resources.settings.grace

        def confirmed(job: Job) -> None:
            if job.kind in _DECIDED_KINDS:
                raise NotAllowed(
                    "decision-needed",
                    f"job {job.id} is an {job.kind.value}: support decides it "
                    f"(POST /v1/jobs/{job.id}/decide)",
                )
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
        """Stop a job that has not ended; running connector work is aborted within seconds.

        A lift is staff's to cancel: the subject may not veto lifting their restriction."""
        await self._check_staff_only(actor, job_id, "cancel")
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
        """Run a failed job again: only its failed connectors; finished ones keep their output.

        A rectification is refused (:class:`~jobs.lifecycle.NotAllowed`): its new values
        were forgotten when it failed, so the subject has to ask again.
        """
        if (await self.resources.store.get(job_id)).kind is JobKind.RECTIFICATION:
            raise NotAllowed(
                "rectification-not-retried",
                f"job {job_id} is a rectification: its new values were forgotten when it "
                "ended, so it cannot run again; the subject has to ask for the change again",
            )
        await self._check_lift_retried(actor, job_id)

        def again(job: Job) -> None:
            job.generation += 1
            job.error = None
            job.identity.resolved = False
            for name, run in job.connectors.items():
                if run.status not in {RunStatus.SUCCEEDED, RunStatus.NOT_ASKED}:
                    job.connectors[name] = _run_again(run)

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

    async def _check_staff_only(self, actor: Actor, job_id: str, action: str) -> None:
        """Refuse a subject ``action`` on a lift: lifting is staff's (GDPR Art. 18(3))."""
        if actor.staff:
            return
        if (await self.resources.store.get(job_id)).kind is JobKind.LIFT:
            raise NotAllowed(
                "staff-only", f"job {job_id} is a lift: only support or admin may {action} it"
            )

    async def _check_lift_retried(self, actor: Actor, job_id: str) -> None:
        """A lift is staff's to retry, and only while its restriction names it: once a new
        lift took the place of a failed one, the failed one stays failed."""
        await self._check_staff_only(actor, job_id, "retry")
        job = await self.resources.store.get(job_id)
        if job.kind is not JobKind.LIFT:
            return
        restriction = await self.resources.store.get(job.lift_options.restriction)
        lifted_by = restriction.erasure_options.lifted_by
        if lifted_by != job_id:
            raise NotAllowed(
                "superseded", f"job {job_id} no longer lifts {restriction.id}: job {lifted_by} does"
            )

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

    async def take_reply(
        self, link: ReplyLink, statement: Statement, upload: Upload, *, actor: Actor | None = None
    ) -> Job:
        """Record a by-hand processor's reply (:mod:`jobs.handoff`) and queue its run again.

        Through a reply link (``actor`` None: the processor, whoever holds the link) or
        staff recording it on the dashboard (a manual task, or an email answered by
        other means). Refused (:class:`~jobs.handoff.ReplyRefused`): its files deleted.
        """
        who = actor.id if actor is not None else "processor"
        via = actor.via if actor is not None else "link"
        job = await Handoffs(self.resources).record(link, statement, upload, actor=who, via=via)
        await self.pipelines[job.kind].enqueue_runs(job)
        audit_actor = actor or Actor("processor", staff=True, via="link")
        await self.audit(audit_actor, "job.processor_replied", job, connector=link.connector)
        return job

    def task_link(self, job: Job, connector: str) -> ReplyLink:
        """The link staff reply through for a run waiting on a person (a manual task)."""
        run = job.connectors.get(connector)
        if run is None or run.status is not RunStatus.WAITING_ON_PROCESSOR or run.handoff is None:
            state = "not part of this job" if run is None else run.status.value
            raise InvalidRequest("connector", f"{connector} is {state}, not waiting on a person")
        expires = int(time.time()) + 3600  # built for the one request it serves
        return ReplyLink(job.id, connector, job.generation, run.handoff["nonce"], expires)

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


_GIVEN_UP = frozenset({JobStatus.FAILED, JobStatus.CANCELED})
"""How a lift ends that leaves its restriction free to be lifted by another."""

_DECIDED_KINDS = {
    JobKind.OBJECTION: (
        "compelling_legitimate_grounds",
        "state the compelling legitimate grounds that override the subject's interests "
        "(GDPR Art. 21(1)); the subject is told them",
    ),
    JobKind.RECTIFICATION: (
        "data_accurate",
        "say why the data is accurate as it stands (GDPR Art. 16); the subject is told",
    ),
}
"""The kinds that wait for staff's decision: the refusal grounds of a rejection, and what a
rejection without its reason is told."""


def _decided_options(job: Job) -> ObjectionOptions | RectificationOptions:
    """The options of a job that waits for staff's decision."""
    if job.kind is JobKind.RECTIFICATION:
        return job.rectification_options
    return job.objection_options


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
            job.connectors[name] = _run_again(run, restages=run.restages)


def _run_again(run: ConnectorRun, *, restages: int = 0) -> ConnectorRun:
    """``run`` to be done again. A by-hand processor is not asked twice: a run waiting on
    its person stays as it is (its links still answer it), and a run's request and reply
    (:mod:`jobs.handoff`) carry over, so it answers with the reply already given."""
    if run.status is RunStatus.WAITING_ON_PROCESSOR:
        return run
    return ConnectorRun(
        attempts=run.attempts, restages=restages, handoff=run.handoff, reply=run.reply
    )


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
