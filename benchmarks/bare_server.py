"""The reference server: bare aiohttp endpoints that answer with fixed bytes.

``GET /bare`` answers 200 with the bytes of the first ``--get-body`` (``GET
/bare/{n}``: the n-th, from 0; ``GET /bare/job/{id}``, any id: the first, so a
run spread over many paths routes like one over many jobs); ``POST /bare`` reads
the request body and answers 202 with the bytes of ``--post-body`` and a
``Location``. Both are ``application/json``. aiohttp's defaults otherwise, in one
process, on the same event loop Handover's API uses.

    python benchmarks/bare_server.py --port 8081 --get-body job.json --post-body created.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def create_app(get_bodies: list[bytes], post_body: bytes) -> web.Application:
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

    app = web.Application()
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
    args = parser.parse_args()
    app = create_app([path.read_bytes() for path in args.get_body], args.post_body.read_bytes())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
