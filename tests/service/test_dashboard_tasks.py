"""A ``manual`` connector's task, done by staff on the dashboard in Debian's Chromium: the
checklist ticked, a file uploaded, who did it and when recorded, and the job completed."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from playwright.async_api import expect

from connectors.byhand import ManualConnector
from connectors.testing import MemoryConnector
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory
from tests.service.test_dashboard import (
    Browser,
    BrowserFactory,
    browser_factory,
    chromium,
    chromium_page,
)

__all__ = ["browser_factory", "chromium"]  # the fixtures, shared with the dashboard's tests

STEPS = ["Search the paper archive", "Scan what is found"]


def archive_room() -> ManualConnector:
    return ManualConnector(
        "archive-room",
        checklist=STEPS,
        identifiers=["id"],
        category="identification",
        instructions="The cabinets in room 2.14, by customer number.",
    )


async def start(api_factory: ApiFactory) -> Api:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    return await api_factory(
        {"crm": crm, "archive-room": archive_room()}, erasure_grace=timedelta(0)
    )


async def waiting(api: Api, job_id: str) -> dict[str, Any]:
    return await eventually(
        lambda: api.job(job_id),
        until=lambda j: j["connectors"]["archive-room"]["status"] == "waiting_on_processor",
        timeout=15,
        what="the archive-room task to wait for staff",
    )


async def test_staff_do_a_manual_export_task_in_the_browser(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    api = await start(api_factory)
    job = await api.export()
    await waiting(api, job["id"])
    scan = tmp_path / "scan-contract.pdf"
    scan.write_bytes(b"%PDF-1.4 signed contract of alice\n" * 100)

    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(f"{api.base}/dashboard/jobs/{job['id']}")
        await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator('[data-handoff-for="archive-room"]')).to_contain_text(
            "a task for staff"
        )
        await page.get_by_role("link", name="Do the task").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("archive-room")
        await expect(page.locator('[data-identifier="id"]')).to_have_text("alice")
        await expect(page.get_by_text("room 2.14")).to_be_visible()
        # The checklist must be ticked: the browser refuses the form until it is.
        for step in STEPS:
            await page.get_by_label(step).check()
        await page.get_by_label("Files found").set_input_files(str(scan))
        await page.get_by_label("Note").fill("one folder, scanned")
        await page.screenshot(path=str(tmp_path / "dashboard-task.png"), full_page=True)
        await page.get_by_role("button", name="Record as done").click()
        await expect(page).to_have_url(re.compile(rf"/dashboard/jobs/{job['id']}$"))
        await expect(page.locator(".flash-ok")).to_contain_text("recorded as done by support-sam")
        await expect(page.locator("[data-job-status]")).to_have_text("succeeded", timeout=20_000)
        await expect(page.locator('[data-handoff-for="archive-room"]')).to_contain_text(
            "done by support-sam (dashboard)"
        )
        await page.screenshot(path=str(tmp_path / "dashboard-task-done.png"), full_page=True)
    assert problems == []

    done = await api.wait(job["id"])
    reply = done["connectors"]["archive-room"]["reply"]
    assert reply["by"] == "support-sam" and reply["via"] == "dashboard"
    assert reply["checklist"] == STEPS and reply["note"] == "one folder, scanned"
    archive = await api.archive(job["id"], api.auth())
    assert archive.read("archive-room/files/scan-contract.pdf") == scan.read_bytes()
    manifest = orjson.loads(archive.read("manifest.json"))
    room = next(c for c in manifest["connectors"] if c["name"] == "archive-room")
    assert room["statement"]["recorded_by"] == "support-sam"
    assert room["statement"]["checklist_done"] == STEPS
    status, _, body = await api.request("GET", f"/v1/jobs/{job['id']}/events", roles=("admin",))
    assert status == 200
    replied = [e for e in body["events"] if e["type"] == "processor.replied"]
    assert replied[0]["actor"] == "support-sam" and replied[0]["via"] == "dashboard"


async def test_a_manual_erasure_task_is_recorded_in_the_receipt_by_who_did_it(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    api = await start(api_factory)
    status, _, job = await api.request("POST", "/v1/erasures", json={})
    assert status == 202, job
    status, _, _ = await api.request("POST", f"/v1/jobs/{job['id']}/confirm")
    assert status == 200
    await waiting(api, job["id"])

    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(f"{api.base}/dashboard/jobs/{job['id']}/tasks/archive-room")
        await page.get_by_label("Bearer token").fill(api.token("admin-ann", "admin"))
        await page.get_by_role("button", name="Sign in").click()
        for step in STEPS:
            await page.get_by_label(step).check()
        await page.get_by_label("what, line 1").fill("signed contracts")
        await page.get_by_label("outcome, line 1").select_option("kept")
        await page.get_by_label("records, line 1").fill("2")
        await page.get_by_label("legal basis, line 1").fill("commercial code: 10 years")
        await page.get_by_label("kept until, line 1").fill("2036-12-31")
        await page.get_by_label("what, line 2").fill("marketing consent forms")
        await page.get_by_label("records, line 2").fill("1")
        await page.get_by_role("button", name="Record as done").click()
        await expect(page.locator(".flash-ok")).to_contain_text("recorded as done by admin-ann")
        await expect(page.locator("[data-job-status]")).to_have_text("succeeded", timeout=20_000)
    assert problems == []

    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200, receipt
    room = next(c for c in receipt["connectors"] if c["connector"] == "archive-room")
    assert room["statement"]["given_by"] == "admin-ann" and room["statement"]["by_hand"] == "manual"
    assert room["statement"]["via"] == "dashboard"
    assert room["statement"]["recorded_by"] == "admin-ann"
    assert room["statement"]["checklist_done"] == STEPS
    by_dataset = {d["dataset"]: d for d in room["datasets"]}
    assert by_dataset["signed contracts"]["retained"] == 2
    assert by_dataset["signed contracts"]["legal_basis"] == "commercial code: 10 years"
    assert by_dataset["marketing consent forms"]["deleted"] == 1


def task_form(ticked: list[str], by: str = "someone else") -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for step in ticked:
        form.add_field("checklist", step)
    form.add_field("nothing_held", "on")
    form.add_field("by", by)
    return form


async def post_task(
    browser: Browser, path: str, token: str, form: aiohttp.FormData
) -> tuple[int, str]:
    async with browser.session.post(
        f"{browser.api.base}{path}", params={"csrf": token}, data=form, allow_redirects=False
    ) as response:
        return response.status, response.headers.get("Location", "")


async def test_a_task_is_done_once_every_step_is_and_signed_by_who_recorded_it(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await start(api_factory)
    job = await api.export()
    await waiting(api, job["id"])
    browser = await browser_factory(api)
    await browser.sign_in("support-sam")
    path = f"/dashboard/jobs/{job['id']}/tasks/archive-room"
    _, page = await browser.get(path)
    found = re.search(r'tasks/archive-room\?csrf=([^"]+)"', page)
    assert found, page
    form_token = found.group(1)
    # The token in the form's URL opens that form only; the session's own token is not
    # taken from a URL, on this route or any other.
    session_token = await browser.csrf()
    assert form_token != session_token
    status, _ = await post_task(browser, path, session_token, task_form(STEPS))
    assert status == 403
    retry = f"/dashboard/jobs/{job['id']}/cancel"
    for token in (form_token, session_token):
        status, _ = await post_task(browser, retry, token, task_form(STEPS))
        assert status == 403
    # A step left unticked: refused, nothing recorded.
    status, location = await post_task(browser, path, form_token, task_form(STEPS[:1]))
    assert status == 303 and location.endswith(path)
    _, page = await browser.get(location)
    assert "not ticked: Scan what is found" in page
    assert (await api.job(job["id"]))["connectors"]["archive-room"]["reply"] is None
    status, location = await post_task(browser, path, form_token, task_form(STEPS))
    assert status == 303 and location.endswith(f"/dashboard/jobs/{job['id']}")
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    reply = done["connectors"]["archive-room"]["reply"]
    assert reply["by"] == "someone else" and reply["recorded_by"] == "support-sam"
    archive = await api.archive(job["id"], api.auth())
    manifest = orjson.loads(archive.read("manifest.json"))
    room = next(c for c in manifest["connectors"] if c["name"] == "archive-room")
    assert room["statement"]["given_by"] == "someone else"
    assert room["statement"]["recorded_by"] == "support-sam"
    assert room["statement"]["checklist_done"] == STEPS
