"""The API's handler for lifting a restriction (GDPR Art. 18(3)): thin, like
:mod:`service.api.handlers`.

Support and admin only. :meth:`jobs.commands.Commands.lift` tells the subject first and
answers the lift job, which unblocks nothing until that notice is sent (:mod:`jobs.lift`).
"""

from __future__ import annotations

from aiohttp import web

from service.api import models
from service.api.handlers import (
    actor,
    principal,
    read_body,
    requester_identity,
    require_staff,
    visible_job,
)
from service.api.views import accepted
from service.appkeys import COMMANDS


async def lift_restriction(request: web.Request) -> web.Response:
    who = await principal(request)
    require_staff(who)
    restriction = await visible_job(request, who)
    body = await read_body(request, models.LiftRequest)
    job = await request.app[COMMANDS].lift(
        actor(who),
        restriction.id,
        reason=body.reason,
        lifts_at=body.lifts_at,
        identity=requester_identity(who, restriction.subject, body.identifiers),
    )
    return accepted(job)
