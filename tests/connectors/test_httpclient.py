"""The HTTP client the REST connectors share: its token bucket, Retry-After and targets,
and what it does with a hostile processor's answers.

Its error classification is tested through the connectors that use it
(``test_http.py``, ``test_hubspot.py``, ``test_hotjar.py``, ``test_google_analytics.py``);
here a real local server answers too much, too slowly, elsewhere, or with personal
data in its error, and the client bounds it at one central place.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from connectors.errors import PermanentError, TransientError
from connectors.httpclient import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MIB,
    HttpClient,
    TokenBucket,
    bearer,
    parse_retry_after,
)
from connectors.options import Secret
from tests.connectors.processor_servers import Bystander, FakeClock, serve
from tests.polling import eventually

TOKEN = Secret("tk_live_0f1e2d3c4b5a69788796")
EMAIL = "alice@example.com"
EXPORT = "/users/{email}/export"


def test_the_token_bucket_refuses_past_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, 2, clock=clock, sleep=clock.sleep)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.25]
    clock.now = 0.25
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == 0.25
    clock.now = 10.0
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.25]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Sat, 01 Jun 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sat, 01 Jun 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_the_client_sends_a_relative_target_as_written() -> None:
    client = HttpClient("helpdesk", "https://api.example.com/v2/")
    assert str(client.url("/users/%2E%2E/tickets")) == (
        "https://api.example.com/v2/users/%2E%2E/tickets"
    )
    assert str(client.url("users/café 50%/x?state=all")) == (
        "https://api.example.com/v2/users/caf%C3%A9%2050%25/x?state=all"
    )
    assert str(client.url("https://api.example.com/v2/feed?offset=2")) == (
        "https://api.example.com/v2/feed?offset=2"
    )


@asynccontextmanager
async def processor(
    *, request_timeout: float = 30.0, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> AsyncIterator[tuple[Bystander, HttpClient]]:
    """A local processor (answering 200 ``{}`` unless made hostile) and a client opened on it."""
    fake = Bystander()
    async with serve(fake) as url:
        client = HttpClient(
            "acme",
            url,
            secrets=(TOKEN,),
            timeout=request_timeout,
            max_response_bytes=max_response_bytes,
        )
        await client.open()
        try:
            yield fake, client
        finally:
            await client.close()


async def export(client: HttpClient, *, headers: dict[str, str] | None = None) -> object:
    """The request the tests send: the subject's email in the path, as templates put it."""
    response = await client.request(
        "GET",
        f"/users/{EMAIL}/export",
        operation="export",
        headers=headers if headers is not None else bearer(TOKEN),
        path_template=EXPORT,
    )
    return response.json()


async def test_an_answer_past_the_cap_is_refused_and_left_unread() -> None:
    async with processor() as (fake, client):
        fake.stream_next(200 * MIB)
        with pytest.raises(PermanentError) as caught:
            await export(client)
        [sent] = await eventually(
            lambda: fake.streamed, until=bool, timeout=10, what="the stream to end"
        )
    assert str(caught.value) == (
        "acme: export (GET /users/{email}/export): HTTP 200: answer larger than 32 MiB, "
        "the rest left unread"
    )
    assert sent < 64 * MIB  # the client hung up after its 32 MiB: 200 MiB never went out


async def test_a_declared_length_past_the_cap_is_refused_before_reading() -> None:
    async with processor(max_response_bytes=MIB) as (fake, client):
        fake.stream_next(64 * MIB, headers={"Content-Length": str(64 * MIB)})
        with pytest.raises(PermanentError, match="answer larger than 1 MiB, the rest left unread"):
            await export(client)
        [sent] = await eventually(
            lambda: fake.streamed, until=bool, timeout=10, what="the stream to end"
        )
    assert sent < 32 * MIB


async def test_a_gzip_bomb_is_refused_once_it_inflates_past_the_cap() -> None:
    async with processor() as (fake, client):
        packed = fake.gzip_bomb_next(64 * MIB)
        with pytest.raises(PermanentError, match="HTTP 200: answer larger than 32 MiB"):
            await export(client)
    assert packed < MIB


async def test_an_answer_trickling_forever_ends_at_the_timeout() -> None:
    """The timeout covers the whole exchange: a server that never stops sending still ends."""
    async with processor(request_timeout=0.3) as (fake, client):
        fake.trickle_next()
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            await export(client)
        elapsed = time.monotonic() - started
    assert str(caught.value) == (
        "acme: export (GET /users/{email}/export): no complete answer within 0.3s"
    )
    assert fake.trickled >= 3  # bytes kept coming: an idle timeout would never have fired
    assert elapsed < 5


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_origin_is_not_followed(status: int) -> None:
    elsewhere = Bystander()
    async with serve(elsewhere) as other, processor() as (fake, client):
        fake.redirect_next(f"{other}/collect?email={EMAIL}", status)
        with pytest.raises(PermanentError) as caught:
            await export(client, headers={"X-Api-Key": TOKEN.reveal()})
    assert str(caught.value) == (
        f"acme: export (GET /users/{{email}}/export): HTTP {status}: a redirect to another "
        "origin, not followed (redirects never are)"
    )
    assert caught.value.detail == f"Location: {other}/collect?email={EMAIL}"
    assert elsewhere.requests == []  # neither the API key nor anything else went there


async def test_a_redirect_within_the_origin_is_not_followed_either() -> None:
    async with processor() as (fake, client):
        fake.redirect_next("/users/alice%40example.com/export/")
        with pytest.raises(PermanentError, match="a redirect within the processor's origin"):
            await export(client)
    assert len(fake.requests) == 1


async def test_an_error_answer_goes_to_the_detail_never_the_message() -> None:
    async with processor() as (fake, client):
        body = {"error": f"{EMAIL} (IBAN DE89370400440532013000) <b>unknown</b> {TOKEN.reveal()}"}
        fake.fail_next(422, body=body)
        with pytest.raises(PermanentError) as caught:
            await export(client)
    assert str(caught.value) == "acme: export (GET /users/{email}/export): HTTP 422"
    assert caught.value.detail == (
        '{"error": "alice@example.com (IBAN DE89370400440532013000) <b>unknown</b> **********"}'
    )


async def test_a_broken_answer_names_its_class_and_keeps_the_url_for_the_detail() -> None:
    async with processor() as (fake, client):
        fake.fail_next(200, headers={"X-Padding": "x" * 10_000})
        with pytest.raises(TransientError) as caught:
            await export(client)
    assert str(caught.value) == "acme: export (GET /users/{email}/export): ClientResponseError"
    assert caught.value.detail is not None
    assert "alice@example.com" in caught.value.detail


async def test_an_answer_that_is_no_json_keeps_its_body_for_the_detail() -> None:
    async with processor() as (fake, client):
        fake.fail_next(200, body=None, headers={"Content-Type": "text/html"})
        fake.faults[-1].body = f"<html>Welcome back, {EMAIL}</html>".encode()
        with pytest.raises(PermanentError) as caught:
            await export(client)
    assert str(caught.value) == (
        "acme: export (GET /users/{email}/export): HTTP 200: the answer is not JSON"
    )
    assert caught.value.detail == f"<html>Welcome back, {EMAIL}</html>"


def test_a_next_link_that_is_no_url_is_a_permanent_error() -> None:
    client = HttpClient("acme", "https://api.example.com/v2")
    with pytest.raises(PermanentError, match="refusing a URL that cannot be parsed") as caught:
        client.url(f"https://[api.example.com/v2/feed?email={EMAIL}")
    assert EMAIL not in str(caught.value)
    with pytest.raises(PermanentError, match="refusing to follow a URL off") as caught:
        client.url(f"https://collector.example/feed?email={EMAIL}")
    assert EMAIL not in str(caught.value)
