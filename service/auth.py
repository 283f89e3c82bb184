"""Bearer tokens: who is asking, and what their role lets them do.

Tokens are JWTs, trusted one of two ways, chosen by the token's ``alg``:

- ``HS256``, signed with the shared secret ``HANDOVER_JWT_SECRET``;
- ``RS256`` or ``ES256``, signed by the identity provider with a key it publishes
  in its JWKS (``HANDOVER_JWKS_URL``), named by the token's ``kid``.

An algorithm is accepted only for its own kind of key: ``HS256`` only with the
shared secret (never with a public key, whatever the token says), ``RS256`` only
with an RSA key, ``ES256`` only with a P-256 key; ``none`` and every other
algorithm are refused. ``exp`` and ``sub`` are required, ``nbf`` and ``iat`` are
honoured, ``iss`` (``HANDOVER_JWT_ISSUER``) and ``aud`` (``HANDOVER_JWT_AUDIENCE``)
are checked when configured, all with ``HANDOVER_JWT_LEEWAY`` of clock skew.

``sub`` is the subject (the platform's user id); the ``roles`` claim (a list or a
string) holds ``subject``, ``support`` and/or ``admin``. The identifiers a token
vouches for (``email`` with ``email_verified: true``, ``phone_number`` with
``phone_number_verified: true``, and the claims ``HANDOVER_IDENTITY_CLAIMS`` maps)
become the subject's identifiers on the requests they file for themselves.

Errors are problems: a token that is not good enough is a 401 naming why; a token
that needs the identity provider's keys while they cannot be fetched is a 503.

A token verified once is known by its SHA-256 for a while (:class:`VerifiedTokens`):
at most :data:`TOKEN_CACHE_SECONDS` and never past its ``exp``, and only while the
key that verified it is still the one the identity provider's set holds under its
``kid``: a refetched set (a rotation, a key removed) makes every token verified by the
set before it be checked again, so a token whose key is gone is never accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from jobs.identity import claim_identifiers
from jobs.settings import Settings, SettingsError
from service.problems import Problem
from service.roles import Role

log = logging.getLogger("handover.auth")

SHARED_SECRET_ALGORITHM = "HS256"
KEY_ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}
"""The one algorithm accepted for each type of key in the identity provider's key set."""
EC_CURVE = "P-256"
MIN_RSA_BITS = 2048
DEFAULT_LEEWAY_SECONDS = 30.0
MAX_LEEWAY_SECONDS = 300.0
JWKS_REFRESH_INTERVAL_SECONDS = 30.0
JWKS_MAX_AGE_SECONDS = 900.0
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MAX_BYTES = 256 * 1024
#: How long a verified token is known without being checked again (never past its ``exp``).
TOKEN_CACHE_SECONDS = 30.0
#: How many verified tokens a process knows at once; the oldest is forgotten first.
TOKEN_CACHE_SIZE = 10_000
#: The roles that make their holder staff (:attr:`Principal.is_staff`).
STAFF_ROLES = frozenset({Role.SUPPORT, Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    """The verified holder of a token."""

    sub: str
    roles: frozenset[Role]
    auth_time: int | None = None
    #: Identifiers the token vouches for, by name, each with the claim that did.
    identifiers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Who vouches for ``sub``: the token's ``iss``, if it names one.
    issuer: str | None = None
    #: Every verified claim, for settings that name one (``HANDOVER_JURISDICTION_CLAIM``).
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: The holder's language, from the token's ``locale`` claim (a BCP 47 tag), if well formed.
    locale: str | None = None

    @property
    def is_staff(self) -> bool:
        """Support or admin: may see every job's metadata."""
        return not self.roles.isdisjoint(STAFF_ROLES)

    @property
    def is_admin(self) -> bool:
        """May do everything, audited."""
        return Role.ADMIN in self.roles

    def authenticated_within(self, seconds: float) -> bool:
        """Whether the holder signed in (``auth_time``) no longer than ``seconds`` ago."""
        return self.auth_time is not None and time.time() - self.auth_time <= seconds

    def may_see(self, subject: str) -> bool:
        """Whether this principal may see jobs about ``subject``."""
        return self.is_staff or subject == self.sub

    def notice_locale(self, subject: str, asked: str | None) -> str | None:
        """The language of a request's notices: the one asked for, else this token's
        ``locale`` claim when it is the subject's own (staff's language is not theirs)."""
        return asked or (self.locale if subject == self.sub else None)

    def reading_time_zone(self, subject: str, asked: str | None) -> str | None:
        """The time zone an export's archive writes moments in: the one asked for, else
        this token's ``zoneinfo`` claim (OpenID Connect) when it is the subject's own and
        names a zone this system knows; anything else is ignored."""
        if asked is not None:
            return asked
        claim = self.claims.get("zoneinfo")
        if subject != self.sub or not isinstance(claim, str):
            return None
        try:
            ZoneInfo(claim)
        except (ZoneInfoNotFoundError, ValueError):
            return None
        return claim


_VERIFIED = web.RequestKey("verified", tuple[str, Principal])
"""The bearer token a request carried and the principal it verified as."""


class JwksError(Exception):
    """The identity provider's key set could not be fetched or read."""


class JwksClient:
    """The identity provider's public signing keys, fetched from its JWKS URL and cached.

    The set is fetched on first use, again once it is ``max_age`` old, and again
    when a token names a key (``kid``) the cached set lacks: the provider rotated
    its keys. Fetches are at most one per ``refresh_interval``, whatever tokens
    arrive, so a stream of made-up ``kid`` values cannot make us hammer the
    provider; each is bounded by ``timeout`` and ``JWKS_MAX_BYTES``. When a
    refresh fails, the keys already cached stay in use.

    Fetches are rare, so each opens a short-lived HTTP session of its own: there is
    no connection to keep open between them and nothing to close.
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = JWKS_REFRESH_INTERVAL_SECONDS,
        max_age: float = JWKS_MAX_AGE_SECONDS,
        timeout: float = JWKS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error: str | None = None

    async def key(self, kid: str, algorithm: str) -> jwt.PyJWK:
        """The key ``kid``, for a token signed with ``algorithm``; a problem if there is none."""
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            if self._last_error is not None:
                raise self._unavailable()
            raise _unauthorized(
                f"the token's key {kid!r} is not one the identity provider publishes"
            )
        if key.algorithm_name != algorithm:
            raise _unauthorized(
                f"the token's algorithm {algorithm} does not match its key {kid!r}, "
                f"which signs {key.algorithm_name}"
            )
        return key

    def holds(self, kid: str, key: jwt.PyJWK) -> bool:
        """Whether ``key`` is still the key ``kid`` names in the set as last fetched."""
        return self._keys.get(kid) is key

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._refresh_interval:
                return
            self._attempted_at = now
            try:
                self._keys = await self._fetch()
            except JwksError as exc:
                self._last_error = str(exc)
                log.warning("identity provider keys not refreshed from %s: %s", self.url, exc)
                return
            self._fetched_at = now
            self._last_error = None

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(
                    self.url, headers={"Accept": "application/json"}, allow_redirects=False
                ) as response,
            ):
                if response.status != 200:
                    raise JwksError(f"the JWKS URL answered {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise JwksError(f"the key set is larger than {JWKS_MAX_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"the JWKS URL cannot be reached: {type(exc).__name__}") from exc
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksError("the key set is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksError('the key set is not a JWK set (no "keys" list)')
        return {
            jwk["kid"]: key for jwk in document["keys"] if (key := _signing_key(jwk)) is not None
        }

    def _unavailable(self) -> Problem:
        waited = self._clock() - (self._attempted_at or 0.0)
        retry_after = max(1, math.ceil(self._refresh_interval - waited))
        return Problem(
            503,
            "Service unavailable",
            "the identity provider's signing keys cannot be fetched to check this token; "
            "try again shortly",
            slug="identity-provider-unavailable",
            headers={"Retry-After": str(retry_after)},
        )


def _signing_key(jwk: object) -> jwt.PyJWK | None:
    """A JWK usable to verify tokens: a ``kid``-named RSA (2048 bits or more) or P-256 key."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    kty = jwk.get("kty")
    algorithm = KEY_ALGORITHMS.get(kty) if isinstance(kty, str) else None
    if algorithm is None or jwk.get("alg", algorithm) != algorithm:
        return None
    if jwk["kty"] == "EC" and jwk.get("crv") != EC_CURVE:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithm)
    except (jwt.PyJWKError, ValueError, TypeError) as exc:
        log.warning("identity provider key %r skipped: %s", jwk["kid"], exc)
        return None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        log.warning("identity provider key %r skipped: RSA under %d bits", jwk["kid"], MIN_RSA_BITS)
        return None
    return key


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    until: float
    #: The identity provider's key that verified the token, by its kid (``None``: the secret).
    key: tuple[str, jwt.PyJWK] | None


class VerifiedTokens:
    """Tokens verified lately, by the SHA-256 of their text; a hit skips the whole check.

    Bounded: past ``size`` entries the oldest is forgotten. An entry lasts ``seconds``
    at most and never past the token's ``exp``, and a token verified by an identity
    provider key counts only while ``jwks`` still holds that very key under its ``kid``.
    """

    def __init__(
        self,
        jwks: JwksClient | None,
        *,
        size: int = TOKEN_CACHE_SIZE,
        seconds: float = TOKEN_CACHE_SECONDS,
    ) -> None:
        self._jwks = jwks
        self._size = size
        self._seconds = seconds
        self._entries: dict[bytes, _Verified] = {}

    def get(self, digest: bytes, now: float) -> Principal | None:
        """The principal the token with this digest verified as, if it may still be trusted."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now < entry.until and (
            entry.key is None or (self._jwks is not None and self._jwks.holds(*entry.key))
        ):
            return entry.principal
        del self._entries[digest]
        return None

    def put(
        self,
        digest: bytes,
        principal: Principal,
        *,
        expires: float,
        now: float,
        key: tuple[str, jwt.PyJWK] | None,
    ) -> None:
        """Remember a token verified at ``now`` (by ``key``, if the identity provider's),
        until ``expires`` (its ``exp``) at the latest."""
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = _Verified(principal, min(now + self._seconds, expires), key)


class TokenAuthority:
    """Verifies bearer tokens (and, with a shared secret, issues them).

    ``secret`` verifies ``HS256`` tokens; ``jwks`` verifies ``RS256`` and ``ES256``
    tokens; either may be absent, and a token for the missing one is refused.
    ``issuer`` and ``audience``, when given, must match every token's ``iss`` and
    ``aud``; ``leeway`` is the clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        jwks: JwksClient | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = DEFAULT_LEEWAY_SECONDS,
        identity_claims: Mapping[str, str] | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be 0 to {MAX_LEEWAY_SECONDS:.0f} seconds")
        self._secret = secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._identity_claims = dict(identity_claims or {})
        self._verified = VerifiedTokens(jwks)

    @classmethod
    def from_settings(cls, settings: Settings, secret: str | None) -> TokenAuthority:
        """The authority ``settings`` describe, with ``secret`` as the HS256 secret."""
        return cls(
            secret,
            jwks=JwksClient(settings.jwks_url) if settings.jwks_url else None,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway.total_seconds(),
            identity_claims=dict(settings.identity_claims),
        )

    def issue(
        self,
        sub: str,
        roles: list[str],
        ttl_seconds: int = 3600,
        *,
        email: str | None = None,
        locale: str | None = None,
    ) -> str:
        """A signed HS256 token for ``sub`` with ``roles``, valid ``ttl_seconds``.

        With ``email``, the token carries it as a verified ``email`` claim; with
        ``locale``, a ``locale`` claim.
        """
        if self._secret is None:
            raise SettingsError(
                "HANDOVER_JWT_SECRET: needed to issue tokens; "
                "without it only the identity provider's tokens are accepted"
            )
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "auth_time": now,
        }
        if email is not None:
            claims.update(email=email, email_verified=True)
        if locale is not None:
            claims["locale"] = locale
        if self._issuer is not None:
            claims["iss"] = self._issuer
        if self._audience is not None:
            claims["aud"] = self._audience
        return jwt.encode(claims, self._secret, algorithm=SHARED_SECRET_ALGORITHM)

    async def verify(self, token: str) -> Principal:
        """The principal a token names; a 401 problem when it is not valid.

        A token verified lately is answered from :class:`VerifiedTokens`.
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        known = self._verified.get(digest, now)
        if known is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None
        algorithm = header.get("alg")
        key = await self._key_for(algorithm, header.get("kid"))
        claims = self._decode(token, key, str(algorithm))
        principal = _principal(claims, self._identity_claims)
        held = (str(header["kid"]), key) if isinstance(key, jwt.PyJWK) else None
        self._verified.put(digest, principal, expires=float(claims["exp"]), now=now, key=held)
        return principal

    async def authenticate(self, request: web.Request) -> Principal:
        """The principal behind the request's bearer token; 401 if there is none.

        Verified once per request: the rate limit and the handler ask the same question.
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send a bearer token: Authorization: Bearer <JWT>")
        if _VERIFIED in request and request[_VERIFIED][0] == token.strip():
            return request[_VERIFIED][1]
        who = await self.verify(token.strip())
        request[_VERIFIED] = (token.strip(), who)
        return who

    async def _key_for(self, algorithm: object, kid: object) -> str | jwt.PyJWK:
        """What verifies a token signed with ``algorithm``: the shared secret or a JWKS key."""
        if algorithm == SHARED_SECRET_ALGORITHM:
            if self._secret is None:
                raise _unauthorized(
                    "HS256 tokens are not accepted here; "
                    "use a token signed by the identity provider (RS256 or ES256)"
                )
            return self._secret
        if algorithm not in KEY_ALGORITHMS.values():
            raise _unauthorized(
                f"the token's algorithm {algorithm!r} is not accepted; "
                "tokens must be signed with HS256, RS256 or ES256"
            )
        if self._jwks is None:
            raise _unauthorized(
                f"{algorithm} tokens are not accepted here: no identity provider key set "
                "is configured; use an HS256 token"
            )
        if not isinstance(kid, str) or not kid:
            raise _unauthorized("the token names no key (kid) to check its signature with")
        return await self._jwks.key(kid, str(algorithm))

    def _decode(self, token: str, key: str | jwt.PyJWK, algorithm: str) -> Mapping[str, Any]:
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        try:
            return jwt.decode(
                token,
                key.key if isinstance(key, jwt.PyJWK) else key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired (exp)") from None
        except jwt.ImmatureSignatureError as exc:
            claim = "iat" if "(iat)" in str(exc) else "nbf"
            raise _unauthorized(f"the token is not valid yet ({claim})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"the token lacks the required {exc.claim} claim") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized(f"the token's issuer (iss) is not {self._issuer}") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized(f"the token's audience (aud) is not {self._audience}") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token is not valid: its signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None


def _principal(claims: Mapping[str, Any], identity_claims: Mapping[str, str]) -> Principal:
    """The principal verified claims name; a 401 problem for claims of the wrong shape."""
    raw_roles = claims.get("roles", [Role.SUBJECT.value])
    if isinstance(raw_roles, str):
        raw_roles = [raw_roles]
    if not isinstance(raw_roles, list):
        raise _unauthorized("the token's roles claim must be a list or a string")
    roles = frozenset(Role(r) for r in raw_roles if r in Role.__members__.values())
    if not roles:
        raise _unauthorized("the token grants none of the roles subject, support, admin")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("the token's sub claim must be a non-empty string")
    auth_time = claims.get("auth_time")
    if auth_time is not None and (not isinstance(auth_time, int) or isinstance(auth_time, bool)):
        raise _unauthorized("the token's auth_time claim must be a number of seconds")
    vouched = {"email": "email_verified", "phone_number": "phone_number_verified"}
    vouched.update({name: claim for claim, name in identity_claims.items()})
    found = claim_identifiers(claims, identity_claims)
    identifiers = {name: (value, vouched[name]) for name, value in found.items()}
    issuer = claims.get("iss")
    return Principal(
        sub=sub,
        roles=roles,
        auth_time=auth_time,
        identifiers=identifiers,
        issuer=issuer if isinstance(issuer, str) else None,
        claims=claims,
        locale=_locale(claims.get("locale")),
    )


#: A language tag as OpenID Connect's ``locale`` claim holds it (BCP 47; ``_`` seen too).
LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,4}")


def _locale(value: object) -> str | None:
    """The ``locale`` claim if it is a language tag; anything else is ignored, never half-used."""
    return value if isinstance(value, str) and LOCALE.fullmatch(value) else None


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="handover"'}
    )


def load_or_create_secret(path: Path) -> str:
    """The embedded mode's JWT secret: made once, kept in the data dir."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        with path.open("x") as handle:
            handle.write(secret)
    except FileExistsError:
        return path.read_text().strip()
    path.chmod(0o600)
    return secret
