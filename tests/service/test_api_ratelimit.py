"""The API's per-caller limit over HTTP: keyed on who a token verifies as, never on its spelling."""

from __future__ import annotations

from connectors.testing import MemoryConnector
from service.auth import TokenAuthority
from tests.service.conftest import JWT_SECRET, Api, ApiFactory

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
