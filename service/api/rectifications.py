"""The API's rectification handler (GDPR Art. 16): thin, like :mod:`service.api.handlers`.

Parse, authorise, call :meth:`jobs.commands.Commands.request_rectification`, render. A
field that is not rectifiable, or a value of the wrong type, is refused there, as a
problem naming the change (``changes[0].value``). Support's approval goes through
``POST /v1/jobs/{id}/decide`` (:mod:`service.api.objections`).
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
)
from service.api.views import accepted
from service.appkeys import COMMANDS
from service.ratelimit import limit_subject


async def create_rectification(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await read_body(request, models.RectificationRequest)
    subject = requested_subject(who, body.subject, "a rectification")
    await limit_subject(request, subject)
    job = await request.app[COMMANDS].request_rectification(
        actor(who),
        subject=subject,
        changes=[change.model_dump() for change in body.changes],
        reason=body.reason,
        identity=requester_identity(who, subject, body.identifiers),
        locale=who.notice_locale(subject, body.locale),
        jurisdiction=requested_jurisdiction(request, who, subject, body.jurisdiction),
    )
    return accepted(job)
