"""The privacy center at ``/privacy``: a subject's own requests, in their language.

Routes::

    GET  /privacy/sign-in                  how to sign in (and, on the embedded demo, as whom)
    GET  /privacy/login                    off to the platform's OpenID provider (service/oidc.py)
    GET  /privacy/callback                 back from it: the code traded, the ID token checked
    POST /privacy/demo                     embedded demo only: sign in as a demo subject
    POST /privacy/sign-out                 end the session
    GET  /privacy                          my requests (status, deadline), restrictions
    GET  /privacy/export                   ask for a copy: formats, categories, protection
    POST /privacy/export
    GET  /privacy/erase                    ask for erasure
    POST /privacy/erase
    GET  /privacy/object                   object to processing (direct marketing and the
    POST /privacy/object                   purposes the processors here can stop)
    GET  /privacy/rectify                  correct a field the processors declare
    POST /privacy/rectify                  rectifiable
    GET  /privacy/requests/{id}            one request: what each processor did, actions,
                                           the receipt and how to verify it, notices sent
    GET  /privacy/requests/{id}/live       its live section, re-fetched on each event
    GET  /privacy/requests/{id}/events     its timeline as server-sent events (as the API's)
    GET  /privacy/requests/{id}/download   303 to a one-time link (CSRF token in the query)
    GET  /privacy/requests/{id}/receipt    the signed receipt, as a file
    POST /privacy/requests/{id}/confirm    confirm an erasure (fresh sign-in needed)
    POST /privacy/requests/{id}/cancel     cancel a request that has not ended
    GET  /privacy/static/privacy.css|js, /privacy/static/live.js

Sign-in: through the platform's OpenID provider (``HANDOVER_OIDC_*``), the ID token
checked as the API checks its tokens; on the embedded demo (no Redis URL, no
connectors configured) a form picks a demo subject and a language instead. The
session cookie holds the ID token (or the demo token) itself, verified on every
request, so a session ends with its token. Cookies are HttpOnly, ``SameSite=Lax``
(the provider sends the browser back with a cross-site redirect; Lax still keeps
them off cross-site POSTs), ``Secure`` over https.

Every request a subject makes here goes through ``jobs.commands`` as the subject
(``via: privacy``), with the identifiers their sign-in vouches for: exactly what the
API does with the same token. Confirming an erasure needs a sign-in no older than
``HANDOVER_REAUTH_MAX_AGE`` (the ID token's ``auth_time``), as on the API; an older
one is sent to sign in again.

CSRF: every form carries ``HMAC(key, session cookie)``; the demo form, a token bound
to a cookie of its own; POSTs from other sites are refused (``Sec-Fetch-Site``,
``Origin``), as on the dashboard. Pages send the dashboard's strict
Content-Security-Policy: nothing from elsewhere, no inline script or style.

Language: the token's ``locale`` claim, else the browser's ``Accept-Language``, among
en, fr, nl and de (gettext domain ``privacy``, ``service/locale``); else English.
Pages work without JavaScript; ``privacy.js`` (with ``live.js``, shared with the dashboard) only
follows a request live.
"""

from __future__ import annotations

import base64
import gettext
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web
from yarl import URL

from connectors.demo import DEMO_SUBJECTS
from jobs.archive.formats import FORMATS
from jobs.commands import Actor
from jobs.export import period_statement
from jobs.model import (
    ActiveJobExists,
    InvalidRequest,
    Job,
    JobKind,
    JobStatus,
    RunStatus,
    utcnow,
)
from jobs.objection import known_purposes
from jobs.pipeline import LIVE
from jobs.search import HIDDEN_FROM_SUBJECTS
from service.api import models
from service.api.handlers import (
    archive_filename,
    event_id,
    path_job_id,
    requested_jurisdiction,
    requester_identity,
)
from service.api.views import stream_events
from service.appkeys import AUTHORITY, COMMANDS, RESOURCES, SETTINGS
from service.auth import Principal
from service.dashboard import SECURITY_HEADERS, from_this_site, redirect, size
from service.oidc import Flow, OpenIdProvider, SignInError
from service.problems import Problem, to_problem
from service.ratelimit import limit_subject

log = logging.getLogger("handover.privacy")

PREFIX = "/privacy"
SIGN_IN_PATH = f"{PREFIX}/sign-in"
CALLBACK_PATH = f"{PREFIX}/callback"
SESSION_COOKIE = "handover_privacy"
FLOW_COOKIE = "handover_privacy_flow"
DEMO_COOKIE = "handover_privacy_demo"
FLASH_COOKIE = "handover_privacy_flash"
NONCE = re.compile(r"[A-Za-z0-9_-]{43}")
LANGUAGES = ("en", "fr", "nl", "de")
LANGUAGE_NAMES = {"en": "English", "fr": "Français", "nl": "Nederlands", "de": "Deutsch"}
DOMAIN = "privacy"
LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATES = Path(__file__).parent / "templates" / "privacy"
STATIC = Path(__file__).parent / "static"
FLOW_SECONDS = 600
REQUESTS_SHOWN = 100
#: How a session's token says where it came from, at the start of the cookie.
OIDC, DEMO = "oidc", "demo"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The privacy center's texts in ``language`` (English: the texts themselves)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])


def _primary(tag: str) -> str:
    return tag.replace("_", "-").split("-", 1)[0].strip().lower()


def accepted_language(header: str) -> str | None:
    """The language of ours the browser prefers most (``Accept-Language``, RFC 9110 §12.5.4)."""
    choices: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")):
        tag, _, params = item.partition(";")
        weight = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                weight = float(value)
            except ValueError:
                continue
        language = _primary(tag)
        if language in LANGUAGES and weight > 0:
            choices.append((-weight, position, language))
    return min(choices)[2] if choices else None


def page_language(request: web.Request, who: Principal | None) -> str:
    """The sign-in's ``locale`` claim, else the browser's choice, among ours; else English."""
    if who is not None and who.locale and _primary(who.locale) in LANGUAGES:
        return _primary(who.locale)
    return accepted_language(request.headers.get("Accept-Language", "")) or "en"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a privacy center page, or its home."""
    if not target:
        return PREFIX
    url = URL(target)
    if url.is_absolute() or not url.path.startswith(PREFIX) or url.path.startswith(SIGN_IN_PATH):
        return PREFIX
    return str(url)


def demo_enabled(request: web.Request) -> bool:
    """The embedded demo (no Redis URL, no connectors configured) offers demo subjects."""
    settings = request.app[SETTINGS]
    return settings.embedded_redis and not settings.connectors


@dataclass(frozen=True)
class Visitor:
    """A signed-in subject: who they are, the CSRF token their forms carry, their language."""

    who: Principal
    csrf: str
    language: str


SubjectHandler = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]


class PrivacyCenter:
    """The privacy center's pages; one per application (see :func:`add_privacy_routes`)."""

    def __init__(self, secret: str, provider: OpenIdProvider | None) -> None:
        self._key = hmac.new(secret.encode(), b"handover privacy center", "sha256").digest()
        self._provider = provider
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(size=size)

    def routes(self) -> list[web.RouteDef]:
        """Every privacy center route."""
        subject = self._subject
        job = f"{PREFIX}/requests/{{job_id}}"
        return [
            web.get(SIGN_IN_PATH, self.sign_in_page),
            web.get(f"{PREFIX}/login", self.login),
            web.get(CALLBACK_PATH, self.callback),
            web.post(f"{PREFIX}/demo", self.demo_sign_in),
            web.post(f"{PREFIX}/sign-out", subject(self.sign_out)),
            web.get(PREFIX, subject(self.home)),
            web.get(f"{PREFIX}/", self.to_home),
            web.get(f"{PREFIX}/export", subject(self.export_form)),
            web.post(f"{PREFIX}/export", subject(self.export)),
            web.get(f"{PREFIX}/erase", subject(self.erase_form)),
            web.post(f"{PREFIX}/erase", subject(self.erase)),
            web.get(f"{PREFIX}/object", subject(self.object_form)),
            web.post(f"{PREFIX}/object", subject(self.object)),
            web.get(f"{PREFIX}/rectify", subject(self.rectify_form)),
            web.post(f"{PREFIX}/rectify", subject(self.rectify)),
            web.get(job, subject(self.request_page)),
            web.get(f"{job}/live", subject(self.request_live)),
            web.get(f"{job}/events", subject(self.request_events)),
            web.get(f"{job}/download", subject(self.download)),
            web.get(f"{job}/receipt", subject(self.receipt)),
            web.post(f"{job}/confirm", subject(self.confirm)),
            web.post(f"{job}/cancel", subject(self.cancel)),
            web.get(f"{PREFIX}/static/privacy.css", self.static),
            web.get(f"{PREFIX}/static/privacy.js", self.static),
            web.get(f"{PREFIX}/static/live.js", self.static),
        ]

    # Tokens and cookies.

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\0{value}".encode(), "sha256").digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_token(self, session: str) -> str:
        """The CSRF token bound to one session cookie."""
        return self._mac("csrf", session)

    def _sealed(self, purpose: str, data: bytes) -> str:
        payload = base64.urlsafe_b64encode(data).decode().rstrip("=")
        return f"{payload}.{self._mac(purpose, payload)}"

    def _unsealed(self, purpose: str, value: str) -> bytes | None:
        payload, _, mac = value.partition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))

    def _set_cookie(
        self, request: web.Request, response: web.Response, name: str, value: str, **more: Any
    ) -> None:
        response.set_cookie(
            name,
            value,
            path=more.pop("path", PREFIX),
            httponly=True,
            samesite="Lax",
            secure=request.secure,
            **more,
        )

    def _with_flash(
        self, request: web.Request, location: str, kind: str, text: str
    ) -> web.Response:
        response = redirect(location)
        sealed = self._sealed("flash", orjson.dumps([kind, text[:600]]))
        self._set_cookie(request, response, FLASH_COOKIE, sealed, max_age=60)
        return response

    def _flash(self, request: web.Request) -> tuple[str, str] | None:
        data = self._unsealed("flash", request.cookies.get(FLASH_COOKIE, ""))
        if data is None:
            return None
        kind, text = orjson.loads(data)
        return str(kind), str(text)

    async def _visitor(self, request: web.Request) -> Visitor | None:
        """The signed-in subject, if the session cookie holds a token still good."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        via, _, token = cookie.partition(":")
        try:
            if via == OIDC and self._provider is not None:
                who = await self._provider.verify(token)
            elif via == DEMO and demo_enabled(request):
                who = await request.app[AUTHORITY].verify(token)
            else:
                return None
        except (Problem, SignInError):
            return None
        return Visitor(who, self.csrf_token(cookie), page_language(request, who))

    def _subject(self, handler: SubjectHandler) -> Callable[[web.Request], Awaitable[Any]]:
        """Wrap ``handler``: sign-in required, CSRF checked on POST, errors as pages."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            visitor = await self._visitor(request)
            if visitor is None:
                if request.method != "GET" or request.path.endswith(("/live", "/events")):
                    return redirect(SIGN_IN_PATH)
                return redirect(f"{SIGN_IN_PATH}?{urlencode({'next': request.path_qs})}")
            if request.method == "POST":
                form = await request.post()
                posted = str(form.get("csrf", ""))
                if not from_this_site(request) or not hmac.compare_digest(posted, visitor.csrf):
                    return self._error(request, visitor.language, 403, self._csrf_text(visitor))
            try:
                return await handler(request, visitor)
            except Exception as exc:
                problem = to_problem(exc)
                if problem is None:
                    raise
                if request.method == "POST":
                    return self._refused(request, visitor, exc, problem)
                return self._error(request, visitor.language, problem.status, problem.detail)

        return wrapped

    def _refused(
        self, request: web.Request, visitor: Visitor, exc: Exception, problem: Problem
    ) -> web.Response:
        """Back to the form (or the request) a refused action came from, saying why."""
        _ = translations(visitor.language).gettext
        if isinstance(exc, ActiveJobExists):
            text = _("You already have a request of this kind under way: here it is.")
            return self._with_flash(request, f"{PREFIX}/requests/{exc.job_id}", "error", text)
        back = request.path
        if back.startswith(f"{PREFIX}/requests/"):
            back = back.rsplit("/", 1)[0]
        text = _("This could not be done: %(reason)s") % {"reason": problem.detail}
        return self._with_flash(request, back, "error", text)

    @staticmethod
    def _csrf_text(visitor: Visitor) -> str:
        return translations(visitor.language).gettext(
            "This form has expired or did not come from this site. Go back and try again."
        )

    # Rendering.

    def render(
        self,
        request: web.Request,
        template: str,
        language: str,
        context: dict[str, Any],
        *,
        visitor: Visitor | None = None,
        status: int = 200,
        shows_flash: bool = True,
    ) -> web.Response:
        """A page in ``language``, with the security headers and any flash message."""
        flash = self._flash(request) if shows_flash else None
        texts = translations(language)
        body = self._templates.get_template(template).render(
            _=texts.gettext,
            ngettext=texts.ngettext,
            language=language,
            visitor=visitor,
            flash=flash,
            prefix=PREFIX,
            demo=demo_enabled(request),
            **context,
        )
        response = web.Response(
            text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
        )
        if flash is not None:
            response.del_cookie(FLASH_COOKIE, path=PREFIX)
        return response

    def _error(self, request: web.Request, language: str, status: int, detail: str) -> web.Response:
        return self.render(
            request,
            "error.html",
            language,
            {"status": status, "detail": detail},
            status=status,
            shows_flash=False,
        )

    async def static(self, request: web.Request) -> web.FileResponse:
        """The stylesheet and the script: this site's own, nothing from elsewhere."""
        return web.FileResponse(
            STATIC / Path(request.path).name, headers={"Cache-Control": "max-age=300"}
        )

    # Signing in and out.

    async def sign_in_page(self, request: web.Request) -> web.Response:
        """How to sign in: the platform's account, or on the demo, a demo subject."""
        target = safe_next(request.query.get("next"))
        language = page_language(request, None)
        nonce = secrets.token_urlsafe(32)
        response = self.render(
            request,
            "sign_in.html",
            language,
            {
                "next": target,
                "oidc": self._provider is not None,
                "login_url": f"{PREFIX}/login?{urlencode({'next': target})}",
                "fresh_url": f"{PREFIX}/login?{urlencode({'next': target, 'fresh': '1'})}",
                "demo_subjects": DEMO_SUBJECTS,
                "languages": LANGUAGE_NAMES,
                "demo_csrf": self._mac("demo", nonce),
            },
        )
        if demo_enabled(request):
            self._set_cookie(request, response, DEMO_COOKIE, nonce, max_age=FLOW_SECONDS)
        return response

    def _redirect_uri(self, request: web.Request) -> str:
        public = request.app[SETTINGS].public_url
        base = public.rstrip("/") if public else f"{request.scheme}://{request.host}"
        return f"{base}{CALLBACK_PATH}"

    async def login(self, request: web.Request) -> web.Response:
        """Off to the provider's sign-in, with state, nonce and a PKCE challenge."""
        language = page_language(request, None)
        target = safe_next(request.query.get("next"))
        if self._provider is None:
            return redirect(f"{SIGN_IN_PATH}?{urlencode({'next': target})}")
        try:
            url, flow = await self._provider.start(
                self._redirect_uri(request), target, fresh=request.query.get("fresh") == "1"
            )
        except SignInError as exc:
            return self._sign_in_failed(request, language, exc)
        response = web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})
        sealed = self._sealed("flow", flow.to_json())
        self._set_cookie(
            request, response, FLOW_COOKIE, sealed, path=CALLBACK_PATH, max_age=FLOW_SECONDS
        )
        return response

    def _sign_in_failed(
        self, request: web.Request, language: str, exc: SignInError
    ) -> web.Response:
        texts = translations(language)
        status = 503 if exc.unavailable else 401
        detail = texts.gettext("Signing in did not work: %(reason)s") % {"reason": str(exc)}
        response = self._error(request, language, status, detail)
        response.del_cookie(FLOW_COOKIE, path=CALLBACK_PATH)
        return response

    async def callback(self, request: web.Request) -> web.Response:
        """Back from the provider: the state checked, the code traded, the ID token kept."""
        language = page_language(request, None)
        data = self._unsealed("flow", request.cookies.get(FLOW_COOKIE, ""))
        try:
            if data is None or self._provider is None:
                raise SignInError("this sign-in was not started here, or took too long")
            flow = Flow.from_json(data)
            if not hmac.compare_digest(request.query.get("state", ""), flow.state):
                raise SignInError("the answer is not for the sign-in started here (state)")
            if "error" in request.query:
                raise SignInError(f"the provider said {request.query['error'][:80]}")
            code = request.query.get("code", "")
            if not code:
                raise SignInError("the provider sent no code")
            id_token, _ = await self._provider.finish(flow, code, self._redirect_uri(request))
        except (SignInError, ValueError) as exc:
            reason = exc if isinstance(exc, SignInError) else SignInError(str(exc))
            return self._sign_in_failed(request, language, reason)
        response = redirect(flow.next)
        self._set_cookie(request, response, SESSION_COOKIE, f"{OIDC}:{id_token}")
        response.del_cookie(FLOW_COOKIE, path=CALLBACK_PATH)
        return response

    async def demo_sign_in(self, request: web.Request) -> web.Response:
        """Embedded demo: sign in as the demo subject picked, in the language picked."""
        form = await request.post()
        language = str(form.get("language", ""))
        language = language if language in LANGUAGES else page_language(request, None)
        texts = translations(language)
        if not demo_enabled(request):
            return self._error(
                request, language, 404, texts.gettext("There is no demo on this site.")
            )
        nonce = request.cookies.get(DEMO_COOKIE, "")
        if (
            not from_this_site(request)
            or not NONCE.fullmatch(nonce)
            or not hmac.compare_digest(str(form.get("csrf", "")), self._mac("demo", nonce))
        ):
            return self._error(
                request,
                language,
                403,
                texts.gettext(
                    "This form has expired or did not come from this site. Go back and try again."
                ),
            )
        subject = str(form.get("subject", ""))
        if subject not in DEMO_SUBJECTS:
            return self._error(
                request, language, 422, texts.gettext("Pick one of the demo subjects.")
            )
        token = request.app[AUTHORITY].issue(subject, ["subject"], 3600, locale=language)
        response = redirect(safe_next(str(form.get("next", ""))))
        self._set_cookie(request, response, SESSION_COOKIE, f"{DEMO}:{token}")
        response.del_cookie(DEMO_COOKIE, path=PREFIX)
        return response

    async def sign_out(self, request: web.Request, visitor: Visitor) -> web.Response:
        """End the session (the provider's own session is the provider's)."""
        text = translations(visitor.language).gettext("You are signed out.")
        response = self._with_flash(request, SIGN_IN_PATH, "ok", text)
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # Pages.

    async def to_home(self, request: web.Request) -> web.Response:
        """``/privacy/`` is ``/privacy``."""
        return web.Response(status=308, headers={"Location": PREFIX})

    async def home(self, request: web.Request, visitor: Visitor) -> web.Response:
        """The subject's requests, newest first, and the restrictions they asked for."""
        params = models.JobSearch.model_validate(
            {"subject": visitor.who.sub, "limit": REQUESTS_SHOWN}
        )
        query = replace(params.to_query(), hidden_kinds=HIDDEN_FROM_SUBJECTS)
        page = await request.app[RESOURCES].store.search(query)
        return self.render(
            request,
            "home.html",
            visitor.language,
            {
                "jobs": page.jobs,
                "restrictions": [job for job in page.jobs if job.kind is JobKind.RESTRICTION],
                "now": utcnow(),
                "day": _day,
                "words": _words(visitor.language),
            },
            visitor=visitor,
        )

    def _categories(self, request: web.Request) -> list[str]:
        connectors = request.app[RESOURCES].connectors.values()
        return sorted({category for c in connectors for category in c.categories})

    async def export_form(self, request: web.Request, visitor: Visitor) -> web.Response:
        """What a copy can hold: formats, categories, and how to protect it."""
        return self.render(
            request,
            "export.html",
            visitor.language,
            {
                "formats": list(FORMATS),
                "default_formats": request.app[SETTINGS].default_formats,
                "categories": self._categories(request),
                "words": _words(visitor.language),
            },
            visitor=visitor,
        )

    async def export(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Ask for a copy, as the API does for the same token; then watch it."""
        form = await request.post()
        who = visitor.who
        body = models.ExportRequest.model_validate(
            {
                "formats": [str(value) for value in form.getall("format", [])] or None,
                "categories": [str(value) for value in form.getall("category", [])] or None,
                "password": str(form.get("password", "")) or None,
                "age_recipient": str(form.get("age_recipient", "")).strip() or None,
            }
        )
        since, until = asked_period(form, utcnow())
        await limit_subject(request, who.sub)
        job = await request.app[COMMANDS].request_export(
            _actor(visitor),
            subject=who.sub,
            formats=body.formats,
            categories=body.categories,
            password=body.password,
            age_recipient=body.age_recipient,
            identity=requester_identity(who, who.sub, None),
            locale=who.locale or visitor.language,
            jurisdiction=requested_jurisdiction(request, who, who.sub, None),
            since=since,
            until=until,
        )
        text = translations(visitor.language).gettext(
            "Your request is received. This page follows it."
        )
        return self._with_flash(request, f"{PREFIX}/requests/{job.id}", "ok", text)

    async def erase_form(self, request: web.Request, visitor: Visitor) -> web.Response:
        """What an erasure does, and the form to ask for one."""
        settings = request.app[SETTINGS]
        return self.render(
            request,
            "erase.html",
            visitor.language,
            {"grace": _span(settings.grace)},
            visitor=visitor,
        )

    async def erase(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Ask for erasure; it waits for the subject's confirmation."""
        form = await request.post()
        who = visitor.who
        body = models.ErasureRequest.model_validate(
            {"reason": str(form.get("reason", "")).strip() or None}
        )
        await limit_subject(request, who.sub)
        job = await request.app[COMMANDS].request_erasure(
            _actor(visitor),
            JobKind.ERASURE,
            subject=who.sub,
            reason=body.reason,
            identity=requester_identity(who, who.sub, None),
            locale=who.locale or visitor.language,
            jurisdiction=requested_jurisdiction(request, who, who.sub, None),
        )
        text = translations(visitor.language).gettext(
            "Your request is received. Confirm it below to have your data erased."
        )
        return self._with_flash(request, f"{PREFIX}/requests/{job.id}", "ok", text)

    async def object_form(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Object to processing (GDPR Art. 21): direct marketing, and the purposes the
        processors here can stop."""
        return self.render(
            request,
            "object.html",
            visitor.language,
            {
                "purposes": known_purposes(request.app[RESOURCES].connectors),
                "purpose_words": _purpose_words(visitor.language),
            },
            visitor=visitor,
        )

    async def object(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Object, as the API does for the same token; direct marketing stops at once, other
        purposes wait for staff's decision (:meth:`jobs.commands.Commands.request_objection`)."""
        form = await request.post()
        who = visitor.who
        body = models.ObjectionRequest.model_validate(
            {
                "purposes": [str(value) for value in form.getall("purpose", [])],
                "reason": str(form.get("reason", "")).strip() or None,
            }
        )
        await limit_subject(request, who.sub)
        jobs = await request.app[COMMANDS].request_objection(
            _actor(visitor),
            subject=who.sub,
            purposes=body.purposes,
            reason=body.reason,
            identity=requester_identity(who, who.sub, None),
            locale=who.locale or visitor.language,
            jurisdiction=requested_jurisdiction(request, who, who.sub, None),
        )
        text = translations(visitor.language).gettext(
            "Your objection is received. This page follows it."
        )
        return self._with_flash(request, f"{PREFIX}/requests/{jobs[0].id}", "ok", text)

    async def rectify_form(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Correct a field (GDPR Art. 16): those the processors here declare rectifiable."""
        return self.render(
            request,
            "rectify.html",
            visitor.language,
            {"fields": _rectifiable(request)},
            visitor=visitor,
        )

    async def rectify(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Ask for one correction, as the API does for the same token; a change to an
        identity field may wait for staff's approval (``HANDOVER_RECTIFICATION_APPROVAL``)."""
        form = await request.post()
        who = visitor.who
        fields = {field.key: field for field in _rectifiable(request)}
        chosen = fields.get(str(form.get("field", "")))
        if chosen is None:
            raise InvalidRequest("field", "pick one of the fields offered")
        value = typed_value(chosen.type, str(form.get("value", "")))
        change = {**chosen.named, "value": value}
        body = models.RectificationRequest.model_validate(
            {"changes": [change], "reason": str(form.get("reason", "")).strip() or None}
        )
        await limit_subject(request, who.sub)
        job = await request.app[COMMANDS].request_rectification(
            _actor(visitor),
            subject=who.sub,
            changes=[item.model_dump() for item in body.changes],
            reason=body.reason,
            identity=requester_identity(who, who.sub, None),
            locale=who.locale or visitor.language,
            jurisdiction=requested_jurisdiction(request, who, who.sub, None),
        )
        text = translations(visitor.language).gettext(
            "Your request is received. This page follows it."
        )
        return self._with_flash(request, f"{PREFIX}/requests/{job.id}", "ok", text)

    async def _own_job(self, request: web.Request, visitor: Visitor) -> Job:
        job_id = path_job_id(request)
        job = await request.app[RESOURCES].store.get(job_id)
        if job.subject != visitor.who.sub or job.kind in HIDDEN_FROM_SUBJECTS:
            raise Problem(404, "Not found", f"no job {job_id}")
        return job

    async def _request_context(self, request: web.Request, visitor: Visitor) -> dict[str, Any]:
        job = await self._own_job(request, visitor)
        events = await request.app[RESOURCES].store.events(job.id)
        now = utcnow()
        settings = request.app[SETTINGS]
        public = settings.public_url or f"{request.scheme}://{request.host}"
        period = job.export_options.scope.period if job.kind is JobKind.EXPORT else None
        in_grace = (
            job.status is JobStatus.QUEUED and job.not_before is not None and job.not_before > now
        )
        return {
            "job": job,
            "now": now,
            "day": _day,
            "moment": _moment,
            "words": _words(visitor.language),
            "notice_words": _notice_words(visitor.language),
            "live": job.status in LIVE,
            "in_grace": in_grace,
            "fresh": visitor.who.authenticated_within(settings.reauth_max_age.total_seconds()),
            "fresh_url": f"{PREFIX}/login?{urlencode({'next': request.path, 'fresh': '1'})}"
            if self._provider is not None
            else f"{SIGN_IN_PATH}?{urlencode({'next': request.path})}",
            "notices": [e for e in events if e.type == "notice.sent"],
            "last_event": events[-1].id if events else "-",
            "finished": sum(run.status.finished for run in job.connectors.values()),
            "RunStatus": RunStatus,
            "JobStatus": JobStatus,
            "JobKind": JobKind,
            "receipt_rows": _receipt_rows(job.receipt),
            "period": period,
            "period_applied": {  # only runs that succeeded applied anything
                name: stated["period"]
                for name, run in job.connectors.items()
                if period is not None
                and (connector := request.app[RESOURCES].connectors.get(name)) is not None
                and (stated := period_statement(connector, job, run))
            },
            "verify_command": f"handover verify FILE --keys-url {public.rstrip('/')}/v1/keys",
            "download_url": f"{PREFIX}/requests/{job.id}/download?"
            + urlencode({"csrf": visitor.csrf}),
        }

    async def request_page(self, request: web.Request, visitor: Visitor) -> web.Response:
        """One request: where it stands, what each processor did, and what can be done."""
        context = await self._request_context(request, visitor)
        return self.render(request, "request.html", visitor.language, context, visitor=visitor)

    async def request_live(self, request: web.Request, visitor: Visitor) -> web.Response:
        """The live section of the request page, which its script swaps in on each event."""
        context = await self._request_context(request, visitor)
        return self.render(
            request, "live.html", visitor.language, context, visitor=visitor, shows_flash=False
        )

    async def request_events(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        """The request's timeline, live, as the API streams it but every event unnamed (a
        plain ``message``): the page refreshes on each, whatever its type."""
        if "Last-Event-ID" in request.headers:
            after = event_id(request.headers["Last-Event-ID"])
        else:
            after = event_id(request.query.get("after", "-"), "after")
        job = await self._own_job(request, visitor)
        return await stream_events(request, job.id, after, named=False)

    async def download(self, request: web.Request, visitor: Visitor) -> web.Response:
        """A one-time link to the archive, as the API gives it; the CSRF token is in the query."""
        if not hmac.compare_digest(request.query.get("csrf", ""), visitor.csrf):
            return self._error(request, visitor.language, 403, self._csrf_text(visitor))
        job = await self._own_job(request, visitor)
        now = utcnow()
        texts = translations(visitor.language)
        if job.status is JobStatus.EXPIRED or (
            job.result is not None and job.result.expires_at <= now
        ):
            detail = texts.gettext("This copy has expired and was deleted.")
            return self._error(request, visitor.language, 410, detail)
        if job.status is not JobStatus.SUCCEEDED or job.result is None:
            detail = texts.gettext("This copy is not ready yet.")
            return self._error(request, visitor.language, 409, detail)
        resources = request.app[RESOURCES]
        ttl = min(resources.settings.link_ttl, job.result.expires_at - now)
        await request.app[COMMANDS].record_download(
            _actor(visitor), job.id, int(ttl.total_seconds())
        )
        url = await resources.storage.download_url(
            job.result.key, ttl=ttl, filename=archive_filename(job)
        )
        return redirect(url)

    async def receipt(self, request: web.Request, visitor: Visitor) -> web.Response:
        """The signed receipt as a file, to keep and to check with ``handover verify``."""
        job = await self._own_job(request, visitor)
        if job.receipt is None:
            detail = translations(visitor.language).gettext("This request has no receipt yet.")
            return self._error(request, visitor.language, 409, detail)
        await request.app[COMMANDS].audit(_actor(visitor), "receipt.read", job)
        return web.Response(
            body=orjson.dumps(job.receipt, option=orjson.OPT_INDENT_2),
            content_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="handover-receipt-{job.id}.json"',
                "Cache-Control": "no-store",
            },
        )

    async def confirm(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Confirm an erasure: only with a sign-in fresh enough, as on the API."""
        job = await self._own_job(request, visitor)
        location = f"{PREFIX}/requests/{job.id}"
        texts = translations(visitor.language)
        max_age = request.app[SETTINGS].reauth_max_age
        if not visitor.who.authenticated_within(max_age.total_seconds()):
            text = texts.gettext(
                "To confirm an erasure, sign in again first: your sign-in is more than "
                "%(minutes)d minutes old."
            ) % {"minutes": int(max_age.total_seconds() // 60)}
            return self._with_flash(request, location, "error", text)
        await request.app[COMMANDS].confirm(_actor(visitor), job.id)
        return self._with_flash(request, location, "ok", texts.gettext("Erasure confirmed."))

    async def cancel(self, request: web.Request, visitor: Visitor) -> web.Response:
        """Cancel a request that has not ended."""
        job = await self._own_job(request, visitor)
        await request.app[COMMANDS].cancel(_actor(visitor), job.id)
        text = translations(visitor.language).gettext("Your request is canceled.")
        return self._with_flash(request, f"{PREFIX}/requests/{job.id}", "ok", text)


@dataclass(frozen=True)
class RectifiableField:
    """A field the form offers to correct: where it is, and its type."""

    connector: str
    dataset: str
    field: str
    type: str

    @property
    def key(self) -> str:
        """The form's value for it."""
        return f"{self.connector}/{self.dataset}/{self.field}"

    @property
    def named(self) -> dict[str, str]:
        """The change's address, as ``RectificationRequest`` names it."""
        return {"connector": self.connector, "dataset": self.dataset, "field": self.field}


def _rectifiable(request: web.Request) -> list[RectifiableField]:
    connectors = request.app[RESOURCES].connectors
    return [
        RectifiableField(name, field.dataset, field.field, field.type)
        for name, connector in sorted(connectors.items())
        for field in connector.rectifiable
    ]


def typed_value(kind: str, text: str) -> str | int | float | bool:
    """A form's text as a value of the field's type; an InvalidRequest naming ``value``."""
    text = text.strip()
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        raise InvalidRequest("value", f"expected {kind}, got {text[:40]!r}") from None
    if kind == "boolean":
        if text.lower() not in {"true", "false"}:
            raise InvalidRequest("value", f"expected true or false, got {text[:40]!r}")
        return text.lower() == "true"
    return text


#: The ranges the export form offers besides everything and dates of one's own.
RECENT = {"30d": timedelta(days=30), "365d": timedelta(days=365)}


def asked_period(form: Mapping[str, Any], now: datetime) -> tuple[datetime | None, datetime | None]:
    """The time range the export form asks for: all, the last 30 or 365 days, or dates.

    Dates are days in UTC, both included: ``until`` becomes the start of the next day.
    A date that is not one (or the last one there is, 9999-12-31, as ``until``) is an
    :class:`~jobs.model.InvalidRequest` naming its field, and so is "dates" without any:
    a range left empty would quietly export everything.
    """
    choice = str(form.get("period", "all"))
    if choice in RECENT:
        return now - RECENT[choice], None
    if choice != "dates":
        return None, None
    bounds: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        text = str(form.get(name, "")).strip()
        try:
            day = date.fromisoformat(text) if text else None
        except ValueError:
            raise InvalidRequest(name, f"{text[:20]!r} is not a date (YYYY-MM-DD)") from None
        moment = None if day is None else datetime.combine(day, time(), tzinfo=UTC)
        try:
            bounds[name] = moment + timedelta(days=1) if moment and name == "until" else moment
        except OverflowError:
            raise InvalidRequest(name, f"{text!r} is past the last date there is") from None
    if bounds["since"] is None and bounds["until"] is None:
        raise InvalidRequest("since", "give a first day, a last day, or both")
    return bounds["since"], bounds["until"]


def _actor(visitor: Visitor) -> Actor:
    """The subject, acting through the privacy center."""
    return Actor(visitor.who.sub, staff=False, via="privacy")


def _span(span: timedelta) -> str | None:
    """``24 h`` / ``10 min``: a grace period as every language here writes it; None for none."""
    minutes = int(span.total_seconds() // 60)
    if minutes <= 0:
        return None
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def _day(moment: datetime | None) -> str:
    """A date as subjects read it, in the ISO form every language reads."""
    return moment.strftime("%Y-%m-%d") if moment else "—"


def _moment(moment: datetime | None) -> str:
    """A time to the minute, UTC."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def _receipt_rows(receipt: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per processor: asked or not (and why), and the counts the signed receipt states."""
    rows = []
    for entry in (receipt or {}).get("connectors", []):
        datasets = entry.get("datasets") or []
        rows.append(
            {
                "connector": entry.get("connector"),
                "asked": bool(entry.get("asked")),
                "reason": entry.get("not_asked_reason"),
                "deleted": sum(int(d.get("deleted", 0)) for d in datasets),
                "anonymised": sum(int(d.get("anonymised", 0)) for d in datasets),
                "retained": sum(int(d.get("retained", 0)) for d in datasets),
                "bases": sorted({str(d["legal_basis"]) for d in datasets if d.get("legal_basis")}),
            }
        )
    return rows


def _words(language: str) -> dict[str, str]:
    """Statuses, kinds, notices and categories, in ``language``."""
    _ = translations(language).gettext
    return {
        "export": _("Copy of my data"),
        "erasure": _("Erasure"),
        "restriction": _("Restriction"),
        "objection": _("Objection"),
        "rectification": _("Rectification"),
        "awaiting_confirmation": _("waiting for your confirmation"),
        "awaiting_information": _("waiting for information from you"),
        "queued": _("queued"),
        "running": _("in progress"),
        "needs_attention": _("in progress, being looked at by our staff"),
        "succeeded": _("done"),
        "failed": _("failed; our staff are told"),
        "canceled": _("canceled"),
        "expired": _("expired"),
        "refused": _("refused"),
        "pending": _("not started yet"),
        "unidentified": _("not asked: we could not identify you there"),
        "not_asked": _("not asked"),
        "waiting_on_processor": _("asked; waiting for their answer"),
        "json": "JSON",
        "csv": "CSV",
        "ndjson": "NDJSON",
    }


def _purpose_words(language: str) -> dict[str, str]:
    """Handover's purposes (``jobs/objection.py``), named in ``language``."""
    _ = translations(language).gettext
    return {
        "direct_marketing": _("Direct marketing (emails and offers): stopped at once"),
        "analytics": _("Analytics of how you use the service"),
        "research": _("Research"),
    }


def _notice_words(language: str) -> dict[str, str]:
    """The notices Handover sends (``jobs/notices.py``), named in ``language``."""
    _ = translations(language).gettext
    return {
        "acknowledged": _("Request received"),
        "awaiting_confirmation": _("Confirmation requested"),
        "completed": _("Request completed"),
        "extended": _("Deadline extended"),
        "refused": _("Request refused"),
        "information_needed": _("Information needed"),
        "restriction_lifting": _("Restriction to be lifted"),
    }


def add_privacy_routes(app: web.Application, secret: str) -> None:
    """Serve the privacy center under ``/privacy``; ``secret`` keys its cookies and tokens."""
    provider = OpenIdProvider.from_settings(app[SETTINGS])
    app.router.add_routes(PrivacyCenter(secret, provider).routes())


__all__ = ["PrivacyCenter", "accepted_language", "add_privacy_routes"]
