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

from jobs.handoff import API_PATH, Statement
from jobs.handoff import TOKEN_PATTERN as REPLY_TOKEN_PATTERN
from jobs.storage.local import LINK_PATH
from service.api import breaches, disclosures, lifts, models, objections, rectifications, reports
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
from service.api.recipients import list_recipients
from service.replies import get_reply, post_reply


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
    upload: str | None = None
    """The media type of a body read as a stream (not a JSON request model), if any."""
    upload_example: str = ""


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "examples": ["01JD2Z6S41ABCDEFGHJKMNPQRS"]},
    "description": "The job's id.",
}
_BREACH_ID = {
    "name": "breach_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "examples": ["01JD2Z6S41ABCDEFGHJKMNPQRS"]},
    "description": "The breach's id.",
}
_DISCLOSURE_ID = {
    "name": "disclosure_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "examples": ["01JD2Z6S41ABCDEFGHJKMNPQRS"]},
    "description": "The disclosure's id (its job's).",
}
_REPLY_TOKEN = {
    "name": "token",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "pattern": f"^{REPLY_TOKEN_PATTERN}$",
        "examples": [
            "01JD2Z6S41ABCDEFGHJKMNPQRS.payroll.1.4530b38f60a67295.1799134830."
            "0fb9ac644e07ce575d7916b1c6418fef"
        ],
    },
    "description": "The reply link's token, as the request's email gives it.",
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
        "/v1/objections",
        objections.create_objection,
        "Object to processing",
        "jobs",
        request=models.ObjectionRequest,
        description="Objection (GDPR Art. 21) at every processor: each maps Handover's purposes "
        "to its own (a consent set to not granted, a marketing subscription ended) and reads "
        "back that it holds; one that cannot act on a purpose says so in the receipt. Direct "
        "marketing is absolute and runs at once; other purposes wait in "
        "`awaiting_confirmation` for support's decision (`POST /v1/jobs/{id}/decide`). A "
        "request naming both makes two jobs: the answer is the direct marketing one, and "
        '`Link: </v1/jobs/ID>; rel="related"` names the other. An unknown purpose is a 422 '
        "naming `purposes`.",
        responses=_CREATE_RESPONSES,
    ),
    Operation(
        "POST",
        "/v1/rectifications",
        rectifications.create_rectification,
        "Correct inaccurate data",
        "jobs",
        request=models.RectificationRequest,
        description="Rectification (GDPR Art. 16) at the connectors the changes name: only "
        "fields a connector declares rectifiable, each value of the field's type (else a 422 "
        "naming the change, e.g. `changes[0].value`). A change to an identity field (an email) "
        "waits in `awaiting_confirmation` for support's approval (`POST /v1/jobs/{id}/decide`; "
        "`HANDOVER_RECTIFICATION_APPROVAL`). Each processor's new values are read back; the "
        "signed receipt names the fields changed where, never a value.",
        responses=_CREATE_RESPONSES,
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/lift",
        lifts.lift_restriction,
        "Lift a restriction",
        "support",
        parameters=[_JOB_ID],
        request=models.LiftRequest,
        description="Lifts a restriction in force (GDPR Art. 18(3)): the subject is sent the "
        "`restriction_lifting` notice at once (recorded on the restriction's timeline), and a "
        "`lift` job runs from `lifts_at`, unblocking nothing at any processor until that notice "
        "is sent (however long it is retried); a notice that cannot go fails the lift, saying "
        "so, as does an erasure of the subject asked for or run by then. Its signed receipt "
        "names the restriction, its ground and when the subject was told. A restriction "
        "lifted already (by a lift not failed or canceled), not in force, or of a subject with "
        "an erasure under way or run is refused (409); one without the subject's email to "
        "tell them at, 422. Support and admin.",
        responses={
            202: ("The lift job. `Location` names it.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: ("Not a restriction in force, lifted, or erased since.", models.ProblemOut),
            422: (
                "No reason, no email to tell the subject at, or a moment past or without its "
                "time zone.",
                models.ProblemOut,
            ),
            **_PROBLEMS,
        },
    ),
    Operation(
        "POST",
        "/v1/jobs/{job_id}/decide",
        objections.decide_job,
        "Decide an objection or a rectification",
        "support",
        parameters=[_JOB_ID],
        request=models.DecideRequest,
        description="Support's decision on an objection to processing other than direct "
        "marketing (GDPR Art. 21(1)), or a rectification waiting for approval: upheld, it "
        "runs; rejected, with its grounds stated (an objection's compelling legitimate "
        "grounds; why the data is accurate), it ends `refused` and the subject is told the "
        "grounds and where to complain. Approving a change to an identity field needs "
        "`verified_by` (how the new value was checked; recorded in the receipt). Whoever "
        "asked for the job, or is its subject, may not decide it. Support and admin.",
        responses={
            200: ("The job: queued, or refused.", models.JobOut),
            403: ("Support or admin only.", models.ProblemOut),
            404: ("No such job.", models.ProblemOut),
            409: (
                "Not waiting for a decision, or asked for by (or concerning) the decider.",
                models.ProblemOut,
            ),
            422: (
                "Rejected without grounds, or an identity change approved without `verified_by`.",
                models.ProblemOut,
            ),
            **_PROBLEMS,
        },
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
        "The signed receipt of an erasure, restriction, objection or rectification",
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
        "/v1/reports",
        reports.get_report,
        "The DPO's report: how the period's requests were handled",
        "support",
        description="For accountability (GDPR Art. 5(2)): the requests received from `from` "
        "to `to` (days in `HANDOVER_TIME_ZONE`): per ISO week, received by kind and overdue "
        "and at risk at its end; time to answer (median, 90th percentile) beside what the "
        "deadlines allowed; per processor, failure and retry rates; refusals by grounds, "
        "extensions by length. Counts only: no subject, identifier or staff's words. "
        "`format=csv` answers one CSV table. Support and admin.",
        parameters=reports.query_parameters(),
        responses={
            200: ("The report (JSON, or text/csv).", reports.ReportOut),
            403: ("Support or admin only.", models.ProblemOut),
            422: ("A missing or bad date, or a period too long.", models.ProblemOut),
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
            409: (
                "The job has not failed, or is a rectification (its new values are gone: "
                "the subject asks again).",
                models.ProblemOut,
            ),
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
    *[
        Operation(
            "POST",
            "/v1/disclosures",
            disclosures.create_disclosure,
            "Record a compelled disclosure and run its export",
            "disclosures",
            request=disclosures.DisclosureIn,
            description="An authority's order (reference, legal basis) compels the disclosure "
            "of the subject's data in a scope (connectors, categories, dates). Queues an "
            "export addressed to the authority (job kind `disclosure`, never shown to the "
            "subject; its signed manifest names the recipient and the order) and records "
            "when the subject is told (the `disclosed` notice): `now`, `deferred` until "
            "`notice_until` or `never`, both with `notice_reason`. The subject's later "
            "exports list it among the recipients once they may be told. Admin only.",
            responses={
                202: ("The disclosure. `Location` names it.", disclosures.DisclosureOut),
                400: ("The body is not JSON.", models.ProblemOut),
                403: ("Admin only.", models.ProblemOut),
                415: ("The body is not application/json.", models.ProblemOut),
                422: (
                    "An unknown connector, a rule without its reason, a deferral in the past.",
                    models.ProblemOut,
                ),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/disclosures/{disclosure_id}",
            disclosures.get_disclosure,
            "A disclosure, its notice rule and its history",
            "disclosures",
            parameters=[_DISCLOSURE_ID],
            responses={
                200: ("The disclosure.", disclosures.DisclosureOut),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such disclosure.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/disclosures/{disclosure_id}/extend",
            disclosures.extend_disclosure,
            "Defer the subject's notice further",
            "disclosures",
            parameters=[_DISCLOSURE_ID],
            request=disclosures.ExtendIn,
            description="Only a deferred notice not yet due, to a later date, with a reason "
            "not given before; every extension is kept and audited. Admin only.",
            responses={
                200: ("The disclosure with its new deferral.", disclosures.DisclosureOut),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such disclosure.", models.ProblemOut),
                422: (
                    "Not deferred, already due, an earlier date, or no new reason.",
                    models.ProblemOut,
                ),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/disclosures/{disclosure_id}/link",
            disclosures.issue_link,
            "A one-time link to the archive, for the authority",
            "disclosures",
            parameters=[_DISCLOSURE_ID],
            request=disclosures.LinkIn,
            description="Once the archive is ready: a link that works once and expires after "
            "`hours` (at most 168, and never after the archive). The only way to the "
            "archive; each link issued and used is recorded and audited. Admin only.",
            responses={
                200: ("The link, shown this once.", disclosures.LinkOut),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such disclosure.", models.ProblemOut),
                410: ("The job was purged: the archive is gone.", models.ProblemOut),
                422: ("The archive is not ready, or has expired.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/disclosures/{disclosure_id}/archive",
            disclosures.fetch_archive,
            "The archive, for the authority (one-time link)",
            "disclosures",
            auth=False,
            parameters=[
                _DISCLOSURE_ID,
                {
                    "name": "token",
                    "in": "query",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "examples": [
                            "01JD2Z6S41ABCDEFGHJKMNPQRS.4530b38f60a67295c1d2e3f4a5b6c7d8."
                            "1799134830.0fb9ac644e07ce575d7916b1c6418fef"
                        ],
                    },
                    "description": "The link's token, as `POST .../link` gave it.",
                },
            ],
            media_type="application/zip",
            description="The token is the capability: no bearer token is needed or used. "
            "`handover verify` checks the archive.",
            responses={
                200: ("The archive.", None),
                403: ("A changed link, or another disclosure's.", models.ProblemOut),
                404: ("No such disclosure.", models.ProblemOut),
                410: ("The link expired or was used, or the archive is gone.", models.ProblemOut),
            },
        ),
        Operation(
            "POST",
            "/v1/breaches",
            breaches.create_breach,
            "Record a personal data breach",
            "breaches",
            request=breaches.BreachIn,
            description="Enters a breach in the register (GDPR Art. 33(5)) with what Art. "
            "33(3) asks for, as far as known. The 72-hour clock runs from `aware_at`: "
            "`at_risk` from 48 h, `overdue` after 72 h (webhooks `breach.at_risk`, "
            "`breach.overdue`; metric `handover_breaches`). Admin only.",
            responses={
                201: ("The breach. `Location` names it.", breaches.BreachOut),
                403: ("Admin only.", models.ProblemOut),
                422: ("A missing fact, or a time in the future.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches",
            breaches.list_breaches,
            "The breach register",
            "breaches",
            description="Every breach, newest first, each with its clock and every version "
            "of its facts: the register as JSON. Support and admin.",
            responses={
                200: ("The register.", breaches.BreachList),
                403: ("Support or admin only.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches.csv",
            breaches.breach_register_csv,
            "The breach register as CSV",
            "breaches",
            media_type="text/csv",
            description="One row per version of each breach (its whole history), with the "
            "deadline, the clock and the authority's notification. Support and admin.",
            responses={
                200: ("The register, `text/csv`.", None),
                403: ("Support or admin only.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches/{breach_id}",
            breaches.get_breach,
            "A breach and its clock",
            "breaches",
            parameters=[_BREACH_ID],
            responses={
                200: ("The breach.", breaches.BreachOut),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/breaches/{breach_id}/versions",
            breaches.update_breach,
            "Add facts to a breach",
            "breaches",
            parameters=[_BREACH_ID],
            request=breaches.BreachUpdateIn,
            description="Information provided in phases (Art. 33(4)): a new version with the "
            "facts given changed, and a note saying what changed; earlier versions are kept "
            "as they were. `aware_at` cannot change. Admin only.",
            responses={
                200: ("The breach with its new version.", breaches.BreachOut),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                422: ("No note, or a fact that cannot be.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/breaches/{breach_id}/authority-notification",
            breaches.notify_authority,
            "Record that the supervisory authority was notified",
            "breaches",
            parameters=[_BREACH_ID],
            request=breaches.NotificationIn,
            description="Stops the clock: `notified`, or `notified_late` past the 72 hours, "
            "which needs `delay_reasons` (Art. 33(1)). Recorded once. Admin only.",
            responses={
                200: ("The breach, its clock stopped.", breaches.BreachOut),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                409: ("The notification is recorded already.", models.ProblemOut),
                422: (
                    "Late without reasons, or a time before awareness or in the future.",
                    models.ProblemOut,
                ),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches/{breach_id}/report",
            breaches.breach_report,
            "The signed report to the supervisory authority",
            "breaches",
            parameters=[_BREACH_ID],
            description="The Art. 33(3) content of the latest version, its timeline and "
            "phases, signed (Ed25519, as receipts); `handover verify REPORT` checks it. "
            "Support and admin.",
            responses={
                200: ("The signed report.", breaches.BreachReportOut),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/breaches/{breach_id}/notices",
            breaches.start_breach_notices,
            "Tell the affected subjects (Art. 34)",
            "breaches",
            parameters=[_BREACH_ID],
            upload="text/plain",
            upload_example="alice\nbob,fr\ncarol\n",
            description="The body lists the affected subjects, one id per line, optionally "
            "followed by a comma and their language (`bob,fr`); it is read as a stream "
            "(100,000 lines are fine). Each is told, in their language (else the one an "
            "identity source knows, else English), what happened, its likely "
            "consequences, the measures and the DPO's contact (Art. 34(2)), at the address "
            "the identity sources know. A malformed line refuses the whole upload, naming "
            "it. Once per breach. With `Idempotency-Key` the body is read whole to "
            "fingerprint it, so it may then be 64 KiB at most. Admin only.",
            responses={
                202: ("Under way. `Location` names its progress.", breaches.NoticesProgress),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                409: (
                    "Its subjects are told already, or notices are off (no SMTP URL).",
                    models.ProblemOut,
                ),
                413: ("More lines or bytes than one upload takes.", models.ProblemOut),
                415: ("The body is not text/plain (or text/csv).", models.ProblemOut),
                422: ("A malformed line, or no subject at all.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "POST",
            "/v1/breaches/{breach_id}/notices/retry",
            breaches.retry_breach_notices,
            "Send again the Art. 34 notices that never went out",
            "breaches",
            parameters=[_BREACH_ID],
            description="Once every line has an outcome, the lines `failed` or "
            "`not_looked_up` (no letter went out) are told again; `unconfirmed` lines "
            "(perhaps sent) never are: each letter goes out at most once. Admin only.",
            responses={
                202: (
                    "Under way again (or nothing to send again). `Location` names its progress.",
                    breaches.NoticesProgress,
                ),
                403: ("Admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                409: ("The notices are not done yet, or notices are off.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches/{breach_id}/notices",
            breaches.breach_notices,
            "How far the Art. 34 notices are",
            "breaches",
            parameters=[_BREACH_ID],
            responses={
                200: ("Every uploaded subject counted by outcome.", breaches.NoticesProgress),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches/{breach_id}/notices/report.csv",
            breaches.breach_notices_report,
            "The delivery report of the Art. 34 notices",
            "breaches",
            parameters=[_BREACH_ID],
            media_type="text/csv",
            description="Every uploaded line in order: the subject, `sent` (with the "
            "Message-ID), `no_address` (every identity source asked, none knows one: reach "
            "them another way, Art. 34(3)(c)), `not_looked_up` (an identity source kept "
            "failing), `failed` (with why), `unconfirmed` (handed over by a run that stopped "
            "before recording it: perhaps sent, never sent twice), `duplicate` or `pending`. "
            "Cells a spreadsheet would run as formulas are quoted. Support and admin.",
            responses={
                200: ("The report, `text/csv`.", None),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
        Operation(
            "GET",
            "/v1/breaches/{breach_id}/report.html",
            breaches.breach_report_page,
            "The report to the supervisory authority, as a page",
            "breaches",
            parameters=[_BREACH_ID],
            media_type="text/html",
            description="The signed report rendered for the DPO to read and submit. "
            "Support and admin.",
            responses={
                200: ("The page.", None),
                403: ("Support or admin only.", models.ProblemOut),
                404: ("No such breach.", models.ProblemOut),
                **_PROBLEMS,
            },
        ),
    ],
    Operation(
        "GET",
        API_PATH + "{token}",
        get_reply,
        "What a reply link asks of a processor",
        "replies",
        auth=False,
        parameters=[_REPLY_TOKEN],
        description="For processors without an API (`email` connectors): the link in the "
        "request's email. The token is the capability; it expires (`HANDOVER_REPLY_LINK_TTL`) "
        "and works for one reply. A person opens the same at `/reply/{token}` as a page.",
        responses={
            200: ("What is asked: kind, article, identifiers, by when.", models.ReplyAsked),
            403: ("Not a link Handover made.", models.ProblemOut),
            409: (
                "Answered already, replaced by a newer request, or the job ended.",
                models.ProblemOut,
            ),
            410: ("The link expired.", models.ProblemOut),
        },
    ),
    Operation(
        "POST",
        API_PATH + "{token}",
        post_reply,
        "Reply to a request as its processor",
        "replies",
        auth=False,
        request=Statement,
        parameters=[_REPLY_TOKEN],
        description="The statement as `application/json`; or `multipart/form-data` with a "
        "`statement` part (the same JSON) and one `file` part per file (an export's data), "
        "streamed to storage and checksummed. An export takes files or `nothing_held`; an "
        "erasure or restriction a statement: what was erased, anonymised, kept (with its "
        "legal basis), restricted or not found. Once taken, the connector's run goes on "
        "with it: files into the archive, the statement and who gave it into the receipt.",
        responses={
            200: ("The reply is recorded.", models.ReplyTaken),
            403: ("Not a link Handover made.", models.ProblemOut),
            409: (
                "Answered already, replaced by a newer request, or the job ended.",
                models.ProblemOut,
            ),
            410: ("The link expired.", models.ProblemOut),
            413: ("Larger than a reply may be (`HANDOVER_REPLY_MAX_BYTES`).", models.ProblemOut),
            415: ("Neither JSON nor multipart/form-data.", models.ProblemOut),
            422: ("Not what was asked (files for an erasure, no statement…).", models.ProblemOut),
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
        "/v1/recipients",
        list_recipients,
        "Who receives subjects' data",
        "connectors",
        description="Every recipient of subjects' data (GDPR Art. 15(1)(c), 19): each "
        "connector, told of a rectification, erasure or restriction by the job itself, and "
        "each recipient configured in `[recipients.NAME]`, told by email once the job "
        "succeeded. For a subject's token and staff alike.",
        responses={
            200: ("Every recipient and how it is told.", models.RecipientList),
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
        description="`checks` names each check, `ok` or what is wrong; ready when all are "
        "`ok`. `redis`: it answers and never evicts keys (`maxmemory-policy` unset or "
        "`noeviction`); a Redis that refuses `CONFIG GET` (managed services) cannot be asked, "
        "and counts as ready: `redis` reads `ok` and the process logs a warning once, to "
        "check the policy by the provider's means. `worker`: a worker reported in the last "
        "30 s. `epoch`: the epoch marker says Redis still holds this deployment's data. When "
        "Redis lost it, every API answers 503: while the marker is gone (until a running "
        "process records the loss), then while no operator has acknowledged the recorded "
        "loss: `epoch` names what was lost, and `handover epoch acknowledge` makes them ready "
        "again. An unreadable marker is not ready either. `worker` and `epoch` are not "
        "checked when Redis does not answer. `storage`: the object store is usable.",
        responses={200: ("Ready.", None), 503: ("Not ready; `checks` says what failed.", None)},
    ),
]


def add_routes(app: web.Application) -> None:
    """Register every operation, the shallower paths first.

    aiohttp tries the paths that share a prefix (``/v1/jobs``) in the order they were
    added, one match each, and a path can only match a pattern of its own depth (no
    parameter spans a ``/`` but the object key, alone under its prefix): so
    ``GET /v1/jobs/{job_id}`` is tried before its many sub-paths, not after them.
    """
    for operation in sorted(OPERATIONS, key=lambda operation: operation.path.count("/")):
        path = operation.path.replace("{key}", "{key:.+}")
        app.router.add_route(operation.method, path, operation.handler)


__all__ = ["OPERATIONS", "Operation", "add_routes"]
