"""Abuse limits: requests per minute per token, and new requests per hour per subject.

Fixed windows counted by :class:`jobs.ratelimit.RateLimiter`, shared by every API
process. Past a limit the answer is 429 problem+json with ``Retry-After`` saying
when the window ends.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from service.api.middleware import Handler
from service.appkeys import RESOURCES, SETTINGS
from service.problems import Problem

TOKEN_WINDOW_SECONDS = 60
SUBJECT_WINDOW_SECONDS = 3600


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def too_many(wait: int, detail: str) -> Problem:
    """A 429 problem telling the client when to come back."""
    return Problem(
        429, "Too many requests", detail, slug="rate-limited", headers={"Retry-After": str(wait)}
    )


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request carrying a bearer token against that token's limit."""
    limit = request.app[SETTINGS].rate_limit
    header = request.headers.get("Authorization", "")
    if limit and header.lower().startswith("bearer "):
        limiter = request.app[RESOURCES].rate_limiter
        token = _digest(header[7:].strip())
        wait = await limiter.hit(f"token:{token}", TOKEN_WINDOW_SECONDS, limit)
        if wait:
            raise too_many(wait, f"at most {limit} requests a minute per token")
    return await handler(request)


async def limit_subject(request: web.Request, subject: str) -> None:
    """Count a new request about ``subject``; 429 past the hourly limit."""
    limit = request.app[SETTINGS].subject_rate_limit
    if not limit:
        return
    limiter = request.app[RESOURCES].rate_limiter
    wait = await limiter.hit(f"subject:{_digest(subject)}", SUBJECT_WINDOW_SECONDS, limit)
    if wait:
        raise too_many(wait, f"at most {limit} new requests an hour about one subject")
