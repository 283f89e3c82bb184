"""How the API answers: JSON bodies, a job as clients see it, a job's live timeline.

:func:`job_view` is the one shape of a job the API shows (``models.JobOut``);
:func:`stream_events` serves a job's timeline as server-sent events, and the
dashboard serves its own with it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from jobs.model import Job, JobKind, JobStatus, utcnow
from service.appkeys import RESOURCES


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def job_view(job: Job, *, admin: bool = False, deciding: bool = False) -> dict[str, Any]:
    """A job as the API shows it (``models.JobOut``): no storage keys or staged parts,
    no identifier values (only their kinds, and how each was verified, or offered), no secrets,
    no rectification's new values — but to ``deciding`` staff (``GET /v1/jobs/{id}``) while
    the rectification waits for their decision, as ``new_values``.

    A failed run's ``error_detail`` (the processor's own words, which may hold
    personal data) is shown to admins only."""
    base = f"/v1/jobs/{job.id}"
    hidden = {"staged_key", "parts"} if admin else {"staged_key", "parts", "error_detail"}
    # Python mode: orjson encodes the datetimes and enums, faster than pydantic's JSON mode.
    view = job.model_dump(
        exclude={
            "connectors",
            "result",
            "receipt",
            "identity",
            "archive_password",
            "new_values",
            "information",
        },
    )
    view["deadline"] = job.deadline_state(utcnow())
    info = job.information
    view["information"] = (
        {**info.model_dump(exclude={"offered"}), "offered": sorted(info.offered)} if info else None
    )
    view["identity"] = job.identity.statement()
    if (
        deciding
        and job.kind is JobKind.RECTIFICATION
        and job.status is JobStatus.AWAITING_CONFIRMATION
        and len(job.new_values) == len(job.rectification_options.changes)
    ):
        view["new_values"] = [
            {**ref.model_dump(), "value": value}
            for ref, value in zip(job.rectification_options.changes, job.new_values, strict=True)
        ]
    view["connectors"] = {
        name: run.model_dump(exclude=hidden) for name, run in job.connectors.items()
    }
    view["result"] = job.result.model_dump(exclude={"key"}) if job.result else None
    view["links"] = {
        "self": base,
        "events": f"{base}/events",
        "download": f"{base}/download"
        if job.result is not None and job.kind is not JobKind.DISCLOSURE
        else None,
        "receipt": f"{base}/receipt" if job.receipt is not None else None,
    }
    return view


def accepted(job: Job) -> web.Response:
    """202 with the job and its Location."""
    return json_response(job_view(job), status=202, headers={"Location": f"/v1/jobs/{job.id}"})


ENDING_STATUSES = {s.value for s in JobStatus if s.terminal}
KEEPALIVE_SECONDS = 15.0


async def stream_events(
    request: web.Request, job_id: str, after: str, *, named: bool = True
) -> web.StreamResponse:
    """Server-sent events: the timeline so far, then each new event until the job ends.

    Each is named by its type (``event: connector.started``); with ``named`` false each is
    a plain ``message`` (its type in its data), for a page that reacts to every one
    whatever its type, the types added later included.
    """
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
                name = f"event: {event.type}\n" if named else ""
                await response.write(f"id: {event.id}\n{name}data: {body}\n\n".encode())
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


__all__ = ["stream_events"]
