"""The Hotjar connector against a local server speaking Hotjar's OAuth and User Lookup API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest

from connectors.base import Connector
from connectors.errors import PermanentError, RateLimited, TransientError, Unidentified
from connectors.hotjar import HotjarConnector
from connectors.items import Record, Subject
from connectors.registry import load_type
from connectors.reports import RetentionRule
from connectors.testing import ConnectorContract
from tests.conftest import free_port
from tests.connectors.processor_servers import Bystander, FakeHotjar, serve

ALICE = Subject("alice", "alice@example.com", {"hotjar_user": "u-77"})
LOOKUP_PATH = f"/v1/organizations/{FakeHotjar.ORGANIZATION_ID}/user-lookup"


@pytest.fixture
async def hotjar() -> AsyncIterator[tuple[FakeHotjar, str]]:
    fake = FakeHotjar()
    fake.hits["alice@example.com"] = 3
    async with serve(fake) as url:
        yield fake, url


def build(url: str, **options: Any) -> HotjarConnector:
    settings: dict[str, Any] = {
        "organization_id": int(FakeHotjar.ORGANIZATION_ID),
        "client_id": FakeHotjar.CLIENT_ID,
        "client_secret": FakeHotjar.CLIENT_SECRET,
        "base_url": url,
        "rate_limit": 0,
    }
    settings.update(options)
    return HotjarConnector("recordings", **settings)


@pytest.fixture
async def connector(hotjar: tuple[FakeHotjar, str]) -> AsyncIterator[HotjarConnector]:
    built = build(hotjar[1])
    await built.open()
    yield built
    await built.close()


async def export(connector: HotjarConnector, subject: Subject) -> list[dict[str, Any]]:
    records = []
    async for item in connector.export(subject):
        assert isinstance(item, Record)
        assert item.dataset == "user_lookup"
        records.append(dict(item.data))
    return records


async def test_export_obtains_a_token_then_looks_the_subject_up(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    [record] = await export(connector, ALICE)
    [token_request] = fake.seen("/oauth/token")
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token_request.body.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": [FakeHotjar.CLIENT_ID],
        "client_secret": [FakeHotjar.CLIENT_SECRET],
    }
    [lookup] = fake.seen(LOOKUP_PATH)
    assert lookup.headers["Authorization"].startswith("Bearer ")
    assert lookup.headers["Authorization"].removeprefix("Bearer ") in fake.tokens
    assert json.loads(lookup.body) == {
        "data_subject_email": "alice@example.com",
        "delete_all_hits": False,
    }
    assert record["organization_id"] == FakeHotjar.ORGANIZATION_ID
    assert record["looked_up_by"] == {"data_subject_email": "alice@example.com"}
    assert record["answer"]["status"] == "accepted"
    assert "emails its lookup report" in record["report_delivery"]
    assert fake.hits == {"alice@example.com": 3}


async def test_the_token_is_reused_until_it_expires(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    await export(connector, ALICE)
    await export(connector, ALICE)
    assert len(fake.seen("/oauth/token")) == 1
    fake.expires_in = 30
    await connector.check()
    await export(connector, ALICE)
    assert len(fake.seen("/oauth/token")) == 3


async def test_a_refused_token_is_renewed_once(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    await export(connector, ALICE)
    fake.revoke_tokens()
    assert len(await export(connector, ALICE)) == 1
    assert len(fake.seen("/oauth/token")) == 2
    assert len(fake.seen(LOOKUP_PATH)) == 3


async def test_a_token_refused_twice_is_a_permanent_error(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    fake.honour_tokens = False
    with pytest.raises(PermanentError) as caught:
        await export(connector, ALICE)
    assert str(caught.value) == (
        "recordings: user lookup (POST /v1/organizations/{organization_id}/user-lookup): "
        "HTTP 401, credentials refused"
    )
    assert caught.value.detail is not None
    assert "Missing or invalid authorization header" in caught.value.detail
    assert len(fake.seen("/oauth/token")) == 2


async def test_site_user_ids_are_sent_in_the_site_map(hotjar: tuple[FakeHotjar, str]) -> None:
    fake, url = hotjar
    connector = build(url, site_ids=[3456789, "3456790"], user_id_identity="hotjar_user")
    await connector.open()
    try:
        await export(connector, ALICE)
        await export(connector, Subject("carol", identities={"hotjar_user": "u-78"}))
        with pytest.raises(Unidentified, match="needs the subject's email or hotjar_user"):
            await export(connector, Subject("bob"))
    finally:
        await connector.close()
    assert [json.loads(seen.body) for seen in fake.seen(LOOKUP_PATH)] == [
        {
            "data_subject_email": "alice@example.com",
            "data_subject_site_id_to_user_id_map": {"3456789": "u-77", "3456790": "u-77"},
            "delete_all_hits": False,
        },
        {
            "data_subject_site_id_to_user_id_map": {"3456789": "u-78", "3456790": "u-78"},
            "delete_all_hits": False,
        },
    ]


def test_the_identifiers_are_the_email_and_the_site_user_id() -> None:
    url = "https://api.hotjar.io"
    assert build(url).identifiers == {"email"}
    assert build(url, site_ids=[3456789]).identifiers == {"email", "id"}
    with_identity = build(url, site_ids=[3456789], user_id_identity="hotjar_user")
    assert with_identity.identifiers == {"email", "hotjar_user"}
    assert with_identity.describe()["identifiers"] == ["email", "hotjar_user"]


async def test_without_an_identity_the_site_user_id_is_the_subjects_id(
    hotjar: tuple[FakeHotjar, str],
) -> None:
    fake, url = hotjar
    connector = build(url, site_ids=[3456789])
    await connector.open()
    try:
        await connector.erase(Subject("bob"), dry_run=False, retention={})
    finally:
        await connector.close()
    assert [json.loads(seen.body) for seen in fake.seen(LOOKUP_PATH)] == [
        {"data_subject_site_id_to_user_id_map": {"3456789": "bob"}, "delete_all_hits": True}
    ]


async def test_erase_deletes_all_hits_and_a_repeat_reports_zero(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    first = await connector.erase(ALICE, dry_run=False, retention={})
    second = await connector.erase(ALICE, dry_run=False, retention={})
    assert [json.loads(seen.body)["delete_all_hits"] for seen in fake.seen(LOOKUP_PATH)] == [
        True,
        True,
    ]
    assert fake.hits == {}
    assert first.note is not None
    assert "accepted the request to delete every hit" in first.note
    assert "reports no counts" in first.note
    for report in (first, second):
        entry = report.dataset("user_lookup")
        assert (entry.deleted, entry.anonymised, entry.retained) == (0, 0, 0)


async def test_erase_dry_run_and_retention_send_no_deletion(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    dry = await connector.erase(ALICE, dry_run=True, retention={})
    rule = RetentionRule("fraud investigation hold", timedelta(days=90))
    kept = await connector.erase(ALICE, dry_run=False, retention={"user_lookup": rule})
    assert fake.seen(LOOKUP_PATH) == []
    assert fake.hits == {"alice@example.com": 3}
    assert dry.note is not None
    assert dry.note.startswith("dry run")
    assert kept.dataset("user_lookup").legal_basis == rule.legal_basis


async def test_a_subject_with_nothing_to_look_up_is_unidentified(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    bob = Subject("bob", identities={"hotjar_user": "u-79"})
    needs = "connector 'recordings' needs the subject's email, and none is known"
    with pytest.raises(Unidentified, match=needs) as caught:
        await export(connector, bob)
    assert caught.value.needs == ("email",)
    rule = RetentionRule("fraud investigation hold", timedelta(days=90))
    for dry_run in (True, False):
        for retention in ({}, {"user_lookup": rule}):
            with pytest.raises(Unidentified, match=needs):
                await connector.erase(bob, dry_run=dry_run, retention=retention)
        with pytest.raises(Unidentified, match=needs):
            await connector.restrict(bob, dry_run=dry_run)
        with pytest.raises(Unidentified, match=needs):
            await connector.object(bob, ["analytics"])
    assert fake.requests == []
    assert not (await connector.restrict(ALICE, dry_run=False)).supported
    objection = await connector.object(ALICE, ["analytics"])
    assert [(p.purpose, p.supported) for p in objection.purposes] == [("analytics", False)]
    assert "looks up or deletes a user's data" in (objection.purposes[0].note or "")


async def test_wrong_client_credentials_are_a_permanent_error(
    hotjar: tuple[FakeHotjar, str],
) -> None:
    _, url = hotjar
    connector = build(url, client_secret="hj-secret-wrong-0000")
    await connector.open()
    try:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
        with pytest.raises(PermanentError, match="HTTP 401 invalid_client"):
            await connector.check()
    finally:
        await connector.close()
    assert str(caught.value) == (
        "recordings: obtain access token (POST /v1/oauth/token): HTTP 401 invalid_client, "
        "credentials refused"
    )
    assert caught.value.detail is not None
    assert "Client authentication failed" in caught.value.detail
    assert "hj-secret-wrong-0000" not in str(caught.value) + caught.value.detail


async def test_an_unknown_organization_is_a_permanent_error(
    hotjar: tuple[FakeHotjar, str],
) -> None:
    _, url = hotjar
    connector = build(url, organization_id=42)
    await connector.open()
    try:
        with pytest.raises(PermanentError, match=r"HTTP 404$") as caught:
            await export(connector, ALICE)
    finally:
        await connector.close()
    assert caught.value.detail is not None
    assert "Organization not found" in caught.value.detail


async def test_429_is_rate_limited_with_retry_after(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    await connector.check()
    fake.fail_next(429, headers={"Retry-After": "60"}, body={"error": "rate_limited"})
    fake.fail_next(429)
    with pytest.raises(RateLimited) as caught:
        await connector.erase(ALICE, dry_run=False, retention={})
    assert caught.value.retry_after == 60.0
    with pytest.raises(RateLimited) as caught:
        await connector.erase(ALICE, dry_run=False, retention={})
    assert caught.value.retry_after == 20.0
    assert fake.hits == {"alice@example.com": 3}


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector, status: int
) -> None:
    fake, _ = hotjar
    fake.fail_next(status, body={"error": "internal"})
    with pytest.raises(TransientError, match=rf"obtain access token \(POST .*\): HTTP {status}"):
        await export(connector, ALICE)
    await connector.check()
    fake.fail_next(status)
    with pytest.raises(TransientError, match=rf"user lookup \(POST .*\): HTTP {status}"):
        await export(connector, ALICE)


async def test_secrets_stay_out_of_repr(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    await connector.check()
    [token] = fake.tokens
    shown = repr(connector) + repr(connector.client) + repr(vars(connector))
    assert FakeHotjar.CLIENT_SECRET not in shown
    assert token not in shown


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_id": "a", "client_secret": "b"}, "organization_id must be non-empty text"),
        ({"organization_id": 1, "client_secret": "b"}, "client_id must be non-empty text"),
        ({"organization_id": 1, "client_id": "a"}, "client_secret is required"),
        (
            {"organization_id": 1, "client_id": "a", "client_secret": "b", "site_ids": 5},
            "site_ids must be a list",
        ),
        (
            {"organization_id": 1, "client_id": "a", "client_secret": "b", "base_url": "x"},
            "base_url must be an absolute",
        ),
    ],
)
def test_bad_configuration_is_a_one_line_permanent_error(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        HotjarConnector("recordings", **options)


def test_the_hotjar_type_is_registered() -> None:
    assert load_type("hotjar") is HotjarConnector


class TestHotjarConnectorContract(ConnectorContract):
    """The connector keeps the contract; the lookup's acknowledgement is a notice, not data."""

    exports_notices_only = True
    stack: AsyncExitStack | None = None

    def options(self) -> dict[str, Any]:
        return {}

    async def make_connector(self) -> Connector:
        self.stack = AsyncExitStack()
        fake = FakeHotjar()
        fake.hits["alice@example.com"] = 3
        url = await self.stack.enter_async_context(serve(fake))
        return build(url, **self.options())

    def subject_with_data(self) -> Subject:
        return ALICE

    async def make_failing_connector(self) -> Connector | None:
        return build(f"http://127.0.0.1:{free_port()}")

    async def cleanup(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()


class TestHotjarConnectorContractWithSites(TestHotjarConnectorContract):
    """The contract again with the subject also looked up by their user id on two sites."""

    def options(self) -> dict[str, Any]:
        return {"site_ids": [3456789, 3456790], "user_id_identity": "hotjar_user"}


# -- a hostile Hotjar ----------------------------------------------------------------


async def test_a_token_endpoint_redirected_elsewhere_keeps_the_secret_home(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    """A 307 would post the client secret again, to the other host: it is not followed."""
    fake, _ = hotjar
    elsewhere = Bystander()
    async with serve(elsewhere) as other:
        fake.redirect_next(f"{other}/v1/oauth/token", 307)
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "recordings: obtain access token (POST /v1/oauth/token): HTTP 307: a redirect to "
        "another origin, not followed (redirects never are)"
    )
    assert elsewhere.requests == []


async def test_a_huge_token_answer_is_refused(hotjar: tuple[FakeHotjar, str]) -> None:
    fake, url = hotjar
    fake.stream_next(3 * 1024 * 1024, prefix=b'{"access_token": "')
    connector = build(url, max_response_mib=1)
    await connector.open()
    try:
        with pytest.raises(PermanentError, match="answer larger than 1 MiB, the rest left unread"):
            await connector.check()
    finally:
        await connector.close()


async def test_a_lookup_trickling_forever_is_transient(hotjar: tuple[FakeHotjar, str]) -> None:
    fake, url = hotjar
    connector = build(url, timeout=0.3)
    await connector.open()
    try:
        await connector.check()
        fake.trickle_next()
        with pytest.raises(TransientError) as caught:
            await export(connector, ALICE)
    finally:
        await connector.close()
    assert str(caught.value) == (
        "recordings: user lookup (POST /v1/organizations/{organization_id}/user-lookup): "
        "no complete answer within 0.3s"
    )


async def test_an_error_quoting_the_subject_stays_out_of_the_message(
    hotjar: tuple[FakeHotjar, str], connector: HotjarConnector
) -> None:
    fake, _ = hotjar
    await connector.check()
    fake.fail_next(400, body={"error": "bad_request", "message": "alice@example.com: no site"})
    with pytest.raises(PermanentError) as caught:
        await export(connector, ALICE)
    assert str(caught.value) == (
        "recordings: user lookup (POST /v1/organizations/{organization_id}/user-lookup): HTTP 400"
    )
    assert caught.value.detail is not None
    assert "alice@example.com: no site" in caught.value.detail
