"""The generic ``http`` connector against a local helpdesk API, and through it the HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis

from connectors.base import Connector
from connectors.errors import PermanentError, RateLimited, TransientError, Unidentified
from connectors.http import HttpConnector
from connectors.httpclient import TokenBucket
from connectors.items import Record, Records, Subject
from connectors.options import Secret
from connectors.registry import load_type
from connectors.reports import RetentionRule
from connectors.testing import ConnectorContract
from jobs.commands import Actor, Commands
from tests.conftest import free_port
from tests.connectors.journaled import journal_events
from tests.connectors.processor_servers import Bystander, FakeClock, FakeTicketsApi, serve
from tests.jobs.test_export import archive_of, drain

TOKEN = "tk_live_9f8e7d6c5b4a39281706"
ALICE = Subject("alice", "alice@example.com")
NOBODY = Subject("nobody", "nobody@example.com")
INVOICES = RetentionRule("German tax law (AO §147): invoices 10 years", timedelta(days=3650))


def settings(base_url: str, /, **overrides: Any) -> dict[str, Any]:
    """Options as TOML would hand them over: every pagination style, erase, restrict."""
    options: dict[str, Any] = {
        "base_url": base_url,
        "auth": {"type": "bearer", "token": TOKEN},
        "rate_limit": 0,
        "datasets": [
            {
                "name": "tickets",
                "category": "contact",
                "path": "/users/{id}/tickets",
                "records": "/data/items",
                "pagination": {
                    "style": "page",
                    "param": "page",
                    "size_param": "per_page",
                    "size": 2,
                },
            },
            {
                "name": "events",
                "category": "usage",
                "path": "/events",
                "params": {"email": "{email}"},
                "records": "events",
                "pagination": {"style": "cursor", "param": "cursor", "next": "meta.next_cursor"},
            },
            {
                "name": "notes",
                "category": "contact",
                "path": "/users/{id}/notes",
                "pagination": {"style": "link"},
            },
            {
                "name": "feed",
                "category": "usage",
                "path": "/feed/{id}",
                "records": "/items",
                "pagination": {"style": "next_url", "next": "/links/next"},
            },
        ],
        "erase": {"method": "DELETE", "path": "/users/{id}", "success": [204], "absent": [404]},
        "restrict": {
            "method": "POST",
            "path": "/users/{id}/restrict",
            "body": {"reason": "gdpr-art-18", "user": "{id}"},
        },
    }
    options.update(overrides)
    return options


@asynccontextmanager
async def opened(connector: HttpConnector) -> AsyncIterator[HttpConnector]:
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close()


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeTicketsApi, str]]:
    fake = FakeTicketsApi(auth_value=f"Bearer {TOKEN}")
    fake.add_user("alice", "alice@example.com", tickets=5, events=5, notes=5)
    async with serve(fake) as url:
        yield fake, url


async def export(connector: HttpConnector, subject: Subject) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    async for item in connector.export(subject):
        assert isinstance(item, Record)
        found.setdefault(item.dataset, []).append(item.data["id"])
    return found


async def test_export_follows_every_pagination_style(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        found = await export(connector, ALICE)
    assert found == {
        "tickets": [f"t{i}" for i in range(5)],
        "events": [f"e{i}" for i in range(5)],
        "notes": [f"n{i}" for i in range(5)],
        "feed": [f"n{i}" for i in range(5)],
    }
    assert [s.query for s in fake.seen("/tickets")] == [
        {"page": "1", "per_page": "2"},
        {"page": "2", "per_page": "2"},
        {"page": "3", "per_page": "2"},
    ]
    assert [s.query for s in fake.seen("/events")] == [
        {"email": "alice@example.com"},
        {"email": "alice@example.com", "cursor": "2"},
        {"email": "alice@example.com", "cursor": "4"},
    ]
    assert [s.query for s in fake.seen("/notes")] == [{}, {"after": "2"}, {"after": "4"}]
    assert [s.query for s in fake.seen("/feed")] == [{}, {"offset": "2"}, {"offset": "4"}]


async def test_each_page_is_one_batch_and_the_archive_holds_every_page(
    api: tuple[FakeTicketsApi, str], resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    _, url = api
    by_id = [d for d in settings(url)["datasets"] if d["name"] != "events"]  # events: by email
    async with opened(HttpConnector("helpdesk", **settings(url, datasets=by_id))) as connector:
        batches = [batch async for batch in connector.export_batches(ALICE)]
        async with resources_factory({"helpdesk": connector}) as resources:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice", formats=["ndjson"]
            )
            await drain(redis, resources)
            archive = await archive_of(resources, job.id)

    pages = [(b.dataset, [r["id"] for r in b.rows]) for b in batches if isinstance(b, Records)]
    assert len(pages) == len(batches)
    for dataset, prefix in (("tickets", "t"), ("notes", "n"), ("feed", "n")):
        ids = [f"{prefix}{i}" for i in range(5)]
        assert [page for name, page in pages if name == dataset] == [ids[:2], ids[2:4], ids[4:]]
        lines = archive.read(f"helpdesk/{dataset}.ndjson").splitlines()
        assert [orjson.loads(line)["id"] for line in lines] == ids


async def test_page_style_without_size_stops_on_an_empty_page(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    tickets = dict(settings(url)["datasets"][0], pagination={"style": "page"})
    async with opened(HttpConnector("helpdesk", **settings(url, datasets=[tickets]))) as connector:
        found = await export(connector, ALICE)
    assert found == {"tickets": [f"t{i}" for i in range(5)]}
    assert [s.query["page"] for s in fake.seen("/tickets")] == ["1", "2"]


async def test_unknown_subject_exports_nothing(api: tuple[FakeTicketsApi, str]) -> None:
    _, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        assert await export(connector, NOBODY) == {}


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ({"type": "bearer", "token": TOKEN}, "Authorization", f"Bearer {TOKEN}"),
        (
            {"type": "basic", "username": "handover", "password": TOKEN},
            "Authorization",
            "Basic aGFuZG92ZXI6dGtfbGl2ZV85ZjhlN2Q2YzViNGEzOTI4MTcwNg==",
        ),
        ({"type": "header", "name": "X-Api-Key", "value": TOKEN}, "X-Api-Key", TOKEN),
    ],
)
async def test_each_auth_style_sends_its_header(
    auth: dict[str, str], header: str, value: str
) -> None:
    fake = FakeTicketsApi(auth_header=header, auth_value=value)
    fake.add_user("alice", "alice@example.com", tickets=1)
    async with serve(fake) as url:
        options = settings(url, auth=auth, datasets=settings(url)["datasets"][:1])
        async with opened(HttpConnector("helpdesk", **options)) as connector:
            assert await export(connector, ALICE) == {"tickets": ["t0"]}
    assert all(seen.headers[header] == value for seen in fake.requests)


async def test_wrong_credentials_are_a_permanent_error_without_the_secret(
    api: tuple[FakeTicketsApi, str],
) -> None:
    _, url = api
    options = settings(url, auth={"type": "bearer", "token": "wrong-token-123"})
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        with pytest.raises(PermanentError, match="HTTP 401, credentials refused") as caught:
            await export(connector, ALICE)
    assert caught.value.detail is not None
    assert "wrong-token-123" not in str(caught.value) + caught.value.detail
    assert "invalid credentials" in caught.value.detail


async def test_429_is_rate_limited_with_the_retry_after_delay(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.fail_next(429, headers={"Retry-After": "17"}, body={"error": "slow down"})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(RateLimited) as caught:
            await export(connector, ALICE)
    assert caught.value.retry_after == 17.0
    assert "HTTP 429" in str(caught.value)


async def test_429_without_retry_after_uses_the_default_wait(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.fail_next(429)
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(RateLimited) as caught:
            await export(connector, ALICE)
    assert caught.value.retry_after == connector.client.default_retry_after


async def test_503_with_retry_after_is_rate_limited(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    fake.fail_next(503, headers={"Retry-After": "5"})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(RateLimited) as caught:
            await export(connector, ALICE)
    assert caught.value.retry_after == 5.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_are_transient(api: tuple[FakeTicketsApi, str], status: int) -> None:
    fake, url = api
    fake.fail_next(status, body={"error": "upstream down"})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(TransientError, match=f"HTTP {status}") as caught:
            await export(connector, ALICE)
    assert not isinstance(caught.value, RateLimited)


async def test_a_server_error_on_a_later_page_is_transient(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        items = connector.export(ALICE)
        await anext(items)
        fake.fail_next(502)
        with pytest.raises(
            TransientError, match=r"export tickets page 2 \(GET /users/\{id\}/tickets\): HTTP 502"
        ):
            async for _ in items:
                pass


async def test_a_timeout_is_transient(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    fake.hang_next()
    async with opened(HttpConnector("helpdesk", **settings(url, timeout=0.2))) as connector:
        with pytest.raises(TransientError, match=r"no complete answer within 0\.2s"):
            await export(connector, ALICE)


async def test_a_refused_connection_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(TransientError, match="ClientConnectorError"):
            await export(connector, ALICE)


async def test_other_client_errors_are_permanent_with_the_status_and_the_body_in_detail(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.fail_next(422, body={"error": "per_page must be at most 100"})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "helpdesk: export tickets page 1 (GET /users/{id}/tickets): HTTP 422"
    )
    assert caught.value.detail == '{"error": "per_page must be at most 100"}'


async def test_a_secret_echoed_by_the_processor_is_scrubbed(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.fail_next(400, body={"error": f"token {TOKEN} is malformed"})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert caught.value.detail is not None
    assert TOKEN not in str(caught.value) + caught.value.detail
    assert "token ********** is malformed" in caught.value.detail


async def test_a_next_url_off_the_base_origin_is_refused(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    feed = settings(url)["datasets"][3]
    fake.fail_next(
        200, body={"items": [{"id": "n0"}], "links": {"next": "http://elsewhere.invalid/feed"}}
    )
    async with opened(HttpConnector("helpdesk", **settings(url, datasets=[feed]))) as connector:
        with pytest.raises(PermanentError, match="refusing to follow a URL off"):
            await export(connector, ALICE)
    assert len(fake.requests) == 1


async def test_a_repeating_cursor_is_refused(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    events = settings(url)["datasets"][1]
    for n in range(3):
        fake.fail_next(200, body={"events": [{"id": f"e{n}"}], "meta": {"next_cursor": "same"}})
    async with opened(HttpConnector("helpdesk", **settings(url, datasets=[events]))) as connector:
        with pytest.raises(PermanentError, match="page 2 gives a cursor already followed"):
            await export(connector, ALICE)


async def test_records_that_are_not_objects_are_refused(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    fake.fail_next(200, body={"data": {"items": [1, 2]}})
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(PermanentError, match="records must be JSON objects"):
            await export(connector, ALICE)


async def test_erase_counts_then_deletes_and_a_repeat_reports_zero(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        first = await connector.erase(ALICE, dry_run=False, retention={})
        second = await connector.erase(ALICE, dry_run=False, retention={})
        assert await export(connector, ALICE) == {}
    assert {e.dataset: e.deleted for e in first.datasets} == {
        "tickets": 5,
        "events": 5,
        "notes": 5,
        "feed": 5,
    }
    assert {e.dataset: e.deleted for e in second.datasets} == dict.fromkeys(
        ("tickets", "events", "notes", "feed"), 0
    )
    assert "alice" not in fake.users
    assert [s.method for s in fake.requests].count("DELETE") == 2


async def test_erase_dry_run_changes_nothing(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        report = await connector.erase(ALICE, dry_run=True, retention={})
    assert report.dataset("tickets").deleted == 5
    assert "alice" in fake.users
    assert "DELETE" not in [s.method for s in fake.requests]


async def test_erase_with_a_retained_dataset_restricts_instead(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        report = await connector.erase(ALICE, dry_run=False, retention={"tickets": INVOICES})
    kept = report.dataset("tickets")
    assert (kept.retained, kept.deleted, kept.legal_basis) == (5, 0, INVOICES.legal_basis)
    assert kept.retained_until is not None
    assert kept.retained_until > datetime.now(UTC) + timedelta(days=3649)
    assert report.dataset("events").deleted == 0
    assert report.note is not None
    assert "events, notes, feed can only be erased by the subject-wide endpoint" in report.note
    assert "tickets kept; the subject was restricted to block it" in report.note
    assert "alice" in fake.users
    assert fake.restricted == {"alice"}
    assert "DELETE" not in [s.method for s in fake.requests]


def email_only_settings(base_url: str) -> dict[str, Any]:
    """Only the events, found and erased by the subject's email."""
    events = dict(
        settings(base_url)["datasets"][1],
        erase={"path": "/events", "params": {"email": "{email}"}, "success": [204]},
    )
    return settings(base_url, datasets=[events], erase=None, restrict=None)


def collection_settings(base_url: str) -> dict[str, Any]:
    """Tickets erased only with the subject; events and notes each by an endpoint of their own."""
    tickets, events, notes, _ = settings(base_url)["datasets"]
    events = dict(
        events,
        erase={"path": "/events", "params": {"email": "{email}"}, "success": [204]},
    )
    notes = dict(notes, erase={"method": "DELETE", "path": "/users/{id}/notes"})
    return settings(base_url, datasets=[tickets, events, notes])


async def test_datasets_with_their_own_erase_are_erased_around_a_retained_one(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **collection_settings(url))) as connector:
        report = await connector.erase(ALICE, dry_run=False, retention={"tickets": INVOICES})
        assert await export(connector, ALICE) == {"tickets": [f"t{i}" for i in range(5)]}
        again = await connector.erase(ALICE, dry_run=False, retention={"tickets": INVOICES})
    assert [(e.dataset, e.deleted, e.retained) for e in report.datasets] == [
        ("tickets", 0, 5),
        ("events", 5, 0),
        ("notes", 5, 0),
    ]
    assert [(e.dataset, e.deleted, e.retained) for e in again.datasets] == [
        ("tickets", 0, 5),
        ("events", 0, 0),
        ("notes", 0, 0),
    ]
    assert [s.path for s in fake.requests if s.method == "DELETE"] == [
        "/events",
        "/users/alice/notes",
    ] * 2
    assert fake.restricted == {"alice"}
    assert "alice" in fake.users


async def test_without_retention_the_subject_wide_erase_runs_too(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **collection_settings(url))) as connector:
        report = await connector.erase(ALICE, dry_run=False, retention={})
    assert {e.dataset: e.deleted for e in report.datasets} == {
        "tickets": 5,
        "events": 5,
        "notes": 5,
    }
    assert [s.path for s in fake.requests if s.method == "DELETE"] == [
        "/events",
        "/users/alice/notes",
        "/users/alice",
    ]
    assert report.note is None


async def test_each_deleting_call_is_journaled_and_one_answered_absent_is_withdrawn(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    # Once the events are deleted, the notes' DELETE answers 404: none held (any more).
    fake.after_next("DELETE", "/events", lambda: fake.fail_next(404, method="DELETE"))
    async with opened(HttpConnector("helpdesk", **collection_settings(url))) as connector:
        with journal_events() as events:
            report = await connector.erase(ALICE, dry_run=False, retention={})
    assert events == [
        "plan events=5",
        "commit",
        "plan notes=5",
        "withdraw",
        "plan tickets=5",
        "commit",
    ]
    assert {e.dataset: e.deleted for e in report.datasets} == {
        "tickets": 5,
        "events": 5,
        "notes": 0,
    }


async def test_restrict_calls_the_restrict_endpoint_with_its_body(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        report = await connector.restrict(ALICE, dry_run=False)
    assert report.supported
    assert report.restricted == {"tickets": 5, "events": 5, "notes": 5, "feed": 5}
    assert fake.restricted == {"alice"}
    assert fake.seen("/restrict")[0].body == b'{"reason": "gdpr-art-18", "user": "alice"}'


async def test_restrict_without_an_endpoint_is_unsupported(
    api: tuple[FakeTicketsApi, str],
) -> None:
    _, url = api
    options = settings(url)
    del options["restrict"]
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        report = await connector.restrict(ALICE, dry_run=False)
    assert not report.supported


async def test_the_client_side_rate_limit_spaces_requests(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    clock = FakeClock()
    fake.clock = clock
    fake.add_user("bob", "bob@example.com", tickets=8)
    tickets = dict(
        settings(url)["datasets"][0],
        pagination={"style": "page", "size_param": "per_page", "size": 1},
    )
    connector = HttpConnector("helpdesk", **settings(url, datasets=[tickets]))
    connector.client.limiter = TokenBucket(2, 2, clock=clock, sleep=clock.sleep)
    async with opened(connector):
        found = await export(connector, Subject("bob"))
    assert len(found["tickets"]) == 8
    arrivals = [seen.at for seen in fake.requests]
    assert arrivals == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert sum(1 for at in arrivals if at < 1.0) == 3
    assert all(sum(1 for at in arrivals if start <= at < start + 1) <= 3 for start in arrivals)


def test_secrets_stay_out_of_repr() -> None:
    for auth in (
        {"type": "bearer", "token": TOKEN},
        {"type": "basic", "username": "handover", "password": TOKEN},
        {"type": "header", "name": "X-Api-Key", "value": TOKEN},
    ):
        connector = HttpConnector("helpdesk", **settings("https://api.example.com", auth=auth))
        shown = repr(connector) + repr(connector.client) + repr(vars(connector))
        assert TOKEN not in shown
        assert "dGtfbGl2ZV85ZjhlN2Q2YzViNGEzOTI4MTcwNg" not in shown
    assert repr(Secret(TOKEN)) == str(Secret(TOKEN)) == "Secret('**********')"


async def test_check_gets_the_check_path(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    async with opened(
        HttpConnector("helpdesk", **settings(url, check_path="/health"))
    ) as connector:
        await connector.check()
    assert fake.seen("/health")[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_the_identifiers_are_the_templates_variables() -> None:
    connector = HttpConnector("helpdesk", **settings("https://api.example.com"))
    assert connector.identifiers == {"id", "email"}
    assert connector.describe()["identifiers"] == ["email", "id"]
    by_email = HttpConnector("helpdesk", **email_only_settings("https://api.example.com"))
    assert by_email.identifiers == {"email"}
    restrict = {"method": "POST", "path": "/crm/{identities.crm_id}/restrict", "body": {}}
    options = settings("https://api.example.com", restrict=restrict)
    assert HttpConnector("helpdesk", **options).identifiers == {"id", "email", "crm_id"}


async def test_a_subject_without_a_templated_value_is_unidentified_before_any_request(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(
            Unidentified, match="connector 'helpdesk' needs the subject's email, and none is known"
        ) as caught:
            await export(connector, Subject("alice"))
        for dry_run in (True, False):
            with pytest.raises(Unidentified, match="needs the subject's email"):
                await connector.erase(Subject("alice"), dry_run=dry_run, retention={})
            with pytest.raises(Unidentified, match="needs the subject's email"):
                await connector.restrict(Subject("alice"), dry_run=dry_run)
    assert caught.value.needs == ("email",)
    assert fake.requests == []
    assert fake.users["alice"]["tickets"]
    assert fake.restricted == set()


async def test_a_value_only_the_erasure_needs_is_checked_before_anything_is_counted(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    tickets = settings(url)["datasets"][0]
    erase = {"method": "DELETE", "path": "/users/{id}", "body": {"crm": "{identities.crm_id}"}}
    options = settings(url, datasets=[tickets], erase=erase)
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        assert len((await export(connector, ALICE))["tickets"]) == 5
        before = len(fake.requests)
        with pytest.raises(Unidentified, match="needs the subject's crm_id") as caught:
            await connector.erase(ALICE, dry_run=False, retention={})
        assert caught.value.needs == ("crm_id",)
        assert len(fake.requests) == before
        with_crm_id = Subject("alice", "alice@example.com", {"crm_id": "c-1"})
        report = await connector.erase(with_crm_id, dry_run=False, retention={})
    assert report.dataset("tickets").deleted == 5
    assert fake.seen("/users/alice")[-1].body == b'{"crm": "c-1"}'
    assert "alice" not in fake.users


async def test_the_restrict_endpoints_values_are_needed_only_when_erasure_blocks(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    restrict = {
        "method": "POST",
        "path": "/users/{id}/restrict",
        "body": {"crm": "{identities.crm_id}"},
    }
    options = dict(collection_settings(url), restrict=restrict)
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        with pytest.raises(Unidentified, match="needs the subject's crm_id"):
            await connector.erase(ALICE, dry_run=True, retention={"tickets": INVOICES})
        assert fake.requests == []
        report = await connector.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("tickets").deleted == 5
    assert "alice" not in fake.users
    assert fake.seen("/restrict") == []


@pytest.mark.parametrize(
    ("subject_id", "raw_path"),
    [
        ("..", "/users/%2E%2E"),
        (".", "/users/%2E"),
        ("a/../b", "/users/a%2F..%2Fb"),
        ("%2E%2E", "/users/%252E%252E"),
        ("...", "/users/..."),
    ],
)
async def test_a_subject_id_cannot_lead_a_request_to_another_resource(
    subject_id: str, raw_path: str
) -> None:
    """The server sees the subject's own resource: dot segments are encoded, not removed."""
    fake = FakeTicketsApi(auth_value=f"Bearer {TOKEN}")
    fake.add_user(subject_id, f"{subject_id}@example.com", tickets=3, notes=1)
    fake.add_user("alice", "alice@example.com", tickets=2)
    subject = Subject(subject_id, f"{subject_id}@example.com")
    async with (
        serve(fake) as url,
        opened(HttpConnector("helpdesk", **settings(url))) as connector,
    ):
        found = await export(connector, subject)
        report = await connector.erase(subject, dry_run=False, retention={})
    assert found["tickets"] == ["t0", "t1", "t2"]
    assert report.dataset("tickets").deleted == 3
    assert {seen.raw_path for seen in fake.seen() if seen.method == "GET"} == {
        f"{raw_path}/tickets",
        "/events",
        f"{raw_path}/notes",
        f"/feed/{raw_path.removeprefix('/users/')}",
    }
    assert [seen.raw_path for seen in fake.seen() if seen.method == "DELETE"] == [raw_path]
    assert subject_id not in fake.users
    assert fake.users["alice"]["tickets"]


async def test_a_value_that_completes_a_dot_segment_is_encoded(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.add_user("..", "dots@example.com", tickets=1)
    tickets = dict(settings(url)["datasets"][0], path="/users/.{id}/tickets")
    options = settings(url, datasets=[tickets])
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        found = await export(connector, Subject(".", "dots@example.com"))
    assert found == {"tickets": ["t0"]}
    assert [seen.raw_path for seen in fake.requests] == ["/users/%2E%2E/tickets"]


async def test_requests_before_open_are_refused() -> None:
    connector = HttpConnector("helpdesk", **settings("https://api.example.com"))
    with pytest.raises(PermanentError, match=r"used before open\(\)"):
        await export(connector, ALICE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": None}, "base_url must be non-empty text"),
        ({"base_url": "ftp://example.com"}, "base_url must be an absolute http"),
        ({"base_url": "https://user:pw@example.com"}, "base_url must not carry credentials"),
        ({"datasets": []}, "datasets must be a list of one or more"),
        ({"erase": None}, "erase is required unless every dataset has an erase table"),
        ({"auth": {"type": "digest"}}, "auth.type must be bearer, basic or header"),
        ({"auth": {"type": "bearer"}}, "auth.token is required"),
        ({"auth": {"type": "bearer", "token": "x", "extra": 1}}, "auth has unknown key"),
        ({"rate_limit": -1}, "rate_limit must be a number of at least 0"),
        ({"timeout": 0}, "timeout must be a number above 0"),
        ({"colour": "blue"}, "unknown option"),
        ({"check_path": "/health/{id}"}, "check_path names no subject"),
        (
            {
                "datasets": [{"name": "x", "category": "usage", "path": "/everything"}],
                "erase": {"path": "/everything"},
                "restrict": None,
            },
            r"datasets name no subject: use \{id\}, \{email\} or \{identities.KEY\}",
        ),
        (
            {"datasets": [{"name": "x", "category": "usage", "path": "/u/{user}"}]},
            r"datasets\[0\].path uses unknown variable \{user\}",
        ),
        (
            {
                "datasets": [
                    {
                        "name": "x",
                        "category": "usage",
                        "path": "/u",
                        "pagination": {"style": "offset"},
                    }
                ]
            },
            r"datasets\[0\].pagination.style must be one of",
        ),
        (
            {
                "datasets": [
                    {
                        "name": "x",
                        "category": "usage",
                        "path": "/u",
                        "pagination": {"style": "cursor"},
                    }
                ]
            },
            r"datasets\[0\].pagination.next must be non-empty text",
        ),
        ({"datasets": [{"name": "x", "path": "/u"}]}, r"datasets\[0\].category must be"),
        (
            {"datasets": [{"name": "../../../../x", "category": "usage", "path": "/u/{id}"}]},
            r"datasets\[0\] has a bad name: dataset name '../../../../x' must be 1 to 63 letters",
        ),
        (
            {"datasets": [{"name": "tickets/all", "category": "usage", "path": "/u/{id}"}]},
            r"datasets\[0\] has a bad name: dataset name 'tickets/all'",
        ),
        ({"erase": {"path": "/u/{id}", "method": "TRACE"}}, "erase.method must be"),
        ({"erase": {"path": "/u/{id}", "success": ["ok"]}}, "erase.success must be a list of HTTP"),
    ],
)
def test_bad_configuration_is_a_one_line_permanent_error(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message) as caught:
        HttpConnector("helpdesk", **settings("https://api.example.com", **overrides))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("connector 'helpdesk': ")


def test_the_http_type_is_registered() -> None:
    assert load_type("http") is HttpConnector


class TestHttpConnectorContract(ConnectorContract):
    """The ``http`` connector keeps the connector contract against the fake helpdesk."""

    stack: AsyncExitStack | None = None

    def options(self, url: str) -> dict[str, Any]:
        return settings(url, check_path="/health")

    async def make_connector(self) -> Connector:
        self.stack = AsyncExitStack()
        fake = FakeTicketsApi(auth_value=f"Bearer {TOKEN}")
        fake.add_user("alice", "alice@example.com", tickets=3, events=3, notes=3)
        fake.add_user("bob", "bob@example.com", tickets=1, events=1, notes=1)
        url = await self.stack.enter_async_context(serve(fake))
        return HttpConnector("helpdesk", **self.options(url))

    def subject_with_data(self) -> Subject:
        return ALICE

    async def make_failing_connector(self) -> Connector | None:
        return HttpConnector("helpdesk", **settings(f"http://127.0.0.1:{free_port()}"))

    async def cleanup(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()


class TestHttpConnectorContractWithRetention(TestHttpConnectorContract):
    """The contract again with tickets retained and the other datasets erased around them."""

    def options(self, url: str) -> dict[str, Any]:
        return dict(collection_settings(url), check_path="/health")

    def retention(self) -> Mapping[str, RetentionRule]:
        return {"tickets": INVOICES}


class TestHttpConnectorContractByEmail(TestHttpConnectorContract):
    """The contract again for a processor that knows the subject only by email."""

    def options(self, url: str) -> dict[str, Any]:
        return dict(email_only_settings(url), check_path="/health")


# -- a hostile processor -------------------------------------------------------------


def events_only(url: str, **pagination: Any) -> dict[str, Any]:
    """Only the events, found by email and paged by a cursor."""
    events = dict(settings(url)["datasets"][1])
    events["pagination"] = dict(events["pagination"], **pagination)
    return settings(url, datasets=[events], erase={"path": "/users/{id}"})


def feed_only(url: str) -> dict[str, Any]:
    return settings(url, datasets=[settings(url)["datasets"][3]])


async def test_a_huge_json_page_is_refused_without_being_read(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.stream_next(
        50 * 1024 * 1024, prefix=b'{"data": {"items": [', chunk=b'{"id": "t0"}, ' * 4096
    )
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "helpdesk: export tickets page 1 (GET /users/{id}/tickets): HTTP 200: answer larger "
        "than 32 MiB, the rest left unread"
    )


async def test_max_response_mib_sets_the_cap(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    fake.stream_next(2 * 1024 * 1024)
    options = settings(url, max_response_mib=1)
    async with opened(HttpConnector("helpdesk", **options)) as connector:
        with pytest.raises(PermanentError, match="answer larger than 1 MiB"):
            await export(connector, ALICE)
    with pytest.raises(PermanentError, match="max_response_mib must be a number above 0"):
        HttpConnector("helpdesk", **settings(url, max_response_mib=0))


async def test_a_cursor_that_comes_round_again_is_refused(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    for n, cursor in enumerate(["a", "b", "a"]):
        fake.fail_next(200, body={"events": [{"id": f"e{n}"}], "meta": {"next_cursor": cursor}})
    async with opened(HttpConnector("helpdesk", **events_only(url))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "helpdesk: export events: page 3 gives a cursor already followed: the processor's "
        "paging goes round in a circle"
    )
    assert len(fake.requests) == 3


async def test_a_next_page_url_that_comes_round_again_is_refused(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    fake.fail_next(200, body={"items": [{"id": "n0"}], "links": {"next": "/feed/alice?offset=2"}})
    fake.fail_next(200, body={"items": [{"id": "n1"}], "links": {"next": "/feed/alice"}})
    async with opened(HttpConnector("helpdesk", **feed_only(url))) as connector:
        with pytest.raises(PermanentError, match="page 2 gives a next-page URL already followed"):
            await export(connector, ALICE)
    assert len(fake.requests) == 2


async def test_a_processor_ignoring_the_page_number_is_stopped_at_page_two(
    api: tuple[FakeTicketsApi, str],
) -> None:
    fake, url = api
    full = {"data": {"items": [{"id": "t0"}, {"id": "t1"}]}}
    fake.fail_next(200, body=full, times=3)
    async with opened(HttpConnector("helpdesk", **settings(url))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "helpdesk: export tickets: page 2 repeats page 1 word for word: the processor's "
        "paging does not advance"
    )


async def test_paging_that_never_ends_stops_at_max_pages(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    for n in range(6):
        fake.fail_next(200, body={"events": [{"id": f"e{n}"}], "meta": {"next_cursor": str(n)}})
    async with opened(HttpConnector("helpdesk", **events_only(url, max_pages=5))) as connector:
        with pytest.raises(PermanentError) as caught:
            await export(connector, ALICE)
    assert str(caught.value) == (
        "helpdesk: export events: more than 5 pages (pagination.max_pages): the processor's "
        "paging does not end"
    )
    assert len(fake.requests) == 5


async def test_a_redirected_erasure_takes_no_credentials_elsewhere() -> None:
    """aiohttp itself would follow with an API key header: the client follows nothing."""
    fake = FakeTicketsApi(auth_header="X-Api-Key", auth_value=TOKEN)
    fake.add_user("alice", "alice@example.com", tickets=1)
    elsewhere = Bystander()
    auth = {"type": "header", "name": "X-Api-Key", "value": TOKEN}
    async with serve(fake) as url, serve(elsewhere) as other:
        tickets = settings(url)["datasets"][0]
        options = settings(url, auth=auth, datasets=[tickets])
        async with opened(HttpConnector("helpdesk", **options)) as connector:
            await export(connector, ALICE)
            fake.fail_next(200, body={"data": {"items": [{"id": "t0"}]}})
            fake.redirect_next(f"{other}/users/alice", 307)
            with pytest.raises(PermanentError) as caught:
                await connector.erase(ALICE, dry_run=False, retention={})
    assert str(caught.value) == (
        "helpdesk: erase (DELETE /users/{id}): HTTP 307: a redirect to another origin, not "
        "followed (redirects never are)"
    )
    assert elsewhere.requests == []
    assert "alice" in fake.users


async def test_a_page_trickling_forever_is_transient(api: tuple[FakeTicketsApi, str]) -> None:
    fake, url = api
    fake.trickle_next()
    async with opened(HttpConnector("helpdesk", **settings(url, timeout=0.3))) as connector:
        with pytest.raises(TransientError, match=r"page 1 \(GET .*\): no complete answer within"):
            await export(connector, ALICE)
    assert fake.trickled >= 3


async def test_messages_name_templates_never_the_subjects_values(
    api: tuple[FakeTicketsApi, str],
) -> None:
    """Staff and webhooks see the message; the processor's answer is kept for admins."""
    fake, url = api
    echo = {"error": "no events for alice@example.com", "account": "DE89370400440532013000"}
    fake.fail_next(422, body=echo)
    fake.fail_next(200, body={"events": ["alice@example.com"], "meta": {}})
    subject = Subject("alice-7f3a9c", "alice@example.com")
    async with opened(HttpConnector("helpdesk", **events_only(url))) as connector:
        with pytest.raises(PermanentError) as first:
            await export(connector, subject)
        with pytest.raises(PermanentError) as second:
            await export(connector, subject)
    assert str(first.value) == "helpdesk: export events page 1 (GET /events): HTTP 422"
    assert str(second.value) == (
        "helpdesk: export events page 1: records must be JSON objects, got a JSON string"
    )
    for raised in (first.value, second.value):
        assert raised.detail is not None and "alice@example.com" in raised.detail
    assert "DE89370400440532013000" in str(first.value.detail)
