"""Google Analytics 4 (type ``google-analytics``): user deletion through the Admin API.

::

    [connectors.analytics]
    type = "google-analytics"
    property = "123456789"            # the GA4 property id (or "properties/123456789")
    access_token = "ya29.…"           # OAuth 2.0 access token, scope analytics.edit
    identifier = "client_id"          # user_id (default), client_id, app_instance_id,
                                      # or user_provided_data
    identity = "ga_client_id"         # the Subject.identities key holding it
    max_response_mib = 32             # optional: the most one answer may weigh

Erasure calls ``POST /v1alpha/{name=properties/*}:submitUserDeletion`` on
``https://analyticsadmin.googleapis.com`` with exactly one of ``userId``,
``clientId``, ``appInstanceId`` or ``userProvidedData`` in the body, and reads
``{"deletionRequestTime": …}`` back
(https://developers.google.com/analytics/devguides/config/admin/v1/rest/v1alpha/properties/submitUserDeletion).
``userProvidedData`` is normalised as that page asks: an email lowercased, spaces
removed, and dots before the ``@`` dropped for gmail.com/googlemail.com; a phone
number reduced to its digits with a ``+`` prefix. Without ``identity``, ``user_id``
takes the subject's id and ``user_provided_data`` the subject's email; ``client_id``
and ``app_instance_id`` need an ``identity`` to read from. Google's errors arrive as
``{"error": {"code", "message", "status"}}`` (https://cloud.google.com/apis/design/errors);
``RESOURCE_EXHAUSTED`` (429) without ``Retry-After`` waits 30 seconds. An error
message names the operation, the endpoint, the HTTP status and the ``status`` when it
is one of Google's canonical codes (``PERMISSION_DENIED``); Google's ``message`` goes
to the error's ``detail``. Each answer is bounded (``max_response_mib``) and no
redirect is followed (see :mod:`connectors.httpclient`).

The identifier the deletion is keyed by (the ``identity``, or the subject's id or
email) is the connector's one entry in ``identifiers``: a subject without it
raises :class:`~connectors.errors.Unidentified` from export, erase and restrict,
rather than being told that Google was asked.

Google answers with the time the request was accepted, never with what it
deleted, so the erasure report counts nothing and says so in its note; every
request is accepted again, which keeps a repeated erasure harmless.

Google Analytics has no API that returns what it holds on one user: the Admin API
manages properties and accepts deletions, and the Data API
(https://developers.google.com/analytics/devguides/reporting/data/v1) answers
aggregated reports, not one user's events. The export therefore yields one
``notice`` record that says so, names what was checked and which identifier the
erasure uses, rather than nothing. The access token is supplied by configuration
(obtain and rotate it outside Handover). The export and ``check`` read the property
(``GET /v1alpha/{name=properties/*}``,
https://developers.google.com/analytics/devguides/config/admin/v1/rest/v1alpha/properties/get),
so a refused token or an unknown property fails rather than passing unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.errors import PermanentError, Unidentified
from connectors.httpclient import HttpClient, bearer
from connectors.items import Dataset, Item, Record, Subject
from connectors.options import Options
from connectors.reports import (
    ErasureReport,
    ObjectionReport,
    PurposeObjection,
    RestrictionReport,
    RetentionRule,
)

DEFAULT_BASE_URL = "https://analyticsadmin.googleapis.com"
API_VERSION = "v1alpha"

IDENTIFIERS = {
    "user_id": "userId",
    "client_id": "clientId",
    "app_instance_id": "appInstanceId",
    "user_provided_data": "userProvidedData",
}
"""Configuration names of the identifiers, and the request fields that carry them."""

GOOGLE_ERROR_CODES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
)
"""Google's canonical error codes (``google.rpc.Code``), the ``status`` of an error answer."""

_PROPERTY_PATH = f"/{API_VERSION}/properties/{{property}}"
_DELETION_PATH = f"{_PROPERTY_PATH}:submitUserDeletion"
_RESOURCE_EXHAUSTED_WAIT_SECONDS = 30.0
_GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def normalise_user_provided_data(value: str) -> str:
    """An email or phone number normalised the way ``submitUserDeletion`` asks."""
    text = "".join(value.split())
    if "@" not in text:
        return "+" + re.sub(r"\D", "", text)
    local, _, domain = text.lower().rpartition("@")
    if domain in _GMAIL_DOMAINS:
        local = local.replace(".", "")
    return f"{local}@{domain}"


class GoogleAnalyticsConnector(Connector):
    """Erases through Google Analytics' user deletion API; exports a notice, not data.

    Options: ``property`` (required), ``access_token`` (required), ``identifier``,
    ``identity``, ``base_url``, ``rate_limit`` (requests per second), ``timeout``,
    ``max_response_mib``.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"usage"})
    #: Google LLC is a US company: what the archive's index says unless configuration does.
    processing: Mapping[str, str] = {
        "recipient": "Google Ireland Ltd. and Google LLC (USA), as processors (Google Analytics)",
        "transfer": "to the USA (Google LLC), under the EU-US Data Privacy Framework (adequacy "
        "decision, GDPR Art. 45) and Google's standard contractual clauses (Art. 46(2)(c))",
    }
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "notice",
            "usage",
            "what Google Analytics holds on the subject and why none of it can be exported",
            ("processor", "property", "statement", "checked", "identifier"),
            notice=True,
        ),
    )

    def __init__(
        self,
        name: str,
        *,
        property: object = None,
        access_token: object = None,
        identifier: object = "user_id",
        identity: object = None,
        base_url: object = DEFAULT_BASE_URL,
        rate_limit: object = 5.0,
        timeout: object = 30.0,
        max_response_mib: object = 32,
        **unknown: Any,
    ) -> None:
        super().__init__(name, **unknown)
        options = Options(name)
        property_id = options.identifier("property", property).removeprefix("properties/")
        if not property_id.isdigit():
            raise options.error("property", f"must be a GA4 property id (digits), got {property!r}")
        self.property = f"properties/{property_id}"
        self._token = options.secret("access_token", access_token)
        if identifier not in IDENTIFIERS:
            raise options.error("identifier", f"must be one of {', '.join(IDENTIFIERS)}")
        self.identifier = str(identifier)
        self.identity = options.optional_text("identity", identity)
        if self.identity is None and self.identifier in ("client_id", "app_instance_id"):
            raise options.error(
                "identity",
                f"is required with identifier = {self.identifier!r}: the "
                "Subject.identities key that holds it",
            )
        self.identifiers = frozenset({self._identity_name()})
        self.client = HttpClient(
            name,
            options.url("base_url", base_url),
            secrets=(self._token,),
            rate_limit=options.number("rate_limit", rate_limit),
            timeout=options.positive("timeout", timeout),
            default_retry_after=_RESOURCE_EXHAUSTED_WAIT_SECONDS,
            max_response_bytes=options.mebibytes("max_response_mib", max_response_mib),
            error_code=_google_error_code,
        )

    def __repr__(self) -> str:
        return (
            f"GoogleAnalyticsConnector(name={self.name!r}, property={self.property!r}, "
            f"base_url={self.client.base_url!r})"
        )

    async def open(self) -> None:
        """Create the shared HTTP session."""
        await self.client.open()

    async def close(self) -> None:
        """Close the shared HTTP session."""
        await self.client.close()

    async def check(self) -> None:
        """Read the property: proves the token and the property id are accepted."""
        await self._read_property()

    async def _read_property(self) -> Mapping[str, Any]:
        response = await self.client.request(
            "GET",
            f"/{API_VERSION}/{self.property}",
            operation="read property",
            headers=bearer(self._token),
            path_template=_PROPERTY_PATH,
        )
        answer = response.json()
        return answer if isinstance(answer, dict) else {}

    def _identity_name(self) -> str:
        """The subject's identifier the deletion is keyed by (``id``, ``email`` or an identity)."""
        if self.identity is not None:
            return self.identity
        return "id" if self.identifier == "user_id" else "email"

    def _describe_identity(self) -> str:
        if self.identity is not None:
            return f"identities[{self.identity!r}]"
        return "the subject's id" if self.identifier == "user_id" else "the subject's email"

    def subject_identifier(self, subject: Subject) -> str:
        """The value sent for ``subject``; :class:`Unidentified` when the subject has none."""
        value = subject.identifier(self._identity_name())
        if not value:
            raise Unidentified(self.name, self.identifiers)
        if self.identifier == "user_provided_data":
            return normalise_user_provided_data(value)
        return value

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """One notice: the property was reached, and it offers no per-user export."""
        self.subject_identifier(subject)
        found = await self._read_property()
        shown = found.get("displayName")
        reached = self.property if not shown else f"{self.property} ({shown})"
        yield Record(
            "notice",
            {
                "processor": "Google Analytics 4",
                "property": self.property,
                "statement": (
                    "Google Analytics keeps usage measurements linked to a pseudonymous "
                    "identifier, but offers no API that returns the data held on one user, "
                    "so none could be exported. An erasure asks Google to delete it."
                ),
                "checked": [
                    f"Analytics Admin API: property {reached} answered with this access token",
                    "Analytics Admin API: manages properties and accepts user deletion "
                    "requests (properties.submitUserDeletion); it has no per-user read",
                    "Analytics Data API: answers aggregated reports, not one user's events",
                ],
                "identifier": f"{self.identifier} from {self._describe_identity()}",
            },
        )

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Submit a user deletion request for the subject's identifier."""
        value = self.subject_identifier(subject)
        if dry_run:
            return ErasureReport(
                note=f"dry run: would ask Google Analytics to delete the user by {self.identifier}"
            )
        response = await self.client.request(
            "POST",
            f"/{API_VERSION}/{self.property}:submitUserDeletion",
            operation="submit user deletion",
            json={IDENTIFIERS[self.identifier]: value},
            headers=bearer(self._token),
            path_template=_DELETION_PATH,
        )
        answer = response.json()
        accepted_at = answer.get("deletionRequestTime") if isinstance(answer, dict) else None
        if not isinstance(accepted_at, str):
            raise PermanentError(
                f"{self.name}: submit user deletion: the answer has no deletionRequestTime"
            )
        return ErasureReport(
            note=(
                f"Google Analytics accepted the request to delete the user by "
                f"{self.identifier} from {self.property} at {accepted_at}; Google deletes "
                "asynchronously and reports no counts"
            )
        )

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Google Analytics cannot restrict a user; one it cannot be asked about is unidentified."""
        self.subject_identifier(subject)
        return await super().restrict(subject, dry_run=dry_run)

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """Google Analytics cannot stop processing for a purpose: each purpose is reported
        unsupported, saying what its API does allow; a subject it cannot be asked about is
        unidentified."""
        self.subject_identifier(subject)
        note = (
            "Google Analytics offers no way to stop processing one user's data for a purpose: its "
            "Admin API only deletes a user's data (ask for erasure); collection for analytics "
            "stops with the consent the site asks for"
        )
        return ObjectionReport(
            tuple(PurposeObjection(purpose, supported=False, note=note) for purpose in purposes)
        )


def _google_error_code(answer: Any) -> str | None:
    """The canonical ``status`` of a Google error answer, if it is one."""
    error = answer.get("error") if isinstance(answer, dict) else None
    status = error.get("status") if isinstance(error, dict) else None
    return status if isinstance(status, str) and status in GOOGLE_ERROR_CODES else None
