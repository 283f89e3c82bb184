"""Bearer tokens over real HTTP: HS256, and RS256 / ES256 against a local identity provider's JWKS.

The identity provider is an aiohttp server on 127.0.0.1 publishing RSA and EC keys
made here. Every refused token must be a 401 problem that says why; a token that
needs the provider's keys while the provider is down is a 503, never a 401 or 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from connectors.testing import MemoryConnector
from jobs.settings import Secret, Settings, SettingsError
from service.app import create_app, jwt_secret
from service.appkeys import AUTHORITY
from service.auth import JwksClient, Principal, TokenAuthority, VerifiedTokens
from service.roles import Role
from tests.conftest import REDIS_URL
from tests.polling import eventually

SECRET = "auth-test-secret-" + "s" * 40
ISSUER = "https://idp.example"
AUDIENCE = "handover"
PROTECTED = "/v1/connectors"


def _private_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class SigningKey:
    """A key pair of the identity provider, named by ``kid``."""

    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    alg: str

    def jwk(self) -> dict[str, Any]:
        """The public half as the provider publishes it."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            public: Any = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            public = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """A token over ``claims`` signed with this key (header ``kid`` unless overridden)."""
        headers = {"kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


@dataclass
class IdentityProvider:
    """A JWKS endpoint whose published keys a test can change, counting each fetch."""

    published: list[SigningKey]
    url: str = ""
    fetches: int = 0
    padding: int = 0
    """Bytes of filler added to the key set, to make it too large."""
    junk: list[Any] = field(default_factory=list)
    """Entries published besides the keys: malformed, or of kinds never to be used."""
    server: TestServer | None = field(default=None, repr=False)

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        keys = [key.jwk() for key in self.published] + self.junk
        return web.json_response({"keys": keys, "filler": "x" * self.padding})

    async def stop(self) -> None:
        """The provider goes down: its port refuses connections."""
        if self.server is not None:
            await self.server.close()


def claims(sub: str = "alice", **overrides: Any) -> dict[str, Any]:
    """Good claims for this API's issuer and audience; ``None`` removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": sub,
        "roles": ["subject"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _segment(data: dict[str, Any]) -> str:
    """One base64url JSON segment of a JWT."""
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def hs256_with_key(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """An HS256 token keyed by any bytes: PyJWT refuses a PEM as HMAC key, attackers do not."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_segment(claims)}"
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token."""
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa-1", _private_rsa(), "RS256")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ec-1", _private_ec(), "ES256")


@pytest.fixture
async def idp(rsa_key: SigningKey, ec_key: SigningKey) -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider([rsa_key, ec_key])
    app = web.Application()
    app.router.add_get("/jwks.json", provider.jwks)
    provider.server = TestServer(app, host="127.0.0.1")
    await provider.server.start_server()
    provider.url = str(provider.server.make_url("/jwks.json"))
    yield provider
    await provider.stop()


Call = Callable[[str | None], Awaitable[tuple[int, dict[str, str], Any]]]


@pytest.fixture
async def start_api(
    resources_factory: Callable[..., Any],
) -> AsyncIterator[Callable[..., Awaitable[Call]]]:
    """Starts the API; returns a function that GETs a protected route with a token."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(ClientSession())

        async def start(*, authority: TokenAuthority | None = None, **overrides: Any) -> Call:
            overrides.setdefault("jwt_secret", Secret(SECRET))
            resources = await stack.enter_async_context(
                resources_factory({"crm": MemoryConnector("crm")}, **overrides)
            )
            app = create_app(resources.settings, resources=resources)
            if authority is not None:
                app[AUTHORITY] = authority
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            url = str(server.make_url(PROTECTED))

            async def call(token: str | None) -> tuple[int, dict[str, str], Any]:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.get(url, headers=headers) as response:
                    return response.status, dict(response.headers), await response.read()

            return call

        yield start


def _problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/problem+json")
    problem: dict[str, Any] = orjson.loads(body)
    assert problem["status"] == expected
    assert {"type", "title", "detail", "instance"} <= set(problem)
    return problem


def hs256() -> str:
    """A shared-secret token as the platform would mint it."""
    return TokenAuthority(SECRET, issuer=ISSUER, audience=AUDIENCE).issue("alice", ["subject"])


async def test_rs256_and_es256_tokens_are_accepted_with_one_fetch_of_the_key_set(
    start_api: Callable[..., Awaitable[Call]],
    idp: IdentityProvider,
    rsa_key: SigningKey,
    ec_key: SigningKey,
) -> None:
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    for token in (rsa_key.sign(claims()), ec_key.sign(claims()), hs256(), rsa_key.sign(claims())):
        status, _, body = await call(token)
        assert status == 200, body
    assert idp.fetches == 1


async def test_clock_skew_within_the_leeway_is_tolerated(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    call = await start_api(
        jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_leeway=timedelta(seconds=60)
    )
    now = int(time.time())
    for token in (
        rsa_key.sign(claims(exp=now - 40)),
        rsa_key.sign(claims(nbf=now + 40, iat=now + 40)),
    ):
        status, _, body = await call(token)
        assert status == 200, body


async def test_unknown_kid_refreshes_the_key_set_at_most_every_30_seconds(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    clock = Clock()
    authority = TokenAuthority(
        SECRET, jwks=JwksClient(idp.url, clock=clock), issuer=ISSUER, audience=AUDIENCE
    )
    call = await start_api(authority=authority)
    assert (await call(rsa_key.sign(claims())))[0] == 200
    assert idp.fetches == 1

    rotated = SigningKey("rsa-2", _private_rsa(), "RS256")
    idp.published = [rotated]
    clock.now += 31
    status, _, body = await call(rotated.sign(claims()))
    assert status == 200, body
    assert idp.fetches == 2

    # Made-up kids within the next 30 s fetch nothing: they cannot make us hammer the provider.
    for n in range(5):
        clock.now += 1
        forged = SigningKey(f"made-up-{n}", rotated.private, "RS256").sign(claims())
        problem = _problem(*await call(forged), 401)
        assert f"made-up-{n}" in problem["detail"] and "publishes" in problem["detail"]
    assert idp.fetches == 2

    # The old key is gone from the set: its tokens are refused once the cache knows.
    clock.now += 31
    problem = _problem(*await call(rsa_key.sign(claims())), 401)
    assert "'rsa-1' is not one the identity provider publishes" in problem["detail"]
    assert idp.fetches == 3


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT decodes (checks the signature of) from now on."""
    seen: list[str] = []
    decode = jwt.decode

    def counted(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    return seen


async def test_a_verified_token_is_known_by_its_hash_until_its_key_is_gone(
    start_api: Callable[..., Awaitable[Call]],
    idp: IdentityProvider,
    rsa_key: SigningKey,
    decoded: list[str],
) -> None:
    clock = Clock()
    authority = TokenAuthority(
        SECRET, jwks=JwksClient(idp.url, clock=clock), issuer=ISSUER, audience=AUDIENCE
    )
    call = await start_api(authority=authority)
    token = rsa_key.sign(claims())
    assert [(await call(token))[0] for _ in range(5)] == [200] * 5
    assert decoded == [token]  # checked once; then known by its hash
    # The provider rotates its keys; a token under the new one has the set fetched again.
    rotated = SigningKey("rsa-2", _private_rsa(), "RS256")
    idp.published = [rotated]
    clock.now += 31
    assert (await call(rotated.sign(claims())))[0] == 200
    assert idp.fetches == 2
    # The key that verified the known token is gone: it is checked again, and refused.
    problem = _problem(*await call(token), 401)
    assert "'rsa-1' is not one the identity provider publishes" in problem["detail"]


async def test_a_known_token_is_refused_once_it_expires(
    start_api: Callable[..., Awaitable[Call]], decoded: list[str]
) -> None:
    call = await start_api(jwt_leeway=timedelta(0))
    token = TokenAuthority(SECRET).issue("alice", ["subject"], ttl_seconds=2)
    assert [(await call(token))[0] for _ in range(3)] == [200] * 3
    assert decoded == [token]
    status, headers, body = await eventually(
        lambda: call(token), until=lambda answer: answer[0] != 200, timeout=10, what="expiry"
    )
    assert "expired" in _problem(status, headers, body, 401)["detail"]


def test_known_tokens_are_few_and_short_lived() -> None:
    tokens = VerifiedTokens(None, size=2, seconds=30)
    alice = Principal("alice", frozenset({Role.SUBJECT}))
    tokens.put(b"a", alice, expires=1000.0, now=0.0, key=None)
    assert tokens.get(b"a", 29.9) is alice and tokens.get(b"a", 30.0) is None
    tokens.put(b"b", alice, expires=10.0, now=0.0, key=None)  # never past its exp
    assert tokens.get(b"b", 9.9) is alice and tokens.get(b"b", 10.0) is None
    for digest in (b"c", b"d", b"e"):
        tokens.put(digest, alice, expires=1000.0, now=0.0, key=None)
    assert [tokens.get(digest, 1.0) for digest in (b"c", b"d", b"e")] == [None, alice, alice]


def _rejected_tokens(rsa_key: SigningKey, ec_key: SigningKey) -> dict[str, tuple[str, str]]:
    """Each bad token, and what the 401's detail must say."""
    now = int(time.time())
    stranger = SigningKey("rsa-1", _private_rsa(), "RS256")
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "a key not in the set, claiming a published kid": (
            stranger.sign(claims()),
            "signature does not verify",
        ),
        "a key not in the set, under its own kid": (
            SigningKey("stranger", stranger.private, "RS256").sign(claims()),
            "'stranger' is not one the identity provider publishes",
        ),
        "the wrong issuer": (
            rsa_key.sign(claims(iss="https://evil.example")),
            f"issuer (iss) is not {ISSUER}",
        ),
        "no issuer": (rsa_key.sign(claims(iss=None)), "lacks the required iss claim"),
        "the wrong audience": (
            ec_key.sign(claims(aud="another-app")),
            f"audience (aud) is not {AUDIENCE}",
        ),
        "expired beyond the leeway": (
            rsa_key.sign(claims(iat=now - 700, nbf=now - 700, exp=now - 60)),
            "expired",
        ),
        "not valid yet beyond the leeway": (
            ec_key.sign(claims(nbf=now + 120)),
            "not valid yet (nbf)",
        ),
        "issued in the future": (rsa_key.sign(claims(iat=now + 120)), "not valid yet (iat)"),
        "no exp": (rsa_key.sign(claims(exp=None)), "lacks the required exp claim"),
        "alg none": (unsigned(claims()), "algorithm 'none' is not accepted"),
        "HS256 keyed with the RSA public key": (
            hs256_with_key(claims(), public_pem, rsa_key.kid),
            "signature does not verify",
        ),
        "ES256 claimed for the RSA key": (
            ec_key.sign(claims(), kid=rsa_key.kid),
            "algorithm ES256 does not match its key 'rsa-1', which signs RS256",
        ),
        "RS384": (
            jwt.encode(claims(), rsa_key.private, algorithm="RS384", headers={"kid": "rsa-1"}),
            "algorithm 'RS384' is not accepted",
        ),
        "no kid": (
            jwt.encode(claims(), rsa_key.private, algorithm="RS256"),
            "names no key (kid)",
        ),
        "HS256 with another secret": (
            TokenAuthority("another-secret-" + "y" * 40).issue("alice", ["subject"]),
            "signature does not verify",
        ),
        "not a JWT": ("not-a-jwt", "the token is not valid"),
    }


async def test_bad_tokens_are_401_problems_naming_the_reason(
    start_api: Callable[..., Awaitable[Call]],
    idp: IdentityProvider,
    rsa_key: SigningKey,
    ec_key: SigningKey,
) -> None:
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert (await call(rsa_key.sign(claims())))[0] == 200
    for case, (token, reason) in _rejected_tokens(rsa_key, ec_key).items():
        status, headers, body = await call(token)
        problem = _problem(status, headers, body, 401)
        assert headers["WWW-Authenticate"].startswith("Bearer"), case
        assert reason in problem["detail"], (case, problem["detail"])
    assert idp.fetches == 1


async def test_identity_provider_down_is_503_for_its_tokens_while_hs256_still_works(
    start_api: Callable[..., Awaitable[Call]],
    idp: IdentityProvider,
    rsa_key: SigningKey,
) -> None:
    await idp.stop()
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    for _ in range(3):
        status, headers, body = await call(rsa_key.sign(claims()))
        problem = _problem(status, headers, body, 503)
        assert "identity provider" in problem["detail"]
        assert problem["type"].endswith("/identity-provider-unavailable")
        assert 1 <= int(headers["Retry-After"]) <= 30
    assert (await call(hs256()))[0] == 200


async def test_cached_keys_outlive_an_identity_provider_outage(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    clock = Clock()
    authority = TokenAuthority(
        None, jwks=JwksClient(idp.url, clock=clock), issuer=ISSUER, audience=AUDIENCE
    )
    call = await start_api(authority=authority)
    assert (await call(rsa_key.sign(claims())))[0] == 200
    await idp.stop()
    clock.now += 3600  # stale and past the refresh interval: a refetch is tried, and fails
    assert (await call(rsa_key.sign(claims())))[0] == 200
    clock.now += 31
    rotated = SigningKey("rsa-2", rsa_key.private, "RS256")
    problem = _problem(*await call(rotated.sign(claims())), 503)
    assert "try again" in problem["detail"]


async def test_a_silent_identity_provider_times_out_into_a_503(
    start_api: Callable[..., Awaitable[Call]], rsa_key: SigningKey
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        jwks = JwksClient(f"http://127.0.0.1:{port}/jwks.json", timeout=0.5)
        call = await start_api(authority=TokenAuthority(SECRET, jwks=jwks))
        started = time.monotonic()
        _problem(*await call(rsa_key.sign(claims())), 503)
        assert time.monotonic() - started < 3
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_oversized_key_set_is_refused_as_unavailable(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    idp.padding = 300 * 1024
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    _problem(*await call(rsa_key.sign(claims())), 503)
    assert idp.fetches == 1


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_weak_malformed_or_foreign_keys_in_the_set_are_never_used(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    weak = SigningKey(
        "rsa-weak", rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256"
    )
    p384 = SigningKey("ec-384", ec.generate_private_key(ec.SECP384R1()), "ES384")
    idp.published = [rsa_key, weak, p384]
    hmac_key = {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"k" * 32).decode()}
    idp.junk = [hmac_key, {"kty": ["RSA"], "kid": "odd"}, "not-a-key", {"kty": "RSA"}]
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert (await call(rsa_key.sign(claims())))[0] == 200
    problem = _problem(*await call(weak.sign(claims())), 401)
    assert "'rsa-weak' is not one the identity provider publishes" in problem["detail"]
    problem = _problem(*await call(p384.sign(claims())), 401)
    assert "algorithm 'ES384' is not accepted" in problem["detail"]
    as_es256 = hs256_with_key(claims(), b"junk", p384.kid).split(".")
    as_es256[0] = _segment({"alg": "ES256", "kid": p384.kid})
    problem = _problem(*await call(".".join(as_es256)), 401)
    assert "'ec-384' is not one the identity provider publishes" in problem["detail"]
    problem = _problem(*await call(hs256_with_key(claims(), b"k" * 32, "hmac")), 401)
    assert "signature does not verify" in problem["detail"]


async def test_without_a_shared_secret_hs256_tokens_are_refused(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    call = await start_api(
        jwt_secret=None, redis_url=Secret(REDIS_URL), jwks_url=idp.url, jwt_issuer=ISSUER
    )
    assert (await call(rsa_key.sign(claims(aud=None))))[0] == 200
    problem = _problem(*await call(hs256()), 401)
    assert "HS256 tokens are not accepted here" in problem["detail"]
    with pytest.raises(SettingsError, match="HANDOVER_JWT_SECRET"):
        TokenAuthority(None).issue("alice", ["subject"])


async def test_without_a_key_set_identity_provider_tokens_are_refused(
    start_api: Callable[..., Awaitable[Call]], rsa_key: SigningKey
) -> None:
    call = await start_api()
    problem = _problem(*await call(rsa_key.sign(claims())), 401)
    assert "RS256 tokens are not accepted here" in problem["detail"]


def test_a_shared_redis_needs_a_secret_or_a_key_set(tmp_path: Any) -> None:
    shared = Settings(redis_url=Secret(REDIS_URL), data_dir=tmp_path)
    with pytest.raises(SettingsError, match="HANDOVER_JWT_SECRET or HANDOVER_JWKS_URL"):
        jwt_secret(shared)
    assert jwt_secret(Settings(data_dir=tmp_path)) == (tmp_path / "jwt-secret").read_text()
    with_jwks = Settings(redis_url=Secret(REDIS_URL), jwks_url="https://idp.example/jwks")
    assert jwt_secret(with_jwks) is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HANDOVER_JWT_LEEWAY": "6m"}, "HANDOVER_JWT_LEEWAY: at most 5m"),
        ({"HANDOVER_JWT_LEEWAY": "soon"}, "HANDOVER_JWT_LEEWAY: expected a duration"),
        ({"HANDOVER_JWKS_URL": "http://idp.example/jwks"}, "HANDOVER_JWKS_URL: expected an https"),
        ({"HANDOVER_JWKS_URL": "idp.example/jwks"}, "HANDOVER_JWKS_URL: expected an absolute URL"),
    ],
)
def test_bad_token_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(environ)


def test_token_settings_are_read() -> None:
    settings = Settings.load(
        {
            "HANDOVER_JWKS_URL": "https://idp.example/.well-known/jwks.json",
            "HANDOVER_JWT_ISSUER": ISSUER,
            "HANDOVER_JWT_AUDIENCE": AUDIENCE,
            "HANDOVER_JWT_LEEWAY": "2m",
        }
    )
    assert settings.jwks_url == "https://idp.example/.well-known/jwks.json"
    assert (settings.jwt_issuer, settings.jwt_audience) == (ISSUER, AUDIENCE)
    assert settings.jwt_leeway == timedelta(minutes=2)
    assert Settings.load({}).jwt_leeway == timedelta(seconds=30)
    assert Settings.load({"HANDOVER_JWKS_URL": "http://127.0.0.1:8080/jwks"}).jwks_url


async def test_keys_a_token_carries_or_points_to_are_never_trusted(
    start_api: Callable[..., Awaitable[Call]], idp: IdentityProvider, rsa_key: SigningKey
) -> None:
    """``jwk``, ``jku`` and ``x5u`` headers name the attacker's own key: only the
    identity provider's published set verifies, and the pointed-to URL is never fetched."""
    attacker_fetches: list[str] = []
    attacker = SigningKey("rsa-1", _private_rsa(), "RS256")

    async def serve_keys(request: web.Request) -> web.Response:
        attacker_fetches.append(request.path)
        return web.json_response({"keys": [attacker.jwk()]})

    app = web.Application()
    app.router.add_get("/{name}", serve_keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        assert (await call(rsa_key.sign(claims())))[0] == 200
        for header in (
            {"jwk": attacker.jwk()},
            {"jku": str(server.make_url("/jwks.json"))},
            {"x5u": str(server.make_url("/cert.pem"))},
        ):
            for kid in ("rsa-1", "attacker"):
                problem = _problem(*await call(attacker.sign(claims(), kid=kid, **header)), 401)
                assert "signature does not verify" in problem["detail"] or (
                    "'attacker' is not one the identity provider publishes" in problem["detail"]
                ), (header, kid, problem)
    finally:
        await server.close()
    assert attacker_fetches == []


@pytest.mark.parametrize(
    "kid",
    ["../../../../etc/passwd", "rsa-1\x00", "' OR 1=1 --", "k" * 4000, "\u202ersa-1", ""],
)
async def test_hostile_kid_values_are_401_problems(
    start_api: Callable[..., Awaitable[Call]],
    idp: IdentityProvider,
    rsa_key: SigningKey,
    kid: str,
) -> None:
    call = await start_api(jwks_url=idp.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    problem = _problem(*await call(rsa_key.sign(claims(), kid=kid)), 401)
    assert "key" in problem["detail"]


def test_an_archive_is_written_in_the_time_zone_asked_for_else_the_subjects_own() -> None:
    own = Principal(
        sub="alice", roles=frozenset({Role.SUBJECT}), claims={"zoneinfo": "Europe/Paris"}
    )
    assert own.reading_time_zone("alice", None) == "Europe/Paris"
    assert own.reading_time_zone("alice", "Asia/Tokyo") == "Asia/Tokyo"
    staff = Principal(sub="s1", roles=frozenset({Role.SUPPORT}), claims={"zoneinfo": "Asia/Tokyo"})
    assert staff.reading_time_zone("alice", None) is None, "staff's zone is not the subject's"
    for claim in ("Mars/Olympus", 3600, "../../etc/passwd"):
        odd = Principal(sub="alice", roles=frozenset({Role.SUBJECT}), claims={"zoneinfo": claim})
        assert odd.reading_time_zone("alice", None) is None, claim
