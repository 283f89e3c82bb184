"""The reference server: bare aiohttp endpoints that answer with fixed bytes.

``GET /bare`` answers 200 with the bytes of the first ``--get-body`` (``GET
/bare/{n}``: the n-th, from 0; ``GET /bare/job/{id}``, any id: the first, so a
run spread over many paths routes like one over many jobs); ``POST /bare`` reads
the request body and answers 202 with the bytes of ``--post-body`` and a
``Location``. Both are ``application/json``. aiohttp's defaults otherwise, in one
process, on the same event loop Handover's API uses.

With ``--redis-url``, ``GET /floor/job/{id}`` also reads the job's record from that
Redis, as ``GET /v1/jobs/{id}`` reads it (``JobStore.record``, over a client opened as
the API opens its own), then answers the first ``--get-body``: the least a server
that reads each job it shows from Redis must do here, with no auth, view, log or
middleware of Handover's. An unknown job is a 404.

    python benchmarks/bare_server.py --port 8081 --get-body job.json --post-body created.json
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from jobs.queue import API_RETRIES, connect
from jobs.resources import NAMESPACE
from jobs.store import JobNotFound, JobStore

STORE = web.AppKey("store", JobStore)


def create_app(
    get_bodies: list[bytes], post_body: bytes, redis_url: str | None = None
) -> web.Application:
    """The endpoints."""

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=get_bodies[0], content_type="application/json")

    async def get_nth(request: web.Request) -> web.Response:
        body = get_bodies[int(request.match_info["n"])]
        return web.Response(body=body, content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=202,
            body=post_body,
            content_type="application/json",
            headers={"Location": "/bare"},
        )

    async def floor(request: web.Request) -> web.Response:
        try:
            await request.app[STORE].record(request.match_info["job_id"])
        except JobNotFound:
            raise web.HTTPNotFound() from None
        return web.Response(body=get_bodies[0], content_type="application/json")

    async def store(app: web.Application) -> AsyncIterator[None]:
        assert redis_url is not None
        redis = await connect(redis_url, retries=API_RETRIES)
        app[STORE] = JobStore(redis, NAMESPACE)
        yield
        await redis.aclose()

    app = web.Application()
    if redis_url is not None:
        app.cleanup_ctx.append(store)
        app.router.add_get("/floor/job/{job_id}", floor)
    app.router.add_get("/bare", get)
    app.router.add_get("/bare/{n:\\d+}", get_nth)
    app.router.add_get("/bare/job/{job_id}", get)
    app.router.add_post("/bare", post)
    return app


def main() -> None:
    """Serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--get-body", type=Path, action="append", required=True)
    parser.add_argument("--post-body", type=Path, required=True)
    parser.add_argument("--redis-url", help="serve GET /floor/job/{id} from this Redis")
    args = parser.parse_args()
    app = create_app(
        [path.read_bytes() for path in args.get_body],
        args.post_body.read_bytes(),
        args.redis_url,
    )
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
