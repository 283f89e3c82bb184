"""Idempotency keys against a real Redis: claim, keep, replay, release, and the layout."""

from __future__ import annotations

import contextlib
import hashlib

import orjson
import pytest
from arq.connections import ArqRedis

from jobs.idempotency import KEPT_SECONDS, PENDING_SECONDS, IdempotencyStore, StoredResponse
from jobs.queue import API_RETRIES, connect
from tests.faults import cutting_proxy


@pytest.fixture
def keys(redis: ArqRedis) -> IdempotencyStore:
    return IdempotencyStore(redis, "handover:")


def slot(caller: str, key: str) -> str:
    """The layout of the module docstring, spelled out independently."""
    caller_digest = hashlib.sha256(caller.encode()).hexdigest()[:16]
    return f"handover:idem:{caller_digest}:{hashlib.sha256(key.encode()).hexdigest()}"


async def test_the_first_claim_wins_and_a_repeat_finds_it_running(
    keys: IdempotencyStore,
) -> None:
    assert await keys.claim("alice", "k-1", "fp-1")
    assert not await keys.claim("alice", "k-1", "fp-1")
    earlier = await keys.earlier("alice", "k-1")
    assert earlier is not None
    assert earlier.fingerprint == "fp-1"
    assert earlier.response is None


async def test_a_kept_response_is_found_byte_for_byte(keys: IdempotencyStore) -> None:
    response = StoredResponse(
        status=202, headers={"Location": "/v1/jobs/01J"}, body=b"\x00\xff{}binary"
    )
    await keys.claim("alice", "k-1", "fp-1")
    await keys.keep("alice", "k-1", "fp-1", response)
    assert not await keys.claim("alice", "k-1", "fp-2")
    earlier = await keys.earlier("alice", "k-1")
    assert earlier is not None
    assert earlier.fingerprint == "fp-1"
    assert earlier.response == response


async def test_a_released_key_can_be_claimed_again(keys: IdempotencyStore) -> None:
    await keys.claim("alice", "k-1", "fp-1")
    await keys.release("alice", "k-1")
    assert await keys.earlier("alice", "k-1") is None
    assert await keys.claim("alice", "k-1", "fp-1")


async def test_a_claim_whose_answer_was_lost_is_the_callers_when_the_client_sends_it_again(
    keys: IdempotencyStore,
) -> None:
    # As in a failover: Redis claimed the key, the connection died before its answer came
    # back, and the client sent the claim again. Found claimed by someone else, the request
    # would have answered 409 "still being processed" for a minute, to its own retries.
    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        client = await connect(url, retries=API_RETRIES)
        stack.push_async_callback(client.aclose)
        through = IdempotencyStore(client, "handover:")
        assert await through.claim("bob", "k-0", "fp-0")  # the script cached: no NOSCRIPT
        proxy.arm(0, lost=False, stay_down=False)
        assert await through.claim("alice", "k-1", "fp-1")
        assert proxy.cut
    assert not await keys.claim("alice", "k-1", "fp-1")  # another request with it: a repeat


async def test_keys_belong_to_their_caller(keys: IdempotencyStore) -> None:
    assert await keys.claim("alice", "k-1", "fp-1")
    assert await keys.claim("bob", "k-1", "fp-1")
    assert await keys.earlier("carol", "k-1") is None


async def test_claims_are_short_lived_and_responses_kept_a_day(
    keys: IdempotencyStore, redis: ArqRedis
) -> None:
    await keys.claim("alice", "k-1", "fp-1")
    assert 0 < await redis.ttl(slot("alice", "k-1")) <= PENDING_SECONDS
    await keys.keep("alice", "k-1", "fp-1", StoredResponse(201, {}, b"{}"))
    assert PENDING_SECONDS < await redis.ttl(slot("alice", "k-1")) <= KEPT_SECONDS


async def test_entries_keep_the_layout_earlier_versions_wrote(
    keys: IdempotencyStore, redis: ArqRedis
) -> None:
    await keys.claim("alice", "k-1", "fp-1")
    pending = orjson.loads(await redis.get(slot("alice", "k-1")))
    assert pending == {"fingerprint": "fp-1", "state": "pending", "claim": pending["claim"]}
    assert len(pending["claim"]) == 16
    written_before = {
        "fingerprint": "fp-1",
        "state": "done",
        "status": 202,
        "headers": {"Content-Type": "application/json"},
        "body": "eyJpZCI6IDF9",
    }
    await redis.set(slot("alice", "k-1"), orjson.dumps(written_before))
    earlier = await keys.earlier("alice", "k-1")
    assert earlier is not None
    assert earlier.response == StoredResponse(
        202, {"Content-Type": "application/json"}, b'{"id": 1}'
    )
