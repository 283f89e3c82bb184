"""The DPO's report: GET /v1/reports (JSON, CSV), `handover report` and /dashboard/reports.

One period of requests made to happen for real (received weeks ago, extended, refused,
failed and retried, answered), then read back through each entry point.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, CookieJar
from playwright.async_api import async_playwright, expect

from connectors.testing import MemoryConnector
from jobs.accountability import Report, answered_at
from jobs.kinds import build_pipelines
from jobs.model import Event, Job, JobKind, JobStatus, utcnow
from jobs.resources import Resources
from service import report_pages
from service.api.reports import ReportOut, report_for
from tests.factories import options_for
from tests.service.conftest import Api, ApiFactory
from tests.service.test_dashboard import CHROMIUM, CHROMIUM_ARGS, Browser
from tests.service.test_jobs_cli import cli
from tests.service.test_lifecycle_api import SUPPORT, crm, received_days_ago, staff

PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "Martin")


async def waiting_since(api: Api, days: int, subject: str) -> Job:
    """An erasure received ``days`` ago, still waiting for its subject's confirmation."""
    pipeline = build_pipelines(api.resources)[JobKind.ERASURE]
    job = pipeline.new_job(
        JobKind.ERASURE,
        subject=subject,
        requested_by=subject,
        connectors=["crm"],
        options=options_for(JobKind.ERASURE),
        status=JobStatus.AWAITING_CONFIRMATION,
    )
    settings = api.resources.settings
    job.created_at -= timedelta(days=days)
    job.updated_at = job.created_at
    job.due_at = settings.profile().due_at(job.created_at, settings.zone)
    await pipeline.submit(job)
    return job


async def a_period_of_requests(api_factory: ApiFactory) -> tuple[Api, list[str]]:
    """Six requests: overdue, at risk, extended, answered, failed twice, refused."""
    billing = MemoryConnector("billing", records={}, fail="billing API down (HTTP 503)")
    api = await api_factory({"crm": crm(), "billing": billing})
    overdue = await waiting_since(api, 40, "alice")
    at_risk = await waiting_since(api, 26, "bob")
    extended = await waiting_since(api, 5, "carol")
    reason = "Alice Martin's request spans twelve processors"
    status, body = await staff(
        api, f"/v1/jobs/{extended.id}/extend", {"months": 1, "reason": reason}
    )
    assert status == 200, body
    answered = await received_days_ago(api, 10, JobKind.EXPORT, subject="dave")
    await api.wait(answered.id, sub="s1", roles=SUPPORT)
    failed = await api.export(sub="erin", connectors=["crm", "billing"])
    assert (await api.wait(failed["id"], sub="erin"))["status"] == "failed"
    status, body = await staff(api, f"/v1/jobs/{failed['id']}/retry")
    assert status == 200, body
    await api.wait(failed["id"], "failed", sub="erin")
    refused = await waiting_since(api, 3, "frank")
    status, body = await staff(
        api, f"/v1/jobs/{refused.id}/refuse", {"grounds": "excessive", "reason": "frank, again"}
    )
    assert status == 200, body
    ids = [overdue.id, at_risk.id, extended.id, answered.id, failed["id"], refused.id]
    return api, ids


def period() -> dict[str, str]:
    today = utcnow().date()
    return {"from": str(today - timedelta(days=45)), "to": str(today)}


async def test_the_report_counts_what_happened_and_names_no_one(api_factory: ApiFactory) -> None:
    api, ids = await a_period_of_requests(api_factory)
    status, _, report = await api.request(
        "GET", "/v1/reports", sub="s1", roles=SUPPORT, params=period()
    )
    assert status == 200, report

    ReportOut.model_validate(report)  # as documented
    assert report["jobs"] == 6
    received: dict[str, int] = {}
    for week in report["weeks"]:
        for kind, count in week["received"].items():
            received[kind] = received.get(kind, 0) + count
    assert set(received) == {kind.value for kind in JobKind} - {"disclosure"}
    assert {kind: count for kind, count in received.items() if count} == {"export": 2, "erasure": 4}
    last = report["weeks"][-1]
    assert (last["overdue_at_end"], last["at_risk_at_end"]) == (1, 1), report["weeks"][-3:]
    answers = report["time_to_answer"]
    assert (answers["answered"], answers["still_open"], answers["answered_late"]) == (3, 3, 0)
    assert 2.9 < answers["median_days"] < 3.1, "frank's refusal, 3 days after receipt"
    assert 9.9 < answers["p90_days"] < 10.1, "dave's export, 10 days after receipt"
    processors = {p["name"]: p for p in report["processors"]}
    assert processors["crm"] == {
        "name": "crm",
        "runs": 2,
        "failed": 0,
        "retried": 0,
        "failure_rate": 0,
        "retry_rate": 0,
    }
    assert (
        processors["billing"]["failure_rate"] == 1.0 and processors["billing"]["retry_rate"] == 1.0
    )
    assert report["refusals"] == {"excessive": 1}
    assert report["extensions"] == {"1 month": 1}
    text = orjson.dumps(report).decode()
    for personal in (*PEOPLE, *ids):
        assert personal not in text, personal

    status, headers, body = await api.request(
        "GET", "/v1/reports", sub="a1", roles=("admin",), params={**period(), "format": "csv"}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(body.decode())))
    assert table[0] == ["section", "key", "kind", "value"]
    assert ["refusals", "excessive", "", "1"] in table
    assert ["processor", "billing", "retried", "1"] in table
    assert not any(personal in body.decode() for personal in (*PEOPLE, *ids))


async def test_a_request_paused_for_the_subject_is_not_overdue_since_it_was_asked(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    waiting = await waiting_since(api, 40, "gina")

    async def overdue_by_week() -> list[int]:
        status, _, report = await api.request(
            "GET", "/v1/reports", sub="s1", roles=SUPPORT, params=period()
        )
        assert status == 200, report
        return [week["overdue_at_end"] for week in report["weeks"]]

    before = await overdue_by_week()
    assert before[-1] == 1 and sum(before) >= 2, before  # overdue since ~10 days
    status, asked = await staff(api, f"/v1/jobs/{waiting.id}/ask", {"needs": "your postcode"})
    assert status == 200 and asked["deadline"] == "paused", asked
    after = await overdue_by_week()
    # Paused from now on, as the dashboard says; the weeks before it was asked stay as they were.
    assert after == [*before[:-1], 0], (before, after)


def test_an_archives_expiry_is_not_when_the_request_was_answered() -> None:
    received = utcnow() - timedelta(days=40)
    answered = received + timedelta(days=3)
    timeline = [
        Event("1", received, "created", "alice", {"status": "queued"}),
        Event("2", answered, "succeeded", "worker", {"status": "succeeded"}),
        Event("3", answered + timedelta(days=30), "expired", "cleanup", {"status": "expired"}),
    ]
    assert answered_at(timeline) == answered
    assert answered_at(timeline[:1]) is None


async def test_only_staff_get_a_report_of_a_period_that_makes_sense(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    status, _, problem = await api.request("GET", "/v1/reports", sub="alice", params=period())
    assert status == 403, problem
    bad: list[tuple[dict[str, str], str]] = [
        ({}, "from"),
        ({"from": "2026-13-01", "to": "2026-12-01"}, "from"),
        ({"from": "2026-12-01", "to": "2026-11-01"}, "before from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "at most 366 days"),
        ({**period(), "format": "xml"}, "format"),
    ]
    for params, said in bad:
        status, headers, problem = await api.request(
            "GET", "/v1/reports", sub="s1", roles=SUPPORT, params=params
        )
        assert status == 422, (params, problem)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert said in orjson.dumps(problem).decode(), (params, problem)


async def test_handover_report_prints_the_period(api_factory: ApiFactory) -> None:
    api, _ = await a_period_of_requests(api_factory)
    dates = period()
    shown = await cli(api, "report", "--from", dates["from"], "--to", dates["to"])
    assert shown.returncode == 0, shown.stderr
    assert "Answered: 3 (0 after the deadline); still open: 3" in shown.stdout
    assert re.search(r"billing\s+1\s+1\s+1", shown.stdout)
    assert "refused (excessive): 1" in shown.stdout
    as_csv = await cli(api, "report", "--from", dates["from"], "--to", dates["to"], "--csv")
    assert as_csv.stdout.startswith("section,key,kind,value")
    wrong = await cli(api, "report", "--from", dates["to"], "--to", dates["from"])
    assert wrong.returncode != 0 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "before from" in wrong.stderr
    subject = await cli(
        api, "report", "--from", dates["from"], "--to", dates["to"], sub="alice", roles=()
    )
    assert subject.returncode != 0 and "support or admin" in subject.stderr


async def test_the_dashboard_shows_the_report_as_charts_with_their_numbers(
    api_factory: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, ids = await a_period_of_requests(api_factory)
    built: list[tuple[date, date]] = []

    async def counted(resources: Resources, start: date, end: date) -> Report:
        built.append((start, end))
        return await report_for(resources, start, end)

    monkeypatch.setattr(report_pages, "report_for", counted)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        browser = Browser(api, session)
        assert (await browser.sign_in()).status == 303
        response, page = await browser.get(
            "/dashboard/reports?" + "&".join(f"{k}={v}" for k, v in period().items())
        )
        assert response.status == 200, page
        charts = re.findall(
            r'<img src="(/dashboard/reports/charts/[a-z]+\.svg\?[^"]+)" alt="[^"]+"', page
        )
        assert len(charts) == 4
        assert "Answered after the deadline" in page and ">excessive<" in page
        for personal in (*PEOPLE, *ids):
            assert personal not in page
        for chart in charts:
            response, svg = await browser.get(chart.replace("&amp;", "&"))
            assert response.status == 200 and response.content_type == "image/svg+xml"
            assert svg.startswith("<svg") and "<script" not in svg
        response, _ = await browser.get("/dashboard/reports/charts/nothing.svg")
        assert response.status == 404
    assert len(built) == 1, "the page and its four charts are built from one report"


AXE = Path(__file__).parent.parent / "assets" / "axe-core" / "axe.min.js"


async def test_chromium_shows_the_report_charts_and_axe_finds_no_violation(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    api, _ = await a_period_of_requests(api_factory)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        # axe is injected as an inline script, which the dashboard's own CSP refuses.
        context = await browser.new_context(
            bypass_csp=True, viewport={"width": 1280, "height": 900}
        )
        page = await context.new_page()
        dates = period()
        await page.goto(f"{api.base}/dashboard/reports?from={dates['from']}&to={dates['to']}")
        await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="How requests were handled")).to_be_visible()
        charts = page.get_by_role("img", name=re.compile("the table beside gives the numbers"))
        await expect(charts).to_have_count(4)
        widths = await charts.evaluate_all("images => images.map(image => image.naturalWidth)")
        assert all(width > 0 for width in widths), "every chart loaded"
        screenshot = tmp_path / "dashboard-report.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        await browser.close()
    violations = [
        f"{v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
    ]
    assert violations == []
