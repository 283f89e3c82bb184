"""The Google Analytics connector against a local server speaking the Analytics Admin API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from connectors.base import Connector
from connectors.errors import PermanentError, RateLimited, TransientError, Unidentified
from connectors.google_analytics import GoogleAnalyticsConnector, normalise_user_provided_data
from connectors.items import Record, Subject
from connectors.registry import load_type
from connectors.testing import ConnectorContract
from tests.conftest import free_port
from tests.connectors.processor_servers import Bystander, FakeGoogleAnalytics, serve

ALICE = Subject("alice", "Alice.Martin@GoogleMail.com", {"ga_client_id": "1197596843.1673515099"})


@pytest.fixture
async def analytics() -> AsyncIterator[tuple[FakeGoogleAnalytics, str]]:
    fake = FakeGoogleAnalytics()
    async with serve(fake) as url:
        yield fake, url


def build(url: str, **options: Any) -> GoogleAnalyticsConnector:
    settings: dict[str, Any] = {
        "property": "123456789",
        "access_token": FakeGoogleAnalytics.TOKEN,
        "base_url": url,
        "rate_limit": 0,
    }
    settings.update(options)
    return GoogleAnalyticsConnector("analytics", **settings)


@pytest.fixture
async def connector(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> AsyncIterator[GoogleAnalyticsConnector]:
    built = build(analytics[1])
    await built.open()
    yield built
    await built.close()


async def test_export_reads_the_property_and_yields_one_notice(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    items = [item async for item in connector.export(ALICE)]
    assert len(items) == 1
    [notice] = items
    assert isinstance(notice, Record)
    assert notice.dataset == "notice"
    assert connector.dataset("notice").category == "usage"
    assert notice.data["property"] == "properties/123456789"
    assert "no API that returns the data held on one user" in notice.data["statement"]
    assert any("submitUserDeletion" in line for line in notice.data["checked"])
    assert notice.data["checked"][0] == (
        "Analytics Admin API: property properties/123456789 (IoT platform) answered with "
        "this access token"
    )
    assert notice.data["identifier"] == "user_id from the subject's id"
    assert tuple(notice.data) == connector.dataset("notice").fields
    assert [(s.method, s.path) for s in fake.requests] == [("GET", "/v1alpha/properties/123456789")]
    assert fake.deletions == []


async def test_export_fails_when_google_refuses_the_token(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    _, url = analytics
    connector = build(url, access_token="ya29.revoked")
    await connector.open()
    try:
        with pytest.raises(
            PermanentError,
            match=r"read property \(GET /v1alpha/properties/\{property\}\): HTTP 401 UNAUTH",
        ):
            [item async for item in connector.export(ALICE)]
    finally:
        await connector.close()


async def test_erase_submits_a_user_deletion_and_a_repeat_counts_nothing(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    first = await connector.erase(ALICE, dry_run=False, retention={})
    second = await connector.erase(ALICE, dry_run=False, retention={})
    assert fake.deletions == [("123456789", "userId", "alice")] * 2
    seen = fake.seen(":submitUserDeletion")[0]
    assert seen.path == "/v1alpha/properties/123456789:submitUserDeletion"
    assert seen.headers["Authorization"] == f"Bearer {FakeGoogleAnalytics.TOKEN}"
    assert json.loads(seen.body) == {"userId": "alice"}
    assert first.note is not None
    assert "accepted" in first.note
    assert "2024-06-01T10:00:00.123456Z" in first.note
    for report in (first, second):
        assert all(e.deleted == 0 and e.anonymised == 0 for e in report.datasets)


async def test_erase_by_client_id_from_the_subjects_identities(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    fake, url = analytics
    connector = build(url, identifier="client_id", identity="ga_client_id")
    await connector.open()
    try:
        await connector.erase(ALICE, dry_run=False, retention={})
        [notice] = [item async for item in connector.export(ALICE)]
    finally:
        await connector.close()
    assert fake.deletions == [("123456789", "clientId", "1197596843.1673515099")]
    assert isinstance(notice, Record)
    assert notice.data["identifier"] == "client_id from identities['ga_client_id']"


@pytest.mark.parametrize(
    ("options", "identifier"),
    [
        ({}, "id"),
        ({"identifier": "user_provided_data"}, "email"),
        ({"identifier": "user_provided_data", "identity": "phone_number"}, "phone_number"),
        ({"identifier": "client_id", "identity": "ga_client_id"}, "ga_client_id"),
        ({"identifier": "app_instance_id", "identity": "firebase_id"}, "firebase_id"),
    ],
)
def test_the_identifier_is_the_one_the_deletion_is_keyed_by(
    options: dict[str, str], identifier: str
) -> None:
    connector = build("https://analyticsadmin.googleapis.com", **options)
    assert connector.identifiers == {identifier}
    assert connector.describe()["identifiers"] == [identifier]


async def test_a_subject_without_the_identifier_is_unidentified(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    fake, url = analytics
    connector = build(url, identifier="client_id", identity="ga_client_id")
    bob = Subject("bob", "bob@example.com")
    needs = "connector 'analytics' needs the subject's ga_client_id, and none is known"
    await connector.open()
    try:
        with pytest.raises(Unidentified, match=needs):
            [item async for item in connector.export(bob)]
        for dry_run in (True, False):
            with pytest.raises(Unidentified, match=needs):
                await connector.erase(bob, dry_run=dry_run, retention={})
            with pytest.raises(Unidentified, match=needs):
                await connector.restrict(bob, dry_run=dry_run)
        assert not (await connector.restrict(ALICE, dry_run=False)).supported
        with pytest.raises(Unidentified, match=needs):
            await connector.object(bob, ["direct_marketing"])
        objection = await connector.object(ALICE, ["analytics"])
        assert [(p.purpose, p.supported) for p in objection.purposes] == [("analytics", False)]
        assert "only deletes a user's data" in (objection.purposes[0].note or "")
        assert await connector.objections_in_force(ALICE, ["analytics"]) == {}
    finally:
        await connector.close()
    assert fake.requests == []


async def test_erase_by_user_provided_data_sends_the_normalised_email(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    fake, url = analytics
    connector = build(url, identifier="user_provided_data")
    await connector.open()
    try:
        await connector.erase(ALICE, dry_run=False, retention={})
    finally:
        await connector.close()
    assert fake.deletions == [("123456789", "userProvidedData", "alicemartin@googlemail.com")]


def test_user_provided_data_is_normalised_as_documented() -> None:
    assert normalise_user_provided_data(" A.B@Example.com ") == "a.b@example.com"
    assert normalise_user_provided_data("Jane.Doe@gmail.com") == "janedoe@gmail.com"
    assert normalise_user_provided_data("+49 (30) 1234-567") == "+49301234567"


async def test_erase_dry_run_submits_nothing(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    report = await connector.erase(ALICE, dry_run=True, retention={})
    assert report.note is not None
    assert report.note.startswith("dry run")
    assert fake.requests == []


async def test_a_wrong_token_is_a_permanent_error(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    _, url = analytics
    connector = build(url, access_token="ya29.expired")
    await connector.open()
    try:
        with pytest.raises(PermanentError) as caught:
            await connector.erase(ALICE, dry_run=False, retention={})
    finally:
        await connector.close()
    assert str(caught.value) == (
        "analytics: submit user deletion (POST /v1alpha/properties/{property}:submitUserDeletion)"
        ": HTTP 401 UNAUTHENTICATED, credentials refused"
    )
    assert caught.value.detail is not None
    assert "invalid authentication credentials" in caught.value.detail
    assert "ya29.expired" not in str(caught.value) + caught.value.detail


async def test_a_property_the_token_cannot_reach_is_a_permanent_error(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    _, url = analytics
    connector = build(url, property="properties/999")
    await connector.open()
    try:
        with pytest.raises(PermanentError, match="HTTP 403.*PERMISSION_DENIED"):
            await connector.check()
    finally:
        await connector.close()


async def test_check_reads_the_property(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    await connector.check()
    assert [s.path for s in fake.requests] == ["/v1alpha/properties/123456789"]


async def test_429_is_rate_limited_with_retry_after(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    fake.fail_next(429, headers={"Retry-After": "42"}, body=quota)
    fake.fail_next(429, body=quota)
    with pytest.raises(RateLimited, match="RESOURCE_EXHAUSTED") as caught:
        await connector.erase(ALICE, dry_run=False, retention={})
    assert caught.value.retry_after == 42.0
    with pytest.raises(RateLimited) as caught:
        await connector.erase(ALICE, dry_run=False, retention={})
    assert caught.value.retry_after == 30.0
    assert fake.deletions == []


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector, status: int
) -> None:
    fake, _ = analytics
    fake.fail_next(status, body={"error": {"code": status, "status": "UNAVAILABLE"}})
    with pytest.raises(TransientError, match=f"HTTP {status}"):
        await connector.erase(ALICE, dry_run=False, retention={})


async def test_a_timeout_is_transient(analytics: tuple[FakeGoogleAnalytics, str]) -> None:
    fake, url = analytics
    fake.hang_next()
    connector = build(url, timeout=0.2)
    await connector.open()
    try:
        with pytest.raises(TransientError, match="no complete answer within"):
            await connector.erase(ALICE, dry_run=False, retention={})
    finally:
        await connector.close()


def test_the_token_stays_out_of_repr() -> None:
    connector = GoogleAnalyticsConnector(
        "analytics", property=123456789, access_token=FakeGoogleAnalytics.TOKEN
    )
    shown = repr(connector) + repr(connector.client) + repr(vars(connector))
    assert FakeGoogleAnalytics.TOKEN not in shown
    assert connector.property == "properties/123456789"
    assert connector.client.base_url == "https://analyticsadmin.googleapis.com"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"access_token": "t"}, "property must be non-empty text"),
        ({"property": "UA-1234-1", "access_token": "t"}, "property must be a GA4 property id"),
        ({"property": "1"}, "access_token is required"),
        ({"property": "1", "access_token": "t", "identifier": "email"}, "identifier must be one"),
        (
            {"property": "1", "access_token": "t", "identifier": "client_id"},
            "identity is required with identifier = 'client_id'",
        ),
    ],
)
def test_bad_configuration_is_a_one_line_permanent_error(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        GoogleAnalyticsConnector("analytics", **options)


def test_the_google_analytics_type_is_registered() -> None:
    assert load_type("google-analytics") is GoogleAnalyticsConnector


class TestGoogleAnalyticsConnectorContract(ConnectorContract):
    """The connector keeps the contract; its export is a notice, never data on anyone."""

    exports_notices_only = True
    stack: AsyncExitStack | None = None

    def options(self) -> dict[str, Any]:
        return {}

    async def make_connector(self) -> Connector:
        self.stack = AsyncExitStack()
        url = await self.stack.enter_async_context(serve(FakeGoogleAnalytics()))
        return build(url, **self.options())

    def subject_with_data(self) -> Subject:
        return ALICE

    async def make_failing_connector(self) -> Connector | None:
        return build(f"http://127.0.0.1:{free_port()}")

    async def cleanup(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()


class TestGoogleAnalyticsConnectorContractByClientId(TestGoogleAnalyticsConnectorContract):
    """The contract again with deletion keyed by the client id from the subject's identities."""

    def options(self) -> dict[str, Any]:
        return {"identifier": "client_id", "identity": "ga_client_id"}

    def subject_without_data(self) -> Subject:
        return Subject("nobody", identities={"ga_client_id": "1234567890.1234567890"})


# -- a hostile Google ----------------------------------------------------------------


async def test_a_deletion_redirected_elsewhere_is_not_followed(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    elsewhere = Bystander()
    async with serve(elsewhere) as other:
        fake.redirect_next(f"{other}/v1alpha/properties/123456789:submitUserDeletion", 307)
        with pytest.raises(PermanentError) as caught:
            await connector.erase(ALICE, dry_run=False, retention={})
    assert str(caught.value) == (
        "analytics: submit user deletion (POST /v1alpha/properties/{property}:submitUserDeletion)"
        ": HTTP 307: a redirect to another origin, not followed (redirects never are)"
    )
    assert elsewhere.requests == []
    assert fake.deletions == []


async def test_an_inflating_answer_is_refused(analytics: tuple[FakeGoogleAnalytics, str]) -> None:
    fake, url = analytics
    fake.gzip_bomb_next(8 * 1024 * 1024)
    connector = build(url, max_response_mib=1)
    await connector.open()
    try:
        with pytest.raises(PermanentError, match="HTTP 200: answer larger than 1 MiB"):
            await connector.check()
    finally:
        await connector.close()


async def test_a_property_trickling_forever_is_transient(
    analytics: tuple[FakeGoogleAnalytics, str],
) -> None:
    fake, url = analytics
    fake.trickle_next()
    connector = build(url, timeout=0.3)
    await connector.open()
    try:
        with pytest.raises(TransientError, match=r"read property \(GET .*\): no complete answer"):
            [item async for item in connector.export(ALICE)]
    finally:
        await connector.close()


async def test_only_googles_own_codes_reach_the_message(
    analytics: tuple[FakeGoogleAnalytics, str], connector: GoogleAnalyticsConnector
) -> None:
    fake, _ = analytics
    fake.fail_next(400, body={"error": {"message": "userId alice is invalid", "status": "alice"}})
    fake.fail_next(
        400, body={"error": {"message": "userId alice is invalid", "status": "INVALID_ARGUMENT"}}
    )
    with pytest.raises(PermanentError) as unknown:
        await connector.erase(ALICE, dry_run=False, retention={})
    with pytest.raises(PermanentError) as known:
        await connector.erase(ALICE, dry_run=False, retention={})
    where = (
        "analytics: submit user deletion (POST /v1alpha/properties/{property}:submitUserDeletion)"
    )
    assert str(unknown.value) == f"{where}: HTTP 400"
    assert str(known.value) == f"{where}: HTTP 400 INVALID_ARGUMENT"
    assert known.value.detail is not None
    assert "userId alice is invalid" in known.value.detail
