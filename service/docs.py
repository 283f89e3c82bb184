"""``/openapi.json`` and ``/docs``: the API described, browsable offline (no CDN)."""

from __future__ import annotations

from pathlib import Path

import orjson
from aiohttp import web

from service.openapi import build_spec


def add_doc_routes(app: web.Application, version: str) -> None:
    """Serve the OpenAPI document and the page that renders it."""
    spec = orjson.dumps(build_spec(version))
    page = (Path(__file__).parent / "static" / "docs.html").read_bytes()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
