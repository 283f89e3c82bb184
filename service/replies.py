"""Replies of processors served by hand: the API and the page a person opens from the email.

::

    GET  /v1/replies/{token}   what is asked: the kind, the article, the identifiers, by when
    POST /v1/replies/{token}   the reply: application/json (a statement), or
                               multipart/form-data (a ``statement`` part, JSON, and ``file``
                               parts, streamed to storage as they arrive)
    GET  /reply/{token}        the same as a page: what is asked, and a form
    POST /reply/{token}        the form (multipart/form-data: ``by``, ``note``,
                               ``nothing_held``, ``file``…, ``line-N-what|outcome|records|
                               legal_basis|until``); answered with a page

The token is the capability (:class:`jobs.handoff.ReplyLink`): no bearer token is asked.
Every refusal is a problem (API: problem+json; page: the same words in HTML), with the
files of a refused reply deleted (:meth:`jobs.handoff.Upload.discard`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jinja2
import orjson
from aiohttp import BodyPartReader, web

from connectors.byhand import ByHandConnector
from jobs.handoff import (
    API_PATH,
    MAX_FILES,
    PAGE_PATH,
    Handoffs,
    ReplyLink,
    Statement,
    Upload,
    outcomes,
)
from jobs.model import Job, JobKind, iso
from service.api.views import json_response
from service.appkeys import COMMANDS, RESOURCES
from service.problems import Problem, to_problem

#: The most bytes of a statement (JSON, or the form's text fields together, their
#: parts' names counted).
MAX_STATEMENT_BYTES = 64 * 1024
#: The most parts a multipart reply may have: its files, and the form's fields (``by``,
#: ``note``, ``nothing_held``, a checklist's steps, five lines of five fields) with room.
MAX_PARTS = MAX_FILES + 200
_CHUNK = 256 * 1024
_LINES = 5
TEMPLATES = Path(__file__).parent / "templates"
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _link(request: web.Request) -> ReplyLink:
    return ReplyLink.parse(request.app[RESOURCES], request.match_info["token"])


async def _asked(request: web.Request) -> tuple[ReplyLink, Job, ByHandConnector]:
    link = _link(request)
    job, connector = await Handoffs(request.app[RESOURCES]).open(link)
    return link, job, connector


def asked_view(
    request: web.Request, link: ReplyLink, job: Job, c: ByHandConnector
) -> dict[str, Any]:
    """What a reply link asks (``models.ReplyAsked``)."""
    run = job.connectors[c.name]
    asked = c.request(job.subject_view, job.kind.value)
    handoff = run.handoff or {}
    return {
        "job": job.id,
        "connector": c.name,
        "kind": job.kind.value,
        "article": asked.article,
        "identifiers": dict(asked.identifiers),
        "instructions": asked.instructions,
        "checklist": list(asked.checklist),
        "asks_for": "files" if job.kind is JobKind.EXPORT else "statement",
        "outcomes": outcomes(job.kind.value),
        "reply_by": handoff.get("reply_by"),
        "due_at": iso(job.due_at),
        "link_expires_at": iso(datetime.fromtimestamp(link.expires, UTC)),
        "max_bytes": request.app[RESOURCES].settings.reply_max_bytes,
    }


async def get_reply(request: web.Request) -> web.Response:
    """``GET /v1/replies/{token}``."""
    link, job, connector = await _asked(request)
    return json_response(asked_view(request, link, job, connector))


async def post_reply(request: web.Request) -> web.Response:
    """``POST /v1/replies/{token}``."""
    link, _, _ = await _asked(request)
    statement, upload = await read_reply(request, link)
    job = await request.app[COMMANDS].take_reply(link, statement, upload)
    reply = job.connectors[link.connector].reply or {}
    return json_response(
        {
            "job": job.id,
            "connector": link.connector,
            "recorded_at": reply.get("at"),
            "files": [{k: f[k] for k in ("name", "bytes", "sha256")} for f in upload.files],
            "lines": len(statement.lines),
        }
    )


async def read_reply(request: web.Request, link: ReplyLink) -> tuple[Statement, Upload]:
    """The reply's statement and its files (already stored); what was stored is deleted if
    reading fails."""
    upload = Handoffs(request.app[RESOURCES]).upload(link)
    if request.content_type == "application/json":
        return _statement(await _limited(request)), upload
    if request.content_type != "multipart/form-data":
        raise Problem(
            415,
            "Unsupported media type",
            "send the reply as application/json or multipart/form-data",
        )
    try:
        return await _read_parts(request, upload), upload
    except BaseException:
        await upload.discard()
        raise


async def _limited(request: web.Request) -> bytes:
    raw = await request.read()  # the app's client_max_size caps it
    if len(raw) > MAX_STATEMENT_BYTES:
        raise Problem(413, "Payload too large", "a statement is 64 KiB at most")
    return raw


def _statement(raw: bytes | dict[str, Any]) -> Statement:
    if isinstance(raw, bytes):
        try:
            raw = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise Problem(
                400,
                "Malformed JSON",
                f"the statement is not valid JSON: {exc}",
                slug="malformed-json",
            ) from None
    if not isinstance(raw, dict):
        raise Problem(
            400, "Malformed JSON", "the statement must be a JSON object", slug="malformed-json"
        )
    return Statement.model_validate(raw)


async def _read_parts(request: web.Request, upload: Upload) -> Statement:
    """A multipart reply: ``statement`` (JSON) or the page's fields, and ``file`` parts."""
    reader = await request.multipart()
    statement: bytes | None = None
    fields: dict[str, list[str]] = {}
    text_bytes = parts = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > MAX_PARTS:
            raise Problem(413, "Payload too large", f"a reply has {MAX_PARTS} parts at most")
        if not isinstance(part, BodyPartReader):
            raise Problem(422, "Invalid request", "nested multipart bodies are not taken")
        text_bytes += len(part.name or "")
        if text_bytes > MAX_STATEMENT_BYTES:
            raise Problem(413, "Payload too large", "a statement is 64 KiB at most")
        if part.name == "file":
            media = part.headers.get("Content-Type", "application/octet-stream")
            first = await part.read_chunk(_CHUNK)
            if not part.filename and not first:
                continue  # a file input left empty
            # Some clients (aiohttp's own) percent-encode the name; browsers send it as is.
            name = unquote(part.filename or "file")
            await upload.add(name, media, _chunks(part, bytes(first)))
            continue
        if part.filename is not None:
            raise Problem(
                422, "Invalid request", f"a file came in the part {part.name!r}; files go in 'file'"
            )
        value = await _text(part, MAX_STATEMENT_BYTES - text_bytes)
        text_bytes += len(value)
        if part.name == "statement":
            statement = bytes(value)
        elif part.name in _FORM_FIELDS or (part.name or "").startswith("line-"):
            fields.setdefault(part.name or "", []).append(value.decode("utf-8", "replace"))
        else:
            raise Problem(422, "Invalid request", f"unexpected part {part.name!r}")
    if statement is not None:
        return _statement(statement)
    return _statement(_form_statement(fields))


async def _text(part: BodyPartReader, budget: int) -> bytes:
    """A text part, read a chunk at a time; 413 once the statement passes its 64 KiB."""
    value = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        value += chunk
        if len(value) > budget:
            raise Problem(413, "Payload too large", "a statement is 64 KiB at most")
    return bytes(value)


async def _chunks(part: BodyPartReader, first: bytes) -> AsyncIterator[bytes]:
    if first:
        yield first
    while chunk := await part.read_chunk(_CHUNK):
        yield bytes(chunk)


_FORM_FIELDS = {"by", "note", "nothing_held", "checklist"}


def _form_statement(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The page's form fields as a statement; empty line rows are left out."""

    def one(name: str) -> str:
        return (fields.get(name) or [""])[0].strip()

    lines = []
    for index in range(_LINES):
        row = {key: one(f"line-{index}-{key}") for key in _LINE_KEYS}
        if not row["what"]:
            continue
        line: dict[str, Any] = {"what": row["what"], "outcome": row["outcome"] or "erased"}
        if row["records"]:
            line["records"] = int(row["records"]) if row["records"].isdigit() else row["records"]
        if row["legal_basis"]:
            line["legal_basis"] = row["legal_basis"]
        if row["until"]:
            line["until"] = row["until"]
        lines.append(line)
    statement: dict[str, Any] = {"by": one("by"), "lines": lines}
    if one("note"):
        statement["note"] = one("note")
    statement["nothing_held"] = one("nothing_held") in {"on", "true", "yes"}
    statement["checklist"] = [step for step in fields.get("checklist", []) if step.strip()]
    return statement


_LINE_KEYS = ("what", "outcome", "records", "legal_basis", "until")


class ReplyPage:
    """The page a person opens from the request's email."""

    def __init__(self) -> None:
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def _render(self, context: dict[str, Any], status: int = 200) -> web.Response:
        html = self._templates.get_template("reply.html").render(lines=_LINES, **context)
        return web.Response(
            text=html, status=status, content_type="text/html", headers=_PAGE_HEADERS
        )

    def _refused(self, exc: Exception) -> web.Response:
        problem = to_problem(exc)
        if problem is None:
            raise exc
        shown = {"title": problem.title, "detail": problem.detail}
        return self._render({"asked": None, "done": None, "problem": shown}, status=problem.status)

    async def show(self, request: web.Request) -> web.Response:
        """``GET /reply/{token}``: what is asked, and the form."""
        try:
            link, job, connector = await _asked(request)
        except Exception as exc:
            return self._refused(exc)
        asked = asked_view(request, link, job, connector)
        return self._render({"asked": asked, "done": None, "problem": None})

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /reply/{token}``: the form taken, or why not."""
        try:
            link, _, _ = await _asked(request)
            statement, upload = await read_reply(request, link)
            job = await request.app[COMMANDS].take_reply(link, statement, upload)
        except Exception as exc:
            return self._refused(exc)
        reply = job.connectors[link.connector].reply or {}
        return self._render({"asked": None, "done": reply, "problem": None})


def add_reply_routes(app: web.Application) -> None:
    """The reply page's routes (the API's are in the operation table)."""
    page = ReplyPage()
    app.router.add_get(PAGE_PATH + "{token}", page.show)
    app.router.add_post(PAGE_PATH + "{token}", page.submit)


__all__ = [
    "API_PATH",
    "ReplyPage",
    "add_reply_routes",
    "asked_view",
    "get_reply",
    "post_reply",
    "read_reply",
]
