"""A small OpenID provider for tests: a real HTTP server (aiohttp) on a free port.

It serves discovery, its JWKS (one ES256 key), ``/authorize`` and ``/token``, and
plays the platform's identity provider in the code flow with PKCE: ``/authorize``
signs in whoever the test made :attr:`LocalProvider.person` (no form to fill),
remembers when they last proved who they are (``prompt=login`` or ``max_age=0``
makes that now), and sends the browser back with a code; ``/token`` checks the
client's secret, the redirect URI and the PKCE verifier against the challenge, and
answers an ID token carrying the flow's ``nonce`` and ``auth_time``. A test can make
it misbehave (:attr:`LocalProvider.tamper`) to check that Handover refuses.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec

CLIENT_ID = "handover-privacy"
CLIENT_SECRET = "provider-client-secret"


@dataclass
class Grant:
    """What ``/authorize`` promised for one code."""

    redirect_uri: str
    challenge: str
    nonce: str
    sub: str
    auth_time: int


@dataclass
class LocalProvider:
    """The provider's state, which tests read and change."""

    issuer: str = ""
    #: Who signs in at ``/authorize``, with their claims.
    person: str = "alice"
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: When each person last proved who they are (unix seconds).
    authenticated: dict[str, int] = field(default_factory=dict)
    #: ``nonce``, ``aud``, ``key`` or ``iss``: the next ID tokens get that wrong.
    tamper: str | None = None
    #: The token requests received, as forms, and their client (Basic auth user).
    token_requests: list[tuple[str | None, dict[str, str]]] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    _codes: dict[str, Grant] = field(default_factory=dict)
    _key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    _kid: str = "test-key-1"

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self._kid, "use": "sig", "alg": "ES256"}]}

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": grant.sub,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 600,
            "nonce": grant.nonce,
            "auth_time": grant.auth_time,
            **self.claims.get(grant.sub, {}),
        }
        key: ec.EllipticCurvePrivateKey = self._key
        if self.tamper == "nonce":
            claims["nonce"] = "another-flow"
        elif self.tamper == "aud":
            claims["aud"] = "another-client"
        elif self.tamper == "iss":
            claims["iss"] = "https://impostor.example"
        elif self.tamper == "key":
            key = ec.generate_private_key(ec.SECP256R1())
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": self._kid})

    # The endpoints.

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return web.Response(status=400, text="unknown client or response type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return web.Response(status=400, text="PKCE with S256 is required")
        now = int(time.time())
        if query.get("prompt") == "login" or query.get("max_age") == "0":
            self.authenticated[self.person] = now
        auth_time = self.authenticated.setdefault(self.person, now)
        code = secrets.token_urlsafe(24)
        self._codes[code] = Grant(
            query["redirect_uri"], query["code_challenge"], query["nonce"], self.person, auth_time
        )
        back = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        raise web.HTTPFound(back)

    async def token(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        client = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            if (client, secret) != (CLIENT_ID, CLIENT_SECRET):
                return web.json_response({"error": "invalid_client"}, status=401)
        self.token_requests.append((client, form))
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != grant.challenge:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": self.id_token(grant),
            }
        )


@asynccontextmanager
async def local_provider() -> AsyncIterator[LocalProvider]:
    """A provider listening on 127.0.0.1, its issuer its own base URL."""
    provider = LocalProvider()
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", provider.discovery)
    app.router.add_get("/jwks", provider.keys)
    app.router.add_get("/authorize", provider.authorize)
    app.router.add_post("/token", provider.token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    provider.issuer = str(server.make_url("")).rstrip("/")
    try:
        yield provider
    finally:
        await server.close()


__all__ = ["CLIENT_ID", "CLIENT_SECRET", "LocalProvider", "local_provider"]
