"""``Idempotency-Key`` on every POST: a retried request gets the first answer, not a second job.

The first request with a key claims it (briefly, while it runs), then stores its
response for 24 hours. A repeat with the same key and the same request (method,
path, body) replays that response with ``Idempotent-Replayed: true``; a repeat
with another request is a 422; a repeat while the first still runs is a 409.
A request that fails with an error releases the key, so the client may retry.
Keys are per caller (the token's subject), so one caller cannot replay another's;
:class:`jobs.idempotency.IdempotencyStore` keeps them.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from jobs.idempotency import Earlier, StoredResponse
from service.api.middleware import Handler
from service.appkeys import AUTHORITY, RESOURCES
from service.problems import Problem

HEADER = "Idempotency-Key"
REPLAYED_HEADERS = ("Location", "Content-Type")


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Replay or refuse repeats of a POST that carries an ``Idempotency-Key``."""
    key = request.headers.get(HEADER)
    if request.method != "POST" or key is None:
        return await handler(request)
    if not key.strip() or len(key) > 255:
        raise Problem(400, "Bad request", f"{HEADER} must be 1 to 255 characters")
    try:
        caller = (await request.app[AUTHORITY].authenticate(request)).sub
    except Problem:
        return await handler(request)  # unauthenticated: the handler answers 401
    body = await request.read()
    fingerprint = hashlib.sha256(
        f"{request.method} {request.rel_url.path}\n".encode() + body
    ).hexdigest()
    keys = request.app[RESOURCES].idempotency
    if not await keys.claim(caller, key, fingerprint):
        return _repeat(await keys.earlier(caller, key), fingerprint)
    try:
        response = await handler(request)
    except BaseException:
        await keys.release(caller, key)
        raise
    if not isinstance(response, web.Response) or response.status >= 500 or response.body is None:
        await keys.release(caller, key)
        return response
    kept = StoredResponse(
        status=response.status,
        headers={h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers},
        body=bytes(response.body),  # type: ignore[arg-type]
    )
    await keys.keep(caller, key, fingerprint, kept)
    return response


def _repeat(earlier: Earlier | None, fingerprint: str) -> web.Response:
    if earlier is None:
        raise Problem(409, "Conflict", f"a request with this {HEADER} just ended; send it again")
    if earlier.fingerprint != fingerprint:
        raise Problem(
            422,
            "Idempotency key reused",
            f"this {HEADER} was used for a different request",
            slug="idempotency-key-reused",
        )
    if earlier.response is None:
        raise Problem(
            409,
            "Conflict",
            f"the request with this {HEADER} is still being processed",
            headers={"Retry-After": "1"},
        )
    headers = {**earlier.response.headers, "Idempotent-Replayed": "true"}
    content_type = headers.pop("Content-Type", "application/json").split(";")[0]
    return web.Response(
        status=earlier.response.status,
        body=earlier.response.body,
        headers=headers,
        content_type=content_type,
    )
