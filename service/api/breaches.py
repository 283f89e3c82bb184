"""The breach register over HTTP (GDPR Art. 33): its shapes, its handlers, how a breach is shown.

::

    POST /v1/breaches                                  record one (admin)
    GET  /v1/breaches                                  the register with every version (staff)
    GET  /v1/breaches.csv                              the same as CSV, one row per version
    GET  /v1/breaches/{id}                             one breach and its clock
    POST /v1/breaches/{id}/versions                    facts that arrived later (admin)
    POST /v1/breaches/{id}/authority-notification      the authority told: clock stopped (admin)
    GET  /v1/breaches/{id}/report                      the signed Art. 33(3) report
    GET  /v1/breaches/{id}/report.html                 the same, as a page to read
    POST /v1/breaches/{id}/notices                     tell the affected subjects (Art. 34), admin;
                                                       the body streams one subject id per line
    GET  /v1/breaches/{id}/notices                     how far that is
    GET  /v1/breaches/{id}/notices/report.csv          every uploaded subject and its outcome

Support and admin read; admin records. The domain is :mod:`jobs.breaches`; what is
signed is built by :mod:`jobs.breach_report`. The handlers follow
``service/api/handlers.py``: parse, authorise, call the domain, render.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from jobs.breach_notices import REPORT_COLUMNS, BreachNotices
from jobs.breach_report import build_report, csv_cells, register_csv, render_html
from jobs.breaches import Breach, BreachFacts, BreachRegister, Recorder
from jobs.ids import is_ulid
from jobs.model import InvalidRequest, iso, utcnow
from service.api.handlers import principal, read_body, require_staff
from service.api.views import json_response
from service.appkeys import RESOURCES
from service.auth import Principal
from service.idempotency import HEADER as IDEMPOTENCY_HEADER
from service.problems import Problem

UPLOAD_TYPES = frozenset({"text/plain", "text/csv"})
#: Bytes of the delivery report written at a time.
REPORT_FLUSH = 64 * 1024
ClockName = Literal["running", "at_risk", "overdue", "notified", "notified_late"]


class _In(BaseModel):
    """A request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class BreachIn(_In):
    """A breach as first recorded: what GDPR Art. 33(3) asks for, as far as it is known."""

    aware_at: AwareDatetime = Field(
        description="When the controller became aware of the breach: the 72-hour clock "
        "runs from it, and it cannot change later.",
        examples=["2026-12-01T08:00:00Z"],
    )
    occurred_at: AwareDatetime | None = Field(
        None, description="When it happened, if known.", examples=["2026-11-30T22:15:00Z"]
    )
    nature: str = Field(
        min_length=1,
        max_length=4000,
        description="What happened.",
        examples=["A support laptop holding an export of device owners was stolen."],
    )
    subject_categories: list[str] = Field(
        min_length=1, max_length=50, examples=[["customers", "device owners"]]
    )
    approx_subjects: int | None = Field(
        None,
        ge=0,
        description="Approximate number of subjects; omitted if not yet known.",
        examples=[1200],
    )
    record_categories: list[str] = Field(
        min_length=1, max_length=50, examples=[["contact", "device"]]
    )
    approx_records: int | None = Field(
        None,
        ge=0,
        description="Approximate number of records; omitted if not yet known.",
        examples=[5400],
    )
    consequences: str = Field(
        min_length=1,
        max_length=4000,
        description="The likely consequences.",
        examples=["Phishing aimed at the owners, using their names and device models."],
    )
    measures: str = Field(
        min_length=1,
        max_length=4000,
        description="Measures taken or proposed, including to mitigate its effects.",
        examples=["Disk encryption confirmed; sessions revoked; owners to be warned."],
    )
    dpo_contact: str = Field(
        min_length=1, max_length=200, examples=["dpo@example.com, +33 1 23 45 67 89"]
    )


class BreachUpdateIn(_In):
    """Facts that arrived later (Art. 33(4)): only those that changed, and what changed."""

    note: str = Field(
        min_length=1,
        max_length=1000,
        description="What changed, and why: kept with the version.",
        examples=["Forensics counted the records on the laptop."],
    )
    occurred_at: AwareDatetime | None = Field(None, examples=["2026-11-30T22:15:00Z"])
    nature: str | None = Field(None, min_length=1, max_length=4000)
    subject_categories: list[str] | None = Field(None, min_length=1, max_length=50)
    approx_subjects: int | None = Field(None, ge=0, examples=[1180])
    record_categories: list[str] | None = Field(None, min_length=1, max_length=50)
    approx_records: int | None = Field(None, ge=0, examples=[5321])
    consequences: str | None = Field(None, min_length=1, max_length=4000)
    measures: str | None = Field(None, min_length=1, max_length=4000)
    dpo_contact: str | None = Field(None, min_length=1, max_length=200)


class NotificationIn(_In):
    """The supervisory authority was notified (Art. 33(1))."""

    notified_at: AwareDatetime = Field(examples=["2026-12-02T10:30:00Z"])
    reference: str = Field(
        min_length=1,
        max_length=200,
        description="The authority's reference.",
        examples=["CNIL-2026-04417"],
    )
    authority: str | None = Field(None, max_length=200, examples=["CNIL"])
    delay_reasons: str | None = Field(
        None,
        max_length=4000,
        description="Required when notified more than 72 hours after awareness.",
        examples=["Awareness came on a Friday night; the DPO was reached Monday."],
    )


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BreachFactsOut(_Out):
    """The facts of one version; a number not yet known is ``null``."""

    aware_at: datetime
    occurred_at: datetime | None
    nature: str
    subject_categories: list[str]
    approx_subjects: int | None
    record_categories: list[str]
    approx_records: int | None
    consequences: str
    measures: str
    dpo_contact: str


class BreachVersionOut(_Out):
    """One version of the facts, who recorded it and why."""

    number: int
    recorded_at: datetime
    recorded_by: str
    via: str
    note: str | None
    facts: BreachFactsOut


class NotificationOut(_Out):
    """The authority's notification as recorded."""

    notified_at: datetime
    reference: str
    authority: str | None
    late: bool
    delay_reasons: str | None
    recorded_at: datetime
    recorded_by: str


class BreachOut(_Out):
    """A breach, its 72-hour clock and its whole history."""

    id: str
    created_at: datetime
    aware_at: datetime
    at_risk_from: datetime
    notify_authority_by: datetime
    clock: ClockName
    facts: BreachFactsOut
    version: int
    versions: list[BreachVersionOut]
    notification: NotificationOut | None
    links: dict[str, str]


class BreachList(_Out):
    """The register, newest breach first."""

    breaches: list[BreachOut]


class BreachReportOut(BaseModel):
    """The signed Art. 33(3) report; `handover verify REPORT` checks it."""

    model_config = ConfigDict(extra="allow")

    format: Literal["handover-breach-report"]
    format_version: int
    breach: dict[str, str]
    version: int
    issued_at: datetime
    signature: dict[str, str]


OutcomeName = Literal[
    "sent", "no_address", "not_looked_up", "failed", "unconfirmed", "duplicate", "pending"
]


class NoticesProgress(_Out):
    """Where the Art. 34 notices to a breach's affected subjects stand: every uploaded
    subject counted by outcome (``pending``: not yet told)."""

    state: Literal["not_started", "uploading", "sending", "done"]
    version: int | None = None
    total: int
    sent: int
    no_address: int
    not_looked_up: int
    failed: int
    unconfirmed: int
    duplicate: int
    pending: int
    started_at: datetime | None = None
    finished_at: datetime | None = None


def breach_view(breach: Breach, now: datetime) -> dict[str, Any]:
    """A breach as the API shows it (:class:`BreachOut`)."""
    path = f"/v1/breaches/{breach.id}"
    return {
        "id": breach.id,
        "created_at": iso(breach.created_at),
        "aware_at": iso(breach.aware_at),
        "at_risk_from": iso(breach.at_risk_from),
        "notify_authority_by": iso(breach.notify_authority_by),
        "clock": breach.clock(now).value,
        "facts": breach.facts.model_dump(mode="json"),
        "version": breach.versions[-1].number,
        "versions": [version.model_dump(mode="json") for version in breach.versions],
        "notification": breach.notification.model_dump(mode="json")
        if breach.notification
        else None,
        "links": {"self": path, "report": f"{path}/report", "page": f"{path}/report.html"},
    }


def _require_admin(who: Principal) -> None:
    if not who.is_admin:
        raise Problem(403, "Forbidden", "only an admin may change the breach register")


def _register(request: web.Request) -> BreachRegister:
    return BreachRegister.of(request.app[RESOURCES])


def _breach_id(request: web.Request) -> str:
    breach_id = request.match_info["breach_id"]
    if not is_ulid(breach_id):
        raise Problem(404, "Not found", f"no breach {breach_id}")
    return breach_id


def recorder(who: Principal, via: str = "api") -> Recorder:
    """The caller, as the register's versions and audit entries name them."""
    return Recorder(who.sub, via)


async def create_breach(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    body = await read_body(request, BreachIn)
    facts = BreachFacts.model_validate(body.model_dump())
    breach = await _register(request).record(recorder(who), facts)
    return json_response(
        breach_view(breach, utcnow()),
        status=201,
        headers={"Location": f"/v1/breaches/{breach.id}"},
    )


async def list_breaches(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    now = utcnow()
    breaches = await _register(request).all()
    return json_response({"breaches": [breach_view(b, now) for b in breaches]})


async def breach_register_csv(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    register = _register(request)
    text = register_csv(await register.all(), utcnow())
    await register.audit(recorder(who), "breach.register_exported", "*", format="csv")
    return web.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="breach-register.csv"'},
    )


async def get_breach(request: web.Request) -> web.Response:
    require_staff(await principal(request))
    breach = await _register(request).get(_breach_id(request))
    return json_response(breach_view(breach, utcnow()))


async def update_breach(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    breach_id = _breach_id(request)
    body = await read_body(request, BreachUpdateIn)
    changes = body.model_dump(exclude_unset=True, exclude={"note"})
    breach = await _register(request).update(recorder(who), breach_id, changes, body.note)
    return json_response(breach_view(breach, utcnow()))


async def notify_authority(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    breach_id = _breach_id(request)
    body = await read_body(request, NotificationIn)
    breach = await _register(request).record_notification(
        recorder(who),
        breach_id,
        notified_at=body.notified_at,
        reference=body.reference,
        authority=body.authority,
        delay_reasons=body.delay_reasons,
    )
    return json_response(breach_view(breach, utcnow()))


async def _issued_report(request: web.Request, page: bool) -> dict[str, Any]:
    who = await principal(request)
    require_staff(who)
    register = _register(request)
    breach = await register.get(_breach_id(request))
    report = build_report(breach, signer=request.app[RESOURCES].signer, issued_at=utcnow())
    await register.audit(
        recorder(who),
        "breach.report_issued",
        breach.id,
        version=report["version"],
        form="html" if page else "json",
    )
    return report


async def breach_report(request: web.Request) -> web.Response:
    return json_response(await _issued_report(request, page=False))


async def breach_report_page(request: web.Request) -> web.Response:
    report = await _issued_report(request, page=True)
    return web.Response(
        text=render_html(report),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


async def _lines(request: web.Request) -> AsyncIterator[bytes]:
    """The body's lines as they arrive, never the whole body at once.

    With an ``Idempotency-Key`` the idempotency middleware has read the body whole already
    (to fingerprint it; at most the API's 64 KiB), so its lines come from that.
    """
    if IDEMPOTENCY_HEADER in request.headers:
        for line in (await request.read()).splitlines(keepends=True):
            yield line
        return
    while True:
        try:
            line = await request.content.readline()
        except ValueError:
            raise InvalidRequest("body", "a line is too long to be a subject id") from None
        if not line:
            return
        yield line


async def start_breach_notices(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    breach_id = _breach_id(request)
    await _register(request).get(breach_id)
    if request.content_type not in UPLOAD_TYPES:
        raise Problem(
            415,
            "Unsupported media type",
            "send the affected subjects as text/plain: one subject id per line, "
            "optionally followed by a comma and their language (alice,fr)",
        )
    notices = BreachNotices.of(request.app[RESOURCES])
    progress = await notices.start(recorder(who), breach_id, _lines(request))
    location = f"/v1/breaches/{breach_id}/notices"
    return json_response(progress, status=202, headers={"Location": location})


async def retry_breach_notices(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    notices = BreachNotices.of(request.app[RESOURCES])
    breach_id = _breach_id(request)
    progress = await notices.retry_failed(recorder(who), breach_id)
    location = f"/v1/breaches/{breach_id}/notices"
    return json_response(progress, status=202, headers={"Location": location})


async def breach_notices(request: web.Request) -> web.Response:
    require_staff(await principal(request))
    breach_id = _breach_id(request)
    return json_response(await BreachNotices.of(request.app[RESOURCES]).progress(breach_id))


async def breach_notices_report(request: web.Request) -> web.StreamResponse:
    who = await principal(request)
    require_staff(who)
    breach_id = _breach_id(request)
    notices = BreachNotices.of(request.app[RESOURCES])
    await notices.progress(breach_id)  # 404 for no breach
    await _register(request).audit(recorder(who), "breach.notices_report_read", breach_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="breach-{breach_id}-notices.csv"',
        }
    )
    await response.prepare(request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    async for row in notices.report(breach_id):
        writer.writerow(csv_cells(*(row.get(column) for column in REPORT_COLUMNS)))
        if out.tell() >= REPORT_FLUSH:
            await response.write(out.getvalue().encode())
            out.seek(0)
            out.truncate()
    await response.write(out.getvalue().encode())
    await response.write_eof()
    return response


__all__ = [
    "BreachIn",
    "BreachList",
    "BreachOut",
    "BreachReportOut",
    "BreachUpdateIn",
    "NoticesProgress",
    "NotificationIn",
    "breach_view",
]
