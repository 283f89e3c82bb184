"""Erasure and restriction over HTTP: confirmation, grace, cancel, retention, receipts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.items import Item, Subject
from connectors.reports import ErasureReport, RetentionRule
from connectors.testing import MemoryConnector
from jobs.model import utcnow
from jobs.queue import QUEUE_NAME
from jobs.settings import RetentionConfig
from jobs.worker import WorkerContext, sweep, watchdog
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory

INVOICES = [{"id": "inv-1", "amount_cents": 1999}, {"id": "inv-2", "amount_cents": 500}]
TAX_LAW = RetentionConfig(
    name="invoices",
    legal_basis="tax law: invoices kept 10 years (GDPR Art. 17(3)(b))",
    duration=timedelta(days=3650),
    dataset="billing/invoices",
)


def platform() -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm",
            records={
                "alice": {"contacts": [{"id": 1, "email": "alice@example.com"}]},
                "bob": {"contacts": [{"id": 2, "email": "bob@example.com"}]},
            },
        ),
        "billing": MemoryConnector(
            "billing",
            records={"alice": {"invoices": INVOICES, "cards": [{"last4": "4242"}]}},
            datasets=[
                {"name": "invoices", "category": "economic"},
                {"name": "cards", "category": "economic"},
            ],
        ),
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(platform(), erasure_grace=timedelta(0), retention=(TAX_LAW,))


async def erase(api: Api, sub: str = "alice", **body: Any) -> dict[str, Any]:
    status, headers, job = await api.request("POST", "/v1/erasures", sub=sub, json=body)
    assert status == 202, job
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    return job  # type: ignore[no-any-return]


async def confirm(api: Api, job_id: str, sub: str = "alice", *roles: str) -> tuple[int, Any]:
    status, _, body = await api.request("POST", f"/v1/jobs/{job_id}/confirm", sub=sub, roles=roles)
    return status, body


def records(api: Api, connector: str, subject: str = "alice") -> dict[str, Any]:
    memory = api.resources.connectors[connector]
    assert isinstance(memory, MemoryConnector)
    return {name: list(rows) for name, rows in memory.records.get(subject, {}).items()}


async def assert_nothing_runs_unconfirmed(api: Api, job_id: str) -> None:
    """Nothing of an unconfirmed erasure runs, however long we wait.

    The worker drains its queue and no task of the job exists (queued, deferred,
    running or done); the crons that queue lost work again queue none of it, the
    sweeper not even a year on; the job, its timeline and every processor's data
    stay as they were.
    """
    held = {name: records(api, name) for name in api.resources.connectors}
    redis = api.resources.redis
    await eventually(
        lambda: redis.zcard(QUEUE_NAME),
        until=lambda depth: depth == 0,
        timeout=10,
        what="the worker to drain its queue (its own crons come and go)",
    )
    ctx: dict[str, Any] = {}
    await WorkerContext(api.resources.settings, resources=api.resources).on_startup(ctx)
    assert await watchdog(ctx) == 0
    assert await sweep(ctx, now=utcnow() + timedelta(days=365)) == 0
    # arq keeps a task under arq:job:, arq:in-progress:, arq:retry: or arq:result:.
    assert [key async for key in redis.scan_iter(match=f"arq:*{job_id}*")] == []
    job = await api.job(job_id)
    assert job["status"] == "awaiting_confirmation", job
    assert {name: run["status"] for name, run in job["connectors"].items()} == {
        name: "pending" for name in api.resources.connectors
    }
    _, _, timeline = await api.request("GET", f"/v1/jobs/{job_id}/events")
    types = [event["type"] for event in timeline["events"]]
    assert [kind for kind in types if not kind.startswith("notice.")] == ["created"]
    assert {name: records(api, name) for name in api.resources.connectors} == held


async def test_erasure_waits_for_confirmation_then_erases_keeps_invoices_and_signs(
    api: Api, tmp_path: Path
) -> None:
    job = await erase(api, reason="closing my account")
    assert job["status"] == "awaiting_confirmation"
    await assert_nothing_runs_unconfirmed(api, job["id"])
    assert records(api, "crm")["contacts"]

    status, confirmed = await confirm(api, job["id"])
    assert status == 200, confirmed
    assert confirmed["status"] in {"queued", "running", "succeeded"}
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done

    assert records(api, "crm") == {}
    assert records(api, "crm", "bob") == {"contacts": [{"id": 2, "email": "bob@example.com"}]}
    assert records(api, "billing") == {"invoices": INVOICES}
    billing = api.resources.connectors["billing"]
    assert isinstance(billing, MemoryConnector)
    assert ("alice", "invoices") in billing.blocked

    report = done["connectors"]["billing"]["report"]
    by_dataset = {entry["dataset"]: entry for entry in report["datasets"]}
    assert by_dataset["cards"]["deleted"] == 1
    assert by_dataset["invoices"]["retained"] == 2
    assert by_dataset["invoices"]["legal_basis"] == TAX_LAW.legal_basis
    assert report["verification"]["passed"] is True
    assert report["verification"]["remaining"] == {"invoices": 2}

    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200
    assert receipt["kind"] == "erasure" and receipt["subject"] == {"id": "alice"}
    assert receipt["job"]["confirmed_at"]
    serialized = orjson.dumps(receipt)
    assert b"alice@example.com" not in serialized and b"closing my account" not in serialized
    path = tmp_path / "receipt.json"
    verified = await api.verified(receipt, path)
    assert verified.ok, verified.problems
    receipt["connectors"][0]["datasets"][0]["deleted"] += 1
    assert not (await api.verified(receipt, path)).ok

    events = [
        e["type"]
        for e in (await api.request("GET", f"/v1/jobs/{job['id']}/events"))[2]["events"]
        if not e["type"].startswith("notice.")  # no address: notice.skipped (tests/*/test_notices*)
    ]
    assert events[:2] == ["created", "confirmed"]
    assert events[-1] == "succeeded"


async def test_a_second_erasure_reports_nothing_new_and_succeeds(api: Api) -> None:
    for round_ in range(2):
        job = await erase(api)
        assert (await confirm(api, job["id"]))[0] == 200
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", done
        crm = done["connectors"]["crm"]["report"]["datasets"]
        assert sum(entry["deleted"] for entry in crm) == (1 if round_ == 0 else 0)
        billing = {e["dataset"]: e for e in done["connectors"]["billing"]["report"]["datasets"]}
        assert billing["invoices"]["retained"] == 2


async def test_dry_run_changes_nothing_and_needs_no_confirmation(api: Api) -> None:
    before = {name: records(api, name) for name in ("crm", "billing")}
    job = await erase(api, dry_run=True)
    assert job["status"] == "queued"
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded"
    assert {name: records(api, name) for name in ("crm", "billing")} == before
    crm = done["connectors"]["crm"]["report"]
    assert crm["datasets"] == [
        {
            "dataset": "contacts",
            "deleted": 1,
            "anonymised": 0,
            "retained": 0,
            "legal_basis": None,
            "retained_until": None,
        }
    ]
    assert "verification" not in crm
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200 and receipt["job"]["dry_run"] is True


async def test_cancel_during_grace_touches_nothing(api_factory: ApiFactory) -> None:
    api = await api_factory(platform(), erasure_grace=timedelta(hours=24))
    job = await erase(api)
    status, confirmed = await confirm(api, job["id"])
    assert status == 200
    assert confirmed["status"] == "queued" and confirmed["not_before"]
    status, _, canceled = await api.request(
        "POST", f"/v1/jobs/{job['id']}/cancel", json={"reason": "changed my mind"}
    )
    assert status == 200 and canceled["status"] == "canceled"
    # The deferred runs were aborted and would refuse a canceled job anyway: run them now.
    for name in ("crm", "billing"):
        await api.resources.redis.enqueue_job("run_connector", "erasure", job["id"], name, 1)
    await eventually(
        lambda: api.resources.redis.zcard(QUEUE_NAME),
        until=lambda depth: depth == 0,
        timeout=10,
        what="the worker to run the aborted erasure's runs",
    )
    assert records(api, "crm")["contacts"] == [{"id": 1, "email": "alice@example.com"}]
    assert records(api, "billing")["cards"] == [{"last4": "4242"}]
    status, _, problem = await api.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert status == 409, problem
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409


async def test_confirmation_needs_the_subject_with_a_fresh_sign_in_or_an_admin(api: Api) -> None:
    job = await erase(api)
    stale = api.authority.issue("alice", ["subject"])
    # A token whose sign-in happened 20 minutes ago.
    import jwt

    from tests.service.conftest import JWT_SECRET

    claims = jwt.decode(stale, JWT_SECRET, algorithms=["HS256"])
    claims["auth_time"] -= 20 * 60
    old = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    status, _, problem = await api.request(
        "POST",
        f"/v1/jobs/{job['id']}/confirm",
        sub=None,
        headers={"Authorization": f"Bearer {old}"},
    )
    assert status == 401 and "sign-in" in problem["detail"]
    assert (await confirm(api, job["id"], "bob"))[0] == 404
    assert (await confirm(api, job["id"], "s1", "support"))[0] == 403
    status, body = await confirm(api, job["id"], "root", "admin")
    assert status == 200, body
    assert (await confirm(api, job["id"], "root", "admin"))[0] == 409


async def test_subjects_cannot_erase_someone_else_and_bad_bodies_are_422(api: Api) -> None:
    status, _, _ = await api.request("POST", "/v1/erasures", sub="bob", json={"subject": "alice"})
    assert status == 403
    for body in (
        {"dry_run": "yes"},
        {"connectors": ["nope"]},
        {"reason": "x" * 2000},
        {"extra": 1},
    ):
        status, _, problem = await api.request("POST", "/v1/erasures", json=body)
        assert status == 422, (body, problem)


async def test_restriction_blocks_where_supported_and_records_where_not(
    api_factory: ApiFactory,
) -> None:
    class CannotRestrict(MemoryConnector):
        async def restrict(self, subject: Subject, *, dry_run: bool) -> Any:
            from connectors.base import Connector

            return await Connector.restrict(self, subject, dry_run=dry_run)

    connectors = platform()
    connectors["analytics"] = CannotRestrict(
        "analytics", records={"alice": {"visits": [{"p": "/"}]}}
    )
    api = await api_factory(connectors)
    status, _, job = await api.request("POST", "/v1/restrictions", json={})
    assert status == 202 and job["status"] == "queued"
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["connectors"]["crm"]["report"]["supported"] is True
    assert done["connectors"]["analytics"]["report"]["supported"] is False
    crm = api.resources.connectors["crm"]
    assert isinstance(crm, MemoryConnector) and ("alice", "contacts") in crm.blocked
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200
    analytics = next(c for c in receipt["connectors"] if c["connector"] == "analytics")
    assert analytics["supported"] is False and "no way to restrict" in analytics["note"]


async def test_a_restriction_records_its_ground_and_until_when_in_the_receipt(
    api: Api, tmp_path: Path
) -> None:
    until = (utcnow() + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    body = {"ground": "accuracy_contested", "until": until}
    status, _, job = await api.request("POST", "/v1/restrictions", json=body)
    assert status == 202, job
    assert job["options"]["ground"] == "accuracy_contested"
    assert datetime.fromisoformat(job["options"]["until"]) == datetime.fromisoformat(until)
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200
    assert (receipt["job"]["ground"], receipt["job"]["until"]) == ("accuracy_contested", until)

    for bad, field in (
        ({"ground": "because"}, "ground"),
        ({"until": "2020-01-01T00:00:00Z"}, "until"),
    ):
        status, _, problem = await api.request("POST", "/v1/restrictions", json=bad)
        assert status == 422 and problem["errors"][0]["field"] == field, problem
    status, _, problem = await api.request("POST", "/v1/erasures", json={"ground": "legal_claims"})
    assert status == 422 and problem["errors"][0]["field"] == "ground", problem


async def test_verification_fails_the_job_naming_leftovers(api_factory: ApiFactory) -> None:
    class Forgetful(MemoryConnector):
        """Says it deleted everything; deletes nothing."""

        async def erase(
            self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
        ) -> ErasureReport:
            return await super().erase(subject, dry_run=True, retention=retention)

    api = await api_factory(
        {"crm": Forgetful("crm", records={"alice": {"contacts": [{"id": 1}, {"id": 2}]}})},
        erasure_grace=timedelta(0),
    )
    job = await erase(api)
    await confirm(api, job["id"])
    done = await api.wait(job["id"])
    assert done["status"] == "failed"
    assert (
        done["connectors"]["crm"]["error"]
        == "verification failed: record(s) left after erasure: 2 in contacts"
    )
    status, _, _ = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409


class Gated(MemoryConnector):
    """An export that holds until the test opens the gate."""

    def __init__(self, name: str, gate: asyncio.Event, **options: Any) -> None:
        super().__init__(name, **options)
        self.gate = gate

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        await asyncio.wait_for(self.gate.wait(), timeout=20)
        async for item in super().export(subject):
            yield item


async def test_an_erasure_waits_while_an_export_of_the_subject_runs(
    api_factory: ApiFactory,
) -> None:
    gate = asyncio.Event()
    api = await api_factory(
        {"crm": Gated("crm", gate, records={"alice": {"contacts": [{"id": 1}]}})},
        erasure_grace=timedelta(0),
    )
    export = await api.export()
    await api.wait(export["id"], "running")
    erasure = await erase(api)
    await confirm(api, erasure["id"])

    async def timeline() -> list[str]:
        _, _, body = await api.request("GET", f"/v1/jobs/{erasure['id']}/events")
        return [event["type"] for event in body["events"]]

    await eventually(
        timeline,
        until=lambda types: "waiting" in types,
        timeout=10,
        what=f"erasure {erasure['id']} to wait for the export",
    )
    assert (await api.request("GET", f"/v1/jobs/{erasure['id']}"))[2]["status"] == "queued"
    gate.set()
    exported = await api.wait(export["id"])
    erased = await api.wait(erasure["id"])
    assert exported["status"] == "succeeded" and erased["status"] == "succeeded"
    assert exported["connectors"]["crm"]["records"] == 1  # the export saw the data before it went
    assert erased["connectors"]["crm"]["started_at"] >= exported["updated_at"]
