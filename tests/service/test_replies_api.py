"""Processors without an API, tried as a new user would: an ``email`` connector asks a real
local SMTP server's mailbox; the processor's reply through the link (a file for an export, a
statement for an erasure) completes the job; the file is in the verified archive and the
statement in the signed receipt. Bad replies are refused, saying why, and nothing is lost."""

from __future__ import annotations

import re
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from arq.constants import job_key_prefix, result_key_prefix
from playwright.async_api import expect

from connectors.byhand import NOT_ASKED_IN_DRY_RUN, EmailConnector, ManualConnector
from connectors.testing import MemoryConnector
from jobs.archive.verify import verify_archive
from jobs.handoff import Handoffs, ReplyLink, ReplyRefused, Statement
from jobs.kinds import build_pipelines
from jobs.model import utcnow
from jobs.search import JobQuery
from jobs.worker import chase_processors, sweep
from service.replies import MAX_PARTS
from tests.mailserver import Inbox, Received, mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_dashboard import chromium, chromium_page

__all__ = ["chromium"]  # the fixture, shared with the dashboard's tests

PAYSLIP = b"%PDF-1.4 payslip of alice, March\n" * 40
SUPPORT = "support@platform.example"


def connectors() -> dict[str, Any]:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    payroll = EmailConnector(
        "payroll",
        to="privacy@payroll.example",
        identifiers=["email"],
        reply_within_days=5,
        remind_every_days=2,
        category="economic",
        instructions="Include payslips and bank details.",
    )
    return {"crm": crm, "payroll": payroll}


async def start(api_factory: ApiFactory, port: int, **overrides: Any) -> Api:
    return await api_factory(
        connectors(),
        smtp_url=f"smtp://127.0.0.1:{port}",
        mail_from="Platform privacy <privacy@platform.example>",
        privacy_url="https://privacy.platform.example/{job}",
        public_url="https://handover.platform.example",
        support_email=SUPPORT,
        erasure_grace=timedelta(0),
        **overrides,
    )


def requests_to(inbox: Inbox, address: str) -> list[Received]:
    return [r for r in inbox.received if address in r.recipients]


async def request_mail(inbox: Inbox, count: int = 1) -> Received:
    """The ``count``-th message to the processor, once it has come."""
    found = await eventually(
        lambda: requests_to(inbox, "privacy@payroll.example"),
        until=lambda got: len(got) >= count,
        timeout=15,
        what=f"{count} message(s) to the processor",
    )
    return found[count - 1]


async def by_alice(api: Api, path: str, **body: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """``POST path`` by alice, signed in with her email address: her headers, and the job."""
    headers = api.email_auth()
    status, _, job = await api.request("POST", path, sub=None, headers=headers, json=body)
    assert status == 202, job
    return headers, job


def token_in(mail: Received) -> str:
    found = re.search(r"https://handover\.platform\.example/reply/(\S+)", mail.text())
    assert found is not None, mail.text()
    return found.group(1)


async def events(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, _, body = await api.request("GET", f"/v1/jobs/{job_id}/events", roles=("admin",))
    assert status == 200, body
    return body["events"]  # type: ignore[no-any-return]


async def reply(
    api: Api,
    token: str,
    statement: dict[str, Any],
    files: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("statement", orjson.dumps(statement).decode(), content_type="application/json")
    for name, content in files:
        form.add_field("file", content, filename=name, content_type="application/pdf")
    status, _, body = await api.request("POST", f"/v1/replies/{token}", sub=None, data=form)
    return status, body


async def test_an_export_asks_the_processor_by_email_and_its_file_lands_in_the_archive(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/exports")
        waiting = await api.wait(job["id"], "running")
        mail = await request_mail(inbox)
        waiting = await eventually(
            lambda: api.job(job["id"]),
            until=lambda j: j["connectors"]["payroll"]["status"] == "waiting_on_processor",
            timeout=15,
            what="the payroll run to wait on its processor",
        )
        assert waiting["status"] == "running" and waiting["deadline"] == "ok"
        # The request: what, about whom (only the identifier the processor needs), by when.
        words = mail.words()
        assert "GDPR Art. 15 (access) and Art. 20 (portability)" in words
        assert f"email: {ALICE_EMAIL}" in words and "alice\n" not in mail.text()
        assert "Include payslips and bank details." in words
        handoff = waiting["connectors"]["payroll"]["handoff"]
        assert handoff["reply_by"][:10] in words
        assert mail.message["Message-ID"].strip() == handoff["message_id"]
        asked = [e for e in await events(api, job["id"]) if e["type"] == "processor.asked"]
        assert asked[0]["message_id"] == handoff["message_id"]

        # Waiting holds no lease (so no worker: the run's lease goes when its task returns,
        # just after the run is recorded waiting), and the sweeper leaves the job be, however
        # long it waits.
        unit = f"|{job['id']}|{waiting['generation']}|"
        await eventually(
            lambda: api.resources.leases.any_live(unit),
            until=lambda live: not live,
            timeout=10,
            what="the payroll run's lease to be released",
        )
        ctx: dict[str, Any] = {"handover_pipelines": _pipelines(api)}
        for days in range(1, 4):
            assert await sweep(ctx, now=utcnow() + timedelta(days=days)) == 0

        token = token_in(mail)
        status, _, seen = await api.request("GET", f"/v1/replies/{token}", sub=None)
        assert status == 200, seen
        assert seen["asks_for"] == "files" and seen["identifiers"] == {"email": ALICE_EMAIL}
        page = await api.session.get(f"{api.base}/reply/{token}")
        assert page.status == 200 and "payroll" in await page.text()

        status, body = await reply(
            api, token, {"by": "Jane Doe, DPO, Payroll Ltd"}, [("payslip march.pdf", PAYSLIP)]
        )
        assert status == 200, body
        assert body["files"][0]["name"] == "payslip-march.pdf"
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        assert done["connectors"]["payroll"]["reply"]["by"] == "Jane Doe, DPO, Payroll Ltd"

        archive = await api.archive(job["id"], headers)
        assert archive.read("payroll/files/payslip-march.pdf") == PAYSLIP
        manifest = orjson.loads(archive.read("manifest.json"))
        listed = {f["path"]: f for f in manifest["files"]}
        assert listed["payroll/files/payslip-march.pdf"]["sha256"] == body["files"][0]["sha256"]
        payroll = next(c for c in manifest["connectors"] if c["name"] == "payroll")
        assert payroll["statement"]["given_by"] == "Jane Doe, DPO, Payroll Ltd"
        replied = [e for e in await events(api, job["id"]) if e["type"] == "processor.replied"]
        assert replied[0]["files"][0]["sha256"] == body["files"][0]["sha256"]

        # A second reply through the same link: refused, and the first stands.
        status, again = await reply(api, token, {"by": "someone"}, [("other.pdf", b"x")])
        assert status == 409 and again["type"].endswith("reply-used"), again


async def test_the_verified_archive_holds_the_processors_file(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/exports")
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])
        status, body = await reply(api, token, {"by": "Jane"}, [("payslip.pdf", PAYSLIP)])
        assert status == 200, body
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        _, answer, _ = await api.request(
            "GET", f"/v1/jobs/{job['id']}/download", sub=None, headers=headers
        )
        async with api.session.get(answer["Location"]) as response:
            data = await response.read()
        path = tmp_path / "export.zip"
        path.write_bytes(data)
        result = verify_archive(path, await api.published_keys())
        assert result.ok, result.problems
        assert zipfile.ZipFile(path).read("payroll/files/payslip.pdf") == PAYSLIP


async def test_an_erasure_completes_with_the_processors_statement_in_the_signed_receipt(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/erasures")
        status, _, _ = await api.request(
            "POST", f"/v1/jobs/{job['id']}/confirm", sub=None, headers=headers
        )
        assert status == 200
        mail = await request_mail(inbox)
        assert "Art. 17 (erasure), as Art. 19 requires of recipients" in mail.words()
        await _waiting(api, job["id"])
        token = token_in(mail)
        # Files are not what an erasure asks for: refused, nothing recorded.
        status, wrong = await reply(api, token, {"by": "Jane"}, [("dump.pdf", PAYSLIP)])
        assert status == 422 and wrong["type"].endswith("reply-unexpected"), wrong
        statement = {
            "by": "Jane Doe, DPO, Payroll Ltd",
            "lines": [
                {
                    "what": "payslips",
                    "outcome": "kept",
                    "records": 12,
                    "legal_basis": "tax law: 10 years",
                    "until": "2036-12-31T00:00:00Z",
                },
                {"what": "contact details", "outcome": "erased", "records": 1},
            ],
            "note": "bank details erased from the payment system as well",
        }
        status, _, body = await api.request(
            "POST", f"/v1/replies/{token}", sub=None, json=statement
        )
        assert status == 200, body
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        status, _, receipt = await api.request(
            "GET", f"/v1/jobs/{job['id']}/receipt", sub=None, headers=headers
        )
        assert status == 200, receipt
        payroll = next(c for c in receipt["connectors"] if c["connector"] == "payroll")
        assert payroll["asked"] is True
        assert payroll["statement"]["given_by"] == "Jane Doe, DPO, Payroll Ltd"
        assert payroll["verification"]["passed"] is None  # a statement, not checked by us
        kept = next(d for d in payroll["datasets"] if d["dataset"] == "payslips")
        assert kept["retained"] == 12 and kept["legal_basis"] == "tax law: 10 years"
        erased = next(d for d in payroll["datasets"] if d["dataset"] == "contact details")
        assert erased["deleted"] == 1
        assert (await api.verified(receipt, tmp_path / "receipt.json")).ok


async def test_reminders_then_escalation_to_support_when_the_processor_is_late(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        _, job = await by_alice(api, "/v1/exports")
        first = await request_mail(inbox)
        waiting = await _waiting(api, job["id"])
        # The wait counts towards the job's deadline: near it, the job is at risk.
        due_at = datetime.fromisoformat(waiting["due_at"])
        near = await api.resources.store.search(
            JobQuery(at_risk=True, limit=10), now=due_at - timedelta(days=1)
        )
        assert job["id"] in [j.id for j in near.jobs]
        ctx: dict[str, Any] = {"handover_pipelines": _pipelines(api)}
        asked_at = utcnow()
        assert await chase_processors(ctx, now=asked_at + timedelta(days=1)) == 0
        assert len(requests_to(inbox, "privacy@payroll.example")) == 1
        assert await chase_processors(ctx, now=asked_at + timedelta(days=2, hours=1)) == 0
        reminder = await request_mail(inbox, 2)
        assert reminder.message["Subject"].startswith("Reminder:")
        assert reminder.message["Message-ID"] != first.message["Message-ID"]
        assert token_in(reminder) != token_in(first)  # a fresh link, the same request
        reply_by = waiting["connectors"]["payroll"]["handoff"]["reply_by"]
        late = utcnow() + timedelta(days=5, hours=1)
        assert late.isoformat() > reply_by
        assert await chase_processors(ctx, now=late) == 1
        assert await chase_processors(ctx, now=late) == 0  # escalated once
        told = await eventually(
            lambda: requests_to(inbox, SUPPORT), until=bool, timeout=15, what="support told"
        )
        assert job["id"] in told[0].message["Subject"]
        timeline = await events(api, job["id"])
        overdue = [e for e in timeline if e["type"] == "processor.overdue"]
        assert len(overdue) == 1 and overdue[0]["support_told"] is True
        reminded = [e for e in timeline if e["type"] == "processor.reminded"]
        assert reminded[0]["message_id"] == reminder.message["Message-ID"].strip()
        # The first link still answers the request.
        status, body = await reply(api, token_in(first), {"by": "Jane"}, [("p.pdf", PAYSLIP)])
        assert status == 200, body


async def test_bad_replies_are_refused_saying_why_and_keep_nothing(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port, reply_max_bytes=1000)
        _, job = await by_alice(api, "/v1/exports")
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])

        status, _, forged = await api.request(
            "GET", f"/v1/replies/{token[:-1]}{'1' if token.endswith('0') else '0'}", sub=None
        )
        assert status == 403 and forged["type"].endswith("reply-invalid"), forged
        link = ReplyLink.parse(api.resources, token)
        expired = ReplyLink(link.job_id, link.connector, link.generation, link.nonce, 1_000)
        status, _, gone = await api.request(
            "GET", f"/v1/replies/{expired.token(api.resources)}", sub=None
        )
        assert status == 410 and gone["type"].endswith("reply-expired"), gone

        status, big = await reply(
            api, token, {"by": "Jane"}, [("a.pdf", b"x" * 600), ("b.pdf", b"y" * 600)]
        )
        assert status == 413 and big["type"].endswith("reply-too-large"), big
        prefix = api.resources.staging_prefix(job["id"]) + "replies/"
        assert [o async for o in api.resources.storage.list_objects(prefix)] == []
        status, empty = await reply(api, token, {"by": "Jane"})
        assert status == 422, empty
        status, both = await reply(api, token, {"by": "Jane", "nothing_held": True}, [("a", b"1")])
        assert status == 422, both
        status, _, odd = await api.request(
            "POST",
            f"/v1/replies/{token}",
            sub=None,
            data=b"hello",
            headers={"Content-Type": "text/plain"},
        )
        assert status == 415, odd
        still = await api.job(job["id"])
        assert still["connectors"]["payroll"]["status"] == "waiting_on_processor"
        assert still["connectors"]["payroll"]["reply"] is None

        status, _, _ = await api.request(
            "POST", f"/v1/jobs/{job['id']}/cancel", sub="support-1", roles=("support",)
        )
        assert status == 200
        status, late = await reply(api, token, {"by": "Jane", "nothing_held": True})
        assert status == 409 and late["type"].endswith("reply-ended"), late
        refused = [
            e for e in await events(api, job["id"]) if e["type"] == "processor.reply_refused"
        ]
        assert refused and refused[0]["connector"] == "payroll"


async def _waiting(api: Api, job_id: str) -> dict[str, Any]:
    return await eventually(
        lambda: api.job(job_id),
        until=lambda j: j["connectors"]["payroll"]["status"] == "waiting_on_processor",
        timeout=15,
        what="the payroll run to wait on its processor",
    )


def _pipelines(api: Api) -> Any:
    return build_pipelines(api.resources)


async def test_the_processors_person_replies_on_the_page_in_a_browser(
    api_factory: ApiFactory, chromium: Path, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/erasures")
        status, _, _ = await api.request(
            "POST", f"/v1/jobs/{job['id']}/confirm", sub=None, headers=headers
        )
        assert status == 200
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])
        problems: list[str] = []
        async with chromium_page(chromium, tmp_path, problems) as page:
            await page.goto(f"{api.base}/reply/{token}")
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Reply to a data-subject request"
            )
            await expect(page.get_by_text(ALICE_EMAIL)).to_be_visible()
            await page.get_by_label("Who answers").fill("Jane Doe, DPO")
            await page.get_by_label("what, line 1").fill("payslips")
            await page.get_by_label("outcome, line 1").select_option("kept")
            await page.get_by_label("records, line 1").fill("12")
            await page.get_by_label("legal basis, line 1").fill("tax law: 10 years")
            await page.get_by_label("kept until, line 1").fill("2036-12-31")
            await page.get_by_label("what, line 2").fill("bank details")
            await page.get_by_label("records, line 2").fill("1")
            await page.get_by_role("button", name="Send the reply").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Thank you: your reply is recorded"
            )
            await page.screenshot(path=str(tmp_path / "reply-page-done.png"), full_page=True)
            await page.goto(f"{api.base}/reply/{token}")  # the link worked once
            await expect(page.get_by_role("heading", level=1)).to_have_text("Already answered")
        # Chromium logs the spent link's 409 as a console error; nothing else went wrong.
        assert [p for p in problems if "409" not in p] == []
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        lines = done["connectors"]["payroll"]["reply"]["lines"]
        assert lines[0]["what"] == "payslips" and lines[0]["until"].startswith("2036-12-31")
        assert done["connectors"]["payroll"]["reply"]["via"] == "link"


async def test_a_manual_task_overdue_is_escalated_to_support_and_its_restriction_signed(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
        room = ManualConnector("archive-room", identifiers=["id"], reply_within_days=3)
        api = await api_factory(
            {"crm": crm, "archive-room": room},
            smtp_url=f"smtp://127.0.0.1:{port}",
            mail_from="Platform privacy <privacy@platform.example>",
            privacy_url="https://privacy.platform.example/{job}",
            support_email=SUPPORT,
        )
        status, _, job = await api.request("POST", "/v1/restrictions", json={})
        assert status == 202, job
        waiting = await eventually(
            lambda: api.job(job["id"]),
            until=lambda j: j["connectors"]["archive-room"]["status"] == "waiting_on_processor",
            timeout=15,
            what="the archive-room task to wait",
        )
        handoff = waiting["connectors"]["archive-room"]["handoff"]
        assert handoff["channel"] == "manual" and "message_id" not in handoff
        ctx: dict[str, Any] = {"handover_pipelines": _pipelines(api)}
        assert await chase_processors(ctx, now=utcnow() + timedelta(days=1)) == 0
        assert await chase_processors(ctx, now=utcnow() + timedelta(days=3, hours=1)) == 1
        told = await eventually(
            lambda: requests_to(inbox, SUPPORT), until=bool, timeout=15, what="support told"
        )
        assert "archive-room" in told[0].message["Subject"]
        assert [r for r in inbox.received if SUPPORT not in r.recipients] == []  # no reminders
        overdue = [e for e in await events(api, job["id"]) if e["type"] == "processor.overdue"]
        assert overdue[0]["support_told"] is True and "reminder" not in overdue[0]
        assert (await api.job(job["id"]))["connectors"]["archive-room"]["handoff"]["escalated_at"]

        stored = await api.resources.store.get(job["id"])
        nonce = (stored.connectors["archive-room"].handoff or {})["nonce"]
        link = Handoffs(api.resources).link(stored, "archive-room", nonce, utcnow())
        statement = {
            "by": "records office",
            "lines": [{"what": "paper files", "outcome": "restricted", "records": 3}],
        }
        status, _, body = await api.request(
            "POST", f"/v1/replies/{link.token(api.resources)}", sub=None, json=statement
        )
        assert status == 200, body
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
        assert status == 200, receipt
        entry = next(c for c in receipt["connectors"] if c["connector"] == "archive-room")
        assert entry["supported"] is True and entry["restricted"] == {"paper files": 3}
        assert entry["statement"]["given_by"] == "records office"
        assert (await api.verified(receipt, tmp_path / "receipt.json")).ok


async def test_an_objection_is_asked_by_purpose_and_answered_purpose_by_purpose(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers = api.email_auth()
        status, _, job = await api.request(
            "POST",
            "/v1/objections",
            sub=None,
            headers=headers,
            json={"purposes": ["direct_marketing"], "connectors": ["payroll"]},
        )
        assert status == 202, job
        mail = await request_mail(inbox)
        assert "Art. 21 (objection to processing)" in mail.words()
        assert "Purposes objected to: direct_marketing" in mail.words()
        await _waiting(api, job["id"])
        status, _, seen = await api.request("GET", f"/v1/replies/{token_in(mail)}", sub=None)
        assert status == 200, seen
        assert seen["kind"] == "objection" and seen["article"].startswith("Art. 21"), seen
        for line in (
            {"what": "profiling", "outcome": "stopped"},  # not a purpose objected to
            {"what": "direct_marketing", "outcome": "erased"},  # not an objection's outcome
        ):
            status, _, wrong = await api.request(
                "POST", f"/v1/replies/{token_in(mail)}", sub=None, json={"by": "J", "lines": [line]}
            )
            assert status == 422 and wrong["type"].endswith("reply-unexpected"), wrong
        statement = {
            "by": "Jane Doe, DPO",
            "lines": [{"what": "direct_marketing", "outcome": "stopped", "records": 2}],
        }
        status, _, body = await api.request(
            "POST", f"/v1/replies/{token_in(mail)}", sub=None, json=statement
        )
        assert status == 200, body
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        purposes = done["connectors"]["payroll"]["report"]["purposes"]
        assert purposes[0]["purpose"] == "direct_marketing" and purposes[0]["stopped"] == 2
        # The signed receipt presents the processor's word as its word, not as checked.
        status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
        assert status == 200, receipt
        entry = next(c for c in receipt["connectors"] if c["connector"] == "payroll")
        assert entry["verification"]["passed"] is None
        assert "cannot read this processor" in entry["verification"]["method"]
        assert entry["statement"]["given_by"] == "Jane Doe, DPO"
        assert entry["statement"]["lines"] == [
            {"what": "direct_marketing", "outcome": "stopped", "records": 2}
        ]
        assert entry["purposes"][0]["verified"] is None
        assert (await api.verified(receipt, tmp_path / "receipt.json")).ok


async def test_an_overlapping_reply_refused_keeps_the_accepted_replys_files(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/exports")
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])
        # A second reply through the same link is streaming its file (it passed the
        # "still waiting" check) while the first is taken.
        handoffs = Handoffs(api.resources)
        link = ReplyLink.parse(api.resources, token)
        await handoffs.open(link)
        late = handoffs.upload(link)

        async def other() -> AsyncIterator[bytes]:
            yield b"%PDF-1.4 someone else's file\n"

        await late.add("payslip.pdf", "application/pdf", other())
        status, body = await reply(api, token, {"by": "Jane"}, [("payslip.pdf", PAYSLIP)])
        assert status == 200, body
        with pytest.raises(ReplyRefused) as refused:
            await handoffs.record(link, Statement(by="someone"), late)
        assert refused.value.reason == "used"
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        archive = await api.archive(job["id"], headers)
        assert archive.read("payroll/files/payslip.pdf") == PAYSLIP
        manifest = orjson.loads(archive.read("manifest.json"))
        listed = {f["path"]: f for f in manifest["files"]}
        assert listed["payroll/files/payslip.pdf"]["sha256"] == body["files"][0]["sha256"]


async def test_a_dry_run_erasure_receipt_says_the_processor_was_not_asked(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/erasures", dry_run=True)
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        assert done["connectors"]["payroll"]["status"] == "not_asked"
        status, _, receipt = await api.request(
            "GET", f"/v1/jobs/{job['id']}/receipt", sub=None, headers=headers
        )
        assert status == 200, receipt
        payroll = next(c for c in receipt["connectors"] if c["connector"] == "payroll")
        assert payroll["asked"] is False
        assert payroll["not_asked_reason"] == NOT_ASKED_IN_DRY_RUN
        assert requests_to(inbox, "privacy@payroll.example") == []
        assert (await api.verified(receipt, tmp_path / "receipt.json")).ok


async def test_asking_the_subject_for_information_keeps_the_processors_request_open(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/exports")
        token = token_in(await request_mail(inbox))
        before = await _waiting(api, job["id"])
        status, _, asked = await api.request(
            "POST",
            f"/v1/jobs/{job['id']}/ask",
            sub="support-1",
            roles=("support",),
            json={"needs": "the customer number on your last invoice"},
        )
        assert status == 200, asked
        assert asked["generation"] == before["generation"] + 1
        payroll = asked["connectors"]["payroll"]
        assert payroll["status"] == "waiting_on_processor"
        assert payroll["handoff"] == before["connectors"]["payroll"]["handoff"]
        # The processor's link, sent before the question, still answers the request.
        status, body = await reply(api, token, {"by": "Jane"}, [("payslip.pdf", PAYSLIP)])
        assert status == 200, body
        # Nothing queued while the job waits for the subject: a task run meanwhile would
        # end at once, and its id, kept with its result, would refuse the resume's.
        resolve = f"resolve:{job['id']}:{asked['generation']}"
        redis = api.resources.redis
        assert not await redis.exists(job_key_prefix + resolve, result_key_prefix + resolve)
        status, _, resumed = await api.request(
            "POST", f"/v1/jobs/{job['id']}/resume", sub="support-1", roles=("support",)
        )
        assert status == 200, resumed
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        archive = await api.archive(job["id"], headers)
        assert archive.read("payroll/files/payslip.pdf") == PAYSLIP
        assert len(requests_to(inbox, "privacy@payroll.example")) == 1  # asked once


async def test_an_erasure_statement_takes_only_an_erasures_outcomes_and_dates_in_utc(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        headers, job = await by_alice(api, "/v1/erasures")
        status, _, _ = await api.request(
            "POST", f"/v1/jobs/{job['id']}/confirm", sub=None, headers=headers
        )
        assert status == 200
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])
        kept = {"what": "payslips", "outcome": "kept", "legal_basis": "tax law", "records": 3}
        for line, problem in (
            ({"what": "payslips", "outcome": "restricted"}, "reply-unexpected"),
            ({"what": "payslips", "outcome": "stopped"}, "reply-unexpected"),
            ({**kept, "until": "2036-12-31T10:00:00"}, "invalid-request"),  # without a zone
        ):
            status, _, wrong = await api.request(
                "POST", f"/v1/replies/{token}", sub=None, json={"by": "J", "lines": [line]}
            )
            assert status == 422 and wrong["type"].endswith(problem), wrong
        status, _, body = await api.request(
            "POST",
            f"/v1/replies/{token}",
            sub=None,
            json={"by": "J", "lines": [{**kept, "until": "2036-12-31"}]},
        )
        assert status == 200, body
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        status, _, receipt = await api.request(
            "GET", f"/v1/jobs/{job['id']}/receipt", sub=None, headers=headers
        )
        assert status == 200, receipt
        payroll = next(c for c in receipt["connectors"] if c["connector"] == "payroll")
        assert payroll["statement"]["lines"][0]["until"] == "2036-12-31T00:00:00Z"


async def test_a_multipart_reply_of_many_empty_parts_is_refused(api_factory: ApiFactory) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        status, _, job = await api.request(
            "POST", "/v1/exports", sub=None, headers=api.email_auth(), json={}
        )
        assert status == 202, job
        token = token_in(await request_mail(inbox))
        await _waiting(api, job["id"])
        many = aiohttp.FormData(default_to_multipart=True)
        for index in range(MAX_PARTS + 1):
            many.add_field(f"line-{index}-what", "")
        long_names = aiohttp.FormData(default_to_multipart=True)
        for index in range(100):
            long_names.add_field(f"line-{index}-{'x' * 1000}", "")
        for form in (many, long_names):
            status, _, body = await api.request("POST", f"/v1/replies/{token}", sub=None, data=form)
            assert status == 413, body
        still = await api.job(job["id"])
        assert still["connectors"]["payroll"]["status"] == "waiting_on_processor"


async def test_a_retry_answers_with_the_reply_given_and_asks_nobody_again(
    api_factory: ApiFactory,
) -> None:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    room = ManualConnector("archive-room", identifiers=["id"])
    api = await api_factory({"crm": crm, "archive-room": room})
    job = await api.export()
    waiting = await eventually(
        lambda: api.job(job["id"]),
        until=lambda j: j["connectors"]["archive-room"]["status"] == "waiting_on_processor",
        timeout=15,
        what="the archive-room task to wait",
    )
    handoff = waiting["connectors"]["archive-room"]["handoff"]
    # The reply is taken, but its file is gone from storage when the run reads it.
    handoffs = Handoffs(api.resources)
    stored = await api.resources.store.get(job["id"])
    link = handoffs.link(stored, "archive-room", handoff["nonce"], utcnow())
    upload = handoffs.upload(link)

    async def scan() -> AsyncIterator[bytes]:
        yield PAYSLIP

    await upload.add("scan.pdf", "application/pdf", scan())
    key = upload.files[0]["key"]
    await api.resources.storage.delete(key)
    replied = await handoffs.record(link, Statement(by="records office"), upload)
    await _pipelines(api)[replied.kind].enqueue_runs(replied)
    failed = await api.wait(job["id"])
    assert failed["status"] == "failed", failed
    assert failed["connectors"]["archive-room"]["status"] == "failed"

    await api.resources.storage.put(key, PAYSLIP, "application/pdf")
    status, _, retried = await api.request(
        "POST", f"/v1/jobs/{job['id']}/retry", sub="support-1", roles=("support",)
    )
    assert status == 200, retried
    again = retried["connectors"]["archive-room"]
    assert again["handoff"] == handoff and again["reply"]["by"] == "records office"
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    archive = await api.archive(job["id"], api.auth())
    assert archive.read("archive-room/files/scan.pdf") == PAYSLIP
    asked = [e for e in await events(api, job["id"]) if e["type"] == "processor.asked"]
    assert len(asked) == 1  # the person was not asked again
