"""Abuse limits: API requests per minute per caller, and new requests per hour per subject.

Fixed windows counted by :class:`jobs.ratelimit.RateLimiter`, shared by every API
process: each counts in memory and adds its counts to Redis every 100 ms, and counts
in Redis at once past half a limit (the bound across processes is in that module).
Past a limit the answer is 429 problem+json with ``Retry-After`` saying when the
window ends.

A caller is who their token verifies as (its issuer and subject), never the token's
spelling: another token for the same subject, or the same token written another way
(a padding character after its signature still verifies), counts against the same
limit. A request whose token does not verify, or that has none, counts against its
client address (the one a trusted proxy forwards, ``service/proxies.py``). Only the
API's operations (``/v1/``) are counted: never the health probes, which a busy address
must not be able to fail, nor the dashboard's pages.
"""

from __future__ import annotations

import functools
import hashlib

import orjson
from aiohttp import web

from service.api.middleware import Handler
from service.appkeys import AUTHORITY, RESOURCES, SETTINGS
from service.auth import TOKEN_CACHE_SIZE
from service.problems import Problem

TOKEN_WINDOW_SECONDS = 60
SUBJECT_WINDOW_SECONDS = 3600
API_PREFIX = "/v1/"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=TOKEN_CACHE_SIZE)
def _principal_scope(issuer: str | None, sub: str) -> str:
    """A principal's scope, kept for its next requests: one verified token asks many."""
    return f"principal:{_digest(orjson.dumps([issuer, sub]).decode())}"


def too_many(wait: int, detail: str) -> Problem:
    """A 429 problem telling the client when to come back."""
    return Problem(
        429, "Too many requests", detail, slug="rate-limited", headers={"Retry-After": str(wait)}
    )


async def caller_scope(request: web.Request) -> str:
    """Whose limit a request counts against: its verified principal, else its client address."""
    try:
        who = await request.app[AUTHORITY].authenticate(request)
    except Problem:  # no token, or not a valid one: the handler says why
        return f"client:{_digest(request.remote or '')}"
    return _principal_scope(who.issuer, who.sub)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each API request against its caller's limit."""
    limit = request.app[SETTINGS].rate_limit
    if limit and request.path.startswith(API_PREFIX):
        limiter = request.app[RESOURCES].rate_limiter
        wait = await limiter.hit(await caller_scope(request), TOKEN_WINDOW_SECONDS, limit)
        if wait:
            raise too_many(wait, f"at most {limit} requests a minute per caller")
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
