"""Fixed-window rate limits against a real Redis: counts, waits, scopes and expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from arq.connections import ArqRedis

from jobs.ratelimit import RateLimiter
from tests.polling import eventually

#: A day: a test never straddles two windows unless it runs across midnight UTC.
WINDOW = 86400


@pytest.fixture
def limiter(redis: ArqRedis) -> RateLimiter:
    return RateLimiter(redis, "handover:")


def seconds_left_in_window() -> int:
    return WINDOW - int(time.time()) % WINDOW


async def test_hits_up_to_the_limit_pass_and_the_next_waits_for_the_window_end(
    limiter: RateLimiter,
) -> None:
    assert [await limiter.hit("token:a", WINDOW, 3) for _ in range(3)] == [0, 0, 0]
    before = seconds_left_in_window()
    wait = await limiter.hit("token:a", WINDOW, 3)
    assert before - 1 <= wait <= before
    assert wait > 0


async def test_scopes_are_counted_apart(limiter: RateLimiter) -> None:
    await limiter.hit("token:a", WINDOW, 1)
    assert await limiter.hit("token:a", WINDOW, 1) > 0
    assert await limiter.hit("token:b", WINDOW, 1) == 0


async def test_a_window_is_one_counter_that_expires_just_after_it(
    limiter: RateLimiter, redis: ArqRedis
) -> None:
    for _ in range(2):
        await limiter.hit("subject:s", WINDOW, 5)
    window = int(time.time()) // WINDOW
    key = f"handover:rate:subject:s:{window}"
    # Far from the limit, hits are added to Redis within the flush interval.
    await eventually(
        lambda: redis.get(key), until=lambda count: count == b"2", timeout=5, what="the flush"
    )
    assert 0 < await redis.ttl(key) <= WINDOW + 1


async def test_hits_arriving_while_counts_are_on_their_way_to_redis_do_not_pass_the_limit(
    limiter: RateLimiter,
) -> None:
    """Forty hits at once: those that arrive while earlier ones are being added to Redis
    are not let through as if nobody had counted them."""
    waits = await asyncio.gather(*(limiter.hit("burst", 3600, 10) for _ in range(40)))
    assert sum(wait == 0 for wait in waits) <= 10


async def test_a_flush_adds_only_the_windows_counted_in_and_forgets_those_ended(
    limiter: RateLimiter, redis: ArqRedis
) -> None:
    """A flush sends only the windows with hits since the last one, not every window
    this process has seen; an ended window is forgotten once its counts are in Redis."""
    for number in range(50):
        await limiter.hit(f"subject:{number}", WINDOW, 20)
    await limiter.hit("short", 1, 20)
    await limiter.flush()
    await limiter.hit("subject:0", WINDOW, 20)
    counted: list[str] = []
    real_add = limiter._add

    async def add(batch: dict[str, Any]) -> dict[str, int]:
        counted.extend(batch)
        return await real_add(batch)

    limiter._add = add  # type: ignore[method-assign]
    await asyncio.sleep(1.1)  # the one-second window ends
    await limiter.flush()
    window = int(time.time()) // WINDOW
    assert counted == [f"handover:rate:subject:0:{window}"]
    assert await redis.get(f"handover:rate:subject:0:{window}") == b"2"
    assert not any(":short:" in key for key in limiter._windows)
    assert len(limiter._windows) == 50
