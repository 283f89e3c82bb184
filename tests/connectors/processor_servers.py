"""Local stand-ins for the processors' APIs, each an aiohttp app on 127.0.0.1.

Each fake speaks its processor's documented requests and answers (the sources are
cited in the connector modules), keeps its state in memory, refuses requests
without the right credentials or with malformed bodies the way the real API does,
and logs every request it sees. :meth:`FakeProcessor.fail_next` makes the next
requests answer with a canned status (429 with ``Retry-After``, 5xx, ...) and
:meth:`FakeProcessor.hang_next` makes one never answer, so timeouts are tested
without waiting on luck.

Every fake can also turn hostile for its next request, the way a compromised or
broken processor would: :meth:`FakeProcessor.stream_next` streams a huge body (and
counts what it managed to send before the client hung up),
:meth:`FakeProcessor.gzip_bomb_next` a small gzip body that inflates to a huge one,
:meth:`FakeProcessor.trickle_next` a body that never ends, a byte at a time, and
:meth:`FakeProcessor.redirect_next` a redirect. :class:`Bystander` is another host,
logging whatever reaches it; :class:`FakeS3Listing` an S3 bucket whose listing is
what a test makes it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeClock:
    """A clock that moves only when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` and let other tasks run."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Seen:
    """One request as the fake received it; ``raw_path`` as sent, percent-escapes kept."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    at: float
    raw_path: str = ""


@dataclass
class Fault:
    """A canned answer served instead of the real handler's (``respond`` when given)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    respond: Handler | None = None
    method: str | None = None
    """Only for a request of this method (any when None); others pass it by."""


TRICKLE_INTERVAL = 0.02
"""Seconds between two bytes of a trickling answer: the processor's pace, not a test's wait."""


class FakeProcessor(ABC):
    """What every fake shares: the request log, injected faults, the app."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or (lambda: 0.0)
        self.requests: list[Seen] = []
        self.faults: list[Fault] = []
        self.release = asyncio.Event()
        self.streamed: list[int] = []  # bytes each streamed answer got out before it ended
        self.trickled = 0  # bytes trickled so far
        self.after: list[tuple[str, str, Callable[[], None]]] = []

    def fail_next(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        times: int = 1,
        method: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (of ``method``, when given) with ``status``
        (JSON ``body`` when given)."""
        payload = b"" if body is None else web.json_response(body).body
        assert isinstance(payload, bytes)
        extra = {"Content-Type": "application/json"} if body is not None else {}
        for _ in range(times):
            self.faults.append(Fault(status, {**extra, **(headers or {})}, payload, method=method))

    def after_next(self, method: str, path_end: str, action: Callable[[], None]) -> None:
        """Run ``action`` once the next ``method`` request whose path ends with ``path_end``
        was handled, before its answer is sent (e.g. kill the client)."""
        self.after.append((method, path_end, action))

    def hang_next(self) -> None:
        """Never answer the next request (until the server shuts down)."""
        self.faults.append(Fault(504, hang=True))

    def stream_next(
        self,
        size: int,
        *,
        chunk: bytes = b" " * 65536,
        prefix: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next request 200 with ``prefix`` then ``size`` bytes of ``chunk`` repeated.

        The body is streamed as it is sent, never held whole; how much of it got out
        before the client hung up is appended to :attr:`streamed`.
        """

        async def respond(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                headers={"Content-Type": "application/json", **(headers or {})}
            )
            await response.prepare(request)
            sent = 0
            try:  # a client hanging up cancels this handler, or fails its next write
                await response.write(prefix)
                while sent < size:
                    piece = chunk[: size - sent]
                    await response.write(piece)
                    sent += len(piece)
                await response.write_eof()
            except ConnectionError:
                pass
            finally:
                self.streamed.append(sent)
            return response

        self.faults.append(Fault(200, respond=respond))

    def gzip_bomb_next(self, size: int) -> int:
        """Answer the next request with ``size`` zero bytes gzipped; returns the gzip's size."""
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        megabyte = b"\0" * (1 << 20)
        parts = [packer.compress(megabyte) for _ in range(size >> 20)]
        body = b"".join([*parts, packer.compress(b"\0" * (size % (1 << 20))), packer.flush()])
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        self.faults.append(Fault(200, headers, body))
        return len(body)

    def trickle_next(self) -> None:
        """Answer the next request 200 at once, then a byte every so often, never ending."""

        async def respond(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            try:
                while not self.release.is_set():
                    await response.write(b" ")
                    self.trickled += 1
                    await asyncio.sleep(TRICKLE_INTERVAL)
            except ConnectionError:
                pass
            return response

        self.faults.append(Fault(200, respond=respond))

    def redirect_next(self, location: str, status: int = 307) -> None:
        """Answer the next request with a redirect to ``location``."""
        self.faults.append(Fault(status, {"Location": location}))

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The processor's endpoints."""

    def app(self) -> web.Application:
        """A fresh application serving this fake's state."""
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self.routes())
        return app

    def seen(self, path_fragment: str = "") -> list[Seen]:
        """Requests whose path contains ``path_fragment``."""
        return [seen for seen in self.requests if path_fragment in seen.path]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
                self.clock(),
                request.rel_url.raw_path,
            )
        )
        fault = next((f for f in self.faults if f.method in {None, request.method}), None)
        if fault is not None:
            self.faults.remove(fault)
            if fault.respond is not None:
                return await fault.respond(request)
            if fault.hang:
                await self.release.wait()
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        response = await handler(request)
        hook = next(
            (h for h in self.after if h[0] == request.method and request.path.endswith(h[1])),
            None,
        )
        if hook is not None:
            self.after.remove(hook)
            hook[2]()
        return response


@asynccontextmanager
async def serve(fake: FakeProcessor) -> AsyncIterator[str]:
    """Run ``fake`` on 127.0.0.1 at a free port; yields its base URL."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        fake.release.set()
        await server.close()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ") if header.startswith("Bearer ") else None


# --- a generic REST processor, for the ``http`` connector -----------------------------


class FakeTicketsApi(FakeProcessor):
    """A helpdesk API with one paging style per collection.

    - ``GET /users/{id}/tickets?page=&per_page=`` → ``{"data": {"items": [...]}}`` (page numbers)
    - ``GET /events?email=&cursor=`` → ``{"events": [...], "meta": {"next_cursor": ...}}``
    - ``GET /users/{id}/notes?after=`` → a list, the next page in ``Link: <…>; rel="next"``
    - ``GET /feed/{id}?offset=`` → ``{"items": [...], "links": {"next": "/feed/…"}}``
    - ``DELETE /users/{id}`` → 204, or 404 when the user is unknown
    - ``DELETE /users/{id}/notes`` and ``DELETE /events?email=`` → 204: one collection
    - ``POST /users/{id}/restrict`` with ``{"reason": …}`` → 200
    """

    PAGE = 2

    def __init__(
        self, auth_header: str = "Authorization", auth_value: str = "", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.auth_header = auth_header
        self.auth_value = auth_value
        self.users: dict[str, dict[str, Any]] = {}
        self.restricted: set[str] = set()

    def add_user(
        self, user_id: str, email: str, *, tickets: int = 0, events: int = 0, notes: int = 0
    ) -> None:
        """A user holding that many tickets, events and notes."""
        self.users[user_id] = {
            "email": email,
            "tickets": [{"id": f"t{i}", "subject": f"ticket {i}"} for i in range(tickets)],
            "events": [{"id": f"e{i}", "kind": "login"} for i in range(events)],
            "notes": [{"id": f"n{i}", "text": f"note {i}"} for i in range(notes)],
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/users/{user_id}/tickets", self.tickets),
            web.get("/events", self.events),
            web.get("/users/{user_id}/notes", self.notes),
            web.get("/feed/{user_id}", self.feed),
            web.delete("/users/{user_id}", self.delete_user),
            web.delete("/users/{user_id}/notes", self.delete_notes),
            web.delete("/events", self.delete_events),
            web.post("/users/{user_id}/restrict", self.restrict),
            web.get("/health", self.health),
        ]

    def _authorise(self, request: web.Request) -> None:
        if request.headers.get(self.auth_header) != self.auth_value:
            raise web.HTTPUnauthorized(
                text='{"error": "invalid credentials"}', content_type="application/json"
            )

    def _user(self, request: web.Request) -> dict[str, Any]:
        self._authorise(request)
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            raise web.HTTPNotFound(
                text='{"error": "no such user"}', content_type="application/json"
            )
        return user

    async def health(self, request: web.Request) -> web.Response:
        self._authorise(request)
        return web.json_response({"ok": True})

    async def tickets(self, request: web.Request) -> web.Response:
        user = self._user(request)
        page = int(request.query.get("page", "1"))
        size = int(request.query.get("per_page", "10"))
        items = user["tickets"][(page - 1) * size : page * size]
        return web.json_response({"data": {"items": items}, "page": page})

    async def events(self, request: web.Request) -> web.Response:
        self._authorise(request)
        email = request.query.get("email")
        user = next((u for u in self.users.values() if u["email"] == email), None)
        events = [] if user is None else user["events"]
        start = int(request.query.get("cursor", "0"))
        following = start + self.PAGE
        next_cursor = str(following) if following < len(events) else None
        page = events[start:following]
        return web.json_response({"events": page, "meta": {"next_cursor": next_cursor}})

    async def notes(self, request: web.Request) -> web.Response:
        notes = self._user(request)["notes"]
        start = int(request.query.get("after", "0"))
        following = start + self.PAGE
        headers = {}
        if following < len(notes):
            headers["Link"] = f'<{request.url.with_query(after=str(following))}>; rel="next"'
        return web.json_response(notes[start:following], headers=headers)

    async def feed(self, request: web.Request) -> web.Response:
        notes = self._user(request)["notes"]
        start = int(request.query.get("offset", "0"))
        following = start + self.PAGE
        links = {"next": f"{request.path}?offset={following}" if following < len(notes) else None}
        return web.json_response({"items": notes[start:following], "links": links})

    async def delete_user(self, request: web.Request) -> web.Response:
        self._user(request)
        del self.users[request.match_info["user_id"]]
        return web.Response(status=204)

    async def delete_notes(self, request: web.Request) -> web.Response:
        self._user(request)["notes"] = []
        return web.Response(status=204)

    async def delete_events(self, request: web.Request) -> web.Response:
        self._authorise(request)
        for user in self.users.values():
            if user["email"] == request.query.get("email"):
                user["events"] = []
        return web.Response(status=204)

    async def restrict(self, request: web.Request) -> web.Response:
        self._user(request)
        body = await request.json()
        if body.get("reason") != "gdpr-art-18":
            return web.json_response({"error": "reason required"}, status=422)
        self.restricted.add(request.match_info["user_id"])
        return web.json_response({"restricted": True})


# --- HubSpot CRM v3 -------------------------------------------------------------------


def _hubspot_error(status: int, message: str, category: str, **extra: Any) -> web.Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": "b8b47229-6b3b-4bb6-b3f3-2a6ea1a1b3f0",
        "category": category,
        **extra,
    }
    return web.json_response(body, status=status)


class FakeHubSpot(FakeProcessor):
    """HubSpot's CRM v3 contacts: search, properties, batch read, GDPR delete; and its
    communication preferences v3: an email's subscription statuses, unsubscribe.

    ``search_page_cap`` answers at most that many results per search page (HubSpot's
    own maximum is 200), so tests can exercise ``paging.next.after``.
    """

    TOKEN = "pat-eu1-11111111-2222-3333-4444-555555555555"
    PROPERTIES = (
        "email",
        "firstname",
        "lastname",
        "phone",
        "company",
        "lifecyclestage",
        "hs_object_id",
        "createdate",
        "lastmodifieddate",
    )
    DEFAULT_SEARCH_PROPERTIES = (
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contacts: dict[str, dict[str, str]] = {}
        self.blocklist: set[str] = set()
        self.gdpr_deleted: list[str] = []
        self.search_page_cap = 200
        self._next_id = 501
        self.subscription_types = {"7001": "Newsletter", "7002": "Product updates"}
        #: email → subscription type id → SUBSCRIBED | NOT_SUBSCRIBED
        self.subscriptions: dict[str, dict[str, str]] = {}

    def subscribe(self, email: str, *type_ids: str) -> None:
        """Subscribe ``email`` to these subscription types (every other one: not subscribed)."""
        self.subscriptions[email] = {
            type_id: "SUBSCRIBED" if type_id in type_ids else "NOT_SUBSCRIBED"
            for type_id in self.subscription_types
        }

    def add_contact(self, email: str, **properties: str) -> str:
        """A contact with these properties; returns its id."""
        contact_id = str(self._next_id)
        self._next_id += 1
        self.contacts[contact_id] = {
            "email": email,
            "hs_object_id": contact_id,
            "createdate": "2024-03-01T10:00:00.000Z",
            "lastmodifieddate": "2024-06-01T10:00:00.000Z",
            **properties,
        }
        return contact_id

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/crm/v3/objects/contacts/search", self.search),
            web.post("/crm/v3/objects/contacts/batch/read", self.batch_read),
            web.post("/crm/v3/objects/contacts/gdpr-delete", self.gdpr_delete),
            web.get("/crm/v3/properties/contacts", self.properties),
            web.get("/crm/v3/objects/contacts", self.list_contacts),
            web.get("/communication-preferences/v3/status/email/{email}", self.statuses),
            web.post("/communication-preferences/v3/unsubscribe", self.unsubscribe),
            web.patch("/crm/v3/objects/contacts/{contact_id}", self.update_contact),
        ]

    def _authorise(self, request: web.Request) -> web.Response | None:
        if _bearer(request) != self.TOKEN:
            return _hubspot_error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            )
        return None

    def _object(self, contact_id: str, properties: Any) -> dict[str, Any]:
        contact = self.contacts[contact_id]
        return {
            "id": contact_id,
            "properties": {name: contact.get(name) for name in properties},
            "createdAt": contact["createdate"],
            "updatedAt": contact["lastmodifieddate"],
            "archived": False,
        }

    async def search(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        body = await request.json()
        groups = body.get("filterGroups")
        limit = body.get("limit", 10)
        if not isinstance(groups, list) or not groups or not isinstance(limit, int) or limit > 200:
            return _hubspot_error(400, "Invalid input JSON on line 1", "VALIDATION_ERROR")
        matches = []
        for contact_id, contact in sorted(self.contacts.items()):
            for group in groups:
                filters = group["filters"]
                if all(
                    f["operator"] == "EQ"
                    and str(contact.get(f["propertyName"], "")).lower() == str(f["value"]).lower()
                    for f in filters
                ):
                    matches.append(contact_id)
                    break
        start = int(body.get("after", "0"))
        size = min(limit, self.search_page_cap)
        page = matches[start : start + size]
        properties = body.get("properties") or self.DEFAULT_SEARCH_PROPERTIES
        answer: dict[str, Any] = {
            "total": len(matches),
            "results": [self._object(contact_id, properties) for contact_id in page],
        }
        if start + size < len(matches):
            following = str(start + size)
            answer["paging"] = {"next": {"after": following, "link": f"?after={following}"}}
        return web.json_response(answer)

    async def batch_read(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        body = await request.json()
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 100:
            return _hubspot_error(400, "inputs must hold 1 to 100 ids", "VALIDATION_ERROR")
        ids = [str(item["id"]) for item in inputs]
        found = [i for i in ids if i in self.contacts]
        missing = [i for i in ids if i not in self.contacts]
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": [self._object(i, body.get("properties", [])) for i in found],
            "startedAt": "2024-06-01T10:00:00.000Z",
            "completedAt": "2024-06-01T10:00:00.100Z",
        }
        if not missing:
            return web.json_response(answer)
        answer["numErrors"] = 1
        answer["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                "context": {"ids": missing},
            }
        ]
        return web.json_response(answer, status=207)

    async def gdpr_delete(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        body = await request.json()
        object_id = body.get("objectId")
        if not isinstance(object_id, str) or not object_id:
            return _hubspot_error(400, "objectId is required", "VALIDATION_ERROR")
        if body.get("idProperty") == "email":
            match = [i for i, c in self.contacts.items() if c["email"] == object_id]
            if not match:
                self.blocklist.add(object_id)
                return web.Response(status=204)
            object_id = match[0]
        if object_id not in self.contacts:
            return _hubspot_error(404, "resource not found", "OBJECT_NOT_FOUND")
        del self.contacts[object_id]
        self.gdpr_deleted.append(object_id)
        return web.Response(status=204)

    async def properties(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        results = [
            {"name": name, "label": name.title(), "type": "string", "fieldType": "text"}
            for name in self.PROPERTIES
        ]
        return web.json_response({"results": results})

    def _status(self, email: str, type_id: str) -> dict[str, Any]:
        return {
            "id": type_id,
            "name": self.subscription_types[type_id],
            "description": f"{self.subscription_types[type_id]} emails",
            "status": self.subscriptions[email][type_id],
            "sourceOfStatus": "SUBSCRIPTION_STATUS",
            "legalBasis": "CONSENT_WITH_NOTICE",
            "legalBasisExplanation": "opted in on the website",
        }

    async def statuses(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        email = request.match_info["email"]
        known = self.subscriptions.get(email, {})
        return web.json_response(
            {
                "recipient": email,
                "subscriptionStatuses": [self._status(email, type_id) for type_id in known],
            }
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        body = await request.json()
        email, type_id = body.get("emailAddress"), body.get("subscriptionId")
        if type_id not in self.subscription_types or email not in self.subscriptions:
            return _hubspot_error(400, "subscriptionId or emailAddress invalid", "VALIDATION_ERROR")
        if self.subscriptions[email][type_id] == "NOT_SUBSCRIBED":
            return _hubspot_error(
                400,
                f"{email} is already unsubscribed from subscription {type_id}",
                "VALIDATION_ERROR",
            )
        self.subscriptions[email][type_id] = "NOT_SUBSCRIBED"
        return web.json_response(self._status(email, type_id))

    async def update_contact(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        contact_id = request.match_info["contact_id"]
        if contact_id not in self.contacts:
            return _hubspot_error(404, "resource not found", "OBJECT_NOT_FOUND")
        properties = (await request.json()).get("properties")
        if not isinstance(properties, dict) or not properties:
            return _hubspot_error(400, "properties are required", "VALIDATION_ERROR")
        unknown = sorted(set(properties) - set(self.PROPERTIES))
        if unknown:
            return _hubspot_error(
                400, f"Property values were not valid: {unknown}", "VALIDATION_ERROR"
            )
        self.contacts[contact_id].update({k: str(v) for k, v in properties.items()})
        self.contacts[contact_id]["lastmodifieddate"] = "2026-12-06T10:00:00.000Z"
        return web.json_response(self._object(contact_id, sorted(properties)))

    async def list_contacts(self, request: web.Request) -> web.Response:
        if refused := self._authorise(request):
            return refused
        limit = int(request.query.get("limit", "10"))
        ids = sorted(self.contacts)[:limit]
        return web.json_response({"results": [self._object(i, ["email"]) for i in ids]})


# --- Google Analytics Admin API -------------------------------------------------------


def _google_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": code}}, status=status
    )


class FakeGoogleAnalytics(FakeProcessor):
    """The Analytics Admin API's ``properties.submitUserDeletion`` and ``properties.get``."""

    TOKEN = "ya29.a0AfB_test-access-token"
    FIELDS = ("userId", "clientId", "appInstanceId", "userProvidedData")

    def __init__(self, properties: tuple[str, ...] = ("123456789",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.properties = set(properties)
        self.deletions: list[tuple[str, str, str]] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(
                r"/v1alpha/properties/{property_id:\d+}:submitUserDeletion", self.submit_deletion
            ),
            web.get(r"/v1alpha/properties/{property_id:\d+}", self.get_property),
        ]

    def _refuse(self, request: web.Request) -> web.Response | None:
        if _bearer(request) != self.TOKEN:
            return _google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                "UNAUTHENTICATED",
            )
        if request.match_info["property_id"] not in self.properties:
            return _google_error(
                403,
                "User does not have sufficient permissions for this property.",
                "PERMISSION_DENIED",
            )
        return None

    async def submit_deletion(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        body = await request.json()
        given = [name for name in self.FIELDS if name in body]
        if len(given) != 1 or not isinstance(body[given[0]], str) or not body[given[0]]:
            return _google_error(
                400, "Exactly one user identifier must be set.", "INVALID_ARGUMENT"
            )
        self.deletions.append((request.match_info["property_id"], given[0], body[given[0]]))
        return web.json_response({"deletionRequestTime": "2024-06-01T10:00:00.123456Z"})

    async def get_property(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        property_id = request.match_info["property_id"]
        return web.json_response(
            {
                "name": f"properties/{property_id}",
                "displayName": "IoT platform",
                "timeZone": "Europe/Berlin",
                "currencyCode": "EUR",
            }
        )


# --- Hotjar API -----------------------------------------------------------------------


class FakeHotjar(FakeProcessor):
    """Hotjar's OAuth token endpoint and its organization User Lookup.

    Hotjar's reference documents the lookup request; the report itself goes out by
    email, and the acknowledgement this fake answers with (``{"status": "accepted",
    …}``) is opaque to the connector, which records it as it comes.
    """

    CLIENT_ID = "hj-client-8c1d"
    CLIENT_SECRET = "hj-secret-4f2a9e77b1c3d5e6"
    ORGANIZATION_ID = "1234567"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens: set[str] = set()
        self.expires_in = 3600
        self.honour_tokens = True
        self.hits: dict[str, int] = {}
        self.lookups: list[dict[str, Any]] = []

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (as if expired)."""
        self.tokens.clear()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/oauth/token", self.token),
            web.post("/v1/organizations/{organization_id}/user-lookup", self.user_lookup),
        ]

    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request"}, status=400)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (form.get("client_id"), form.get("client_secret")) != (
            self.CLIENT_ID,
            self.CLIENT_SECRET,
        ):
            return web.json_response(
                {"error": "invalid_client", "message": "Client authentication failed"}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
        )

    async def user_lookup(self, request: web.Request) -> web.Response:
        if not self.honour_tokens or _bearer(request) not in self.tokens:
            return web.json_response(
                {"error": "unauthorized", "message": "Missing or invalid authorization header"},
                status=401,
            )
        if request.match_info["organization_id"] != self.ORGANIZATION_ID:
            return web.json_response(
                {"error": "not_found", "message": "Organization not found"}, status=404
            )
        body = await request.json()
        email = body.get("data_subject_email")
        id_map = body.get("data_subject_site_id_to_user_id_map")
        delete = body.get("delete_all_hits", False)
        if (email is None and id_map is None) or not isinstance(delete, bool):
            return web.json_response(
                {"error": "bad_request", "message": "data_subject_email or map required"},
                status=400,
            )
        self.lookups.append(body)
        keys = [email] if email else []
        keys += [f"{site}:{user}" for site, user in (id_map or {}).items()]
        if delete:
            for key in keys:
                self.hits.pop(key, None)
            message = "Deletion request accepted"
        else:
            message = "Lookup accepted; the report will be sent by email"
        return web.json_response({"status": "accepted", "message": message})


# --- hostile surroundings -------------------------------------------------------------


class Bystander(FakeProcessor):
    """Another host: answers anything 200 with an empty JSON object, logging what reached it."""

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self.anything)]

    async def anything(self, request: web.Request) -> web.Response:
        return web.json_response({})


@dataclass
class ListingPage:
    """One ListObjectsV2 answer: its keys, and the continuation token it hands back."""

    keys: list[str]
    next_token: str | None = None


class FakeS3Listing(FakeProcessor):
    """One S3 bucket speaking ListObjectsV2, DeleteObjects and HeadBucket, nothing more.

    ``pages`` gives the listing page for a request's continuation token (None for the
    first page): a test makes it end, repeat or run on forever. Deleted keys are
    logged in :attr:`deleted`, in the order the requests came.
    """

    BUCKET = "uploads"
    S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

    def __init__(self, pages: Callable[[str | None], ListingPage], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pages = pages
        self.deleted: list[str] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"/{self.BUCKET}", self.list_objects, allow_head=False),
            web.head(f"/{self.BUCKET}", self.head_bucket),
            web.post(f"/{self.BUCKET}", self.delete_objects),
        ]

    async def head_bucket(self, request: web.Request) -> web.Response:
        return web.Response()

    async def list_objects(self, request: web.Request) -> web.Response:
        page = self.pages(request.query.get("continuation-token"))
        contents = "".join(
            f"<Contents><Key>{key}</Key><LastModified>2024-06-01T10:00:00.000Z</LastModified>"
            f'<ETag>"0"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>'
            for key in page.keys
        )
        following = (
            ""
            if page.next_token is None
            else f"<NextContinuationToken>{page.next_token}</NextContinuationToken>"
        )
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{self.S3_NS}">'
            f"<Name>{self.BUCKET}</Name><Prefix>{request.query.get('prefix', '')}</Prefix>"
            f"<KeyCount>{len(page.keys)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if page.next_token else 'false'}</IsTruncated>"
            f"{following}{contents}</ListBucketResult>"
        )
        return web.Response(text=xml, content_type="application/xml")

    async def delete_objects(self, request: web.Request) -> web.Response:
        if "delete" not in request.query:
            return web.Response(status=405)
        self.deleted += re.findall(r"<Key>([^<]*)</Key>", (await request.read()).decode())
        xml = f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="{self.S3_NS}"/>'
        return web.Response(text=xml, content_type="application/xml")
