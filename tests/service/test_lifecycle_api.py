"""The lifecycle the law sets, over HTTP: jurisdictions, extensions, refusals, information.

Jobs are asked for, extended, refused, asked about and answered through the API, with
a worker running them on the real Redis; the subject's notices land in the embedded
maildir, where the tests read them. A request received weeks ago is made by the
pipeline and backdated, since nothing else can receive one in the past.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any, get_args

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from jobs.kinds import build_pipelines
from jobs.lifecycle import RefusalGrounds
from jobs.mail import StoredMail, read_maildir
from jobs.model import Identity, Job, JobKind, utcnow
from jobs.settings import Secret
from service.api import models
from tests.factories import options_for
from tests.jobs.test_webhooks import SECRET, Receiver
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, JWT_SECRET, Api, ApiFactory
from tests.service.test_dashboard import GatedConnector

SUPPORT = ("support",)


def crm() -> GatedConnector:
    return GatedConnector(
        "crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob", "carol")}
    )


def claims_token(sub: str, roles: tuple[str, ...] = ("subject",), **claims: Any) -> str:
    """A token with claims of our choosing (a jurisdiction), signed with the test secret."""
    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "iat": now, "exp": now + 3600, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(
    api: Api, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A new request as alice (her verified email in her token), or as ``headers`` say."""
    status, _, job = await api.request(
        "POST", path, sub=None, headers=headers or api.email_auth(), json=body
    )
    assert status == 202, job
    return job  # type: ignore[no-any-return]


async def staff(api: Api, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    status, _, answer = await api.request("POST", path, sub="s1", roles=SUPPORT, json=body)
    return status, answer


async def received_days_ago(
    api: Api, days: int, kind: JobKind = JobKind.ERASURE, subject: str = "alice"
) -> Job:
    """A request of ``kind`` received ``days`` ago, under GDPR, with alice's email known."""
    pipeline = build_pipelines(api.resources)[kind]
    job = pipeline.new_job(
        kind,
        subject=subject,
        requested_by=subject,
        connectors=["crm"],
        options=options_for(kind),
        identity=Identity(identifiers={"email": ALICE_EMAIL}),
    )
    settings = api.resources.settings
    job.created_at -= timedelta(days=days)
    job.updated_at = job.created_at
    job.due_at = settings.profile().due_at(job.created_at, settings.zone)
    await pipeline.submit(job)
    return job


async def notice(api: Api, job_id: str, name: str) -> StoredMail:
    """The notice ``name`` the subject was sent about the job (the embedded maildir)."""
    maildir = api.resources.settings.data_dir / "mail"

    def sent() -> StoredMail | None:
        found = [m for m in read_maildir(maildir) if m.job == job_id and m.notice == name]
        return found[0] if found else None

    mail = await eventually(sent, timeout=20, what=f"notice {name} about job {job_id}")
    assert mail is not None
    return mail


async def events(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, _, body = await api.request("GET", f"/v1/jobs/{job_id}/events", sub="s1", roles=SUPPORT)
    assert status == 200
    return body["events"]  # type: ignore[no-any-return]


async def overdue(api: Api) -> list[str]:
    """The ids support's search for overdue jobs finds."""
    status, _, page = await api.request("GET", "/v1/jobs?overdue=true", sub="s1", roles=SUPPORT)
    assert status == 200, page
    return [job["id"] for job in page["jobs"]]


def due(api: Api, job: dict[str, Any], **kwargs: Any) -> datetime:
    """The job's due date as its jurisdiction computes it."""
    settings = api.resources.settings
    received = datetime.fromisoformat(job["created_at"])
    return settings.profile(job["jurisdiction"]).due_at(received, settings.zone, **kwargs)


def due_at(job: dict[str, Any]) -> datetime:
    """The due date the API gave."""
    return datetime.fromisoformat(job["due_at"])


async def test_an_extension_is_told_while_the_first_month_runs_and_refused_after(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()})
    erasure = await create(api, "/v1/erasures", {})
    assert erasure["status"] == "awaiting_confirmation" and erasure["jurisdiction"] == "gdpr"
    assert due_at(erasure) == due(api, erasure)

    path = f"/v1/jobs/{erasure['id']}/extend"
    status, extended = await staff(api, path, {"months": 1, "reason": "twelve processors"})
    assert status == 200, extended
    assert extended["extended_months"] == 1 and due_at(extended) == due(api, erasure, extended=1)
    entry = next(e for e in await events(api, erasure["id"]) if e["type"] == "extended")
    assert (entry["reason"], entry["months"]) == ("twelve processors", 1)
    assert datetime.fromisoformat(entry["due_at"]) == due_at(extended)
    told = await notice(api, erasure["id"], "extended")
    assert told.to == ALICE_EMAIL and "twelve processors" in told.text

    late = await received_days_ago(api, 40, subject="bob")
    status, problem = await staff(api, f"/v1/jobs/{late.id}/extend", {"reason": "too many"})
    assert status == 409, problem
    assert problem["type"].endswith("/extension-too-late") and problem["rule"] == (
        "extension-too-late"
    )
    assert "within 1 month of receipt (the first period), which ended" in problem["detail"]
    assert (await api.job(late.id, sub="s1", roles=SUPPORT))["extended_months"] == 0

    lgpd = await create(api, "/v1/erasures", {"jurisdiction": "lgpd"}, api.auth("carol"))
    status, problem = await staff(api, f"/v1/jobs/{lgpd['id']}/extend", {"reason": "need time"})
    assert status == 409 and problem["rule"] == "extension-not-allowed", problem


async def test_a_ccpa_deadline_is_extended_once_by_days(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await create(api, "/v1/erasures", {"jurisdiction": "ccpa"})
    assert job["acknowledge_by"] is not None and due_at(job) == due(api, job)
    path = f"/v1/jobs/{job['id']}/extend"
    status, problem = await staff(api, path, {"months": 1, "reason": "many processors"})
    assert status == 422 and "CCPA/CPRA extends a deadline in days" in problem["detail"]
    status, extended = await staff(api, path, {"reason": "many processors"})
    assert status == 200, extended
    assert extended["extended_days"] == 45 and due_at(extended) == due(api, job, extended=45)
    status, problem = await staff(api, path, {"days": 1, "reason": "still more"})
    assert status == 409 and problem["rule"] == "extension-already-made", problem


async def test_a_refused_request_ends_its_work_frees_its_subject_and_says_where_to_complain(
    api_factory: ApiFactory,
) -> None:
    gated = crm()
    api = await api_factory({"crm": gated})
    gated.gate.clear()
    export = await create(api, "/v1/exports", {})
    await api.wait(export["id"], "running")
    behind = await create(api, "/v1/erasures", {"dry_run": True})
    await eventually(
        lambda: events(api, behind["id"]),
        until=lambda timeline: any(e["type"] == "waiting" for e in timeline),
        timeout=20,
        what="the dry run to wait behind the export",
    )

    path = f"/v1/jobs/{export['id']}/refuse"
    status, _, problem = await api.request(
        "POST", path, json={"grounds": "excessive", "reason": "again"}
    )
    assert status == 403, problem
    status, problem = await staff(api, path, {"grounds": "boring", "reason": "no"})
    assert status == 422 and problem["errors"][0]["field"] == "grounds", problem
    reason = "the fourth identical request this month"
    status, refused = await staff(api, path, {"grounds": "excessive", "reason": reason})
    assert status == 200, refused
    assert refused["status"] == "refused" and refused["deadline"] is None
    settings = api.resources.settings
    assert refused["refusal"] == {
        "grounds": "excessive",
        "reason": reason,
        "by": "s1",
        "at": refused["refusal"]["at"],
        "authority": settings.complaint_authority,
        "authority_url": settings.complaint_url,
    }
    # The subject is free again: the dry run behind the export runs and finishes.
    assert (await api.wait(behind["id"]))["status"] == "succeeded"
    told = await notice(api, export["id"], "refused")
    assert reason in told.text and str(settings.complaint_url) in told.text
    entry = next(e for e in await events(api, export["id"]) if e["type"] == "refused")
    assert (entry["from"], entry["grounds"], entry["actor"]) == ("running", "excessive", "s1")
    audited = [e["action"] for e in await api.resources.audit.entries(50)]
    assert "job.refused" in audited
    _, _, metrics = await api.request("GET", "/metrics", sub=None)
    assert (
        'handover_lifecycle_decisions_total{decision="refused",jurisdiction="gdpr"} 1'
        in metrics.decode()
    )
    status, problem = await staff(api, path, {"grounds": "excessive", "reason": reason})
    assert status == 409, problem
    gated.gate.set()


async def test_asking_stops_the_gdpr_clock_until_the_subject_answers(
    api_factory: ApiFactory,
) -> None:
    gated = crm()
    api = await api_factory({"crm": gated})
    gated.gate.clear()
    # Received 40 days ago: overdue, unless its clock stands still.
    job = await received_days_ago(api, 40, kind=JobKind.EXPORT)
    await api.wait(job.id, "running", sub="s1", roles=SUPPORT)
    assert await overdue(api) == [job.id]

    needs = "the customer number printed on your last invoice"
    status, asked = await staff(api, f"/v1/jobs/{job.id}/ask", {"needs": needs})
    assert status == 200, asked
    assert (asked["status"], asked["deadline"], asked["generation"]) == (
        "awaiting_information",
        "paused",
        2,
    )
    assert asked["information"]["pauses_clock"] is True
    status, again = await staff(api, f"/v1/jobs/{job.id}/ask", {"needs": needs})
    assert status == 409 and again["rule"] == "already-awaiting-information", again
    assert await overdue(api) == []
    status, _, stats = await api.request("GET", "/v1/stats", sub="s1", roles=SUPPORT)
    assert stats["overdue"] == 0
    told = await notice(api, job.id, "information_needed")
    assert needs in told.text

    # The subject takes three days to answer.
    three_days_ago = utcnow() - timedelta(days=3)

    def asked_earlier(stored: Job) -> None:
        assert stored.information is not None
        stored.information.asked_at = three_days_ago

    await api.resources.store.modify(job.id, asked_earlier, actor="test", event="test.backdated")
    path = f"/v1/jobs/{job.id}/information"
    status, _, problem = await api.request("POST", path, sub="bob", json={"answer": "hi"})
    assert status == 404, problem
    status, problem = await staff(api, path, {"answer": "on her behalf"})
    assert status == 403, problem
    body = {"answer": "It is C-20931.", "identifiers": {"identities": {"crm_id": "C-20931"}}}
    status, _, answered = await api.request("POST", path, json=body)
    assert status == 200, answered
    assert answered["status"] == "awaiting_information"  # support accepts identifiers first
    assert answered["information"]["offered"] == ["crm_id"]
    assert answered["information"]["answer"] == "It is C-20931."
    paused = answered["clock_paused_ms"]
    assert timedelta(days=3) <= timedelta(milliseconds=paused) < timedelta(days=3, minutes=1)
    assert due_at(answered) == due(api, answered, paused=timedelta(milliseconds=paused))
    assert answered["deadline"] == "overdue"  # received 40 days ago, paused 3
    assert await overdue(api) == [job.id]  # its clock runs again
    status, _, problem = await api.request("POST", path, json={"answer": "again"})
    assert status == 409 and problem["rule"] == "already-answered", problem

    status, resumed = await staff(
        api, f"/v1/jobs/{job.id}/resume", {"verified_by": "matched the invoice on file"}
    )
    assert status == 200, resumed
    assert resumed["status"] == "queued" and resumed["due_at"] == answered["due_at"]
    gated.gate.set()
    done = await api.wait(job.id, sub="s1", roles=SUPPORT)
    assert done["status"] == "succeeded", done
    assert {
        "identifiers": ["crm_id"],
        "source": "subject",
        "verified_by": "matched the invoice on file",
    } in done["identity"]
    kinds = [e["type"] for e in await events(api, job.id)]
    assert kinds.index("information.requested") < kinds.index("information.received")
    assert kinds.index("information.received") < kinds.index("resumed")


async def test_where_the_clock_runs_on_the_answer_resumes_the_request(
    api_factory: ApiFactory,
) -> None:
    gated = crm()
    api = await api_factory({"crm": gated})
    gated.gate.clear()
    token = claims_token("alice", jurisdiction="ccpa", email=ALICE_EMAIL, email_verified=True)
    job = await create(api, "/v1/exports", {}, bearer(token))
    assert job["jurisdiction"] == "ccpa"
    await api.wait(job["id"], "running")
    status, asked = await staff(
        api,
        f"/v1/jobs/{job['id']}/ask",
        {"needs": "your account's postcode", "resume_on_answer": True},
    )
    assert status == 200, asked
    assert asked["deadline"] == "ok" and asked["information"]["pauses_clock"] is False
    status, _, resumed = await api.request(
        "POST", f"/v1/jobs/{job['id']}/information", json={"answer": "1000"}
    )
    assert status == 200, resumed
    assert resumed["status"] == "queued" and resumed["clock_paused_ms"] == 0
    assert resumed["due_at"] == job["due_at"]
    gated.gate.set()
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    resumption = [e for e in await events(api, job["id"]) if e["type"] == "resumed"]
    assert [(e["actor"], e["from"], e["status"]) for e in resumption] == [
        ("alice", "awaiting_information", "queued")
    ]


async def test_the_jurisdiction_comes_from_the_body_a_claim_or_the_default(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    named = {"connectors": ["crm"], "dry_run": True}
    default = await create(api, "/v1/erasures", named, api.auth("alice"))
    assert default["jurisdiction"] == "gdpr" and default["acknowledge_by"] is None
    body = await create(api, "/v1/erasures", {**named, "jurisdiction": "lgpd"}, api.auth("bob"))
    assert body["jurisdiction"] == "lgpd" and due_at(body) == due(api, body)
    claimed = await create(
        api, "/v1/erasures", named, bearer(claims_token("carol", jurisdiction="CCPA"))
    )
    assert claimed["jurisdiction"] == "ccpa" and claimed["acknowledge_by"] is not None

    async def refused(body: dict[str, Any], token: str) -> str:
        status, _, problem = await api.request(
            "POST", "/v1/erasures", sub=None, headers=bearer(token), json=body
        )
        assert status == 422, problem
        assert problem["errors"][0]["field"] == "jurisdiction", problem
        return str(problem["detail"])

    against = await refused(
        {**named, "jurisdiction": "gdpr"}, claims_token("dave", jurisdiction="ccpa")
    )
    assert "your sign-in places you under ccpa" in against
    assert "unknown jurisdiction 'mars'" in await refused(
        {**named, "jurisdiction": "mars"}, api.token("erin")
    )
    assert "claim names 'mars'" in await refused(named, claims_token("erin", jurisdiction="mars"))
    # Staff filing for someone: their own claim is not the subject's; their word is.
    support = claims_token("s1", SUPPORT, jurisdiction="ccpa")
    filed = await create(api, "/v1/erasures", {**named, "subject": "frank"}, bearer(support))
    assert filed["jurisdiction"] == "gdpr"
    filed = await create(
        api,
        "/v1/erasures",
        {**named, "subject": "gina", "jurisdiction": "uk_gdpr"},
        bearer(support),
    )
    assert filed["jurisdiction"] == "uk_gdpr"


async def test_the_default_jurisdiction_is_a_setting(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False, jurisdiction="lgpd")
    job = await create(api, "/v1/erasures", {"dry_run": True})
    assert job["jurisdiction"] == "lgpd" and due_at(job) == due(api, job)


@pytest.mark.parametrize("grounds", ["manifestly_unfounded", "identity_not_established"])
async def test_a_request_waiting_for_information_may_be_refused(
    api_factory: ApiFactory, grounds: str
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await create(api, "/v1/erasures", {})
    status, asked = await staff(api, f"/v1/jobs/{job['id']}/ask", {"needs": "a copy of your ID"})
    assert status == 200 and asked["information"]["resume_to"] == "awaiting_confirmation"
    status, refused = await staff(
        api, f"/v1/jobs/{job['id']}/refuse", {"grounds": grounds, "reason": "no answer"}
    )
    assert status == 200 and refused["status"] == "refused", refused
    assert refused["information"]["offered"] == []


@pytest.fixture
async def platform() -> AsyncIterator[tuple[Receiver, str]]:
    """The platform's webhook endpoint (tests/jobs/test_webhooks.py's), on a port of its own."""
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("/hooks"))
    await server.close()


async def test_the_platform_hears_of_requests_awaiting_information_and_refused(
    api_factory: ApiFactory, platform: tuple[Receiver, str]
) -> None:
    state, url = platform
    api = await api_factory({"crm": crm()}, webhook_urls=(url,), webhook_secret=Secret(SECRET))
    job = await create(api, "/v1/erasures", {})
    status, _ = await staff(api, f"/v1/jobs/{job['id']}/ask", {"needs": "your postcode"})
    assert status == 200
    reason = {"grounds": "identity_not_established", "reason": "no answer came"}
    status, _ = await staff(api, f"/v1/jobs/{job['id']}/refuse", reason)
    assert status == 200
    heard = await eventually(
        lambda: sorted(e["type"] for e in state.received),
        until=lambda seen: len(seen) == 3,
        timeout=20,
        what="three webhooks",
    )
    # Each is built when delivered: the job as it is then.
    assert heard == ["job.awaiting_information", "job.created", "job.refused"]
    assert {e["job"]["id"] for e in state.received} == {job["id"]}


def test_the_apis_refusal_grounds_are_the_lifecycles() -> None:
    assert set(get_args(models.RefusalGroundsName)) == {g.value for g in RefusalGrounds}


async def test_support_may_resume_without_an_answer_and_the_pause_counts(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await create(api, "/v1/erasures", {})
    status, asked = await staff(api, f"/v1/jobs/{job['id']}/ask", {"needs": "your postcode"})
    assert status == 200 and asked["deadline"] == "paused"

    def asked_two_days_ago(stored: Job) -> None:
        assert stored.information is not None
        stored.information.asked_at -= timedelta(days=2)

    await api.resources.store.modify(
        job["id"], asked_two_days_ago, actor="test", event="test.backdated"
    )
    status, problem = await staff(
        api, f"/v1/jobs/{job['id']}/resume", {"verified_by": "on the phone"}
    )
    assert status == 422 and "offered no identifiers" in problem["detail"], problem
    status, resumed = await staff(api, f"/v1/jobs/{job['id']}/resume")  # answered by phone
    assert status == 200, resumed
    assert resumed["status"] == "awaiting_confirmation" and resumed["deadline"] == "ok"
    paused = timedelta(milliseconds=resumed["clock_paused_ms"])
    assert timedelta(days=2) <= paused < timedelta(days=2, minutes=1)
    assert due_at(resumed) == due(api, job, paused=paused)
