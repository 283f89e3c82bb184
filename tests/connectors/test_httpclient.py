"""The HTTP client the REST connectors share: its token bucket, Retry-After and targets.

Its error classification is tested through the connectors that use it
(``test_http.py``, ``test_hubspot.py``, ``test_hotjar.py``, ``test_google_analytics.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from connectors.httpclient import HttpClient, TokenBucket, parse_retry_after
from tests.connectors.processor_servers import FakeClock


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
