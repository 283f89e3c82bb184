"""The support dashboard: sign-in, CSRF, filters, escaping over HTTP; the whole story in Chromium.

The browser test drives Debian's ``chromium`` through Playwright (never a
downloaded browser). Without ``/usr/bin/chromium`` it fails, saying how to
install it; it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientSession, ClientTimeout, CookieJar
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect
from yarl import URL

from connectors.items import Item, Subject
from connectors.testing import MemoryConnector
from jobs.kinds import build_pipelines
from jobs.model import Job, JobKind, utcnow
from tests.factories import options_for
from tests.mailserver import mail_server
from tests.service.conftest import Api, ApiFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 15_000
SUPPORT = ("support",)


class GatedConnector(MemoryConnector):
    """A MemoryConnector whose exports wait for ``gate`` (open at first) before answering."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        await self.gate.wait()
        async for item in super().export(subject):
            yield item


def crm() -> MemoryConnector:
    return MemoryConnector(
        "crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob", "carol")}
    )


class Browser:
    """A plain HTTP client of the dashboard that keeps its cookies, as a browser does."""

    def __init__(self, api: Api, session: ClientSession) -> None:
        self.api = api
        self.session = session

    async def get(self, path: str) -> tuple[ClientResponse, str]:
        async with self.session.get(self.api.base + path, allow_redirects=False) as response:
            return response, await response.text()

    async def post(self, path: str, data: dict[str, str]) -> tuple[ClientResponse, str]:
        async with self.session.post(
            self.api.base + path, data=data, allow_redirects=False
        ) as response:
            return response, await response.text()

    async def login(
        self, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[ClientResponse, str]:
        """Post the sign-in form as a browser does: fetched first, its token sent back."""
        _, form = await self.get("/dashboard/login")
        found = re.search(r'name="csrf" value="([^"]+)"', form)
        assert found, form
        async with self.session.post(
            self.api.base + "/dashboard/login",
            data={"csrf": found.group(1), **data},
            headers=headers,
            allow_redirects=False,
        ) as response:
            return response, await response.text()

    def hold_session(self, sub: str = "s1", *roles: str) -> None:
        """Hold a session without signing in: its cookie is the staff token itself."""
        token = self.api.token(sub, *(roles or SUPPORT))
        self.session.cookie_jar.update_cookies({"handover_session": token}, URL(self.api.base))

    async def sign_in(self, sub: str = "s1", *roles: str) -> ClientResponse:
        response, _ = await self.login({"token": self.api.token(sub, *(roles or SUPPORT))})
        return response

    async def csrf(self, path: str = "/dashboard") -> str:
        _, page = await self.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page
        return found.group(1)

    async def follow(self, response: ClientResponse) -> str:
        """The page a redirect leads to."""
        assert response.status == 303, response.status
        _, page = await self.get(response.headers["Location"])
        return page


BrowserFactory = Callable[[Api], Awaitable[Browser]]


@pytest.fixture
async def browser_factory() -> AsyncIterator[BrowserFactory]:
    """Makes cookie-keeping HTTP clients, each its own browser session."""
    sessions: list[ClientSession] = []

    async def make(api: Api) -> Browser:
        sessions.append(ClientSession(cookie_jar=CookieJar(unsafe=True)))
        return Browser(api, sessions[-1])

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory({"crm": crm()})


async def test_sign_in_refuses_subject_bad_and_expired_tokens(
    api: Api, browser_factory: BrowserFactory
) -> None:
    browser = await browser_factory(api)
    response, page = await browser.login({"token": api.token("alice")})
    assert response.status == 403
    assert "subject&#39;s token" in page and "support or admin role" in page
    response, page = await browser.login({"token": "not-a-jwt"})
    assert response.status == 401 and "This token was refused" in page
    response, page = await browser.login({"token": api.token("s1", "support", ttl=-120)})
    assert response.status == 401 and "expired" in page
    assert "handover_session" not in response.cookies
    response, _ = await browser.get("/dashboard")
    assert response.status == 303 and response.headers["Location"].startswith("/dashboard/login")

    response = await browser.sign_in("s1", "support")
    assert response.status == 303 and response.headers["Location"] == "/dashboard"
    cookie = response.cookies["handover_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
    response, page = await browser.get("/dashboard")
    assert response.status == 200 and "Signed in as <strong>s1</strong>" in page


async def test_sign_in_returns_to_the_page_asked_for_and_sign_out_ends_it(
    api: Api, browser_factory: BrowserFactory
) -> None:
    browser = await browser_factory(api)
    token = api.token("root", "admin")
    for asked, landed in (
        ("/dashboard/jobs/01ABC", "/dashboard/jobs/01ABC"),
        ("/dashboard?status=failed", "/dashboard?status=failed"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("//evil.example/dashboard", "/dashboard"),
        ("/v1/jobs", "/dashboard"),
    ):
        response, _ = await browser.login({"token": token, "next": asked})
        assert response.status == 303 and response.headers["Location"] == landed, asked
    response, _ = await browser.post("/dashboard/logout", {"csrf": await browser.csrf()})
    page = await browser.follow(response)
    assert "Signed out." in page
    response, _ = await browser.get("/dashboard")
    assert response.status == 303 and response.headers["Location"].startswith("/dashboard/login")


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_sign_in_from_another_site_is_refused(
    api: Api, browser_factory: BrowserFactory, headers: dict[str, str]
) -> None:
    browser = await browser_factory(api)
    response, page = await browser.login({"token": api.token("s1", "support")}, headers)
    assert response.status == 403 and "Sign in from the dashboard itself" in page
    assert "handover_session" not in response.cookies
    response, _ = await browser.get("/dashboard")
    assert response.status == 303


async def test_sign_in_needs_the_token_of_a_form_this_browser_fetched(
    api: Api, browser_factory: BrowserFactory
) -> None:
    """Login CSRF: a page elsewhere posting the attacker's token must not sign the victim in."""
    victim = await browser_factory(api)
    attacker = await browser_factory(api)
    _, attackers_form = await attacker.get("/dashboard/login")
    attackers_csrf = re.findall(r'name="csrf" value="([^"]+)"', attackers_form)
    assert len(attackers_csrf) == 1
    token = api.token("mallory", "support")
    for data in ({"token": token}, {"token": token, "csrf": attackers_csrf[0]}):
        response, page = await victim.post("/dashboard/login", data)
        assert response.status == 403, data
        assert "sign-in form has expired or did not come from the dashboard" in page
        assert "handover_session" not in response.cookies
    response, _ = await victim.get("/dashboard")
    assert response.status == 303
    # The refusal hands this browser a fresh form, which signs in.
    response, _ = await victim.login({"token": api.token("s1", "support")})
    assert response.status == 303 and "handover_session" in response.cookies


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/dashboard"),
        ("GET", "/dashboard/jobs/01ABC"),
        ("GET", "/dashboard/jobs/01ABC/fragment"),
        ("GET", "/dashboard/jobs/01ABC/events"),
        ("POST", "/dashboard/jobs/01ABC/retry"),
        ("POST", "/dashboard/logout"),
    ],
)
async def test_pages_send_strangers_to_sign_in(api: Api, method: str, path: str) -> None:
    for cookie in (None, api.token("alice"), "garbage"):
        headers = {"Cookie": f"handover_session={cookie}"} if cookie else {}
        status, response_headers, _ = await api.request(method, path, sub=None, headers=headers)
        assert status == 303, (path, cookie)
        assert response_headers["Location"].startswith("/dashboard/login")
    _, headers, _ = await api.request("GET", "/dashboard/jobs/01ABC", sub=None)
    assert headers["Location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs%2F01ABC"


async def test_posts_without_the_sessions_csrf_token_are_refused(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    billing = MemoryConnector("billing", records={}, fail="billing API down")
    api = await api_factory({"crm": crm(), "billing": billing})
    job = await api.wait((await api.export())["id"])
    assert job["status"] == "failed"
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    other = await browser_factory(api)
    await other.sign_in("s2")
    others_token = await other.csrf()
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": others_token}):
        response, page = await browser.post(f"/dashboard/jobs/{job['id']}/retry", data)
        assert response.status == 403, data
        assert "did not come from the dashboard" in page
    _, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    assert "retried" not in [e["type"] for e in events["events"]]
    response, _ = await browser.post(
        f"/dashboard/jobs/{job['id']}/retry", {"csrf": await browser.csrf()}
    )
    assert response.status == 303


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)"', page)


async def make_overdue(api: Api, job_id: str) -> None:
    def past_due(job: Job) -> None:
        job.due_at = utcnow() - timedelta(days=1)

    await api.resources.store.modify(job_id, past_due, actor="test", event="backdated")


async def test_list_filters_counts_and_pages(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    billing = MemoryConnector("billing", records={"alice": {"invoices": [{"n": 1}]}})
    api = await api_factory({"crm": crm(), "billing": billing})
    done = await api.export(sub="alice")
    await api.wait(done["id"], sub="alice")
    billing.fail = "billing API down"
    failed = await api.export(sub="bob")
    await api.wait(failed["id"], sub="bob")
    only_crm = await api.export(sub="carol", connectors=["crm"])
    await api.wait(only_crm["id"], sub="carol")
    status, _, erasure = await api.request(
        "POST", "/v1/erasures", sub="carol", json={"connectors": ["crm"]}
    )
    assert status == 202 and erasure["status"] == "awaiting_confirmation"
    await make_overdue(api, erasure["id"])

    browser = await browser_factory(api)
    await browser.sign_in()
    _, page = await browser.get("/dashboard")
    assert listed(page) == [erasure["id"], only_crm["id"], failed["id"], done["id"]]
    _, page = await browser.get("/dashboard?status=failed")
    assert listed(page) == [failed["id"]]
    assert "billing: billing API down" in page  # the error excerpt
    _, page = await browser.get("/dashboard?kind=erasure")
    assert listed(page) == [erasure["id"]]
    assert 'class="badge deadline-overdue">overdue' in page
    _, page = await browser.get("/dashboard?subject=carol&kind=export")
    assert listed(page) == [only_crm["id"]]
    _, page = await browser.get("/dashboard?connector=billing")
    assert listed(page) == [failed["id"], done["id"]]
    _, page = await browser.get("/dashboard?overdue=true")
    assert listed(page) == [erasure["id"]]
    _, page = await browser.get("/dashboard?at_risk=true&status=")
    assert listed(page) == []
    assert "No request matches these filters." in page
    _, page = await browser.get("/dashboard")
    tiles = {
        name: int(count)
        for count, name in re.findall(r"<strong>(\d+)</strong><span>([a-z ]+)</span>", page)
    }
    assert tiles["succeeded"] == 2 and tiles["failed"] == 1 and tiles["overdue"] == 1
    assert tiles["awaiting confirmation"] == 1 and tiles["running"] == 0

    response, page = await browser.get("/dashboard?status=lost")
    assert response.status == 422 and "status" in page and "Traceback" not in page


async def test_paging_walks_every_job_once(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    created = [(await api.export(sub=f"user-{n}"))["id"] for n in range(30)]
    browser = await browser_factory(api)
    await browser.sign_in()
    seen: list[str] = []
    path: str | None = "/dashboard?status=queued"
    while path is not None:
        _, page = await browser.get(path)
        seen.extend(listed(page))
        found = re.search(r'<a href="([^"]+)" rel="next">', page)
        path = found.group(1).replace("&amp;", "&") if found else None
    assert seen == list(reversed(created))


OUR_SCRIPTS = [
    '<script src="/dashboard/static/live.js" defer>',
    '<script src="/dashboard/static/dashboard.js" defer>',
]


async def test_a_hostile_subject_id_is_escaped(api: Api, browser_factory: BrowserFactory) -> None:
    hostile = "<script>alert(1)</script>"
    status, _, job = await api.request(
        "POST", "/v1/exports", sub="s1", roles=SUPPORT, json={"subject": hostile}
    )
    assert status == 202, job
    browser = await browser_factory(api)
    await browser.sign_in()
    breakout = "%22%3E%3Cscript%3Ealert(2)%3C/script%3E"  # "><script>alert(2)</script>
    for path in (
        "/dashboard",
        f"/dashboard/jobs/{job['id']}",
        f"/dashboard/jobs/{job['id']}/fragment",
        f"/dashboard?subject={breakout}",
    ):
        response, page = await browser.get(path)
        assert response.status == 200
        assert "alert(" not in page.replace("&lt;script&gt;alert(", "")
        scripts = re.findall(r"<script[^>]*>", page)
        assert scripts == ([] if path.endswith("/fragment") else OUR_SCRIPTS)
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    _, page = await browser.get(f"/dashboard/jobs/{job['id']}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_actions_report_what_happened_as_flash_messages(
    api: Api, browser_factory: BrowserFactory
) -> None:
    job = await api.wait((await api.export())["id"])
    assert job["status"] == "succeeded"
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    csrf = await browser.csrf()
    response, _ = await browser.post(f"/dashboard/jobs/{job['id']}/retry", {"csrf": csrf})
    page = await browser.follow(response)
    assert "cannot go from succeeded to queued" in page
    assert 'class="flash flash-error"' in page and "Traceback" not in page
    _, again = await browser.get(f"/dashboard/jobs/{job['id']}")
    assert "cannot go from" not in again  # shown once

    response, _ = await browser.post(f"/dashboard/jobs/{job['id']}/cancel", {"csrf": csrf})
    assert "cannot go from succeeded to canceled" in await browser.follow(response)
    response, page = await browser.post("/dashboard/jobs/nope/retry", {"csrf": csrf})
    assert response.status == 404 and "no job nope" in page and "Traceback" not in page


async def test_extend_needs_a_reason_and_is_recorded(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await api.export()
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    path = f"/dashboard/jobs/{job['id']}"
    csrf = await browser.csrf(path)
    response, _ = await browser.post(f"{path}/extend", {"csrf": csrf, "months": "1"})
    assert "reason" in await browser.follow(response)
    response, _ = await browser.post(
        f"{path}/extend", {"csrf": csrf, "months": "3", "reason": "many processors"}
    )
    assert "may be extended by 2 months in all; 0 already used" in await browser.follow(response)
    response, _ = await browser.post(
        f"{path}/extend", {"csrf": csrf, "months": "2", "reason": "many processors involved"}
    )
    page = await browser.follow(response)
    assert "Deadline extended to" in page and "extended by 2 months" in page
    assert "many processors involved" in page and "by s1" in page
    assert "Extend deadline" not in page  # nothing left to extend by
    response, _ = await browser.post(f"{path}/cancel", {"csrf": csrf, "reason": "asked twice"})
    page = await browser.follow(response)
    assert "Canceled." in page and "asked twice" in page and "Cancel request" not in page
    # Staff actions from the dashboard land in the audit log like the API's.
    entries = await api.resources.audit.entries(10)
    actions = [(e["action"], e["actor"], e.get("via")) for e in entries if e["job"] == job["id"]]
    assert ("job.canceled", "s1", "dashboard") in actions
    assert ("job.extended", "s1", "dashboard") in actions
    assert (await api.resources.audit.verify()).ok


async def test_the_dashboard_streams_the_apis_events_each_as_a_message(
    api: Api, browser_factory: BrowserFactory
) -> None:
    job = await api.wait((await api.export())["id"])
    browser = await browser_factory(api)
    await browser.sign_in()
    response, stream = await browser.get(f"/dashboard/jobs/{job['id']}/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    async with api.session.get(
        f"{api.base}/v1/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream", **api.auth("alice")},
    ) as from_api:
        named = await from_api.text()
    # The API's events, unnamed: the page's one ``message`` listener sees every type.
    assert stream == re.sub(r"^event: .*\n", "", named, flags=re.MULTILINE)
    assert "\nevent:" not in stream and stream.count('"type":"connector.succeeded"') == 1
    ids = re.findall(r"^id: (\S+)$", stream, flags=re.MULTILINE)
    _, rest = await browser.get(f"/dashboard/jobs/{job['id']}/events?after={ids[1]}")
    assert re.findall(r"^id: (\S+)$", rest, flags=re.MULTILINE) == ids[2:]
    response, _ = await browser.get(f"/dashboard/jobs/{job['id']}/events?after=bogus")
    assert response.status == 400


async def test_the_dashboard_refuses_what_is_no_event_id_before_the_stream(
    api: Api, browser_factory: BrowserFactory
) -> None:
    job = await api.wait((await api.export())["id"])
    browser = await browser_factory(api)
    browser.hold_session()
    events = f"{api.base}/dashboard/jobs/{job['id']}/events"
    # Before the fix the stream answered 200, then hung on the error written into it.
    timeout = ClientTimeout(10)
    for after in ("1-1%0A", "%D9%A1-%D9%A1", "99999999999999999999-0", "1-1-1"):
        async with browser.session.get(f"{events}?after={after}", timeout=timeout) as response:
            assert response.status == 400, after
            assert response.headers["Content-Type"].startswith("text/html")
            assert "is not an event id" in await response.text()
    async with browser.session.get(
        events, headers={"Last-Event-ID": "1-x"}, timeout=timeout
    ) as response:
        assert response.status == 400


async def test_job_routes_answer_404_for_what_is_not_a_job_id(
    api: Api, browser_factory: BrowserFactory
) -> None:
    job = await api.wait((await api.export())["id"])
    browser = await browser_factory(api)
    browser.hold_session()
    csrf = await browser.csrf()
    for not_an_id in (f"{job['id']}:events", "rate", job["id"].lower()):
        for suffix in ("", "/fragment", "/events"):
            response, page = await browser.get(f"/dashboard/jobs/{not_an_id}{suffix}")
            assert response.status == 404, (not_an_id, suffix)
            assert f"no job {not_an_id}" in page
        response, page = await browser.post(f"/dashboard/jobs/{not_an_id}/retry", {"csrf": csrf})
        assert response.status == 404, not_an_id


@pytest.mark.parametrize(
    ("trusted_proxies", "secure"),
    [(("127.0.0.1",), True), (("10.0.0.0/8",), False), ((), False)],
)
async def test_cookies_are_secure_when_a_trusted_proxy_says_the_browser_used_https(
    api_factory: ApiFactory, trusted_proxies: tuple[str, ...], secure: bool
) -> None:
    api = await api_factory({"crm": crm()}, worker=False, trusted_proxies=trusted_proxies)
    forwarded = {"X-Forwarded-Proto": "https"}
    # api.session keeps no cookies from an IP address: each is sent back by hand, as
    # a browser on https would.
    async with api.session.get(f"{api.base}/dashboard/login", headers=forwarded) as response:
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
        login = response.cookies["handover_login"]
    assert found
    async with api.session.post(
        f"{api.base}/dashboard/login",
        data={"csrf": found.group(1), "token": api.token("s1", "support")},
        headers={**forwarded, "Cookie": f"handover_login={login.value}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        session = response.cookies["handover_session"]
    assert bool(login["secure"]) is secure and bool(session["secure"]) is secure
    assert session["httponly"] and session["samesite"] == "Strict"


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium; "
            "install it with `apt-get install -y chromium`"
        )
    return CHROMIUM


async def test_support_finds_a_failed_export_retries_it_and_watches_it_succeed(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    billing = GatedConnector(
        "billing",
        records={"alice": {"invoices": [{"n": 1}, {"n": 2}]}},
        fail="billing API down for maintenance (HTTP 503 from api.billing.example)",
    )
    api = await api_factory({"crm": crm(), "billing": billing})
    fine = await api.wait((await api.export(sub="bob", connectors=["crm"]))["id"], sub="bob")
    assert fine["status"] == "succeeded"
    job = await api.wait((await api.export(sub="alice"))["id"])
    assert job["status"] == "failed"

    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await sign_in_and_find(page, api, job["id"], fine["id"], tmp_path)
        await page.screenshot(path=str(tmp_path / "dashboard-failed-export.png"))
        await read_the_error_and_retry(page, billing)
        await watch_it_succeed(page, billing, job["id"])
        screenshot = tmp_path / "dashboard-retried-export.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
    assert problems == []
    assert screenshot.stat().st_size > 10_000
    done = await api.wait(job["id"])
    assert done["connectors"]["crm"]["attempts"] == 1
    assert done["connectors"]["billing"]["attempts"] == 2


@contextlib.asynccontextmanager
async def chromium_page(chromium: Path, tmp_path: Path, problems: list[str]) -> AsyncIterator[Page]:
    """A page in Debian's headless Chromium; page errors and console errors go to ``problems``."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            def console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    problems.append(f"console: {message.text} ({message.location['url']})")

            page.on("console", console)
            yield page
        finally:
            await context.close()


async def sign_in_and_find(page: Page, api: Api, job_id: str, fine_id: str, shots: Path) -> None:
    """Sign in with a support token, filter by failed, open the job."""
    await page.goto(f"{api.base}/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Signed in as")).to_contain_text("support-sam")
    await page.get_by_role("combobox", name="Status").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"status=failed"))
    rows = page.locator("tr[data-job-id]")
    await expect(rows).to_have_count(1)
    await expect(page.locator(f'tr[data-job-id="{fine_id}"]')).to_have_count(0)
    await expect(rows.first).to_contain_text("billing API down for maintenance")
    await page.screenshot(path=str(shots / "dashboard-failed-list.png"))
    await page.get_by_role("link", name=job_id).click()
    await expect(page).to_have_url(re.compile(f"/dashboard/jobs/{job_id}$"))


async def read_the_error_and_retry(page: Page, billing: GatedConnector) -> None:
    """Read the failing connector's error, then retry once the processor is back."""
    await expect(page.locator("[data-job-status]")).to_have_text("failed")
    error = page.locator('[data-error-for="billing"]')
    await expect(error).to_contain_text(
        "billing API down for maintenance (HTTP 503 from api.billing.example)"
    )
    await expect(error).to_contain_text("permanent")
    await expect(page.locator('tr[data-connector="crm"]')).to_have_attribute(
        "data-status", "succeeded"
    )
    await expect(page.locator('tr[data-connector="billing"]')).to_have_attribute(
        "data-status", "failed"
    )
    await page.evaluate("window.sameDocument = true")
    billing.fail = None  # the processor recovered...
    billing.gate.clear()  # ...and answers only when the test says so
    await page.get_by_role("button", name="Retry failed connectors").click()
    await expect(page.locator(".flash-ok")).to_contain_text("Retrying billing (attempt 2)")


async def watch_it_succeed(page: Page, billing: GatedConnector, job_id: str) -> None:
    """The page follows the retried job live, without reloading, until it succeeds."""
    status = page.locator("[data-job-status]")
    billing_row = page.locator('tr[data-connector="billing"]')
    await expect(status).to_have_text("running")
    await expect(billing_row).to_have_attribute("data-status", "running")
    await expect(page.locator('[data-error-for="billing"]')).to_have_count(0)
    billing.gate.set()
    await expect(status).to_have_text("succeeded")
    for name in ("crm", "billing"):
        row = page.locator(f'tr[data-connector="{name}"]')
        await expect(row).to_have_attribute("data-status", "succeeded")
        await expect(row.locator("progress")).to_have_attribute("value", "1")
    await expect(page.locator('tr[data-connector="billing"] td.num').first).to_have_text("2")
    await expect(page.get_by_text("2 of 2 finished")).to_be_visible()
    await expect(page.locator('li[data-event="retried"]')).to_contain_text("by support-sam")
    await expect(page.locator('li[data-event="succeeded"]')).to_have_count(1)
    await expect(page.locator('li[data-event="connector.succeeded"]')).to_have_count(2)
    await expect(page.get_by_role("button", name="Retry failed connectors")).to_have_count(0)
    assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
    assert page.url.endswith(f"/dashboard/jobs/{job_id}")


def newsletter() -> MemoryConnector:
    """A processor keyed by email: alice's and bob's are known to nobody."""
    keyed_by_email = MemoryConnector(
        "newsletter", records={s: {"subscriptions": [{"list": "news"}]} for s in ("alice", "bob")}
    )
    keyed_by_email.identifiers = frozenset({"email"})
    return keyed_by_email


async def test_going_without_a_processor_needs_a_reason_and_is_recorded(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm(), "newsletter": newsletter()})
    job = await api.wait((await api.export(sub="bob"))["id"], "needs_attention", sub="bob")
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    path = f"/dashboard/jobs/{job['id']}"
    _, page = await browser.get(path)
    assert "Not asked yet: newsletter" in page and "Go without" in page
    csrf = await browser.csrf(path)
    form = {"csrf": csrf, "connector": "newsletter"}
    response, _ = await browser.post(f"{path}/go-without", form)
    assert "reason" in await browser.follow(response)
    response, _ = await browser.post(f"{path}/go-without", {**form, "reason": "no account there"})
    assert "Going without newsletter: recorded as not asked." in await browser.follow(response)
    done = await api.wait(job["id"], sub="bob")
    assert done["status"] == "succeeded"
    assert done["connectors"]["newsletter"]["decision"]["reason"] == "no account there"
    entries = await api.resources.audit.entries(10)
    actions = [(e["action"], e["actor"], e.get("via")) for e in entries if e["job"] == job["id"]]
    assert ("job.not_asked", "s1", "dashboard") in actions


async def test_support_supplies_an_email_and_watches_the_processor_asked(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    api = await api_factory({"crm": crm(), "newsletter": newsletter()})
    job = await api.wait((await api.export())["id"], "needs_attention")
    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(f"{api.base}/dashboard")
        await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("combobox", name="Status").select_option("needs_attention")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("tr[data-job-id]")).to_have_count(1)
        await page.get_by_role("link", name=job["id"]).click()
        await expect(page.locator("[data-job-status]")).to_have_text("needs attention")
        await expect(page.locator('tr[data-connector="newsletter"]')).to_have_attribute(
            "data-status", "unidentified"
        )
        await expect(page.locator('[data-error-for="newsletter"]')).to_contain_text(
            "needs the subject's email"
        )
        await page.screenshot(path=str(tmp_path / "dashboard-needs-attention.png"))
        await page.get_by_label("Email").fill("alice@example.com")
        await page.get_by_label("Verified by").fill("passport seen on a video call")
        await page.get_by_role("button", name="Add identifiers").click()
        await expect(page.locator(".flash-ok")).to_contain_text("Identifiers added (email)")
        await expect(page.locator("[data-job-status]")).to_have_text("succeeded")
        await expect(page.locator('tr[data-connector="newsletter"]')).to_have_attribute(
            "data-status", "succeeded"
        )
        await expect(page.locator("[data-identity]")).to_have_text(
            "email: passport seen on a video call"
        )
        await expect(page.get_by_text("alice@example.com")).to_have_count(0)
        screenshot = tmp_path / "dashboard-identified.png"
        await page.screenshot(path=str(screenshot), full_page=True)
    assert problems == []
    done = await api.wait(job["id"])
    assert done["connectors"]["newsletter"]["records"] == 1
    assert done["connectors"]["crm"]["attempts"] == 1


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://privacy.platform.example", 303),  # HANDOVER_PUBLIC_URL, behind a proxy
        ("https://evil.example", 403),
        ("http://privacy.platform.example", 403),  # another scheme is another origin
    ],
)
async def test_behind_a_proxy_rewriting_host_the_public_origin_may_post(
    api_factory: ApiFactory, origin: str, status: int
) -> None:
    api = await api_factory(
        {"crm": crm()}, worker=False, public_url="https://privacy.platform.example"
    )
    async with api.session.get(f"{api.base}/dashboard/login") as response:
        found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
        login = response.cookies["handover_login"]
    assert found
    async with api.session.post(
        f"{api.base}/dashboard/login",
        data={"csrf": found.group(1), "token": api.token("s1", "support")},
        headers={"Origin": origin, "Cookie": f"handover_login={login.value}"},
        allow_redirects=False,
    ) as response:
        assert response.status == status


async def test_support_asks_resumes_and_refuses_from_the_job_page(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    _, _, erasure = await api.request("POST", "/v1/erasures", json={"connectors": ["crm"]})
    job_id = erasure["id"]
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    path = f"/dashboard/jobs/{job_id}"
    _, page = await browser.get(path)
    assert "GDPR: 1 month to answer, extendable by 2 months" in page
    assert "Ask for information" in page and "Refuse request" in page
    assert "GDPR: announced by" in page and "GDPR: the clock stops until the answer" in page
    csrf = await browser.csrf(path)

    response, _ = await browser.post(f"{path}/ask", {"csrf": csrf, "needs": ""})
    assert "needs" in await browser.follow(response)
    needs = "a copy of the invoice you mention"
    response, _ = await browser.post(f"{path}/ask", {"csrf": csrf, "needs": needs})
    page = await browser.follow(response)
    assert "The subject is asked for information; the deadline&#39;s clock is paused." in page
    assert "data-job-status>awaiting information" in page and needs in page
    assert 'class="badge deadline-paused" data-deadline>paused' in page
    assert "Resume request" in page and "Ask for information" not in page

    response, _ = await browser.post(f"{path}/resume", {"csrf": csrf})
    page = await browser.follow(response)
    assert "Resumed; awaiting confirmation, due" in page

    response, _ = await browser.post(f"{path}/refuse", {"csrf": csrf, "grounds": "excessive"})
    assert "reason" in await browser.follow(response)
    response, _ = await browser.post(
        f"{path}/refuse",
        {"csrf": csrf, "grounds": "excessive", "reason": "the fourth request this month"},
    )
    page = await browser.follow(response)
    authority = api.resources.settings.complaint_authority
    assert (
        f"Refused (excessive); the subject is told why and that they may complain to {authority}."
        in page
    )
    assert "data-job-status>refused" in page and "the fourth request this month" in page
    assert "Refuse request" not in page and "nothing more to do" in page
    entries = await api.resources.audit.entries(20)
    actions = [(e["action"], e["actor"], e.get("via")) for e in entries if e["job"] == job_id]
    for action in ("job.information_requested", "job.resumed", "job.refused"):
        assert (action, "s1", "dashboard") in actions


async def test_extend_is_offered_only_while_the_law_allows_it(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    settings = api.resources.settings
    erasures = build_pipelines(api.resources)[JobKind.ERASURE]
    late = erasures.new_job(
        JobKind.ERASURE,
        subject="alice",
        requested_by="alice",
        connectors=["crm"],
        options=options_for(JobKind.ERASURE),
    )
    late.created_at -= timedelta(days=40)
    late.due_at = settings.profile().due_at(late.created_at, settings.zone)
    await erasures.submit(late)
    _, _, lgpd = await api.request(
        "POST", "/v1/erasures", sub="bob", json={"connectors": ["crm"], "jurisdiction": "lgpd"}
    )
    _, _, ccpa = await api.request(
        "POST", "/v1/erasures", sub="carol", json={"connectors": ["crm"], "jurisdiction": "ccpa"}
    )
    browser = await browser_factory(api)
    await browser.sign_in("s1")

    path = f"/dashboard/jobs/{late.id}"
    _, page = await browser.get(path)
    assert "GDPR: an extension had to be announced by" in page and "Extend deadline" not in page
    response, _ = await browser.post(
        f"{path}/extend", {"csrf": await browser.csrf(path), "months": "1", "reason": "late"}
    )
    assert "within 1 month of receipt (the first period), which ended" in await browser.follow(
        response
    )
    _, page = await browser.get(f"/dashboard/jobs/{lgpd['id']}")
    assert "LGPD provides for no extension." in page and "Extend deadline" not in page
    path = f"/dashboard/jobs/{ccpa['id']}"
    _, page = await browser.get(path)
    assert 'name="days" type="number" min="1" max="45"' in page
    response, _ = await browser.post(
        f"{path}/extend", {"csrf": await browser.csrf(path), "days": "30", "reason": "many"}
    )
    page = await browser.follow(response)
    assert "Deadline extended to" in page and "extended by 30 days" in page
    assert "CCPA/CPRA allows one extension, and it was made." in page


async def test_support_asks_in_the_browser_and_watches_the_answer_resume_the_request(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    gated = GatedConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    api = await api_factory({"crm": gated})
    gated.gate.clear()
    job = await api.wait((await api.export())["id"], "running")
    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(f"{api.base}/dashboard/jobs/{job['id']}")
        await page.get_by_label("Bearer token").fill(api.token("support-sam", "support"))
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("[data-job-status]")).to_have_text("running")
        await page.evaluate("window.sameDocument = true")
        await page.get_by_label("Needed from the subject").fill("your customer number")
        await page.get_by_label("their answer resumes it").check()
        await page.get_by_role("button", name="Ask for information").click()
        await expect(page.locator(".flash-ok")).to_contain_text("the deadline's clock is paused")
        await expect(page.locator("[data-job-status]")).to_have_text("awaiting information")
        await expect(page.locator("[data-deadline]")).to_have_text("paused")
        await expect(page.locator("[data-information]")).to_contain_text("your customer number")
        # The subject answers through the API; the page follows without reloading.
        gated.gate.set()
        status, _, answered = await api.request(
            "POST", f"/v1/jobs/{job['id']}/information", json={"answer": "C-20931"}
        )
        assert status == 200, answered
        await expect(page.locator("[data-answer]")).to_contain_text("C-20931")
        await expect(page.locator("[data-job-status]")).to_have_text("succeeded")
        await expect(page.locator('li[data-event="information.received"]')).to_contain_text(
            "by alice"
        )
        await expect(page.locator('li[data-event="resumed"]')).to_have_count(1)
        assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
        await page.screenshot(path=str(tmp_path / "dashboard-information.png"), full_page=True)
    assert problems == []


async def test_support_decides_an_objection_from_the_job_page(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    crm = MemoryConnector("crm", objection_purposes=["analytics"])
    api = await api_factory({"crm": crm}, worker=False)
    _, _, objection = await api.request(
        "POST", "/v1/objections", json={"purposes": ["analytics"], "reason": "not for me"}
    )
    job_id = objection["id"]
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    path = f"/dashboard/jobs/{job_id}"
    _, page = await browser.get(path)
    assert "data-purposes>analytics" in page and "Decide objection" in page
    csrf = await browser.csrf(path)

    response, _ = await browser.post(f"{path}/decide", {"csrf": csrf, "upheld": "false"})
    assert "grounds" in await browser.follow(response)
    response, _ = await browser.post(
        f"{path}/decide",
        {"csrf": csrf, "upheld": "false", "grounds": "abuse detection needs these analytics"},
    )
    page = await browser.follow(response)
    assert "Objection rejected; the subject is told the grounds" in page
    assert "data-job-status>refused" in page and "abuse detection needs these analytics" in page
    assert "rejected by s1" in page and "Decide objection" not in page
    entries = await api.resources.audit.entries(20)
    actions = [(e["action"], e["actor"], e.get("via")) for e in entries if e["job"] == job_id]
    assert ("objection.rejected", "s1", "dashboard") in actions


async def test_support_approves_a_rectification_of_an_email_from_the_job_page(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": 1, "email": "alice@example.com"}]}},
        rectifiable={"contacts.email": "email"},
    )
    api = await api_factory({"crm": crm})
    fix = {"connector": "crm", "dataset": "contacts", "field": "email", "value": "a@new.example"}
    _, _, job = await api.request("POST", "/v1/rectifications", json={"changes": [fix]})
    assert job["status"] == "awaiting_confirmation", job
    browser = await browser_factory(api)
    await browser.sign_in("s1")
    path = f"/dashboard/jobs/{job['id']}"
    _, page = await browser.get(path)
    assert "data-fields>crm/contacts.email" in page and "Decide rectification" in page
    # Deciding staff see the new value they approve, only while it waits for them.
    shown = page.split("data-new-values", 1)[1].split("</table>", 1)[0]
    assert "contacts.email" in shown and "a@new.example" in shown
    assert page.count("a@new.example") == 1 and 'name="verified_by"' in page
    csrf = await browser.csrf(path)
    response, _ = await browser.post(f"{path}/decide", {"csrf": csrf, "upheld": "true"})
    assert "how the new value of the identity field was checked" in await browser.follow(response)
    assert (await api.job(job["id"], sub="s1", roles=SUPPORT))["status"] == (
        "awaiting_confirmation"
    )
    response, _ = await browser.post(
        f"{path}/decide",
        {"csrf": csrf, "upheld": "true", "verified_by": "mail to the new address answered"},
    )
    assert "Rectification upheld; it runs" in await browser.follow(response)
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    assert crm.records["alice"]["contacts"][0]["email"] == "a@new.example"
    _, page = await browser.get(path)
    assert "a@new.example" not in page and "Decide rectification" not in page


async def test_support_lifts_a_restriction_from_its_page_telling_the_subject_first(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory(
            {"crm": crm()},
            smtp_url=f"smtp://127.0.0.1:{port}",
            mail_from="Platform privacy <privacy@platform.example>",
            privacy_url="https://privacy.platform.example/requests/{job}",
        )
        _, _, restriction = await api.request("POST", "/v1/restrictions", json={})
        assert (await api.wait(restriction["id"]))["status"] == "succeeded"
        browser = await browser_factory(api)
        await browser.sign_in("s1")
        path = f"/dashboard/jobs/{restriction['id']}"
        _, page = await browser.get(path)
        assert "Lift restriction" in page
        csrf = await browser.csrf(path)
        response, _ = await browser.post(f"{path}/lift", {"csrf": csrf, "reason": "ok"})
        assert "reason" in await browser.follow(response)
        response, _ = await browser.post(
            f"{path}/lift",
            {
                "csrf": csrf,
                "reason": "your data was verified",
                "email": "alice@example.com",
                "verified_by": "the address on her account",
            },
        )
        page = await browser.follow(response)
        assert "The subject is told; job" in page and "data-lifted" in page
        lift_id = (await api.job(restriction["id"]))["options"]["lifted_by"]
        assert (await api.wait(lift_id, sub="s1", roles=SUPPORT))["status"] == "succeeded"
    assert [m.message["X-Handover-Notice"] for m in inbox.received].count(
        "restriction_lifting"
    ) == 1
