"""Art. 34 notices: 1,000 affected subjects told through a real SMTP server, each in their
language, and the delivery report accounting for every uploaded line."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.worker import Retry

from connectors.errors import TransientError
from connectors.items import Subject
from connectors.testing import MemoryConnector
from jobs.breach_notices import CHUNK, MAX_TRIES, BreachNotices, FanOutExists
from jobs.breaches import BreachFacts, BreachRegister, Recorder
from jobs.kinds import build_pipelines
from jobs.lifecycle import NotAllowed
from jobs.mail import read_maildir
from jobs.model import InvalidRequest, utcnow
from jobs.notices import maildir_path
from jobs.queue import QUEUE_NAME
from jobs.worker import watch_breach_clocks
from tests.conftest import free_port
from tests.jobs.test_notices import SENDER, run_worker, smtp
from tests.mailserver import mail_server

ADMIN = Recorder("admin-1")
LOCALES = ("en", "fr-BE", "nl", "de-AT")


class Directory(MemoryConnector):
    """The platform's users: an email for most, and the language each reads."""

    provides = frozenset({"email", "locale"})

    def __init__(self, people: Mapping[str, Mapping[str, str]]) -> None:
        super().__init__("directory", records={})
        self.people = people

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        return dict(self.people.get(subject.id, {}))


def directory(count: int) -> Directory:
    """``u0``…: every seventh has no address; languages cycle through :data:`LOCALES`."""
    people = {}
    for n in range(count):
        person = {"locale": LOCALES[n % len(LOCALES)]}
        if n % 7:
            person["email"] = f"u{n}@example.com"
        people[f"u{n}"] = person
    return Directory(people)


async def upload(lines: Iterable[str]) -> AsyncIterator[bytes]:
    for line in lines:
        yield f"{line}\n".encode()


FACTS = {
    "nature": "A support laptop holding names and device models was stolen.",
    "subject_categories": ["device owners"],
    "record_categories": ["contact", "device"],
    "consequences": "You may receive phishing messages that use your device's model.",
    "measures": "We revoked every session; never give your password by email.",
    "dpo_contact": "dpo@platform.example",
}


async def record_breach(register: BreachRegister) -> str:
    facts = BreachFacts.model_validate({**FACTS, "aware_at": utcnow() - timedelta(hours=80)})
    return (await register.record(ADMIN, facts)).id


async def test_a_thousand_subjects_are_told_in_their_language_and_each_is_accounted_for(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    count = 1000
    lines = [f"u{n}" for n in range(count)]
    lines[3] = "u3,fr"  # the upload's language wins over the directory's (nl for u2, en for u3)
    lines.insert(500, "")  # blank lines are skipped
    lines.append("u1")  # a duplicate: told once
    with mail_server() as (inbox, port):
        async with resources_factory({"directory": directory(count)}, **smtp(port)) as resources:
            register = BreachRegister.of(resources)
            breach_id = await record_breach(register)
            notices = BreachNotices.of(resources)
            started = await notices.start(ADMIN, breach_id, upload(lines))
            assert started["state"] == "sending" and started["total"] == count + 1
            assert started["pending"] == count + 1
            began = time.perf_counter()
            worker = await run_worker(redis, resources)
            elapsed = time.perf_counter() - began
            progress = await notices.progress(breach_id)
            report = [row async for row in notices.report(breach_id)]
            with pytest.raises(FanOutExists):
                await notices.start(ADMIN, breach_id, upload(["u1"]))
            audit = [e for e in await resources.audit.entries() if e.get("breach") == breach_id]
    print(f"\n1,000 Art. 34 notices through SMTP: {elapsed:.2f} s")
    no_address = [f"u{n}" for n in range(count) if n % 7 == 0]
    assert worker.jobs_failed == 0
    assert progress == {
        "state": "done",
        "version": 1,
        "total": count + 1,
        "sent": count - len(no_address),
        "no_address": len(no_address),
        "not_looked_up": 0,
        "failed": 0,
        "unconfirmed": 0,
        "duplicate": 1,
        "pending": 0,
        "started_at": progress["started_at"],
        "finished_at": progress["finished_at"],
    }
    # The report: every uploaded line, in order, with its outcome; no address in it.
    assert [row["subject"] for row in report] == [line.split(",")[0] for line in lines if line]
    assert [row["line"] for row in report][499:502] == [500, 502, 503]
    assert [row["subject"] for row in report if row["status"] == "no_address"] == no_address
    assert report[-1]["status"] == "duplicate"
    assert all("@example.com" not in str(row) for row in report)
    # The mail: one message per subject with an address, in their language.
    assert len(inbox.received) == count - len(no_address)
    by_address = {r.recipients[0]: r for r in inbox.received}
    assert len(by_address) == len(inbox.received)
    languages = Counter(r.message["Content-Language"] for r in inbox.received)
    assert set(languages) == {"en", "fr", "nl", "de"}
    assert by_address["u3@example.com"].message["Content-Language"] == "fr"
    assert by_address["u2@example.com"].message["Content-Language"] == "nl"
    sent = {row["subject"]: row for row in report if row["status"] == "sent"}
    assert sent["u2"]["message_id"] == by_address["u2@example.com"].message["Message-ID"]
    english = by_address["u4@example.com"].words()
    for fact in ("nature", "consequences", "measures", "dpo_contact"):
        assert str(FACTS[fact]) in english, fact
    assert by_address["u4@example.com"].message["From"] == SENDER
    french = by_address["u1@example.com"].words()
    assert "Ce qui s'est passé" in french and "délégué à la protection des données" in french
    assert {e["action"] for e in audit} >= {
        "breach.recorded",
        "breach.subjects_notified",
        "breach.subjects_notices_done",
    }


async def test_a_malformed_upload_keeps_nothing_and_can_be_sent_again(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({"directory": directory(3)}) as resources:
        register = BreachRegister.of(resources)
        breach_id = await record_breach(register)
        notices = BreachNotices.of(resources)
        bad = [f"u{n}" for n in range(CHUNK + 5)] + ["u1\tu2"]
        with pytest.raises(InvalidRequest, match=f"line {CHUNK + 6}"):
            await notices.start(ADMIN, breach_id, upload(bad))
        keys = [k async for k in resources.redis.scan_iter(match=f"*{breach_id}:art34*")]
        assert keys == []
        assert (await notices.progress(breach_id))["state"] == "not_started"
        with pytest.raises(InvalidRequest, match="no subject id"):
            await notices.start(ADMIN, breach_id, upload(["", "  "]))
        started = await notices.start(ADMIN, breach_id, upload(["u0", "u1,fr"]))
        assert started["total"] == 2


async def test_lost_tasks_and_an_abandoned_upload_do_not_leave_a_fan_out_stuck(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory({"directory": directory(3)}) as resources:
        register = BreachRegister.of(resources)
        notices = BreachNotices.of(resources)
        # An upload whose process died midway: refused while fresh, forgotten when stale.
        stuck = await record_breach(register)
        await resources.redis.hset(
            f"{resources.store.ns}breach:{stuck}:art34",
            mapping={"state": "uploading", "uploading_since": (utcnow()).isoformat()},
        )
        with pytest.raises(FanOutExists, match="uploading"):
            await notices.start(ADMIN, stuck, upload(["u1"]))
        await resources.redis.hset(
            f"{resources.store.ns}breach:{stuck}:art34",
            "uploading_since",
            (utcnow() - timedelta(hours=2)).isoformat(),
        )
        assert (await notices.start(ADMIN, stuck, upload(["u1"])))["total"] == 1
        # Its task lost (as if the process died before queuing it): the cron queues it again.
        await resources.redis.delete(QUEUE_NAME, f"{job_key_prefix}breach-notices:{stuck}:0")
        ctx = {"handover_pipelines": build_pipelines(resources)}
        await run_worker(redis, resources)
        assert (await notices.progress(stuck))["state"] == "sending"
        await watch_breach_clocks(ctx)
        await run_worker(redis, resources)
        progress = await notices.progress(stuck)
        await watch_breach_clocks(ctx)  # nothing left to queue
        queued = await resources.redis.zcard(QUEUE_NAME)
        maildir = maildir_path(resources.settings)
        assert maildir is not None
    assert progress["state"] == "done" and progress["pending"] == 0
    assert progress["sent"] == 1, progress  # once, into the maildir (no SMTP URL here)
    assert len(read_maildir(maildir)) == 1
    assert queued == 0


class Flaky(Directory):
    """A directory that fails for now, ``failing[id]`` more times, for the subjects named."""

    def __init__(self, people: Mapping[str, Mapping[str, str]], failing: dict[str, int]) -> None:
        super().__init__(people)
        self.failing = failing

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        if self.failing.get(subject.id, 0) > 0:
            self.failing[subject.id] -= 1
            raise TransientError("directory busy")
        return await super().resolve(subject)


async def test_a_source_failing_for_now_leaves_its_line_undone_never_no_address(
    resources_factory: Callable[..., Any],
) -> None:
    people = directory(4).people
    flaky = Flaky(people, {"u1": 1, "u2": MAX_TRIES})
    async with resources_factory({"directory": flaky}) as resources:
        breach_id = await record_breach(BreachRegister.of(resources))
        notices = BreachNotices.of(resources)
        await notices.start(ADMIN, breach_id, upload(["u1", "u2", "u3"]))
        with pytest.raises(Retry):
            await notices.send_chunk(breach_id, 0, attempt=1)
        first = await notices.progress(breach_id)
        assert first["no_address"] == 0 and first["state"] == "sending", first
        for attempt in range(2, MAX_TRIES + 1):
            with contextlib.suppress(Retry):
                await notices.send_chunk(breach_id, 0, attempt=attempt)
        progress = await notices.progress(breach_id)
        report = {row["subject"]: row async for row in notices.report(breach_id)}
    assert progress["state"] == "done" and progress["pending"] == 0, progress
    assert (progress["sent"], progress["not_looked_up"], progress["no_address"]) == (2, 1, 0)
    assert report["u1"]["status"] == "sent"  # the second try found its address
    assert report["u2"]["status"] == "not_looked_up"
    assert "directory busy" in report["u2"]["reason"]


async def test_each_letter_goes_out_at_most_once_even_with_runs_side_by_side(
    resources_factory: Callable[..., Any],
) -> None:
    count = 300
    with mail_server() as (inbox, port):
        async with resources_factory({"directory": directory(count)}, **smtp(port)) as resources:
            breach_id = await record_breach(BreachRegister.of(resources))
            notices = BreachNotices.of(resources)
            await notices.start(ADMIN, breach_id, upload(f"u{n}" for n in range(count)))
            # A run that died after claiming u1 (it handed its letter over, or not).
            claims = f"{resources.store.ns}breach:{breach_id}:art34:claims:0"
            await resources.redis.hsetnx(claims, 2, "a-run-that-died")
            await asyncio.gather(*(notices.send_chunk(breach_id, 0) for _ in range(3)))
            progress = await notices.progress(breach_id)
            report = [row async for row in notices.report(breach_id)]
            audit = [e for e in await resources.audit.entries() if e.get("breach") == breach_id]
    recipients = [r.recipients[0] for r in inbox.received]
    assert len(recipients) == len(set(recipients)), "a letter went out twice"
    assert "u1@example.com" not in recipients
    assert report[1]["status"] == "unconfirmed" and "at most once" in report[1]["reason"]
    with_address = count - len(range(0, count, 7))
    assert progress["state"] == "done" and progress["pending"] == 0, progress
    # Lines another run was handing over when a run began are unconfirmed, never resent.
    assert progress["sent"] + progress["unconfirmed"] == with_address
    assert progress["sent"] == len(recipients)
    done = [e for e in audit if e["action"] == "breach.subjects_notices_done"]
    assert len(done) == 1


async def test_two_chunks_finishing_together_write_one_done_entry(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({"directory": directory(CHUNK + 1)}) as resources:
        breach_id = await record_breach(BreachRegister.of(resources))
        notices = BreachNotices.of(resources)
        await notices.start(ADMIN, breach_id, upload(f"u{n}" for n in range(CHUNK + 1)))
        await asyncio.gather(notices._chunk_done(breach_id, 0), notices._chunk_done(breach_id, 1))
        audit = [e for e in await resources.audit.entries() if e.get("breach") == breach_id]
        progress = await notices.progress(breach_id)
    assert progress["state"] == "done"
    assert [e["action"] for e in audit].count("breach.subjects_notices_done") == 1


async def test_notices_off_refuse_a_fan_out_and_failed_letters_can_be_sent_again(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    # A Redis server of its own (not the embedded store): no maildir; no SMTP URL either.
    server = {"redis_url": "redis://127.0.0.1:6379/4"}
    async with resources_factory({"directory": directory(3)}, **server) as resources:
        breach_id = await record_breach(BreachRegister.of(resources))
        with pytest.raises(NotAllowed, match="notices are off") as refused:
            await BreachNotices.of(resources).start(ADMIN, breach_id, upload(["u1"]))
        assert refused.value.rule == "notices-off"
    with mail_server() as (inbox, port):
        # The server the fan-out was given stays unreachable through every attempt.
        async with resources_factory({"directory": directory(3)}, **smtp(free_port())) as down:
            notices = BreachNotices.of(down)
            await notices.start(ADMIN, breach_id, upload(["u1", "u2"]))
            with pytest.raises(NotAllowed, match="sending"):
                await notices.retry_failed(ADMIN, breach_id)
            await notices.send_chunk(breach_id, 0, attempt=MAX_TRIES)
            failed = await notices.progress(breach_id)
        async with resources_factory({"directory": directory(3)}, **smtp(port)) as up:
            notices = BreachNotices.of(up)
            again = await notices.retry_failed(ADMIN, breach_id)
            await run_worker(redis, up)
            progress = await notices.progress(breach_id)
            audit = [e["action"] for e in await up.audit.entries() if e.get("breach") == breach_id]
    assert (failed["state"], failed["failed"]) == ("done", 2), failed
    assert (again["state"], again["pending"], again["failed"]) == ("sending", 2, 0), again
    assert (progress["state"], progress["sent"], progress["failed"]) == ("done", 2, 0), progress
    assert sorted(r.recipients[0] for r in inbox.received) == ["u1@example.com", "u2@example.com"]
    assert audit.count("breach.subjects_notices_retried") == 1
    assert audit.count("breach.subjects_notices_done") == 2
