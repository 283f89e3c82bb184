"""Compelled disclosures over HTTP: the authority's archive through its one-time link, hidden
from the subject, and the subject told only when the notice rule allows."""

from __future__ import annotations

import asyncio
import io
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from jobs.archive.verify import verify_archive
from jobs.disclosures import DisclosureRegister
from jobs.kinds import build_pipelines
from jobs.model import InvalidRequest, JobKind, iso, utcnow
from jobs.notices import notice_state
from jobs.settings import Secret
from jobs.worker import tell_deferred_disclosures
from tests.jobs.test_webhooks import SECRET, Receiver, receiver
from tests.mailserver import mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_cli import handover, write_key
from tests.service.test_dashboard import BrowserFactory, browser_factory
from tests.service.test_erasure_api import Gated
from tests.service.test_lifecycle_api import received_days_ago
from tests.service.test_notices_api import crm, smtp, subject_headers
from tests.service.test_reports_api import period

__all__ = ["browser_factory", "receiver"]  # the fixtures, used below
ADMIN = ("admin",)
SUPPORT = ("support",)
ORDER: dict[str, Any] = {
    "subject": "alice",
    "authority": "Tribunal judiciaire de Paris",
    "order_reference": "RG 26/01234",
    "legal_basis": "Code de procédure pénale, art. 60-1",
    "connectors": ["crm"],
    "identifiers": {"email": ALICE_EMAIL, "verified_by": "the address on her account"},
}


async def disclose(api: Api, **body: Any) -> tuple[int, dict[str, str], Any]:
    return await api.request(
        "POST", "/v1/disclosures", sub="admin-1", roles=ADMIN, json={**ORDER, **body}
    )


async def fetch(api: Api, disclosure_id: str) -> tuple[int, Any]:
    """A new authority link, used: the answer's status and body, once the fetch is
    recorded (after the archive's last byte)."""
    path = f"/v1/disclosures/{disclosure_id}/link"
    status, _, link = await api.request("POST", path, sub="admin-1", roles=ADMIN)
    assert status == 200, link
    where = urlsplit(link["url"])
    status, _, body = await api.request("GET", f"{where.path}?{where.query}", sub=None)
    if status == 200:
        await recorded(api, disclosure_id)
    return status, body


async def recorded(api: Api, disclosure_id: str) -> dict[str, Any]:
    """The disclosure once its last link's use is recorded."""
    shown: dict[str, Any] = await eventually(
        lambda: show(api, disclosure_id),
        until=lambda shown: shown["links"][-1]["used_at"] is not None,
        timeout=10,
        what="the fetch to be recorded",
    )
    return shown


async def show(api: Api, disclosure_id: str) -> dict[str, Any]:
    status, _, shown = await api.request(
        "GET", f"/v1/disclosures/{disclosure_id}", sub="s1", roles=SUPPORT
    )
    assert status == 200, shown
    return shown  # type: ignore[no-any-return]


def deferred(until: datetime) -> dict[str, Any]:
    return {
        "notice": "deferred",
        "notice_until": iso(until),
        "notice_reason": "telling her would prejudice the investigation",
    }


async def manifest_of(api: Api, job_id: str) -> dict[str, Any]:
    """The export's manifest, with its ``index.html`` beside it under ``"index"``."""
    archive = await api.archive(job_id, subject_headers(api))
    manifest: dict[str, Any] = orjson.loads(archive.read("manifest.json"))
    return {**manifest, "index": archive.read("index.html").decode()}


async def test_a_deferred_disclosure_reaches_the_authority_once_and_the_subject_when_due(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        until = utcnow() + timedelta(days=30)
        status, headers, disclosure = await disclose(api, **deferred(until))
        assert status == 202, disclosure
        disclosure_id = disclosure["id"]
        assert headers["Location"] == f"/v1/disclosures/{disclosure_id}"
        assert disclosure["rule"] == "deferred" and disclosure["told_at"] is None
        job = await api.wait(disclosure_id, sub="admin-1", roles=ADMIN)
        assert job["status"] == "succeeded" and job["kind"] == "disclosure", job
        assert job["links"]["download"] is None
        # The job's own notices never go to the subject: its completion is skipped, and why.
        events = (
            await api.request("GET", f"/v1/jobs/{disclosure_id}/events", sub="admin-1", roles=ADMIN)
        )[2]["events"]
        notices = {e["notice"]: e for e in events if e["type"].startswith("notice.")}
        assert list(notices) == ["completed"] and notices["completed"]["type"] == "notice.skipped"
        assert "told only as its notice rule says" in notices["completed"]["reason"]

        # The subject sees nothing of it: not the job, not in her list, not its archive.
        alice = subject_headers(api)
        for path in (f"/v1/jobs/{disclosure_id}", f"/v1/jobs/{disclosure_id}/download"):
            status, _, body = await api.request("GET", path, sub=None, headers=alice)
            assert status == 404, body
        status, _, listed = await api.request("GET", "/v1/jobs", sub=None, headers=alice)
        assert status == 200 and listed["jobs"] == [], listed
        found = await api.request(
            "GET", "/v1/jobs?kind=disclosure&subject=alice", sub="s1", roles=SUPPORT
        )
        assert [j["id"] for j in found[2]["jobs"]] == [disclosure_id]
        # Nor staff through the subject's download.
        status, _, body = await api.request(
            "GET", f"/v1/jobs/{disclosure_id}/download", sub="admin-1", roles=ADMIN
        )
        assert status == 403 and "one-time link" in body["detail"], body

        # The authority's link works once.
        path = f"/v1/disclosures/{disclosure_id}/link"
        status, _, link = await api.request("POST", path, sub="admin-1", roles=ADMIN)
        assert status == 200, link
        where = urlsplit(link["url"])
        fetch = f"{where.path}?{where.query}"
        status, answer, body = await api.request("GET", fetch, sub=None)
        assert status == 200, body
        await recorded(api, disclosure_id)
        assert answer["Content-Type"] == "application/zip"
        saved = tmp_path / "disclosure.zip"
        saved.write_bytes(body)
        assert verify_archive(saved, [api.resources.signer.public_key]).ok
        manifest = orjson.loads(zipfile.ZipFile(io.BytesIO(body)).read("manifest.json"))
        assert manifest["job"]["kind"] == "disclosure"
        assert manifest["recipient"] == {
            "authority": ORDER["authority"],
            "reference": ORDER["order_reference"],
            "legal_basis": ORDER["legal_basis"],
        }
        status, _, again = await api.request("GET", fetch, sub=None)
        assert status == 410 and again["type"].endswith("disclosure-link-used"), again
        forged = fetch[:-4] + ("0000" if not fetch.endswith("0000") else "1111")
        assert (await api.request("GET", forged, sub=None))[0] == 403

        # While deferred: no notice, and her own export does not list the recipient yet.
        export = await api.export(sub="alice")
        await api.wait(export["id"])
        before = await manifest_of(api, export["id"])
        assert "disclosures" not in before and ORDER["authority"] not in before["index"]
        ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(api.resources)}
        assert await tell_deferred_disclosures(ctx, now=until - timedelta(minutes=1)) == 0
        assert inbox.about("disclosed") == []

        # The deferral ends: told once, in her inbox, and listed in her next export.
        assert await tell_deferred_disclosures(ctx, now=until + timedelta(minutes=1)) == 1
        assert await tell_deferred_disclosures(ctx, now=until + timedelta(minutes=2)) == 0
        await eventually(
            lambda: inbox.about("disclosed"), until=bool, timeout=15, what="the notice"
        )
        told = inbox.about("disclosed")
        assert len(told) == 1 and told[0].recipients == [ALICE_EMAIL]
        assert ORDER["authority"] in told[0].words()
        shown = (
            await api.request("GET", f"/v1/disclosures/{disclosure_id}", sub="s1", roles=SUPPORT)
        )[2]
        assert shown["told"] == "queued" and shown["links"][0]["used_at"] is not None
        assert "nonce" not in shown["links"][0]
    later = await api.export(sub="alice")
    await api.wait(later["id"])
    after = await manifest_of(api, later["id"])
    assert [entry["recipient"] for entry in after["disclosures"]] == [ORDER["authority"]]
    assert "Disclosed to authorities" in after["index"]
    assert f"<strong>{ORDER['authority']}</strong>" in after["index"]

    actions = [entry["action"] for entry in await api.resources.audit.entries(500)]
    for action in (
        "disclosure.requested",
        "disclosure.link_issued",
        "disclosure.archive_fetched",
        "disclosure.notice_queued",
    ):
        assert action in actions, action


async def test_a_deferral_is_extended_only_with_a_new_reason_and_a_later_date(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()})
    until = utcnow() + timedelta(days=30)
    status, _, disclosure = await disclose(api, **deferred(until))
    assert status == 202, disclosure
    path = f"/v1/disclosures/{disclosure['id']}/extend"
    later = iso(until + timedelta(days=60))

    async def extend(**body: Any) -> tuple[int, Any]:
        status, _, answer = await api.request("POST", path, sub="admin-1", roles=ADMIN, json=body)
        return status, answer

    status, answer = await extend(until=later, reason=deferred(until)["notice_reason"])
    assert status == 422 and answer["errors"][0]["field"] == "reason", answer
    status, answer = await extend(until=iso(until - timedelta(days=1)), reason="a new order")
    assert status == 422 and answer["errors"][0]["field"] == "until", answer
    status, answer = await extend(until=later, reason="the judge renewed the secrecy order")
    assert status == 200, answer
    assert [d["reason"] for d in answer["deferrals"]] == [
        deferred(until)["notice_reason"],
        "the judge renewed the secrecy order",
    ]
    assert answer["deferred_until"].startswith(later[:19])
    status, _, answer = await api.request(
        "POST", path, sub="s1", roles=SUPPORT, json={"until": later, "reason": "x" * 5}
    )
    assert status == 403, answer
    ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(api.resources)}
    assert await tell_deferred_disclosures(ctx, now=until + timedelta(days=1)) == 0


async def test_a_never_rule_never_tells_and_never_lists(api_factory: ApiFactory) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        status, _, disclosure = await disclose(
            api, notice="never", notice_reason="the law forbids telling the subject"
        )
        assert status == 202, disclosure
        disclosure_id = disclosure["id"]
        await api.wait(disclosure_id, sub="admin-1", roles=ADMIN)
        assert (await fetch(api, disclosure_id))[0] == 200
        ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(api.resources)}
        assert await tell_deferred_disclosures(ctx, now=utcnow() + timedelta(days=3650)) == 0
        status, _, export = await api.request(
            "POST", "/v1/exports", sub=None, headers=subject_headers(api), json={}
        )
        assert status == 202, export
        await api.wait(export["id"])
        manifest = await manifest_of(api, export["id"])
        assert "disclosures" not in manifest and ORDER["authority"] not in manifest["index"]
        # The export's own notices reached her inbox: the server works, and told nothing else.
        await eventually(
            lambda: inbox.about("completed"), until=bool, timeout=15, what="the export's notice"
        )
        assert inbox.about("disclosed") == []
        events = (
            await api.request("GET", f"/v1/jobs/{disclosure_id}/events", sub="admin-1", roles=ADMIN)
        )[2]["events"]
        assert not [e for e in events if e.get("notice") == "disclosed"], events
        job = await api.resources.store.get(disclosure_id)
        assert await notice_state(api.resources, job, "disclosed") is None
        shown = await show(api, disclosure_id)
        assert shown["told"] is None and shown["told_at"] is None, shown


async def test_bad_orders_get_clear_problems(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    past = iso(utcnow() - timedelta(days=1))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"notice": "now", "connectors": ["nowhere"]}, "connectors"),
        ({"notice": "deferred", "notice_until": past, "notice_reason": "secrecy"}, "notice_until"),
        ({"notice": "deferred", "notice_reason": "secrecy"}, "notice_until"),
        (
            {"notice": "deferred", "notice_until": iso(utcnow() + timedelta(days=9))},
            "notice_reason",
        ),
        ({"notice": "never"}, "notice_reason"),
        ({"notice": "now", "notice_until": iso(utcnow() + timedelta(days=9))}, "notice_until"),
        ({"notice": "sometime"}, "notice"),
    ]
    for body, field in cases:
        status, headers, problem = await disclose(api, **body)
        assert status == 422, (body, problem)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert field in {e["field"] for e in problem["errors"]}, (body, problem)
    status, _, problem = await api.request(
        "POST", "/v1/disclosures", sub="s1", roles=SUPPORT, json={**ORDER, "notice": "now"}
    )
    assert status == 403, problem
    missing = "/v1/disclosures/01JD2Z6S41ABCDEFGHJKMNPQRS"
    assert (await api.request("GET", missing, sub="s1", roles=SUPPORT))[0] == 404


async def test_the_command_line_records_extends_and_links(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    api = await api_factory({"crm": crm()})
    env = {"HANDOVER_URL": api.base, "HANDOVER_TOKEN": api.token("admin-1", "admin")}

    def run(*args: str) -> Any:
        return handover("disclosure", *args, env=env)

    until = iso(utcnow() + timedelta(days=30))
    order = ("--authority", "A court", "--reference", "R-1", "--legal-basis", "art. 60-1")
    refused = await asyncio.to_thread(run, "record", "alice", *order, "--notice", "never")
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.startswith("handover: ") and "notice_reason" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    recorded = await asyncio.to_thread(
        run,
        "record",
        "alice",
        *order,
        "--notice",
        "deferred",
        "--notice-until",
        until,
        "--notice-reason",
        "secrecy of the investigation",
        "--connector",
        "crm",
    )
    assert recorded.returncode == 0, recorded.stderr
    disclosure_id = recorded.stdout.split()[1]
    assert "deferred until" in recorded.stdout
    await api.wait(disclosure_id, sub="admin-1", roles=ADMIN)
    later = iso(utcnow() + timedelta(days=90))
    extended = await asyncio.to_thread(
        run, "extend", disclosure_id, "--until", later, "--reason", "the order was renewed"
    )
    assert extended.returncode == 0, extended.stderr
    assert extended.stdout.count("deferred until") == 2
    linked = await asyncio.to_thread(run, "link", disclosure_id, "--hours", "2")
    assert linked.returncode == 0, linked.stderr
    async with api.session.get(linked.stdout.strip()) as response:
        assert response.status == 200
        archive = tmp_path / "disclosure.zip"
        archive.write_bytes(await response.read())
    key = write_key(tmp_path, api.resources.signer)
    verified = await asyncio.to_thread(handover, "verify", str(archive), "--key", str(key))
    assert verified.returncode == 0, verified.stderr
    shown = await asyncio.to_thread(run, "show", disclosure_id)
    assert ", used " in shown.stdout
    assert "to A court, order R-1 (art. 60-1)" in shown.stdout


async def test_support_finds_a_disclosure_on_the_dashboard(
    api_factory: ApiFactory, browser_factory: BrowserFactory
) -> None:
    api = await api_factory({"crm": crm()})
    status, _, disclosure = await disclose(api, notice="now")
    assert status == 202, disclosure
    browser = await browser_factory(api)
    await browser.sign_in("s1", "support")
    response, listing = await browser.get("/dashboard?kind=disclosure")
    assert response.status == 200 and disclosure["id"] in listing
    response, page = await browser.get(f"/dashboard/jobs/{disclosure['id']}")
    assert response.status == 200
    assert f"{ORDER['authority']}, order {ORDER['order_reference']}" in page
    assert "the subject's notice: now" in page


async def test_a_subject_without_an_address_is_recorded_as_not_told(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        body = {k: v for k, v in ORDER.items() if k != "identifiers"}
        status, _, disclosure = await api.request(
            "POST", "/v1/disclosures", sub="admin-1", roles=ADMIN, json={**body, "notice": "now"}
        )
        assert status == 202, disclosure
        await api.wait(disclosure["id"], sub="admin-1", roles=ADMIN)
        assert (await fetch(api, disclosure["id"]))[0] == 200
        shown = await show(api, disclosure["id"])
        assert shown["told"] == "not sent: skipped", shown
        assert inbox.received == []
    events = (
        await api.request("GET", f"/v1/jobs/{disclosure['id']}/events", sub="s1", roles=SUPPORT)
    )[2]["events"]
    skipped = [e for e in events if e["type"] == "notice.skipped" and e["notice"] == "disclosed"]
    assert len(skipped) == 1 and "no email address" in skipped[0]["reason"]
    actions = [entry["action"] for entry in await api.resources.audit.entries(100)]
    assert "disclosure.notice_not_sent" in actions and "disclosure.notice_queued" not in actions


async def test_a_running_disclosure_never_holds_back_nor_shows_on_the_subjects_own_export(
    api_factory: ApiFactory,
) -> None:
    gate = asyncio.Event()
    held = Gated("held", gate, records={"alice": {"notes": [{"id": 1}]}})
    api = await api_factory({"crm": crm(), "held": held})
    status, _, disclosure = await disclose(
        api, connectors=["held"], notice="never", notice_reason="the law forbids telling her"
    )
    assert status == 202, disclosure
    await api.wait(disclosure["id"], "running", sub="admin-1", roles=ADMIN)
    try:
        export = await api.export(sub="alice", connectors=["crm"])
        done = await api.wait(export["id"])
        assert done["status"] == "succeeded", done
        assert (await api.job(disclosure["id"], sub="admin-1", roles=ADMIN))["status"] == "running"
    finally:
        gate.set()
    status, _, body = await api.request("GET", f"/v1/jobs/{export['id']}/events")
    assert status == 200, body
    assert "waiting" not in [event["type"] for event in body["events"]]
    assert disclosure["id"] not in orjson.dumps(body).decode()
    assert (await api.wait(disclosure["id"], sub="admin-1", roles=ADMIN))["status"] == "succeeded"


async def test_a_canceled_disclosure_is_never_told_nor_listed(api_factory: ApiFactory) -> None:
    gate = asyncio.Event()
    held = Gated("held", gate, records={"alice": {"notes": [{"id": 1}]}})
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm(), "held": held}, **smtp(port))
        status, _, disclosure = await disclose(api, connectors=["held"], notice="now")
        assert status == 202, disclosure
        assert disclosure["told"] is None and disclosure["fetched_at"] is None, disclosure
        disclosure_id = disclosure["id"]
        await api.wait(disclosure_id, "running", sub="admin-1", roles=ADMIN)
        status, _, body = await api.request(
            "POST", f"/v1/jobs/{disclosure_id}/cancel", sub="admin-1", roles=ADMIN
        )
        gate.set()
        assert status in (200, 202), body
        assert (await api.wait(disclosure_id, sub="admin-1", roles=ADMIN))["status"] == "canceled"
        status, _, refused = await api.request(
            "POST", f"/v1/disclosures/{disclosure_id}/link", sub="admin-1", roles=ADMIN
        )
        assert status == 422, refused
        ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(api.resources)}
        assert await tell_deferred_disclosures(ctx, now=utcnow() + timedelta(days=1)) == 0
        export = await api.export(sub="alice", connectors=["crm"])
        await api.wait(export["id"])
        manifest = await manifest_of(api, export["id"])
        assert "disclosures" not in manifest and ORDER["authority"] not in manifest["index"]
        shown = await show(api, disclosure_id)
        assert shown["told"] is None and shown["told_at"] is None, shown
        assert inbox.about("disclosed") == []


async def test_the_link_is_spent_and_the_subject_told_only_once_the_archive_was_sent(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        status, _, disclosure = await disclose(api, notice="now")
        assert status == 202, disclosure
        disclosure_id = disclosure["id"]
        await api.wait(disclosure_id, sub="admin-1", roles=ADMIN)
        assert (await show(api, disclosure_id))["told"] is None
        job = await api.resources.store.get(disclosure_id)
        assert job.result is not None
        key = job.result.key
        kept = await api.resources.storage.get(key)
        await api.resources.storage.delete(key)
        path = f"/v1/disclosures/{disclosure_id}/link"
        status, _, link = await api.request("POST", path, sub="admin-1", roles=ADMIN)
        assert status == 200, link
        where = urlsplit(link["url"])
        fetch_path = f"{where.path}?{where.query}"
        status, _, problem = await api.request("GET", fetch_path, sub=None)
        assert status == 410 and problem["type"].endswith("gone"), problem
        shown = await show(api, disclosure_id)
        assert shown["links"][0]["used_at"] is None and shown["fetched_at"] is None, shown
        assert shown["told"] is None, shown
        actions = [entry["action"] for entry in await api.resources.audit.entries(200)]
        assert "disclosure.archive_fetched" not in actions

        # The archive back, the same link works, once: the fetch is recorded, she is told.
        await api.resources.storage.put(key, kept, "application/zip")
        status, _, body = await api.request("GET", fetch_path, sub=None)
        assert status == 200 and body == kept
        shown = await recorded(api, disclosure_id)
        assert shown["links"][0]["used_at"] is not None and shown["told"] == "queued", shown
        assert shown["fetched_at"] == shown["links"][0]["used_at"]
        await eventually(
            lambda: inbox.about("disclosed"), until=bool, timeout=15, what="the notice"
        )
        events = (
            await api.request("GET", f"/v1/jobs/{disclosure_id}/events", sub="s1", roles=SUPPORT)
        )[2]["events"]
        assert [e["actor"] for e in events if e["type"] == "downloaded"] == ["authority"]
        actions = [entry["action"] for entry in await api.resources.audit.entries(200)]
        assert actions.count("disclosure.archive_fetched") == 1
        assert actions.count("disclosure.notice_queued") == 1
    export = await api.export(sub="alice")
    await api.wait(export["id"])
    listed = (await manifest_of(api, export["id"]))["disclosures"]
    assert [entry["disclosed_at"][:19] for entry in listed] == [shown["fetched_at"][:19]]


async def test_a_link_to_a_purged_job_is_gone(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()})
    status, _, disclosure = await disclose(
        api, notice="never", notice_reason="the law forbids telling her"
    )
    assert status == 202, disclosure
    await api.wait(disclosure["id"], sub="admin-1", roles=ADMIN)
    purged = await api.resources.store.delete_ended(
        disclosure["id"], ended_before=utcnow() + timedelta(days=3650)
    )
    assert purged is not None
    status, _, problem = await api.request(
        "POST", f"/v1/disclosures/{disclosure['id']}/link", sub="admin-1", roles=ADMIN
    )
    assert status == 410 and "archive is gone" in problem["detail"], problem
    assert (await show(api, disclosure["id"]))["job"] is None


async def test_the_platforms_webhooks_never_carry_a_disclosure(
    api_factory: ApiFactory, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    api = await api_factory({"crm": crm()}, webhook_urls=(url,), webhook_secret=Secret(SECRET))
    status, _, disclosure = await disclose(api, notice="now")
    assert status == 202, disclosure
    assert (await api.wait(disclosure["id"], sub="admin-1", roles=ADMIN))["status"] == "succeeded"
    export = await api.export(sub="alice")
    await api.wait(export["id"])
    heard = await eventually(
        lambda: sorted(e["type"] for e in state.received),
        until=lambda seen: "job.succeeded" in seen,
        timeout=20,
        what="the export's webhooks",
    )
    assert heard == ["job.created", "job.succeeded"], heard
    assert {e["job"]["id"] for e in state.received} == {export["id"]}


async def test_a_disclosure_counts_in_no_deadline_figure(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    late = await received_days_ago(api, 40, JobKind.EXPORT, subject="bob")
    await received_days_ago(api, 40, JobKind.DISCLOSURE)
    await received_days_ago(api, 27, JobKind.DISCLOSURE)
    assert await api.resources.store.count_overdue(utcnow()) == 1
    for flag in ("overdue", "at_risk"):
        status, _, found = await api.request(
            "GET", f"/v1/jobs?{flag}=true", sub="s1", roles=SUPPORT
        )
        assert status == 200, found
        assert [job["id"] for job in found["jobs"]] == ([late.id] if flag == "overdue" else [])
    status, _, report = await api.request(
        "GET", "/v1/reports", sub="s1", roles=SUPPORT, params=period()
    )
    assert status == 200, report
    assert report["jobs"] == 1
    assert all("disclosure" not in week["received"] for week in report["weeks"])


async def test_an_extension_and_the_notice_cron_never_both_win(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()})
    register = DisclosureRegister(api.resources)
    for _ in range(3):
        until = utcnow() + timedelta(days=1)
        status, _, disclosure = await disclose(api, **deferred(until))
        assert status == 202, disclosure
        disclosure_id = disclosure["id"]
        await api.wait(disclosure_id, sub="admin-1", roles=ADMIN)
        assert (await fetch(api, disclosure_id))[0] == 200
        # The worker's clock runs past the deferral's end while an admin extends it.
        told, extended = await asyncio.gather(
            register.tell(disclosure_id, now=until + timedelta(seconds=1)),
            register.extend(
                "admin-1", disclosure_id, until=until + timedelta(days=30), reason="renewed"
            ),
            return_exceptions=True,
        )
        entry = await register.get(disclosure_id)
        if told is True:
            assert isinstance(extended, InvalidRequest), extended
            assert len(entry.deferrals) == 1 and entry.told == "queued", entry
        else:
            assert told is False and not isinstance(extended, BaseException), (told, extended)
            assert len(entry.deferrals) == 2 and entry.told_at is None, entry


async def test_one_broken_entry_does_not_hold_up_the_notice_cron(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()})
    register = DisclosureRegister(api.resources)
    broken = "01JD2Z6S41ABCDEFGHJKMNPQRS"
    await api.resources.redis.set(register.key(broken), b"{not an entry")
    await api.resources.redis.zadd(register.due, {broken: 0})
    until = utcnow() + timedelta(days=1)
    status, _, disclosure = await disclose(api, **deferred(until))
    assert status == 202, disclosure
    await api.wait(disclosure["id"], sub="admin-1", roles=ADMIN)
    assert (await fetch(api, disclosure["id"]))[0] == 200
    ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(api.resources)}
    assert await tell_deferred_disclosures(ctx, now=until + timedelta(minutes=1)) == 1
    assert await tell_deferred_disclosures(ctx, now=until + timedelta(minutes=2)) == 0
    assert (await show(api, disclosure["id"]))["told"] == "queued"
    actions = [entry["action"] for entry in await api.resources.audit.entries(200)]
    assert actions.count("disclosure.notice_queued") == 1
