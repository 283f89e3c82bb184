"""The dashboard's breach register pages (GDPR Art. 33), beside the support pages.

Routes::

    GET  /dashboard/breaches                     every breach and its 72-hour clock; the form
                                                 to record one (admin)
    POST /dashboard/breaches                     record it ─┐ each redirects with a flash
    GET  /dashboard/breaches/{id}                one breach: clock, facts, every version, how
                                                 far the notices to its subjects are
    POST /dashboard/breaches/{id}/versions       facts that arrived later (admin)
    POST /dashboard/breaches/{id}/notification   the authority was told (admin) ─┘
    GET  /dashboard/breaches/{id}/report         the signed report, as the page the API serves

Signed-in staff only, CSRF-checked, errors as pages or flash messages: the
dashboard's own guard (:meth:`service.dashboard.Dashboard._staff`), with the same keys.
The pages call the register (:mod:`jobs.breaches`) with the API's own request shapes
(:mod:`service.api.breaches`), so a form is checked exactly as a JSON body is. A time
typed without a zone (the browser's ``datetime-local``) is read as UTC, as the form says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from jobs.breach_notices import BreachNotices
from jobs.breach_report import build_report, render_html
from jobs.breaches import BreachFacts, BreachRegister, Recorder
from jobs.ids import is_ulid
from jobs.model import utcnow
from service.api.breaches import (
    BreachIn,
    BreachUpdateIn,
    NotificationIn,
    breach_view,
)
from service.appkeys import RESOURCES
from service.dashboard import Dashboard, Flash, Session
from service.problems import Problem, to_problem

PREFIX = "/dashboard/breaches"
FACT_FIELDS = ("nature", "consequences", "measures", "dpo_contact")
LIST_FIELDS = ("subject_categories", "record_categories")
COUNT_FIELDS = ("approx_subjects", "approx_records")

Form = MultiDictProxy[Any]


def _moment(text: str) -> str | None:
    """A form's time as ISO 8601 with a zone: one typed without is UTC."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text  # the request model says what is wrong with it
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def minute(moment: str) -> str:
    """An ISO 8601 moment as the pages show it: ``2026-12-01 08:00 UTC``."""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _form_facts(form: Form) -> dict[str, Any]:
    """The facts a form filled in: blank fields left out, lists comma-separated."""
    facts: dict[str, Any] = {}
    for name in FACT_FIELDS:
        if value := str(form.get(name, "")).strip():
            facts[name] = value
    for name in LIST_FIELDS:
        items = [part.strip() for part in str(form.get(name, "")).split(",") if part.strip()]
        if items:
            facts[name] = items
    for name in COUNT_FIELDS:
        if value := str(form.get(name, "")).strip():
            facts[name] = int(value) if value.isdecimal() else value
    if occurred := _moment(str(form.get("occurred_at", ""))):
        facts["occurred_at"] = occurred
    return facts


class BreachPages:
    """The register's pages and forms, rendered and guarded by one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        dashboard._templates.filters["minute"] = minute

    def routes(self) -> list[web.RouteDef]:
        """Every breach page and form."""
        staff = self.dashboard._staff
        return [
            web.get(PREFIX, staff(self.register)),
            web.post(PREFIX, staff(self.record)),
            web.get(f"{PREFIX}/{{breach_id}}", staff(self.breach)),
            web.post(f"{PREFIX}/{{breach_id}}/versions", staff(self.update)),
            web.post(f"{PREFIX}/{{breach_id}}/notification", staff(self.notify)),
            web.get(f"{PREFIX}/{{breach_id}}/report", staff(self.report)),
        ]

    async def register(self, request: web.Request, session: Session) -> web.Response:
        """Every breach, newest first, with its clock; the form to record one."""
        now = utcnow()
        breaches = await BreachRegister.of(request.app[RESOURCES]).all()
        context = {"breaches": [breach_view(b, now) for b in breaches]}
        return self.dashboard.render(request, "breaches.html", context, session=session)

    async def breach(self, request: web.Request, session: Session) -> web.Response:
        """One breach: its clock, its facts now, every version, what an admin can record."""
        resources = request.app[RESOURCES]
        breach = await BreachRegister.of(resources).get(_breach_id(request))
        context = {
            "breach": breach_view(breach, utcnow()),
            "notices": await BreachNotices.of(resources).progress(breach.id),
        }
        return self.dashboard.render(request, "breach.html", context, session=session)

    async def report(self, request: web.Request, session: Session) -> web.Response:
        """The signed report's page, issued now (and audited, as through the API)."""
        register = BreachRegister.of(request.app[RESOURCES])
        breach = await register.get(_breach_id(request))
        report = build_report(breach, signer=request.app[RESOURCES].signer, issued_at=utcnow())
        await register.audit(
            _recorder(session), "breach.report_issued", breach.id, version=report["version"]
        )
        return web.Response(
            text=render_html(report),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "Cache-Control": "no-store",
            },
        )

    async def record(self, request: web.Request, session: Session) -> web.Response:
        """Record a breach from the form; to its page, or back to the list with what was wrong."""
        form = await request.post()

        async def record() -> str:
            _admin(session)
            body = BreachIn.model_validate(
                {**_form_facts(form), "aware_at": _moment(str(form.get("aware_at", "")))}
            )
            facts = BreachFacts.model_validate(body.model_dump())
            breach = await BreachRegister.of(request.app[RESOURCES]).record(
                _recorder(session), facts
            )
            return breach.id

        return await self._act(request, record, PREFIX, "Breach recorded: the clock runs.")

    async def update(self, request: web.Request, session: Session) -> web.Response:
        """A new version of the facts, with its note."""
        form = await request.post()
        breach_id = _breach_id(request)

        async def update() -> str:
            _admin(session)
            body = BreachUpdateIn.model_validate(
                {**_form_facts(form), "note": str(form.get("note", "")).strip()}
            )
            changes = body.model_dump(exclude_unset=True, exclude={"note"})
            breach = await BreachRegister.of(request.app[RESOURCES]).update(
                _recorder(session), breach_id, changes, body.note
            )
            return breach.id

        location = f"{PREFIX}/{breach_id}"
        return await self._act(request, update, location, "New version recorded.")

    async def notify(self, request: web.Request, session: Session) -> web.Response:
        """The authority's notification: the clock stops."""
        form = await request.post()
        breach_id = _breach_id(request)

        async def notify() -> str:
            _admin(session)
            given = {
                key: str(form.get(key, "")).strip() or None
                for key in ("reference", "authority", "delay_reasons")
            }
            body = NotificationIn.model_validate(
                {**given, "notified_at": _moment(str(form.get("notified_at", "")))}
            )
            breach = await BreachRegister.of(request.app[RESOURCES]).record_notification(
                _recorder(session),
                breach_id,
                notified_at=body.notified_at,
                reference=body.reference,
                authority=body.authority,
                delay_reasons=body.delay_reasons,
            )
            return breach.id

        location = f"{PREFIX}/{breach_id}"
        return await self._act(request, notify, location, "Notification recorded: clock stopped.")

    async def _act(
        self,
        request: web.Request,
        action: Callable[[], Awaitable[str]],
        failed_to: str,
        done: str,
    ) -> web.Response:
        """Run ``action``; to the breach's page with ``done``, or to ``failed_to`` with why not."""
        try:
            breach_id = await action()
        except Exception as exc:
            problem = to_problem(exc)
            if problem is None:
                raise
            return self._flash(request, failed_to, Flash("error", problem.detail))
        return self._flash(request, f"{PREFIX}/{breach_id}", Flash("ok", done))

    def _flash(self, request: web.Request, location: str, flash: Flash) -> web.Response:
        return self.dashboard._redirect_with(request, location, flash)


def _breach_id(request: web.Request) -> str:
    breach_id = request.match_info["breach_id"]
    if not is_ulid(breach_id):
        raise Problem(404, "Not found", f"no breach {breach_id}")
    return breach_id


def _admin(session: Session) -> None:
    if not session.who.is_admin:
        raise Problem(403, "Forbidden", "only an admin may change the breach register")


def _recorder(session: Session) -> Recorder:
    return Recorder(session.who.sub, via="dashboard")


def add_breach_pages(app: web.Application, secret: str) -> None:
    """Serve the register's pages under ``/dashboard/breaches``, signed in and CSRF-checked
    with the dashboard's keys (``secret`` is the dashboard's)."""
    app.router.add_routes(BreachPages(Dashboard(secret)).routes())


__all__ = ["BreachPages", "add_breach_pages"]
