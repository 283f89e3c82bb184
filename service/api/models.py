"""The API's request and response shapes.

Request models validate what clients send (unknown fields rejected); response
models document what the API answers. Both feed ``/openapi.json``, and the tests
check real responses against these schemas, so documentation and code agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.model import JobKind, JobStatus, Options
from jobs.search import JobQuery

Format = Literal["json", "csv", "ndjson"]
JobStatusName = Literal[
    "awaiting_confirmation",
    "queued",
    "running",
    "needs_attention",
    "succeeded",
    "failed",
    "canceled",
    "expired",
]
RunStatusName = Literal["pending", "running", "succeeded", "failed", "unidentified", "not_asked"]


class Strict(BaseModel):
    """A request body: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)


class IdentifiersIn(Strict):
    """Identifiers support staff vouch for, and how they checked the subject's identity."""

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
    verified_by: str = Field(
        min_length=3,
        max_length=500,
        description="How the subject's identity was checked; kept with the job as evidence "
        "and named in the archive or receipt (the values never are).",
        examples=["ID card checked at the front desk by J. Doe"],
    )

    def named(self) -> dict[str, str]:
        """Every identifier given, by name."""
        given = {"email": self.email, "phone_number": self.phone_number}
        return {**{k: v for k, v in given.items() if v is not None}, **self.identities}


class GoWithoutRequest(Strict):
    """Support's decision to finish a request without processors that could not be asked."""

    connectors: list[str] = Field(min_length=1, max_length=200, examples=[["newsletter"]])
    reason: str = Field(
        min_length=3,
        max_length=1000,
        description="Why; named in the archive or receipt beside each processor not asked.",
        examples=["the subject has no account at this processor and gave no email"],
    )


_IDENTIFIERS_DESCRIPTION = (
    "Support and admin, filing for someone: identifiers to find the subject by at "
    "processors, with how identity was verified. A subject's own come from their "
    "verified token claims."
)


class ExportRequest(Strict):
    """Ask for a copy of everything held on a subject (GDPR Art. 15 and 20)."""

    subject: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Whose data. A subject may only name themself (or omit it); "
        "support and admin must name the subject.",
        examples=["alice"],
    )
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
    age_recipient: str | None = Field(
        None,
        pattern=r"^age1[02-9ac-hj-np-z]{58}$",
        description="Encrypt the whole archive to this age public key (age1…); "
        "decrypt with `age -d -i key.txt`.",
        examples=["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"],
    )
    identifiers: IdentifiersIn | None = Field(None, description=_IDENTIFIERS_DESCRIPTION)


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


class RestrictionRequest(ErasureRequest):
    """Ask for processing of the subject's data to be restricted (GDPR Art. 18)."""


class CancelRequest(Strict):
    """Why a job is being canceled."""

    reason: str | None = Field(None, max_length=1000, examples=["asked for by mistake"])


class ExtendRequest(Strict):
    """Extend a request's deadline (GDPR Art. 12(3): by two further months at most)."""

    months: int = Field(1, ge=1, le=2, description="How many months to add.", examples=[1])
    reason: str = Field(
        min_length=3,
        max_length=1000,
        description="Why; the subject must be told (Art. 12(3)).",
        examples=["twelve processors to ask; the subject was told on 2026-03-02"],
    )


class JobSearch(BaseModel):
    """Query parameters of GET /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["export", "erasure", "restriction"] | None = Field(None, examples=["export"])
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
    sha256: str
    expires_at: datetime
    key_id: str = Field(description="Id of the key in GET /v1/keys that signed the manifest.")
    files: list[ArchiveFile]


class JobLinks(BaseModel):
    """Where to go next."""

    model_config = ConfigDict(extra="forbid")

    self: str
    events: str
    download: str | None
    receipt: str | None


class JobOut(BaseModel):
    """A request and its progress: a field the API sends and this model lacks is an error."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Sortable id (ULID).", examples=["01JD2Z6S41ABCDEFGHJKMNPQRS"])
    kind: Literal["export", "erasure", "restriction"]
    status: JobStatusName
    subject: str
    requested_by: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime = Field(description="The legal deadline: one month from receipt (Art. 12(3)).")
    deadline: Literal["ok", "at risk", "overdue"] | None = Field(
        description="Where a live job stands against its deadline (at risk: under a quarter "
        "of its time left); null once it has ended."
    )
    options: Options = Field(description="What was asked: an export's or an erasure's options.")
    extended_months: int = Field(description="Months the deadline was extended by (at most 2).")
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


class ReceiptOut(BaseModel):
    """A signed erasure or restriction receipt; `handover verify` checks it."""

    model_config = ConfigDict(extra="allow")

    format: Literal["handover-receipt"]
    format_version: int
    kind: Literal["erasure", "restriction"]
    job: dict[str, object]
    subject: dict[str, str]
    issued_at: datetime
    connectors: list[dict[str, object]]
    signature: dict[str, str]


class ProblemOut(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str
