"""Identity over HTTP: processors keyed by email reached, or honestly not asked.

Every test goes through the API and a real worker: identifiers come from a verified
token claim, from staff, or from an identity source; a processor none of whose
identifiers is known is never asked, the job waits in ``needs_attention``, and
nothing signed says it was asked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import jwt
import orjson
import pytest

from connectors.base import Connector
from connectors.errors import PermanentError, TransientError, Unidentified
from connectors.items import Dataset, Item, Record, Subject
from connectors.reports import DatasetErasure, ErasureReport, RetentionRule
from connectors.testing import MemoryConnector
from jobs.identity import IdentityConfigError, plan_sources
from tests.service.conftest import ALICE_EMAIL, JWT_SECRET, Api, ApiFactory


class Newsletter(Connector):
    """A processor that knows subscribers only by email address."""

    identifiers = frozenset({"email"})
    datasets = (Dataset("subscriptions", "contact"),)

    def __init__(self, name: str, subscribers: Mapping[str, list[str]]) -> None:
        super().__init__(name)
        self.subscribers = {email: list(lists) for email, lists in subscribers.items()}
        self.asked: list[str] = []

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        self.require_identifier(subject)
        assert subject.email is not None
        self.asked.append(subject.email)
        for name in self.subscribers.get(subject.email, []):
            yield Record("subscriptions", {"list": name})

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        self.require_identifier(subject)
        assert subject.email is not None
        self.asked.append(subject.email)
        held = self.subscribers.get(subject.email, [])
        deleted = len(held)
        if not dry_run:
            self.subscribers.pop(subject.email, None)
        return ErasureReport((DatasetErasure("subscriptions", deleted=deleted),))


class Accounts(MemoryConnector):
    """The platform's accounts: the identity source of its users' emails."""

    provides = frozenset({"email"})

    def __init__(self, name: str, emails: Mapping[str, str]) -> None:
        super().__init__(name, records={user: {"accounts": [{"id": user}]} for user in emails})
        self.emails = dict(emails)

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        email = self.emails.get(subject.id)
        return {"email": email} if email else {}


def crm() -> MemoryConnector:
    return MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})


def newsletter() -> Newsletter:
    return Newsletter("newsletter", {ALICE_EMAIL: ["product news", "offers"]})


async def stored_job(api: Api, job_id: str) -> bytes:
    """Everything Redis holds on the job: its record and its timeline."""
    redis: Any = api.resources.redis
    record = await redis.hgetall(f"handover:job:{job_id}")
    events = await redis.xrange(f"handover:job:{job_id}:events")
    return orjson.dumps([{k.decode(): v.decode() for k, v in record.items()}, repr(events)])


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory({"crm": crm(), "newsletter": newsletter()}, erasure_grace=timedelta(0))


async def test_a_verified_email_claim_reaches_an_email_keyed_processor(api: Api) -> None:
    headers = api.email_auth()
    status, _, job = await api.request("POST", "/v1/exports", sub=None, headers=headers, json={})
    assert status == 202, job
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["identity"] == [
        {"identifiers": ["email"], "source": "token", "verified_by": "sign-in (email_verified)"}
    ]
    assert done["connectors"]["newsletter"]["records"] == 2
    archive = await api.archive(job["id"], headers)
    manifest = orjson.loads(archive.read("manifest.json"))
    assert manifest["identity"] == done["identity"]
    assert {c["name"]: c["asked"] for c in manifest["connectors"]} == {
        "crm": True,
        "newsletter": True,
    }
    assert manifest["scope"] == {"connectors": "all", "categories": "all", "left_out": []}
    assert len(orjson.loads(archive.read("newsletter/subscriptions.json"))) == 2
    assert ALICE_EMAIL.encode() not in archive.read("manifest.json")
    # The job has ended: Handover no longer holds the address anywhere on it.
    assert ALICE_EMAIL.encode() not in await stored_job(api, job["id"])


async def test_an_unverified_email_claim_is_not_an_identifier(api: Api) -> None:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "roles": ["subject"],
        "exp": now + 600,
        "email": ALICE_EMAIL,
        "email_verified": False,
    }
    headers = {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}
    status, _, job = await api.request("POST", "/v1/exports", sub=None, headers=headers, json={})
    assert status == 202, job
    waiting = await api.wait(job["id"], "needs_attention")
    assert waiting["identity"] == []
    assert waiting["connectors"]["newsletter"]["status"] == "unidentified"


async def test_without_an_email_the_job_waits_and_staff_supply_one(api: Api) -> None:
    job = await api.export()
    waiting = await api.wait(job["id"], "needs_attention")
    run = waiting["connectors"]["newsletter"]
    assert run["status"] == "unidentified"
    assert run["error"] == "not asked: needs the subject's email, and none is known"
    assert waiting["connectors"]["crm"]["status"] == "succeeded"
    assert api.resources.connectors["newsletter"].asked == []  # type: ignore[attr-defined]
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 409 and problem["status_now"] == "needs_attention"

    # The subject cannot vouch for themselves; support can, saying how.
    body = {"email": ALICE_EMAIL, "verified_by": "passport checked by video call"}
    status, _, problem = await api.request("POST", f"/v1/jobs/{job['id']}/identifiers", json=body)
    assert status == 403, problem
    status, _, resumed = await api.request(
        "POST", f"/v1/jobs/{job['id']}/identifiers", sub="support-1", roles=("support",), json=body
    )
    assert status == 200, resumed
    assert resumed["status"] == "queued"
    assert ALICE_EMAIL not in orjson.dumps(resumed).decode()
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["connectors"]["newsletter"]["records"] == 2
    assert done["connectors"]["crm"]["attempts"] == 1  # only the unidentified run ran again
    assert done["identity"] == [
        {
            "identifiers": ["email"],
            "source": "staff",
            "verified_by": "passport checked by video call",
        }
    ]
    archive = await api.archive(job["id"], api.auth())
    assert len(orjson.loads(archive.read("newsletter/subscriptions.json"))) == 2
    assert ALICE_EMAIL.encode() not in await stored_job(api, job["id"])

    # A value already known is never replaced, and an ended job takes no identifiers.
    status, _, problem = await api.request(
        "POST", f"/v1/jobs/{job['id']}/identifiers", sub="support-1", roles=("support",), json=body
    )
    assert status == 409, problem


async def test_going_without_a_processor_is_recorded_and_signed(api: Api) -> None:
    job = await api.export()
    await api.wait(job["id"], "needs_attention")
    status, _, problem = await api.request(
        "POST",
        f"/v1/jobs/{job['id']}/go-without",
        sub="support-1",
        roles=("support",),
        json={"connectors": ["crm"], "reason": "crm was asked"},
    )
    assert status == 422 and "crm is succeeded" in problem["detail"], problem
    reason = "the subject never subscribed and has no email on file"
    status, _, decided = await api.request(
        "POST",
        f"/v1/jobs/{job['id']}/go-without",
        sub="support-1",
        roles=("support",),
        json={"connectors": ["newsletter"], "reason": reason},
    )
    assert status == 200, decided
    assert decided["connectors"]["newsletter"]["status"] == "not_asked"
    assert decided["connectors"]["newsletter"]["decision"]["reason"] == reason
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    archive = await api.archive(job["id"], api.auth())
    manifest = orjson.loads(archive.read("manifest.json"))
    stated = {c["name"]: c for c in manifest["connectors"]}
    assert stated["newsletter"]["asked"] is False
    assert stated["newsletter"]["status"] == "not_asked"
    assert stated["newsletter"]["not_asked_reason"] == reason
    assert stated["crm"]["asked"] is True
    assert not [n for n in archive.namelist() if n.startswith("newsletter/")]
    index = archive.read("index.html").decode()
    assert "Not asked" in index and reason in index and "newsletter (not asked)" in index


async def test_an_erasure_receipt_never_says_an_unasked_processor_was_verified(
    api: Api,
) -> None:
    status, _, job = await api.request("POST", "/v1/erasures", json={})
    assert status == 202, job
    status, _ = (await api.request("POST", f"/v1/jobs/{job['id']}/confirm"))[:2]
    assert status == 200
    waiting = await api.wait(job["id"], "needs_attention")
    assert waiting["connectors"]["newsletter"]["status"] == "unidentified"
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409, problem
    status, _, _ = await api.request(
        "POST",
        f"/v1/jobs/{job['id']}/go-without",
        sub="admin-1",
        roles=("admin",),
        json={"connectors": ["newsletter"], "reason": "no address known for the subject"},
    )
    assert status == 200
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200, receipt
    entries = {entry["connector"]: entry for entry in receipt["connectors"]}
    assert entries["newsletter"]["asked"] is False
    assert entries["newsletter"]["not_asked_reason"] == "no address known for the subject"
    assert "verification" not in entries["newsletter"]
    assert "datasets" not in entries["newsletter"]
    assert entries["crm"]["asked"] is True and entries["crm"]["verification"]["passed"]
    assert api.resources.connectors["newsletter"].asked == []  # type: ignore[attr-defined]


async def test_an_identity_source_finds_the_email_first(api_factory: ApiFactory) -> None:
    api = await api_factory(
        {"accounts": Accounts("accounts", {"alice": ALICE_EMAIL}), "newsletter": newsletter()},
    )
    job = await api.export()
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["identity"] == [
        {
            "identifiers": ["email"],
            "source": "connector accounts",
            "verified_by": "looked up at accounts by id",
        }
    ]
    assert done["connectors"]["newsletter"]["records"] == 2
    events = (await api.request("GET", f"/v1/jobs/{job['id']}/events"))[2]["events"]
    resolved = [e for e in events if e["type"] == "identity.resolved"]
    assert resolved and resolved[0]["identifiers"] == ["email"]
    assert ALICE_EMAIL not in orjson.dumps(events).decode()


async def test_staff_file_for_someone_with_identifiers_and_how_they_checked(api: Api) -> None:
    body = {
        "subject": "alice",
        "identifiers": {"email": ALICE_EMAIL, "verified_by": "signed letter, ID enclosed"},
    }
    status, _, job = await api.request(
        "POST", "/v1/exports", sub="support-1", roles=("support",), json=body
    )
    assert status == 202, job
    done = await api.wait(job["id"], sub="support-1", roles=("support",))
    assert done["status"] == "succeeded", done
    assert done["identity"][0]["verified_by"] == "signed letter, ID enclosed"
    # A subject cannot assert identifiers; identifiers need a word on how they were checked.
    status, _, problem = await api.request(
        "POST", "/v1/exports", sub="bob", json=body | {"subject": "bob"}
    )
    assert status == 403, problem
    body["identifiers"] = {"email": ALICE_EMAIL}
    status, _, problem = await api.request(
        "POST", "/v1/exports", sub="support-1", roles=("support",), json=body
    )
    assert status == 422, problem


@pytest.mark.parametrize("subject", ["..", ".", "a\x00b", " alice"])
async def test_subjects_unsafe_in_a_path_are_refused_at_intake(api: Api, subject: str) -> None:
    status, headers, problem = await api.request(
        "POST", "/v1/exports", sub="support-1", roles=("support",), json={"subject": subject}
    )
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert (await api.resources.store.counts()) == {}


async def test_unsafe_identifiers_are_refused(api: Api) -> None:
    job = await api.export()
    await api.wait(job["id"], "needs_attention")
    for identities in ({"crm_id": ".."}, {"crm id": "7"}, {"id": "bob"}):
        status, _, problem = await api.request(
            "POST",
            f"/v1/jobs/{job['id']}/identifiers",
            sub="support-1",
            roles=("support",),
            json={"identities": identities, "verified_by": "phone call"},
        )
        assert status == 422, (identities, problem)
    current = (await api.request("GET", f"/v1/jobs/{job['id']}"))[2]
    assert current["status"] == "needs_attention" and current["identity"] == []


async def test_an_erasure_deletes_handovers_own_copies_and_says_so(api: Api) -> None:
    headers = api.email_auth()
    status, _, export = await api.request("POST", "/v1/exports", sub=None, headers=headers, json={})
    assert status == 202
    exported = await api.wait(export["id"])
    assert exported["status"] == "succeeded"
    archive_key = api.resources.archive_key(export["id"])
    assert await api.resources.storage.exists(archive_key)
    # A second export waits for support (no email in this token) with crm's part staged.
    waiting = await api.wait((await api.export())["id"], "needs_attention")
    staged_key = (await api.resources.store.get(waiting["id"])).connectors["crm"].staged_key
    assert staged_key is not None and await api.resources.storage.exists(staged_key)

    status, _, erasure = await api.request(
        "POST", "/v1/erasures", sub=None, headers=headers, json={}
    )
    assert status == 202
    status, _, _ = await api.request(
        "POST", f"/v1/jobs/{erasure['id']}/confirm", sub=None, headers=headers
    )
    assert status == 200
    erased = await api.wait(erasure["id"])
    assert erased["status"] == "succeeded", erased

    expired = (await api.request("GET", f"/v1/jobs/{export['id']}"))[2]
    assert expired["status"] == "expired"
    status, _, problem = await api.request("GET", f"/v1/jobs/{export['id']}/download")
    assert status == 410, problem
    assert not await api.resources.storage.exists(archive_key)
    events = (await api.request("GET", f"/v1/jobs/{export['id']}/events"))[2]["events"]
    assert events[-1]["status"] == "expired"
    assert events[-1]["reason"] == f"erased: the subject's data was erased by job {erasure['id']}"
    canceled = (await api.request("GET", f"/v1/jobs/{waiting['id']}"))[2]
    assert canceled["status"] == "canceled"
    receipt = (await api.request("GET", f"/v1/jobs/{erasure['id']}/receipt"))[2]
    assert receipt["handover_copies"] == [
        {
            "job": waiting["id"],
            "kind": "export",
            "archive_deleted": False,
            "staged_objects_deleted": 1,  # crm's staged object, its previews at its end
            "status": "canceled",
        },
        {
            "job": export["id"],
            "kind": "export",
            "archive_deleted": True,
            "staged_objects_deleted": 0,  # its staging went when its archive was written
            "status": "expired",
        },
    ]
    assert not await api.resources.storage.exists(staged_key)


async def test_a_partial_export_says_what_it_left_out(api: Api) -> None:
    headers = api.email_auth()
    status, _, job = await api.request(
        "POST", "/v1/exports", sub=None, headers=headers, json={"connectors": ["newsletter"]}
    )
    assert status == 202
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    archive = await api.archive(job["id"], headers)
    manifest = orjson.loads(archive.read("manifest.json"))
    assert manifest["scope"] == {
        "connectors": ["newsletter"],
        "categories": "all",
        "left_out": ["crm"],
    }
    index = archive.read("index.html").decode()
    assert "This is a partial export" in index and "Left out: crm" in index


def test_identity_sources_that_need_each_other_are_refused() -> None:
    class Source(MemoryConnector):
        def __init__(self, name: str, needs: str, gives: str) -> None:
            super().__init__(name)
            self.identifiers = frozenset({needs})
            self.provides = frozenset({gives})

    cycle = {"a": Source("a", "crm_id", "shop_id"), "b": Source("b", "shop_id", "crm_id")}
    with pytest.raises(IdentityConfigError, match="cycle"):
        plan_sources(cycle)
    orphan = MemoryConnector("orphan")
    orphan.identifiers = frozenset({"loyalty_number"})
    with pytest.raises(IdentityConfigError, match="'orphan' needs loyalty_number"):
        plan_sources({"orphan": orphan})
    assert plan_sources({"orphan": orphan}, claimed=["loyalty_number"]) == ()
    chain = {"b": Source("b", "email", "crm_id"), "a": Source("a", "id", "email")}
    assert [s.name for s in plan_sources(chain)] == ["a", "b"]


async def test_a_connector_that_finds_no_identifier_at_run_time_is_unidentified(
    api_factory: ApiFactory,
) -> None:
    class Picky(MemoryConnector):
        """Declares the id, but some of its data needs an email it does not have."""

        async def export(self, subject: Subject) -> AsyncIterator[Item]:
            raise Unidentified(self.name, ["email"])
            yield  # pragma: no cover

    api = await api_factory({"picky": Picky("picky")})
    job = await api.export()
    waiting = await api.wait(job["id"], "needs_attention")
    assert waiting["connectors"]["picky"]["status"] == "unidentified"
    assert "email" in waiting["connectors"]["picky"]["error"]


class FlakyAccounts(Accounts):
    """An identity source whose first lookups fail, transiently or for good."""

    def __init__(self, name: str, emails: Mapping[str, str], *, failures: int, error: Exception):
        super().__init__(name, emails)
        self.failures = failures
        self.error = error
        self.lookups = 0

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        self.lookups += 1
        if self.lookups <= self.failures:
            raise self.error
        return await super().resolve(subject)


async def test_a_source_that_fails_transiently_is_asked_again(api_factory: ApiFactory) -> None:
    source = FlakyAccounts(
        "accounts", {"alice": ALICE_EMAIL}, failures=1, error=TransientError("accounts DB busy")
    )
    api = await api_factory({"accounts": source, "newsletter": newsletter()})
    done = await api.wait((await api.export())["id"])
    assert done["status"] == "succeeded", done
    assert source.lookups == 2
    assert done["identity"][0]["source"] == "connector accounts"
    events = (await api.request("GET", f"/v1/jobs/{done['id']}/events"))[2]["events"]
    assert [e["error"] for e in events if e["type"] == "identity.retrying"] == ["accounts DB busy"]


async def test_a_source_that_fails_for_good_leaves_its_dependents_unasked(
    api_factory: ApiFactory,
) -> None:
    source = FlakyAccounts(
        "accounts", {"alice": ALICE_EMAIL}, failures=99, error=PermanentError("accounts: 403")
    )
    api = await api_factory({"accounts": source, "newsletter": newsletter()})
    waiting = await api.wait((await api.export())["id"], "needs_attention")
    assert source.lookups == 1
    assert waiting["connectors"]["newsletter"]["status"] == "unidentified"
    assert waiting["connectors"]["accounts"]["status"] == "succeeded"
    events = (await api.request("GET", f"/v1/jobs/{waiting['id']}/events"))[2]["events"]
    (resolved,) = [e for e in events if e["type"] == "identity.resolved"]
    assert resolved["failures"] == [{"source": "accounts", "error": "accounts: 403"}]
    assert resolved["unidentified"] == ["newsletter"]
