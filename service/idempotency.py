"""``Idempotency-Key`` on every POST: a retried request gets the first answer, not a second job.

The first request with a key claims it (briefly, while it runs), then stores its
response for 24 hours. A repeat with the same key and the same request (method,
path, body) replays that response with ``Idempotent-Replayed: true``; a repeat
with another request is a 422; a repeat while the first still runs is a 409.
A request that fails with an error releases the key, so the client may retry.
Keys are per caller (the token's subject), so one caller cannot replay another's.
"""

from __future__ import annotations

import base64
import hashlib

import orjson
from aiohttp import web

from service.appkeys import AUTHORITY, RESOURCES
from service.problems import Handler, Problem

HEADER = "Idempotency-Key"
PENDING_SECONDS = 60
KEPT_SECONDS = 24 * 3600
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
    redis = request.app[RESOURCES].redis
    ns = request.app[RESOURCES].store.ns
    caller_digest = hashlib.sha256(caller.encode()).hexdigest()[:16]
    slot = f"{ns}idem:{caller_digest}:{hashlib.sha256(key.encode()).hexdigest()}"
    claim = orjson.dumps({"fingerprint": fingerprint, "state": "pending"})
    if not await redis.set(slot, claim, nx=True, ex=PENDING_SECONDS):
        return await _repeat(await redis.get(slot), fingerprint)
    try:
        response = await handler(request)
    except BaseException:
        await redis.delete(slot)
        raise
    if not isinstance(response, web.Response) or response.status >= 500 or response.body is None:
        await redis.delete(slot)
        return response
    stored = {
        "fingerprint": fingerprint,
        "state": "done",
        "status": response.status,
        "headers": {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers},
        "body": base64.b64encode(bytes(response.body)).decode(),  # type: ignore[arg-type]
    }
    await redis.set(slot, orjson.dumps(stored), ex=KEPT_SECONDS)
    return response


async def _repeat(raw: bytes | None, fingerprint: str) -> web.Response:
    if raw is None:
        raise Problem(409, "Conflict", f"a request with this {HEADER} just ended; send it again")
    earlier = orjson.loads(raw)
    if earlier["fingerprint"] != fingerprint:
        raise Problem(
            422,
            "Idempotency key reused",
            f"this {HEADER} was used for a different request",
            slug="idempotency-key-reused",
        )
    if earlier["state"] != "done":
        raise Problem(
            409,
            "Conflict",
            f"the request with this {HEADER} is still being processed",
            headers={"Retry-After": "1"},
        )
    headers = {**earlier["headers"], "Idempotent-Replayed": "true"}
    content_type = headers.pop("Content-Type", "application/json").split(";")[0]
    return web.Response(
        status=earlier["status"],
        body=base64.b64decode(earlier["body"]),
        headers=headers,
        content_type=content_type,
    )
