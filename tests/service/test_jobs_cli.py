"""``handover jobs`` and ``handover export``, run as real processes against a real API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import subprocess
import zipfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.ids import new_ulid
from jobs.model import ConnectorRun, Job, JobKind, JobStatus
from jobs.worker import create_worker
from tests.conftest import free_port
from tests.factories import options_for
from tests.mailserver import mail_server
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_api import download_archive
from tests.service.test_cli import handover
from tests.service.test_notices_api import smtp, subject_headers

SUPPORT = ("support",)
FAILURE = "billing API down for maintenance"
# Alice has one record at each connector, so the lines do not depend on which finishes first.
PROGRESS = [
    "queued    [                    ] 0/2 connectors, 0 records",
    "running   [                    ] 0/2 connectors, 0 records",
    "running   [##########          ] 1/2 connectors, 1 record",
    "running   [####################] 2/2 connectors, 2 records",
    "succeeded [####################] 2/2 connectors, 2 records",
]


def connectors(billing_fails: str | None = None) -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob", "carol")}
        ),
        "billing": MemoryConnector(
            "billing", records={"alice": {"invoices": [{"n": 1}]}}, fail=billing_fails
        ),
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(connectors())


async def cli(
    api: Api,
    *args: str,
    sub: str = "s1",
    roles: tuple[str, ...] = SUPPORT,
    url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``handover ARGS`` with the URL and a token in the environment.

    The API serves on this event loop: the command runs from a thread so it can answer.
    """
    env = {"HANDOVER_URL": url or api.base, "HANDOVER_TOKEN": api.token(sub, *roles)}
    return await asyncio.to_thread(handover, *args, env=env)


def rows(output: str) -> list[list[str]]:
    """A table's rows (header left out), split at runs of two or more spaces."""
    return [re.split(r" {2,}", line.strip()) for line in output.splitlines()[1:]]


def stored_job(subject: str, created: datetime, due: datetime) -> Job:
    return Job(
        id=new_ulid(int(created.timestamp() * 1000)),
        kind=JobKind.EXPORT,
        subject=subject,
        status=JobStatus.QUEUED,
        requested_by=subject,
        created_at=created,
        updated_at=created,
        due_at=due,
        options=options_for(JobKind.EXPORT),
        connectors={"crm": ConnectorRun()},
    )


@pytest.mark.slow
async def test_list_prints_an_aligned_table_that_filters_and_pages(api: Api) -> None:
    ids = []
    for subject in ("alice", "bob", "carol"):
        job = await api.export(sub=subject)
        await api.wait(job["id"], sub=subject)
        ids.append(job["id"])
    newest_first = ids[::-1]

    result = await cli(api, "jobs", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.split(r" {2,}", lines[0]) == [
        "ID",
        "KIND",
        "SUBJECT",
        "STATUS",
        "CREATED (UTC)",
        "DUE (UTC)",
        "CONNECTORS",
        "ERROR",
    ]
    assert [row[0] for row in rows(result.stdout)] == newest_first
    assert [row[1:4] for row in rows(result.stdout)] == [
        ["export", subject, "succeeded"] for subject in ("carol", "bob", "alice")
    ]
    assert all(row[-1] == "2/2" for row in rows(result.stdout))
    status_column = lines[0].index("STATUS")
    assert all(line[status_column:].startswith("succeeded") for line in lines[1:])
    created = datetime.now(UTC).strftime("%Y-%m-%d")
    assert all(row[4].startswith(created) for row in rows(result.stdout))

    result = await cli(api, "jobs", "list", "--subject", "alice")
    assert [row[0] for row in rows(result.stdout)] == [ids[0]]
    result = await cli(api, "jobs", "list", "--status", "failed")
    assert (result.returncode, result.stdout) == (0, "No jobs match.\n")
    result = await cli(
        api, "jobs", "list", "--kind", "export", "--connector", "billing", "--sort", "due"
    )
    assert [row[0] for row in rows(result.stdout)] == ids  # soonest deadline first

    result = await cli(api, "jobs", "list", "--limit", "1")
    assert [row[0] for row in rows(result.stdout)] == newest_first[:1]
    assert result.stderr == "More jobs match: --all lists every page.\n"
    result = await cli(api, "jobs", "list", "--limit", "1", "--all")
    assert [row[0] for row in rows(result.stdout)] == newest_first
    assert result.stderr == ""

    result = await cli(api, "jobs", "list", "--json", "--all", "--limit", "2")
    assert result.returncode == 0, result.stderr
    jobs = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [job["id"] for job in jobs] == newest_first
    assert jobs[0]["connectors"]["crm"]["status"] == "succeeded"


async def test_list_marks_overdue_and_at_risk_jobs(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False)
    now = datetime.now(UTC).replace(microsecond=0)
    overdue = stored_job("alice", now - timedelta(days=40), now - timedelta(days=10))
    at_risk = stored_job("bob", now - timedelta(days=27), now + timedelta(days=3))
    on_time = stored_job("carol", now - timedelta(days=1), now + timedelta(days=29))
    for job in (overdue, at_risk, on_time):
        await api.resources.store.create(job)

    result = await cli(api, "jobs", "list", "--sort", "due")
    assert result.returncode == 0, result.stderr
    due = {row[0]: row[5] for row in rows(result.stdout)}
    assert list(due) == [overdue.id, at_risk.id, on_time.id]
    assert due[overdue.id] == (now - timedelta(days=10)).strftime("%Y-%m-%d %H:%M OVERDUE")
    assert due[at_risk.id] == (now + timedelta(days=3)).strftime("%Y-%m-%d %H:%M AT RISK")
    assert due[on_time.id] == (now + timedelta(days=29)).strftime("%Y-%m-%d %H:%M")
    assert all(row[6] == "0/1" for row in rows(result.stdout))

    result = await cli(api, "jobs", "list", "--overdue")
    assert [row[0] for row in rows(result.stdout)] == [overdue.id]
    result = await cli(api, "jobs", "list", "--at-risk")
    assert [row[0] for row in rows(result.stdout)] == [at_risk.id]


async def test_show_prints_facts_connectors_and_the_timeline(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(billing_fails=FAILURE))
    job = await api.export(formats=["json", "csv"])
    failed = await api.wait(job["id"])
    assert failed["status"] == "failed"

    result = await cli(api, "jobs", "show", job["id"])
    assert result.returncode == 0, result.stderr
    facts, connector_table, timeline = result.stdout.split("\n\n")
    assert f"Job:           {job['id']}" in facts.splitlines()
    assert "Status:        failed" in facts.splitlines()
    assert "Requested by:  alice" in facts.splitlines()
    assert "Formats:       json, csv" in facts.splitlines()
    assert f"Error:         connector(s) failed: billing: {FAILURE}" in facts.splitlines()
    assert connector_table.splitlines()[0] == "Connectors"
    assert sorted(rows(connector_table.split("\n", 1)[1])) == [
        ["billing", "failed", "0", "0", "1", f"{FAILURE} (permanent)"],
        ["crm", "succeeded", "1", str(failed["connectors"]["crm"]["bytes"]), "1"],
    ]
    _, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    lines = timeline.splitlines()
    assert lines[0] == "Timeline (UTC)"
    shown = rows("\n".join(lines[1:]))
    assert [row[1] for row in shown] == [event["type"] for event in events["events"]]
    assert shown[0][2:] == ["alice", "status=queued"]
    assert ["worker", f'connector=billing error="{FAILURE}" error_class=permanent'] in [
        row[2:] for row in shown
    ]
    assert shown[-1][1:3] == ["failed", "worker"]
    assert set(shown[-1][3].split()) == {"status=failed", "from=running", "connectors=billing"}


async def test_retry_reruns_a_failed_job_and_waits_for_it(api_factory: ApiFactory) -> None:
    flaky = connectors(billing_fails=FAILURE)
    api = await api_factory(flaky)
    job = await api.export()
    assert (await api.wait(job["id"]))["status"] == "failed"
    flaky["billing"].fail = None

    result = await cli(api, "jobs", "retry", job["id"], "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{job['id']} queued (generation 2)\n"
    # The whole timeline is replayed: the first run's failure, then the retry succeeding.
    progress = result.stderr.splitlines()
    assert "running   [####################] 2/2 connectors (1 failed), 1 record" in progress
    assert "queued    [##########          ] 1/2 connectors, 1 record" in progress
    assert progress[-1] == PROGRESS[-1]
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded" and done["generation"] == 2

    again = await cli(api, "jobs", "retry", job["id"])
    assert again.returncode == 1
    assert again.stderr.startswith("handover: 409 Conflict: ")
    assert again.stderr.count("\n") == 1


async def test_cancel_and_extend_print_the_resulting_status(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False)
    job = await api.export()

    result = await cli(
        api, "jobs", "extend", job["id"], "--months", "1", "--reason", "many processors"
    )
    assert result.returncode == 0, result.stderr
    _, _, extended = await api.request("GET", f"/v1/jobs/{job['id']}")
    due = datetime.fromisoformat(extended["due_at"]).strftime("%Y-%m-%d %H:%M")
    assert result.stdout == f"{job['id']} queued, due {due} UTC (extended by 1 month(s) in all)\n"
    assert extended["due_at"] > job["due_at"]
    result = await cli(api, "jobs", "extend", job["id"], "--months", "2", "--reason", "again")
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 422 Invalid request: months: ")
    assert result.stderr.count("\n") == 1

    result = await cli(api, "jobs", "cancel", job["id"], "--reason", "asked twice")
    assert (result.returncode, result.stdout) == (0, f"{job['id']} canceled\n")
    _, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    canceled = events["events"][-1]
    assert (canceled["type"], canceled["actor"], canceled["reason"]) == (
        "canceled",
        "s1",
        "asked twice",
    )
    result = await cli(api, "jobs", "cancel", job["id"])
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 409 Conflict: ")
    assert result.stderr.count("\n") == 1


async def test_export_waits_draws_progress_and_downloads_the_archive(
    api: Api, tmp_path: Path
) -> None:
    target = tmp_path / "out.zip"
    result = await cli(
        api,
        "export",
        "alice",
        "--format",
        "json",
        "--format",
        "csv",
        "--wait",
        "--download",
        str(target),
        sub="dpo",
        roles=("admin",),
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert result.stderr.splitlines() == [
        *PROGRESS,
        f"Saved {target} ({target.stat().st_size:,} bytes)",
    ]
    archive, _ = await download_archive(api, job_id)
    assert target.read_bytes() == archive
    _, _, job = await api.request("GET", f"/v1/jobs/{job_id}")
    # Its staged objects are small: the worker wrote the whole archive, so it has its SHA-256.
    assert job["result"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert f"{zlib.crc32(archive):08x}" == job["result"]["crc32"]  # S3's, checked on download
    assert (job["subject"], job["requested_by"]) == ("alice", "dpo")
    with zipfile.ZipFile(target) as bundle:
        assert {"manifest.json", "crm/contacts.csv", "billing/invoices.json"} <= set(
            bundle.namelist()
        )
    assert not (tmp_path / "out.zip.part").exists()


async def test_export_without_wait_prints_the_id_and_subjects_may_omit_themselves(
    api: Api,
) -> None:
    result = await cli(api, "export", "--connector", "crm", sub="alice", roles=("subject",))
    assert result.returncode == 0, result.stderr
    job = await api.wait(result.stdout.strip())
    assert (job["subject"], list(job["connectors"])) == ("alice", ["crm"])
    assert result.stderr == ""

    result = await cli(api, "export")  # support staff must name the subject
    assert result.returncode == 1
    assert result.stderr == (
        "handover: 422 Invalid request: subject: support and admin must name the subject\n"
    )


async def test_a_failing_export_exits_1_naming_the_connector(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(billing_fails=FAILURE))
    result = await cli(api, "export", "alice", "--wait")
    assert result.returncode == 1
    job_id = result.stdout.strip()  # printed as soon as the export is accepted
    *progress, error = result.stderr.splitlines()
    assert progress[0] == PROGRESS[0]
    assert progress[-1] == "failed    [####################] 2/2 connectors (1 failed), 1 record"
    assert error == f"handover: export {job_id} failed: billing: {FAILURE} (permanent)"
    assert (await api.wait(job_id))["status"] == "failed"


async def test_an_export_waiting_for_identifiers_exits_1_saying_why(
    api_factory: ApiFactory,
) -> None:
    newsletter = MemoryConnector("newsletter", records={"alice": {"subscriptions": [{"id": 1}]}})
    newsletter.identifiers = frozenset({"email"})  # alice's email is known to nobody
    api = await api_factory({**connectors(), "newsletter": newsletter})
    result = await cli(api, "export", "alice", "--wait")
    assert result.returncode == 1
    job_id = result.stdout.strip()
    *_, error = result.stderr.splitlines()
    assert error == (
        f"handover: export {job_id} needs attention: newsletter: not asked: needs the "
        "subject's email, and none is known (support adds identifiers, or decides to go without)"
    )
    assert (await api.wait(job_id, "needs_attention"))["connectors"]["crm"]["status"] == (
        "succeeded"
    )


@dataclass
class DroppingProxy:
    """Forwards requests to the API, but ends each event stream after its first event."""

    target: str
    session: ClientSession
    requests: list[tuple[str, bool]] = field(default_factory=list)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        stream = "text/event-stream" in request.headers.get("Accept", "")
        self.requests.append((f"{request.method} {request.path}", stream))
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in {"authorization", "accept", "content-type", "last-event-id"}
        }
        async with self.session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=await request.read() or None,
            allow_redirects=False,
        ) as upstream:
            if not stream:
                kept = {k: v for k, v in upstream.headers.items() if k in {"Content-Type"}}
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers=kept
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            self.streaming.set()
            event = b""
            async for line in upstream.content:
                event += line
                if line == b"\n" and b"data:" in event:
                    break
            await response.write(event)
            self.dropped.set()
            return response


@contextlib.asynccontextmanager
async def running_worker(api: Api, redis: ArqRedis) -> AsyncIterator[None]:
    worker = create_worker(
        api.resources.settings,
        redis=redis,
        resources=api.resources,
        poll_delay=0.01,
        handle_signals=False,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_wait_polls_when_the_event_stream_drops(
    api_factory: ApiFactory, redis: ArqRedis
) -> None:
    api = await api_factory(connectors(), worker=False)
    proxy = DroppingProxy(api.base, api.session)
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", proxy.forward)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        command = asyncio.create_task(cli(api, "export", "alice", "--wait", url=url))
        # The job waits for a worker until the command listens to its stream.
        await asyncio.wait_for(proxy.streaming.wait(), 30)
        async with running_worker(api, redis):
            result = await asyncio.wait_for(command, 60)
    finally:
        await server.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == PROGRESS
    assert proxy.dropped.is_set()
    events = f"GET /v1/jobs/{result.stdout.strip()}/events"
    streamed = proxy.requests.index((events, True))
    assert proxy.requests[:streamed] == [("POST /v1/exports", False), (events, False)]
    assert (events, False) in proxy.requests[streamed + 1 :]  # polled after the drop
    assert (events, True) not in proxy.requests[streamed + 1 :]


async def test_api_errors_are_one_line(api: Api) -> None:
    result = await cli(api, "jobs", "show", "NOPE")
    assert (result.returncode, result.stderr) == (1, "handover: 404 Not found: no job NOPE\n")

    env = {"HANDOVER_URL": api.base, "HANDOVER_TOKEN": "not-a-token"}
    result = await asyncio.to_thread(handover, "jobs", "list", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 401 Unauthorized: ")
    assert result.stderr.count("\n") == 1

    good = api.token("s1", *SUPPORT)
    result = await asyncio.to_thread(handover, "jobs", "list", "--token", good, env=env)
    assert (result.returncode, result.stdout) == (0, "No jobs match.\n")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["jobs", "list"],
            {"HANDOVER_URL": "http://127.0.0.1:9"},
            "handover: HANDOVER_TOKEN: not set; set it (or --token) to a bearer token, "
            "e.g. from `handover token --sub NAME --role support`",
        ),
        (
            ["jobs", "list"],
            {"HANDOVER_URL": "ftp://x", "HANDOVER_TOKEN": "t"},
            "handover: HANDOVER_URL: 'ftp://x' is not an http:// or https:// URL",
        ),
        (
            ["jobs", "list", "--url", "nowhere"],
            {"HANDOVER_TOKEN": "t"},
            "handover: --url: 'nowhere' is not an http:// or https:// URL",
        ),
        (
            ["jobs", "list", "--limit", "0"],
            {},
            "handover jobs list: error: argument --limit: '0': a page is 1 to 200 jobs",
        ),
        (
            ["jobs", "extend", "ID"],
            {},
            "handover jobs extend: error: the following arguments are required: --reason",
        ),
        (
            ["export", "--format", "xml"],
            {},
            "handover export: error: argument --format: invalid choice: 'xml'",
        ),
        (
            ["export", "alice", "--download", "/nonexistent/out.zip"],
            {},
            "handover export: error: argument --download: /nonexistent is not a directory",
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = handover(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(message)
    assert result.stdout == ""


def test_an_unreachable_api_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = handover("jobs", "show", "ID", env={"HANDOVER_URL": url, "HANDOVER_TOKEN": "t"})
    assert result.returncode == 1
    assert result.stderr == f"handover: cannot reach {url}: Connection refused\n"


@pytest.mark.slow
async def test_ask_resume_refuse_and_extend_follow_the_law(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False)
    status, _, job = await api.request("POST", "/v1/erasures", json={"connectors": ["crm"]})
    assert status == 202, job
    job_id = job["id"]

    asked = await cli(api, "jobs", "ask", job_id, "--needs", "a copy of your ID card")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == f"{job_id} awaiting_information (the deadline's clock is paused)\n"
    resumed = await cli(api, "jobs", "resume", job_id)
    _, _, now = await api.request("GET", f"/v1/jobs/{job_id}")
    due = datetime.fromisoformat(now["due_at"]).strftime("%Y-%m-%d %H:%M")
    assert resumed.stdout == f"{job_id} awaiting_confirmation, due {due} UTC\n", resumed.stderr

    days = await cli(api, "jobs", "extend", job_id, "--days", "3", "--reason", "busy")
    assert days.returncode == 1
    assert days.stderr == (
        "handover: 422 Invalid request: days: GDPR extends a deadline in months: give months\n"
    )
    refused = await cli(
        api, "jobs", "refuse", job_id, "--grounds", "excessive", "--reason", "asked daily"
    )
    assert refused.returncode == 0, refused.stderr
    authority = api.resources.settings.complaint_authority
    assert refused.stdout == f"{job_id} refused (excessive); complaints: {authority}\n"
    shown = await cli(api, "jobs", "show", job_id)
    assert "Jurisdiction:  gdpr" in shown.stdout
    assert "Asked for:     a copy of your ID card (by s1)" in shown.stdout
    assert "Refused:       excessive: asked daily" in shown.stdout
    assert f"Complaints:    {authority}, {api.resources.settings.complaint_url}" in shown.stdout


async def test_an_extension_after_the_first_month_is_refused_naming_the_rule(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(connectors(), worker=False)
    received = datetime.now(UTC) - timedelta(days=40)
    settings = api.resources.settings
    job = stored_job("alice", received, settings.profile().due_at(received, settings.zone))
    await api.resources.store.create(job)
    result = await cli(api, "jobs", "extend", job.id, "--reason", "many processors")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "handover: 409 Not allowed: GDPR: an extension must be announced to the subject "
        "within 1 month of receipt (the first period), which ended "
    )
    assert result.stderr.count("\n") == 1


async def test_object_files_an_objection_and_support_decides_the_rest(
    api_factory: ApiFactory,
) -> None:
    crm = MemoryConnector("crm", objection_purposes=["direct_marketing", "analytics"])
    api = await api_factory({"crm": crm})

    result = await cli(
        api,
        "object",
        "--purpose",
        "direct_marketing",
        "--purpose",
        "analytics",
        "--wait",
        sub="alice",
        roles=("subject",),
    )

    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    marketing_id, _, purposes = first.split()
    waiting_id, status, others = second.split()
    assert (purposes, status, others) == ("direct_marketing", "awaiting_confirmation", "analytics")
    assert (await api.job(marketing_id))["status"] == "succeeded"
    result = await cli(api, "jobs", "decide", waiting_id, "--reject")
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 422 Invalid request: grounds: ")
    assert result.stderr.count("\n") == 1
    result = await cli(api, "jobs", "decide", waiting_id, "--uphold")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{waiting_id} ")
    assert (await api.wait(waiting_id))["status"] == "succeeded"
    assert crm.objected == {("alice", "direct_marketing"), ("alice", "analytics")}
    result = await cli(api, "object", "alice", "--purpose", "profiling")
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 422 Invalid request: purposes: unknown purpose")
    listed = await cli(api, "jobs", "list", "--kind", "objection", "--json")
    assert sorted(orjson.loads(line)["id"] for line in listed.stdout.splitlines()) == sorted(
        [marketing_id, waiting_id]
    )


async def test_rectify_files_a_rectification_and_names_a_bad_change(
    api_factory: ApiFactory,
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": 1, "name": "Alice Martin"}]}},
        rectifiable={"contacts.name": "text", "contacts.visits": "integer"},
    )
    api = await api_factory({"crm": crm})

    result = await cli(
        api,
        "rectify",
        "alice",
        "--change",
        "crm/contacts.name=Alice Dupont",
        "--change",
        "crm/contacts.visits=3",
        "--wait",
    )

    assert result.returncode == 0, result.stderr
    job_id, status = result.stdout.splitlines()[0].split()
    assert status == "queued"
    assert crm.records["alice"]["contacts"] == [{"id": 1, "name": "Alice Dupont", "visits": 3}]
    assert (await api.job(job_id, sub="s1", roles=SUPPORT))["kind"] == "rectification"
    result = await cli(api, "rectify", "alice", "--change", "crm/contacts.visits=many")
    assert result.returncode == 1
    assert result.stderr == (
        "handover: 422 Invalid request: changes[0].value: expected an integer, got text\n"
    )
    result = await cli(api, "rectify", "alice", "--change", "name=Alice")
    assert result.returncode == 2
    assert "is not CONNECTOR/DATASET.FIELD=VALUE" in result.stderr


@pytest.mark.slow
async def test_support_approves_an_email_change_saying_how_it_was_verified(
    api_factory: ApiFactory,
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": 1, "email": "alice@example.com"}]}},
        rectifiable={"contacts.email": "email"},
    )
    api = await api_factory({"crm": crm})
    result = await cli(api, "rectify", "alice", "--change", "crm/contacts.email=a@new.example")
    assert result.returncode == 0, result.stderr
    job_id, status = result.stdout.splitlines()[0].split()
    assert status == "awaiting_confirmation"
    shown = await cli(api, "jobs", "show", job_id, sub="s2")
    assert shown.returncode == 0, shown.stderr
    assert "crm/contacts.email = 'a@new.example' (identity: approve with --verified-by)" in (
        shown.stdout
    )
    assert "a@new.example" not in (await cli(api, "jobs", "show", job_id)).stdout  # s1 asked
    # s1 asked for it: another member of staff decides.
    result = await cli(api, "jobs", "decide", job_id, "--uphold", "--verified-by", "called")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("handover: 409 "), result.stderr
    result = await cli(api, "jobs", "decide", job_id, "--uphold", sub="s2")
    assert result.returncode == 1
    assert result.stderr.startswith("handover: 422 Invalid request: verified_by: ")
    how = "confirmation mail to the new address answered"
    result = await cli(api, "jobs", "decide", job_id, "--uphold", "--verified-by", how, sub="s2")
    assert result.returncode == 0, result.stderr
    assert (await api.wait(job_id))["status"] == "succeeded"
    stored = await api.resources.store.get(job_id)
    assert stored.rectification_options.decision is not None
    assert stored.rectification_options.decision.verified_by == how


async def test_jobs_lift_tells_the_subject_then_lifts_the_restriction(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory(connectors(), **smtp(port))
        status, _, restriction = await api.request(
            "POST", "/v1/restrictions", sub=None, headers=subject_headers(api), json={}
        )
        assert status == 202, restriction
        assert (await api.wait(restriction["id"]))["status"] == "succeeded"

        result = await cli(
            api,
            "jobs",
            "lift",
            restriction["id"],
            "--reason",
            "your data was verified",
            "--email",
            ALICE_EMAIL,
            "--verified-by",
            "the address on her account",
            "--wait",
        )

        assert result.returncode == 0, result.stderr
        lift_id = result.stdout.splitlines()[0].split()[0]
        assert [m.message["X-Handover-Notice"] for m in inbox.received].count(
            "restriction_lifting"
        ) == 1
    lifted = await api.job(lift_id, sub="s1", roles=SUPPORT)
    assert (lifted["kind"], lifted["status"]) == ("lift", "succeeded")
    again = ("--reason", "again", "--email", ALICE_EMAIL, "--verified-by", "her account")
    result = await cli(api, "jobs", "lift", restriction["id"], *again)
    assert result.returncode == 1 and result.stderr.startswith("handover: 409 ")
