"""HubSpot CRM (type ``hubspot``): the subject's contact record, and its GDPR delete.

Authenticates with a private app's access token (``Authorization: Bearer …``)::

    [connectors.crm]
    type = "hubspot"
    token = "pat-eu1-…"   # scopes crm.objects.contacts.read/.write, crm.schemas.contacts.read
    properties = ["email", "firstname", "lastname"]   # optional; default: every contact property
    max_response_mib = 32                             # optional; the most one answer may weigh
    objection_subscriptions = { direct_marketing = ["*"] }   # optional; this is the default
    rectifiable = { firstname = "text", lastname = "text", phone = "text" }   # the default

Endpoints used, as HubSpot documents them:

- find the contact: ``POST /crm/v3/objects/contacts/search`` with a filter
  ``{"propertyName": "email", "operator": "EQ", "value": …}``, paging with ``after``
  (https://developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm.md).
  A subject whose ``identities`` carry ``hubspot_contact_id`` is read by that id instead;
  a subject with neither raises :class:`~connectors.errors.Unidentified`.
- list the contact properties: ``GET /crm/v3/properties/contacts``
  (https://developers.hubspot.com/docs/api/crm/properties).
- read the contact with its properties: ``POST /crm/v3/objects/contacts/batch/read``
  with ``{"properties": […], "inputs": [{"id": …}]}`` (200, or 207 when some ids are gone)
  (https://developers.hubspot.com/docs/api-reference/latest/crm/objects/objects/batch/get-objects).
- erase: ``POST /crm/v3/objects/contacts/gdpr-delete`` with ``{"objectId": id}`` (204),
  which "permanently deletes a contact and all associated content to follow GDPR"
  (https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/basic/post-crm-v3-objects-contacts-gdpr-delete).
  The connector deletes by id, after the search found the contact: a GDPR delete by an
  email HubSpot does not know would put that address on a blocklist instead. Each
  delete (one contact) is one journaled step, so a receipt after a crash counts it; a
  404 (the contact is gone already) withdraws the step, which then counts nothing.
- objection (GDPR Art. 21): the subject's email subscription statuses are read with
  ``GET /communication-preferences/v3/status/email/{emailAddress}``
  (https://developers.hubspot.com/docs/api-reference/legacy/communication-preferences/v3/get-subscription),
  and each subscription type mapped to a purpose objected to that is ``SUBSCRIBED`` is
  ended with ``POST /communication-preferences/v3/unsubscribe``
  ``{"emailAddress", "subscriptionId"}``
  (https://developers.hubspot.com/docs/api-reference/legacy/communication-preferences/v3/unsubscribe-contact);
  the statuses are read again to verify. ``objection_subscriptions`` maps Handover's
  purposes to subscription type ids or names, ``"*"`` standing for every type; by
  default direct marketing ends every subscription (HubSpot's subscription types are its
  marketing emails). Scope ``communication_preferences.read_write``.
- rectification (GDPR Art. 16): ``PATCH /crm/v3/objects/contacts/{contactId}`` with
  ``{"properties": {name: value}}`` for each contact of the subject whose property differs
  (https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/basic/patch-crm-v3-objects-contacts-contactId),
  then read back with the batch read. ``rectifiable`` names the contact properties that
  may be corrected, each with its value type (``email`` ones identify the subject).
- health: ``GET /crm/v3/objects/contacts?limit=1``.

Rate limits (https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines):
private apps get 100–190 requests per 10 seconds and the search endpoints five per
second per token, so the client-side bucket defaults to 4 per second. A 429 carries
``{"errorType": "RATE_LIMIT", "policyName": …}``; without a ``Retry-After`` the
connector waits out HubSpot's 10-second window.

HubSpot's answers are not trusted to be well-formed: the search stops at 100 pages
and at an ``after`` cursor it was already given, each answer is bounded
(``max_response_mib``) and redirects are not followed (see
:mod:`connectors.httpclient`). Error messages name the operation and the endpoint;
HubSpot's error body, which may quote the contact, goes to the error's ``detail`` —
except a rectification's update, whose body may echo the new values: its detail is
:data:`NEW_VALUE_REFUSED`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

from connectors.base import Connector
from connectors.errors import ConnectorError, PermanentError, Unidentified
from connectors.httpclient import HttpClient, bearer
from connectors.items import Dataset, Item, Record, Subject
from connectors.options import Options
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    FieldChange,
    FieldRectification,
    ObjectionReport,
    PurposeObjection,
    Rectifiable,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
)

DEFAULT_BASE_URL = "https://api.hubapi.com"
CONTACT_ID_IDENTITY = "hubspot_contact_id"
"""The ``Subject.identities`` key that names a HubSpot contact id directly."""

_BATCH_SIZE = 100
_SEARCH_PAGE_SIZE = 100
_MAX_SEARCH_PAGES = 100
_RATE_LIMIT_WINDOW_SECONDS = 10.0
_EVERY_SUBSCRIPTION = "*"
_STATUS_PATH = "/communication-preferences/v3/status/email/{emailAddress}"

NEW_VALUE_REFUSED = (
    "HubSpot refused the update; its answer is not kept, as it may echo the new values"
)
"""The detail of a failed rectification update: new values must not outlive the job."""


class HubSpotConnector(Connector):
    """The subject's HubSpot contact: exported with its properties, erased by GDPR delete.

    Options: ``token`` (private app access token, required), ``base_url``,
    ``properties`` (names to export; default all), ``rate_limit`` (requests per
    second), ``timeout`` (seconds), ``max_response_mib``, ``objection_subscriptions``
    (purpose → subscription type ids or names, ``"*"`` for all). The contact is found
    by the subject's email or their ``hubspot_contact_id``.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"contact"})
    journals_commits: ClassVar[bool] = True
    identifiers: frozenset[str] = frozenset({"email", CONTACT_ID_IDENTITY})
    #: HubSpot is a US company: what the archive's index says unless configuration does.
    processing: Mapping[str, str] = {
        "recipient": "HubSpot, Inc. (Cambridge, Massachusetts, USA), as processor",
        "transfer": "to the USA (HubSpot, Inc.), under the EU-US Data Privacy Framework "
        "(adequacy decision, GDPR Art. 45) and the standard contractual clauses of its data "
        "processing agreement (Art. 46(2)(c))",
    }
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "contact",
            "contact",
            "the subject's contact record in HubSpot CRM with its properties",
            ("id", "createdAt", "updatedAt", "archived", "properties"),
        ),
    )

    def __init__(
        self,
        name: str,
        *,
        token: object = None,
        base_url: object = DEFAULT_BASE_URL,
        properties: object = None,
        rate_limit: object = 4.0,
        timeout: object = 30.0,
        max_response_mib: object = 32,
        objection_subscriptions: object = None,
        rectifiable: object = None,
        **unknown: Any,
    ) -> None:
        super().__init__(name, **unknown)
        options = Options(name)
        self._token = options.secret("token", token)
        self.rectifiable = _rectifiable(name, rectifiable)
        self.subscriptions = _subscriptions(name, objection_subscriptions)
        self.objection_purposes = frozenset(self.subscriptions)
        self.properties = (
            None if properties is None else options.text_list("properties", properties)
        )
        self.client = HttpClient(
            name,
            options.url("base_url", base_url),
            secrets=(self._token,),
            rate_limit=options.number("rate_limit", rate_limit),
            timeout=options.positive("timeout", timeout),
            default_retry_after=_RATE_LIMIT_WINDOW_SECONDS,
            max_response_bytes=options.mebibytes("max_response_mib", max_response_mib),
        )

    def __repr__(self) -> str:
        return f"HubSpotConnector(name={self.name!r}, base_url={self.client.base_url!r})"

    async def open(self) -> None:
        """Create the shared HTTP session."""
        await self.client.open()

    async def close(self) -> None:
        """Close the shared HTTP session."""
        await self.client.close()

    async def check(self) -> None:
        """List one contact: proves the token is accepted."""
        await self._request("GET", "/crm/v3/objects/contacts", "check", params={"limit": "1"})

    async def _request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        accept: Sequence[int] = (),
    ) -> tuple[int, Any]:
        response = await self.client.request(
            method,
            path,
            operation=operation,
            params=params,
            json=json,
            headers=bearer(self._token),
            accept=accept,
            path_template=path,
        )
        return response.status, response.json()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """The subject's contact record(s), with every requested property that has a value."""
        ids = await self._contact_ids(subject)
        if not ids:
            return
        properties = self.properties or await self._property_names()
        for contact in await self._read(ids, properties):
            yield Record("contact", contact)

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """GDPR-delete the subject's contact: deleted 1 when found, 0 when already gone."""
        ids = await self._contact_ids(subject)
        rule = retention.get("contact")
        if ids and rule is not None:
            kept = DatasetErasure(
                "contact",
                retained=len(ids),
                legal_basis=rule.legal_basis,
                retained_until=datetime.now(UTC) + rule.duration,
            )
            return ErasureReport(
                (kept,), note="HubSpot offers no way to block a contact; it was kept unchanged"
            )
        if dry_run:
            return ErasureReport(
                (DatasetErasure("contact", deleted=len(ids)),), note="dry run: nothing was erased"
            )
        deleted = 0
        for contact_id in ids:  # one journaled step per contact: one call deletes one
            await self.before_commit(ErasureReport((DatasetErasure("contact", deleted=1),)))
            status, _ = await self._request(
                "POST",
                "/crm/v3/objects/contacts/gdpr-delete",
                "GDPR delete contact",
                json={"objectId": contact_id},
                accept=(404,),
            )
            if status == 404:  # gone already: this step deleted nothing
                await self.withdraw()
                continue
            deleted += 1
            await self.after_commit()
        note = (
            "HubSpot permanently deleted the contact and its associated content (GDPR delete)"
            if deleted
            else "HubSpot holds no contact for the subject"
        )
        return ErasureReport((DatasetErasure("contact", deleted=deleted),), note=note)

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """HubSpot cannot restrict a contact; a subject it cannot be asked about is unidentified."""
        self.require_identifier(subject)
        return await super().restrict(subject, dry_run=dry_run)

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """Unsubscribe the subject's email from the subscription types mapped to ``purposes``.

        Only types the subject is subscribed to are changed; a repeat changes nothing.
        """
        email = await self._email(subject)
        statuses = await self._statuses(email) if email else []
        entries = []
        for purpose in purposes:
            wanted = self.subscriptions.get(purpose)
            if wanted is None:
                unmapped = f"{self.name}: no HubSpot subscription type is mapped to {purpose!r}"
                entries.append(PurposeObjection(purpose, supported=False, note=unmapped))
                continue
            matched = [s for s in statuses if _matches(s, wanted)]
            stopped = 0
            for status in matched:
                if status.get("status") != "SUBSCRIBED":
                    continue
                assert email is not None  # statuses are read by email
                await self._request(
                    "POST",
                    "/communication-preferences/v3/unsubscribe",
                    "unsubscribe",
                    json={"emailAddress": email, "subscriptionId": str(status["id"])},
                )
                stopped += 1
            note = None if email else "HubSpot holds no contact for the subject"
            targets = tuple(sorted(str(s.get("name") or s["id"]) for s in matched))
            entries.append(PurposeObjection(purpose, targets, stopped=stopped, note=note))
        return ObjectionReport(tuple(entries))

    async def objections_in_force(
        self, subject: Subject, purposes: Sequence[str]
    ) -> Mapping[str, bool]:
        """For each mapped purpose: whether the subject is subscribed to none of its types."""
        mapped = [purpose for purpose in purposes if purpose in self.subscriptions]
        if not mapped:
            return {}
        email = await self._email(subject)
        statuses = await self._statuses(email) if email else []
        return {
            purpose: not any(
                s.get("status") == "SUBSCRIBED"
                for s in statuses
                if _matches(s, self.subscriptions[purpose])
            )
            for purpose in mapped
        }

    async def rectify(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> RectificationReport:
        """Set each changed property on the subject's contact(s) where it differs."""
        ids = await self._contact_ids(subject)
        names = [change.field for change in changes]
        contacts = await self._read(ids, names) if ids else []
        changed = dict.fromkeys(names, 0)
        for contact in contacts:
            stale = {
                change.field: _property(change.value)
                for change in changes
                if contact["properties"].get(change.field) != _property(change.value)
            }
            if not stale:
                continue
            try:
                await self._request(
                    "PATCH",
                    f"/crm/v3/objects/contacts/{contact['id']}",
                    "update contact",
                    json={"properties": stale},
                )
            except ConnectorError as error:
                error.detail = NEW_VALUE_REFUSED
                raise
            for name in stale:
                changed[name] += 1
        note = None if ids else "HubSpot holds no contact for the subject"
        return RectificationReport(
            tuple(
                FieldRectification(c.dataset, c.field, changed[c.field], held=bool(contacts))
                for c in changes
            ),
            note=note,
        )

    async def rectifications_in_force(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> Sequence[bool]:
        """For each change: whether every contact of the subject holds the new value."""
        ids = await self._contact_ids(subject)
        contacts = await self._read(ids, [c.field for c in changes]) if ids else []
        return [
            all(c["properties"].get(change.field) == _property(change.value) for c in contacts)
            for change in changes
        ]

    async def _email(self, subject: Subject) -> str | None:
        """The subject's email: given, or read from the contact named by its id."""
        if subject.email:
            return subject.email
        known = subject.identifier(CONTACT_ID_IDENTITY)
        if not known:
            raise Unidentified(self.name, self.identifiers)
        for contact in await self._read([known], ["email"]):
            email = contact["properties"].get("email")
            if isinstance(email, str) and email:
                return email
        return None

    async def _statuses(self, email: str) -> list[dict[str, Any]]:
        """The email's subscription statuses (none when HubSpot does not know the address)."""
        status, found = await self._request_at(
            "GET",
            _STATUS_PATH.replace("{emailAddress}", quote(email, safe="")),
            _STATUS_PATH,
            "read subscription statuses",
            accept=(404,),
        )
        if status == 404:
            return []
        statuses = found.get("subscriptionStatuses") if isinstance(found, dict) else None
        if not isinstance(statuses, list) or not all(
            isinstance(item, dict) and "id" in item for item in statuses
        ):
            raise PermanentError(f"{self.name}: HubSpot answered without subscription statuses")
        return statuses

    async def _request_at(
        self,
        method: str,
        path: str,
        template: str,
        operation: str,
        *,
        accept: Sequence[int] = (),
    ) -> tuple[int, Any]:
        """A request whose path holds personal data: errors name ``template`` instead."""
        response = await self.client.request(
            method,
            path,
            operation=operation,
            headers=bearer(self._token),
            accept=accept,
            path_template=template,
        )
        return response.status, response.json()

    async def _contact_ids(self, subject: Subject) -> list[str]:
        known = subject.identifier(CONTACT_ID_IDENTITY)
        if known:
            return [contact["id"] for contact in await self._read([known], ["email"])]
        if subject.email:
            return await self._search(subject.email)
        raise Unidentified(self.name, self.identifiers)

    async def _search(self, email: str) -> list[str]:
        body: dict[str, Any] = {
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}
            ],
            "properties": ["email"],
            "limit": _SEARCH_PAGE_SIZE,
        }
        ids: list[str] = []
        given: set[str] = set()
        for page in range(1, _MAX_SEARCH_PAGES + 1):
            operation = f"search contact page {page}"
            _, found = await self._request(
                "POST", "/crm/v3/objects/contacts/search", operation, json=body
            )
            ids.extend(str(contact["id"]) for contact in _results(found, self.name, "id"))
            after = _next_after(found)
            if after is None:
                return ids
            if after in given:
                raise PermanentError(
                    f"{self.name}: {operation}: HubSpot gives an 'after' cursor already "
                    "followed: its paging goes round in a circle"
                )
            given.add(after)
            body["after"] = after
        raise PermanentError(
            f"{self.name}: the contact search did not end after {_MAX_SEARCH_PAGES} pages"
        )

    async def _property_names(self) -> list[str]:
        _, found = await self._request("GET", "/crm/v3/properties/contacts", "list properties")
        return [str(prop["name"]) for prop in _results(found, self.name, "name")]

    async def _read(self, ids: Sequence[str], properties: Sequence[str]) -> list[dict[str, Any]]:
        contacts = []
        for start in range(0, len(ids), _BATCH_SIZE):
            _, found = await self._request(
                "POST",
                "/crm/v3/objects/contacts/batch/read",
                "read contact",
                params={"archived": "false"},
                json={
                    "properties": list(properties),
                    "inputs": [
                        {"id": contact_id} for contact_id in ids[start : start + _BATCH_SIZE]
                    ],
                },
            )
            for contact in _results(found, self.name, "id"):
                contacts.append(
                    {
                        "id": str(contact["id"]),
                        "createdAt": contact.get("createdAt"),
                        "updatedAt": contact.get("updatedAt"),
                        "archived": contact.get("archived", False),
                        "properties": {
                            key: value
                            for key, value in (contact.get("properties") or {}).items()
                            if value is not None
                        },
                    }
                )
        return contacts


_VALUE_TYPES = ("text", "email", "integer", "number", "boolean")


def _rectifiable(name: str, raw: object) -> tuple[Rectifiable, ...]:
    """``rectifiable``: contact property → value type (default: first and last name, phone)."""
    if raw is None:
        raw = {"firstname": "text", "lastname": "text", "phone": "text"}
    if not isinstance(raw, Mapping) or not all(
        isinstance(prop, str) and prop and kind in _VALUE_TYPES for prop, kind in raw.items()
    ):
        raise PermanentError(
            f"connector {name!r}: rectifiable must map contact properties to value types "
            f'({", ".join(_VALUE_TYPES)}), such as {{ firstname = "text" }}'
        )
    return tuple(
        Rectifiable("contact", prop, kind, identity=kind == "email") for prop, kind in raw.items()
    )


def _property(value: Any) -> str:
    """A value as HubSpot stores a property: text (booleans as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _subscriptions(name: str, raw: object) -> dict[str, tuple[str, ...]]:
    """``objection_subscriptions``: purpose → subscription type ids or names (``"*"``: all)."""
    if raw is None:
        return {"direct_marketing": (_EVERY_SUBSCRIPTION,)}
    example = '{ direct_marketing = ["*"] }'
    if not isinstance(raw, Mapping) or not raw:
        raise PermanentError(
            f"connector {name!r}: objection_subscriptions must map purposes to subscription "
            f"types, such as {example}"
        )
    mapped = {}
    for purpose, types in raw.items():
        if (
            not isinstance(purpose, str)
            or not isinstance(types, list)
            or not types
            or not all(isinstance(t, str | int) and str(t) for t in types)
        ):
            raise PermanentError(
                f"connector {name!r}: objection_subscriptions.{purpose} must be a list of "
                f"subscription type ids or names, got {types!r}"
            )
        mapped[purpose] = tuple(str(t) for t in types)
    return mapped


def _matches(status: Mapping[str, Any], wanted: Sequence[str]) -> bool:
    """Whether a subscription status is of one of the ``wanted`` types."""
    return _EVERY_SUBSCRIPTION in wanted or bool(
        {str(status.get("id")), str(status.get("name"))} & set(wanted)
    )


def _results(document: Any, connector: str, key: str) -> list[dict[str, Any]]:
    """The ``results`` of an answer, each an object holding ``key``."""
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list) or not all(
        isinstance(item, dict) and key in item for item in results
    ):
        raise PermanentError(f"{connector}: HubSpot answered without a results list")
    return results


def _next_after(document: dict[str, Any]) -> str | None:
    """The search answer's ``paging.next.after`` cursor, or None on the last page."""
    paging = document.get("paging")
    following = paging.get("next") if isinstance(paging, dict) else None
    after = following.get("after") if isinstance(following, dict) else None
    return str(after) if after else None
