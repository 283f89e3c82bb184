"""Compelled disclosures: an authority's order, the export it compels, and telling the subject.

A disclosure is two things. Its work is a job of kind ``disclosure``: the export pipeline
(:mod:`jobs.export`) run over the order's scope, its archive addressed to the authority
(the signed manifest names the recipient and the order), never shown to the subject nor
downloadable through the subject's API; the authority fetches it through a one-time,
expiring link (:class:`AuthorityLink`). Its record is an entry in the register kept
here, which outlives the job (Handover's own retention, :mod:`jobs.records`, never
touches these keys): the order, the notice rule and every change to it.

The notice rule says when the subject is told (the ``disclosed`` notice, :mod:`jobs.notices`):

- ``now``: queued once the authority fetched the archive;
- ``deferred``: not before ``until``, for a legal reason, and only once the archive was
  fetched; the deferral may be extended only with a new reason and a later date, each
  extension kept (:attr:`Disclosure.deferrals`) and audited;
- ``never``: the law forbids telling the subject (the reason is recorded); nothing is sent.

Nothing is disclosed until the authority fetched the archive (:attr:`Disclosure.fetched_at`,
its date the first fetch's): a disclosure whose job failed or was canceled, or whose archive
was never fetched, is never told nor listed. The fetch tells the subject if they may be told
then; a notice due later, or whose telling failed midway, waits in the due set, which the
worker's cron (:meth:`DisclosureRegister.tell_due`) walks every minute. Telling is claimed
first, in the transaction that checks the subject may be told
(:attr:`Disclosure.telling_since`; an extension is refused from then on), then the notice
queued, then its outcome recorded. A link is claimed for one fetch
(:meth:`DisclosureRegister.claim`), given back if the archive was not sent whole, and the
fetch recorded only after its last byte (:meth:`DisclosureRegister.fetched`).

Once the subject may be told (:meth:`Disclosure.may_tell`) and only then, the subject's
later exports list the disclosure among the recipients of their data (GDPR Art. 15(1)(c);
:func:`recipients_of`). Until it is told, the subject's email address is kept with the
entry (never shown); once the notice is queued it is forgotten.

Every change is audited: ``disclosure.requested``
(:meth:`jobs.commands.Commands.request_disclosure`), ``disclosure.deferral_extended``,
``disclosure.link_issued``, ``disclosure.archive_fetched``, ``disclosure.notice_queued`` (or
``disclosure.notice_not_sent``, saying why).

Layout: ``{ns}disclosure:{id}`` (JSON of the :class:`Disclosure`; its id is its job's),
``{ns}disclosures:subject:{subject}`` (set of ids), ``{ns}disclosures:due`` (ids of
fetched disclosures whose notice is not told yet, by the date it is due,
:attr:`Disclosure.due_at`), ``{ns}disclosure-link-used:{nonce}`` (a link being or having
been used, until it would have expired anyway, plus :data:`LINK_SKEW`).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import WatchError

from jobs.audit import AuditEntry
from jobs.model import (
    DisclosureOrder,
    Identity,
    InvalidRequest,
    Job,
    JobStatus,
    epoch_ms,
    iso,
    utcnow,
)
from jobs.notices import notice_state, notify_subject
from jobs.resources import Resources
from jobs.store import JobNotFound

NoticeRule = Literal["now", "deferred", "never"]
#: The path the authority fetches the archive from; the token is the capability.
ARCHIVE_PATH = "/v1/disclosures/{disclosure_id}/archive"
#: The longest an authority link may live.
MAX_LINK_HOURS = 168
#: How much longer than a link's expiry its spent mark is kept: API instances whose clocks
#: run behind must still find it spent.
LINK_SKEW_SECONDS = 3600
#: How long a claim to tell the subject stands before another notifier (the cron) may take
#: it over: the first one died between its claim and its record.
TELLING_HOLD = timedelta(minutes=10)
log = logging.getLogger(__name__)
_TOKEN = re.compile(r"([0-9A-HJKMNP-TV-Z]{26})\.([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{32})")


class DisclosureNotFound(Exception):
    """No disclosure of this id is in the register."""

    def __init__(self, disclosure_id: str) -> None:
        super().__init__(f"no disclosure {disclosure_id}")
        self.disclosure_id = disclosure_id


class LinkRefused(Exception):
    """An authority link that cannot be used: ``invalid``, ``expired``, ``used`` or ``gone``."""

    def __init__(self, reason: Literal["invalid", "expired", "used", "gone"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Deferral(BaseModel):
    """One deferral of the subject's notice: until when, the legal reason, who, when."""

    model_config = ConfigDict(extra="forbid")

    until: datetime
    reason: str
    by: str
    at: datetime


class IssuedLink(BaseModel):
    """An authority link issued: its nonce, expiry, who issued it, and when it was used."""

    model_config = ConfigDict(extra="forbid")

    nonce: str
    expires_at: datetime
    by: str
    at: datetime
    used_at: datetime | None = None


class Disclosure(BaseModel):
    """A disclosure in the register: the order, the notice rule and its history."""

    model_config = ConfigDict(extra="forbid")

    id: str
    subject: str
    created_at: datetime
    created_by: str
    order: DisclosureOrder
    rule: NoticeRule
    #: Why the subject is never told (rule ``never``).
    reason: str | None = None
    #: The deferral and each extension, oldest first (rule ``deferred``).
    deferrals: list[Deferral] = Field(default_factory=list)
    #: When the authority first fetched the archive: the date of the disclosure.
    fetched_at: datetime | None = None
    #: Since when a notifier claimed the telling (:meth:`DisclosureRegister.tell`): the
    #: deferral can no longer be extended; another notifier waits :data:`TELLING_HOLD`.
    telling_since: datetime | None = None
    #: When the subject's notice was queued (or found it could not be).
    told_at: datetime | None = None
    #: What became of the notice: ``queued``, or ``not sent: …`` saying why (``skipped``:
    #: no address or notices off, the reason on the job's timeline).
    told: str | None = None
    links: list[IssuedLink] = Field(default_factory=list)
    #: The subject's address until the notice is queued; never shown.
    address: str | None = Field(default=None, repr=False)
    locale: str | None = None

    @property
    def deferred_until(self) -> datetime | None:
        """The date the notice is deferred to now (after every extension)."""
        return self.deferrals[-1].until if self.deferrals else None

    def may_tell(self, now: datetime) -> bool:
        """Whether the subject may be told at ``now``: the notice already went, or the
        archive was fetched and the rule is ``now`` or its deferral ended."""
        if self.told_at is not None:
            return True
        if self.fetched_at is None or self.rule == "never":
            return False
        until = self.deferred_until
        return self.rule == "now" or (until is not None and until <= now)

    @property
    def due_at(self) -> datetime | None:
        """When the subject's notice is due (its place in the due set): ``None`` until the
        archive is fetched, once told, and for rule ``never``."""
        if self.fetched_at is None or self.told_at is not None or self.rule == "never":
            return None
        until = self.deferred_until
        return max(self.fetched_at, until) if until is not None else self.fetched_at

    def view(self) -> dict[str, Any]:
        """The entry as staff see it (never the address, nor the notifier's claim)."""
        return {
            **self.model_dump(mode="json", exclude={"address", "telling_since"}),
            "deferred_until": iso(self.deferred_until),
        }

    def recipient(self) -> dict[str, str]:
        """How the subject's own archives name this recipient (Art. 15(1)(c)); only once
        the archive was fetched (``ValueError`` before: nothing was disclosed)."""
        if self.fetched_at is None:
            raise ValueError(f"disclosure {self.id}: nothing was disclosed, the archive unfetched")
        return {
            "recipient": self.order.authority,
            "order_reference": self.order.reference,
            "legal_basis": self.order.legal_basis,
            "disclosed_at": iso(self.fetched_at),
        }


@dataclass(frozen=True)
class AuthorityLink:
    """A one-time link to a disclosure's archive: the disclosure, a nonce, its expiry (epoch s)."""

    disclosure_id: str
    nonce: str
    expires: int

    def token(self, resources: Resources) -> str:
        """The link's token: its fields and their MAC."""
        body = f"{self.disclosure_id}.{self.nonce}.{self.expires}"
        return f"{body}.{_mac(resources, body)}"

    def path(self, resources: Resources) -> str:
        """The link's path and query."""
        where = ARCHIVE_PATH.replace("{disclosure_id}", self.disclosure_id)
        return f"{where}?token={self.token(resources)}"

    @classmethod
    def parse(
        cls, resources: Resources, disclosure_id: str, token: str, now: float | None = None
    ) -> AuthorityLink:
        """The link ``token`` stands for; :class:`LinkRefused` if forged, another's, or expired."""
        found = _TOKEN.fullmatch(token)
        body, _, mac = token.rpartition(".")
        if found is None or not hmac.compare_digest(mac, _mac(resources, body)):
            raise LinkRefused("invalid", "this disclosure link is not valid")
        link = cls(found[1], found[2], int(found[3]))
        if link.disclosure_id != disclosure_id:
            raise LinkRefused("invalid", "this disclosure link is not valid")
        if link.expires <= (time.time() if now is None else now):
            expired = iso(datetime.fromtimestamp(link.expires, UTC))
            raise LinkRefused("expired", f"this disclosure link expired on {expired}")
        return link


def _mac(resources: Resources, body: str) -> str:
    return resources.signer.mac(b"disclosure link", body.encode())[:32]


@dataclass(frozen=True)
class NoticeRequest:
    """The notice rule as asked: the rule, its legal reason, a deferral's date."""

    rule: NoticeRule
    reason: str | None = None
    until: datetime | None = None

    def checked(self, now: datetime) -> NoticeRequest:
        """The rule, refused unless it is complete: a reason for ``deferred`` and ``never``,
        a future date for ``deferred`` and no date otherwise."""
        reason = (self.reason or "").strip() or None
        if self.rule != "now" and reason is None:
            raise InvalidRequest(
                "notice_reason", f"a {self.rule} notice needs the legal reason the law gives"
            )
        if self.rule == "deferred":
            if self.until is None:
                raise InvalidRequest("notice_until", "a deferred notice needs the date it ends")
            if self.until <= now:
                raise InvalidRequest("notice_until", f"{iso(self.until)} is not in the future")
        elif self.until is not None:
            raise InvalidRequest(
                "notice_until", f"only a deferred notice has a date, not {self.rule}"
            )
        until = self.until.astimezone(UTC) if self.until is not None else None
        return NoticeRequest(self.rule, reason, until)


class DisclosureRegister:
    """The register in Redis: entries, deferred notices, spent links; each change audited."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.redis: Any = resources.redis
        self.ns = resources.store.ns
        self.due = f"{self.ns}disclosures:due"

    def key(self, disclosure_id: str) -> str:
        """Where one disclosure is kept."""
        return f"{self.ns}disclosure:{disclosure_id}"

    def _subject_key(self, subject: str) -> str:
        return f"{self.ns}disclosures:subject:{subject}"

    def new(
        self, job: Job, order: DisclosureOrder, notice: NoticeRequest, identity: Identity
    ) -> Disclosure:
        """The entry of a disclosure job about to be submitted (``notice`` checked already)."""
        deferrals = (
            [
                Deferral(
                    until=notice.until,
                    reason=notice.reason or "",
                    by=job.requested_by,
                    at=job.created_at,
                )
            ]
            if notice.rule == "deferred" and notice.until is not None
            else []
        )
        return Disclosure(
            id=job.id,
            subject=job.subject,
            created_at=job.created_at,
            created_by=job.requested_by,
            order=order,
            rule=notice.rule,
            reason=notice.reason if notice.rule == "never" else None,
            deferrals=deferrals,
            address=identity.identifiers.get("email") if notice.rule != "never" else None,
            locale=job.options.locale,
        )

    async def add(self, disclosure: Disclosure) -> None:
        """Enter ``disclosure`` (before its job is submitted, so its rule is never lost)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(disclosure.id), disclosure.model_dump_json())
            pipe.sadd(self._subject_key(disclosure.subject), disclosure.id)
            await pipe.execute()

    async def remove(self, disclosure: Disclosure) -> None:
        """Take back an entry whose job could not be submitted."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(disclosure.id))
            pipe.srem(self._subject_key(disclosure.subject), disclosure.id)
            pipe.zrem(self.due, disclosure.id)
            await pipe.execute()

    async def get(self, disclosure_id: str) -> Disclosure:
        """One disclosure; :class:`DisclosureNotFound` if none has this id."""
        raw = await self.redis.get(self.key(disclosure_id))
        if raw is None:
            raise DisclosureNotFound(disclosure_id)
        return Disclosure.model_validate_json(raw)

    async def of_subject(self, subject: str) -> list[Disclosure]:
        """Every disclosure about ``subject``, oldest first."""
        ids = sorted(raw.decode() for raw in await self.redis.smembers(self._subject_key(subject)))
        if not ids:
            return []
        raws = await self.redis.mget([self.key(disclosure_id) for disclosure_id in ids])
        return [Disclosure.model_validate_json(raw) for raw in raws if raw is not None]

    def _audit(
        self, disclosure: Disclosure, actor: str, action: str, details: dict[str, Any]
    ) -> AuditEntry:
        return self.resources.audit.entry(
            actor,
            action,
            disclosure.id,
            kind="disclosure",
            subject=self.resources.signer.pseudonym(disclosure.subject),
            **details,
        )

    async def _change(
        self,
        disclosure_id: str,
        change: Callable[[Disclosure], tuple[str, str, dict[str, Any]] | bool | None],
    ) -> Disclosure:
        """Apply ``change`` and write the entry, its place in the due set and its audit
        entry in one ``MULTI``. ``change`` returns the audit entry's actor, action and
        details; ``True`` for a change written without an audit entry (bookkeeping); or
        ``None`` when it changes nothing: nothing is written."""
        key = self.key(disclosure_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise DisclosureNotFound(disclosure_id)
                    disclosure = Disclosure.model_validate_json(raw)
                    changed = change(disclosure)
                    if not changed:
                        await pipe.reset()
                        return disclosure
                    entry = None if isinstance(changed, bool) else self._audit(disclosure, *changed)
                    pipe.multi()
                    pipe.set(key, disclosure.model_dump_json())
                    due_at = disclosure.due_at
                    if due_at is not None:
                        pipe.zadd(self.due, {disclosure.id: epoch_ms(due_at)})
                    else:
                        pipe.zrem(self.due, disclosure.id)
                    if entry is not None:
                        pipe.xadd(entry.stream, {"body": entry.body})
                    await pipe.execute()
                except WatchError:
                    continue
                break
        self.resources.audit.seal_soon()
        return disclosure

    async def extend(
        self,
        by: str,
        disclosure_id: str,
        *,
        until: datetime,
        reason: str,
        now: datetime | None = None,
    ) -> Disclosure:
        """Defer the subject's notice further: only a deferred notice not yet told, to a later
        date, with a reason not given before."""
        now = now or utcnow()
        reason = reason.strip()
        until = until.astimezone(UTC)

        def extended(disclosure: Disclosure) -> tuple[str, str, dict[str, Any]]:
            current = disclosure.deferred_until
            if disclosure.rule != "deferred" or current is None:
                raise InvalidRequest(
                    "until", f"the subject's notice is {disclosure.rule}, not deferred"
                )
            if disclosure.told_at is not None or disclosure.telling_since is not None:
                raise InvalidRequest("until", "the subject is being told already")
            if current <= now:
                raise InvalidRequest(
                    "until",
                    f"the deferral ended on {iso(current)}: the subject may be told already",
                )
            if until <= current:
                raise InvalidRequest(
                    "until", f"must come after the current deferral, {iso(current)}"
                )
            if not reason or reason in {d.reason for d in disclosure.deferrals}:
                raise InvalidRequest("reason", "an extension needs a new legal reason")
            disclosure.deferrals.append(Deferral(until=until, reason=reason, by=by, at=now))
            details = {"until": iso(until), "extension": len(disclosure.deferrals) - 1}
            return by, "disclosure.deferral_extended", details

        return await self._change(disclosure_id, extended)

    async def issue_link(
        self, by: str, job: Job, hours: int, now: datetime | None = None
    ) -> tuple[AuthorityLink, datetime]:
        """A one-time link to the disclosure's archive, expiring in ``hours`` (or with the
        archive, if sooner); the archive must be ready."""
        now = now or utcnow()
        result = job.result
        if result is None or job.status is not JobStatus.SUCCEEDED or result.expires_at <= now:
            raise InvalidRequest(
                "disclosure", f"job {job.id} is {job.status.value}: no archive to send"
            )
        expires = min(int(now.timestamp()) + hours * 3600, int(result.expires_at.timestamp()))
        link = AuthorityLink(job.id, secrets.token_hex(16), expires)
        expires_at = datetime.fromtimestamp(expires, UTC)

        def issued(disclosure: Disclosure) -> tuple[str, str, dict[str, Any]]:
            disclosure.links.append(
                IssuedLink(nonce=link.nonce, expires_at=expires_at, by=by, at=now)
            )
            return by, "disclosure.link_issued", {"expires_at": iso(expires_at)}

        await self._change(job.id, issued)
        return link, expires_at

    def _spent_key(self, link: AuthorityLink) -> str:
        return f"{self.ns}disclosure-link-used:{link.nonce}"

    async def claim(self, link: AuthorityLink) -> None:
        """Take ``link`` for one fetch; :class:`LinkRefused` (``used``) if it was taken
        already. The mark outlives the link's expiry by :data:`LINK_SKEW_SECONDS`."""
        ttl_ms = max(1, int((link.expires + LINK_SKEW_SECONDS - time.time()) * 1000))
        if not await self.redis.set(self._spent_key(link), 1, nx=True, px=ttl_ms):
            raise LinkRefused("used", "this disclosure link was used already: each works once")

    async def release(self, link: AuthorityLink) -> None:
        """Give back a link claimed for a fetch that did not complete: it works again."""
        await self.redis.delete(self._spent_key(link))

    async def fetched(self, link: AuthorityLink, now: datetime | None = None) -> Disclosure:
        """Record that the archive was sent whole through ``link`` (claimed): the link's
        use, the disclosure's date (the first fetch), the audit entry and a ``downloaded``
        event on the job; then tell the subject if they may be told now (should that fail,
        the due set keeps the notice for the cron)."""
        now = now or utcnow()

        def used(disclosure: Disclosure) -> tuple[str, str, dict[str, Any]]:
            for issued in disclosure.links:
                if issued.nonce == link.nonce:
                    issued.used_at = now
            if disclosure.fetched_at is None:
                disclosure.fetched_at = now
            return "authority", "disclosure.archive_fetched", {"via": "link"}

        disclosure = await self._change(link.disclosure_id, used)
        await self.resources.store.add_event(
            link.disclosure_id, "downloaded", "authority", {"via": "link"}
        )
        try:
            await self.tell(link.disclosure_id, now)
        except Exception:
            log.exception("disclosure %s: notice left to the cron", link.disclosure_id)
        return disclosure

    async def tell(self, disclosure_id: str, now: datetime | None = None) -> bool:
        """Queue the subject's ``disclosed`` notice if they may be told now and were not yet;
        returns whether this call settled it. What became of it is recorded and audited:
        ``queued``, or why not (no address, notices off: ``skipped``, the reason on the
        job's timeline; the job purged meanwhile by Handover's retention)."""
        now = now or utcnow()
        claimed = False

        def claim(entry: Disclosure) -> bool | None:
            # Taken before anything is sent, in the same transaction as the check, so an
            # extension either comes first (and this finds the subject may not be told) or
            # is refused.
            nonlocal claimed
            claimed = False  # run again when the entry changed meanwhile
            held = entry.telling_since is not None and now - entry.telling_since < TELLING_HOLD
            if entry.told_at is not None or held or not entry.may_tell(now):
                return None
            entry.telling_since, claimed = now, True
            return True

        disclosure = await self._change(disclosure_id, claim)
        if not claimed:
            return False
        try:
            job = await self.resources.store.get(disclosure_id)
        except JobNotFound:
            job = None
        outcome = "not sent: the job's record was purged"
        if job is not None:
            told = job.model_copy(deep=True)
            told.identity.identifiers.pop("email", None)
            if disclosure.address is not None:
                told.identity.identifiers["email"] = disclosure.address
            await notify_subject(
                self.resources,
                told,
                "disclosed",
                authority=disclosure.order.authority,
                reference=disclosure.order.reference,
                legal_basis=disclosure.order.legal_basis,
                disclosed_at=disclosure.fetched_at,
            )
            state = await notice_state(self.resources, told, "disclosed")
            outcome = "queued" if state in ("queued", "sent") else f"not sent: {state}"
        action = "disclosure.notice_queued" if outcome == "queued" else "disclosure.notice_not_sent"
        changed = False

        def marked(entry: Disclosure) -> tuple[str, str, dict[str, Any]] | None:
            nonlocal changed
            changed = entry.told_at is None
            if not changed:
                return None
            entry.told_at, entry.told, entry.address = now, outcome, None
            entry.telling_since = None
            return "notices", action, {"outcome": outcome}

        await self._change(disclosure_id, marked)
        return changed

    async def tell_due(self, now: datetime | None = None) -> int:
        """Queue the notices due by ``now``; returns how many (the cron). One entry that
        fails is logged and left in the due set; the others are told."""
        now = now or utcnow()
        due = await self.redis.zrangebyscore(self.due, "-inf", epoch_ms(now))
        told = 0
        for raw in due:
            try:
                told += await self.tell(raw.decode(), now)
            except Exception:
                log.exception("disclosure %s: its notice could not be told", raw.decode())
        return told


async def recipients_of(resources: Resources, subject: str, now: datetime) -> list[dict[str, str]]:
    """The disclosures about ``subject`` that they may be told of at ``now``, as their
    archives list them among the recipients (Art. 15(1)(c)); never a deferred or a
    ``never`` one, nor one whose archive the authority has not fetched."""
    register = DisclosureRegister(resources)
    return [
        d.recipient()
        for d in await register.of_subject(subject)
        if d.fetched_at is not None and d.may_tell(now)
    ]


__all__ = [
    "ARCHIVE_PATH",
    "LINK_SKEW_SECONDS",
    "TELLING_HOLD",
    "AuthorityLink",
    "Deferral",
    "Disclosure",
    "DisclosureNotFound",
    "DisclosureRegister",
    "LinkRefused",
    "NoticeRequest",
    "NoticeRule",
    "recipients_of",
]
