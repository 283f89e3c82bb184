"""Signing subjects in through the platform's OpenID provider: the code flow with PKCE.

The privacy center (``service/privacy.py``) is an OpenID Connect relying party:

1. :meth:`OpenIdProvider.discover` reads ``{issuer}/.well-known/openid-configuration``
   (OpenID Connect Discovery 1.0 §4); the document must name the configured issuer
   exactly (§4.3) and its endpoints must be ``https://`` (``http://`` only on localhost).
2. :meth:`OpenIdProvider.start` makes a :class:`Flow`: ``state`` (against login CSRF),
   ``nonce`` (binds the ID token to this browser's flow) and a PKCE verifier whose
   S256 challenge goes to the authorization endpoint (RFC 7636 §4). A *fresh* flow
   asks for ``prompt=login`` and ``max_age=0``: the person proves who they are again.
3. :meth:`OpenIdProvider.finish` trades the code for tokens at the token endpoint
   (RFC 6749 §4.1.3; the client secret, when there is one, as HTTP Basic) and checks
   the ID token as the API checks its bearer tokens (:class:`service.auth.TokenAuthority`
   over the provider's JWKS: RS256 or ES256 only, ``iss`` the issuer, ``aud`` the client
   id, ``exp``/``nbf``/``iat`` with the configured leeway), then its ``nonce`` (Core §3.1.3.7),
   and, for a fresh flow, that ``auth_time`` is present.

Every failure is a :class:`SignInError` whose message says what was wrong; the provider
being unreachable is one too (``unavailable``), never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson

from jobs.settings import Settings
from service.auth import JwksClient, Principal, TokenAuthority
from service.problems import Problem

TIMEOUT_SECONDS = 10.0
MAX_BYTES = 256 * 1024
SCOPE = "openid email profile"


class SignInError(Exception):
    """Signing in did not work; the message says why. ``unavailable``: the provider is away."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class Flow:
    """One sign-in in progress, kept by the browser (signed) between start and callback."""

    state: str
    nonce: str
    verifier: str
    #: Where to go once signed in: a path of the privacy center.
    next: str
    #: A sign-in asked to be fresh (``prompt=login``, ``max_age=0``).
    fresh: bool

    def to_json(self) -> bytes:
        """The flow as the cookie holds it."""
        return orjson.dumps([self.state, self.nonce, self.verifier, self.next, self.fresh])

    @classmethod
    def from_json(cls, data: bytes) -> Flow:
        """A flow read back from :meth:`to_json`; ``ValueError`` if it is not one."""
        try:
            state, nonce, verifier, target, fresh = orjson.loads(data)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            raise ValueError("not a sign-in flow") from None
        if not all(isinstance(part, str) for part in (state, nonce, verifier, target)):
            raise ValueError("not a sign-in flow")
        return cls(state, nonce, verifier, target, bool(fresh))


def challenge(verifier: str) -> str:
    """The PKCE S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Endpoints:
    """What discovery found."""

    authorization: str
    token: str
    jwks: str


def _endpoint(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise SignInError(f"the provider's discovery document names no {name}")
    parts = urlsplit(value)
    if parts.scheme != "https" and not (
        parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}
    ):
        raise SignInError(f"the provider's {name} is not an https:// URL: {value[:120]}")
    return value


class OpenIdProvider:
    """The platform's OpenID provider, as ``HANDOVER_OIDC_*`` describe it."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        *,
        settings: Settings,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self._settings = settings
        self._endpoints: Endpoints | None = None
        self._authority: TokenAuthority | None = None
        self._lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenIdProvider | None:
        """The provider ``HANDOVER_OIDC_ISSUER`` names, if any."""
        if settings.oidc_issuer is None or settings.oidc_client_id is None:
            return None
        secret = settings.oidc_client_secret
        return cls(
            settings.oidc_issuer,
            settings.oidc_client_id,
            secret.reveal() if secret else None,
            settings=settings,
        )

    async def discover(self) -> Endpoints:
        """The provider's endpoints, read once (again after a failure)."""
        async with self._lock:
            if self._endpoints is None:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = await self._json("GET", url, "discovery document")
                if document.get("issuer") != self.issuer:
                    raise SignInError(
                        f"the discovery document names issuer {document.get('issuer')!r}, "
                        f"not {self.issuer!r}"
                    )
                methods = document.get("code_challenge_methods_supported")
                if isinstance(methods, list) and "S256" not in methods:
                    raise SignInError("the provider does not support PKCE with S256")
                self._endpoints = Endpoints(
                    _endpoint(document, "authorization_endpoint"),
                    _endpoint(document, "token_endpoint"),
                    _endpoint(document, "jwks_uri"),
                )
                self._authority = TokenAuthority(
                    None,
                    jwks=JwksClient(self._endpoints.jwks),
                    issuer=self.issuer,
                    audience=self.client_id,
                    leeway=self._settings.jwt_leeway.total_seconds(),
                    identity_claims=dict(self._settings.identity_claims),
                )
            return self._endpoints

    async def start(self, redirect_uri: str, target: str, *, fresh: bool) -> tuple[str, Flow]:
        """Where to send the browser to sign in, and the flow to keep until it is back."""
        endpoints = await self.discover()
        flow = Flow(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            next=target,
            fresh=fresh,
        )
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": SCOPE,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": challenge(flow.verifier),
            "code_challenge_method": "S256",
        }
        if fresh:
            query.update(prompt="login", max_age="0")
        separator = "&" if "?" in endpoints.authorization else "?"
        return f"{endpoints.authorization}{separator}{urlencode(query)}", flow

    async def finish(self, flow: Flow, code: str, redirect_uri: str) -> tuple[str, Principal]:
        """The ID token the code is traded for, verified, and who it names."""
        endpoints = await self.discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": flow.verifier,
        }
        headers = {}
        if self._client_secret is None:
            form["client_id"] = self.client_id
        else:
            # RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic.
            pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        answer = await self._json(
            "POST", endpoints.token, "token endpoint", data=form, headers=headers
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise SignInError("the token endpoint sent no ID token")
        who = await self.verify(id_token)
        if who.claims.get("nonce") != flow.nonce:
            raise SignInError("the ID token's nonce is not this sign-in's")
        if flow.fresh and who.auth_time is None:
            raise SignInError("the ID token does not say when you signed in (auth_time)")
        return id_token, who

    async def verify(self, id_token: str) -> Principal:
        """Who an ID token names, checked as the API checks bearer tokens."""
        await self.discover()
        assert self._authority is not None
        try:
            return await self._authority.verify(id_token)
        except Problem as exc:
            raise SignInError(
                f"the ID token was refused: {exc.detail}", unavailable=exc.status == 503
            ) from None

    async def _json(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(
                    method,
                    url,
                    data=data,
                    headers={"Accept": "application/json", **(headers or {})},
                    allow_redirects=False,
                ) as response,
            ):
                body = await response.content.read(MAX_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SignInError(
                f"the sign-in provider's {what} cannot be reached ({type(exc).__name__})",
                unavailable=True,
            ) from exc
        if len(body) > MAX_BYTES:
            raise SignInError(f"the sign-in provider's {what} answered more than {MAX_BYTES} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if status != 200:
            error = document.get("error") if isinstance(document, dict) else None
            raise SignInError(
                f"the sign-in provider's {what} answered {status}"
                + (f" ({str(error)[:80]})" if error else ""),
                unavailable=status >= 500,
            )
        if not isinstance(document, dict):
            raise SignInError(f"the sign-in provider's {what} is not a JSON object")
        return document


__all__ = ["Flow", "OpenIdProvider", "SignInError", "challenge"]
