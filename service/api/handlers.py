"""The API's request handlers: parse, authorise, call the domain, render.

A handler reads its caller with :func:`principal`, its body with :func:`read_body`
and the job in its path with :func:`visible_job`; state changes go through
``jobs.commands``, answers are shaped in ``service/api/views.py``. Handlers raise
(:class:`~service.problems.Problem`, or the domain's own errors) and never build an
error response: the error middleware does. ``service/api/operations.py`` routes
requests to them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from connectors.base import Connector
from jobs.breaches import BreachRegister
from jobs.commands import Actor
from jobs.health import check_readiness
from jobs.identity import checked_identifiers
from jobs.ids import is_ulid
from jobs.model import Identity, Job, JobKind, JobStatus, utcnow
from jobs.search import HIDDEN_FROM_SUBJECTS
from jobs.storage.base import StorageError, content_type_of
from jobs.storage.local import LocalStore
from service.api import models
from service.api.views import accepted, job_view, json_response, record_view, stream_events
from service.appkeys import AUTHORITY, COMMANDS, RESOURCES, SETTINGS
from service.auth import Principal
from service.problems import Problem
from service.ratelimit import limit_subject
from service.roles import Role

M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body, validated by ``model``; problems for anything else."""
    if request.content_type != "application/json":
        raise Problem(415, "Unsupported media type", "send the body as application/json")
    raw = await request.read()
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400, "Malformed JSON", f"the body is not valid JSON: {exc}", slug="malformed-json"
        ) from None
    if not isinstance(data, dict):
        raise Problem(
            400, "Malformed JSON", "the body must be a JSON object", slug="malformed-json"
        )
    return model.model_validate(data)


async def principal(request: web.Request) -> Principal:
    """The authenticated caller."""
    return await request.app[AUTHORITY].authenticate(request)


def path_job_id(request: web.Request) -> str:
    """The job id in the path, checked to be one: anything else is a 404 (API and dashboard)."""
    job_id = request.match_info["job_id"]
    if not is_ulid(job_id):
        raise Problem(404, "Not found", f"no job {job_id}")
    return job_id


#: An event id as the timeline streams give them: Redis stream ids, ``ms-seq``, 64 bits each.
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
_MAX_ID_PART = 2**64 - 1


def event_id(value: str, named: str = "Last-Event-ID") -> str:
    """``value`` checked to be an event id a stream could resume after (``-``: the start).

    Checked before a stream starts, so a bad one is a 400 problem, never an error
    written into a stream already answered 200 (API and dashboard).
    """
    found = _EVENT_ID.fullmatch(value)
    if value == "-" or (
        found is not None
        and max(int(part) for part in found.groups()) <= _MAX_ID_PART
        and (int(found[1]), int(found[2])) != (_MAX_ID_PART, _MAX_ID_PART)
    ):
        return value
    raise Problem(
        400,
        "Bad request",
        f"{named}: {value[:64]!r} is not an event id (one a stream sent, such as 1700000000000-0)",
        slug="bad-event-id",
    )


async def visible_job(request: web.Request, who: Principal) -> Job:
    """The job in the path, if ``who`` may see it; another subject's job is a 404, and so is
    a disclosure about the subject (staff only: :mod:`jobs.disclosures`)."""
    job_id = path_job_id(request)
    job = await request.app[RESOURCES].store.get(job_id)
    _check_visible(who, job_id, job.subject, job.kind)
    return job


def _check_visible(who: Principal, job_id: str, subject: str, kind: JobKind) -> None:
    if not who.may_see(subject) or (kind in HIDDEN_FROM_SUBJECTS and not who.is_staff):
        raise Problem(404, "Not found", f"no job {job_id}")


def requested_subject(who: Principal, named: str | None, what: str) -> str:
    """Whose data a request is about: subjects ask for themselves, staff name someone."""
    if named is None:
        if Role.SUBJECT not in who.roles:
            raise Problem(
                422, "Invalid request", "subject: support and admin must name the subject"
            )
        return who.sub
    if named != who.sub and not who.is_staff:
        raise Problem(403, "Forbidden", f"a subject may only ask for {what} of their own data")
    return named


def actor(who: Principal) -> Actor:
    """The caller, as the commands and the audit log know them."""
    return Actor(who.sub, staff=who.is_staff)


def requester_identity(
    who: Principal, subject: str, given: models.IdentifiersIn | None
) -> Identity:
    """The identifiers a new request starts with, and the evidence for each.

    A subject asking for themselves brings what their token vouches for; staff
    filing for someone bring what they checked, and say how. Nobody else's word
    counts: a subject cannot assert identifiers, and a staff token's own claims
    are not the subject's.
    """
    identity = Identity()
    if given is not None:
        if not who.is_staff:
            raise Problem(
                403,
                "Forbidden",
                "identifiers are supplied by support staff; yours come from your sign-in",
            )
        identity.add(
            checked_identifiers(given.named()),
            {"source": "staff", "verified_by": given.verified_by.strip(), "by": who.sub},
        )
    elif who.sub == subject:
        for name, (value, claim) in sorted(who.identifiers.items()):
            identity.add({name: value}, {"source": "token", "verified_by": f"sign-in ({claim})"})
    return identity


def requested_jurisdiction(
    request: web.Request, who: Principal, subject: str, named: str | None
) -> str | None:
    """The law a new request is made under: as named, else the subject's token claim
    (``HANDOVER_JURISDICTION_CLAIM``), else ``None``: ``HANDOVER_JURISDICTION``.

    A claim counts only on a subject's own request (a staff token's is not the
    subject's); a subject may not name another law than their token's claim.
    """
    settings = request.app[SETTINGS]
    claim = settings.jurisdiction_claim
    raw = who.claims.get(claim) if claim and who.sub == subject else None
    claimed = raw.strip().lower() if isinstance(raw, str) else None
    known = {profile.name for profile in settings.jurisdictions}
    if raw is not None and claimed not in known:
        raise _invalid_jurisdiction(
            f"the token's {claim} claim names {raw!r}, which is not a jurisdiction here; "
            f"known: {', '.join(sorted(known))}"
        )
    if named is None:
        return claimed
    if claimed is not None and named != claimed and not who.is_staff:
        raise _invalid_jurisdiction(
            f"your sign-in places you under {claimed}: a request of yours is made under it"
        )
    return named


def _invalid_jurisdiction(message: str) -> Problem:
    return Problem(
        422,
        "Invalid request",
        f"jurisdiction: {message}",
        errors=[{"field": "jurisdiction", "message": message}],
    )


async def create_export(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await read_body(request, models.ExportRequest)
    subject = requested_subject(who, body.subject, "an export")
    await limit_subject(request, subject)
    job = await request.app[COMMANDS].request_export(
        actor(who),
        subject=subject,
        formats=body.formats,
        connectors=body.connectors,
        categories=body.categories,
        password=body.password,
        age_recipient=body.age_recipient,
        identity=requester_identity(who, subject, body.identifiers),
        locale=who.notice_locale(subject, body.locale),
        jurisdiction=requested_jurisdiction(request, who, subject, body.jurisdiction),
        since=body.since,
        until=body.until,
        time_zone=who.reading_time_zone(subject, body.time_zone),
    )
    return accepted(job)


async def _create_erasure_job(request: web.Request, kind: JobKind) -> web.Response:
    who = await principal(request)
    model = models.ErasureRequest if kind is JobKind.ERASURE else models.RestrictionRequest
    body = await read_body(request, model)
    subject = requested_subject(who, body.subject, f"an {kind.value}")
    await limit_subject(request, subject)
    job = await request.app[COMMANDS].request_erasure(
        actor(who),
        kind,
        subject=subject,
        connectors=body.connectors,
        dry_run=body.dry_run,
        reason=body.reason,
        identity=requester_identity(who, subject, body.identifiers),
        locale=who.notice_locale(subject, body.locale),
        jurisdiction=requested_jurisdiction(request, who, subject, body.jurisdiction),
        ground=body.ground if isinstance(body, models.RestrictionRequest) else None,
        until=body.until if isinstance(body, models.RestrictionRequest) else None,
    )
    return accepted(job)


async def create_erasure(request: web.Request) -> web.Response:
    return await _create_erasure_job(request, JobKind.ERASURE)


async def create_restriction(request: web.Request) -> web.Response:
    return await _create_erasure_job(request, JobKind.RESTRICTION)


async def confirm_job(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    if not who.is_admin:
        if who.sub != job.subject:
            raise Problem(403, "Forbidden", "only the subject or an admin may confirm an erasure")
        max_age = request.app[SETTINGS].reauth_max_age
        if not who.authenticated_within(max_age.total_seconds()):
            raise Problem(
                401,
                "Fresh sign-in needed",
                f"confirming an erasure needs a token from a sign-in no older than {max_age} "
                "(its auth_time claim)",
                slug="reauthentication-required",
                headers={"WWW-Authenticate": 'Bearer error="insufficient_user_authentication"'},
            )
    confirmed = await request.app[COMMANDS].confirm(actor(who), job.id)
    return json_response(job_view(confirmed, admin=who.is_admin))


async def cancel_job(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    body = await read_body(request, models.CancelRequest) if request.body_exists else None
    canceled = await request.app[COMMANDS].cancel(actor(who), job.id, body.reason if body else None)
    return json_response(job_view(canceled, admin=who.is_admin))


async def get_receipt(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    if who.sub != job.subject and not who.is_admin:
        raise Problem(403, "Forbidden", "only the subject or an admin may read a receipt")
    if job.receipt is None:
        raise Problem(
            409,
            "Not ready",
            f"job {job.id} ({job.kind.value}, {job.status.value}) has no receipt",
            slug="not-ready",
            status_now=job.status.value,
        )
    await request.app[COMMANDS].audit(actor(who), "receipt.read", job)
    return json_response(job.receipt)


async def get_job(request: web.Request) -> web.Response:
    who = await principal(request)
    job_id = path_job_id(request)
    store = request.app[RESOURCES].store
    record = await store.record(job_id)
    # Read from the record's JSON (the hot path), or through the model where it must be.
    view = record_view(record, admin=who.is_admin, staff=who.is_staff)
    if view is None:
        job = store.decode(record)
        deciding = who.is_staff and who.sub not in {job.requested_by, job.subject}
        view = job_view(job, admin=who.is_admin, deciding=deciding)
    _check_visible(who, job_id, view["subject"], JobKind(view["kind"]))
    return json_response(view)


async def list_events(request: web.Request) -> web.StreamResponse:
    job = await visible_job(request, await principal(request))
    store = request.app[RESOURCES].store
    if "text/event-stream" in request.headers.get("Accept", ""):
        after = event_id(request.headers.get("Last-Event-ID", "-"))
        return await stream_events(request, job.id, after)
    events = await store.events(job.id)
    return json_response({"events": [event.to_dict() for event in events]})


def require_staff(who: Principal) -> None:
    """Support and admin only."""
    if not who.is_staff:
        raise Problem(403, "Forbidden", "support or admin only")


async def list_jobs(request: web.Request) -> web.Response:
    who = await principal(request)
    params = models.JobSearch.model_validate(dict(request.query))
    if not who.is_staff:
        if params.subject not in (None, who.sub):
            raise Problem(403, "Forbidden", "a subject may only list their own jobs")
        params = params.model_copy(update={"subject": who.sub})
    query = params.to_query()
    if not who.is_staff:
        query = replace(query, hidden_kinds=HIDDEN_FROM_SUBJECTS)
    page = await request.app[RESOURCES].store.search(query)
    return json_response(
        {
            "jobs": [job_view(j, admin=who.is_admin) for j in page.jobs],
            "next_cursor": page.next_cursor,
        }
    )


async def stats(request: web.Request) -> web.Response:
    require_staff(await principal(request))
    resources = request.app[RESOURCES]
    return json_response(
        {
            "counts": await resources.store.counts(),
            "overdue": await resources.store.count_overdue(utcnow()),
            "queue_depth": await resources.queue.depth(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    text = await resources.metrics.render(
        await resources.store.counts(),
        await resources.store.count_overdue(utcnow()),
        await resources.queue.depth(),
    )
    text += await BreachRegister.of(resources).metrics_text(utcnow())
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Version": "0.0.4"},
    )


async def retry_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    retried = await request.app[COMMANDS].retry(actor(who), job.id)
    return json_response(job_view(retried, admin=who.is_admin))


async def add_identifiers(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.IdentifiersIn)
    changed = await request.app[COMMANDS].add_identifiers(
        actor(who), job.id, body.named(), body.verified_by
    )
    return json_response(job_view(changed, admin=who.is_admin))


async def go_without(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.GoWithoutRequest)
    changed = await request.app[COMMANDS].go_without(
        actor(who), job.id, body.connectors, body.reason
    )
    return json_response(job_view(changed, admin=who.is_admin))


async def extend_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.ExtendRequest)
    extended = await request.app[COMMANDS].extend(
        actor(who), job.id, months=body.months, days=body.days, reason=body.reason
    )
    return json_response(job_view(extended, admin=who.is_admin))


async def refuse_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.RefuseRequest)
    refused = await request.app[COMMANDS].refuse(
        actor(who), job.id, grounds=body.grounds, reason=body.reason
    )
    return json_response(job_view(refused, admin=who.is_admin))


async def ask_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.AskRequest)
    asked = await request.app[COMMANDS].ask(
        actor(who), job.id, needs=body.needs, resume_on_answer=body.resume_on_answer
    )
    return json_response(job_view(asked, admin=who.is_admin))


async def answer_job(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    if who.sub != job.subject:
        raise Problem(
            403,
            "Forbidden",
            "only the subject answers a request for information; support resumes the request",
        )
    body = await read_body(request, models.AnswerRequest)
    answered = await request.app[COMMANDS].answer(
        actor(who),
        job.id,
        answer=body.answer,
        identifiers=body.identifiers.named() if body.identifiers else None,
    )
    return json_response(job_view(answered, admin=who.is_admin))


async def resume_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.ResumeRequest) if request.body_exists else None
    resumed = await request.app[COMMANDS].resume(
        actor(who), job.id, verified_by=body.verified_by if body else None
    )
    return json_response(job_view(resumed, admin=who.is_admin))


async def download(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    if who.sub != job.subject and not who.is_admin:
        raise Problem(403, "Forbidden", "support staff see requests, never their data")
    if job.kind is JobKind.DISCLOSURE:
        raise Problem(
            403,
            "Forbidden",
            f"job {job.id} is a disclosure: its archive goes to the authority only, through a "
            f"one-time link (POST /v1/disclosures/{job.id}/link)",
        )
    now = utcnow()
    if job.status is JobStatus.EXPIRED or (job.result is not None and job.result.expires_at <= now):
        raise Problem(410, "Gone", f"the archive of job {job.id} has expired and was deleted")
    if job.status is not JobStatus.SUCCEEDED or job.result is None:
        raise Problem(
            409,
            "Not ready",
            f"job {job.id} is {job.status.value}; no archive to download",
            slug="not-ready",
            status_now=job.status.value,
        )
    resources = request.app[RESOURCES]
    ttl = min(resources.settings.link_ttl, job.result.expires_at - now)
    await request.app[COMMANDS].record_download(actor(who), job.id, int(ttl.total_seconds()))
    url = await resources.storage.download_url(
        job.result.key, ttl=ttl, filename=archive_filename(job)
    )
    return web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})


def archive_filename(job: Job) -> str:
    """What a downloaded archive is called: ``.zip``, or ``.zip.age`` when age-encrypted."""
    protection = job.export_options.protection
    suffix = ".zip.age" if protection is not None and protection.kind == "age" else ".zip"
    return f"handover-export-{job.id}{suffix}"


async def serve_object(request: web.Request) -> web.StreamResponse:
    storage = request.app[RESOURCES].storage
    if not isinstance(storage, LocalStore):
        raise Problem(404, "Not found", "no such resource")
    query = request.query
    try:
        path = storage.check_link(
            request.match_info["key"],
            query.get("expires", ""),
            query.get("filename", ""),
            query.get("nonce", ""),
            query.get("signature", ""),
        )
    except StorageError as exc:
        raise Problem(403, "Forbidden", f"this download link is not valid: {exc}") from None
    if not await request.app[COMMANDS].spend_link(query["signature"], int(query["expires"])):
        raise Problem(
            410,
            "Link used",
            "each download link works once; ask for a new one (GET /v1/jobs/{id}/download)",
            slug="link-used",
        )
    filename = query["filename"].replace('"', "")
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Type": content_type_of(filename),
            "Cache-Control": "no-store",
        },
    )


async def list_connectors(request: web.Request) -> web.Response:
    await principal(request)
    connectors = request.app[RESOURCES].connectors
    return json_response({"connectors": [_connector_view(c) for c in connectors.values()]})


def _connector_view(connector: Connector) -> dict[str, Any]:
    """A connector as ``GET /v1/connectors`` shows it: what it tells subjects, and what may be
    asked of it: the purposes it acts on when objected to, the fields it lets be corrected."""
    return {
        **connector.describe(),
        "objection_purposes": sorted(connector.objection_purposes),
        "rectifiable": [
            {"dataset": r.dataset, "field": r.field, "type": r.type, "identity": r.identity}
            for r in connector.rectifiable
        ],
    }


async def list_keys(request: web.Request) -> web.Response:
    resources = request.app[RESOURCES]
    return json_response(
        {"keys": await resources.keyring.active()}, headers={"Cache-Control": "max-age=300"}
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = await check_readiness(request.app[RESOURCES])
    return json_response(
        {"status": "ready" if readiness.ready else "not ready", "checks": readiness.checks},
        status=200 if readiness.ready else 503,
    )


__all__ = ["MAX_BODY_BYTES", "actor", "event_id", "path_job_id"]
