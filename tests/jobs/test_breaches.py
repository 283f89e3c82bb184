"""The breach register: versions kept, the 72-hour clock, the authority's notification,
webhooks once per stage, the signed report, the CSV, and Handover's retention leaving it be."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.archive.signing import SignatureError
from jobs.breach_report import build_report, register_csv, render_html, verify_report
from jobs.breaches import (
    AlreadyNotified,
    Breach,
    BreachFacts,
    BreachNotFound,
    BreachRegister,
    BreachVersion,
    Clock,
    Recorder,
)
from jobs.commands import Actor, Commands
from jobs.kinds import build_pipelines
from jobs.model import InvalidRequest, utcnow
from jobs.records import Records
from jobs.settings import Secret
from jobs.store import JobNotFound
from jobs.worker import watch_breach_clocks
from tests.jobs.test_webhooks import SECRET, Receiver, receiver, run_worker

__all__ = ["receiver"]  # the fixture, used below

ADMIN = Recorder("admin-1")


def facts(aware_at: datetime, **changes: Any) -> BreachFacts:
    values: dict[str, Any] = {
        "aware_at": aware_at,
        "nature": "A support laptop holding an export of device owners was stolen.",
        "subject_categories": ["device owners"],
        "approx_subjects": None,
        "record_categories": ["contact", "device"],
        "consequences": "Phishing using names and device models.",
        "measures": "Sessions revoked; owners to be warned.",
        "dpo_contact": "dpo@example.com",
    }
    return BreachFacts.model_validate({**values, **changes})


def test_the_clock_runs_from_awareness() -> None:
    aware = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    first = BreachVersion(
        number=1, recorded_at=aware, recorded_by="a", via="api", facts=facts(aware)
    )
    breach = Breach(id="b", created_at=aware, versions=[first])
    assert breach.notify_authority_by == aware + timedelta(hours=72)
    assert breach.clock(aware + timedelta(hours=47, minutes=59)) is Clock.RUNNING
    assert breach.clock(aware + timedelta(hours=48)) is Clock.AT_RISK
    assert breach.clock(aware + timedelta(hours=72)) is Clock.AT_RISK
    assert breach.clock(aware + timedelta(hours=72, seconds=1)) is Clock.OVERDUE


async def test_every_version_is_kept_and_awareness_cannot_move(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({}) as resources:
        register = BreachRegister.of(resources)
        aware = utcnow() - timedelta(hours=5)
        breach = await register.record(ADMIN, facts(aware))
        assert breach.clock(utcnow()) is Clock.RUNNING
        updated = await register.update(
            ADMIN, breach.id, {"approx_subjects": 1180}, "forensics counted them"
        )
        assert [v.number for v in updated.versions] == [1, 2]
        assert updated.versions[0].facts.approx_subjects is None
        assert updated.facts.approx_subjects == 1180
        assert updated.versions[1].note == "forensics counted them"
        with pytest.raises(InvalidRequest, match="aware_at"):
            await register.update(
                ADMIN, breach.id, {"aware_at": aware + timedelta(hours=1)}, "later awareness"
            )
        with pytest.raises(InvalidRequest, match="note"):
            await register.update(ADMIN, breach.id, {"approx_records": 3}, "  ")
        with pytest.raises(BreachNotFound):
            await register.update(ADMIN, "01JD2Z6S41ABCDEFGHJKMNPQRS", {}, "x")
        # Two updates at once: neither is lost.
        await asyncio.gather(
            register.update(ADMIN, breach.id, {"approx_records": 10}, "one"),
            register.update(ADMIN, breach.id, {"measures": "Disk wiped remotely."}, "two"),
        )
        stored = await register.get(breach.id)
        assert [v.number for v in stored.versions] == [1, 2, 3, 4]
        assert {v.note for v in stored.versions[2:]} == {"one", "two"}
        actions = [e["action"] for e in await resources.audit.entries() if e.get("breach")]
        assert actions.count("breach.updated") == 3
        assert actions.count("breach.recorded") == 1
        with pytest.raises(InvalidRequest, match="future"):
            await register.record(ADMIN, facts(utcnow() + timedelta(hours=1)))


async def test_a_late_notification_needs_its_reasons_and_stops_the_clock(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({}) as resources:
        register = BreachRegister.of(resources)
        now = utcnow()
        breach = await register.record(ADMIN, facts(now - timedelta(hours=80)))
        assert breach.clock(now) is Clock.OVERDUE
        late = now - timedelta(hours=2)
        with pytest.raises(InvalidRequest, match="delay_reasons"):
            await register.record_notification(
                ADMIN, breach.id, notified_at=late, reference="CNIL-1"
            )
        with pytest.raises(InvalidRequest, match="before awareness"):
            await register.record_notification(
                ADMIN, breach.id, notified_at=now - timedelta(hours=90), reference="CNIL-1"
            )
        notified = await register.record_notification(
            ADMIN,
            breach.id,
            notified_at=late,
            reference="CNIL-1",
            authority="CNIL",
            delay_reasons="The DPO was unreachable over the weekend.",
        )
        assert notified.clock(now) is Clock.NOTIFIED_LATE
        assert notified.notification is not None and notified.notification.late
        with pytest.raises(AlreadyNotified):
            await register.record_notification(
                ADMIN, breach.id, notified_at=late, reference="again", delay_reasons="x"
            )
        on_time = await register.record(ADMIN, facts(now - timedelta(hours=10)))
        on_time = await register.record_notification(
            ADMIN, on_time.id, notified_at=now, reference="CNIL-2"
        )
        assert on_time.clock(now) is Clock.NOTIFIED
        open_one = await register.record(ADMIN, facts(now - timedelta(hours=60)))
        assert open_one.clock(now) is Clock.AT_RISK
        counts = await register.clock_counts(utcnow())
        assert counts == {
            Clock.RUNNING: 0,
            Clock.AT_RISK: 1,
            Clock.OVERDUE: 0,
            Clock.NOTIFIED: 1,
            Clock.NOTIFIED_LATE: 1,
        }


async def test_at_risk_and_overdue_are_told_once_each(
    resources_factory: Callable[..., Any], redis: ArqRedis, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    async with resources_factory(
        {}, webhook_urls=(url,), webhook_secret=Secret(SECRET)
    ) as resources:
        register = BreachRegister.of(resources)
        aware = utcnow() - timedelta(hours=50)
        breach = await register.record(ADMIN, facts(aware))  # recorded at 50 h: at risk now
        ctx: dict[str, Any] = {"handover_pipelines": build_pipelines(resources)}
        assert await watch_breach_clocks(ctx) == 0  # told when recorded
        assert await watch_breach_clocks(ctx, now=aware + timedelta(hours=72, minutes=1)) == 1
        assert await watch_breach_clocks(ctx, now=aware + timedelta(hours=73)) == 0
        await run_worker(redis, resources)
        fresh = await register.record(ADMIN, facts(utcnow()))
        assert await watch_breach_clocks(ctx) == 0
        await register.record_notification(ADMIN, fresh.id, notified_at=utcnow(), reference="r")
        assert await watch_breach_clocks(ctx, now=utcnow() + timedelta(days=5)) == 0
    assert state.bad_signatures == 0
    assert [(e["type"], e["breach"]["id"]) for e in state.received] == [
        ("breach.at_risk", breach.id),
        ("breach.overdue", breach.id),
    ]
    assert "nature" not in orjson.dumps(state.received).decode()


async def test_the_report_is_signed_from_the_recorded_facts(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({}) as resources:
        register = BreachRegister.of(resources)
        breach = await register.record(ADMIN, facts(utcnow() - timedelta(hours=3)))
        breach = await register.update(ADMIN, breach.id, {"approx_records": 5321}, "counted")
        report = build_report(breach, signer=resources.signer, issued_at=utcnow())
        data = orjson.dumps(report)
        kid, content = verify_report(data, [resources.signer.public_key])
        assert kid == resources.signer.key_id
        assert content["nature"]["approx_subjects"] is None
        assert content["nature"]["approx_records"] == 5321
        assert [p["note"] for p in content["phases"]] == [None, "counted"]
        forged = orjson.loads(data)
        forged["nature"]["approx_records"] = 12
        with pytest.raises(SignatureError, match="does not match"):
            verify_report(orjson.dumps(forged), [resources.signer.public_key])
        page = render_html(report)
        assert "not yet known" in page and "approximately 5321" in page
        assert breach.facts.nature in page


async def test_the_register_as_csv_holds_every_version(
    resources_factory: Callable[..., Any],
) -> None:
    async with resources_factory({}) as resources:
        register = BreachRegister.of(resources)
        first = await register.record(
            ADMIN, facts(utcnow() - timedelta(hours=1), nature="=HYPERLINK(evil)")
        )
        await register.update(ADMIN, first.id, {"approx_subjects": 3}, "counted")
        second = await register.record(ADMIN, facts(utcnow()))
        rows = list(csv.DictReader(io.StringIO(register_csv(await register.all(), utcnow()))))
    assert [(r["breach"], r["version"]) for r in rows] == [
        (second.id, "1"),
        (first.id, "1"),
        (first.id, "2"),
    ]
    assert rows[1]["approx_subjects"] == "" and rows[2]["approx_subjects"] == "3"
    assert rows[1]["nature"] == "'=HYPERLINK(evil)"
    assert rows[0]["clock"] == "running"


async def test_retention_never_deletes_the_register(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})
    async with resources_factory({"crm": crm}) as resources:
        register = BreachRegister.of(resources)
        breach = await register.record(ADMIN, facts(utcnow() - timedelta(days=400)))
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await run_worker(redis, resources)
        purged = await Records.of(resources).purge_finished_jobs(
            actor="retention", now=utcnow() + timedelta(days=4000)
        )
        assert purged.count == 1  # the job went, as retention says
        with pytest.raises(JobNotFound):
            await resources.store.get(job.id)
        assert [b.id for b in await register.all()] == [breach.id]
        assert (await register.get(breach.id)).versions[0].facts == breach.facts
