"""RFC 9457 problem responses, and the mapping of every expected error to one.

Handlers raise; they never build error responses themselves. Domain errors from
``jobs`` and aiohttp's own HTTP errors become ``application/problem+json``
(:func:`to_problem`); the API's error middleware (``service/api/middleware.py``)
and the dashboard answer with them.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from jobs.breach_notices import FanOutExists, UploadTooLarge
from jobs.breaches import AlreadyNotified, BreachNotFound
from jobs.disclosures import DisclosureNotFound, LinkRefused
from jobs.handoff import ReplyRefused
from jobs.lifecycle import NotAllowed
from jobs.model import (
    ActiveJobExists,
    DownloadLimitReached,
    IllegalTransition,
    InvalidRequest,
    JobEnded,
)
from jobs.queue import REDIS_UNAVAILABLE
from jobs.search import BadCursor
from jobs.storage.base import StorageError
from jobs.store import JobNotFound

PROBLEM_TYPE = "https://handover.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error to answer with: HTTP status, a short title and a specific detail."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra

    def response(self, instance: str) -> web.Response:
        """The problem as a response."""
        body = {
            "type": PROBLEM_TYPE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extra,
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def _validation_problem(exc: ValidationError) -> Problem:
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "(body)",
            "message": error["msg"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Problem(422, "Invalid request", detail, errors=errors)


_HTTP_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Request too large",
    415: "Unsupported media type",
    429: "Too many requests",
}


#: A refused reply of a processor (:class:`jobs.handoff.ReplyRefused`): status and title.
_REPLY_REFUSALS = {
    "invalid": (403, "Invalid reply link"),
    "expired": (410, "Reply link expired"),
    "used": (409, "Already answered"),
    "superseded": (409, "Request replaced"),
    "ended": (409, "Request ended"),
    "too_large": (413, "Reply too large"),
    "unexpected": (422, "Unexpected reply"),
}


#: A refused authority link (:class:`jobs.disclosures.LinkRefused`): status and title.
_LINK_REFUSALS = {
    "invalid": (403, "Invalid link"),
    "expired": (410, "Link expired"),
    "used": (410, "Link used"),
    "gone": (410, "Gone"),
}


def to_problem(exc: BaseException) -> Problem | None:
    """The problem an exception stands for, or ``None`` for an unexpected one."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ValidationError):
        return _validation_problem(exc)
    if isinstance(exc, InvalidRequest):
        return Problem(
            422, "Invalid request", str(exc), errors=[{"field": exc.field, "message": exc.message}]
        )
    if isinstance(exc, JobNotFound):
        return Problem(404, "Not found", f"no job {exc.job_id}")
    if isinstance(exc, IllegalTransition):
        return Problem(409, "Conflict", str(exc), status_now=exc.current.value)
    if isinstance(exc, BreachNotFound | DisclosureNotFound):
        return Problem(404, "Not found", str(exc))
    if isinstance(exc, LinkRefused):
        status, title = _LINK_REFUSALS[exc.reason]
        return Problem(status, title, str(exc), slug=f"disclosure-link-{exc.reason}")
    if isinstance(exc, AlreadyNotified):
        return Problem(409, "Conflict", str(exc), slug="already-notified")
    if isinstance(exc, FanOutExists):
        return Problem(409, "Conflict", str(exc), slug="notices-already-sent")
    if isinstance(exc, UploadTooLarge):
        return Problem(413, "Upload too large", str(exc), slug="upload-too-large")
    if isinstance(exc, ActiveJobExists):
        return Problem(
            409,
            "Already under way",
            str(exc),
            slug="active-job-exists",
            headers={"Location": f"/v1/jobs/{exc.job_id}"},
            job_id=exc.job_id,
        )
    if isinstance(exc, DownloadLimitReached):
        return Problem(403, "Download limit reached", str(exc), slug="download-limit-reached")
    if isinstance(exc, JobEnded):
        return Problem(409, "Conflict", str(exc), status_now=exc.status.value)
    if isinstance(exc, ReplyRefused):
        status, title = _REPLY_REFUSALS[exc.reason]
        return Problem(status, title, str(exc), slug=f"reply-{exc.reason.replace('_', '-')}")
    if isinstance(exc, NotAllowed):
        return Problem(409, "Not allowed", str(exc), slug=exc.rule, rule=exc.rule)
    if isinstance(exc, BadCursor):
        return Problem(
            422, "Invalid request", str(exc), errors=[{"field": "cursor", "message": str(exc)}]
        )
    if isinstance(exc, REDIS_UNAVAILABLE):
        return Problem(
            503,
            "Service unavailable",
            "the job store cannot be reached; try again shortly",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, StorageError):
        return Problem(
            503,
            "Service unavailable",
            "object storage cannot be reached; try again shortly",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        title = _HTTP_TITLES.get(exc.status, exc.reason)
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else title
        if exc.status == 404:
            detail = "no such resource"
        elif exc.status == 405:
            detail = f"this resource does not allow {getattr(exc, 'method', 'that method')}"
        elif exc.status == 413:
            detail = "the request body is larger than this API accepts"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return Problem(exc.status, title, detail, headers=headers)
    return None
