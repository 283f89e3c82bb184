"""The support dashboard at ``/dashboard``: server-rendered pages over the job store.

Routes::

    GET  /dashboard/login               sign-in form: paste a support or admin token
    POST /dashboard/login               verify the token, set the session cookie
    POST /dashboard/logout              clear it
    GET  /dashboard                     search jobs (filters, cursor pages) and counts
    GET  /dashboard/jobs/{id}           one job: facts, connector progress, timeline, actions
    GET  /dashboard/jobs/{id}/fragment  the job's live sections, re-fetched on each event
    GET  /dashboard/jobs/{id}/events    the timeline as server-sent events (as the API's)
    POST /dashboard/jobs/{id}/retry     (failed jobs) ─┐ each redirects to the job page
    POST /dashboard/jobs/{id}/cancel    (live jobs)    │ with a flash message saying
    POST /dashboard/jobs/{id}/extend    (live jobs)    │ what happened, or what was wrong
    POST /dashboard/jobs/{id}/refuse    (live jobs)    │
    POST /dashboard/jobs/{id}/decide    (objections, rectifications awaiting a decision)
    POST /dashboard/jobs/{id}/lift      (restrictions in force: the subject told, then lifted)
    POST /dashboard/jobs/{id}/ask       (live jobs)    │
    POST /dashboard/jobs/{id}/resume    (awaiting information) ─┘
    GET  /dashboard/jobs/{id}/tasks/{c} a run waiting on a person: what is asked, and a form
    POST /dashboard/jobs/{id}/tasks/{c} record it done (checklist, files, statement; multipart,
                                        its own form's CSRF token in the URL, checked
                                        before any file; no other route takes one there)
    GET  /dashboard/mail                the notices filed in the maildir (embedded mode)
    GET  /dashboard/static/dashboard.css|js, /dashboard/static/live.js, /dashboard/icon.svg

Session: the cookie holds the staff member's bearer token itself (HttpOnly,
SameSite=Strict, Secure over https, path ``/dashboard``), verified on every
request, so a session ends when its token expires and the API stays stateless.
"Over https" is the browser's scheme: behind a TLS-terminating proxy listed in
``HANDOVER_TRUSTED_PROXIES``, the one it forwards (``service/proxies.py``).

CSRF: every form carries ``HMAC(key, cookie)`` with a key derived from the JWT
secret, bound to the session cookie, or on the sign-in form to a random cookie of
its own (``handover_login``, set with the form): a page elsewhere can neither read
nor send either, so it can neither act as staff nor sign a browser in as someone
else (login CSRF). Every POST is refused (403) without the right token, and also
when the browser says it was posted from another site (``Sec-Fetch-Site`` other
than ``same-origin``, an ``Origin`` other than this host, or ``Origin: null``).

Job routes check that the id in the path is a job id (the API's own check): anything
else is a 404. A ``Last-Event-ID`` (or ``?after=``) is checked with the API's
validator before the event stream starts.

Handlers call the domain (the store and the pipelines), never the JSON API. A
domain error on a page renders an error page; on an action it becomes a flash
message on the job page; neither ever shows a traceback. Pages send a strict
Content-Security-Policy: no inline script or style, nothing from elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web
from yarl import URL

from jobs.commands import Actor
from jobs.handoff import Handoffs, ReplyLink
from jobs.identity import checked_identifiers
from jobs.lifecycle import Jurisdiction, RefusalGrounds, Unit
from jobs.mail import read_maildir, smtp_target
from jobs.model import Event, Identity, Job, JobKind, JobStatus, RunStatus, utcnow
from jobs.notices import maildir_path
from jobs.pipeline import LIVE
from service.api import models
from service.api.handlers import event_id, path_job_id
from service.api.middleware import Handler
from service.api.views import stream_events
from service.appkeys import AUTHORITY, COMMANDS, RESOURCES, SETTINGS
from service.auth import Principal
from service.problems import Problem, to_problem
from service.replies import asked_view, read_reply

log = logging.getLogger("handover.dashboard")

PREFIX = "/dashboard"
LOGIN_PATH = f"{PREFIX}/login"
SESSION_COOKIE = "handover_session"
LOGIN_COOKIE = "handover_login"
LOGIN_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
FLASH_COOKIE = "handover_flash"
PAGE_SIZE = 25
ERROR_EXCERPT = 140
STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates" / "dashboard"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FILTERS = ("status", "kind", "subject", "connector", "overdue", "at_risk", "sort")
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#1d2330"/>'
    '<path d="M9 8v16M23 8v16M9 16h14" stroke="#fff" stroke-width="3.5" stroke-linecap="round"/>'
    "</svg>"
)


@dataclass(frozen=True)
class Session:
    """A signed-in staff member: who they are and the CSRF token their forms carry."""

    who: Principal
    csrf: str


@dataclass(frozen=True)
class Flash:
    """A one-time message shown on the next page: ``kind`` is ``ok`` or ``error``."""

    kind: str
    text: str


StaffHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def relative(moment: datetime, now: datetime) -> str:
    """``in 3 days`` / ``5 h ago``: how far ``moment`` is from ``now``, roughly."""
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if span >= size:
            amount = f"{int(span // size)} {unit}"
            break
    else:
        return "now"
    if amount.startswith("1 days"):
        amount = "1 day"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def duration(span: timedelta) -> str:
    """``3 days`` / ``5 h`` / ``12 min``: a length of time, roughly."""
    return relative(datetime.min + span, datetime.min).removeprefix("in ")


def when(moment: datetime | None) -> str:
    """A timestamp as staff read it: UTC, to the second."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def size(count: int) -> str:
    """A byte count, human-sized."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def excerpt(text: str | None, limit: int = ERROR_EXCERPT) -> str:
    """The start of a long text, marked as cut."""
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_details(event: Event) -> dict[str, str]:
    """What an event says beyond its type, actor and (shown apart) the status it moved between."""
    moved = "from" in event.data and "status" in event.data
    shown = {}
    for key, value in event.data.items():
        if moved and key in {"from", "status"}:
            continue
        if isinstance(value, list):
            shown[key] = ", ".join(str(item) for item in value)
        elif isinstance(value, dict):
            shown[key] = orjson.dumps(value).decode()
        else:
            shown[key] = str(value)
    return shown


@dataclass(frozen=True)
class ExtensionOffer:
    """What the extend form offers: up to ``left`` more ``unit`` until ``until``, or why not."""

    unit: str
    left: int
    until: datetime | None
    why_not: str | None


def extension_offer(job: Job, profile: Jurisdiction, now: datetime, zone: Any) -> ExtensionOffer:
    """The extension the job's jurisdiction still allows now (the command checks it again)."""
    extension = profile.extension
    if extension is None:
        return ExtensionOffer("months", 0, None, f"{profile.label} provides for no extension.")
    used = job.extended_months if extension.unit is Unit.MONTHS else job.extended_days
    unit = extension.unit.value
    until = profile.extendable_until(job.created_at, zone, job.paused_for(now))
    why = None
    if profile.extend_once and used:
        why = f"{profile.label} allows one extension, and it was made."
    elif used >= extension.count:
        why = f"The deadline has been extended by all {profile.label} allows ({extension})."
    elif until is not None and now > until:
        why = (
            f"{profile.label}: an extension had to be announced by {when(until)}; "
            "that time has passed."
        )
    return ExtensionOffer(unit, extension.count - used, until, why)


def masked(address: str) -> str:
    """``a•••@example.com``: an address as support staff see it."""
    local, at, domain = address.partition("@")
    return f"{local[:1]}•••{at}{domain}" if at else "•••"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path on this site, or the list."""
    if not target:
        return PREFIX
    url = URL(target)
    if url.is_absolute() or not url.path.startswith(PREFIX) or url.path.startswith(LOGIN_PATH):
        return PREFIX
    return str(url)


def from_this_site(request: web.Request) -> bool:
    """Whether the browser says a form was posted from this site's own pages.

    ``Sec-Fetch-Site``, when sent, must be ``same-origin``; ``Origin``, when sent, must
    name this service: the host the request was sent to, or ``HANDOVER_PUBLIC_URL``'s
    origin (behind a proxy that rewrites ``Host``). ``null``, sent from sandboxed
    frames, files and redirects, names none. A client sending neither is judged by its
    form's CSRF token alone.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        url = URL(origin)
    except ValueError:
        return False
    if not url.is_absolute():
        return False
    if url.authority == request.host:
        return True
    public = request.app[SETTINGS].public_url
    return public is not None and (url.scheme, url.authority) == (
        URL(public).scheme,
        URL(public).authority,
    )


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs ``location``."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


class Dashboard:
    """The dashboard's pages and actions; one per application (see :func:`add_dashboard_routes`)."""

    def __init__(self, secret: str) -> None:
        self._csrf_key = hmac.new(secret.encode(), b"handover dashboard csrf", "sha256").digest()
        self._flash_key = hmac.new(secret.encode(), b"handover dashboard flash", "sha256").digest()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(when=when, size=size, excerpt=excerpt, duration=duration)
        self._templates.globals.update(relative=relative, event_details=event_details)

    def routes(self) -> list[web.RouteDef]:
        """Every dashboard route."""
        staff = self._staff
        return [
            web.get(LOGIN_PATH, self.login_form),
            web.post(LOGIN_PATH, self.login),
            web.post(f"{PREFIX}/logout", staff(self.logout)),
            web.get(PREFIX, staff(self.job_list)),
            web.get(f"{PREFIX}/", self.to_list),
            web.get(f"{PREFIX}/jobs/{{job_id}}", staff(self.job_page)),
            web.get(f"{PREFIX}/jobs/{{job_id}}/fragment", staff(self.job_fragment)),
            web.get(f"{PREFIX}/jobs/{{job_id}}/events", staff(self.job_events)),
            web.get(f"{PREFIX}/mail", staff(self.mail)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/retry", staff(self.retry)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/cancel", staff(self.cancel)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/extend", staff(self.extend)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/refuse", staff(self.refuse)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/decide", staff(self.decide)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/lift", staff(self.lift)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/ask", staff(self.ask)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/resume", staff(self.resume)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/identifiers", staff(self.add_identifiers)),
            web.post(f"{PREFIX}/jobs/{{job_id}}/go-without", staff(self.go_without)),
            web.get(f"{PREFIX}/jobs/{{job_id}}/tasks/{{connector}}", staff(self.task_page)),
            web.post(
                f"{PREFIX}/jobs/{{job_id}}/tasks/{{connector}}",
                staff(self.do_task, token_in_url=True),
            ),
            web.get(f"{PREFIX}/static/dashboard.css", self.static),
            web.get(f"{PREFIX}/static/dashboard.js", self.static),
            web.get(f"{PREFIX}/static/live.js", self.static),
            web.get(f"{PREFIX}/icon.svg", self.icon),
        ]

    # Sessions, CSRF and flash messages.

    def csrf_token(self, session_token: str) -> str:
        """The CSRF token bound to one session's cookie."""
        digest = hmac.new(self._csrf_key, session_token.encode(), "sha256").digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def form_token(self, session: Session, path: str) -> str:
        """The CSRF token of the one form posted to ``path`` with its token in the URL (a
        task's multipart form, checked before any file is read): bound to the session and
        that path, so the URL it travels in opens no other form."""
        return self.csrf_token(f"form {path} {session.csrf}")

    def _login_csrf(self, nonce: str) -> str:
        """The sign-in form's CSRF token, bound to its ``handover_login`` cookie."""
        return self.csrf_token(f"sign-in {nonce}")

    def _flash_cookie(self, flash: Flash) -> str:
        data = orjson.dumps([flash.kind, excerpt(flash.text, 600)])
        payload = base64.urlsafe_b64encode(data).rstrip(b"=")
        signature = hmac.new(self._flash_key, payload, "sha256").hexdigest()
        return f"{payload.decode()}.{signature}"

    def _read_flash(self, request: web.Request) -> Flash | None:
        payload, _, signature = request.cookies.get(FLASH_COOKIE, "").partition(".")
        expected = hmac.new(self._flash_key, payload.encode(), "sha256").hexdigest()
        if not payload or not hmac.compare_digest(signature, expected):
            return None
        kind, text = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return Flash(str(kind), str(text))

    def _redirect_with(self, request: web.Request, location: str, flash: Flash) -> web.Response:
        """Redirect, showing ``flash`` once on the page it leads to."""
        response = redirect(location)
        response.set_cookie(
            FLASH_COOKIE,
            self._flash_cookie(flash),
            path=PREFIX,
            max_age=60,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    def _to_login(self, request: web.Request, why: str | None) -> web.Response:
        location = f"{LOGIN_PATH}?{urlencode({'next': request.path_qs})}"
        if request.method != "GET" or request.path.endswith(("/fragment", "/events")):
            location = LOGIN_PATH
        if why:
            response = self._redirect_with(request, location, Flash("error", why))
        else:
            response = redirect(location)
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    def _staff(self, handler: StaffHandler, *, token_in_url: bool = False) -> Handler:
        """Wrap ``handler``: staff sign-in required, CSRF checked on POST, errors as pages.

        A form's token comes in its body; with ``token_in_url`` (a multipart form, checked
        before any file is read) in the URL's ``csrf``, as :meth:`form_token` made it for
        that path alone. The access log never records a query (:mod:`service.logs`).
        """

        async def guarded(request: web.Request) -> web.StreamResponse:
            token = request.cookies.get(SESSION_COOKIE)
            if not token:
                return self._to_login(request, None)
            try:
                who = await request.app[AUTHORITY].verify(token)
            except Problem as exc:
                return self._to_login(request, f"Your sign-in is no longer valid: {exc.detail}.")
            if not who.is_staff:
                return self._to_login(request, "The dashboard is for support and admin staff.")
            session = Session(who, self.csrf_token(token))
            if request.method == "POST":
                if token_in_url:
                    posted = request.query.get("csrf", "")
                    expected = self.form_token(session, request.path)
                else:
                    posted = str((await request.post()).get("csrf", ""))
                    expected = session.csrf
                if not from_this_site(request) or not hmac.compare_digest(posted, expected):
                    forged = Problem(
                        403,
                        "Forbidden",
                        "This form has expired or did not come from the dashboard; "
                        "reload the page and try again.",
                    )
                    return self._error_page(request, session, forged)
            try:
                if "job_id" in request.match_info:
                    path_job_id(request)
                return await handler(request, session)
            except Exception as exc:
                problem = to_problem(exc)
                if problem is None:
                    log.exception("unexpected error on %s %s", request.method, request.path)
                    problem = Problem(
                        500, "Internal error", "The server failed to answer; it has been logged."
                    )
                return self._error_page(request, session, problem)

        return guarded

    # Rendering.

    def render(
        self,
        request: web.Request,
        template: str,
        context: dict[str, Any],
        *,
        session: Session | None = None,
        status: int = 200,
        flash: Flash | None = None,
        shows_flash: bool = True,
    ) -> web.Response:
        """A page from ``template``, with the session's details and the pending flash message.

        A fragment (``shows_flash=False``) leaves the flash message for the page it belongs to.
        """
        pending = flash or (self._read_flash(request) if shows_flash else None)
        html = self._templates.get_template(template).render(
            who=session.who if session else None,
            csrf=session.csrf if session else "",
            flash=pending,
            now=utcnow(),
            **context,
        )
        response = web.Response(
            text=html,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )
        if shows_flash and FLASH_COOKIE in request.cookies:
            response.del_cookie(FLASH_COOKIE, path=PREFIX)
        return response

    def _error_page(self, request: web.Request, session: Session, problem: Problem) -> web.Response:
        return self.render(
            request,
            "error.html",
            {"problem": problem},
            session=session,
            status=problem.status,
            flash=Flash("error", problem.detail),
        )

    async def static(self, request: web.Request) -> web.FileResponse:
        """The dashboard's stylesheet and script."""
        return web.FileResponse(
            STATIC / request.path.rsplit("/", 1)[-1],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def icon(self, request: web.Request) -> web.Response:
        """The dashboard's icon (kept here: the package ships no .svg files)."""
        return web.Response(
            text=ICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
        )

    # Sign-in.

    async def login_form(self, request: web.Request) -> web.Response:
        """The sign-in form."""
        return self._login_page(request, safe_next(request.query.get("next")))

    def _login_page(
        self, request: web.Request, target: str, status: int = 200, flash: Flash | None = None
    ) -> web.Response:
        """The sign-in form, its CSRF token bound to this browser's ``handover_login`` cookie."""
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not LOGIN_NONCE.fullmatch(nonce):
            nonce = secrets.token_urlsafe(32)
        context = {"next": target, "login_csrf": self._login_csrf(nonce)}
        response = self.render(request, "login.html", context, status=status, flash=flash)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            path=LOGIN_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def login(self, request: web.Request) -> web.Response:
        """Check the pasted token; a staff member's becomes the session cookie."""
        form = await request.post()
        target = safe_next(str(form.get("next", "")))
        if not from_this_site(request):
            return self._login_refused(request, target, 403, "Sign in from the dashboard itself.")
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        posted = str(form.get("csrf", ""))
        if not LOGIN_NONCE.fullmatch(nonce) or not hmac.compare_digest(
            posted, self._login_csrf(nonce)
        ):
            return self._login_refused(
                request,
                target,
                403,
                "This sign-in form has expired or did not come from the dashboard; "
                "paste your token again.",
            )
        token = str(form.get("token", "")).strip()
        if not token:
            return self._login_refused(request, target, 401, "Paste a bearer token to sign in.")
        try:
            who = await request.app[AUTHORITY].verify(token)
        except Problem as exc:
            return self._login_refused(
                request, target, 401, f"This token was refused: {exc.detail}."
            )
        if not who.is_staff:
            return self._login_refused(
                request,
                target,
                403,
                "This is a subject's token. The dashboard is for support and admin staff: "
                "sign in with a token that has the support or admin role.",
            )
        response = redirect(target)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        response.del_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
        return response

    def _login_refused(
        self, request: web.Request, target: str, status: int, message: str
    ) -> web.Response:
        return self._login_page(request, target, status, Flash("error", message))

    async def logout(self, request: web.Request, session: Session) -> web.Response:
        """End the session."""
        response = self._redirect_with(request, LOGIN_PATH, Flash("ok", "Signed out."))
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # Pages.

    async def to_list(self, request: web.Request) -> web.Response:
        """``/dashboard/`` is ``/dashboard``."""
        return web.Response(status=308, headers={"Location": PREFIX})

    async def job_list(self, request: web.Request, session: Session) -> web.Response:
        """Jobs matching the filters, a page at a time, with counts by status."""
        filters = {
            name: request.query[name].strip()
            for name in FILTERS
            if request.query.get(name, "").strip()
        }
        cursor = request.query.get("cursor") or None
        params = models.JobSearch.model_validate({**filters, "cursor": cursor, "limit": PAGE_SIZE})
        query = params.to_query()
        resources = request.app[RESOURCES]
        now = utcnow()
        page = await resources.store.search(query, now)
        by_status: dict[str, int] = {}
        for per_status in (await resources.store.counts()).values():
            for status, count in per_status.items():
                by_status[status] = by_status.get(status, 0) + count
        return self.render(
            request,
            "list.html",
            {
                "jobs": page.jobs,
                "filters": filters,
                "first_url": f"{PREFIX}?{urlencode(filters)}" if cursor else None,
                "next_url": f"{PREFIX}?{urlencode({**filters, 'cursor': page.next_cursor})}"
                if page.next_cursor
                else None,
                "by_status": by_status,
                "overdue": await resources.store.count_overdue(now),
                "statuses": [s.value for s in JobStatus],
                "kinds": [k.value for k in JobKind],
                "connectors": sorted(resources.connectors),
            },
            session=session,
        )

    async def _job_context(self, request: web.Request) -> dict[str, Any]:
        resources = request.app[RESOURCES]
        store = resources.store
        job = await store.get(request.match_info["job_id"])
        events = await store.events(job.id)
        finished = sum(run.status.finished for run in job.connectors.values())
        profile = resources.settings.profile(job.jurisdiction)
        now = utcnow()
        return {
            "profile": profile,
            "extension": extension_offer(job, profile, now, resources.settings.zone),
            "grounds": [ground.value for ground in RefusalGrounds],
            "paused_for": job.paused_for(now),
            "job": job,
            "events": events,
            "last_event": events[-1].id if events else "-",
            "finished": finished,
            "live": job.status in LIVE,
            "unidentified": [
                name for name, run in job.connectors.items() if run.status is RunStatus.UNIDENTIFIED
            ],
            "RunStatus": RunStatus,
        }

    async def job_page(self, request: web.Request, session: Session) -> web.Response:
        """One job: its facts, connector progress, timeline and what staff can do."""
        context = await self._job_context(request)
        return self.render(request, "job.html", context, session=session)

    async def job_fragment(self, request: web.Request, session: Session) -> web.Response:
        """The live part of the job page, which its script swaps in on each event."""
        context = await self._job_context(request)
        return self.render(request, "job_live.html", context, session=session, shows_flash=False)

    async def job_events(self, request: web.Request, session: Session) -> web.StreamResponse:
        """The job's timeline, live: the API's server-sent events, each a plain ``message``
        (its type in its data) so the page's one listener refreshes on every type."""
        if "Last-Event-ID" in request.headers:
            after = event_id(request.headers["Last-Event-ID"])
        else:
            after = event_id(request.query.get("after", "-"), "after")
        job = await request.app[RESOURCES].store.get(request.match_info["job_id"])
        return await stream_events(request, job.id, after, named=False)

    async def task_page(self, request: web.Request, session: Session) -> web.Response:
        """A run waiting on a person (a ``manual`` task, or an email answered by other
        means): what is asked, and the form staff record it done with."""
        job = await request.app[RESOURCES].store.get(request.match_info["job_id"])
        connector = request.match_info["connector"]
        link = request.app[COMMANDS].task_link(job, connector)
        asked = await _task_asked(request, link)
        form_token = self.form_token(session, request.path)
        context = {"job": job, "asked": asked, "form_token": form_token}
        return self.render(request, "task.html", context, session=session)

    async def do_task(self, request: web.Request, session: Session) -> web.Response:
        """Record the task done: the checklist, the files, the statement, who and when."""
        job_id = request.match_info["job_id"]
        connector = request.match_info["connector"]
        try:
            job = await request.app[RESOURCES].store.get(job_id)
            link = request.app[COMMANDS].task_link(job, connector)
            statement, upload = await read_reply(request, link)
            await request.app[COMMANDS].take_reply(link, statement, upload, actor=_actor(session))
        except Exception as exc:
            problem = to_problem(exc)
            if problem is None:
                raise
            location = f"{PREFIX}/jobs/{job_id}/tasks/{connector}"
            return self._redirect_with(request, location, Flash("error", problem.detail))
        done = f"{connector}: recorded as done by {session.who.sub}"
        return self._redirect_with(request, f"{PREFIX}/jobs/{job_id}", Flash("ok", done))

    async def mail(self, request: web.Request, session: Session) -> web.Response:
        """The notices embedded mode filed instead of sending them, newest first.

        Support sees each address masked, as everywhere else; admins see it whole.
        """
        settings = request.app[RESOURCES].settings
        maildir = maildir_path(settings)
        mails = await asyncio.to_thread(read_maildir, maildir) if maildir else []
        admin = session.who.is_admin
        context = {
            "maildir": maildir,
            "smtp": smtp_target(settings.smtp_url.reveal()).shown if settings.smtp_url else None,
            "mails": [(mail, mail.to if admin else masked(mail.to)) for mail in mails],
        }
        return self.render(request, "mail.html", context, session=session)

    # Actions.

    async def _act(
        self, request: web.Request, action: Callable[[Job], Awaitable[str]]
    ) -> web.Response:
        """Run ``action`` on the job; back to its page with what happened, or what was wrong."""
        job_id = request.match_info["job_id"]
        location = f"{PREFIX}/jobs/{job_id}"
        try:
            job = await request.app[RESOURCES].store.get(job_id)
            message = await action(job)
        except Exception as exc:
            problem = to_problem(exc)
            if problem is None:
                raise
            return self._redirect_with(request, location, Flash("error", problem.detail))
        return self._redirect_with(request, location, Flash("ok", message))

    async def retry(self, request: web.Request, session: Session) -> web.Response:
        """Re-run a failed job's unfinished connectors."""

        async def retry(job: Job) -> str:
            retried = await request.app[COMMANDS].retry(_actor(session), job.id)
            again = [
                n for n, r in retried.connectors.items() if r.status is not RunStatus.SUCCEEDED
            ]
            return f"Retrying {', '.join(again) or 'the last step'} (attempt {retried.generation})."

        return await self._act(request, retry)

    async def cancel(self, request: web.Request, session: Session) -> web.Response:
        """Cancel a live job."""
        form = await request.post()

        async def cancel(job: Job) -> str:
            body = models.CancelRequest.model_validate(
                {"reason": str(form.get("reason", "")).strip() or None}
            )
            await request.app[COMMANDS].cancel(_actor(session), job.id, body.reason)
            return "Canceled."

        return await self._act(request, cancel)

    async def extend(self, request: web.Request, session: Session) -> web.Response:
        """Extend a live job's deadline, with the reason the subject will be told."""
        form = await request.post()

        async def extend(job: Job) -> str:
            amounts = {
                unit: form[unit] for unit in ("months", "days") if str(form.get(unit, "")).strip()
            }
            body = models.ExtendRequest.model_validate(
                {**amounts, "reason": str(form.get("reason", "")).strip()}, strict=False
            )
            extended = await request.app[COMMANDS].extend(
                _actor(session), job.id, months=body.months, days=body.days, reason=body.reason
            )
            return f"Deadline extended to {when(extended.due_at)}; the subject is told why."

        return await self._act(request, extend)

    async def refuse(self, request: web.Request, session: Session) -> web.Response:
        """Refuse a live request, with the grounds and the reason the subject is told."""
        form = await request.post()

        async def refuse(job: Job) -> str:
            body = models.RefuseRequest.model_validate(
                {key: str(form.get(key, "")).strip() for key in ("grounds", "reason")}
            )
            refused = await request.app[COMMANDS].refuse(
                _actor(session), job.id, grounds=body.grounds, reason=body.reason
            )
            authority = refused.refusal.authority if refused.refusal else None
            return (
                f"Refused ({body.grounds.replace('_', ' ')}); the subject is told why and "
                f"that they may complain to {authority}."
            )

        return await self._act(request, refuse)

    async def lift(self, request: web.Request, session: Session) -> web.Response:
        """Lift a restriction in force: the subject is told at the address given, then lifted."""
        form = await request.post()

        async def lift(job: Job) -> str:
            email = str(form.get("email", "")).strip()
            body = models.LiftRequest.model_validate(
                {
                    "reason": str(form.get("reason", "")).strip(),
                    "identifiers": {
                        "email": email,
                        "verified_by": str(form.get("verified_by", "")).strip(),
                    }
                    if email
                    else None,
                }
            )
            identity = Identity()
            identity.add(
                checked_identifiers(body.identifiers.named()),
                {
                    "source": "staff",
                    "verified_by": body.identifiers.verified_by.strip(),
                    "by": session.who.sub,
                },
            )
            lifted = await request.app[COMMANDS].lift(
                _actor(session), job.id, reason=body.reason, identity=identity
            )
            return f"The subject is told; job {lifted.id} lifts the restriction once they are."

        return await self._act(request, lift)

    async def decide(self, request: web.Request, session: Session) -> web.Response:
        """Uphold an objection or approve a rectification (it runs), or reject it with the
        grounds the subject is told."""
        form = await request.post()

        async def decide(job: Job) -> str:
            grounds = str(form.get("grounds", "")).strip()
            verified_by = str(form.get("verified_by", "")).strip()
            body = models.DecideRequest.model_validate(
                {
                    "upheld": form.get("upheld") == "true",
                    "grounds": grounds or None,
                    "verified_by": verified_by or None,
                }
            )
            decided = await request.app[COMMANDS].decide(
                _actor(session),
                job.id,
                upheld=body.upheld,
                grounds=body.grounds,
                verified_by=body.verified_by,
            )
            what = decided.kind.value.capitalize()
            if body.upheld:
                return f"{what} upheld; it runs ({decided.status.value})."
            return f"{what} rejected; the subject is told the grounds and where to complain."

        return await self._act(request, decide)

    async def ask(self, request: web.Request, session: Session) -> web.Response:
        """Ask the subject for what is needed; the job waits for the answer."""
        form = await request.post()

        async def ask(job: Job) -> str:
            body = models.AskRequest.model_validate(
                {
                    "needs": str(form.get("needs", "")).strip(),
                    "resume_on_answer": form.get("resume_on_answer") == "on",
                }
            )
            asked = await request.app[COMMANDS].ask(
                _actor(session), job.id, needs=body.needs, resume_on_answer=body.resume_on_answer
            )
            clock = "paused" if asked.clock_stopped else "still running"
            return f"The subject is asked for information; the deadline's clock is {clock}."

        return await self._act(request, ask)

    async def resume(self, request: web.Request, session: Session) -> web.Response:
        """Resume a request that waits for information, accepting offered identifiers or not."""
        form = await request.post()

        async def resume(job: Job) -> str:
            verified = str(form.get("verified_by", "")).strip()
            body = models.ResumeRequest.model_validate({"verified_by": verified or None})
            resumed = await request.app[COMMANDS].resume(
                _actor(session), job.id, verified_by=body.verified_by
            )
            return f"Resumed; {resumed.status.value.replace('_', ' ')}, due {when(resumed.due_at)}."

        return await self._act(request, resume)

    async def add_identifiers(self, request: web.Request, session: Session) -> web.Response:
        """Supply identifiers for processors that could not be asked, and how they were checked."""
        form = await request.post()

        async def add(job: Job) -> str:
            fields = {key: str(form.get(key, "")).strip() for key in ("email", "phone_number")}
            name, value = (str(form.get(key, "")).strip() for key in ("identity", "value"))
            body = models.IdentifiersIn.model_validate(
                {
                    **{key: value for key, value in fields.items() if value},
                    "identities": {name: value} if name or value else {},
                    "verified_by": str(form.get("verified_by", "")).strip(),
                }
            )
            added = await request.app[COMMANDS].add_identifiers(
                _actor(session), job.id, body.named(), body.verified_by
            )
            return f"Identifiers added ({', '.join(sorted(body.named()))}); {added.status.value}."

        return await self._act(request, add)

    async def go_without(self, request: web.Request, session: Session) -> web.Response:
        """Record the decision to finish without processors that could not be asked."""
        form = await request.post()

        async def decide(job: Job) -> str:
            body = models.GoWithoutRequest.model_validate(
                {
                    "connectors": [str(name) for name in form.getall("connector", [])],
                    "reason": str(form.get("reason", "")).strip(),
                }
            )
            await request.app[COMMANDS].go_without(
                _actor(session), job.id, body.connectors, body.reason
            )
            return f"Going without {', '.join(body.connectors)}: recorded as not asked."

        return await self._act(request, decide)


async def _task_asked(request: web.Request, link: ReplyLink) -> dict[str, Any]:
    job, connector = await Handoffs(request.app[RESOURCES]).open(link)
    return asked_view(request, link, job, connector)


def _actor(session: Session) -> Actor:
    """Signed-in staff, acting through the dashboard."""
    return Actor(session.who.sub, staff=True, via="dashboard")


def add_dashboard_routes(app: web.Application, secret: str) -> None:
    """Serve the support dashboard under ``/dashboard``; ``secret`` keys its CSRF tokens."""
    app.router.add_routes(Dashboard(secret).routes())


__all__ = ["Dashboard", "add_dashboard_routes"]
