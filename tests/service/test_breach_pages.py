"""The breach register's dashboard pages: the list with its clocks, the form to record one,
a breach's page with its versions, the notification form and the report page."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest

from jobs.model import utcnow
from tests.service.conftest import Api, ApiFactory
from tests.service.test_dashboard import Browser, BrowserFactory, browser_factory

__all__ = ["browser_factory"]  # the fixture, used below


def local(hours_ago: float) -> str:
    """A moment as a browser's ``datetime-local`` field sends it (no zone: UTC here)."""
    return (utcnow() - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M")


def form(hours_ago: float, **changes: str) -> dict[str, str]:
    return {
        "aware_at": local(hours_ago),
        "nature": "Backups bucket made public for a day",
        "subject_categories": "customers, device owners",
        "approx_subjects": "",
        "record_categories": "contact",
        "approx_records": "700",
        "consequences": "Spam and phishing",
        "measures": "Bucket closed; access logs reviewed",
        "dpo_contact": "dpo@example.com",
        **changes,
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory({}, worker=False)


async def signed_in(api: Api, browser_factory: BrowserFactory, *roles: str) -> Browser:
    browser = await browser_factory(api)
    response = await browser.sign_in("dpo-1", *roles)
    assert response.status == 303
    return browser


async def test_an_admin_records_a_breach_and_sees_its_clock(
    api: Api, browser_factory: BrowserFactory
) -> None:
    browser = await signed_in(api, browser_factory, "admin")
    csrf = await browser.csrf("/dashboard/breaches")
    response, _ = await browser.post("/dashboard/breaches", {"csrf": csrf, **form(50)})
    location = response.headers["Location"]
    assert re.fullmatch(r"/dashboard/breaches/[0-9A-Z]{26}", location), location
    page = html.unescape(await browser.follow(response))
    assert "Breach recorded: the clock runs." in page
    assert re.search(r"data-clock>at risk<", page), page
    assert "number not yet known (customers, device owners)" in page
    assert "about 700 (contact)" in page
    assert "Not sent. Upload the affected subjects" in page
    _, listing = await browser.get("/dashboard/breaches")
    assert location.rsplit("/", 1)[1] in listing and "at risk" in listing

    response, _ = await browser.post(
        f"{location}/versions",
        {"csrf": csrf, "note": "subjects counted", "approx_subjects": "310"},
    )
    page = html.unescape(await browser.follow(response))
    assert "about 310 (customers, device owners)" in page
    assert "Version 2" in page and "subjects counted" in page

    response, _ = await browser.post(
        f"{location}/notification",
        {"csrf": csrf, "notified_at": local(0), "reference": "CNIL-9", "authority": "CNIL"},
    )
    page = html.unescape(await browser.follow(response))
    assert "Notification recorded: clock stopped." in page
    assert re.search(r"data-clock>notified<", page) and "reference CNIL-9" in page

    response, report = await browser.get(f"{location}/report")
    assert response.status == 200
    assert "style-src 'unsafe-inline'" in response.headers["Content-Security-Policy"]
    assert "approximately 310" in report and "CNIL-9" in report
    entries = await api.resources.audit.entries()
    vias = {e["action"]: e.get("via") for e in entries if e.get("breach")}
    assert vias == {
        "breach.recorded": "dashboard",
        "breach.updated": "dashboard",
        "breach.authority_notified": "dashboard",
        "breach.report_issued": "dashboard",
    }


async def test_wrong_input_and_support_staff_get_a_clear_message(
    api: Api, browser_factory: BrowserFactory
) -> None:
    admin = await signed_in(api, browser_factory, "admin")
    csrf = await admin.csrf("/dashboard/breaches")
    response, _ = await admin.post(
        "/dashboard/breaches", {"csrf": csrf, **form(3, measures="", aware_at="")}
    )
    assert response.headers["Location"] == "/dashboard/breaches"
    page = html.unescape(await admin.follow(response))
    assert "flash-error" in page and "aware_at" in page

    response, _ = await admin.post("/dashboard/breaches", {"csrf": csrf, **form(80)})
    location = response.headers["Location"]
    response, _ = await admin.post(
        f"{location}/notification", {"csrf": csrf, "notified_at": local(1), "reference": "R"}
    )
    page = html.unescape(await admin.follow(response))
    assert "Art. 33(1) requires the reasons for the delay" in page
    assert re.search(r"data-clock>overdue<", page)

    support = await signed_in(api, browser_factory, "support")
    _, listing = await support.get("/dashboard/breaches")
    assert "Record a breach" not in listing and "overdue" in listing
    token = await support.csrf("/dashboard/breaches")
    response, _ = await support.post("/dashboard/breaches", {"csrf": token, **form(1)})
    page = html.unescape(await support.follow(response))
    assert "only an admin may change the breach register" in page
    response, page = await support.post("/dashboard/breaches", {"csrf": "forged", **form(1)})
    assert response.status == 403
    _, missing = await support.get("/dashboard/breaches/not-a-breach")
    assert "no breach not-a-breach" in html.unescape(missing)
