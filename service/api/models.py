"""The API's request and response shapes.

Request models validate what clients send (unknown fields rejected); response
models document what the API answers. Both feed ``/openapi.json``, and the tests
check real responses against these schemas, so documentation and code agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from jobs.model import JobKind, JobStatus, Options
from jobs.search import JobQuery

Format = Literal["json", "csv", "ndjson"]
JobStatusName = Literal[
    "awaiting_confirmation",
    "awaiting_information",
    "queued",
    "running",
    "needs_attention",
    "succeeded",
    "failed",
    "canceled",
    "expired",
    "refused",
]
RefusalGroundsName = Literal[
    "manifestly_unfounded",
    "excessive",
    "identity_not_established",
    "rights_of_others",
    "legal_exemption",
]
RunStatusName = Literal[
    "pending", "running", "succeeded", "failed", "unidentified", "not_asked", "waiting_on_processor"
]


class Strict(BaseModel):
    """A request body: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Identifiers(Strict):
    """Identifiers of the subject, by name: checked like every identifier Handover takes in."""

    email: str | None = Field(
        None,
        min_length=3,
        max_length=320,
        pattern=r"^[^@\s]+@[^@\s]+$",
        examples=["alice@example.com"],
    )
    phone_number: str | None = Field(
        None,
        min_length=3,
        max_length=32,
        pattern=r"^\+?[0-9 ().-]+$",
        examples=["+33 6 12 34 56 78"],
    )
    identities: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="Further identifiers by name, as connectors declare them "
        "(e.g. `hubspot_contact_id`).",
        examples=[{"hubspot_contact_id": "901"}],
    )

    def named(self) -> dict[str, str]:
        """Every identifier given, by name."""
        given = {"email": self.email, "phone_number": self.phone_number}
        return {**{k: v for k, v in given.items() if v is not None}, **self.identities}


class IdentifiersIn(Identifiers):
    """Identifiers support staff vouch for, and how they checked the subject's identity."""

    verified_by: str = Field(
        min_length=3,
        max_length=500,
        description="How the subject's identity was checked; kept with the job as evidence "
        "and named in the archive or receipt (the values never are).",
        examples=["ID card checked at the front desk by J. Doe"],
    )


class GoWithoutRequest(Strict):
    """Support's decision to finish a request without processors that could not be asked."""

    connectors: list[str] = Field(min_length=1, max_length=200, examples=[["newsletter"]])
    reason: str = Field(
        min_length=3,
        max_length=1000,
        description="Why; named in the archive or receipt beside each processor not asked.",
        examples=["the subject has no account at this processor and gave no email"],
    )


def _jurisdiction() -> Any:
    """The ``jurisdiction`` field of a new request."""
    return Field(
        None,
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="The law the request is made under: `gdpr`, `uk_gdpr`, `ccpa`, `lgpd` or one "
        "configured; it sets the deadline. Default: the token's jurisdiction claim "
        "(`HANDOVER_JURISDICTION_CLAIM`), else `HANDOVER_JURISDICTION`. A subject's must agree "
        "with their token's claim.",
        examples=["gdpr"],
    )


_IDENTIFIERS_DESCRIPTION = (
    "Support and admin, filing for someone: identifiers to find the subject by at "
    "processors, with how identity was verified. A subject's own come from their "
    "verified token claims."
)


_SUBJECT_FIELD = Field(
    None,
    min_length=1,
    max_length=256,
    description="Whose data. A subject may only name themself (or omit it); "
    "support and admin must name the subject.",
    examples=["alice"],
)
_LOCALE_FIELD = Field(
    None,
    max_length=35,
    pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8}){0,4}$",
    description="The language of the notices the subject is sent (BCP 47): en, fr, nl and "
    "de are written, any other gets English. Default: the subject's token's `locale` claim "
    "(when they ask for themself), else English.",
    examples=["fr-BE"],
)


class ExportRequest(Strict):
    """Ask for a copy of everything held on a subject (GDPR Art. 15 and 20)."""

    subject: str | None = _SUBJECT_FIELD
    formats: list[Format] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Renderings of each dataset; default: the service's default formats (json).",
        examples=[["json", "csv"]],
    )
    connectors: list[str] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Only these connectors; default: every configured connector.",
        examples=[["profile", "devices"]],
    )
    categories: list[str] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description="Only datasets of these categories (identification, device, telemetry, ...).",
        examples=[["identification", "telemetry"]],
    )
    password: str | None = Field(
        None,
        min_length=12,
        max_length=256,
        description="Encrypt every file of the archive with AES-256 (a ZIP that 7-Zip, "
        "WinZip and macOS open with this password). Kept only until the archive is written.",
    )
    jurisdiction: str | None = _jurisdiction()
    age_recipient: str | None = Field(
        None,
        pattern=r"^age1[02-9ac-hj-np-z]{58}$",
        description="Encrypt the whole archive to this age public key (age1…); "
        "decrypt with `age -d -i key.txt`.",
        examples=["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
    )
    identifiers: IdentifiersIn | None = Field(None, description=_IDENTIFIERS_DESCRIPTION)
    locale: str | None = _LOCALE_FIELD
    time_zone: str | None = Field(
        None,
        max_length=64,
        description="The IANA time zone the archive's index.html writes dates in. Default: the "
        "subject's token's `zoneinfo` claim when they ask themselves, else "
        "`HANDOVER_TIME_ZONE`.",
        examples=["Europe/Paris"],
    )
    since: AwareDatetime | None = Field(
        None,
        strict=False,
        description="Only what was recorded from this moment on (ISO 8601 with a time zone), "
        "where the processor can filter by time; the manifest says, per processor, which "
        "datasets the range was applied to and which were exported whole.",
        examples=["2026-11-01T00:00:00Z"],
    )
    until: AwareDatetime | None = Field(
        None,
        strict=False,
        description="Only what was recorded before this moment (excluded); after `since`.",
        examples=["2026-12-01T00:00:00Z"],
    )


class ErasureRequest(Strict):
    """Ask for erasure (GDPR Art. 17) at every processor, or a dry run of it."""

    subject: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Whose data. A subject may only name themself (or omit it).",
        examples=["alice"],
    )
    connectors: list[str] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Only these connectors; default: all.",
        examples=[["profile", "devices"]],
    )
    dry_run: bool = Field(
        False,
        description="Report what would happen and change nothing (needs no confirmation).",
        examples=[True],
    )
    reason: str | None = Field(
        None,
        max_length=1000,
        description="Why, in the requester's words; kept on the job.",
        examples=["I am closing my account"],
    )
    identifiers: IdentifiersIn | None = Field(None, description=_IDENTIFIERS_DESCRIPTION)
    locale: str | None = _LOCALE_FIELD
    jurisdiction: str | None = _jurisdiction()


class RestrictionRequest(ErasureRequest):
    """Ask for processing of the subject's data to be restricted (GDPR Art. 18)."""

    ground: (
        Literal["accuracy_contested", "unlawful_processing", "legal_claims", "objection_pending"]
        | None
    ) = Field(
        None,
        description="Why (Art. 18(1)): (a) `accuracy_contested`, while it is verified; (b) "
        "`unlawful_processing`, restriction asked instead of erasure; (c) `legal_claims`, data "
        "the controller no longer needs but the subject needs for legal claims; (d) "
        "`objection_pending`, while an objection (Art. 21(1)) is weighed. Named in the receipt.",
        examples=["accuracy_contested"],
    )
    until: datetime | None = Field(
        None,
        strict=False,  # an ISO 8601 string, as JSON carries moments
        description="Until when, where known (a moment to come); named in the receipt.",
        examples=["2027-03-01T00:00:00Z"],
    )


class ObjectionRequest(Strict):
    """Object to processing for some purposes (GDPR Art. 21)."""

    subject: str | None = _SUBJECT_FIELD
    purposes: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Handover's purposes: `direct_marketing` (absolute, Art. 21(2), 21(3): it "
        "runs at once) and those the configured connectors map (`analytics`, `research`…: "
        "they wait for support's decision, Art. 21(1)). Naming both makes two jobs, each "
        "naming the other in `options.related`; the answer is the direct marketing one.",
        examples=[["direct_marketing"]],
    )
    connectors: list[str] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Only these connectors; default: all.",
        examples=[["profile"]],
    )
    reason: str | None = Field(
        None,
        max_length=1000,
        description="Why, in the subject's words (Art. 21(1): grounds relating to their "
        "particular situation); kept on the job.",
        examples=["I no longer want marketing emails"],
    )
    identifiers: IdentifiersIn | None = Field(None, description=_IDENTIFIERS_DESCRIPTION)
    locale: str | None = _LOCALE_FIELD
    jurisdiction: str | None = _jurisdiction()


class ChangeIn(Strict):
    """One correction: a field of a dataset at a connector, and its new value."""

    connector: str = Field(min_length=1, max_length=64, examples=["profile"])
    dataset: str = Field(min_length=1, max_length=64, examples=["profile"])
    field: str = Field(min_length=1, max_length=64, examples=["name"])
    value: str | bool | int | float = Field(
        description="The new value, of the field's type (text, email, integer, number, "
        "boolean). Kept on the job only while it is live; never shown, sent or signed.",
        examples=["Alice Dupont"],
    )


class RectificationRequest(Strict):
    """Correct inaccurate personal data (GDPR Art. 16)."""

    subject: str | None = _SUBJECT_FIELD
    changes: list[ChangeIn] = Field(
        min_length=1,
        max_length=50,
        description="Only fields a connector declares rectifiable (`GET /v1/connectors`: "
        "`rectifiable`); a field that is not, or a value of the wrong type, is a 422 naming "
        "the change (`changes[0].value`).",
        examples=[
            [{"connector": "profile", "dataset": "profile", "field": "name", "value": "Alice D."}]
        ],
    )
    reason: str | None = Field(
        None,
        max_length=1000,
        description="Why, in the requester's words; kept on the job.",
        examples=["I married and changed my name"],
    )
    identifiers: IdentifiersIn | None = Field(None, description=_IDENTIFIERS_DESCRIPTION)
    locale: str | None = _LOCALE_FIELD
    jurisdiction: str | None = _jurisdiction()


class DecideRequest(Strict):
    """Support's decision on an objection (GDPR Art. 21(1)) or a rectification waiting for
    approval."""

    upheld: bool = Field(
        description="true: upheld (approved), it runs; false: it is rejected.",
        examples=[True],
    )
    grounds: str | None = Field(
        None,
        min_length=3,
        max_length=2000,
        description="Needed to reject: for an objection, the compelling legitimate grounds for "
        "the processing that override the subject's interests, rights and freedoms; for a "
        "rectification, why the data is accurate. The subject is told them and where to "
        "complain.",
        examples=["fraud prevention on the account: the analytics are needed to detect abuse"],
    )
    verified_by: str | None = Field(
        None,
        min_length=3,
        max_length=2000,
        description="Needed to approve a rectification of an identity field: how the new "
        "value was checked. Recorded in the decision and the signed receipt.",
        examples=["confirmation mail to the new address answered on 2026-03-02"],
    )


class LiftRequest(Strict):
    """Lift a restriction in force (GDPR Art. 18(3)); the subject is told first."""

    reason: str = Field(
        min_length=3,
        max_length=1000,
        description="Why; the subject is told, before anything is lifted.",
        examples=["the accuracy of your data was verified"],
    )
    lifts_at: AwareDatetime | None = Field(
        None,
        strict=False,  # an ISO 8601 string, as JSON carries moments
        description="From when, with its time zone (default: now). Nothing is lifted before "
        "the subject's notice is sent, whatever this says.",
        examples=["2027-03-01T00:00:00Z"],
    )
    identifiers: IdentifiersIn = Field(
        description="The subject's email to tell them at, with how it was verified: the "
        "restriction, ended, no longer holds it. Without an email the subject cannot be "
        "told, and the lift is refused (422).",
    )


class CancelRequest(Strict):
    """Why a job is being canceled."""

    reason: str | None = Field(None, max_length=1000, examples=["asked for by mistake"])


class ExtendRequest(Strict):
    """Extend a request's deadline, as its jurisdiction allows (GDPR Art. 12(3): by two
    further months, announced within the first month; CCPA: once, by 45 days)."""

    months: int | None = Field(
        None,
        ge=1,
        le=12,
        description="Months to add, under a jurisdiction counting months (GDPR, UK GDPR). "
        "Neither months nor days: all the extension left.",
        examples=[1],
    )
    days: int | None = Field(
        None,
        ge=1,
        le=365,
        description="Days to add, under a jurisdiction counting days (CCPA).",
    )
    reason: str = Field(
        min_length=3,
        max_length=1000,
        description="Why; the subject is told, with the new due date (Art. 12(3)).",
        examples=["twelve processors to ask; some answer by post"],
    )


class RefuseRequest(Strict):
    """Refuse a request (GDPR Art. 12(4), 12(5)): the subject is told why and where to complain."""

    grounds: RefusalGroundsName = Field(
        description="manifestly_unfounded or excessive (Art. 12(5)), identity_not_established "
        "(Art. 12(2), 12(6)), rights_of_others (Art. 15(4)), legal_exemption (Art. 23).",
        examples=["excessive"],
    )
    reason: str = Field(
        min_length=3,
        max_length=2000,
        description="Why, in words the subject is told.",
        examples=["the fourth identical request this month; the last answer was sent on 2 May"],
    )


class AskRequest(Strict):
    """Ask the subject for information (GDPR Art. 12(6))."""

    needs: str = Field(
        min_length=3,
        max_length=2000,
        description="What the subject must provide; they are told, in these words.",
        examples=["the customer number printed on your last invoice"],
    )
    resume_on_answer: bool = Field(
        False,
        description="The subject's answer resumes the request by itself (unless it offers "
        "identifiers, which support must accept first).",
        examples=[False],
    )


class AnswerRequest(Strict):
    """The subject's answer to a request for information."""

    answer: str = Field(
        min_length=1,
        max_length=4000,
        description="What was asked for, in the subject's words.",
        examples=["My customer number is C-20931."],
    )
    identifiers: Identifiers | None = Field(
        None,
        description="Identifiers to be found by at processors. They wait until support "
        "accepts them (`POST /v1/jobs/{id}/resume` with `verified_by`).",
    )


class ResumeRequest(Strict):
    """Resume a request that waits for the subject's information."""

    verified_by: str | None = Field(
        None,
        min_length=3,
        max_length=500,
        description="Accept the identifiers the subject offered, saying how they were checked "
        "(kept as evidence); without it they are dropped.",
        examples=["matched the customer number against the invoice on file"],
    )


class JobSearch(BaseModel):
    """Query parameters of GET /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    kind: (
        Literal[
            "export", "erasure", "restriction", "objection", "rectification", "lift", "disclosure"
        ]
        | None
    ) = Field(None, examples=["export"])
    status: JobStatusName | None = Field(None, examples=["succeeded"])
    subject: str | None = Field(None, min_length=1, max_length=256, examples=["alice"])
    connector: str | None = Field(None, min_length=1, max_length=64, examples=["profile"])
    overdue: bool = Field(False, description="Live jobs past their deadline.", examples=[False])
    at_risk: bool = Field(
        False, description="Live jobs with under a quarter of their time left.", examples=[False]
    )
    due_before: datetime | None = Field(None, examples=["2027-01-01T00:00:00Z"])
    created_after: datetime | None = Field(None, examples=["2026-01-01T00:00:00Z"])
    created_before: datetime | None = Field(None, examples=["2027-01-01T00:00:00Z"])
    sort: Literal["created", "due"] = Field(
        "created",
        description="created: newest first; due: soonest deadline first.",
        examples=["due"],
    )
    limit: int = Field(50, ge=1, le=200, examples=[20])
    cursor: str | None = Field(
        None,
        max_length=200,
        description="next_cursor of the last page.",
        examples=["WzE3NjcyMjU2MDAuMCwiMDFKRDJaNlM0MUFCQ0RFRkdISktNTlBRUlMiXQ"],
    )

    def to_query(self) -> JobQuery:
        """The store's query for these parameters."""
        return JobQuery(
            kind=JobKind(self.kind) if self.kind else None,
            status=JobStatus(self.status) if self.status else None,
            subject=self.subject,
            connector=self.connector,
            overdue=self.overdue,
            at_risk=self.at_risk,
            due_before=self.due_before,
            created_after=self.created_after,
            created_before=self.created_before,
            sort=self.sort,
            limit=self.limit,
            cursor=self.cursor,
        )


class ConnectorProgress(BaseModel):
    """One connector's share of a job."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatusName
    records: int
    bytes: int
    attempts: int
    error: str | None = Field(
        description="Why the run failed, or which identifiers an unidentified run needs."
    )
    error_class: Literal["transient", "permanent", "storage", "internal"] | None = Field(
        description="transient or permanent: the processor's error; storage: object storage "
        "failed (the error says whether transient or permanent); internal: a bug."
    )
    error_detail: str | None = Field(
        default=None,
        description="Admins only: what the processor itself answered about the failure (an "
        "error body, a database's message). It may hold personal data, so support staff, "
        "subjects and webhooks never get it; `error` is Handover's own words.",
    )
    started_at: datetime | None
    finished_at: datetime | None
    report: dict[str, object] | None = Field(
        description="Erasure or restriction jobs: what this processor did (counts, no data)."
    )
    decision: dict[str, str] | None = Field(
        description="`not_asked` runs: support's decision to go without it (reason, by, at)."
    )
    restages: int = Field(
        description="Times its staged output vanished before the archive was written and it "
        "ran again (3 at most; one more loss fails the job)."
    )
    handoff: dict[str, object] | None = Field(
        default=None,
        description="A processor served by hand (`email`, `manual`): how and when it was "
        "asked (channel, to, asked_at, reply_by, message_id), reminders sent, when it was "
        "escalated as overdue.",
    )
    reply: dict[str, object] | None = Field(
        default=None,
        description="Its person's reply: who gave it, when, via what (link, dashboard), the "
        "files (name, bytes, SHA-256), the statement's lines, `nothing_held`, the checklist done.",
    )


class IdentityEvidence(BaseModel):
    """Which kinds of identifier a job knows and how each was obtained (never the values)."""

    model_config = ConfigDict(extra="forbid")

    identifiers: list[str] = Field(examples=[["email"]])
    source: str = Field(examples=["token", "staff", "connector profile"])
    verified_by: str = Field(examples=["sign-in (email_verified claim)"])


class ArchiveFile(BaseModel):
    """One file inside the archive."""

    model_config = ConfigDict(extra="forbid")

    path: str
    connector: str | None
    format: str
    records: int | None
    bytes: int


class ArchiveInfo(BaseModel):
    """The finished archive."""

    model_config = ConfigDict(extra="forbid")

    size: int
    sha256: str | None = Field(
        description="SHA-256 of the whole archive, when its bytes passed through the worker; "
        "null when the object store assembled it (S3, or the local store's kernel copies), "
        "where manifest.json's signed per-file SHA-256 vouches for the content."
    )
    crc32: str | None = Field(
        default=None,
        description="CRC-32 of the whole archive (8 hex digits), computed by the worker or, "
        "for an archive S3 assembled, S3's full-object checksum: a check of the download.",
    )
    expires_at: datetime
    key_id: str = Field(description="Id of the key in GET /v1/keys that signed the manifest.")
    files: list[ArchiveFile]


class InformationOut(BaseModel):
    """What the subject was asked for, and what they answered."""

    model_config = ConfigDict(extra="forbid")

    needs: str
    asked_by: str
    asked_at: datetime
    pauses_clock: bool = Field(description="The jurisdiction stops the clock meanwhile.")
    resume_on_answer: bool
    resume_to: JobStatusName
    answer: str | None
    answered_at: datetime | None
    offered: list[str] = Field(
        description="Kinds of identifier the subject offered, waiting for support to accept "
        "them (never the values)."
    )
    resumed_at: datetime | None
    resumed_by: str | None


class RefusalOut(BaseModel):
    """A refusal, as the subject was told it."""

    model_config = ConfigDict(extra="forbid")

    grounds: RefusalGroundsName | Literal["compelling_legitimate_grounds", "data_accurate"] = Field(
        description="As refused (`POST /v1/jobs/{id}/refuse`), or rejected "
        "(`POST /v1/jobs/{id}/decide`): `compelling_legitimate_grounds` (an objection), "
        "`data_accurate` (a rectification)."
    )
    reason: str
    by: str
    at: datetime
    authority: str | None
    authority_url: str | None


class JobLinks(BaseModel):
    """Where to go next."""

    model_config = ConfigDict(extra="forbid")

    self: str
    events: str
    download: str | None
    receipt: str | None


class NewValueOut(BaseModel):
    """A rectification's change with its new value, shown to the staff who decide it."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    dataset: str
    field: str
    identity: bool = Field(
        description="The field identifies the subject: approval needs `verified_by`."
    )
    value: Any


class JobOut(BaseModel):
    """A request and its progress: a field the API sends and this model lacks is an error."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Sortable id (ULID).", examples=["01JD2Z6S41ABCDEFGHJKMNPQRS"])
    kind: Literal[
        "export", "erasure", "restriction", "objection", "rectification", "lift", "disclosure"
    ]
    status: JobStatusName = Field(
        description="Where the job stands. Live: `awaiting_confirmation` (waits for a "
        "confirmation or a decision by staff, e.g. an erasure), `queued` (waits for a worker), "
        "`running`, `needs_attention` (a processor cannot be asked: support adds identifiers "
        "or goes without, and it is queued again), `awaiting_information` (support asked the "
        "subject for information; where the jurisdiction pauses the clock, `deadline` is "
        "`paused`; support's resume, or the subject's answer when support asked so, queues it "
        "again, or returns it to `awaiting_confirmation` when asked before it was confirmed). "
        "Ended: `succeeded`, `failed` (a retry queues it again), `canceled`, `expired` (an "
        "export's archive gone, or the subject's data erased since), `refused` (support "
        "refused it with grounds and a reason; the subject is told them and where to "
        "complain). In any live state, support may ask for information or refuse, and the job "
        "may be canceled. See the README's section 'The request lifecycle the law sets'.",
        examples=["queued"],
    )
    subject: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime = Field(
        description="The legal deadline, as the job's jurisdiction computes it from receipt, "
        "its extensions and the time its clock stood still (a pause under way moves it when "
        "the subject answers)."
    )
    deadline: Literal["ok", "at risk", "overdue", "paused"] | None = Field(
        description="Where a live job stands against its deadline (at risk: under a quarter "
        "of its time left; paused: its clock stands still for the subject's information); "
        "null once it has ended."
    )
    jurisdiction: str = Field(description="The law whose rules set the deadline.")
    acknowledge_by: datetime | None = Field(
        description="When the request must have been acknowledged (CCPA: 10 business days)."
    )
    options: Options = Field(
        description="What was asked: an export's, an erasure's, an objection's or a "
        "rectification's options (a rectification's new values never shown)."
    )
    extended_months: int = Field(description="Months the deadline was extended by.")
    extended_days: int = Field(description="Days the deadline was extended by (CCPA).")
    clock_paused_ms: int = Field(
        description="How long the clock stood still, in ms, while the subject was asked for "
        "information (a pause under way not included)."
    )
    information: InformationOut | None = Field(
        description="The last request for information to the subject, and the answer."
    )
    refusal: RefusalOut | None = Field(description="Why the request was refused, if it was.")
    new_values: list[NewValueOut] | None = Field(
        None,
        description="Staff only, on GET, while a rectification waits for their decision: "
        "each change with its new value. Never sent otherwise.",
    )
    generation: int = Field(description="Incremented by each retry.")
    not_before: datetime | None = Field(description="A confirmed erasure runs after this.")
    identity: list[IdentityEvidence] = Field(
        description="The kinds of identifier known for the subject and how each was verified."
    )
    connectors: dict[str, ConnectorProgress]
    result: ArchiveInfo | None
    error: str | None
    links: JobLinks


class JobList(BaseModel):
    """One page of jobs."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class Stats(BaseModel):
    """Where requests stand, for support staff."""

    counts: dict[str, dict[str, int]] = Field(description="Jobs by kind, then status.")
    overdue: int = Field(description="Live jobs past their deadline.")
    queue_depth: int = Field(description="Tasks waiting in the work queue.")


class EventOut(BaseModel):
    """One entry of a job's timeline."""

    model_config = ConfigDict(extra="allow")

    id: str
    at: datetime
    type: str
    actor: str


class EventList(BaseModel):
    """A job's timeline, oldest first."""

    events: list[EventOut]


class ReplyAsked(BaseModel):
    """What a reply link asks of the processor's person."""

    model_config = ConfigDict(extra="forbid")

    job: str
    connector: str
    kind: Literal["export", "erasure", "restriction", "rectification", "objection"] = Field(
        description="What the person is asked: every kind a by-hand processor can be asked."
    )
    article: str = Field(examples=["Art. 17 (erasure), as Art. 19 requires of recipients"])
    identifiers: dict[str, str] = Field(
        description="Only the identifiers this processor keys its data by, as known."
    )
    instructions: str | None
    checklist: list[str]
    asks_for: Literal["files", "statement"] = Field(
        description="An export asks for files (or `nothing_held`); the others a statement."
    )
    outcomes: list[str] = Field(
        description="The outcomes a statement's lines may state for this kind of request "
        "(none for an export); an objection's lines name its purposes in `what`.",
        examples=[["erased", "anonymised", "kept", "not_found"]],
    )
    reply_by: str | None
    due_at: datetime
    link_expires_at: datetime
    max_bytes: int = Field(description="The most a reply may upload, all files together.")


class ReplyFile(BaseModel):
    """One file of a reply, as received."""

    model_config = ConfigDict(extra="forbid")

    name: str
    bytes: int
    sha256: str


class ReplyTaken(BaseModel):
    """A reply recorded: the run answers with it now."""

    model_config = ConfigDict(extra="forbid")

    job: str
    connector: str
    recorded_at: datetime
    files: list[ReplyFile]
    lines: int


class ConnectorOut(BaseModel):
    """A configured connector and what it holds."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    categories: list[str]
    datasets: list[dict[str, str]]


class ConnectorList(BaseModel):
    """Every configured connector."""

    connectors: list[ConnectorOut]


class RecipientOut(BaseModel):
    """A recipient of subjects' data (GDPR Art. 15(1)(c), 19) and how it is told of a
    rectification, erasure or restriction: by the job itself (``connector``) or by email."""

    name: str
    recipient: str | None
    categories: list[str]
    told_by: Literal["connector", "email"]


class RecipientList(BaseModel):
    """Every recipient of subjects' data."""

    recipients: list[RecipientOut]


class Jwk(BaseModel):
    """An Ed25519 public key (RFC 8037) that verifies archive signatures."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: Literal["EdDSA"]
    use: Literal["sig"]
    needed_until: datetime = Field(description="The last archive it signed expires before this.")


class KeySet(BaseModel):
    """Every public key still needed to verify a live archive."""

    keys: list[Jwk]


def _absent_when_unset(schema: dict[str, Any]) -> None:
    """A member the API leaves out, rather than writing null: no null default in the schema."""
    schema.pop("default", None)


class InterruptedAttemptOut(BaseModel):
    """An attempt of an erasure at one processor that never confirmed (``jobs/journal.py``)."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(description="Which attempt of the run, counted from 1.")
    started_at: datetime = Field(description="When it started.")
    ended: str = Field(
        description="`interrupted` (the process stopped), or `failed: ` and the class of "
        "the error it ended with (`transient`, `permanent`...).",
        examples=["interrupted"],
    )
    outcome: Literal["committed", "rolled back", "unknown"] = Field(
        description="What became of its last planned step: `committed` (counted), `rolled "
        "back` (the next attempt found those records still there; not counted) or `unknown` "
        "(it could not be established; the counts leave that step out)."
    )
    last_step_planned: dict[str, dict[str, int]] = Field(
        description="The counts its last step planned, by dataset; empty when it planned "
        "none and what it changed could not be established."
    )
    note: str = Field(description="The same, in a sentence.")


class ReceiptConnectorOut(BaseModel):
    """One processor's entry in a receipt: whether it was asked, its report, its checks."""

    model_config = ConfigDict(extra="allow")

    connector: str = Field(description="The connector's name.")
    interrupted_attempts: list[InterruptedAttemptOut] | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="Erasures only, and only when some attempt at this processor never "
        "confirmed (a crash, or an error): each such attempt and what became of its last "
        "step. The entry's counts are those of every attempt together.",
    )


class HandoverCopyOut(BaseModel):
    """One of Handover's own copies of the subject's data that an erasure deleted."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="The earlier export's job id.")
    kind: Literal["export"]
    archive_deleted: bool = Field(description="Whether it had an archive, now deleted.")
    status: JobStatusName = Field(
        description="The export's status after: `expired` (it had ended), `canceled` (it was "
        "live with data staged), or the one it had reached meanwhile."
    )
    staged_objects_deleted: int | None = Field(
        description="How many of its staged objects were deleted; null when the erasure's "
        "finish was interrupted while deleting this copy, and the count was not recorded."
    )
    note: str | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="Only with a null `staged_objects_deleted`: says why it is not known.",
    )


class ReceiptOut(BaseModel):
    """A signed erasure, restriction, objection or rectification receipt; `handover verify`
    checks it."""

    model_config = ConfigDict(extra="allow")

    format: Literal["handover-receipt"]
    format_version: int
    kind: Literal["erasure", "restriction", "objection", "rectification", "lift"]
    job: dict[str, object]
    subject: dict[str, str]
    issued_at: datetime
    connectors: list[ReceiptConnectorOut]
    handover_copies: list[HandoverCopyOut] | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="Erasures only (a dry run's is empty): the subject's earlier exports "
        "whose archives and staged objects Handover deleted, each journaled so that a finish "
        "run again after a crash still lists it.",
    )
    signature: dict[str, str]


class ProblemErrorOut(BaseModel):
    """One invalid input of a 422."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(
        description="Where: the dotted path of the field in the request, or `(body)`.",
        examples=["jurisdiction"],
    )
    message: str = Field(description="What was wrong with it.")


class ProblemOut(BaseModel):
    """An RFC 9457 problem detail; the members below ``instance`` appear only where said."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemErrorOut] | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="On a 422 `invalid-request` about the request's fields (absent from the "
        "others): each invalid input, and what was wrong with it (`detail` says the same in "
        "one line).",
    )
    rule: str | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="409 `Not allowed` only: the rule of the law or of Handover that refuses "
        "the action now, as the last segment of `type` (e.g. `extension-too-late`, "
        "`extension-not-allowed`, `extension-already-made`).",
        examples=["extension-too-late"],
    )
    status_now: JobStatusName | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="On a 409 about a job whose status does not allow the action (a "
        "conflict, or `not-ready`): the status it has now.",
    )
    job_id: str | SkipJsonSchema[None] = Field(
        None,
        json_schema_extra=_absent_when_unset,
        description="409 `active-job-exists` only: the live job of the same kind for the "
        "subject (also in `Location`).",
    )
