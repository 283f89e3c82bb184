"""The one middleware that maps every error to an RFC 9457 problem response.

Handlers raise; they never build error responses themselves. Domain errors from
``jobs`` and aiohttp's own HTTP errors become ``application/problem+json``
(:func:`service.problems.to_problem`); an unexpected exception is logged and becomes
a 500 problem with no traceback in the body.

Every response the app sends, problem or not, JSON, event stream, page or file,
carries ``X-Content-Type-Options: nosniff`` (:func:`nosniff`, on
``on_response_prepare``): a browser never reads one as anything but its declared type.

The app's other middleware sits beside what it guards: the rate limits in
``service/ratelimit.py``, ``Idempotency-Key`` replays in ``service/idempotency.py``,
trusted proxies' forwarded headers in ``service/proxies.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.problems import Problem, to_problem

log = logging.getLogger("handover.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as problem+json."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = to_problem(exc)
        assert problem is not None
        return problem.response(request.path)
    except Exception as exc:
        problem = to_problem(exc)
        if problem is None:
            log.exception("unexpected error on %s %s", request.method, request.path)
            problem = Problem(
                500, "Internal error", "the server failed to answer; it has been logged"
            )
        return problem.response(request.path)


async def nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """Forbid content sniffing on every response, just before its headers are sent."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
