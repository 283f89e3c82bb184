"""The HubSpot connector against a local server speaking HubSpot's CRM v3 contacts API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest

from connectors.base import Connector
from connectors.errors import PermanentError, RateLimited, TransientError, Unidentified
from connectors.hubspot import NEW_VALUE_REFUSED, HubSpotConnector
from connectors.items import Record, Subject
from connectors.registry import load_type
from connectors.reports import FieldChange, RetentionRule
from connectors.testing import ConnectorContract
from tests.conftest import free_port
from tests.connectors.journaled import journal_events
from tests.connectors.processor_servers import Bystander, FakeHubSpot, serve

ALICE = Subject("alice", "alice@example.com")


@pytest.fixture
async def hubspot() -> AsyncIterator[tuple[FakeHubSpot, str]]:
    fake = FakeHubSpot()
    fake.add_contact("alice@example.com", firstname="Alice", lastname="Martin", phone="+33 1 23")
    fake.add_contact("bob@example.com", firstname="Bob")
    async with serve(fake) as url:
        yield fake, url


@pytest.fixture
async def connector(hubspot: tuple[FakeHubSpot, str]) -> AsyncIterator[HubSpotConnector]:
    _, url = hubspot
    built = HubSpotConnector("crm", token=FakeHubSpot.TOKEN, base_url=url, rate_limit=0)
    await built.open()
    yield built
    await built.close()


async def export(connector: HubSpotConnector, subject: Subject) -> list[dict[str, Any]]:
    records = []
    async for item in connector.export(subject):
        assert isinstance(item, Record)
        assert item.dataset == "contact"
        records.append(dict(item.data))
    return records


async def test_export_finds_the_contact_by_email_and_reads_every_property(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    assert await export(connector, ALICE) == [
        {
            "id": "501",
            "createdAt": "2024-03-01T10:00:00.000Z",
            "updatedAt": "2024-06-01T10:00:00.000Z",
            "archived": False,
            "properties": {
                "email": "alice@example.com",
                "firstname": "Alice",
                "lastname": "Martin",
                "phone": "+33 1 23",
                "hs_object_id": "501",
                "createdate": "2024-03-01T10:00:00.000Z",
                "lastmodifieddate": "2024-06-01T10:00:00.000Z",
            },
        }
    ]
    search = json.loads(fake.seen("/search")[0].body)
    assert search["filterGroups"] == [
        {"filters": [{"propertyName": "email", "operator": "EQ", "value": "alice@example.com"}]}
    ]
    read = json.loads(fake.seen("/batch/read")[0].body)
    assert read["inputs"] == [{"id": "501"}]
    assert set(read["properties"]) == set(FakeHubSpot.PROPERTIES)
    assert all(s.headers["Authorization"] == f"Bearer {FakeHubSpot.TOKEN}" for s in fake.requests)


async def test_configured_properties_skip_the_property_listing(
    hubspot: tuple[FakeHubSpot, str],
) -> None:
    fake, url = hubspot
    connector = HubSpotConnector(
        "crm", token=FakeHubSpot.TOKEN, base_url=url, properties=["email", "firstname"]
    )
    await connector.open()
    try:
        [record] = await export(connector, ALICE)
    finally:
        await connector.close()
    assert record["properties"] == {"email": "alice@example.com", "firstname": "Alice"}
    assert fake.seen("/crm/v3/properties") == []


async def test_a_known_contact_id_is_read_without_searching(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    subject = Subject("bob", identities={"hubspot_contact_id": "502"})
    [record] = await export(connector, subject)
    assert record["properties"]["firstname"] == "Bob"
    assert fake.seen("/search") == []


async def test_an_unknown_subject_exports_nothing(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    assert await export(connector, Subject("zoe", "zoe@example.com")) == []
    assert await export(connector, Subject("zoe", identities={"hubspot_contact_id": "999"})) == []
    assert fake.seen("/crm/v3/properties") == []


async def test_a_subject_without_email_or_contact_id_is_unidentified(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    nameless = Subject("alice", identities={"phone_number": "+33 1 23"})
    needs = "needs the subject's email or hubspot_contact_id, and none is known"
    assert connector.identifiers == {"email", "hubspot_contact_id"}
    assert connector.describe()["identifiers"] == ["email", "hubspot_contact_id"]
    with pytest.raises(Unidentified, match=needs) as caught:
        await export(connector, nameless)
    assert caught.value.needs == ("email", "hubspot_contact_id")
    for dry_run in (True, False):
        with pytest.raises(Unidentified, match=needs):
            await connector.erase(nameless, dry_run=dry_run, retention={})
        with pytest.raises(Unidentified, match=needs):
            await connector.restrict(nameless, dry_run=dry_run)
    assert fake.requests == []
    assert "501" in fake.contacts


async def test_search_pages_are_followed(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.add_contact("alice@example.com", firstname="Alice (work)")
    fake.add_contact("alice@example.com", firstname="Alice (old)")
    fake.search_page_cap = 1
    records = await export(connector, ALICE)
    assert [r["id"] for r in records] == ["501", "503", "504"]
    assert [json.loads(s.body).get("after") for s in fake.seen("/search")] == [None, "1", "2"]


async def test_erase_gdpr_deletes_by_id_and_a_repeat_reports_zero(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    first = await connector.erase(ALICE, dry_run=False, retention={})
    second = await connector.erase(ALICE, dry_run=False, retention={})
    assert first.dataset("contact").deleted == 1
    assert first.note is not None
    assert "permanently deleted" in first.note
    assert second.dataset("contact").deleted == 0
    assert fake.gdpr_deleted == ["501"]
    assert [json.loads(s.body) for s in fake.seen("/gdpr-delete")] == [{"objectId": "501"}]
    assert fake.blocklist == set()
    assert await export(connector, ALICE) == []


async def test_each_gdpr_delete_is_journaled_and_one_answered_404_is_withdrawn(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    second = fake.add_contact("alice@example.com", firstname="Alice (again)")

    def first_goes() -> None:  # once the search found both: its delete answers 404
        del fake.contacts["501"]

    fake.after_next("POST", "/search", first_goes)
    with journal_events() as events:
        report = await connector.erase(ALICE, dry_run=False, retention={})
    assert events == ["plan contact=1", "withdraw", "plan contact=1", "commit"]
    assert report.dataset("contact").deleted == 1
    assert fake.gdpr_deleted == [second]


async def test_erase_by_a_contact_id_already_gone_reports_zero(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    report = await connector.erase(
        Subject("x", identities={"hubspot_contact_id": "999"}), dry_run=False, retention={}
    )
    assert report.dataset("contact").deleted == 0
    assert fake.seen("/gdpr-delete") == []


async def test_erase_dry_run_deletes_nothing(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    report = await connector.erase(ALICE, dry_run=True, retention={})
    assert report.dataset("contact").deleted == 1
    assert "501" in fake.contacts
    assert fake.seen("/gdpr-delete") == []


async def test_erase_keeps_a_retained_contact(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    rule = RetentionRule("contract records, HGB §257", timedelta(days=2190))
    report = await connector.erase(ALICE, dry_run=False, retention={"contact": rule})
    entry = report.dataset("contact")
    assert (entry.retained, entry.deleted, entry.legal_basis) == (1, 0, rule.legal_basis)
    assert "501" in fake.contacts


async def test_a_wrong_token_is_a_permanent_error(hubspot: tuple[FakeHubSpot, str]) -> None:
    _, url = hubspot
    connector = HubSpotConnector("crm", token="pat-eu1-wrong", base_url=url, rate_limit=0)
    await connector.open()
    try:
        with pytest.raises(PermanentError, match="HTTP 401, credentials refused") as caught:
            await export(connector, ALICE)
        with pytest.raises(PermanentError) as checked:
            await connector.check()
    finally:
        await connector.close()
    assert "pat-eu1-wrong" not in str(caught.value)
    assert str(checked.value) == (
        "crm: check (GET /crm/v3/objects/contacts): HTTP 401, credentials refused"
    )
    assert checked.value.detail is not None
    assert "Authentication credentials not found" in checked.value.detail


async def test_check_passes_with_the_right_token(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    await connector.check()
    assert fake.requests[-1].query == {"limit": "1"}


async def test_429_is_rate_limited_with_retry_after(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.fail_next(
        429,
        headers={"Retry-After": "3"},
        body={
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "SECONDLY",
        },
    )
    with pytest.raises(RateLimited, match=r"HTTP 429 \(retry after 3s\)$") as caught:
        await export(connector, ALICE)
    assert caught.value.retry_after == 3.0
    assert caught.value.detail is not None
    assert "secondly limit" in caught.value.detail


async def test_429_without_retry_after_waits_out_the_ten_second_window(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.fail_next(429, body={"errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"})
    with pytest.raises(RateLimited) as caught:
        await connector.erase(ALICE, dry_run=False, retention={})
    assert caught.value.retry_after == 10.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector, status: int
) -> None:
    fake, _ = hubspot
    fake.fail_next(status, body={"status": "error", "message": "internal error"})
    with pytest.raises(TransientError, match=f"HTTP {status}"):
        await export(connector, ALICE)


async def test_a_server_error_during_gdpr_delete_is_transient_and_the_retry_deletes(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.fail_next(200, body={"total": 1, "results": [{"id": "501"}]})
    fake.fail_next(502)
    with pytest.raises(
        TransientError,
        match=r"GDPR delete contact \(POST /crm/v3/objects/contacts/gdpr-delete\): HTTP 502",
    ):
        await connector.erase(ALICE, dry_run=False, retention={})
    report = await connector.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("contact").deleted == 1


def test_the_token_stays_out_of_repr() -> None:
    connector = HubSpotConnector("crm", token=FakeHubSpot.TOKEN)
    shown = repr(connector) + repr(connector.client) + repr(vars(connector))
    assert FakeHubSpot.TOKEN not in shown
    assert connector.client.base_url == "https://api.hubapi.com"
    assert connector.client.limiter is not None
    assert connector.client.limiter.rate == 4.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "token is required"),
        ({"token": "t", "base_url": "api.hubapi.com"}, "base_url must be an absolute http"),
        ({"token": "t", "properties": "email"}, "properties must be a list"),
        ({"token": "t", "portal": 1}, "unknown option"),
    ],
)
def test_bad_configuration_is_a_one_line_permanent_error(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        HubSpotConnector("crm", **options)


def test_the_hubspot_type_is_registered() -> None:
    assert load_type("hubspot") is HubSpotConnector


class TestHubSpotConnectorContract(ConnectorContract):
    """The HubSpot connector keeps the connector contract against the fake CRM."""

    stack: AsyncExitStack | None = None

    async def make_connector(self) -> Connector:
        self.stack = AsyncExitStack()
        fake = FakeHubSpot()
        fake.add_contact("alice@example.com", firstname="Alice", lastname="Martin")
        fake.add_contact("bob@example.com", firstname="Bob")
        url = await self.stack.enter_async_context(serve(fake))
        return HubSpotConnector("crm", token=FakeHubSpot.TOKEN, base_url=url, rate_limit=0)

    def subject_with_data(self) -> Subject:
        return ALICE

    async def make_failing_connector(self) -> Connector | None:
        url = f"http://127.0.0.1:{free_port()}"
        return HubSpotConnector("crm", token=FakeHubSpot.TOKEN, base_url=url)

    async def cleanup(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()


# -- a hostile HubSpot ---------------------------------------------------------------


async def test_a_search_whose_cursor_comes_round_again_is_refused(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    for n, after in enumerate(["100", "200", "100"]):
        page = {"results": [{"id": str(501 + n)}], "paging": {"next": {"after": after}}}
        fake.fail_next(200, body=page)
    with pytest.raises(PermanentError) as caught:
        await export(connector, ALICE)
    assert str(caught.value) == (
        "crm: search contact page 3: HubSpot gives an 'after' cursor already followed: its "
        "paging goes round in a circle"
    )
    assert len(fake.seen("/search")) == 3


async def test_a_search_that_never_ends_stops_at_a_hundred_pages(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    for n in range(101):
        page = {"results": [{"id": "501"}], "paging": {"next": {"after": str(n)}}}
        fake.fail_next(200, body=page)
    with pytest.raises(PermanentError, match="the contact search did not end after 100 pages"):
        await export(connector, ALICE)
    assert len(fake.seen("/search")) == 100


async def test_malformed_paging_is_the_last_page(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.fail_next(200, body={"results": [{"id": "501"}], "paging": ["next"]})
    [record] = await export(connector, ALICE)
    assert record["id"] == "501"


async def test_a_huge_answer_is_refused(hubspot: tuple[FakeHubSpot, str]) -> None:
    fake, url = hubspot
    fake.stream_next(4 * 1024 * 1024, prefix=b'{"results": [', chunk=b'{"id": "1"},' * 1000)
    connector = HubSpotConnector(
        "crm", token=FakeHubSpot.TOKEN, base_url=url, rate_limit=0, max_response_mib=1
    )
    await connector.open()
    try:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    finally:
        await connector.close()
    assert str(caught.value) == (
        "crm: search contact page 1 (POST /crm/v3/objects/contacts/search): HTTP 200: answer "
        "larger than 1 MiB, the rest left unread"
    )


async def test_a_gdpr_delete_redirected_elsewhere_is_not_followed(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    elsewhere = Bystander()
    async with serve(elsewhere) as other:
        fake.fail_next(200, body={"total": 1, "results": [{"id": "501"}]})
        fake.redirect_next(f"{other}/gdpr-delete", 308)
        with pytest.raises(PermanentError, match="HTTP 308: a redirect to another origin"):
            await connector.erase(ALICE, dry_run=False, retention={})
    assert elsewhere.requests == []  # the token never left for the other host
    assert "501" in fake.contacts


async def test_an_error_quoting_the_contact_stays_out_of_the_message(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.fail_next(
        400,
        body={
            "status": "error",
            "message": "Property values were not valid: alice@example.com, +33 1 23",
            "category": "VALIDATION_ERROR",
        },
    )
    with pytest.raises(PermanentError) as caught:
        await export(connector, ALICE)
    assert str(caught.value) == (
        "crm: search contact page 1 (POST /crm/v3/objects/contacts/search): HTTP 400"
    )
    assert caught.value.detail is not None
    assert "alice@example.com, +33 1 23" in caught.value.detail


# -- objection (GDPR Art. 21): communication preferences --------------------------------


async def test_an_objection_to_direct_marketing_unsubscribes_every_subscription_and_rereads(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.subscribe("alice@example.com", "7001", "7002")
    fake.subscribe("bob@example.com", "7001")
    assert connector.objection_purposes == {"direct_marketing"}

    report = await connector.object(ALICE, ["direct_marketing", "analytics"])
    in_force = await connector.objections_in_force(ALICE, ["direct_marketing", "analytics"])
    again = await connector.object(ALICE, ["direct_marketing"])

    marketing = report.purpose("direct_marketing")
    assert marketing is not None
    assert (marketing.targets, marketing.stopped) == (("Newsletter", "Product updates"), 2)
    analytics = report.purpose("analytics")
    assert analytics is not None and not analytics.supported
    assert in_force == {"direct_marketing": True}
    assert again.purposes[0].stopped == 0
    assert set(fake.subscriptions["alice@example.com"].values()) == {"NOT_SUBSCRIBED"}
    assert fake.subscriptions["bob@example.com"]["7001"] == "SUBSCRIBED"
    sent = [json.loads(seen.body) for seen in fake.seen("/unsubscribe")]
    assert sent == [
        {"emailAddress": "alice@example.com", "subscriptionId": "7001"},
        {"emailAddress": "alice@example.com", "subscriptionId": "7002"},
    ]


async def test_an_objection_maps_purposes_to_the_configured_subscription_types(
    hubspot: tuple[FakeHubSpot, str],
) -> None:
    fake, url = hubspot
    fake.subscribe("alice@example.com", "7001", "7002")
    connector = HubSpotConnector(
        "crm",
        token=FakeHubSpot.TOKEN,
        base_url=url,
        rate_limit=0,
        objection_subscriptions={"direct_marketing": ["Newsletter"], "profiling": ["7002"]},
    )
    await connector.open()
    try:
        report = await connector.object(ALICE, ["direct_marketing"])
        assert [(p.targets, p.stopped) for p in report.purposes] == [(("Newsletter",), 1)]
        assert fake.subscriptions["alice@example.com"] == {
            "7001": "NOT_SUBSCRIBED",
            "7002": "SUBSCRIBED",
        }
        assert await connector.objections_in_force(ALICE, ["direct_marketing", "profiling"]) == {
            "direct_marketing": True,
            "profiling": False,
        }
    finally:
        await connector.close()


async def test_an_objection_by_contact_id_reads_the_contacts_email(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    fake.subscribe("alice@example.com", "7001")
    by_id = Subject("alice", identities={"hubspot_contact_id": "501"})
    report = await connector.object(by_id, ["direct_marketing"])
    assert report.purposes[0].stopped == 1
    with pytest.raises(Unidentified):
        await connector.object(Subject("alice"), ["direct_marketing"])


async def test_an_objection_for_an_address_hubspot_does_not_know_stops_nothing(
    connector: HubSpotConnector,
) -> None:
    nobody = Subject("nobody", "nobody@example.com")
    report = await connector.object(nobody, ["direct_marketing"])
    assert [(p.supported, p.stopped) for p in report.purposes] == [(True, 0)]
    assert await connector.objections_in_force(nobody, ["direct_marketing"]) == {
        "direct_marketing": True
    }


@pytest.mark.parametrize("mapping", [{}, {"direct_marketing": []}, ["direct_marketing"]])
def test_a_bad_objection_mapping_is_a_one_line_permanent_error(mapping: object) -> None:
    with pytest.raises(PermanentError, match="objection_subscriptions"):
        HubSpotConnector("crm", token="t", objection_subscriptions=mapping)


# -- rectification (GDPR Art. 16): contact properties -----------------------------------


async def test_a_rectification_patches_the_contacts_properties_and_reads_them_back(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    assert {(r.dataset, r.field, r.identity) for r in connector.rectifiable} == {
        ("contact", "firstname", False),
        ("contact", "lastname", False),
        ("contact", "phone", False),
    }
    changes = [
        FieldChange("contact", "lastname", "Dupont"),
        FieldChange("contact", "firstname", "Alice"),
    ]

    report = await connector.rectify(ALICE, changes)
    again = await connector.rectify(ALICE, changes)

    assert [(f.field, f.changed) for f in report.fields] == [("lastname", 1), ("firstname", 0)]
    assert [f.changed for f in again.fields] == [0, 0]
    assert await connector.rectifications_in_force(ALICE, changes) == [True, True]
    assert fake.contacts["501"]["lastname"] == "Dupont"
    patched = [json.loads(seen.body) for seen in fake.seen("/crm/v3/objects/contacts/501")]
    assert patched == [{"properties": {"lastname": "Dupont"}}]
    nobody = await connector.rectify(Subject("n", "nobody@example.com"), changes)
    assert nobody.note == "HubSpot holds no contact for the subject"


async def test_a_refused_update_does_not_keep_the_new_values_hubspot_echoes(
    hubspot: tuple[FakeHubSpot, str], connector: HubSpotConnector
) -> None:
    fake, _ = hubspot
    echo = {"status": "error", "message": "Property values were not valid: Dupont-Échec"}
    fake.fail_next(400, body=echo, method="PATCH")
    with pytest.raises(PermanentError) as caught:
        await connector.rectify(ALICE, [FieldChange("contact", "lastname", "Dupont-Échec")])
    assert "HTTP 400" in str(caught.value) and "update contact" in str(caught.value)
    assert caught.value.detail == NEW_VALUE_REFUSED
    assert "Dupont-Échec" not in f"{caught.value} {caught.value.detail}"
    assert fake.contacts["501"]["lastname"] == "Martin"


def test_a_bad_rectifiable_mapping_is_a_one_line_permanent_error() -> None:
    with pytest.raises(PermanentError, match="rectifiable must map contact properties"):
        HubSpotConnector("crm", token="t", rectifiable={"firstname": "colour"})
