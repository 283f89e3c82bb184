"""The job: a request by or about one subject, its per-connector progress and its result.

States and the only moves between them::

    awaiting_confirmation ─▶ queued ─▶ running ─▶ succeeded ─▶ expired
            │               ▲  │  ▲       │                     ▲
            │  identifiers  │  │  │       ▼                     │ (erased: the subject's
            │  added, or    └──┼──┼─ needs_attention            │  data is gone)
            │  decided         │  │                             │
            └──────────────────┴──┼──────────▶ failed ──────────┘
                                  └─────────────┘ retry       (any live state ─▶ canceled)

``needs_attention`` is live: a processor could not be asked (no identifier it
needs is known) and the job waits, without holding its subject, for support to
supply one or to decide to go without that processor.

:func:`check_transition` is the one place that says which moves are legal; the
store calls it inside the same Redis transaction that writes the move and its event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, overload

from connectors.items import Subject

#: A live job is at risk once less than this share of its time to the deadline is left.
AT_RISK_SHARE = 0.25


class JobKind(StrEnum):
    """What the subject asked for."""

    EXPORT = "export"
    ERASURE = "erasure"
    RESTRICTION = "restriction"


class JobStatus(StrEnum):
    """Where a job stands."""

    AWAITING_CONFIRMATION = "awaiting_confirmation"
    QUEUED = "queued"
    RUNNING = "running"
    NEEDS_ATTENTION = "needs_attention"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """No work will happen on the job any more (short of a retry)."""
        return self in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.EXPIRED,
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

    @property
    def finished(self) -> bool:
        """The run will not change unless the job is retried."""
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.NOT_ASKED}

    @property
    def settled(self) -> bool:
        """No work is under way or due for the run: finished, or waiting on a person."""
        return self.finished or self is RunStatus.UNIDENTIFIED


_LEGAL: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.AWAITING_CONFIRMATION: frozenset({JobStatus.QUEUED, JobStatus.CANCELED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.NEEDS_ATTENTION}
    ),
    JobStatus.NEEDS_ATTENTION: frozenset({JobStatus.QUEUED, JobStatus.CANCELED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.EXPIRED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.EXPIRED}),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
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


@dataclass
class StagedPart:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "connector": self.connector,
            "dataset": self.dataset,
            "category": self.category,
            "format": self.format,
            "records": self.records,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "crc32": self.crc32,
            "compressed_size": self.compressed_size,
            "chunks": [list(c) for c in self.chunks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagedPart:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["chunks"] = [(int(a), int(b)) for a, b in data["chunks"]]
        return cls(**values)


@dataclass
class ConnectorRun:
    """One connector's share of a job."""

    status: RunStatus = RunStatus.PENDING
    attempts: int = 0
    records: int = 0
    bytes: int = 0
    error: str | None = None
    error_class: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    staged_key: str | None = None
    parts: list[StagedPart] = field(default_factory=list)
    report: dict[str, Any] | None = None
    #: Why the processor was not asked: ``{"reason", "by", "at"}`` (status ``not_asked``).
    decision: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "decision": self.decision,
            "status": self.status.value,
            "attempts": self.attempts,
            "records": self.records,
            "bytes": self.bytes,
            "error": self.error,
            "error_class": self.error_class,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "staged_key": self.staged_key,
            "parts": [p.to_dict() for p in self.parts],
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectorRun:
        """Inverse of :meth:`to_dict`."""
        return cls(
            status=RunStatus(data["status"]),
            attempts=data["attempts"],
            records=data["records"],
            bytes=data["bytes"],
            error=data.get("error"),
            error_class=data.get("error_class"),
            started_at=_from_iso(data.get("started_at")),
            finished_at=_from_iso(data.get("finished_at")),
            staged_key=data.get("staged_key"),
            parts=[StagedPart.from_dict(p) for p in data.get("parts", [])],
            report=data.get("report"),
            decision=data.get("decision"),
        )


@dataclass
class Identity:
    """Who the subject is at the processors: identifiers and the evidence for each.

    ``identifiers`` maps a name (``email``, ``phone_number``, ``hubspot_contact_id``, …)
    to its value; the platform user id is the job's ``subject``. The values are
    personal data: they live on the job only while it is live (the store forgets
    them when it ends) and never appear in logs, webhooks, metrics, manifests or
    receipts. ``evidence`` keeps, for good, which *kinds* of identifier were known
    and how each was verified or found. ``resolved`` is false until the identity
    sources have run for the identifiers known now.
    """

    identifiers: dict[str, str] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the store only: it holds the values)."""
        return {
            "identifiers": self.identifiers,
            "evidence": self.evidence,
            "resolved": self.resolved,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Identity:
        """Inverse of :meth:`to_dict`."""
        if not data:
            return cls()
        return cls(
            identifiers=dict(data.get("identifiers") or {}),
            evidence=list(data.get("evidence") or []),
            resolved=bool(data.get("resolved")),
        )


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


@dataclass
class ArchiveResult:
    """Where the finished archive lives and how to check it."""

    key: str
    size: int
    sha256: str
    expires_at: datetime
    key_id: str
    files: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "expires_at": iso(self.expires_at),
            "key_id": self.key_id,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveResult:
        """Inverse of :meth:`to_dict`."""
        expires_at = _from_iso(data["expires_at"])
        assert expires_at is not None
        return cls(
            key=data["key"],
            size=data["size"],
            sha256=data["sha256"],
            expires_at=expires_at,
            key_id=data["key_id"],
            files=data["files"],
        )


@dataclass
class Job:
    """A request and everything known about its progress."""

    id: str
    kind: JobKind
    subject: str
    status: JobStatus
    requested_by: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime
    options: dict[str, Any]
    generation: int = 1
    connectors: dict[str, ConnectorRun] = field(default_factory=dict)
    result: ArchiveResult | None = None
    receipt: dict[str, Any] | None = None
    not_before: datetime | None = None
    error: str | None = None
    identity: Identity = field(default_factory=Identity)

    def deadline_state(self, now: datetime) -> str | None:
        """``overdue``, ``at risk`` (under a quarter of its time left) or ``ok``; None once ended.

        The one rule behind the dashboard's badges, the API's ``deadline`` and the
        store's ``overdue`` and ``at_risk`` searches, so a badge and a filter never
        disagree.
        """
        if self.status.terminal:
            return None
        remaining = self.due_at - now
        if remaining < timedelta(0):
            return "overdue"
        if remaining < (self.due_at - self.created_at) * AT_RISK_SHARE:
            return "at risk"
        return "ok"

    @property
    def subject_view(self) -> Subject:
        """The subject with every identifier known now, as connectors receive it."""
        return self.identity.subject(self.subject)

    def core_dict(self) -> dict[str, Any]:
        """Everything but the per-connector runs, which are stored separately."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "subject": self.subject,
            "status": self.status.value,
            "requested_by": self.requested_by,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "due_at": iso(self.due_at),
            "options": self.options,
            "generation": self.generation,
            "result": self.result.to_dict() if self.result else None,
            "receipt": self.receipt,
            "not_before": iso(self.not_before),
            "error": self.error,
            "identity": self.identity.to_dict(),
        }

    @classmethod
    def from_parts(cls, core: dict[str, Any], runs: dict[str, ConnectorRun]) -> Job:
        """Rebuild a job from its stored core and runs."""
        created_at = _from_iso(core["created_at"])
        updated_at = _from_iso(core["updated_at"])
        due_at = _from_iso(core["due_at"])
        assert created_at
        assert updated_at
        assert due_at
        return cls(
            id=core["id"],
            kind=JobKind(core["kind"]),
            subject=core["subject"],
            status=JobStatus(core["status"]),
            requested_by=core["requested_by"],
            created_at=created_at,
            updated_at=updated_at,
            due_at=due_at,
            options=core["options"],
            generation=core["generation"],
            connectors=runs,
            result=ArchiveResult.from_dict(core["result"]) if core.get("result") else None,
            receipt=core.get("receipt"),
            not_before=_from_iso(core.get("not_before")),
            error=core.get("error"),
            identity=Identity.from_dict(core.get("identity")),
        )


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """A moment as Handover writes it everywhere: ISO 8601, UTC as ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


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
