"""``GET /v1/jobs/{id}`` reads a job's view from its stored JSON (``record_view``): the
oracle is the view built through the model (``job_view``), byte for byte, for jobs of
every kind and in every status, with every optional part filled in or left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from jobs.model import (
    ArchiveFile,
    ArchiveResult,
    ConnectorRun,
    ExportPeriod,
    Identity,
    InformationRequest,
    Job,
    JobKind,
    JobStatus,
    Refusal,
    RunStatus,
    StaffDecision,
)
from jobs.store import JobStore
from service.api.views import job_view, record_view
from tests.factories import options_for, staged_part

NOW = datetime(2026, 12, 6, 10, 48, 0, 227000, tzinfo=UTC)
WHOLE_SECOND = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 8, 9, 0, 0, 1000, tzinfo=UTC)
ELSEWHERE = datetime(2026, 12, 8, 9, 0, 0, 1000, tzinfo=timezone(timedelta(hours=2)))


def stored(job: Job) -> dict[bytes, bytes]:
    """The job's record as the store writes it (and ``HGETALL`` reads it back)."""
    raw = {b"core": job.model_dump_json(exclude={"connectors"}).encode()}
    raw.update(
        {f"run:{n}".encode(): r.model_dump_json().encode() for n, r in job.connectors.items()}
    )
    return raw


def decode(raw: dict[bytes, bytes]) -> Job:
    return JobStore.decode(None, raw)  # type: ignore[arg-type]  # decode reads no state


def a_job(kind: JobKind, status: JobStatus, *, filled: bool) -> Job:
    job = Job(
        id="01M95FFFZ45N3F2ZNKB0JMZS3C",
        kind=kind,
        subject="subject-1",
        status=status,
        requested_by="support-1",
        created_at=NOW,
        updated_at=WHOLE_SECOND,
        due_at=NOW + timedelta(days=31),
        options=options_for(kind),
        connectors={"crm": ConnectorRun(), "billing": ConnectorRun(status=RunStatus.RUNNING)},
    )
    if not filled:
        return job
    job.acknowledge_by = LATER
    job.not_before = WHOLE_SECOND
    job.error = "it broke — naïvely"
    job.receipt = {"signed": True, "at": "2026-12-06T10:48:00Z"}
    job.refusal = Refusal(grounds="manifestly unfounded", reason="r", by="admin-1", at=NOW)
    job.identity = Identity(
        identifiers={"email": "a@example.com"},
        evidence=[{"identifiers": ["email"], "source": "token", "verified_by": "x", "by": "s"}],
        resolved=True,
    )
    job.result = ArchiveResult(
        key="exports/x.zip",
        size=10,
        sha256="ab" * 32,
        crc32="0badf00d",
        expires_at=LATER,
        key_id="k1",
        files=[ArchiveFile(path="crm/a.json", connector="crm", format="json", records=1, bytes=5)],
    )
    job.connectors["crm"] = ConnectorRun(
        status=RunStatus.FAILED,
        attempts=2,
        error="boom",
        error_class="ConnectorUnavailable",
        error_detail="the processor said: a@example.com",
        started_at=NOW,
        finished_at=WHOLE_SECOND,
        staged_key="staged/crm",
        parts=[
            staged_part("crm/a.json", bytes=5, sha256="cd" * 32, compressed_size=4, chunks=[(0, 4)])
        ],
        report={"deleted": 3, "at": "2026-12-06T10:48:00Z"},
        decision={"reason": "r", "by": "b", "at": "2026-12-06T10:48:00Z"},
    )
    if kind is JobKind.EXPORT:
        job.export_options.scope.period = ExportPeriod(since=NOW, until=None)
    if kind is JobKind.OBJECTION:
        job.objection_options.decision = StaffDecision(upheld=True, by="admin-1", at=NOW)
    if status is JobStatus.AWAITING_INFORMATION:
        job.information = InformationRequest(
            needs="proof",
            asked_by="support-1",
            asked_at=NOW,
            pauses_clock=True,
            offered={"phone_number": "1", "email": "b@example.com"},
        )
    return job


CASES = [
    (kind, status, filled) for kind in JobKind for status in JobStatus for filled in (False, True)
]


@pytest.mark.parametrize(("kind", "status", "filled"), CASES)
@pytest.mark.parametrize("admin", [False, True])
def test_the_view_read_from_the_record_is_the_models_byte_for_byte(
    kind: JobKind, status: JobStatus, filled: bool, admin: bool
) -> None:
    raw = stored(a_job(kind, status, filled=filled))
    expected = orjson.dumps(job_view(decode(raw), admin=admin))
    view = record_view(raw, admin=admin)
    if view is None:  # the model reads it: only where record_view says it must
        assert status is JobStatus.AWAITING_INFORMATION
        return
    assert orjson.dumps(view) == expected


def test_a_rectification_shown_to_staff_is_read_through_the_model() -> None:
    raw = stored(a_job(JobKind.RECTIFICATION, JobStatus.AWAITING_CONFIRMATION, filled=False))
    assert record_view(raw, staff=True) is None
    assert record_view(raw, staff=False) is not None


def older(raw: dict[bytes, bytes], part: bytes, edit: Any) -> dict[bytes, bytes]:
    record = orjson.loads(raw[part])
    edit(record)
    return {**raw, part: orjson.dumps(record)}


@pytest.mark.parametrize(
    ("part", "edit"),
    [
        (b"core", lambda r: r.pop("clock_paused_ms")),  # a field added since: its default
        (b"run:crm", lambda r: r.pop("restages")),
        (b"core", lambda r: r["options"].pop("time_zone")),
        (b"core", lambda r: r.update(refusal=None, status="queued", due_at="2027-01-06")),
        (b"core", lambda r: r.update({"jurisdiction": r.pop("jurisdiction")})),  # reordered
        (b"core", lambda r: r.update(acknowledge_by=ELSEWHERE.isoformat())),  # not UTC
        (b"run:crm", lambda r: r.update(started_at="2026-12-06T10:48:00.2Z")),
    ],
)
def test_a_record_in_another_shape_is_read_through_the_model(part: bytes, edit: Any) -> None:
    raw = older(stored(a_job(JobKind.EXPORT, JobStatus.QUEUED, filled=True)), part, edit)
    assert record_view(raw) is None
    decode(raw)  # and the model reads it


def test_both_views_read_the_same_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock a day past the job's due date: both views must call it overdue.
    monkeypatch.setattr("service.api.views.utcnow", lambda: NOW + timedelta(days=32))
    raw = stored(a_job(JobKind.EXPORT, JobStatus.RUNNING, filled=True))
    view = record_view(raw)
    assert view is not None and view["deadline"] == "overdue"
    assert orjson.dumps(view) == orjson.dumps(job_view(decode(raw)))
