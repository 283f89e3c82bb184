"""Bearer tokens: who is asking, and what their role lets them do.

Tokens are JWTs signed with HS256 and ``HANDOVER_JWT_SECRET``. ``sub`` is the
subject (the platform's user id); the ``roles`` claim (a list or a string) holds
``subject``, ``support`` and/or ``admin``. ``exp`` is required.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import jwt
from aiohttp import web

from service.problems import Problem

ALGORITHMS = ["HS256"]
LEEWAY_SECONDS = 30


class Role(StrEnum):
    """What a token's holder may do."""

    SUBJECT = "subject"
    SUPPORT = "support"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The verified holder of a token."""

    sub: str
    roles: frozenset[Role]
    auth_time: int | None = None

    @property
    def is_staff(self) -> bool:
        """Support or admin: may see every job's metadata."""
        return bool(self.roles & {Role.SUPPORT, Role.ADMIN})

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


class TokenAuthority:
    """Issues and verifies tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def issue(self, sub: str, roles: list[str], ttl_seconds: int = 3600) -> str:
        """A signed token for ``sub`` with ``roles``, valid ``ttl_seconds``."""
        now = int(time.time())
        claims = {
            "sub": sub,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "auth_time": now,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The principal a token names; a 401 problem when it is not valid."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None
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
        if auth_time is not None and not isinstance(auth_time, int):
            raise _unauthorized("the token's auth_time claim must be a number of seconds")
        return Principal(sub=sub, roles=roles, auth_time=auth_time)

    def authenticate(self, request: web.Request) -> Principal:
        """The principal behind the request's bearer token; 401 if there is none."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send a bearer token: Authorization: Bearer <JWT>")
        return self.verify(token.strip())


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
