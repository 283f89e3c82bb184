"""Generic REST processors declared in configuration: the ``http`` connector.

:class:`HttpConnector` (type ``http``) speaks to a processor whose API is described
in TOML rather than in code::

    [connectors.tickets]
    type = "http"
    base_url = "https://api.example.com/v2"
    auth = { type = "bearer", token = "..." }    # or basic (username, password)
                                                 # or header (name, value)
    rate_limit = 5           # requests per second, client side (token bucket); 0 = off
    burst = 5                # requests the bucket allows at once (default: rate_limit)
    timeout = 30             # seconds per request, the whole answer included
    max_response_mib = 32    # the most one answer may weigh; a larger one is refused

    [[connectors.tickets.datasets]]
    name = "tickets"
    category = "contact"
    path = "/users/{id}/tickets"                 # {id}, {email}, {identities.KEY}
                                                 # (each value percent-encoded)
    params = { state = "all", from = "{since}" } # query parameters, templated the same way;
                                                 # {since} and {until}: an export's time range
    records = "/data/items"                      # JSON pointer (RFC 6901) or dotted path
    pagination = { style = "page", param = "page", size_param = "per_page", size = 100 }

    [connectors.tickets.erase]                   # removes the whole subject
    method = "DELETE"
    path = "/users/{id}"
    body = { reason = "gdpr", user = "{id}" }   # optional JSON body template
    success = [200, 202, 204]
    absent = [404]                               # statuses meaning "nothing held"

Identity: the variables the templates use are the connector's ``identifiers``
(``{id}`` → ``id``, ``{email}`` → ``email``, ``{identities.KEY}`` → ``KEY``). A
request for a subject without one that an operation's templates need raises
:class:`~connectors.errors.Unidentified` before anything is sent. Values are
percent-encoded into the path, and one that would make a dot segment (``.`` or
``..``) is sent as ``%2E``/``%2E%2E`` and never re-normalised on the way, so a
subject id cannot lead the request to another resource (RFC 3986 §5.2.4).

Time range: a dataset whose ``params`` use ``{since}`` or ``{until}`` is declared
``by_period``; an export asking for a range sends its bounds there (ISO 8601 in UTC,
``2026-11-01T00:00:00Z``; ``since`` included, ``until`` excluded, as the processor's
API is documented to read them), and leaves out a parameter whose bound is open.
A dataset asked for a bound none of its parameters takes (only ``{since}``, and an
``until`` asked) is sent no bound at all: it is exported whole, as are datasets without
``by_period``, and the archive's manifest says so. Erase and restrict endpoints take no
time range.

Pagination styles: ``none``; ``page`` (a page-number parameter, ``start`` at 1 by
default, optional ``size_param``/``size``; ends on an empty or short page);
``cursor`` (the next cursor read at ``next`` in the body and sent back as ``param``);
``link`` (the ``Link: <…>; rel="next"`` header, RFC 8288); ``next_url`` (the next
page's URL read at ``next`` in the body). Next-page URLs must stay on ``base_url``'s
origin, so credentials never travel to another host. A processor's paging is not
trusted to end: an export stops with a :class:`~connectors.errors.PermanentError` at
``max_pages`` pages (10,000 unless set in the ``pagination`` table), at a cursor or
next-page URL it was already given, and at a page that repeats the one before it
(a processor ignoring the page parameter). An export yields each page's records as
one batch (:class:`~connectors.items.Records`), as the processor sent them.

Erasure counts what each dataset holds first (one export pass), then calls the
erase endpoints; a repeat finds nothing and reports zero. Each deleting call is one
journaled step (:meth:`~connectors.base.Connector.before_commit` with the counts it
deletes, :meth:`~connectors.base.Connector.after_commit` once the processor answered
that it did, :meth:`~connectors.base.Connector.withdraw` when it answered that it held
nothing), so a receipt after a crash counts what was deleted. A dataset may carry its
own ``erase`` table (same keys) for a processor that deletes collection by
collection; the top-level ``erase`` removes the whole subject and is required
unless every dataset has its own. A dataset named in the job's retention rules is
kept and reported with its legal basis: datasets with their own endpoint are still
erased around it, but the subject-wide endpoint is then not called (it would take
the kept data too), and the optional ``restrict`` endpoint (same keys) blocks the
subject.

Requests go through :class:`~connectors.httpclient.HttpClient`, which spaces them
(``rate_limit``, ``burst``), bounds each answer (``max_response_mib``) and its time
(``timeout``), follows no redirect, and classifies every failure once: rate limited
with the ``Retry-After`` delay, transient, or permanent naming the status. Error
messages name the operation and the path *template* (``GET /users/{id}/tickets``),
never the subject's values; the processor's answer goes to the error's ``detail``.
Credentials are read by :class:`~connectors.options.Options` into
:class:`~connectors.options.Secret` and scrubbed from every message; they are
never part of a ``repr``.

References: RFC 8288 (Link header), RFC 6901 (JSON Pointer), RFC 6750 (bearer
tokens), RFC 7617 (basic auth), RFC 3986 (percent-encoding, dot segments).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urljoin

from connectors.base import Connector
from connectors.errors import PermanentError, Unidentified
from connectors.httpclient import HttpClient, HttpResponse
from connectors.items import Batch, Dataset, Period, Records, Subject
from connectors.options import Options, Secret
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule


def _parse_path(text: str) -> tuple[str, ...]:
    """A JSON pointer (``/data/items``) or dotted path (``data.items``) as its keys."""
    if text in ("", "/", "."):
        return ()
    if text.startswith("/"):
        return tuple(part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/"))
    return tuple(text.split("."))


_MISSING = object()


def _resolve_path(document: Any, keys: Sequence[str]) -> Any:
    """The value at ``keys`` in ``document``, or the ``_MISSING`` marker."""
    value = document
    for key in keys:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


_VARIABLE = re.compile(r"\{([^{}]*)\}")
#: Variables of an export's time range, allowed in a dataset's ``params`` only.
PERIOD_VARIABLES = frozenset({"since", "until"})


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (for messages that must not show it)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "value"


def _subject_values(subject: Subject) -> dict[str, str]:
    """The template variables a subject offers: ``id``, ``email``, ``identities.KEY``."""
    values = {f"identities.{key}": value for key, value in subject.identities.items() if value}
    if subject.email:
        values["email"] = subject.email
    if subject.id:
        values["id"] = subject.id
    return values


def _period_values(period: Period) -> dict[str, str]:
    """``since`` and ``until`` as templates receive them: ISO 8601 in UTC, ``Z``-suffixed;
    an open end has no value (the parameter using it is not sent)."""
    bounds = (("since", period.since), ("until", period.until))
    return {
        name: moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, moment in bounds
        if moment is not None
    }


def _identifier_of(variable: str) -> str:
    """The identifier a template variable stands for: ``identities.KEY`` is ``KEY``."""
    return variable.removeprefix("identities.")


@dataclass(frozen=True, slots=True)
class _Template:
    text: str

    @classmethod
    def checked(cls, text: str, where: str, options: Options, *, period: bool = False) -> _Template:
        """The template, its variables checked; ``period`` allows ``{since}`` and ``{until}``."""
        for name in _VARIABLE.findall(text):
            if period and name in PERIOD_VARIABLES:
                continue
            if name not in ("id", "email") and not re.fullmatch(r"identities\.[\w.-]+", name):
                known = "id, email, identities.KEY" + (", since, until" if period else "")
                raise options.error(where, f"uses unknown variable {{{name}}} ({known})")
        return cls(text)

    @property
    def variables(self) -> frozenset[str]:
        """The subject's variables the template uses (``id``, ``email``, ``identities.KEY``)."""
        return frozenset(_VARIABLE.findall(self.text)) - PERIOD_VARIABLES

    @property
    def period_variables(self) -> frozenset[str]:
        """The time range's variables it uses (``since``, ``until``)."""
        return frozenset(_VARIABLE.findall(self.text)) & PERIOD_VARIABLES

    def render(self, values: Mapping[str, str], connector: str, *, in_path: bool) -> str:
        """The text with the subject's values; in a path, percent-encoded segment by segment.

        A segment that a value turns into ``.`` or ``..`` is encoded as ``%2E``/``%2E%2E``:
        a dot segment would move the request to another resource. A missing value
        raises :class:`Unidentified`.
        """

        def substitute(match: re.Match[str]) -> str:
            value = values.get(match.group(1))
            if value is None:
                raise Unidentified(connector, (_identifier_of(match.group(1)),))
            return quote(value, safe="") if in_path else value

        if not in_path:
            return _VARIABLE.sub(substitute, self.text)
        segments = []
        for segment in self.text.split("/"):
            rendered = _VARIABLE.sub(substitute, segment)
            if rendered in (".", "..") and rendered != segment:
                rendered = "%2E" * len(rendered)
            segments.append(rendered)
        return "/".join(segments)


def _body_template(value: Any, where: str, options: Options) -> Any:
    """Check every string in a JSON body template."""
    if isinstance(value, str):
        return _Template.checked(value, where, options)
    if isinstance(value, Mapping):
        return {key: _body_template(item, f"{where}.{key}", options) for key, item in value.items()}
    if isinstance(value, list):
        return [_body_template(item, f"{where}[{i}]", options) for i, item in enumerate(value)]
    return value


def _body_templates(value: Any) -> Iterator[_Template]:
    """Every template in a checked JSON body template."""
    if isinstance(value, _Template):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _body_templates(item)
    elif isinstance(value, list):
        for item in value:
            yield from _body_templates(item)


def _render_body(value: Any, values: Mapping[str, str], connector: str) -> Any:
    if isinstance(value, _Template):
        return value.render(values, connector, in_path=False)
    if isinstance(value, dict):
        return {key: _render_body(item, values, connector) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_body(item, values, connector) for item in value]
    return value


_PAGINATION_STYLES = ("none", "page", "cursor", "link", "next_url")


@dataclass(frozen=True, slots=True)
class _Pagination:
    style: str = "none"
    param: str = ""
    start: int = 1
    size_param: str | None = None
    size: int | None = None
    next: tuple[str, ...] = ()
    max_pages: int = 10_000


@dataclass(frozen=True, slots=True)
class _DatasetSpec:
    dataset: Dataset
    path: _Template
    params: tuple[tuple[str, _Template], ...]
    records: tuple[str, ...]
    records_text: str
    pagination: _Pagination
    absent: frozenset[int]
    erase: _Endpoint | None

    @property
    def variables(self) -> frozenset[str]:
        """The variables an export of this dataset fills in."""
        return _variables(self.path, *(template for _, template in self.params))


@dataclass(frozen=True, slots=True)
class _Endpoint:
    method: str
    path: _Template
    params: tuple[tuple[str, _Template], ...]
    body: Any
    success: frozenset[int]
    absent: frozenset[int]

    @property
    def variables(self) -> frozenset[str]:
        """The variables a call of this endpoint fills in."""
        return _variables(
            self.path, *(template for _, template in self.params), *_body_templates(self.body)
        )


def _variables(*templates: _Template) -> frozenset[str]:
    variables: frozenset[str] = frozenset()
    return variables.union(*(template.variables for template in templates))


@dataclass(frozen=True, slots=True)
class _Auth:
    header: str
    value: Secret
    secrets: tuple[Secret, ...]


class HttpConnector(Connector):
    """A REST processor described in configuration (see the module docstring for the keys).

    Options: ``base_url``, ``datasets`` (list of tables), ``erase`` (table),
    optional ``restrict`` (table), ``auth`` (table), ``headers``, ``rate_limit``,
    ``burst``, ``timeout``, ``max_response_mib`` and ``check_path`` (a GET that
    proves the API answers; it names no subject, so it takes no variables).
    ``identifiers`` are the variables the templates use.
    """

    journals_commits: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        base_url: object = None,
        datasets: object = None,
        erase: object = None,
        restrict: object = None,
        auth: object = None,
        headers: object = None,
        rate_limit: object = 5.0,
        burst: object = None,
        timeout: object = 30.0,
        max_response_mib: object = 32,
        check_path: object = None,
        **unknown: Any,
    ) -> None:
        super().__init__(name, **unknown)
        options = Options(name)
        url = options.url("base_url", base_url)
        self._auth = self._read_auth(options, auth)
        static_headers = {
            key: options.text(f"headers.{key}", value)
            for key, value in options.table("headers", headers or {}).items()
        }
        if self._auth is not None:
            static_headers.pop(self._auth.header, None)
        if not isinstance(datasets, list | tuple) or not datasets:
            raise options.error("datasets", "must be a list of one or more dataset tables")
        self._specs = tuple(
            self._read_dataset(options, f"datasets[{i}]", table) for i, table in enumerate(datasets)
        )
        names = [spec.dataset.name for spec in self._specs]
        if len(set(names)) != len(names):
            raise options.error("datasets", "must have distinct names")
        if erase is None and any(spec.erase is None for spec in self._specs):
            raise options.error(
                "erase", "is required unless every dataset has an erase table of its own"
            )
        self._erase = None if erase is None else self._read_endpoint(options, "erase", erase)
        self._restrict = (
            None if restrict is None else self._read_endpoint(options, "restrict", restrict)
        )
        self._check_path = None if check_path is None else options.text("check_path", check_path)
        if self._check_path is not None and _VARIABLE.search(self._check_path):
            raise options.error("check_path", "names no subject: it takes no {variables}")
        erasing = [e for e in (self._erase, *(spec.erase for spec in self._specs)) if e]
        self._export_needs: frozenset[str] = frozenset().union(
            *(spec.variables for spec in self._specs)
        )
        self._erase_needs = self._export_needs.union(*(e.variables for e in erasing))
        self._restrict_needs = self._export_needs | (
            frozenset() if self._restrict is None else self._restrict.variables
        )
        variables = self._erase_needs | self._restrict_needs
        if not variables:
            raise options.error(
                "datasets", "name no subject: use {id}, {email} or {identities.KEY} in a template"
            )
        self.identifiers = frozenset(_identifier_of(variable) for variable in variables)
        self.datasets = tuple(spec.dataset for spec in self._specs)  # type: ignore[misc]
        self.categories = frozenset(d.category for d in self.datasets)  # type: ignore[misc]
        self.client = HttpClient(
            name,
            url,
            secrets=() if self._auth is None else self._auth.secrets,
            headers=static_headers,
            rate_limit=options.number("rate_limit", rate_limit),
            burst=None if burst is None else options.positive("burst", burst),
            timeout=options.positive("timeout", timeout),
            max_response_bytes=options.mebibytes("max_response_mib", max_response_mib),
        )

    def __repr__(self) -> str:
        return f"HttpConnector(name={self.name!r}, base_url={self.client.base_url!r})"

    @staticmethod
    def _read_auth(options: Options, value: object) -> _Auth | None:
        if value is None:
            return None
        table = options.table("auth", value)
        kind = table.get("type")
        if kind == "bearer":
            options.unknown("auth", table, ("type", "token"))
            token = options.secret("auth.token", table.get("token"))
            return _Auth("Authorization", Secret(f"Bearer {token.reveal()}"), (token,))
        if kind == "basic":
            options.unknown("auth", table, ("type", "username", "password"))
            username = options.text("auth.username", table.get("username"))
            password = options.secret("auth.password", table.get("password"))
            if ":" in username:
                raise options.error("auth.username", "must not contain a colon (RFC 7617)")
            pair = f"{username}:{password.reveal()}".encode()
            encoded = Secret(f"Basic {base64.b64encode(pair).decode('ascii')}")
            return _Auth("Authorization", encoded, (password, encoded))
        if kind == "header":
            options.unknown("auth", table, ("type", "name", "value"))
            header = options.text("auth.name", table.get("name"))
            secret = options.secret("auth.value", table.get("value"))
            return _Auth(header, secret, (secret,))
        raise options.error("auth.type", "must be bearer, basic or header")

    @staticmethod
    def _read_params(
        options: Options, where: str, value: object, *, period: bool = False
    ) -> tuple[tuple[str, _Template], ...]:
        table = options.table(where, value or {})
        return tuple(
            (
                key,
                _Template.checked(
                    options.identifier(f"{where}.{key}", item),
                    f"{where}.{key}",
                    options,
                    period=period,
                ),
            )
            for key, item in table.items()
        )

    def _read_dataset(self, options: Options, where: str, value: object) -> _DatasetSpec:
        table = options.table(where, value)
        options.unknown(
            where,
            table,
            (
                "name",
                "category",
                "description",
                "fields",
                "path",
                "params",
                "records",
                "pagination",
                "absent",
                "erase",
            ),
        )
        params = self._read_params(options, f"{where}.params", table.get("params"), period=True)
        try:
            dataset = Dataset(
                name=options.text(f"{where}.name", table.get("name")),
                category=options.text(f"{where}.category", table.get("category")),
                description=str(table.get("description", "")),
                fields=options.text_list(f"{where}.fields", table.get("fields", [])),
                by_period=any(template.period_variables for _, template in params),
                period_bounds=frozenset().union(*(t.period_variables for _, t in params)),
            )
        except ValueError as exc:  # the name: it becomes a path in the archive
            raise options.error(where, f"has a bad name: {exc}") from None
        records_text = table.get("records", "")
        if not isinstance(records_text, str):
            raise options.error(f"{where}.records", "must be a JSON pointer or dotted path")
        return _DatasetSpec(
            dataset=dataset,
            path=_Template.checked(
                options.text(f"{where}.path", table.get("path")), f"{where}.path", options
            ),
            params=params,
            records=_parse_path(records_text),
            records_text=records_text or "/",
            pagination=self._read_pagination(
                options, f"{where}.pagination", table.get("pagination")
            ),
            absent=options.statuses(f"{where}.absent", table.get("absent", [404])),
            erase=None
            if table.get("erase") is None
            else self._read_endpoint(options, f"{where}.erase", table["erase"]),
        )

    @staticmethod
    def _read_pagination(options: Options, where: str, value: object) -> _Pagination:
        if value is None:
            return _Pagination()
        table = options.table(where, value)
        style = table.get("style")
        if style not in _PAGINATION_STYLES:
            raise options.error(f"{where}.style", f"must be one of {', '.join(_PAGINATION_STYLES)}")
        max_pages = options.whole(f"{where}.max_pages", table.get("max_pages", 10_000))
        if style == "none" or style == "link":
            options.unknown(where, table, ("style", "max_pages"))
            return _Pagination(style=style, max_pages=max_pages)
        if style == "page":
            options.unknown(
                where, table, ("style", "param", "start", "size_param", "size", "max_pages")
            )
            size_param = options.optional_text(f"{where}.size_param", table.get("size_param"))
            size = table.get("size")
            return _Pagination(
                style=style,
                param=options.text(f"{where}.param", table.get("param", "page")),
                start=options.whole(f"{where}.start", table.get("start", 1), minimum=0),
                size_param=size_param,
                size=None if size is None else options.whole(f"{where}.size", size),
                max_pages=max_pages,
            )
        known = (
            ("style", "param", "next", "max_pages")
            if style == "cursor"
            else ("style", "next", "max_pages")
        )
        options.unknown(where, table, known)
        return _Pagination(
            style=style,
            param=options.text(f"{where}.param", table.get("param", "cursor"))
            if style == "cursor"
            else "",
            next=_parse_path(options.text(f"{where}.next", table.get("next"))),
            max_pages=max_pages,
        )

    def _read_endpoint(self, options: Options, where: str, value: object) -> _Endpoint:
        table = options.table(where, value)
        options.unknown(where, table, ("method", "path", "params", "body", "success", "absent"))
        method = options.text(f"{where}.method", table.get("method", "DELETE")).upper()
        if method not in {"DELETE", "POST", "PUT", "PATCH", "GET"}:
            raise options.error(f"{where}.method", "must be DELETE, POST, PUT, PATCH or GET")
        return _Endpoint(
            method=method,
            path=_Template.checked(
                options.text(f"{where}.path", table.get("path")), f"{where}.path", options
            ),
            params=self._read_params(options, f"{where}.params", table.get("params")),
            body=None
            if table.get("body") is None
            else _body_template(table["body"], f"{where}.body", options),
            success=options.statuses(f"{where}.success", table.get("success", [200, 202, 204])),
            absent=options.statuses(f"{where}.absent", table.get("absent", [404])),
        )

    async def open(self) -> None:
        """Create the shared HTTP session."""
        await self.client.open()

    async def close(self) -> None:
        """Close the shared HTTP session."""
        await self.client.close()

    def _auth_headers(self) -> dict[str, str]:
        return {} if self._auth is None else {self._auth.header: self._auth.value.reveal()}

    async def check(self) -> None:
        """GET ``check_path`` when configured; any classified error says what is wrong."""
        if self._check_path is not None:
            await self.client.request(
                "GET",
                self._check_path,
                operation="check",
                headers=self._auth_headers(),
                path_template=self._check_path,
            )

    def _values(self, subject: Subject, needs: frozenset[str]) -> dict[str, str]:
        """The subject's template values, once every variable in ``needs`` is known.

        Checked before the first request, so that a subject lacking one is never half
        exported or half erased.
        """
        values = _subject_values(subject)
        missing = sorted(needs - values.keys())
        if missing:
            raise Unidentified(self.name, (_identifier_of(missing[0]),))
        return values

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        """Every record of every configured dataset, each page's records as one batch."""
        values = self._values(subject, self._export_needs)
        period = subject.period
        for spec in self._specs:
            asked = values
            if period is not None and spec.dataset.applies(period):
                asked = {**values, **_period_values(period)}
            async for rows in self._pages(spec, asked):
                if rows:
                    yield Records(spec.dataset.name, rows)

    async def _pages(
        self, spec: _DatasetSpec, values: Mapping[str, str]
    ) -> AsyncIterator[list[Mapping[str, Any]]]:
        paging = spec.pagination
        where = f"{self.name}: export {spec.dataset.name}"
        target = spec.path.render(values, self.name, in_path=True)
        params = {
            key: t.render(values, self.name, in_path=False)
            for key, t in spec.params
            if t.period_variables <= values.keys()  # an open end of the range: not sent
        }
        page_number, cursor = paging.start, None
        followed: set[bytes] = set()  # digests of the cursors and next-page URLs given so far
        previous: bytes | None = None  # the digest of the last page holding records
        for page in range(1, paging.max_pages + 1):
            query = dict(params)
            if paging.style == "page":
                query[paging.param] = str(page_number)
                if paging.size_param and paging.size:
                    query[paging.size_param] = str(paging.size)
            elif paging.style == "cursor" and cursor is not None:
                query[paging.param] = cursor
            response = await self.client.request(
                "GET",
                target,
                operation=f"export {spec.dataset.name} page {page}",
                params=query,
                headers=self._auth_headers(),
                accept=spec.absent,
                path_template=spec.path.text,
            )
            if response.status in spec.absent:
                return
            document = response.json()
            rows = self._rows(spec, document, page)
            digest = hashlib.sha256(response.body).digest() if rows else None
            if digest is not None and digest == previous:
                raise PermanentError(
                    f"{where}: page {page} repeats page {page - 1} word for word: the "
                    "processor's paging does not advance"
                )
            previous = digest
            yield rows
            if paging.style == "none":
                return
            if paging.style == "page":
                if not rows or (paging.size is not None and len(rows) < paging.size):
                    return
                page_number += 1
                continue
            following = self._next(spec, response, document)
            if following is None:
                return
            if paging.style != "cursor":
                followed.add(hashlib.sha256(response.url.encode()).digest())
                following = urljoin(response.url, following)
            seen = hashlib.sha256(following.encode()).digest()
            if seen in followed:
                what = "cursor" if paging.style == "cursor" else "next-page URL"
                raise PermanentError(
                    f"{where}: page {page} gives a {what} already followed: the processor's "
                    "paging goes round in a circle"
                )
            followed.add(seen)
            if paging.style == "cursor":
                cursor = following
            else:
                target, params = following, {}
        raise PermanentError(
            f"{where}: more than {paging.max_pages} pages (pagination.max_pages): the "
            "processor's paging does not end"
        )

    def _next(self, spec: _DatasetSpec, response: HttpResponse, document: Any) -> str | None:
        if spec.pagination.style == "link":
            return response.next_link
        value = _resolve_path(document, spec.pagination.next)
        if value is _MISSING or value is None or value == "" or isinstance(value, bool):
            return None
        return str(value)

    def _rows(self, spec: _DatasetSpec, document: Any, page: int) -> list[Mapping[str, Any]]:
        where = f"{self.name}: export {spec.dataset.name} page {page}"
        found = _resolve_path(document, spec.records)
        if found is _MISSING:
            raise PermanentError(f"{where}: no records at {spec.records_text!r}")
        if found is None:
            return []
        if not isinstance(found, list):
            raise PermanentError(f"{where}: {spec.records_text!r} is not a list")
        for row in found:
            if not isinstance(row, dict):
                raise PermanentError(
                    f"{where}: records must be JSON objects, got a JSON {_json_type(row)}",
                    detail=f"{row!r:.200}",
                )
        return found

    async def _counts(self, values: Mapping[str, str]) -> dict[str, int]:
        counts = {}
        for spec in self._specs:
            counts[spec.dataset.name] = 0
            async for rows in self._pages(spec, values):
                counts[spec.dataset.name] += len(rows)
        return counts

    async def _call(self, endpoint: _Endpoint, values: Mapping[str, str], operation: str) -> bool:
        """Call ``endpoint`` for the subject; False when the processor says it holds nothing."""
        response = await self.client.request(
            endpoint.method,
            endpoint.path.render(values, self.name, in_path=True),
            operation=operation,
            params={key: t.render(values, self.name, in_path=False) for key, t in endpoint.params},
            json=_render_body(endpoint.body, values, self.name),
            headers=self._auth_headers(),
            accept=endpoint.success | endpoint.absent,
            path_template=endpoint.path.text,
        )
        if response.status in endpoint.absent:
            return False
        if response.status not in endpoint.success:
            raise PermanentError(
                f"{self.name}: {operation}: HTTP {response.status} is not one of the "
                f"configured success statuses {sorted(endpoint.success)}"
            )
        return True

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Count what each dataset holds, then call the erase endpoints (see the module doc)."""
        blocking = any(spec.dataset.name in retention for spec in self._specs)
        values = self._values(
            subject, self._erase_needs | (self._restrict_needs if blocking else frozenset())
        )
        counts = await self._counts(values)
        kept = [name for name, count in counts.items() if count and name in retention]
        subject_wide = None if kept else self._erase
        deleted: dict[str, int] = {}
        stuck: list[str] = []
        for spec in self._specs:
            name = spec.dataset.name
            if name in kept:
                continue
            if spec.erase is None and subject_wide is None:
                deleted[name] = 0
                if counts[name]:
                    stuck.append(name)
                continue
            deleted[name] = counts[name]
        if not dry_run:
            await self._carry_out(values, kept, subject_wide, deleted)
        entries = tuple(
            self._retained(name, counts[name], retention[name])
            if name in kept
            else DatasetErasure(name, deleted=deleted[name])
            for name in counts
        )
        return ErasureReport(entries, note=self._erasure_note(kept, stuck, dry_run=dry_run))

    async def _carry_out(
        self,
        values: Mapping[str, str],
        kept: Sequence[str],
        subject_wide: _Endpoint | None,
        deleted: dict[str, int],
    ) -> None:
        """Call the erase (and restrict) endpoints; zero ``deleted`` where nothing was held."""
        for spec in self._specs:
            name = spec.dataset.name
            if spec.erase is None or name in kept:
                continue
            if not await self._erase_step(
                spec.erase, values, f"erase {name}", {name: deleted[name]}
            ):
                deleted[name] = 0
        if subject_wide is not None:  # then nothing is kept: every dataset is in ``deleted``
            wide = {s.dataset.name: deleted[s.dataset.name] for s in self._specs if not s.erase}
            if not await self._erase_step(subject_wide, values, "erase", wide):
                deleted.update(dict.fromkeys(wide, 0))
        if kept and self._restrict is not None:
            await self._call(self._restrict, values, "restrict")

    async def _erase_step(
        self,
        endpoint: _Endpoint,
        values: Mapping[str, str],
        operation: str,
        planned: Mapping[str, int],
    ) -> bool:
        """One deleting call, journaled: its counts planned before it is sent, then marked
        committed once the processor answered that it deleted, or withdrawn when it
        answered that it held nothing (the report counts zero); :meth:`_call`'s answer."""
        entries = tuple(DatasetErasure(name, deleted=n) for name, n in planned.items() if n)
        if entries:
            await self.before_commit(ErasureReport(entries))
        held = await self._call(endpoint, values, operation)
        if entries:
            await (self.after_commit() if held else self.withdraw())
        return held

    @staticmethod
    def _retained(name: str, count: int, rule: RetentionRule) -> DatasetErasure:
        return DatasetErasure(
            name,
            retained=count,
            legal_basis=rule.legal_basis,
            retained_until=datetime.now(UTC) + rule.duration,
        )

    def _erasure_note(
        self, kept: Sequence[str], stuck: Sequence[str], *, dry_run: bool
    ) -> str | None:
        notes = ["dry run: nothing was erased"] if dry_run else []
        if stuck:
            notes.append(
                f"{', '.join(stuck)} can only be erased by the subject-wide endpoint, which "
                "would remove the kept data too: not erased"
            )
        if kept and self._restrict is None:
            notes.append(f"{', '.join(kept)} kept; no restrict endpoint is configured to block it")
        elif kept:
            verb = "would be" if dry_run else "was"
            notes.append(f"{', '.join(kept)} kept; the subject {verb} restricted to block it")
        return "; ".join(notes) or None

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Call the restrict endpoint when configured, reporting what each dataset holds."""
        values = self._values(subject, self._restrict_needs)
        if self._restrict is None:
            return await super().restrict(subject, dry_run=dry_run)
        counts = await self._counts(values)
        if not dry_run:
            await self._call(self._restrict, values, "restrict")
        return RestrictionReport(supported=True, restricted=counts)
