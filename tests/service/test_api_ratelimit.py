"""The API's per-caller limit over HTTP: keyed on who a token verifies as, never on its spelling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from redis.asyncio import Redis

from connectors.testing import MemoryConnector
from service.auth import TokenAuthority
from tests.conftest import free_port, wait_for_port
from tests.faults import HandoverProcess, RedisServer
from tests.polling import eventually
from tests.service.conftest import JWT_SECRET, Api, ApiFactory
from tests.service.test_processes import clean_env

LIMIT = 3


async def start(api_factory: ApiFactory, **overrides: object) -> Api:
    crm = MemoryConnector("crm", records={})
    return await api_factory({"crm": crm}, worker=False, rate_limit=LIMIT, **overrides)


async def statuses(api: Api, authorization: str | None, count: int) -> list[int]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return [
        (await api.request("GET", "/v1/connectors", sub=None, headers=headers))[0]
        for _ in range(count)
    ]


async def test_a_tokens_other_spellings_and_its_siblings_share_its_subjects_limit(
    api_factory: ApiFactory,
) -> None:
    api = await start(api_factory)
    token = api.token("s1", "support")
    assert await statuses(api, f"Bearer {token}", LIMIT) == [200] * LIMIT
    # The same signature with a padding character still verifies: it is the same caller.
    assert await statuses(api, f"Bearer {token}=", 1) == [429]
    assert await statuses(api, f"bearer  {token} ", 1) == [429]
    # So is another token for the same subject.
    sibling = api.authority.issue("s1", ["support"], ttl_seconds=600)
    assert sibling != token
    assert await statuses(api, f"Bearer {sibling}", 1) == [429]
    # Another subject has a limit of their own.
    assert await statuses(api, f"Bearer {api.token('s2', 'support')}", 1) == [200]


async def test_the_limit_is_per_issuer_and_subject(api_factory: ApiFactory) -> None:
    api = await start(api_factory, jwt_issuer="https://id.example")
    ours = TokenAuthority(JWT_SECRET, issuer="https://id.example")
    token = ours.issue("s1", ["support"])
    assert await statuses(api, f"Bearer {token}", LIMIT + 1) == [200] * LIMIT + [429]
    assert await statuses(api, f"Bearer {ours.issue('s2', ['support'])}", 1) == [200]


async def test_requests_without_a_valid_token_count_against_the_client_address(
    api_factory: ApiFactory,
) -> None:
    api = await start(api_factory)
    made_up = [f"Bearer not-a-jwt-{n}" for n in range(LIMIT)]
    assert [(await statuses(api, header, 1))[0] for header in made_up] == [401] * LIMIT
    # Yet another made-up token, a forged one, or none at all: the same address, over its limit.
    forged = TokenAuthority("another-secret-" + "y" * 40).issue("s1", ["support"])
    for header in ("Bearer not-a-jwt-again", f"Bearer {forged}", None):
        status, headers, problem = await api.request(
            "GET",
            "/v1/connectors",
            sub=None,
            headers={"Authorization": header} if header else {},
        )
        assert status == 429, header
        assert problem["type"].endswith("/rate-limited") and int(headers["Retry-After"]) > 0
    # A caller whose token verifies is counted apart, even from the same address.
    assert await statuses(api, f"Bearer {api.token('s1', 'support')}", 1) == [200]
    # Health probes are never limited.
    assert [(await api.request("GET", "/healthz", sub=None))[0] for _ in range(2)] == [200, 200]


def _adds(info: dict[str, Any]) -> int:
    """How many times Redis was asked to add to a counter (``INCR``, ``INCRBY``)."""
    return sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("incr", "incrby"))


async def test_two_api_processes_hold_one_limit_counting_in_memory(tmp_path: Path) -> None:
    limit = 10
    redis_server = RedisServer(tmp_path / "redis")  # its own: its command counts are this test's
    redis_server.start()
    config = tmp_path / "handover.toml"
    config.write_text('[connectors.crm]\ntype = "memory"\n')
    env = clean_env(
        HANDOVER_REDIS_URL=redis_server.url,
        HANDOVER_JWT_SECRET=JWT_SECRET,
        HANDOVER_DATA_DIR=str(tmp_path / "data"),
        HANDOVER_CONFIG=str(config),
        HANDOVER_RATE_LIMIT=str(limit),
    )
    ports = [free_port(), free_port()]
    apis = [
        HandoverProcess(env, tmp_path / f"api-{n}.log", ("api", "--port", str(port)))
        for n, port in enumerate(ports)
    ]
    redis = Redis.from_url(redis_server.url)
    try:
        for port in ports:
            await asyncio.to_thread(wait_for_port, port, 30)
        # Far from a minute's end, so that every request counts in one window.
        await eventually(lambda: time.time() % 60 < 50, timeout=15, what="a fresh minute")
        headers = {"Authorization": f"Bearer {TokenAuthority(JWT_SECRET).issue('s1', ['support'])}"}
        adds_before = _adds(await redis.info("commandstats"))
        statuses = []
        async with ClientSession() as session:
            for n in range(30):  # alternating between the two processes
                url = f"http://127.0.0.1:{ports[n % 2]}/v1/connectors"
                async with session.get(url, headers=headers) as response:
                    statuses.append(response.status)
            # Every request is counted in Redis within the flush interval, refused ones too.
            key = f"handover:rate:principal:*:{int(time.time()) // 60}"
            counted = await eventually(
                lambda: _total(redis, key), until=lambda total: total == 30, timeout=5, what="30"
            )
            # Then both processes know the caller is over the limit.
            for port in ports:
                url = f"http://127.0.0.1:{port}/v1/connectors"
                async with session.get(url, headers=headers) as response:
                    assert response.status == 429
        admitted = statuses.count(200)
        assert set(statuses) == {200, 429}
        # The bound README states for two processes: the limit × (2 + 1) / 2.
        assert limit <= admitted <= limit * 3 // 2, statuses
        assert counted == 30
        # Far from the limit a request costs no round trip: fewer adds than requests.
        assert _adds(await redis.info("commandstats")) - adds_before < 30
    finally:
        await redis.aclose()
        for api in apis:
            assert api.terminate() == 0
        redis_server.stop()


async def _total(redis: Redis, pattern: str) -> int:
    return sum([int(await redis.get(key) or 0) for key in await redis.keys(pattern)])
