"""Hotjar (type ``hotjar``): the User Lookup API, for export and for deletion.

::

    [connectors.recordings]
    type = "hotjar"
    organization_id = 1234567
    client_id = "…"                # an API key pair made under Settings → API
    client_secret = "…"
    site_ids = [3456789]           # optional: also look up by user id on these sites
    user_id_identity = "hotjar"    # optional Subject.identities key; default the subject's id
    max_response_mib = 32          # optional: the most one answer may weigh

Endpoints used, from Hotjar's API reference
(https://help.hotjar.com/hc/en-us/articles/12244109929751-Hotjar-API-Reference):

- ``POST /v1/oauth/token``, form-encoded ``grant_type=client_credentials``,
  ``client_id``, ``client_secret``; answers ``{"access_token", "token_type",
  "expires_in"}`` (an hour). The token is reused until shortly before it expires
  and renewed once when the API answers 401.
- ``POST /v1/organizations/{organization_id}/user-lookup`` with a bearer token and
  ``{"data_subject_email": …, "data_subject_site_id_to_user_id_map": {site: user},
  "delete_all_hits": bool}``. Hotjar documents the lookup per organization: sites
  enter only through the site → user id map (user ids sent with the Identify API,
  https://help.hotjar.com/hc/en-us/articles/360033640653-Identify-API-Reference).

The lookup is asynchronous: with ``delete_all_hits`` false Hotjar emails a report,
a link to the data it found, to the data subject and to the organization's default
recipient (as its User Lookup tool does,
https://help.hotjar.com/hc/en-us/articles/360001749014-Understanding-the-User-Lookup-Tool);
the API itself only acknowledges the request. The export therefore yields one
``user_lookup`` record holding what the API answered, what was looked up, and
where the report goes. Erasure sends the same request with ``delete_all_hits``
true; Hotjar does not say how much it deleted, so the report counts nothing and
says so. The API allows 3,000 requests a minute; the client-side bucket defaults
to 10 a second, and a 429 without ``Retry-After`` waits 20 seconds.

The subject is looked up by email and, with ``site_ids``, by their user id on
those sites: a subject with neither raises :class:`~connectors.errors.Unidentified`
(an empty lookup would claim that Hotjar holds nothing).

Each answer is bounded (``max_response_mib``) and no redirect is followed (see
:mod:`connectors.httpclient`). Error messages name the operation, the endpoint, the
status and, from the token endpoint, the OAuth error code when it is one RFC 6749
§5.2 defines (``invalid_client``); the rest of Hotjar's answer goes to the error's
``detail``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.errors import PermanentError, Unidentified
from connectors.httpclient import HttpClient, bearer
from connectors.items import Dataset, Item, Record, Subject
from connectors.options import Options, Secret
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    ObjectionReport,
    PurposeObjection,
    RestrictionReport,
    RetentionRule,
)

DEFAULT_BASE_URL = "https://api.hotjar.io"

_TOKEN_PATH = "/v1/oauth/token"
_LOOKUP_PATH = "/v1/organizations/{organization_id}/user-lookup"
_OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)
"""The token endpoint's error codes, as RFC 6749 §5.2 defines them."""
_TOKEN_MARGIN_SECONDS = 60.0
_RATE_LIMITED_WAIT_SECONDS = 20.0
_REPORT_DELIVERY = (
    "Hotjar emails its lookup report, a link to the data it found, to the data "
    "subject's address and to the organization's default recipient; the API "
    "itself only acknowledges the request"
)


class _TokenCache:
    """The access token all jobs share (a pooled resource, like the HTTP session)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.token: Secret | None = None
        self.expires_at = 0.0

    def keep(self, token: Secret, lifetime: float) -> None:
        """Use ``token`` until shortly before its ``lifetime`` (seconds) runs out."""
        self.token = token
        self.expires_at = time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN_SECONDS)

    def forget(self) -> None:
        """Drop the token; the next request obtains a new one."""
        self.token = None
        self.expires_at = 0.0


class HotjarConnector(Connector):
    """Looks the subject up with Hotjar's User Lookup API, and deletes what it finds.

    Options: ``organization_id``, ``client_id``, ``client_secret`` (required),
    ``site_ids``, ``user_id_identity``, ``base_url``, ``rate_limit``, ``timeout``,
    ``max_response_mib``.
    ``identifiers`` are ``email`` and, with ``site_ids``, the identity holding the
    site user id (``user_id_identity``, or the subject's ``id``).
    """

    categories: ClassVar[frozenset[str]] = frozenset({"usage"})
    #: Hotjar relies on US sub-processors: what the archive's index says unless configuration does.
    processing: Mapping[str, str] = {
        "recipient": "Hotjar Ltd. (Malta), as processor, and its sub-processors",
        "transfer": "to the USA through Hotjar's US sub-processors, under standard contractual "
        "clauses (GDPR Art. 46(2)(c)) and, where they are certified, the EU-US Data Privacy "
        "Framework (Art. 45)",
    }
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "user_lookup",
            "usage",
            "what Hotjar's User Lookup answered for the subject, and where its report goes",
            ("organization_id", "looked_up_by", "answer", "report_delivery"),
            notice=True,
        ),
    )

    def __init__(
        self,
        name: str,
        *,
        organization_id: object = None,
        client_id: object = None,
        client_secret: object = None,
        site_ids: object = None,
        user_id_identity: object = None,
        base_url: object = DEFAULT_BASE_URL,
        rate_limit: object = 10.0,
        timeout: object = 30.0,
        max_response_mib: object = 32,
        **unknown: Any,
    ) -> None:
        super().__init__(name, **unknown)
        options = Options(name)
        self.organization_id = options.identifier("organization_id", organization_id)
        self._client_id = options.text("client_id", client_id)
        self._client_secret = options.secret("client_secret", client_secret)
        self.site_ids = () if site_ids is None else options.text_list("site_ids", site_ids)
        self.user_id_identity = options.optional_text("user_id_identity", user_id_identity)
        site_user = {self.user_id_identity or "id"} if self.site_ids else set()
        self.identifiers = frozenset({"email", *site_user})
        self.client = HttpClient(
            name,
            options.url("base_url", base_url),
            secrets=(self._client_secret,),
            rate_limit=options.number("rate_limit", rate_limit),
            timeout=options.positive("timeout", timeout),
            default_retry_after=_RATE_LIMITED_WAIT_SECONDS,
            max_response_bytes=options.mebibytes("max_response_mib", max_response_mib),
            error_code=_oauth_error,
        )
        self._tokens = _TokenCache()

    def __repr__(self) -> str:
        return (
            f"HotjarConnector(name={self.name!r}, organization_id={self.organization_id!r}, "
            f"base_url={self.client.base_url!r})"
        )

    async def open(self) -> None:
        """Create the shared HTTP session."""
        await self.client.open()

    async def close(self) -> None:
        """Close the shared HTTP session and forget the access token."""
        await self.client.close()
        self._tokens.forget()

    async def check(self) -> None:
        """Obtain an access token: proves the API key pair is accepted."""
        await self._access_token(renew_after=self._tokens.token)

    async def _access_token(self, *, renew_after: Secret | None = None) -> Secret:
        """The current token; a new one when it expires or when ``renew_after`` was refused."""
        cache = self._tokens
        async with cache.lock:
            token = cache.token
            if token is None or token is renew_after or time.monotonic() >= cache.expires_at:
                token, lifetime = await self._fetch_token()
                cache.keep(token, lifetime)
            return token

    async def _fetch_token(self) -> tuple[Secret, float]:
        response = await self.client.request(
            "POST",
            _TOKEN_PATH,
            operation="obtain access token",
            path_template=_TOKEN_PATH,
            form={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret.reveal(),
            },
        )
        answer = response.json()
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentError(f"{self.name}: obtain access token: the answer has no token")
        lifetime = answer.get("expires_in", 3600)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = 3600
        return Secret(token), float(lifetime)

    def _looked_up_by(self, subject: Subject) -> dict[str, Any]:
        """What the lookup sends: the email and the site user ids the subject has."""
        looked_up_by: dict[str, Any] = {}
        if subject.email:
            looked_up_by["data_subject_email"] = subject.email
        if self.site_ids:
            user_id = subject.identifier(self.user_id_identity or "id")
            if user_id:
                looked_up_by["data_subject_site_id_to_user_id_map"] = {
                    site_id: user_id for site_id in self.site_ids
                }
        if not looked_up_by:
            raise Unidentified(self.name, self.identifiers)
        return looked_up_by

    async def _user_lookup(self, looked_up_by: Mapping[str, Any], *, delete: bool) -> Any:
        operation = "user lookup with deletion" if delete else "user lookup"
        body = {**looked_up_by, "delete_all_hits": delete}
        path = _LOOKUP_PATH.format(organization_id=self.organization_id)
        token = await self._access_token()
        response = await self.client.request(
            "POST",
            path,
            operation=operation,
            json=body,
            headers=bearer(token),
            secrets=(token,),
            accept=(401,),
            path_template=_LOOKUP_PATH,
        )
        if response.status == 401:
            token = await self._access_token(renew_after=token)
            response = await self.client.request(
                "POST",
                path,
                operation=operation,
                json=body,
                headers=bearer(token),
                secrets=(token,),
                path_template=_LOOKUP_PATH,
            )
        return response.json()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """What Hotjar's User Lookup answers for the subject."""
        looked_up_by = self._looked_up_by(subject)
        answer = await self._user_lookup(looked_up_by, delete=False)
        yield Record(
            "user_lookup",
            {
                "organization_id": self.organization_id,
                "looked_up_by": looked_up_by,
                "answer": answer,
                "report_delivery": _REPORT_DELIVERY,
            },
        )

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Ask Hotjar to delete every hit of the subject's email and site user ids."""
        looked_up_by = self._looked_up_by(subject)
        rule = retention.get("user_lookup")
        if rule is not None:
            kept = DatasetErasure(
                "user_lookup",
                legal_basis=rule.legal_basis,
                retained_until=datetime.now(UTC) + rule.duration,
            )
            return ErasureReport(
                (kept,), note="Hotjar offers no way to block data; nothing was deleted"
            )
        if dry_run:
            return ErasureReport(
                (DatasetErasure("user_lookup"),),
                note="dry run: would ask Hotjar to delete every hit found for the subject",
            )
        await self._user_lookup(looked_up_by, delete=True)
        return ErasureReport(
            (DatasetErasure("user_lookup"),),
            note=(
                "Hotjar accepted the request to delete every hit found for the subject's "
                f"{' and '.join(_describe(key) for key in looked_up_by)}; it reports no counts"
            ),
        )

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Hotjar cannot restrict processing; a subject it cannot be asked about is unidentified."""
        self.require_identifier(subject)
        return await super().restrict(subject, dry_run=dry_run)

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """Hotjar cannot stop processing for a purpose: each purpose is reported
        unsupported, saying what its API does allow; a subject it cannot be asked about is
        unidentified."""
        self.require_identifier(subject)
        note = (
            "Hotjar offers no way to stop processing one user's data for a purpose: its API only "
            "looks up or deletes a user's data (ask for erasure); recording stops with the "
            "consent the site asks for"
        )
        return ObjectionReport(
            tuple(PurposeObjection(purpose, supported=False, note=note) for purpose in purposes)
        )


def _oauth_error(answer: Any) -> str | None:
    """The RFC 6749 error code of a token endpoint's answer, if it is one."""
    code = answer.get("error") if isinstance(answer, dict) else None
    return code if isinstance(code, str) and code in _OAUTH_ERRORS else None


def _describe(key: str) -> str:
    return "email" if key == "data_subject_email" else "site user ids"
