"""The real processors over HTTP: reached by the subject's email, or honestly not asked.

Every test goes through the API and a real worker, with the built connectors (a
generic ``http`` helpdesk keyed by email, HubSpot, Hotjar, Google Analytics) talking
to local fakes of their documented APIs. A verified email reaches every processor;
without one, no processor keyed by email is sent anything, the job waits in
``needs_attention``, and no archive or receipt exists to claim otherwise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import pytest

from connectors.base import Connector
from connectors.google_analytics import GoogleAnalyticsConnector
from connectors.hotjar import HotjarConnector
from connectors.http import HttpConnector
from connectors.hubspot import HubSpotConnector
from jobs.archive.receipt import verify_receipt
from jobs.archive.signing import jwk_public_key
from tests.connectors.processor_servers import (
    FakeGoogleAnalytics,
    FakeHotjar,
    FakeHubSpot,
    FakeProcessor,
    FakeTicketsApi,
    serve,
)
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory

HELPDESK_TOKEN = "tk_live_9f8e7d6c5b4a39281706"
GA_PROPERTY = "123456789"
LOOKUP_PATH = f"/v1/organizations/{FakeHotjar.ORGANIZATION_ID}/user-lookup"
EMAIL_KEYED = ("helpdesk", "crm", "recordings", "analytics")


@dataclass
class Processors:
    """The four fakes, seeded with alice's data, and where each one listens."""

    helpdesk: FakeTicketsApi
    hubspot: FakeHubSpot
    hotjar: FakeHotjar
    analytics: FakeGoogleAnalytics
    urls: dict[str, str]
    alice_contact: str
    stack: AsyncExitStack

    def fakes(self) -> dict[str, FakeProcessor]:
        return {
            "helpdesk": self.helpdesk,
            "crm": self.hubspot,
            "recordings": self.hotjar,
            "analytics": self.analytics,
        }

    def helpdesk_connector(self) -> HttpConnector:
        """A generic REST processor that finds and erases events by the subject's email."""
        events = {
            "name": "events",
            "category": "usage",
            "path": "/events",
            "params": {"email": "{email}"},
            "records": "events",
            "pagination": {"style": "cursor", "param": "cursor", "next": "meta.next_cursor"},
            "erase": {
                "method": "DELETE",
                "path": "/events",
                "params": {"email": "{email}"},
                "success": [204],
            },
        }
        return HttpConnector(
            "helpdesk",
            base_url=self.urls["helpdesk"],
            auth={"type": "bearer", "token": HELPDESK_TOKEN},
            rate_limit=0,
            datasets=[events],
        )

    def hotjar_connector(self) -> HotjarConnector:
        return HotjarConnector(
            "recordings",
            organization_id=int(FakeHotjar.ORGANIZATION_ID),
            client_id=FakeHotjar.CLIENT_ID,
            client_secret=FakeHotjar.CLIENT_SECRET,
            base_url=self.urls["recordings"],
            rate_limit=0,
        )

    def analytics_connector(self, identifier: str) -> GoogleAnalyticsConnector:
        return GoogleAnalyticsConnector(
            "analytics",
            property=GA_PROPERTY,
            access_token=FakeGoogleAnalytics.TOKEN,
            base_url=self.urls["analytics"],
            rate_limit=0,
            identifier=identifier,
        )

    async def opened(self, connectors: dict[str, Connector]) -> dict[str, Connector]:
        """``connectors``, opened; closed before the fakes stop (the API leaves them to us)."""
        for connector in connectors.values():
            await connector.open()
            self.stack.push_async_callback(connector.close)
        return connectors

    def connectors(self) -> dict[str, Connector]:
        """All four, each keyed by email (Google Analytics by user-provided data)."""
        return {
            "helpdesk": self.helpdesk_connector(),
            "crm": HubSpotConnector(
                "crm", token=FakeHubSpot.TOKEN, base_url=self.urls["crm"], rate_limit=0
            ),
            "recordings": self.hotjar_connector(),
            "analytics": self.analytics_connector("user_provided_data"),
        }


@pytest.fixture
async def processors() -> AsyncIterator[Processors]:
    """The fakes running, holding data on alice and on bob (who must be left alone)."""
    helpdesk = FakeTicketsApi(auth_value=f"Bearer {HELPDESK_TOKEN}")
    helpdesk.add_user("alice", ALICE_EMAIL, events=3)
    helpdesk.add_user("bob", "bob@example.com", events=2)
    hubspot = FakeHubSpot()
    alice_contact = hubspot.add_contact(ALICE_EMAIL, firstname="Alice", lastname="Martin")
    hubspot.add_contact("bob@example.com", firstname="Bob")
    hotjar = FakeHotjar()
    hotjar.hits[ALICE_EMAIL] = 3
    hotjar.hits["bob@example.com"] = 1
    analytics = FakeGoogleAnalytics(properties=(GA_PROPERTY,))
    fakes: dict[str, FakeProcessor] = {
        "helpdesk": helpdesk,
        "crm": hubspot,
        "recordings": hotjar,
        "analytics": analytics,
    }
    async with AsyncExitStack() as stack:
        urls = {name: await stack.enter_async_context(serve(fake)) for name, fake in fakes.items()}
        yield Processors(helpdesk, hubspot, hotjar, analytics, urls, alice_contact, stack)


@pytest.fixture
async def api(processors: Processors, api_factory: ApiFactory) -> Api:
    connectors = await processors.opened(processors.connectors())
    return await api_factory(connectors, erasure_grace=timedelta(0))


async def attention_needed(api: Api, job_id: str) -> dict[str, Any]:
    """The job once it waits for staff; one that ends instead fails at once."""
    job = await api.wait(job_id, "needs_attention", "succeeded", "failed", "canceled", "expired")
    assert job["status"] == "needs_attention", job
    return job


def bodies(fake: FakeProcessor, path_fragment: str) -> list[Any]:
    """The JSON bodies of the requests the fake saw on paths containing ``path_fragment``."""
    return [json.loads(seen.body) for seen in fake.seen(path_fragment)]


async def erasure_by(api: Api, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """File and confirm an erasure as the subject (a fresh token, as confirmation needs)."""
    sub = None if headers else "alice"
    status, _, job = await api.request(
        "POST", "/v1/erasures", sub=sub, headers=headers or {}, json={}
    )
    assert status == 202, job
    assert job["status"] == "awaiting_confirmation"
    status, _, confirmed = await api.request(
        "POST", f"/v1/jobs/{job['id']}/confirm", sub=sub, headers=headers or {}
    )
    assert status == 200, confirmed
    return job  # type: ignore[no-any-return]


async def signed_receipt(api: Api, job_id: str) -> dict[str, dict[str, Any]]:
    """The receipt, its signature checked against the service's keys; entries by connector."""
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job_id}/receipt")
    assert status == 200, receipt
    _, _, keyset = await api.request("GET", "/v1/keys", sub=None)
    verify_receipt(orjson.dumps(receipt), [jwk_public_key(key) for key in keyset["keys"]])
    assert ALICE_EMAIL.encode() not in orjson.dumps(receipt)
    return {entry["connector"]: entry for entry in receipt["connectors"]}


def assert_erased_everywhere(processors: Processors, entries: dict[str, dict[str, Any]]) -> None:
    """Each processor was asked, erased alice's data, and the fakes' state shows it."""
    for name in EMAIL_KEYED:
        assert entries[name]["asked"] is True, entries[name]
        assert entries[name]["status"] == "succeeded"
        assert entries[name]["verification"]["passed"] is True, entries[name]

    assert {e["dataset"]: e["deleted"] for e in entries["helpdesk"]["datasets"]} == {"events": 3}
    assert processors.helpdesk.users["alice"]["events"] == []
    assert len(processors.helpdesk.users["bob"]["events"]) == 2
    deletes = [s for s in processors.helpdesk.requests if s.method == "DELETE"]
    assert [(s.path, s.query) for s in deletes] == [("/events", {"email": ALICE_EMAIL})]

    assert {e["dataset"]: e["deleted"] for e in entries["crm"]["datasets"]} == {"contact": 1}
    assert "permanently deleted" in entries["crm"]["note"]
    assert processors.hubspot.gdpr_deleted == [processors.alice_contact]
    assert processors.alice_contact not in processors.hubspot.contacts
    assert [c["email"] for c in processors.hubspot.contacts.values()] == ["bob@example.com"]

    assert "accepted the request to delete every hit" in entries["recordings"]["note"]
    deletions = [b for b in bodies(processors.hotjar, LOOKUP_PATH) if b["delete_all_hits"]]
    assert deletions == [{"data_subject_email": ALICE_EMAIL, "delete_all_hits": True}]
    assert processors.hotjar.hits == {"bob@example.com": 1}

    assert "accepted" in entries["analytics"]["note"]
    assert processors.analytics.deletions == [(GA_PROPERTY, "userProvidedData", ALICE_EMAIL)]


async def test_an_export_with_a_verified_email_reaches_every_processor(
    api: Api, processors: Processors
) -> None:
    headers = api.email_auth()
    status, _, job = await api.request("POST", "/v1/exports", sub=None, headers=headers, json={})
    assert status == 202, job
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["identity"] == [
        {"identifiers": ["email"], "source": "token", "verified_by": "sign-in (email_verified)"}
    ]
    runs = done["connectors"]
    assert {name: run["status"] for name, run in runs.items()} == dict.fromkeys(
        EMAIL_KEYED, "succeeded"
    )
    assert {name: run["records"] for name, run in runs.items()} == {
        "helpdesk": 3,
        "crm": 1,
        "recordings": 1,
        "analytics": 1,
    }

    archive = await api.archive(job["id"], headers)
    manifest = orjson.loads(archive.read("manifest.json"))
    assert {c["name"]: (c["asked"], c["status"]) for c in manifest["connectors"]} == dict.fromkeys(
        EMAIL_KEYED, (True, "succeeded")
    )
    events = orjson.loads(archive.read("helpdesk/events.json"))
    assert [event["id"] for event in events] == ["e0", "e1", "e2"]
    [contact] = orjson.loads(archive.read("crm/contact.json"))
    assert contact["id"] == processors.alice_contact
    assert contact["properties"]["email"] == ALICE_EMAIL
    assert contact["properties"]["firstname"] == "Alice"
    [lookup] = orjson.loads(archive.read("recordings/user_lookup.json"))
    assert lookup["looked_up_by"] == {"data_subject_email": ALICE_EMAIL}
    assert lookup["answer"]["status"] == "accepted"
    [notice] = orjson.loads(archive.read("analytics/notice.json"))
    assert notice["property"] == f"properties/{GA_PROPERTY}"
    assert "email" in notice["identifier"]

    # Each processor was asked for alice by her email, and nothing was deleted.
    assert [s.query for s in processors.helpdesk.seen("/events")] == [
        {"email": ALICE_EMAIL},
        {"email": ALICE_EMAIL, "cursor": "2"},
    ]
    [search] = bodies(processors.hubspot, "/search")
    assert search["filterGroups"][0]["filters"][0]["value"] == ALICE_EMAIL
    assert bodies(processors.hotjar, LOOKUP_PATH) == [
        {"data_subject_email": ALICE_EMAIL, "delete_all_hits": False}
    ]
    assert processors.hotjar.hits[ALICE_EMAIL] == 3
    assert processors.hubspot.gdpr_deleted == []
    assert processors.analytics.deletions == []


async def test_an_erasure_with_a_verified_email_erases_at_every_processor(
    api: Api, processors: Processors
) -> None:
    job = await erasure_by(api, api.email_auth())
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    entries = await signed_receipt(api, job["id"])
    assert set(entries) == set(EMAIL_KEYED)
    assert_erased_everywhere(processors, entries)


async def test_an_export_without_an_email_asks_nobody_until_support_supplies_one(
    api: Api, processors: Processors
) -> None:
    job = await api.export()
    waiting = await attention_needed(api, job["id"])
    assert waiting["identity"] == []
    for name in EMAIL_KEYED:
        run = waiting["connectors"][name]
        assert run["status"] == "unidentified", (name, run)
        assert "email" in run["error"] and run["error"].startswith("not asked"), run
        assert run["records"] == 0 and run["report"] is None
    for name, fake in processors.fakes().items():
        assert fake.requests == [], name
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 409 and problem["status_now"] == "needs_attention", problem

    body = {"email": ALICE_EMAIL, "verified_by": "account email confirmed by support ticket"}
    status, _, resumed = await api.request(
        "POST", f"/v1/jobs/{job['id']}/identifiers", json=body, sub="support-1", roles=("support",)
    )
    assert status == 200, resumed
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["identity"] == [
        {"identifiers": ["email"], "source": "staff", "verified_by": body["verified_by"]}
    ]
    archive = await api.archive(job["id"], api.auth())
    manifest = orjson.loads(archive.read("manifest.json"))
    assert {c["name"]: c["asked"] for c in manifest["connectors"]} == dict.fromkeys(
        EMAIL_KEYED, True
    )
    assert len(orjson.loads(archive.read("helpdesk/events.json"))) == 3
    assert len(orjson.loads(archive.read("crm/contact.json"))) == 1
    assert bodies(processors.hotjar, LOOKUP_PATH) == [
        {"data_subject_email": ALICE_EMAIL, "delete_all_hits": False}
    ]
    assert processors.helpdesk.seen("/events")[0].query == {"email": ALICE_EMAIL}


async def test_an_erasure_without_an_email_erases_nothing_until_support_supplies_one(
    api: Api, processors: Processors
) -> None:
    job = await erasure_by(api)
    waiting = await attention_needed(api, job["id"])
    for name in EMAIL_KEYED:
        run = waiting["connectors"][name]
        assert run["status"] == "unidentified", (name, run)
        assert run["report"] is None and run["decision"] is None
    for name, fake in processors.fakes().items():
        assert fake.requests == [], name
    assert processors.alice_contact in processors.hubspot.contacts
    assert processors.hotjar.hits[ALICE_EMAIL] == 3
    assert len(processors.helpdesk.users["alice"]["events"]) == 3
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409, problem
    assert waiting["links"]["receipt"] is None

    body = {"email": ALICE_EMAIL, "verified_by": "signed letter, ID enclosed"}
    status, _, resumed = await api.request(
        "POST", f"/v1/jobs/{job['id']}/identifiers", json=body, sub="support-1", roles=("support",)
    )
    assert status == 200, resumed
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert_erased_everywhere(processors, await signed_receipt(api, job["id"]))


async def test_an_erasure_without_an_email_never_says_hotjar_was_asked(
    processors: Processors, api_factory: ApiFactory
) -> None:
    # Google Analytics keyed by the subject's user id is reachable without an email.
    connectors = await processors.opened(
        {
            "recordings": processors.hotjar_connector(),
            "analytics": processors.analytics_connector("user_id"),
        }
    )
    api = await api_factory(connectors, erasure_grace=timedelta(0))
    job = await erasure_by(api)
    waiting = await attention_needed(api, job["id"])
    assert waiting["connectors"]["recordings"]["status"] == "unidentified"
    assert waiting["connectors"]["analytics"]["status"] == "succeeded"
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409, problem

    reason = "no email known for the subject; Hotjar cannot be asked"
    status, _, decided = await api.request(
        "POST",
        f"/v1/jobs/{job['id']}/go-without",
        json={"connectors": ["recordings"], "reason": reason},
        sub="support-1",
        roles=("support",),
    )
    assert status == 200, decided
    assert decided["connectors"]["recordings"]["status"] == "not_asked"
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["connectors"]["recordings"]["report"] is None

    entries = await signed_receipt(api, job["id"])
    hotjar = entries["recordings"]
    assert hotjar["asked"] is False
    assert hotjar["status"] == "not_asked"
    assert hotjar["not_asked_reason"] == reason
    for claim in ("verification", "datasets", "note"):
        assert claim not in hotjar, (claim, hotjar)
    assert processors.hotjar.requests == []
    assert processors.hotjar.hits[ALICE_EMAIL] == 3

    analytics = entries["analytics"]
    assert analytics["asked"] is True and analytics["verification"]["passed"] is True
    assert processors.analytics.deletions == [(GA_PROPERTY, "userId", "alice")]
