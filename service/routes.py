"""The HTTP API's operations: one table that both routes requests and documents them.

Each :class:`Operation` names its method, path, handler, request model and
responses; ``create_app`` registers them and ``/openapi.json`` is built from the
same table, so what is documented is what is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from jobs.commands import Actor
from jobs.health import check_readiness
from jobs.identity import checked_identifiers
from jobs.ids import is_ulid
from jobs.localstore import LINK_PATH, LocalStore
from jobs.model import Identity, Job, JobKind, JobStatus, utcnow
from jobs.storage import StorageError, content_type_of
from service import models
from service.appkeys import AUTHORITY, COMMANDS, RESOURCES, SETTINGS
from service.auth import Principal, Role
from service.problems import Problem
from service.ratelimit import limit_subject

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Operation:
    """One documented API operation."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    responses: dict[int, tuple[str, type[BaseModel] | None]]
    request: type[BaseModel] | None = None
    auth: bool = True
    description: str = ""
    parameters: list[dict[str, Any]] = field(default_factory=list)
    media_type: str = "application/json"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


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


def _public_options(options: dict[str, Any]) -> dict[str, Any]:
    """A job's options without secrets (an archive password never leaves the server)."""
    protection = options.get("protection")
    if not protection:
        return options
    return {**options, "protection": {k: v for k, v in protection.items() if k != "password"}}


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it: no storage keys, no staged parts."""
    base = f"/v1/jobs/{job.id}"
    result = None
    if job.result is not None:
        result = {k: v for k, v in job.result.to_dict().items() if k != "key"}
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "subject": job.subject,
        "requested_by": job.requested_by,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "due_at": job.due_at,
        "deadline": job.deadline_state(utcnow()),
        "options": _public_options(job.options),
        "generation": job.generation,
        "connectors": {
            name: {
                "status": run.status.value,
                "records": run.records,
                "bytes": run.bytes,
                "attempts": run.attempts,
                "error": run.error,
                "error_class": run.error_class,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "report": run.report,
                "decision": run.decision,
            }
            for name, run in job.connectors.items()
        },
        "not_before": job.not_before,
        "identity": job.identity.statement(),
        "result": result,
        "error": job.error,
        "links": {
            "self": base,
            "events": f"{base}/events",
            "download": f"{base}/download" if job.result is not None else None,
            "receipt": f"{base}/receipt" if job.receipt is not None else None,
        },
    }


async def visible_job(request: web.Request, who: Principal) -> Job:
    """The job in the path, if ``who`` may see it; another subject's job is a 404."""
    job_id = request.match_info["job_id"]
    if not is_ulid(job_id):
        raise Problem(404, "Not found", f"no job {job_id}")
    job = await request.app[RESOURCES].store.get(job_id)
    if not who.may_see(job.subject):
        raise Problem(404, "Not found", f"no job {job_id}")
    return job


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


def accepted(job: Job) -> web.Response:
    """202 with the job and its Location."""
    return json_response(job_view(job), status=202, headers={"Location": f"/v1/jobs/{job.id}"})


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
    return json_response(job_view(confirmed))


async def cancel_job(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    body = await read_body(request, models.CancelRequest) if request.body_exists else None
    canceled = await request.app[COMMANDS].cancel(actor(who), job.id, body.reason if body else None)
    return json_response(job_view(canceled))


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
    job = await visible_job(request, await principal(request))
    return json_response(job_view(job))


async def list_events(request: web.Request) -> web.StreamResponse:
    job = await visible_job(request, await principal(request))
    store = request.app[RESOURCES].store
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await stream_events(request, job.id, request.headers.get("Last-Event-ID", "-"))
    events = await store.events(job.id)
    return json_response({"events": [event.to_dict() for event in events]})


ENDING_STATUSES = {s.value for s in JobStatus if s.terminal}
KEEPALIVE_SECONDS = 15.0


async def stream_events(request: web.Request, job_id: str, after: str) -> web.StreamResponse:
    """Server-sent events: the timeline so far, then each new event until the job ends."""
    store = request.app[RESOURCES].store
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    events = await store.events(job_id, after=after)
    try:
        while True:
            for event in events:
                body = orjson.dumps(event.to_dict()).decode()
                await response.write(
                    f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n".encode()
                )
                after = event.id
            if any(e.data.get("status") in ENDING_STATUSES for e in events):
                break
            if not events and (await store.get(job_id)).status.terminal:
                break
            events = await store.wait_for_events(job_id, after, KEEPALIVE_SECONDS)
            if not events:
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        return response  # the client went away: nothing to finish, nothing to report
    await response.write_eof()
    return response


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
    page = await request.app[RESOURCES].store.search(query)
    return json_response(
        {"jobs": [job_view(j) for j in page.jobs], "next_cursor": page.next_cursor}
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
    return json_response(job_view(retried))


async def add_identifiers(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.IdentifiersIn)
    changed = await request.app[COMMANDS].add_identifiers(
        actor(who), job.id, body.named(), body.verified_by
    )
    return json_response(job_view(changed))


async def go_without(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.GoWithoutRequest)
    changed = await request.app[COMMANDS].go_without(
        actor(who), job.id, body.connectors, body.reason
    )
    return json_response(job_view(changed))


async def extend_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.ExtendRequest)
    extended = await request.app[COMMANDS].extend(
        actor(who), job.id, months=body.months, reason=body.reason
    )
    return json_response(job_view(extended))


async def download(request: web.Request) -> web.Response:
    who = await principal(request)
    job = await visible_job(request, who)
    if who.sub != job.subject and not who.is_admin:
        raise Problem(403, "Forbidden", "support staff see requests, never their data")
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
    protection = job.options.get("protection") or {}
    suffix = ".zip.age" if protection.get("kind") == "age" else ".zip"
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
            query.get("signature", ""),
        )
    except StorageError as exc:
        raise Problem(403, "Forbidden", f"this download link is not valid: {exc}") from None
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
    return json_response({"connectors": [dict(c.describe()) for c in connectors.values()]})


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


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "examples": ["01JD2Z6S41ABCDEFGHJKMNPQRS"]},
    "description": "The job's id.",
}
_PROBLEMS: dict[int, tuple[str, type[BaseModel] | None]] = {
    401: ("No valid bearer token.", models.ProblemOut),
    429: ("Too many requests; see `Retry-After`.", models.ProblemOut),
    503: ("Redis, object storage or the identity provider unreachable.", models.ProblemOut),
}
_CREATE_RESPONSES: dict[int, tuple[str, type[BaseModel] | None]] = {
    202: ("The job. `Location` names it.", models.JobOut),
    400: ("The body is not JSON.", models.ProblemOut),
    403: ("A subject asked about someone else's data.", models.ProblemOut),
    415: ("The body is not application/json.", models.ProblemOut),
    422: ("An unknown field, value or connector.", models.ProblemOut),
    **_PROBLEMS,
}

OPERATIONS: list[Operation] = [
    Operation(
        "POST",
        "/v1/exports",
        create_export,
        "Ask for an export",
        "jobs",
        request=models.ExportRequest,
        description="Queues an export of everything held on the subject, by every processor "
        "(GDPR Art. 15, 20).",
        responses=_CREATE_RESPONSES,
    ),
    Operation(
        "POST",
        "/v1/erasures",
        create_erasure,
        "Ask for erasure",
        "jobs",
        request=models.ErasureRequest,
        description="Erasure (GDPR Art. 17) at every processor, telling each recipient "
        "(Art. 19). Waits in `awaiting_confirmation` until confirmed, then for the grace "
        "period (`HANDOVER_ERASURE_GRACE`), during which it can be canceled. What law obliges "
        "the platform to keep is blocked, not erased. A dry run needs no confirmation.",
        responses=_CREATE_RESPONSES,
    ),
    Operation(
        "POST",
        "/v1/restrictions",
        create_restriction,
        "Ask for restriction",
        "jobs",
        request=models.RestrictionRequest,
        description="Restriction of processing (GDPR Art. 18) at every processor that "
        "supports it; the receipt records those that cannot.",
        responses=_CREATE_RESPONSES,
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/confirm",
        confirm_job,
        "Confirm an erasure",
        "jobs",
        parameters=[_JOB_ID],
        description="By the subject with a token from a fresh sign-in (`auth_time` no older "
        "than `HANDOVER_REAUTH_MAX_AGE`), or by an admin.",
        responses={
            200: ("The job, queued to run after the grace period.", models.JobOut),
            401: ("No valid token, or the sign-in is not fresh.", models.ProblemOut),
            403: ("Neither the subject nor an admin.", models.ProblemOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            409: ("The job is not awaiting confirmation.", models.ProblemOut),
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        cancel_job,
        "Cancel a job",
        "jobs",
        parameters=[_JOB_ID],
        description="Stops a job that has not ended; running connector work is aborted. "
        'The body (`{"reason": ...}`) is optional.',
        responses={
            200: ("The job, canceled.", models.JobOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            409: ("The job has already ended.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}/receipt",
        get_receipt,
        "The signed receipt of an erasure or restriction",
        "jobs",
        parameters=[_JOB_ID],
        responses={
            200: ("The receipt; `handover verify RECEIPT` checks it.", models.ReceiptOut),
            403: ("Support staff may not read receipts.", models.ProblemOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            409: ("The job has no receipt (yet).", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/jobs",
        list_jobs,
        "Search jobs",
        "support",
        description="Filtered, cursor-paginated, from Redis indexes. Support and admin see "
        "every job; a subject sees their own. Sorted newest first, or by deadline.",
        parameters=[
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in models.JobSearch.model_json_schema()["properties"].items()
        ],
        responses={
            200: ("A page of jobs.", models.JobList),
            403: ("A subject asked for another subject's jobs.", models.ProblemOut),
            422: ("A bad filter or cursor.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/stats",
        stats,
        "Where requests stand",
        "support",
        responses={
            200: ("Counts by kind and status, overdue, queue depth.", models.Stats),
            403: ("Support or admin only.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/retry",
        retry_job,
        "Retry a failed job",
        "support",
        parameters=[_JOB_ID],
        description="Re-runs only the connectors that did not succeed; the others keep "
        "their staged output. Support and admin.",
        responses={
            200: ("The job, queued again (its generation incremented).", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has not failed.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/extend",
        extend_job,
        "Extend a job's deadline",
        "support",
        parameters=[_JOB_ID],
        request=models.ExtendRequest,
        description="By up to two further months in all (GDPR Art. 12(3)); the reason is required.",
        responses={
            200: ("The job with its new due date.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended.", models.ProblemOut),
            422: ("No reason, or past two months.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/identifiers",
        add_identifiers,
        "Add identifiers to a job",
        "support",
        parameters=[_JOB_ID],
        request=models.IdentifiersIn,
        description="Identifiers for a subject whose processors could not all be asked "
        "(connector status `unidentified`, job `needs_attention`), with how identity was "
        "verified. Identity sources run again and only the unidentified processors are "
        "asked. A known identifier is never replaced. Support and admin.",
        responses={
            200: ("The job, resumed if it needed attention.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended.", models.ProblemOut),
            422: ("No identifier, a bad one, or one known with another value.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/go-without",
        go_without,
        "Finish without processors that could not be asked",
        "support",
        parameters=[_JOB_ID],
        request=models.GoWithoutRequest,
        description="Records support's decision, with its reason, to go without the named "
        "`unidentified` processors: they become `not_asked`, and the archive, its "
        "`index.html` and the receipt name each one and the reason. Support and admin.",
        responses={
            200: ("The job, finishing once no processor waits.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended.", models.ProblemOut),
            422: ("No reason, or a processor that is not unidentified.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}",
        get_job,
        "A job and its progress",
        "jobs",
        parameters=[_JOB_ID],
        responses={
            200: ("The job.", models.JobOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}/events",
        list_events,
        "A job's timeline (JSON, or live as server-sent events)",
        "jobs",
        parameters=[_JOB_ID],
        description="Created, confirmed, connector started / retrying / succeeded / failed, "
        "retried, extended, downloaded, and every status change, each with actor and time. "
        "With `Accept: text/event-stream` the events stream live (each SSE `id` is the "
        "event id; `Last-Event-ID` resumes) until the job ends.",
        responses={
            200: ("The events, oldest first (or an event stream).", models.EventList),
            404: ("No such job (or not yours).", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/jobs/{job_id}/download",
        download,
        "Download a finished export",
        "jobs",
        parameters=[_JOB_ID],
        description="Answers 303 with a fresh, short-lived link to the archive "
        "(`HANDOVER_LINK_TTL`, never past the archive's expiry), served as an attachment.",
        responses={
            303: ("See the `Location` header: the download link.", None),
            403: ("Support staff may not download subjects' data.", models.ProblemOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            409: ("The job has no archive (yet).", models.ProblemOut),
            410: ("The archive has expired and was deleted.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        LINK_PATH + "{key}",
        serve_object,
        "Follow a download link (embedded storage)",
        "downloads",
        auth=False,
        parameters=[
            {
                "name": "key",
                "in": "path",
                "required": True,
                "schema": {
                    "type": "string",
                    "examples": [
                        "handover/archives/01JD2Z6S41ABCDEFGHJKMNPQRS/"
                        "handover-export-01JD2Z6S41ABCDEFGHJKMNPQRS.zip"
                    ],
                },
            },
            {
                "name": "expires",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "examples": ["1767225600"]},
            },
            {
                "name": "filename",
                "in": "query",
                "required": True,
                "schema": {
                    "type": "string",
                    "examples": ["handover-export-01JD2Z6S41ABCDEFGHJKMNPQRS.zip"],
                },
            },
            {
                "name": "signature",
                "in": "query",
                "required": True,
                "schema": {
                    "type": "string",
                    "examples": [
                        "9c1185a5c5e9fc54612808977ee8f548b2258d31d1d8f1c1d9e9e2f1c0a6b7e3"
                    ],
                },
            },
        ],
        media_type="application/zip",
        responses={
            200: ("The archive.", None),
            403: ("A changed or expired link.", models.ProblemOut),
            404: ("Not served here.", models.ProblemOut),
        },
    ),
    Operation(
        "GET",
        "/v1/connectors",
        list_connectors,
        "The configured connectors",
        "connectors",
        responses={
            200: ("Every connector and the data it holds.", models.ConnectorList),
            **_PROBLEMS,
        },
    ),
    Operation(
        "GET",
        "/v1/keys",
        list_keys,
        "Public keys that verify archives",
        "keys",
        auth=False,
        responses={200: ("Ed25519 JWKs still needed to verify a live archive.", models.KeySet)},
    ),
    Operation(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics",
        "health",
        auth=False,
        media_type="text/plain",
        description="Jobs by kind and status, overdue jobs, queue depth, job and connector "
        "durations (histograms), connector errors by class, archive bytes; across every "
        "worker (kept in Redis). Expose it on an internal network only.",
        responses={200: ("Prometheus text format 0.0.4.", None)},
    ),
    Operation(
        "GET",
        "/healthz",
        healthz,
        "The process is up",
        "health",
        auth=False,
        responses={200: ("Always, while the process serves.", None)},
    ),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Ready to take work",
        "health",
        auth=False,
        description="Redis and object storage reachable, a worker reported recently, "
        "and Redis keeps everything (`maxmemory-policy noeviction`).",
        responses={200: ("Ready.", None), 503: ("Not ready; `checks` says what failed.", None)},
    ),
]


def add_routes(app: web.Application) -> None:
    """Register every operation."""
    for operation in OPERATIONS:
        path = operation.path.replace("{key}", "{key:.+}")
        app.router.add_route(operation.method, path, operation.handler)


__all__ = [
    "MAX_BODY_BYTES",
    "OPERATIONS",
    "Operation",
    "actor",
    "add_routes",
    "stream_events",
]
