"""The HTTP API's operations: one table that both routes requests and documents them.

Each :class:`Operation` names its method, path, handler, request model and
responses; ``create_app`` registers them and ``/openapi.json`` is built from the
same table, so what is documented is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from jobs.storage.local import LINK_PATH
from service.api import models
from service.api.handlers import (
    add_identifiers,
    answer_job,
    ask_job,
    cancel_job,
    confirm_job,
    create_erasure,
    create_export,
    create_restriction,
    download,
    extend_job,
    get_job,
    get_receipt,
    go_without,
    healthz,
    list_connectors,
    list_events,
    list_jobs,
    list_keys,
    metrics,
    readyz,
    refuse_job,
    resume_job,
    retry_job,
    serve_object,
    stats,
)
from service.api.middleware import Handler


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
        description="As the job's jurisdiction allows: GDPR and UK GDPR by two further "
        "months in all, announced within the first month (Art. 12(3)); CCPA once, by 45 days, "
        "within the first 45; LGPD not at all. The subject is told the reason and the new due "
        "date. Past the window the answer is 409 `extension-too-late`; where the law allows "
        "none, `extension-not-allowed`; a second CCPA extension, `extension-already-made`.",
        responses={
            200: ("The job with its new due date.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended, or the law allows no extension now.", models.ProblemOut),
            422: ("No reason, the wrong unit, or past what the law allows.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/refuse",
        refuse_job,
        "Refuse a request",
        "support",
        parameters=[_JOB_ID],
        request=models.RefuseRequest,
        description="Refuses a live request with its grounds and reason (GDPR Art. 12(4), "
        "12(5)): it ends `refused`, its work is stopped, its subject released, and the "
        "subject is told why, where to complain (the jurisdiction's supervisory authority) "
        "and that a judicial remedy is open. Webhook `job.refused`. Support and admin.",
        responses={
            200: ("The job, refused.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended.", models.ProblemOut),
            422: ("Unknown grounds, or no reason.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/ask",
        ask_job,
        "Ask the subject for information",
        "support",
        parameters=[_JOB_ID],
        request=models.AskRequest,
        description="Puts a live request in `awaiting_information` (GDPR Art. 12(6)) and "
        "tells the subject what is needed. Its unfinished work stops and runs again once it "
        "resumes. Where the jurisdiction says so (GDPR, UK GDPR), its clock stands still "
        "until the answer (`deadline`: `paused`), and `due_at` moves by as much. Webhook "
        "`job.awaiting_information`. Support and admin.",
        responses={
            200: ("The job, awaiting information.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job has ended, or already awaits information.", models.ProblemOut),
            422: ("Nothing said of what is needed.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/information",
        answer_job,
        "Answer a request for information",
        "jobs",
        parameters=[_JOB_ID],
        request=models.AnswerRequest,
        description="The subject's answer, and identifiers if asked for (checked like any "
        "identifier taken in). The clock runs again. Identifiers offered wait for support to "
        "accept them; without any, the answer resumes the request when support asked so. "
        "The subject only.",
        responses={
            200: ("The job, answered (resumed, if it was to).", models.JobOut),
            403: ("Not the subject.", models.ProblemOut),
            404: ("No such job (or not yours).", models.ProblemOut),
            409: ("No information is awaited, or it was given already.", models.ProblemOut),
            422: ("No answer, or a malformed identifier.", models.ProblemOut),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/resume",
        resume_job,
        "Resume a request that waits for information",
        "support",
        parameters=[_JOB_ID],
        request=models.ResumeRequest,
        description="The request goes on (`queued`, or back to `awaiting_confirmation`), its "
        "clock running again; with `verified_by`, the identifiers the subject offered are "
        "accepted, else dropped. Support and admin.",
        responses={
            200: ("The job, resumed.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("The job waits for no information.", models.ProblemOut),
            422: ("`verified_by` with no identifiers offered.", models.ProblemOut),
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
            400: ("`Last-Event-ID` is not an event id.", models.ProblemOut),
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
        "Follow a download link (embedded storage; each link works once)",
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
                "name": "nonce",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "examples": ["q8m2Yc1TnV0aLr3e"]},
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
            410: ("The link was used already: each works once.", models.ProblemOut),
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


__all__ = ["OPERATIONS", "Operation", "add_routes"]
