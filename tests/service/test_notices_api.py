"""Notices through the API: a request is acknowledged and its completion told, by email, in
the subject's language, never with the archive's link; embedded mode files them in a
maildir that the dashboard shows (Debian's Chromium, as the dashboard's own tests)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from connectors.testing import MemoryConnector
from tests.mailserver import Inbox, mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_dashboard import chromium, chromium_page

__all__ = ["chromium"]  # the fixture, shared with the dashboard's tests

PRIVACY_URL = "https://privacy.platform.example/requests/{job}"


def crm() -> MemoryConnector:
    return MemoryConnector("crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob")})


def smtp(port: int) -> dict[str, Any]:
    return {
        "smtp_url": f"smtp://127.0.0.1:{port}",
        "mail_from": "Platform privacy <privacy@platform.example>",
        "privacy_url": PRIVACY_URL,
    }


def subject_headers(
    api: Api, *, locale: str | None = None, email: str | None = ALICE_EMAIL
) -> dict[str, str]:
    """A subject's token: a verified email and a locale claim, as an identity provider sends."""
    token = api.authority.issue("alice", ["subject"], 3600, email=email, locale=locale)
    return {"Authorization": f"Bearer {token}"}


async def timeline(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, _, body = await api.request("GET", f"/v1/jobs/{job_id}/events")
    assert status == 200, body
    return body["events"]  # type: ignore[no-any-return]


async def notices_of(api: Api, job_id: str, count: int) -> list[dict[str, Any]]:
    """The job's notice events once there are ``count`` of them."""
    return await eventually(
        lambda: timeline(api, job_id),
        until=lambda events: len([e for e in events if e["type"].startswith("notice.")]) >= count,
        timeout=15,
        what=f"{count} notice event(s) on job {job_id}",
    )


def arrived(inbox: Inbox, count: int) -> Callable[[], bool]:
    return lambda: len(inbox.received) >= count


async def test_an_exports_completion_emails_the_subject_in_their_language_without_the_archive(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        headers = subject_headers(api, locale="fr-BE")
        status, _, job = await api.request(
            "POST", "/v1/exports", sub=None, headers=headers, json={}
        )
        assert status == 202, job
        assert job["options"]["locale"] == "fr-BE"
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded"
        await eventually(arrived(inbox, 2), timeout=15, what="two messages")
        events = await notices_of(api, job["id"], 2)
        _, answer, _ = await api.request(
            "GET", f"/v1/jobs/{job['id']}/download", sub=None, headers=headers
        )
    assert [(r.message["X-Handover-Notice"], r.recipients) for r in inbox.received] == [
        ("acknowledged", [ALICE_EMAIL]),
        ("completed", [ALICE_EMAIL]),
    ]
    completed = inbox.about("completed")[0]
    assert completed.message["Subject"] == "Vos données sont prêtes"
    text, html = completed.text(), completed.html()
    assert "La copie de vos données personnelles" in completed.words()
    link = PRIVACY_URL.replace("{job}", job["id"])
    assert link in text and link in html
    download = answer["Location"]  # the archive's own link, as the API gives it to the subject
    for body in (text, html):
        assert download.split("?", 1)[0] not in body
        assert "/download" not in body and ".zip" not in body and "X-Amz" not in body
    assert inbox.about("acknowledged")[0].message["Subject"] == "Nous avons bien reçu votre demande"
    sent = [e for e in events if e["type"] == "notice.sent"]
    assert [(e["notice"], e["language"], e["actor"]) for e in sent] == [
        ("acknowledged", "fr", "notices"),
        ("completed", "fr", "notices"),
    ]
    assert sent[1]["message_id"] == completed.message["Message-ID"]
    assert all(ALICE_EMAIL not in str(e) for e in events)


async def test_the_request_chooses_the_language_and_an_erasure_asks_for_confirmation(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port), erasure_grace="1h")
        headers = subject_headers(api, locale="fr")
        status, _, erasure = await api.request(
            "POST", "/v1/erasures", sub=None, headers=headers, json={"locale": "nl-BE"}
        )
        assert status == 202, erasure
        assert erasure["status"] == "awaiting_confirmation"
        await eventually(arrived(inbox, 2), timeout=15, what="the erasure's notices")
        # Staff filing for a subject: the staff token's language is not the subject's.
        staff = api.authority.issue("sam", ["support"], 3600, locale="de")
        status, _, restriction = await api.request(
            "POST",
            "/v1/restrictions",
            sub=None,
            headers={"Authorization": f"Bearer {staff}"},
            json={
                "subject": "bob",
                "identifiers": {"email": "bob@example.com", "verified_by": "ID card at the desk"},
            },
        )
        assert status == 202, restriction
        await eventually(arrived(inbox, 3), timeout=15, what="the restriction's acknowledgement")
        events = await notices_of(api, erasure["id"], 2)
    asking = inbox.about("awaiting_confirmation")[0]
    assert asking.message["Subject"] == "Bevestig het wissen van uw gegevens"
    assert asking.message["Content-Language"] == "nl"
    assert "Er wordt niets gewist zolang u het niet bevestigt." in asking.words()
    assert "Meld u aan om te bevestigen of te annuleren" in asking.words()
    received, acknowledged = inbox.about("acknowledged")
    assert received.message["Content-Language"] == "nl"  # the erasure's, in its language
    assert acknowledged.recipients == ["bob@example.com"]
    assert acknowledged.message["Subject"] == "We received your request"
    assert "the restriction of the processing of your personal data" in acknowledged.words()
    assert sorted((e["type"], e["notice"], e["language"]) for e in events if "notice" in e) == [
        ("notice.sent", "acknowledged", "nl"),
        ("notice.sent", "awaiting_confirmation", "nl"),
    ]


async def test_no_verified_address_no_email_and_the_timeline_says_so(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        headers = subject_headers(api, email=None)
        status, _, job = await api.request(
            "POST", "/v1/exports", sub=None, headers=headers, json={}
        )
        assert status == 202, job
        await api.wait(job["id"])
        events = await notices_of(api, job["id"], 2)
    assert inbox.received == []
    assert [(e["type"], e["notice"], e["reason"]) for e in events if "notice" in e] == [
        ("notice.skipped", "acknowledged", "no email address of the subject is known"),
        ("notice.skipped", "completed", "no email address of the subject is known"),
    ]


async def test_a_malformed_locale_is_a_problem(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    status, _, problem = await api.request("POST", "/v1/exports", json={"locale": "fr;<x>"})
    assert status == 422, problem
    assert "locale" in str(problem)


async def test_embedded_mode_files_notices_in_a_maildir_that_the_dashboard_shows(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    api = await api_factory({"crm": crm()})  # no SMTP URL, the embedded store's settings
    headers = subject_headers(api, locale="de-AT")
    status, _, job = await api.request("POST", "/v1/exports", sub=None, headers=headers, json={})
    assert status == 202, job
    await api.wait(job["id"])
    events = await notices_of(api, job["id"], 2)
    assert {(e["notice"], e["via"]) for e in events if e["type"] == "notice.sent"} == {
        ("acknowledged", "maildir"),
        ("completed", "maildir"),
    }
    maildir = api.resources.settings.data_dir / "mail" / "new"
    assert len(list(maildir.iterdir())) == 2

    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(f"{api.base}/dashboard")
        await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("link", name="Mail to subjects").click()
        await expect(page).to_have_url(re.compile(r"/dashboard/mail$"))
        row = page.locator('tr[data-notice="completed"]')
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("Ihre Daten sind bereit")
        await expect(row).to_contain_text("a•••@example.com")
        await expect(row).not_to_contain_text(ALICE_EMAIL)
        await row.get_by_text("Ihre Daten sind bereit").click()
        await expect(row.locator("pre")).to_contain_text("Melden Sie sich an")
        await expect(row.locator("pre")).to_contain_text(f"/v1/jobs/{job['id']}")
        shot = tmp_path / "dashboard-mail.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        await row.get_by_role("link", name=job["id"]).click()
        await expect(page).to_have_url(re.compile(f"/dashboard/jobs/{job['id']}$"))
        await expect(page.locator('li[data-event="notice.sent"]')).to_have_count(2)
    assert problems == []
