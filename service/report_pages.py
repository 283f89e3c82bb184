"""The DPO's report in the dashboard: how the period's requests were handled, as charts.

Routes::

    GET  /dashboard/reports                      the report of ``from`` to ``to`` (default:
                                                 the last 12 weeks), its figures beside charts
    GET  /dashboard/reports/charts/{chart}.svg   one chart (``received``, ``deadlines``,
                                                 ``answers``, ``processors``) of that period

The figures are :mod:`jobs.accountability`'s (what ``GET /v1/reports`` answers). The
charts are drawn on the server (pygal) as SVG images of the dashboard's own origin, so
the pages keep their strict Content-Security-Policy (no inline style or script); each
image names what it shows (``alt``), and the same numbers stand in tables beside it.
(Inline SVGs would carry pygal's inline ``<style>``, which that policy refuses.) A page
and its four charts are one report: it is built once per period and kept for
:data:`REPORT_KEPT` (at most :data:`REPORTS_KEPT` periods), so the charts a page asks for
draw the figures the page shows, without building the report again.
Signed-in staff only, through the dashboard's guard (:meth:`service.dashboard.Dashboard._staff`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pygal
from aiohttp import web
from pydantic import ValidationError

from jobs.accountability import Report
from jobs.archive.charts import STYLE, markup
from jobs.model import JobKind, utcnow
from service.api.reports import ReportQuery, report_for
from service.appkeys import RESOURCES
from service.dashboard import Dashboard, Session
from service.problems import Problem

PREFIX = "/dashboard/reports"
#: The period shown when none is asked for: the last twelve weeks, today included.
DEFAULT_WEEKS = 12
CHARTS = ("received", "deadlines", "answers", "processors")
#: How long a period's report is reused (by its page and its charts), in seconds.
REPORT_KEPT = 60.0
#: How many periods' reports are kept at most.
REPORTS_KEPT = 16
_SVG_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
}


def _period(request: web.Request) -> ReportQuery:
    """The period asked for (``from``, ``to``), else the last :data:`DEFAULT_WEEKS` weeks."""
    today = utcnow().astimezone(request.app[RESOURCES].settings.zone).date()
    asked = {
        "from": request.query.get("from")
        or str(today - timedelta(weeks=DEFAULT_WEEKS) + timedelta(days=1)),
        "to": request.query.get("to") or str(today),
    }
    try:
        return ReportQuery.model_validate(asked)
    except ValidationError as exc:
        raise Problem(
            422, "Invalid request", f"from and to are dates (YYYY-MM-DD): {exc.errors()[0]['msg']}"
        ) from None


def _chart(kind: type[Any], title: str, labels: list[str], **options: Any) -> Any:
    return kind(
        style=STYLE,
        width=720,
        height=300,
        js=[],
        title=title,
        x_labels=labels,
        x_label_rotation=30,
        legend_at_bottom=True,
        print_values=False,
        **options,
    )


def _counts(*values: int) -> list[int]:
    """Whole-number labels for an axis of counts up to the largest of ``values``."""
    top = max(values, default=0) or 1
    step = max(1, math.ceil(top / 10))
    return list(range(0, top + step, step))


def received_chart(report: Report) -> Any:
    """Requests received per week, stacked by kind."""
    chart = _chart(
        pygal.StackedBar,
        "Requests received per week",
        [w_name(w) for w in report.weeks],
        y_labels=_counts(*(sum(w.received.values()) for w in report.weeks)),
    )
    for kind in JobKind:
        chart.add(kind.value, [week.received.get(kind.value, 0) for week in report.weeks])
    return chart


def deadlines_chart(report: Report) -> Any:
    """Requests overdue and at risk at each week's end."""
    chart = _chart(
        pygal.Line,
        "Overdue and at risk at each week's end",
        [w_name(w) for w in report.weeks],
        y_labels=_counts(*(max(w.overdue, w.at_risk) for w in report.weeks)),
    )
    chart.add("overdue", [week.overdue for week in report.weeks])
    chart.add("at risk", [week.at_risk for week in report.weeks])
    return chart


def answers_chart(report: Report) -> Any:
    """Time to answer, median and 90th percentile, beside what the deadlines allowed."""
    chart = _chart(
        pygal.Bar, "Time to answer, in days", ["median", "90th percentile", "allowed (median)"]
    )
    chart.add(
        "days",
        [report.answer_days_median, report.answer_days_p90, report.allowed_days_median],
    )
    return chart


def processors_chart(report: Report) -> Any:
    """Per processor, the share of its runs that failed and that were retried."""
    chart = _chart(
        pygal.Bar, "Processors: failure and retry rates, %", [p.name for p in report.processors]
    )
    chart.add("failed", [round(p.failure_rate * 100, 1) for p in report.processors])
    chart.add("retried", [round(p.retry_rate * 100, 1) for p in report.processors])
    return chart


DRAWN: dict[str, Callable[[Report], Any]] = {
    "received": received_chart,
    "deadlines": deadlines_chart,
    "answers": answers_chart,
    "processors": processors_chart,
}


def w_name(week: Any) -> str:
    """A week as the charts label it (its ISO name)."""
    year, number, _ = week.starts.isocalendar()
    return f"{year}-W{number:02d}"


class ReportPages:
    """The report's page and its charts, rendered and guarded by one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self._kept: OrderedDict[tuple[date, date], tuple[float, Report]] = OrderedDict()

    async def _report(self, request: web.Request, query: ReportQuery) -> Report:
        """The period's report: built, or reused if built under :data:`REPORT_KEPT` ago."""
        key = (query.start, query.end)
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and now - kept[0] < REPORT_KEPT:
            return kept[1]
        report = await report_for(request.app[RESOURCES], query.start, query.end)
        self._kept[key] = (now, report)
        self._kept.move_to_end(key)
        while len(self._kept) > REPORTS_KEPT:
            self._kept.popitem(last=False)
        return report

    def routes(self) -> list[web.RouteDef]:
        """The report's page and chart images."""
        staff = self.dashboard._staff
        return [
            web.get(PREFIX, staff(self.page)),
            web.get(f"{PREFIX}/charts/{{chart}}.svg", staff(self.chart)),
        ]

    async def page(self, request: web.Request, session: Session) -> web.Response:
        """The period's figures, each group beside its chart."""
        query = _period(request)
        report = await self._report(request, query)
        context = {
            "report": report,
            "view": report.as_dict(),
            "period": {"from": str(query.start), "to": str(query.end)},
            "charts": CHARTS,
        }
        return self.dashboard.render(request, "reports.html", context, session=session)

    async def chart(self, request: web.Request, session: Session) -> web.Response:
        """One chart of the period as an SVG image (no script)."""
        draw = DRAWN.get(request.match_info["chart"])
        if draw is None:
            raise Problem(404, "Not found", "no such chart")
        query = _period(request)
        report = await self._report(request, query)
        chart = draw(report)
        svg = markup(chart, chart.config.title)
        return web.Response(
            text=svg, content_type="image/svg+xml", charset="utf-8", headers=_SVG_HEADERS
        )


def add_report_pages(app: web.Application, secret: str) -> None:
    """Serve the report under ``/dashboard/reports``, with the dashboard's keys (``secret``)."""
    app.router.add_routes(ReportPages(Dashboard(secret)).routes())


__all__ = ["CHARTS", "ReportPages", "add_report_pages"]
