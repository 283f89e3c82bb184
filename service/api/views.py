"""How the API answers: JSON bodies, a job as clients see it, a job's live timeline.

:func:`job_view` is the one shape of a job the API shows (``models.JobOut``);
:func:`stream_events` serves a job's timeline as server-sent events, and the
dashboard serves its own with it.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from jobs.model import (
    ConnectorRun,
    Job,
    JobKind,
    JobStatus,
    deadline_standing,
    utcnow,
)
from service.appkeys import RESOURCES


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


#: A job's fields its view does not show as stored: shown in a form of their own
#: (``connectors``, ``result``, ``identity``, ``information``), as a link (``receipt``),
#: or never (``archive_password``; ``new_values`` but to staff deciding).
_JOB_APART = frozenset(
    {
        "connectors",
        "result",
        "receipt",
        "identity",
        "archive_password",
        "new_values",
        "information",
    }
)
#: A run's fields no view shows: storage keys and staged parts.
_RUN_HIDDEN_FROM_ADMINS = frozenset({"staged_key", "parts"})
#: And its processor's own words (``error_detail``, which may hold personal data) too.
_RUN_HIDDEN = _RUN_HIDDEN_FROM_ADMINS | {"error_detail"}


def _hidden_run_fields(*, admin: bool) -> frozenset[str]:
    """A run's fields its view leaves out."""
    return _RUN_HIDDEN_FROM_ADMINS if admin else _RUN_HIDDEN


def job_view(job: Job, *, admin: bool = False, deciding: bool = False) -> dict[str, Any]:
    """A job as the API shows it (``models.JobOut``): no storage keys or staged parts,
    no identifier values (only their kinds, and how each was verified, or offered), no secrets,
    no rectification's new values — but to ``deciding`` staff (``GET /v1/jobs/{id}``) while
    the rectification waits for their decision, as ``new_values``.

    A failed run's ``error_detail`` (the processor's own words, which may hold
    personal data) is shown to admins only."""
    base = f"/v1/jobs/{job.id}"
    # Python mode: orjson encodes the datetimes and enums, faster than pydantic's JSON mode.
    view = job.model_dump(exclude=set(_JOB_APART))
    view["deadline"] = job.deadline_state(utcnow())
    info = job.information
    view["information"] = (
        {**info.model_dump(exclude={"offered"}), "offered": sorted(info.offered)} if info else None
    )
    view["identity"] = job.identity.statement()
    if (
        deciding
        and job.kind is JobKind.RECTIFICATION
        and job.status is JobStatus.AWAITING_CONFIRMATION
        and len(job.new_values) == len(job.rectification_options.changes)
    ):
        view["new_values"] = [
            {**ref.model_dump(), "value": value}
            for ref, value in zip(job.rectification_options.changes, job.new_values, strict=True)
        ]
    hidden = set(_hidden_run_fields(admin=admin))  # pydantic takes a set
    view["connectors"] = {
        name: run.model_dump(exclude=hidden) for name, run in job.connectors.items()
    }
    view["result"] = job.result.model_dump(exclude={"key"}) if job.result else None
    view["links"] = {
        "self": base,
        "events": f"{base}/events",
        "download": f"{base}/download"
        if job.result is not None and job.kind is not JobKind.DISCLOSURE
        else None,
        "receipt": f"{base}/receipt" if job.receipt is not None else None,
    }
    return view


class _Unlike(Exception):
    """A stored record not in the shape this version writes: read it through the model."""


Convert = Callable[[Any], Any]


def _as_is(value: Any) -> Any:
    return value


def _moment(value: Any) -> Any:
    """A UTC datetime as the model's JSON stores it (``…T…Z``, to the second or the
    microsecond), as orjson writes the datetime itself; any other is the model's to read."""
    if type(value) is not str or len(value) not in (20, 27) or value[10] != "T":
        raise _Unlike
    if value[-1] != "Z":
        raise _Unlike
    return value[:-1] + "+00:00"


def _unlike(value: Any) -> Any:
    raise _Unlike


def _nullable(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


def _each(convert: Convert) -> Convert:
    return lambda value: [convert(item) for item in value]


def _each_value(convert: Convert) -> Convert:
    return lambda value: {key: convert(item) for key, item in value.items()}


def _plain(annotation: Any) -> bool:
    """Whether a value of this type reads back from JSON as the model would dump it."""
    return annotation in (str, int, bool, Any) or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    )


def _converter(annotation: Any, discriminator: Any = None) -> Convert:
    """How a stored value of ``annotation`` becomes what ``model_dump`` then orjson would
    write; :func:`_unlike` for a type this does not know (the model reads those)."""
    if _plain(annotation):
        return _as_is
    if annotation is datetime:
        return _moment
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_converter(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return _as_is
    if origin in (list, tuple, set, frozenset, dict):
        converts = [_converter(arg) for arg in args if arg is not Ellipsis]
        if all(convert is _as_is for convert in converts):
            return _as_is
        if origin is list and len(converts) == 1:
            return _each(converts[0])
        if origin is dict and converts[0] is _as_is:
            return _each_value(converts[1])
        return _unlike
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        converts = [_converter(arg) for arg in options]
        if all(convert is _as_is for convert in converts):
            return _as_is
        if len(converts) == 1:
            return _nullable(converts[0]) if len(options) < len(args) else converts[0]
        if isinstance(discriminator, str) and len(options) == len(args):
            return _by_kind(options, discriminator)
    return _unlike


def _by_kind(models: list[Any], field: str) -> Convert:
    """A discriminated union: each model by the literal values of its ``field``."""
    by_value: dict[Any, Convert] = {}
    for model in models:
        for value in typing.get_args(model.model_fields[field].annotation):
            by_value[value] = _model_converter(model)
    return lambda value: by_value.get(value.get(field), _unlike)(value)


@cache
def _model_converter(model: type[BaseModel], without: frozenset[str] = frozenset()) -> Convert:
    """A stored record of ``model`` (every field but those ``without``, in the model's
    order, as this version writes it) in place as ``model_dump`` would give it;
    :class:`_Unlike` for another."""
    fields = {n: f for n, f in model.model_fields.items() if n not in without}
    names = tuple(fields)
    converts: list[tuple[str, Convert]] = []
    for name, field in fields.items():
        field_convert = _converter(field.annotation, field.discriminator)
        if field_convert is not _as_is:
            converts.append((name, field_convert))

    def convert_record(value: Any) -> Any:
        if type(value) is not dict or tuple(value) != names:
            raise _Unlike
        for name, convert in converts:
            value[name] = convert(value[name])
        return value

    return convert_record


#: What a job's stored ``core`` leaves out: its runs, stored one field each.
_STORED_APART = frozenset({"connectors"})


def record_view(
    record: Mapping[bytes, bytes], *, admin: bool = False, staff: bool = False
) -> dict[str, Any] | None:
    """:func:`job_view` of the job stored as ``record`` (:meth:`jobs.store.JobStore.record`),
    read from its JSON without building the model: the same answer, byte for byte.

    ``None`` when the record needs the model to be read: one stored by an earlier version
    (a field missing, or another shape), a clock stopped for the subject's information,
    or a rectification shown to ``staff`` (who may be the ones deciding it).
    """
    try:
        core: dict[str, Any] = _model_converter(Job, _STORED_APART)(orjson.loads(record[b"core"]))
        runs = {
            key[4:].decode(): _model_converter(ConnectorRun)(orjson.loads(value))
            for key, value in record.items()
            if key.startswith(b"run:")
        }
        status, kind = JobStatus(core["status"]), JobKind(core["kind"])
    except (_Unlike, ValueError, KeyError, AttributeError, TypeError):
        return None
    if status is JobStatus.AWAITING_INFORMATION or (staff and kind is JobKind.RECTIFICATION):
        return None
    base = f"/v1/jobs/{core['id']}"
    # The record is this call's own: the view is made of it in place, its hidden parts
    # taken out and the view's own put at the end, in job_view's order.
    apart = {name: core.pop(name) for name in _JOB_APART - _STORED_APART}
    view, info, identity = core, apart["information"], apart["identity"]
    result, receipt = apart["result"], apart["receipt"]
    view["deadline"] = (
        None
        if status.terminal
        else deadline_standing(
            datetime.fromisoformat(core["created_at"]),
            datetime.fromisoformat(core["due_at"]),
            utcnow(),
        )
    )
    if info is not None:
        info["offered"] = sorted(info.pop("offered"))
    view["information"] = info
    view["identity"] = [
        {key: entry[key] for key in ("identifiers", "source", "verified_by") if key in entry}
        for entry in identity["evidence"]
    ]
    hidden = _hidden_run_fields(admin=admin)
    for run in runs.values():
        for field in hidden:
            del run[field]
    view["connectors"] = runs
    if result is not None:
        del result["key"]
    view["result"] = result
    view["links"] = {
        "self": base,
        "events": f"{base}/events",
        "download": f"{base}/download"
        if result is not None and kind is not JobKind.DISCLOSURE
        else None,
        "receipt": f"{base}/receipt" if receipt is not None else None,
    }
    return view


def accepted(job: Job) -> web.Response:
    """202 with the job and its Location."""
    return json_response(job_view(job), status=202, headers={"Location": f"/v1/jobs/{job.id}"})


ENDING_STATUSES = {s.value for s in JobStatus if s.terminal}
KEEPALIVE_SECONDS = 15.0


async def stream_events(
    request: web.Request, job_id: str, after: str, *, named: bool = True
) -> web.StreamResponse:
    """Server-sent events: the timeline so far, then each new event until the job ends.

    Each is named by its type (``event: connector.started``); with ``named`` false each is
    a plain ``message`` (its type in its data), for a page that reacts to every one
    whatever its type, the types added later included.
    """
    store = request.app[RESOURCES].store
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    events = await store.events(job_id, after=after)
    try:
        while True:
            for event in events:
                body = orjson.dumps(event.to_dict()).decode()
                name = f"event: {event.type}\n" if named else ""
                await response.write(f"id: {event.id}\n{name}data: {body}\n\n".encode())
                after = event.id
            if any(e.data.get("status") in ENDING_STATUSES for e in events):
                break
            if not events and (await store.get(job_id)).status.terminal:
                break
            events = await store.wait_for_events(job_id, after, KEEPALIVE_SECONDS)
            if not events:
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        return response  # the client went away: nothing to finish, nothing to report
    await response.write_eof()
    return response


__all__ = ["stream_events"]
