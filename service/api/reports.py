"""The DPO's report over HTTP: ``GET /v1/reports?from=…&to=…`` (support and admin).

JSON by default, CSV with ``format=csv``; built by :mod:`jobs.accountability` (how the
requests received in the period were handled, GDPR Art. 5(2); no personal data). The
handler follows ``service/api/handlers.py``: parse, authorise, call the domain, render.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.accountability import PeriodError, Report, build_report, period
from jobs.model import InvalidRequest, utcnow
from jobs.resources import Resources
from service.api.handlers import principal, require_staff
from service.api.views import json_response
from service.appkeys import RESOURCES


class ReportQuery(BaseModel):
    """Query parameters of GET /v1/reports."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: date = Field(
        alias="from",
        description="The first day of the period (in `HANDOVER_TIME_ZONE`).",
        examples=["2026-11-01"],
    )
    end: date = Field(
        alias="to",
        description="The last day of the period, included; at most 366 days after `from`.",
        examples=["2026-11-30"],
    )
    format: Literal["json", "csv"] = Field(
        "json", description="csv: one table, `section,key,kind,value`.", examples=["json"]
    )

    @model_validator(mode="after")
    def _period(self) -> ReportQuery:
        try:
            period(self.start, self.end)
        except PeriodError as exc:
            raise InvalidRequest("to", str(exc)) from None
        return self


class ReportOut(BaseModel):
    """How the requests received in a period were handled: counts only, no personal data."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: str = Field(alias="from", examples=["2026-11-01"])
    end: str = Field(alias="to", examples=["2026-11-30"])
    time_zone: str = Field(examples=["Europe/Brussels"])
    generated_at: str
    jobs: int = Field(description="Requests received in the period and still on record.")
    weeks: list[dict[str, Any]] = Field(
        description="Per ISO week: `received` by kind, `overdue_at_end`, `at_risk_at_end`."
    )
    time_to_answer: dict[str, Any] = Field(
        description="`answered`, `answered_late`, `still_open`, `median_days`, `p90_days`, "
        "`allowed_median_days` (what the deadlines allowed)."
    )
    processors: list[dict[str, Any]] = Field(
        description="Per processor: `runs`, `failed`, `retried`, `failure_rate`, `retry_rate`."
    )
    refusals: dict[str, int] = Field(description="Refusals by grounds.")
    extensions: dict[str, int] = Field(description="Extended deadlines by length.")


def query_parameters() -> list[dict[str, Any]]:
    """The operation's documented query parameters, from :class:`ReportQuery`."""
    schema = ReportQuery.model_json_schema(by_alias=True)
    return [
        {"name": name, "in": "query", "required": name in schema["required"], "schema": spec}
        for name, spec in schema["properties"].items()
    ]


async def report_for(resources: Resources, start: date, end: date) -> Report:
    """The report of the period, in the controller's time zone (dashboard and API)."""
    settings = resources.settings
    return await build_report(
        resources.store, start, end, settings.zone, settings.time_zone, utcnow()
    )


async def get_report(request: web.Request) -> web.Response:
    require_staff(await principal(request))
    query = ReportQuery.model_validate(dict(request.query))
    report = await report_for(request.app[RESOURCES], query.start, query.end)
    if query.format == "csv":
        name = f"handover-report-{query.start}-{query.end}.csv"
        return web.Response(
            text=report.as_csv(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return json_response(report.as_dict())


__all__ = ["ReportOut", "ReportQuery", "get_report", "query_parameters", "report_for"]
