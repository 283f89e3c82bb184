"""The API's handler for who receives subjects' data (GDPR Art. 15(1)(c), 19): thin, like
:mod:`service.api.handlers`.

Any signed-in caller, a subject's token as staff: the list is the same for everyone
(:func:`jobs.recipients.listed`), the connectors and the ``[recipients.NAME]`` configured.
"""

from __future__ import annotations

from aiohttp import web

from jobs.recipients import listed
from service.api.handlers import principal
from service.api.views import json_response
from service.appkeys import RESOURCES


async def list_recipients(request: web.Request) -> web.Response:
    await principal(request)
    return json_response({"recipients": listed(request.app[RESOURCES])})
