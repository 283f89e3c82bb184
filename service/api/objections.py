"""The API's objection handlers (GDPR Art. 21): ask, and support's decision.

Thin, like :mod:`service.api.handlers`: parse, authorise, call
:meth:`jobs.commands.Commands.request_objection` or :meth:`~jobs.commands.Commands.decide`,
render. An objection naming direct marketing and other purposes makes two jobs; the
answer is the first (direct marketing, running at once), and a ``Link`` header with
``rel="related"`` names the other, which waits for support's decision.
"""

from __future__ import annotations

from aiohttp import web

from service.api import models
from service.api.handlers import (
    actor,
    principal,
    read_body,
    requested_jurisdiction,
    requested_subject,
    requester_identity,
    require_staff,
    visible_job,
)
from service.api.views import accepted, job_view, json_response
from service.appkeys import COMMANDS
from service.ratelimit import limit_subject


async def create_objection(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await read_body(request, models.ObjectionRequest)
    subject = requested_subject(who, body.subject, "an objection")
    await limit_subject(request, subject)
    jobs = await request.app[COMMANDS].request_objection(
        actor(who),
        subject=subject,
        purposes=body.purposes,
        connectors=body.connectors,
        reason=body.reason,
        identity=requester_identity(who, subject, body.identifiers),
        locale=who.notice_locale(subject, body.locale),
        jurisdiction=requested_jurisdiction(request, who, subject, body.jurisdiction),
    )
    response = accepted(jobs[0])
    for related in jobs[1:]:
        response.headers.add("Link", f'</v1/jobs/{related.id}>; rel="related"')
    return response


async def decide_job(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    job = await visible_job(request, who)
    body = await read_body(request, models.DecideRequest)
    decided = await request.app[COMMANDS].decide(
        actor(who), job.id, upheld=body.upheld, grounds=body.grounds, verified_by=body.verified_by
    )
    return json_response(job_view(decided, admin=who.is_admin))
