"""Compelled disclosures over HTTP: their shapes, their handlers.

::

    POST /v1/disclosures                         record an authority's order, run its export
                                                 (admin)
    GET  /v1/disclosures/{id}                    the disclosure, its notice rule and history (staff)
    POST /v1/disclosures/{id}/extend             defer the subject's notice further, with a new
                                                 legal reason (admin)
    POST /v1/disclosures/{id}/link               a one-time, expiring link for the authority (admin)
    GET  /v1/disclosures/{id}/archive?token=…    the archive, once, to whoever holds the link

The domain is :mod:`jobs.disclosures`; the job is found by the job search like any other
(``kind=disclosure``) but never by the subject, whose API and privacy center do not show it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from jobs.disclosures import AuthorityLink, DisclosureRegister, LinkRefused, NoticeRequest
from jobs.ids import is_ulid
from jobs.model import DisclosureOrder, JobStatus, iso, utcnow
from jobs.store import JobNotFound
from service.api import models
from service.api.handlers import (
    actor,
    principal,
    read_body,
    requester_identity,
    require_staff,
)
from service.api.views import json_response
from service.appkeys import COMMANDS, RESOURCES, SETTINGS
from service.auth import Principal
from service.problems import Problem


class _In(BaseModel):
    """A request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class DisclosureIn(_In):
    """An authority's order, the scope it compels, and when the subject may be told."""

    subject: str = Field(min_length=1, max_length=256, examples=["alice"])
    authority: str = Field(
        min_length=1,
        max_length=500,
        description="The authority or court the data goes to: the archive's recipient.",
        examples=["Tribunal judiciaire de Paris"],
    )
    order_reference: str = Field(
        min_length=1, max_length=200, examples=["RG 26/01234, order of 2026-12-01"]
    )
    legal_basis: str = Field(
        min_length=1,
        max_length=1000,
        description="The law the order was made under.",
        examples=["Code de procédure pénale, art. 60-1"],
    )
    connectors: list[str] | None = Field(None, max_length=200, examples=[["profile"]])
    categories: list[str] | None = Field(None, max_length=50)
    since: AwareDatetime | None = Field(None, examples=["2026-01-01T00:00:00Z"])
    until: AwareDatetime | None = Field(None, examples=["2026-07-01T00:00:00Z"])
    formats: list[str] | None = Field(None, max_length=3, examples=[["json"]])
    notice: Literal["now", "deferred", "never"] = Field(
        description="When the subject is told: now; not before `notice_until`; or never "
        "(both with `notice_reason`, the legal reason).",
        examples=["deferred"],
    )
    notice_reason: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        examples=["Telling the subject would prejudice an ongoing investigation"],
    )
    notice_until: AwareDatetime | None = Field(None, examples=["2030-03-01T00:00:00Z"])
    identifiers: models.IdentifiersIn | None = Field(
        None, description="The subject's identifiers (an `email` for the notice), as checked."
    )
    locale: str | None = Field(None, max_length=35, examples=["fr"])


class ExtendIn(_In):
    """A longer deferral of the subject's notice, with its new legal reason."""

    until: AwareDatetime = Field(examples=["2030-09-01T00:00:00Z"])
    reason: str = Field(
        min_length=3,
        max_length=2000,
        description="A reason not given before: each extension is kept, with its own.",
        examples=["The investigating judge extended the confidentiality order"],
    )


class LinkIn(_In):
    """How long the authority's link lives (it also dies with the archive)."""

    hours: int = Field(72, ge=1, le=168, examples=[72])


class LinkOut(BaseModel):
    """A one-time link to hand to the authority: shown once, never again."""

    model_config = ConfigDict(extra="forbid")

    url: str
    expires_at: datetime


class DisclosureOut(BaseModel):
    """A disclosure: the order, the notice rule and its history, the job that runs it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The disclosure's id, which is its job's.")
    subject: str
    created_at: datetime
    created_by: str
    order: dict[str, str] = Field(description="`authority`, `reference`, `legal_basis`.")
    rule: Literal["now", "deferred", "never"]
    reason: str | None = Field(description="Why the subject is never told (rule `never`).")
    deferrals: list[dict[str, Any]] = Field(
        description="The deferral and each extension: `until`, `reason`, `by`, `at`."
    )
    deferred_until: datetime | None
    fetched_at: datetime | None = Field(
        description="When the authority first fetched the archive: the date of the disclosure "
        "(until then nothing is disclosed, told or listed)."
    )
    told_at: datetime | None = Field(description="When the subject's notice was queued.")
    told: str | None
    links: list[dict[str, Any]] = Field(
        description="Authority links issued: `expires_at`, `by`, `at`, `used_at` (no token)."
    )
    locale: str | None
    job: dict[str, Any] | None = Field(
        description="The job's `status` and links; null once Handover's retention purged it."
    )


def _require_admin(who: Principal) -> None:
    if not who.is_admin:
        raise Problem(403, "Forbidden", "only an admin records or changes a disclosure")


def _disclosure_id(request: web.Request) -> str:
    disclosure_id = request.match_info["disclosure_id"]
    if not is_ulid(disclosure_id):
        raise Problem(404, "Not found", f"no disclosure {disclosure_id}")
    return disclosure_id


async def _view(request: web.Request, disclosure_id: str) -> dict[str, Any]:
    resources = request.app[RESOURCES]
    disclosure = await DisclosureRegister(resources).get(disclosure_id)
    try:
        job = await resources.store.get(disclosure_id)
    except JobNotFound:
        job = None
    view = disclosure.view()
    for link in view["links"]:
        del link["nonce"]
    view["job"] = (
        {
            "status": job.status.value,
            "links": {"job": f"/v1/jobs/{job.id}", "events": f"/v1/jobs/{job.id}/events"},
        }
        if job is not None
        else None
    )
    return view


async def create_disclosure(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    body = await read_body(request, DisclosureIn)
    job = await request.app[COMMANDS].request_disclosure(
        actor(who),
        subject=body.subject,
        order=DisclosureOrder(
            authority=body.authority.strip(),
            reference=body.order_reference.strip(),
            legal_basis=body.legal_basis.strip(),
        ),
        notice=NoticeRequest(body.notice, body.notice_reason, body.notice_until),
        identity=requester_identity(who, body.subject, body.identifiers),
        connectors=body.connectors,
        categories=body.categories,
        since=body.since,
        until=body.until,
        formats=body.formats,
        locale=body.locale,
    )
    return json_response(
        await _view(request, job.id),
        status=202,
        headers={"Location": f"/v1/disclosures/{job.id}"},
    )


async def get_disclosure(request: web.Request) -> web.Response:
    require_staff(await principal(request))
    return json_response(await _view(request, _disclosure_id(request)))


async def extend_disclosure(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    disclosure_id = _disclosure_id(request)
    body = await read_body(request, ExtendIn)
    await DisclosureRegister(request.app[RESOURCES]).extend(
        who.sub, disclosure_id, until=body.until, reason=body.reason
    )
    return json_response(await _view(request, disclosure_id))


async def issue_link(request: web.Request) -> web.Response:
    who = await principal(request)
    _require_admin(who)
    disclosure_id = _disclosure_id(request)
    body = await read_body(request, LinkIn) if request.body_exists else LinkIn.model_validate({})
    resources = request.app[RESOURCES]
    register = DisclosureRegister(resources)
    await register.get(disclosure_id)
    try:
        job = await resources.store.get(disclosure_id)
    except JobNotFound:
        raise Problem(
            410, "Gone", f"the archive is gone: Handover's retention purged job {disclosure_id}"
        ) from None
    link, expires_at = await register.issue_link(who.sub, job, body.hours)
    base = request.app[SETTINGS].public_url or f"{request.scheme}://{request.host}"
    return json_response(
        {"url": f"{base.rstrip('/')}{link.path(resources)}", "expires_at": iso(expires_at)}
    )


async def fetch_archive(request: web.Request) -> web.StreamResponse:
    disclosure_id = _disclosure_id(request)
    resources = request.app[RESOURCES]
    link = AuthorityLink.parse(resources, disclosure_id, request.query.get("token", ""))
    try:
        job = await resources.store.get(disclosure_id)
    except JobNotFound:
        raise LinkRefused("gone", f"disclosure {disclosure_id} has no archive any more") from None
    result = job.result
    if job.status is not JobStatus.SUCCEEDED or result is None or result.expires_at <= utcnow():
        raise LinkRefused("gone", f"the archive of disclosure {disclosure_id} has expired")
    if not await resources.storage.exists(result.key):
        raise LinkRefused("gone", f"the archive of disclosure {disclosure_id} is gone from storage")
    register = DisclosureRegister(resources)
    await register.claim(link)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="handover-disclosure-{job.id}.zip"',
            "Content-Length": str(result.size),
            "Cache-Control": "no-store",
        }
    )
    try:
        await response.prepare(request)
        async for chunk in resources.storage.read(result.key):
            await response.write(chunk)
        await response.write_eof()
    except BaseException:
        # Not sent whole: the link works again, and the authority sees a cut connection.
        response.force_close()
        await asyncio.shield(register.release(link))
        raise
    await asyncio.shield(register.fetched(link))  # sent whole: recorded, come what may
    return response
