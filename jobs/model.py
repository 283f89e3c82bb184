"""The job: a request by or about one subject, its per-connector progress and its result.

States and the only moves between them::

    awaiting_confirmation ─▶ queued ─▶ running ─▶ succeeded ─▶ expired
            │               ▲  │  ▲       │                     ▲
            │  identifiers  │  │  │       ▼                     │ (erased: the subject's
            │  added, or    └──┼──┼─ needs_attention            │  data is gone)
            │  decided         │  │                             │
            └──────────────────┴──┼──────────▶ failed ──────────┘
                                  └─────────────┘ retry       (any live state ─▶ canceled)

    any live state ─▶ awaiting_information ─▶ queued (or back to awaiting_confirmation)
    any live state ─▶ refused

``needs_attention`` is live: a processor could not be asked (no identifier it
needs is known) and the job waits, without holding its subject, for support to
supply one or to decide to go without that processor.

``awaiting_information`` is live: support asked the subject for what it needs (GDPR
Art. 12(6)); the job holds no worker and no subject, and its jurisdiction says
whether its clock stops meanwhile (:mod:`jobs.lifecycle`). ``refused`` is an end:
the request was refused, with grounds and reasons (Art. 12(4), 12(5)).

:func:`check_transition` is the one place that says which moves are legal; the
store calls it inside the same Redis transaction that writes the move and its event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field

from connectors.items import Period, Subject

#: A live job is at risk once less than this share of its time to the deadline is left.
AT_RISK_SHARE = 0.25


class JobKind(StrEnum):
    """What the subject asked for."""

    EXPORT = "export"
    ERASURE = "erasure"
    RESTRICTION = "restriction"
    #: An objection to processing for some purposes (GDPR Art. 21): :mod:`jobs.objection`.
    OBJECTION = "objection"
    #: A correction of inaccurate data (GDPR Art. 16): :mod:`jobs.rectification`.
    RECTIFICATION = "rectification"
    #: The lifting of a restriction, once the subject was told (GDPR Art. 18(3)): :mod:`jobs.lift`.
    LIFT = "lift"
    #: An export compelled by an authority's order, addressed to the authority, never shown to
    #: the subject; the subject is told as the order's notice rule says: :mod:`jobs.disclosures`.
    DISCLOSURE = "disclosure"


class JobStatus(StrEnum):
    """Where a job stands."""

    AWAITING_CONFIRMATION = "awaiting_confirmation"
    AWAITING_INFORMATION = "awaiting_information"
    QUEUED = "queued"
    RUNNING = "running"
    NEEDS_ATTENTION = "needs_attention"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REFUSED = "refused"

    @property
    def terminal(self) -> bool:
        """No work will happen on the job any more (short of a retry)."""
        return self in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.EXPIRED,
            JobStatus.REFUSED,
        }


class RunStatus(StrEnum):
    """Where one connector's part of a job stands."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: None of the identifiers the processor needs is known: it was not asked (yet).
    UNIDENTIFIED = "unidentified"
    #: Support decided, with a reason, to go without this processor: it was never asked.
    NOT_ASKED = "not_asked"
    #: A person does this processor's part (an ``email`` or ``manual`` connector): asked,
    #: and waiting for the reply, holding no worker and no lease (:mod:`jobs.handoff`).
    WAITING_ON_PROCESSOR = "waiting_on_processor"

    @property
    def finished(self) -> bool:
        """The run will not change unless the job is retried."""
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.NOT_ASKED}

    @property
    def settled(self) -> bool:
        """No work is under way or due for the run: finished, or waiting on a person."""
        return self.finished or self in {RunStatus.UNIDENTIFIED, RunStatus.WAITING_ON_PROCESSOR}


#: Support may ask for information about, or refuse, a request in any of its live states.
_DECIDED = frozenset({JobStatus.AWAITING_INFORMATION, JobStatus.REFUSED})

_LEGAL: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.AWAITING_CONFIRMATION: frozenset({JobStatus.QUEUED, JobStatus.CANCELED}) | _DECIDED,
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED})
    | _DECIDED,
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.NEEDS_ATTENTION}
    )
    | _DECIDED,
    JobStatus.NEEDS_ATTENTION: frozenset({JobStatus.QUEUED, JobStatus.CANCELED}) | _DECIDED,
    JobStatus.AWAITING_INFORMATION: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.AWAITING_CONFIRMATION,
            JobStatus.CANCELED,
            JobStatus.REFUSED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset({JobStatus.EXPIRED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.EXPIRED}),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
    JobStatus.REFUSED: frozenset(),
}


class IllegalTransition(Exception):
    """A move the state machine does not allow, e.g. ``succeeded → running``."""

    def __init__(self, job_id: str, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"job {job_id} cannot go from {current} to {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class JobEnded(Exception):
    """The job has ended; what was asked only applies to a live job."""

    def __init__(self, job_id: str, status: JobStatus, action: str) -> None:
        super().__init__(f"job {job_id} has ended ({status.value}); cannot {action}")
        self.job_id = job_id
        self.status = status


class ActiveJobExists(Exception):
    """The subject already has a live job of this kind; ``job_id`` names it."""

    def __init__(self, kind: JobKind, job_id: str) -> None:
        super().__init__(f"a {kind.value} of this subject is already under way: job {job_id}")
        self.job_id = job_id


class DownloadLimitReached(Exception):
    """The archive has been downloaded as many times as allowed."""

    def __init__(self, job_id: str, limit: int) -> None:
        super().__init__(f"the archive of job {job_id} may be downloaded {limit} time(s); all used")
        self.job_id = job_id


def check_transition(job_id: str, current: JobStatus, target: JobStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current → target`` is a legal move."""
    if target not in _LEGAL[current]:
        raise IllegalTransition(job_id, current, target)


class Record(BaseModel):
    """Part of a job's record: typed, and refusing fields it does not know."""

    model_config = ConfigDict(extra="forbid")


class StagedPart(Record):
    """One file of the archive-to-be, already encoded and deflated in staging.

    ``chunks`` are ``(offset, length)`` ranges of the connector's staged object whose
    concatenation is this file's deflate stream.
    """

    path: str
    connector: str
    dataset: str
    category: str
    format: str
    records: int
    bytes: int
    sha256: str
    crc32: int
    compressed_size: int
    chunks: list[tuple[int, int]]


class ConnectorRun(Record):
    """One connector's share of a job."""

    status: RunStatus = RunStatus.PENDING
    attempts: int = 0
    records: int = 0
    bytes: int = 0
    error: str | None = None
    error_class: str | None = None
    #: What the processor itself said about the failure (an error body, a driver's
    #: message): it may hold personal data, so only admins see it, never staff or
    #: webhooks (:attr:`connectors.errors.ConnectorError.detail`).
    error_detail: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    staged_key: str | None = None
    parts: list[StagedPart] = Field(default_factory=list)
    report: dict[str, Any] | None = None
    #: Why the processor was not asked: ``{"reason", "by", "at"}`` (status ``not_asked``).
    decision: dict[str, str] | None = None
    #: Times its staged output vanished before the finish and it ran again (at most
    #: :data:`jobs.pipeline.MAX_RESTAGES`).
    restages: int = 0
    #: A by-hand processor's request (:mod:`jobs.handoff`): how and when it was asked,
    #: reminded, escalated; the request's nonce, which each of its reply links carries.
    handoff: dict[str, Any] | None = None
    #: The person's reply (:mod:`jobs.handoff`): who, when, the files (names, sizes,
    #: SHA-256) and the statement's lines.
    reply: dict[str, Any] | None = None


class Identity(Record):
    """Who the subject is at the processors: identifiers and the evidence for each.

    ``identifiers`` maps a name (``email``, ``phone_number``, ``hubspot_contact_id``, …)
    to its value; the platform user id is the job's ``subject``. The values are
    personal data: they live on the job only while it is live (the store forgets
    them when it ends) and never appear in logs, webhooks, metrics, manifests or
    receipts. ``evidence`` keeps, for good, which *kinds* of identifier were known
    and how each was verified or found. ``resolved`` is false until the identity
    sources have run for the identifiers known now.
    """

    identifiers: dict[str, str] = Field(default_factory=dict)
    evidence: list[dict[str, Any]] = Field(default_factory=list)
    resolved: bool = False

    def subject(self, subject_id: str) -> Subject:
        """The connectors' view of the subject."""
        identities = {k: v for k, v in self.identifiers.items() if k != "email"}
        return Subject(subject_id, email=self.identifiers.get("email"), identities=identities)

    def add(self, found: Mapping[str, str], evidence: dict[str, Any]) -> list[str]:
        """Record identifiers not yet known, with how they were obtained; returns their names.

        A value already known is never replaced: the first, verified value stands.
        """
        added = sorted(name for name in found if name not in self.identifiers)
        if added:
            self.identifiers.update({name: found[name] for name in added})
            self.evidence.append({"identifiers": added, **evidence})
        return added

    def statement(self) -> list[dict[str, Any]]:
        """What signed documents say of the identity: kinds and how verified, never values."""
        return [
            {key: entry[key] for key in ("identifiers", "source", "verified_by") if key in entry}
            for entry in self.evidence
        ]

    def forget(self) -> None:
        """Drop the values (the job has ended); the evidence stays."""
        self.identifiers.clear()


def run_statement(run: ConnectorRun) -> dict[str, Any]:
    """Whether a processor was asked, as signed documents state it.

    A processor that was not asked is never reported as holding nothing: the
    statement says ``asked: false`` and the recorded reason.
    """
    if run.status is RunStatus.NOT_ASKED:
        decision = run.decision or {}
        return {
            "asked": False,
            "status": run.status.value,
            "not_asked_reason": decision.get("reason"),
            "decided_at": decision.get("at"),
        }
    return {"asked": run.status is RunStatus.SUCCEEDED, "status": run.status.value}


class ArchiveFile(Record):
    """One file of a finished archive, as its job lists it."""

    path: str
    connector: str | None
    format: str
    records: int | None
    bytes: int


class ArchiveResult(Record):
    """Where the finished archive lives and how to check it.

    ``sha256`` is the whole archive's, when its bytes passed through the worker;
    ``None`` when the object store assembled it from the staged objects (S3's server-side
    copies, the local store's kernel copies), where the signed manifest's per-file
    SHA-256 vouches for the content. ``crc32`` (8 hex digits) is the whole archive's
    either way: computed by the worker (of what it wrote and what the local store
    copied), or S3's full-object checksum (``None`` for an archive written before it
    was recorded, or by a store that keeps none).
    """

    key: str
    size: int
    sha256: str | None
    crc32: str | None = None
    expires_at: datetime
    key_id: str
    files: list[ArchiveFile]


class Protection(Record):
    """How an archive is protected end to end: an AES-256 password, or an age recipient.

    The password itself is never here: it is :attr:`Job.archive_password`, kept only
    until the archive is written.
    """

    kind: Literal["password", "age"]
    recipient: str | None = None


class ExportPeriod(Record):
    """The time range an export asked for: ``since`` included, ``until`` excluded."""

    since: datetime | None = None
    until: datetime | None = None

    @property
    def period(self) -> Period:
        """The range as connectors receive it (``Subject.period``)."""
        return Period(self.since, self.until)


class ExportScope(Record):
    """What an export was asked for, and which processors that left out.

    ``period``, when the export asked for a time range; the manifest then says, per
    processor, which datasets it was applied to and which were exported whole.
    """

    connectors: list[str] | Literal["all"]
    categories: list[str] | Literal["all"]
    left_out: list[str]
    period: ExportPeriod | None = None


class ExportOptions(Record):
    """An export's request: formats, categories, protection, scope; and its downloads."""

    kind: Literal["export"] = "export"
    formats: list[str]
    categories: list[str] = Field(default_factory=list)
    protection: Protection | None = None
    scope: ExportScope
    downloads: int = 0
    #: The language of the subject's notices, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None
    #: The IANA time zone the archive's ``index.html`` writes moments in, as asked (or the
    #: token's ``zoneinfo`` claim); none: ``HANDOVER_TIME_ZONE``.
    time_zone: str | None = None


RestrictionGround = Literal[
    "accuracy_contested", "unlawful_processing", "legal_claims", "objection_pending"
]
"""Why processing is restricted (GDPR Art. 18(1)): (a) the accuracy is contested, for the
time it takes to verify it; (b) the processing is unlawful and the subject asks restriction
rather than erasure; (c) the controller no longer needs the data but the subject needs it
for legal claims; (d) the subject objected (Art. 21(1)), pending the balancing."""


class ErasureOptions(Record):
    """An erasure's or restriction's request, and its confirmation; a restriction's ground
    (Art. 18(1)) and, where known, until when it holds."""

    kind: Literal["erasure", "restriction"]
    dry_run: bool = False
    reason: str | None = None
    ground: RestrictionGround | None = None
    until: datetime | None = None
    #: The job that lifts this restriction (GDPR Art. 18(3)), once one was asked for.
    lifted_by: str | None = None
    confirmed_at: datetime | None = None
    confirmed_by: str | None = None
    #: The language of the subject's notices, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None


class StaffDecision(Record):
    """Staff's decision on a request that waits for one: an objection (GDPR Art. 21(1)),
    upheld or rejected with the compelling legitimate grounds that override the subject's
    interests; a rectification, approved or rejected with the reason."""

    upheld: bool
    grounds: str | None = None
    by: str
    at: datetime
    #: How staff checked the new value of an identity field before approving its change
    #: (free text; required then, recorded in the receipt).
    verified_by: str | None = None


class ObjectionOptions(Record):
    """An objection's request: the purposes objected to, and staff's decision if it needs one.

    Direct marketing (Art. 21(2), 21(3)) needs none: it runs at once. Other purposes wait
    in ``awaiting_confirmation`` for :meth:`jobs.commands.Commands.decide`. A request naming
    both becomes two jobs, each naming the other in ``related``.
    """

    kind: Literal["objection"] = "objection"
    purposes: list[str]
    reason: str | None = None
    related: str | None = None
    decision: StaffDecision | None = None
    #: The language of the subject's notices, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None


class FieldRef(Record):
    """A field a rectification changes: where, never the value (that is
    :attr:`Job.new_values`, kept only while the job is live)."""

    connector: str
    dataset: str
    field: str
    #: The field identifies the subject (an email): approval needed by default.
    identity: bool = False


class RectificationOptions(Record):
    """A rectification's request (GDPR Art. 16): the fields to correct, and staff's approval
    when it needs one (``HANDOVER_RECTIFICATION_APPROVAL``)."""

    kind: Literal["rectification"] = "rectification"
    changes: list[FieldRef]
    reason: str | None = None
    approval_needed: bool = False
    decision: StaffDecision | None = None
    #: The language of the subject's notices, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None


class LiftOptions(Record):
    """A lift's request: the restriction it ends, why, and from when (GDPR Art. 18(3)).

    The subject is told by the ``restriction_lifting`` notice, recorded on the
    restriction's timeline; the lift does nothing at a processor until that notice is sent.
    """

    kind: Literal["lift"] = "lift"
    restriction: str
    #: The restriction's ground (Art. 18(1)), as it recorded it.
    ground: RestrictionGround | None = None
    reason: str
    lifts_at: datetime
    #: The language of the subject's notices, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None


class DisclosureOrder(Record):
    """The order that compels a disclosure: the authority (the archive's recipient), the
    order's reference and the legal basis it was made under."""

    authority: str
    reference: str
    legal_basis: str


class DisclosureOptions(Record):
    """A compelled disclosure's request: the export it runs (scope, formats), the order, and
    the rule for telling the subject (``now``, ``deferred``, ``never``).

    The rule's reasons, deferral dates and extensions live in the register
    (:mod:`jobs.disclosures`), which outlives the job.
    """

    kind: Literal["disclosure"] = "disclosure"
    export: ExportOptions
    order: DisclosureOrder
    notice: Literal["now", "deferred", "never"]
    #: The language of the subject's notice, as asked (:func:`jobs.notices.language_of`).
    locale: str | None = None


Options = Annotated[
    ExportOptions
    | ErasureOptions
    | ObjectionOptions
    | RectificationOptions
    | LiftOptions
    | DisclosureOptions,
    Field(discriminator="kind"),
]
"""A job's kind-specific request, told apart by its ``kind``."""


class InformationRequest(Record):
    """What support asked the subject for (GDPR Art. 12(6)), and the subject's answer.

    ``offered`` holds identifier values the subject gave in the answer: personal data,
    kept only while the job is live and used only once support accepts them, saying how
    they were verified (:meth:`jobs.commands.Commands.resume`).
    """

    needs: str
    asked_by: str
    asked_at: datetime
    #: The jurisdiction stops the clock while the subject is asked (see jobs.lifecycle).
    pauses_clock: bool
    #: The answer resumes the job by itself (when it offers no identifiers).
    resume_on_answer: bool = False
    #: The status the job goes back to: queued, or awaiting_confirmation.
    resume_to: JobStatus = JobStatus.QUEUED
    answer: str | None = None
    answered_at: datetime | None = None
    offered: dict[str, str] = Field(default_factory=dict, repr=False)
    resumed_at: datetime | None = None
    resumed_by: str | None = None

    @property
    def clock_stopped(self) -> bool:
        """The clock is stopped now: it pauses for information, and none has come yet."""
        return self.pauses_clock and self.answered_at is None and self.resumed_at is None


class Refusal(Record):
    """Why a request was refused, and where the subject may complain (Art. 12(4))."""

    grounds: str
    reason: str
    by: str
    at: datetime
    authority: str | None = None
    authority_url: str | None = None


class Job(Record):
    """A request and everything known about its progress.

    Stored as its ``core`` (everything but the runs) and one entry per run, so a
    run's update writes only that run (:mod:`jobs.store`).
    """

    id: str
    kind: JobKind
    subject: str
    status: JobStatus
    requested_by: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime
    options: Options
    extended_months: int = 0
    #: Days the deadline was extended by, under a jurisdiction counting in days.
    extended_days: int = 0
    #: The jurisdiction whose rules set the deadline (:mod:`jobs.lifecycle`).
    jurisdiction: str = "gdpr"
    #: When the request must have been acknowledged, if the jurisdiction says.
    acknowledge_by: datetime | None = None
    #: Time the clock stood still while the subject was asked for information, in ms.
    clock_paused_ms: int = 0
    information: InformationRequest | None = None
    refusal: Refusal | None = None
    generation: int = 1
    connectors: dict[str, ConnectorRun] = Field(default_factory=dict)
    result: ArchiveResult | None = None
    receipt: dict[str, Any] | None = None
    not_before: datetime | None = None
    error: str | None = None
    identity: Identity = Field(default_factory=Identity)
    #: An export's archive password, kept only until its archive is written or the job ends.
    archive_password: str | None = Field(default=None, repr=False)
    #: A rectification's new values, one per change (personal data): kept only while the
    #: job is live, never shown, logged, sent or signed.
    new_values: list[Any] = Field(default_factory=list, repr=False)

    @property
    def export_options(self) -> ExportOptions:
        """The options of an export job, or of the export a disclosure runs."""
        if isinstance(self.options, DisclosureOptions):
            return self.options.export
        if not isinstance(self.options, ExportOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not an export")
        return self.options

    @property
    def disclosure_options(self) -> DisclosureOptions:
        """The options of a disclosure job."""
        if not isinstance(self.options, DisclosureOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not a disclosure")
        return self.options

    @property
    def erasure_options(self) -> ErasureOptions:
        """The options of an erasure or restriction job."""
        if not isinstance(self.options, ErasureOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not an erasure")
        return self.options

    @property
    def objection_options(self) -> ObjectionOptions:
        """The options of an objection job."""
        if not isinstance(self.options, ObjectionOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not an objection")
        return self.options

    @property
    def lift_options(self) -> LiftOptions:
        """The options of a lift job."""
        if not isinstance(self.options, LiftOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not a lift")
        return self.options

    @property
    def rectification_options(self) -> RectificationOptions:
        """The options of a rectification job."""
        if not isinstance(self.options, RectificationOptions):
            raise TypeError(f"job {self.id} is an {self.kind.value}, not a rectification")
        return self.options

    def deadline_state(self, now: datetime) -> str | None:
        """``overdue``, ``at risk`` (under a quarter of its time left) or ``ok``; ``paused``
        while its clock stands still for the subject's information; None once ended.

        The one rule behind the dashboard's badges, the API's ``deadline`` and the
        store's ``overdue`` and ``at_risk`` searches, so a badge and a filter never
        disagree.
        """
        if self.status.terminal:
            return None
        if self.clock_stopped:
            return "paused"
        return deadline_standing(self.created_at, self.due_at, now)

    @property
    def waiting_on_processor(self) -> bool:
        """Nothing is under way: every run has settled, and one waits on a person's reply.

        Such a job holds no worker; the sweeper leaves it be (:func:`jobs.worker.sweep`)
        while its clock runs on (deadline and at-risk rules as for any live job).
        """
        runs = self.connectors.values()
        return all(run.status.settled for run in runs) and any(
            run.status is RunStatus.WAITING_ON_PROCESSOR for run in runs
        )

    @property
    def clock_stopped(self) -> bool:
        """The job waits for the subject's information and its jurisdiction stops the clock."""
        return (
            self.status is JobStatus.AWAITING_INFORMATION
            and self.information is not None
            and self.information.clock_stopped
        )

    @property
    def open_due(self) -> datetime | None:
        """``due_at`` while the clock runs on a live job; None once ended or while stopped.

        The store indexes a job among the open ones (overdue, at risk) by this. A disclosure
        has none: it is no subject's request, its deadline no subject's right.
        """
        if self.kind is JobKind.DISCLOSURE:
            return None
        return None if self.status.terminal or self.clock_stopped else self.due_at

    def paused_for(self, now: datetime) -> timedelta:
        """How long the clock has stood still in all, the pause under way included."""
        paused = timedelta(milliseconds=self.clock_paused_ms)
        if self.clock_stopped and self.information is not None:
            paused += max(now - self.information.asked_at, timedelta(0))
        return paused

    @property
    def subject_view(self) -> Subject:
        """The subject with every identifier known now, as connectors receive it."""
        return self.identity.subject(self.subject)

    def ended(self) -> None:
        """Forget what the job held only while live: identifier values (those a subject offered
        too), an archive password, a rectification's new values."""
        self.identity.forget()
        self.archive_password = None
        self.new_values = []
        if self.information is not None:
            self.information.offered.clear()


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """A moment as Handover writes it everywhere: ISO 8601, UTC as ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def epoch_ms(value: datetime) -> int:
    """A moment as the job store's indexes score it: whole milliseconds since the epoch."""
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Event:
    """One entry of a job's append-only timeline."""

    id: str
    at: datetime
    type: str
    actor: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "at": iso(self.at),
            "type": self.type,
            "actor": self.actor,
            **self.data,
        }


def deadline_standing(created_at: datetime, due_at: datetime, now: datetime) -> str:
    """``overdue``, ``at risk`` (under a quarter of its time left) or ``ok``: where a
    running clock stands at ``now``; :meth:`Job.deadline_state` and the DPO's report
    (:mod:`jobs.accountability`) judge by it."""
    remaining = due_at - now
    if remaining < timedelta(0):
        return "overdue"
    if remaining < (due_at - created_at) * AT_RISK_SHARE:
        return "at risk"
    return "ok"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, to the millisecond (what JSON round-trips)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class InvalidRequest(Exception):
    """A request names something that does not exist or cannot be done; ``field`` says where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
