"""Webhooks reach the platform signed, once per event, retried until accepted, and
nowhere else: never a link-local or metadata address, never through a redirect."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis

import jobs.worker
from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.export import ExportPipeline
from jobs.kinds import build_pipelines
from jobs.model import JobKind, JobStatus
from jobs.settings import Secret, Settings, SettingsError
from jobs.webhook_sender import GuardedResolver, Sender
from jobs.webhook_sender import session as webhook_session
from jobs.webhooks import SIGNATURE_HEADER, DeliveryFailed, forbidden_address, sign, verify
from jobs.worker import create_worker, watch_deadlines
from tests.factories import options_for

SECRET = "webhook-secret-" + "w" * 30


class Receiver:
    """The platform's webhook endpoint: records what arrives, fails when told to."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures_left = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get(SIGNATURE_HEADER, "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=503)
        self.received.append(orjson.loads(body))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("/hooks"))
    await server.close()


async def run_worker(redis: ArqRedis, resources: Any) -> Any:
    worker = create_worker(
        resources.settings,
        redis=redis,
        resources=resources,
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    await worker.main()
    return worker


def test_signatures_verify_and_reject_tampering_and_replays() -> None:
    body = b'{"type":"job.created"}'
    now = int(time.time())
    header = sign(SECRET, body, now)
    assert verify(SECRET, body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify("another-secret", body, header)
    assert not verify(SECRET, body, sign(SECRET, body, now - 3600))
    assert not verify(SECRET, body, "nonsense")


async def test_job_events_are_delivered_signed_and_retried(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    receiver: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs.worker, "webhook_backoff", lambda attempt: 0.01)
    state, url = receiver
    state.failures_left = 2
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    async with resources_factory(
        {"crm": crm}, webhook_urls=(url,), webhook_secret=Secret(SECRET)
    ) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        worker = await run_worker(redis, resources)
    assert state.bad_signatures == 0
    assert [(e["type"], e["job"]["id"]) for e in state.received] == [
        ("job.created", job.id),
        ("job.succeeded", job.id),
    ]
    assert state.received[1]["job"]["status"] == "succeeded"
    assert worker.jobs_retried == 2


async def test_deadline_watch_notifies_once_per_job(
    resources_factory: Callable[..., Any], redis: ArqRedis, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    async with resources_factory(
        {"crm": crm},
        webhook_urls=(url,),
        webhook_secret=Secret(SECRET),
    ) as resources:
        pipeline = ExportPipeline(resources)
        # Received 50 minutes ago with an hour to answer: under a quarter of its time left.
        job = pipeline.new_job(
            JobKind.EXPORT,
            subject="alice",
            requested_by="alice",
            connectors=["crm"],
            options=options_for(JobKind.EXPORT),
        )
        job.created_at -= timedelta(minutes=50)
        job.due_at = job.created_at + timedelta(hours=1)
        await pipeline.submit(job)
        ctx = {"handover_pipelines": build_pipelines(resources)}
        assert await watch_deadlines(ctx) == 1
        assert await watch_deadlines(ctx) == 0
        await run_worker(redis, resources)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.SUCCEEDED
        # The archive expires within a day and nobody downloaded it yet.
        assert done.result is not None
        await resources.store.modify(
            job.id,
            lambda j: setattr(
                j.result, "expires_at", j.result.expires_at - timedelta(days=6, hours=12)
            ),
            actor="t",
            event="test",
        )
        assert await watch_deadlines(ctx) == 1
        assert await watch_deadlines(ctx) == 0
        await run_worker(redis, resources)
    types = [e["type"] for e in state.received]
    assert types.count("job.at_risk") == 1
    assert types.count("job.expiring_soon") == 1


async def test_metrics_describe_jobs_connectors_and_archives(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    connectors = {
        "crm": MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}}),
        "ads": MemoryConnector("ads", fail="403 from the ads API"),
    }
    async with resources_factory(connectors) as resources:
        commands = Commands(resources)
        await commands.request_export(Actor("alice", staff=False), subject="alice")
        await commands.request_export(Actor("bob", staff=False), subject="bob", connectors=["crm"])
        await run_worker(redis, resources)
        text = await resources.metrics.render(await resources.store.counts(), 0, 0)
    assert 'handover_jobs{kind="export",status="failed"} 1' in text
    assert 'handover_jobs{kind="export",status="succeeded"} 1' in text
    assert 'handover_connector_errors_total{connector="ads",error_class="permanent"} 1' in text
    assert 'handover_job_duration_seconds_count{kind="export",status="succeeded"} 1' in text
    assert (
        'handover_connector_duration_seconds_bucket{connector="crm",status="succeeded",le="+Inf"} 2'
        in text
    )
    archive_bytes = next(
        line for line in text.splitlines() if line.startswith("handover_archive_bytes_total")
    )
    assert int(archive_bytes.split()[-1]) > 100
    assert "# TYPE handover_job_duration_seconds histogram" in text


async def test_a_token_in_a_webhook_url_stays_out_of_the_queue_and_the_logs(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    receiver: tuple[Receiver, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, url = receiver
    secret_url = f"{url}?token=hook-token-{'t' * 20}"
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    async with resources_factory(
        {"crm": crm}, webhook_urls=(secret_url,), webhook_secret=Secret(SECRET)
    ) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        queued = await redis.keys("arq:job:*")
        assert queued
        for key in queued:
            assert b"hook-token" not in (await redis.get(key) or b"")
        with caplog.at_level("DEBUG"):
            await run_worker(redis, resources)
    assert [e["type"] for e in state.received] == ["job.created", "job.succeeded"]
    assert [e["job"]["id"] for e in state.received] == [job.id, job.id]
    # The receiver's own access log (in this process) is the platform's, not Handover's.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "deliver_webhook" in ours  # arq logged each delivery, and
    assert "hook-token" not in ours  # named the URL by its digest


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hooks",
        "http://[::ffff:169.254.169.254]/hooks",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://0.0.0.0/hooks",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:100.100.100.200]/latest/meta-data/",
    ],
)
def test_webhooks_to_link_local_or_metadata_addresses_stop_start_up(url: str) -> None:
    environ = {"HANDOVER_WEBHOOK_URLS": url, "HANDOVER_WEBHOOK_SECRET": SECRET}
    with pytest.raises(SettingsError, match="HANDOVER_WEBHOOK_URLS: .* link-local or cloud"):
        Settings.load(environ)
    allowed = Settings.load({**environ, "HANDOVER_WEBHOOK_ALLOW_LINK_LOCAL": "true"})
    assert allowed.webhook_urls == (url,)


@pytest.mark.parametrize(
    ("address", "family"),
    [
        ("169.254.169.254", socket.AF_INET),
        ("100.100.100.200", socket.AF_INET),
        ("fd00:ec2::254", socket.AF_INET6),
    ],
)
async def test_a_name_resolving_to_a_link_local_or_metadata_address_is_refused_at_delivery(
    address: str, family: socket.AddressFamily
) -> None:
    resolver = GuardedResolver()
    with pytest.raises(OSError, match="resolves only to link-local"):
        await resolver.resolve(address, 80, family)
    assert [r["host"] for r in await resolver.resolve("127.0.0.1", 80)] == ["127.0.0.1"]
    # Only the metadata address: its neighbours are ordinary (carrier-grade NAT, ULA) hosts.
    assert not forbidden_address("100.100.100.201") and not forbidden_address("fd00:ec2::253")
    await resolver.close()


async def test_a_webhook_redirect_is_not_followed() -> None:
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append("redirect")
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append("elsewhere")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with webhook_session() as session:
            with pytest.raises(DeliveryFailed, match="answered 307"):
                await Sender(session, SECRET).send(str(server.make_url("/hooks")), b"{}")
    finally:
        await server.close()
    assert hits == ["redirect"]
