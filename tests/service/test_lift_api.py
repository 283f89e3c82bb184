"""Lifting a restriction over HTTP (GDPR Art. 18(3)): the subject told first, nothing lifted
until the notice is sent, a signed receipt recording both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.testing import MemoryConnector
from tests.mailserver import mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_notices_api import arrived, smtp, subject_headers
from tests.service.test_objection_api import receipt_of

SUPPORT = ("support",)
ALICE_IDENTIFIERS = {"email": ALICE_EMAIL, "verified_by": "the address on her account"}


def crm() -> MemoryConnector:
    return MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})


def blocked(api: Api) -> set[tuple[str, str]]:
    connector = api.resources.connectors["crm"]
    assert isinstance(connector, MemoryConnector)
    return connector.blocked


async def restricted(api: Api, **body: Any) -> dict[str, Any]:
    """Alice's restriction, in force."""
    status, _, job = await api.request(
        "POST", "/v1/restrictions", sub=None, headers=subject_headers(api), json=body
    )
    assert status == 202, job
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert ("alice", "contacts") in blocked(api)
    return done


async def lift(api: Api, job_id: str, **body: Any) -> tuple[int, dict[str, str], Any]:
    """Support lifts ``job_id``; told at Alice's address unless ``identifiers`` says else."""
    body.setdefault("identifiers", ALICE_IDENTIFIERS)
    return await api.request("POST", f"/v1/jobs/{job_id}/lift", sub="s1", roles=SUPPORT, json=body)


async def test_a_restriction_is_lifted_only_after_the_subject_is_told(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        restriction = await restricted(api, ground="accuracy_contested")
        await eventually(arrived(inbox, 2), timeout=15, what="the restriction's two messages")
        inbox.refusal = "450 mailbox busy, try again later"  # the lifting notice is held back
        reason = "the accuracy of your data was verified"
        status, headers, job = await lift(
            api, restriction["id"], reason=reason, identifiers=ALICE_IDENTIFIERS
        )
        assert status == 202, job
        assert headers["Location"] == f"/v1/jobs/{job['id']}"
        assert job["kind"] == "lift" and job["options"]["restriction"] == restriction["id"]
        await eventually(lambda: inbox.refused >= 2, timeout=15, what="the notice tried twice")
        assert (await api.job(job["id"], sub="s1", roles=SUPPORT))["status"] == "running"
        inbox.refusal = None
        done = await api.wait(job["id"], sub="s1", roles=SUPPORT)
        assert done["status"] == "succeeded", done
        await eventually(arrived(inbox, 3), timeout=15, what="three messages")

    assert ("alice", "contacts") not in blocked(api)
    assert done["connectors"]["crm"]["report"]["lifted"] == {"contacts": 1}
    told = inbox.about("restriction_lifting")[0]
    assert told.recipients == [ALICE_EMAIL] and reason in told.words()
    assert told.message["X-Handover-Job"] == restriction["id"]
    events = (await api.request("GET", f"/v1/jobs/{restriction['id']}/events"))[2]["events"]
    sent = next(
        e for e in events if e["type"] == "notice.sent" and e["notice"] == "restriction_lifting"
    )
    lift_events = (await api.request("GET", f"/v1/jobs/{job['id']}/events"))[2]["events"]
    started = [e for e in lift_events if e["type"] == "connector.started"]
    assert len(started) == 1 and sent["at"] <= started[0]["at"], (sent, lift_events)
    assert not [e for e in lift_events if e["type"] == "connector.retrying"]
    receipt = await receipt_of(api, job["id"], tmp_path)
    assert receipt["kind"] == "lift"
    assert receipt["job"]["restriction"] == restriction["id"]
    assert receipt["job"]["ground"] == "accuracy_contested"
    assert receipt["job"]["told"]["message_id"] == told.message["Message-ID"].strip()
    assert (await api.job(restriction["id"]))["options"]["lifted_by"] == job["id"]
    status, _, again = await lift(api, restriction["id"], reason=reason)
    assert status == 409 and "is lifted by job" in again["detail"], again


async def test_without_an_address_the_lift_is_refused_and_the_restriction_stays_liftable(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        restriction = await restricted(api)
        status, _, problem = await lift(api, restriction["id"], reason="verified", identifiers=None)
        assert status == 422 and problem["errors"][0]["field"] == "identifiers", problem
        no_email = {"phone_number": "+33 6 12 34 56 78", "verified_by": "the account page"}
        status, _, problem = await lift(
            api, restriction["id"], reason="verified", identifiers=no_email
        )
        assert status == 422 and problem["errors"][0]["field"] == "identifiers", problem
        assert "email is needed" in problem["detail"], problem
        assert ("alice", "contacts") in blocked(api)
        assert (await api.job(restriction["id"]))["options"]["lifted_by"] is None
        status, _, job = await lift(api, restriction["id"], reason="verified")
        assert status == 202, job
        done = await api.wait(job["id"], sub="s1", roles=SUPPORT)
        await eventually(arrived(inbox, 3), timeout=15, what="three messages")
    assert done["status"] == "succeeded", done
    assert ("alice", "contacts") not in blocked(api)


async def test_the_subject_cannot_veto_a_lift_and_a_canceled_lift_leaves_room_for_another(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        restriction = await restricted(api)
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        status, _, first = await lift(api, restriction["id"], reason="verified", lifts_at=later)
        assert status == 202, first
        status, _, problem = await api.request("POST", f"/v1/jobs/{first['id']}/cancel")
        assert status == 409 and problem["rule"] == "staff-only", problem
        assert (await api.job(first["id"]))["status"] == "queued"
        status, _, problem = await lift(api, restriction["id"], reason="verified again")
        assert status == 409 and problem["rule"] == "already-lifted", problem
        status, _, canceled = await api.request(
            "POST", f"/v1/jobs/{first['id']}/cancel", sub="s1", roles=SUPPORT
        )
        assert status == 200 and canceled["status"] == "canceled", canceled
        status, _, second = await lift(api, restriction["id"], reason="verified again")
        assert status == 202, second
        done = await api.wait(second["id"], sub="s1", roles=SUPPORT)
        assert done["status"] == "succeeded", done
        await eventually(arrived(inbox, 4), timeout=15, what="both lifting notices")
    told = inbox.about("restriction_lifting")
    assert len(told) == 2 and "verified again" in told[1].words()  # a notice of its own
    receipt = await receipt_of(api, second["id"], tmp_path)
    assert receipt["job"]["told"]["message_id"] == told[1].message["Message-ID"].strip()
    assert (await api.job(restriction["id"]))["options"]["lifted_by"] == second["id"]
    assert ("alice", "contacts") not in blocked(api)


async def test_an_erasure_asked_for_after_the_lift_keeps_the_data_blocked(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (_, port):
        api = await api_factory({"crm": crm()}, **smtp(port))
        restriction = await restricted(api)
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        status, _, job = await lift(api, restriction["id"], reason="verified", lifts_at=soon)
        assert status == 202, job
        status, _, erasure = await api.request("POST", "/v1/erasures", json={})
        assert status == 202 and erasure["status"] == "awaiting_confirmation", erasure
        done = await api.wait(job["id"], sub="s1", roles=SUPPORT)
        assert done["status"] == "failed", done
        error = done["connectors"]["crm"]["error"]
        assert f"is being or was erased (job {erasure['id']})" in error, done
        assert ("alice", "contacts") in blocked(api)
        status, _, problem = await lift(api, restriction["id"], reason="verified again")
        assert status == 409 and problem["rule"] == "erased", problem
        # The erasure withdrawn before it ran, a new lift takes the failed one's place.
        status, _, _ = await api.request("POST", f"/v1/jobs/{erasure['id']}/cancel")
        assert status == 200
        status, _, second = await lift(api, restriction["id"], reason="verified again")
        assert status == 202, second
        status, _, problem = await api.request(
            "POST", f"/v1/jobs/{job['id']}/retry", sub="s1", roles=SUPPORT
        )
        assert status == 409 and problem["rule"] == "superseded", problem
        assert (await api.wait(second["id"], sub="s1", roles=SUPPORT))["status"] == "succeeded"
    assert ("alice", "contacts") not in blocked(api)


async def test_what_cannot_be_lifted_is_refused(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()})
    export = await api.export()
    status, _, problem = await lift(api, export["id"], reason="no")
    assert status == 422 and problem["errors"][0]["field"] == "reason", problem
    status, _, problem = await lift(api, export["id"], reason="not a restriction")
    assert status == 409 and "is an export" in problem["detail"], problem
    restriction = await restricted(api)
    past = "2020-01-01T00:00:00Z"
    status, _, problem = await lift(api, restriction["id"], reason="late", lifts_at=past)
    assert status == 422 and problem["errors"][0]["field"] == "lifts_at", problem
    naive = "2027-03-01T00:00:00"
    status, _, problem = await lift(api, restriction["id"], reason="no zone", lifts_at=naive)
    assert status == 422 and problem["errors"][0]["field"] == "lifts_at", problem
    status, _, erasure = await api.request("POST", "/v1/erasures", json={})
    assert status == 202
    status, _, _ = await api.request(
        "POST", f"/v1/jobs/{erasure['id']}/confirm", sub="admin-1", roles=("admin",)
    )
    assert status == 200
    await api.wait(erasure["id"], deadline=60.0)
    status, _, problem = await lift(api, restriction["id"], reason="verified")
    assert status == 409 and "erased since" in problem["detail"], problem
