"""Notices reach the subject through a real SMTP server (aiosmtpd, started here), once, in
their language, with the Message-ID on the timeline; or the timeline says why not.

The worker runs as it does in production (``create_worker``, burst mode); the tests
read what the server received.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from babel.messages.extract import extract_from_file
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

import jobs.notices
from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.export import ExportPipeline
from jobs.mail import smtp_target
from jobs.model import Event, Identity, JobKind, JobStatus
from jobs.notices import LANGUAGES, LOCALE_DIR, MAX_TRIES, _day_writer, compose, notify_subject
from jobs.resources import Resources
from jobs.settings import Secret, Settings, SettingsError
from jobs.worker import create_worker
from tests.conftest import REDIS_URL, free_port
from tests.factories import options_for
from tests.mailserver import PASSWORD, USER, mail_server, self_signed
from tests.polling import eventually

ALICE = "alice@example.com"
SENDER = "Example privacy team <privacy@platform.example>"
PRIVACY_URL = "https://privacy.platform.example/requests/{job}"
SUBJECT = Actor("alice", staff=False)


def crm() -> dict[str, MemoryConnector]:
    return {"crm": MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})}


def identity(email: str | None = ALICE) -> Identity:
    """What a subject's token vouches for: their verified email, if any."""
    known = Identity()
    if email is not None:
        known.add({"email": email}, {"source": "token", "verified_by": "sign-in (email_verified)"})
    return known


def smtp(port: int, scheme: str = "smtp", credentials: str = "", query: str = "") -> dict[str, Any]:
    """Settings sending notices through the server on ``port``."""
    return {
        "smtp_url": f"{scheme}://{credentials}127.0.0.1:{port}{query}",
        "mail_from": SENDER,
        "privacy_url": PRIVACY_URL,
    }


async def run_worker(redis: ArqRedis, resources: Resources) -> Worker:
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


async def notices(resources: Resources, job_id: str) -> list[Event]:
    return [e for e in await resources.store.events(job_id) if e.type.startswith("notice.")]


# aiosmtpd warns of AUTH without TLS it started itself; smtps is TLS from the first byte.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries come at once (the backoff's shape is the webhooks')."""
    monkeypatch.setattr(jobs.notices, "backoff", lambda attempt, **_: 0.01)


async def test_an_export_is_acknowledged_then_completed_in_the_subjects_language(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_export(
                SUBJECT, subject="alice", identity=identity(), locale="fr-BE"
            )
            await run_worker(redis, resources)
            done = await resources.store.get(job.id)
            events = await notices(resources, job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result is not None
    assert [(r.message["X-Handover-Notice"], r.recipients) for r in inbox.received] == [
        ("acknowledged", [ALICE]),
        ("completed", [ALICE]),
    ]
    completed = inbox.about("completed")[0]
    message = completed.message
    assert completed.sender == "privacy@platform.example"
    assert message["Subject"] == "Vos données sont prêtes"
    assert message["Content-Language"] == "fr"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"] == f"<handover.{job.id}.completed.1@platform.example>"
    link = PRIVACY_URL.replace("{job}", job.id)
    assert link in completed.text() and f'href="{link}"' in completed.html()
    assert "Connectez-vous pour télécharger vos données" in completed.text()
    for body in (completed.text(), completed.html()):
        assert "/download" not in body and ".zip" not in body and done.result.key not in body
    assert [(e.type, e.data["notice"]) for e in events] == [
        ("notice.sent", "acknowledged"),
        ("notice.sent", "completed"),
    ]
    sent = events[1].data
    assert sent["message_id"] == message["Message-ID"]
    assert sent["language"] == "fr" and sent["via"] == "smtp"
    assert ALICE not in orjson.dumps([e.data for e in events]).decode()


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
async def test_tls_and_sign_in_against_a_server_with_a_self_signed_certificate(
    scheme: str,
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    certificate = self_signed(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))  # the operator trusts its CA
    server = {"starttls": scheme == "smtp", "implicit_tls": scheme == "smtps"}
    with mail_server(certificate=certificate, login=True, **server) as (inbox, port):
        credentials = f"{USER}:{PASSWORD.replace('-', '%2D')}@"
        settings = smtp(port, scheme, credentials)
        async with resources_factory(crm(), **settings) as resources:
            assert PASSWORD not in repr(resources.settings)
            job = await Commands(resources).request_export(
                SUBJECT, subject="alice", identity=identity(), locale="de"
            )
            await run_worker(redis, resources)
            events = await notices(resources, job.id)
    assert [(r.tls, r.login) for r in inbox.received] == [(True, USER), (True, USER)]
    assert inbox.about("completed")[0].message["Subject"] == "Ihre Daten sind bereit"
    assert [e.type for e in events] == ["notice.sent", "notice.sent"]


async def test_a_certificate_that_does_not_verify_is_never_written_to(
    resources_factory: Callable[..., Any], redis: ArqRedis, tmp_path: Path
) -> None:
    certificate = self_signed(tmp_path / "tls")  # not trusted: no SSL_CERT_FILE
    with mail_server(certificate=certificate, starttls=True) as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_export(
                SUBJECT, subject="alice", identity=identity()
            )
            await run_worker(redis, resources)
            events = await notices(resources, job.id)
            done = await resources.store.get(job.id)
    assert inbox.received == []
    assert done.status is JobStatus.SUCCEEDED
    assert [(e.type, e.data["attempts"]) for e in events] == [("notice.failed", 1)] * 2
    assert events[0].data["error"].endswith("its TLS certificate does not verify")


async def test_smtp_down_is_retried_then_recorded_as_failed_and_the_job_is_unaffected(
    resources_factory: Callable[..., Any], redis: ArqRedis, fast_retries: None
) -> None:
    port = free_port()  # nothing listens there
    async with resources_factory(crm(), **smtp(port)) as resources:
        job = await Commands(resources).request_export(
            SUBJECT, subject="alice", identity=identity()
        )
        worker = await run_worker(redis, resources)
        done = await resources.store.get(job.id)
        events = await notices(resources, job.id)
        letters = [key async for key in redis.scan_iter(match="handover:notice:*:letter")]
    assert done.status is JobStatus.SUCCEEDED and done.result is not None
    assert [(e.type, e.data["notice"]) for e in events] == [
        ("notice.failed", "acknowledged"),
        ("notice.failed", "completed"),
    ]
    for event in events:
        assert event.data["attempts"] == MAX_TRIES
        assert event.data["error"] == f"smtp://127.0.0.1:{port} unreachable: SMTPConnectError"
    assert worker.jobs_retried >= 2 * (MAX_TRIES - 1)
    assert letters == []  # the address is forgotten once the notice is given up


async def test_a_refused_recipient_is_given_up_at_once_in_handovers_own_words(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        inbox.refusal = f"550 5.1.1 <{ALICE}>: Recipient address rejected: User unknown"
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_export(
                SUBJECT, subject="alice", identity=identity()
            )
            await run_worker(redis, resources)
            events = await notices(resources, job.id)
    assert inbox.refused == 2 and inbox.received == []
    assert [(e.type, e.data["attempts"]) for e in events] == [("notice.failed", 1)] * 2
    assert events[0].data["error"] == f"smtp://127.0.0.1:{port} refused the recipient (550)"


async def test_no_address_no_notice_and_the_timeline_says_so(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            commands = Commands(resources)
            job = await commands.request_export(SUBJECT, subject="alice", identity=identity(None))
            await run_worker(redis, resources)
            events = await notices(resources, job.id)
            queued = [key async for key in redis.scan_iter(match="arq:*notice:*")]
    assert inbox.received == [] and queued == []
    assert [(e.type, e.data["notice"]) for e in events] == [
        ("notice.skipped", "acknowledged"),
        ("notice.skipped", "completed"),
    ]
    assert {e.data["reason"] for e in events} == {"no email address of the subject is known"}


async def test_on_a_shared_redis_without_smtp_notices_are_off_and_said_to_be(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory(crm(), redis_url=REDIS_URL) as resources:
        job = await Commands(resources).request_erasure(
            SUBJECT, JobKind.ERASURE, subject="alice", identity=identity()
        )
        events = await notices(resources, job.id)
        assert not (resources.settings.data_dir / "mail").exists()
    off = "notices are off: HANDOVER_SMTP_URL is not set"
    assert [(e.type, e.data) for e in events] == [
        ("notice.skipped", {"notice": "acknowledged", "reason": off}),
        ("notice.skipped", {"notice": "awaiting_confirmation", "reason": off}),
    ]


async def test_a_skipped_notice_is_recorded_once_with_its_one_timeline_entry(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    """The skip and its ``notice.skipped`` entry are written in one step, once: asked
    again (a task run twice), the notice is known and nothing more is written."""
    async with resources_factory(crm(), redis_url=REDIS_URL) as resources:
        job = await Commands(resources).request_erasure(
            SUBJECT, JobKind.ERASURE, subject="alice", identity=identity()
        )
        for _ in range(2):
            await notify_subject(resources, job, "awaiting_confirmation")
            await notify_subject(resources, job, "awaiting_confirmation", occasion="again")
        events = await notices(resources, job.id)
        queued = [key async for key in redis.scan_iter(match="arq:*notice:*")]
    assert queued == []
    assert [(e.type, e.data["notice"]) for e in events] == [
        ("notice.skipped", "acknowledged"),
        ("notice.skipped", "awaiting_confirmation"),
        ("notice.skipped", "awaiting_confirmation"),  # the occasion "again"
    ]


async def test_the_queue_never_holds_the_address_and_a_notice_goes_once(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_export(
                SUBJECT, subject="alice", identity=identity()
            )
            await notify_subject(resources, job, "acknowledged")  # again: changes nothing
            client: Any = redis  # redis-py types async results as sync-or-async unions
            tasks = [await client.get(key) async for key in client.scan_iter(match="arq:job:*")]
            assert tasks and all(ALICE.encode() not in (task or b"") for task in tasks)
            letter = f"handover:notice:{job.id}:acknowledged:1:letter"
            assert ALICE.encode() in await client.get(letter)
            assert 0 < await client.ttl(letter) <= 7 * 86400
            await run_worker(redis, resources)
            await notify_subject(resources, job, "acknowledged")  # after sending: nothing
            await run_worker(redis, resources)
            assert await client.exists(letter) == 0
            kept = [await client.get(key) async for key in client.scan_iter(match="arq:*")]
            assert all(ALICE.encode() not in value for value in kept if isinstance(value, bytes))
            events = await notices(resources, job.id)
    assert len(inbox.about("acknowledged")) == 1
    assert [e.data["notice"] for e in events] == ["acknowledged", "completed"]


async def test_each_extension_is_told_once(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_erasure(
                SUBJECT, JobKind.RESTRICTION, subject="alice", identity=identity(), locale="nl"
            )
            first, second = job.due_at + timedelta(days=30), job.due_at + timedelta(days=61)
            for due_at in (first, first, second):  # the first one told twice (a retried call)
                await notify_subject(
                    resources, job, "extended", reason="ten processors", due_at=due_at
                )
            await run_worker(redis, resources)
            events = [e for e in await notices(resources, job.id) if e.data["notice"] == "extended"]
    extended = inbox.about("extended")
    sent = {r.message["Message-ID"] for r in extended}
    assert len(extended) == 2 == len(sent) == len(events)
    assert {e.data["message_id"] for e in events} == sent
    assert all("Reden: ten processors" in r.words() for r in extended)
    assert {
        any(f"uiterlijk op {d.day} " in r.words() for r in extended) for d in (first, second)
    } == {True}


async def test_completed_waits_for_the_job_to_end_and_never_goes_for_a_job_that_failed(
    resources_factory: Callable[..., Any], redis: ArqRedis, fast_retries: None
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            store = resources.store
            pipeline = ExportPipeline(resources)
            finishing = []
            for subject in ("alice", "bob"):  # jobs whose finish wrote the result, not yet moved
                job = pipeline.new_job(
                    JobKind.EXPORT,
                    subject=subject,
                    requested_by=subject,
                    connectors=["crm"],
                    options=options_for(JobKind.EXPORT),
                    identity=identity(f"{subject}@example.com"),
                )
                await store.create(job)
                running = await store.transition(job.id, JobStatus.RUNNING, actor="test")
                assert running is not None
                await notify_subject(resources, running, "completed")
                finishing.append(running)
            worker = create_worker(
                resources.settings,
                redis=redis,
                resources=resources,
                poll_delay=0.01,
                handle_signals=False,
            )
            task = asyncio.create_task(worker.async_run())
            try:
                retried: Any = redis
                await eventually(
                    lambda: retried.exists(
                        *(f"arq:retry:notice:{j.id}:completed:1" for j in finishing)
                    ),
                    until=lambda count: count == 2,
                    timeout=10,
                    what="both notices to have found their job still running, and wait",
                )
                assert inbox.received == []
                alice, bob = finishing
                await store.transition(alice.id, JobStatus.SUCCEEDED, actor="test")
                await store.transition(bob.id, JobStatus.FAILED, actor="test")
                events = await eventually(
                    lambda: asyncio.gather(
                        notices(resources, alice.id), notices(resources, bob.id)
                    ),
                    until=lambda found: all(found),
                    timeout=10,
                    what="both notices to end",
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert [(r.recipients, r.message["X-Handover-Notice"]) for r in inbox.received] == [
        ([ALICE], "completed")
    ]
    assert [e.type for e in events[0]] == ["notice.sent"]
    assert [(e.type, e.data["reason"]) for e in events[1]] == [
        ("notice.skipped", "the request ended failed, not completed")
    ]


async def test_a_dry_run_tells_the_subject_nothing(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    with mail_server() as (inbox, port):
        async with resources_factory(crm(), **smtp(port)) as resources:
            job = await Commands(resources).request_erasure(
                SUBJECT,
                JobKind.ERASURE,
                subject="alice",
                identity=identity(),
                dry_run=True,
            )
            await run_worker(redis, resources)
            events = await notices(resources, job.id)
    assert inbox.received == []
    assert [e.data["notice"] for e in events] == ["acknowledged", "completed"]
    assert all(e.data["reason"].startswith("a dry run") for e in events)


async def test_staff_words_are_escaped_in_html_and_every_notice_is_written_in_every_language(
    resources_factory: Callable[..., Any],
) -> None:
    details: dict[str, dict[str, str]] = {
        "extended": {"reason": "<b>twelve</b> processors", "due_at": "2027-03-04T10:00:00+00:00"},
        "refused": {
            "grounds": "manifestly_unfounded",
            "reason": "<script>alert(1)</script>",
            "authority": "APD",
            "authority_url": "https://www.dataprotectionauthority.be",
        },
        "information_needed": {"needed": "<i>a copy</i> of your last invoice"},
        "restriction_lifting": {"lifts_at": "2027-02-01T00:00:00+00:00", "reason": "verified"},
        "disclosed": {
            "authority": "<b>a court</b>",
            "reference": "RG 26/01234",
            "legal_basis": "<script>alert(1)</script>",
            "disclosed_at": "2027-01-05T10:00:00+00:00",
        },
    }
    async with resources_factory(crm(), **smtp(25)) as resources:
        job = await Commands(resources).request_export(
            SUBJECT, subject="alice", identity=identity()
        )
        subjects: dict[str, set[str]] = {}
        for notice in jobs.notices.NOTICES:
            for language in LANGUAGES:
                message, _, _ = compose(
                    resources.settings,
                    job,
                    notice,
                    f"{notice}:1",
                    language,
                    ALICE,
                    details.get(notice, {}),
                )
                html = message.get_body(("html",))
                assert html is not None
                assert "<script>" not in html.get_content() and "<b>" not in html.get_content()
                subjects.setdefault(notice, set()).add(str(message["Subject"]))
    assert all(len(texts) == len(LANGUAGES) for texts in subjects.values()), subjects


def test_every_text_is_translated_and_the_compiled_catalogs_are_current() -> None:
    source = Path(jobs.notices.__file__)
    texts = {str(message) for _, message, _, _ in extract_from_file("python", str(source))}
    assert len(texts) > 40
    placeholders = re.compile(r"\{[a-z_]+\}")
    for language in LANGUAGES[1:]:
        folder = LOCALE_DIR / language / "LC_MESSAGES"
        with (folder / "handover.po").open("rb") as handle:
            catalog = read_po(handle)
        translated = {
            str(m.id): str(m.string) for m in catalog if m.id and not m.fuzzy and m.string
        }
        assert set(translated) == texts, f"{language}: untranslated or stale texts"
        for text, translation in translated.items():
            assert sorted(placeholders.findall(text)) == sorted(placeholders.findall(translation))
        with (folder / "handover.mo").open("rb") as handle:
            compiled = {str(m.id): str(m.string) for m in read_mo(handle) if m.id}
        assert compiled == translated, f"{language}: run `make catalogs` to compile the .po"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"HANDOVER_SMTP_URL": "http://mail.example"}, "expected an smtp:// or smtps:// URL"),
        ({"HANDOVER_SMTP_URL": "smtp://mail.example:99999"}, "the port is not a number"),
        ({"HANDOVER_SMTP_URL": "smtp://mail.example?tls=yes"}, "unknown option 'tls'"),
        ({"HANDOVER_SMTP_URL": "smtps://mail.example?starttls=required"}, "TLS from the start"),
        ({"HANDOVER_SMTP_URL": "smtp://mail.example"}, "HANDOVER_MAIL_FROM: required"),
        (
            {"HANDOVER_SMTP_URL": "smtp://mail.example", "HANDOVER_MAIL_FROM": "privacy"},
            "HANDOVER_MAIL_FROM: expected an email address",
        ),
        (
            {"HANDOVER_SMTP_URL": "smtp://mail.example", "HANDOVER_MAIL_FROM": "a@example.com"},
            "HANDOVER_PRIVACY_URL: required when HANDOVER_SMTP_URL is set",
        ),
    ],
)
def test_a_bad_smtp_setting_stops_start_up_with_one_line(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(problem)) as raised:
        Settings.load(environ)
    assert "\n" not in str(raised.value)


def test_smtp_urls_say_how_to_reach_the_server() -> None:
    plain = smtp_target("smtp://relay.internal")
    assert (plain.port, plain.implicit_tls, plain.starttls_required) == (25, False, False)
    required = smtp_target("smtp://relay.internal:587?starttls=required")
    assert (required.port, required.starttls_required) == (587, True)
    signed_in = smtp_target("smtp://user:p%40ss@relay.internal:587")
    assert (signed_in.username, signed_in.password) == ("user", "p@ss")
    assert signed_in.starttls_required  # a password never crosses in clear
    implicit = smtp_target("smtps://relay.internal")
    assert (implicit.port, implicit.implicit_tls) == (465, True)
    settings = Settings(
        data_dir=Path("/nonexistent"),
        smtp_url=Secret("smtp://user:s3cret-password@relay.internal:587"),
        mail_from="privacy@example.com",
        public_url="https://api.example.com",
    )
    assert "s3cret" not in repr(settings) and "smtp://user:****@relay.internal:587" in repr(
        settings
    )
    assert settings.smtp_url is not None
    assert timedelta(0) < jobs.notices.LETTER_TTL < jobs.notices.STATE_TTL


def test_days_are_written_in_the_controllers_time_zone() -> None:
    """A deadline ends at 23:59:59.999 where the controller is: the letter names that day."""
    due = datetime(2027, 1, 5, 7, 59, 59, 999000, tzinfo=UTC)  # 4 Jan, 23:59 in Los Angeles
    assert _day_writer(str, ZoneInfo("America/Los_Angeles"))(due) == "4 January 2027"
    assert _day_writer(str, UTC)(due) == "5 January 2027"
