"""The breach register (GDPR Art. 33): every personal-data breach, every version of its facts,
and the 72-hour clock to the supervisory authority.

A breach is recorded once, with the moment the controller became aware of it
(``aware_at``, fixed from then on: the clock runs from it) and what is known so far:
what happened, the categories and approximate numbers of subjects and records
concerned, the likely consequences, the measures taken or proposed and the DPO's
contact (Art. 33(3)). Facts may arrive in phases (Art. 33(4)): each update is a new
version holding the whole set of facts as they then stood, and no version is ever
changed or removed (Art. 33(5): the register documents every breach).

The clock (:class:`Clock`): the authority must be told by ``notify_authority_by`` =
``aware_at`` + 72 h; a breach is ``at_risk`` from 48 h and ``overdue`` after 72 h.
Recording the notification (when, the authority's reference) stops it: ``notified``,
or ``notified_late`` when it came after the deadline, which Art. 33(1) allows only
with the reasons for the delay, so a late notification without them is refused.
When a breach reaches ``at_risk`` and ``overdue`` a signed webhook tells the
platform once each (``breach.at_risk``, ``breach.overdue``: :meth:`BreachRegister.watch`,
called when a breach is recorded and by the worker's cron).

Every change is written together with its audit entry (one ``MULTI``, the breach
watched, so two updates at once never lose one). Nothing here is a job: Handover's
own retention (:mod:`jobs.records`) never touches these keys.

Layout: ``{ns}breach:{id}`` (JSON of the :class:`Breach`), ``{ns}breaches`` (sorted
set by creation time), ``{ns}breaches:open`` (not yet notified, by deadline),
``{ns}breaches:late`` (notified late), ``{ns}breaches:told:{event}`` (the webhooks sent,
once each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from redis.exceptions import WatchError

from jobs.audit import AuditEntry
from jobs.ids import new_ulid
from jobs.model import InvalidRequest, epoch_ms, iso, utcnow
from jobs.resources import Resources
from jobs.webhooks import digest as webhook_digest

#: Art. 33(1): "without undue delay and, where feasible, not later than 72 hours after
#: having become aware of it".
AUTHORITY_DEADLINE = timedelta(hours=72)
#: From when a breach not yet notified is shown at risk.
AT_RISK_AFTER = timedelta(hours=48)
#: The task that delivers a breach's webhook (:func:`jobs.worker.deliver_breach_webhook`).
WEBHOOK_TASK = "deliver_breach_webhook"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class BreachNotFound(Exception):
    """No breach of this id is in the register."""

    def __init__(self, breach_id: str) -> None:
        super().__init__(f"no breach {breach_id}")
        self.breach_id = breach_id


class AlreadyNotified(Exception):
    """The authority's notification of this breach is recorded already."""

    def __init__(self, breach_id: str, notified_at: datetime) -> None:
        super().__init__(
            f"breach {breach_id}: the authority's notification is recorded already "
            f"({iso(notified_at)}); later facts go in as an update"
        )
        self.breach_id = breach_id


class Clock(StrEnum):
    """Where a breach stands against the authority's 72 hours."""

    RUNNING = "running"
    AT_RISK = "at_risk"
    OVERDUE = "overdue"
    NOTIFIED = "notified"
    NOTIFIED_LATE = "notified_late"


class BreachFacts(BaseModel):
    """What is known of a breach at one time: the content of Art. 33(3).

    A number not yet known is ``None`` and is said to be unknown, never shown as 0.
    """

    model_config = ConfigDict(extra="forbid")

    aware_at: AwareDatetime
    occurred_at: AwareDatetime | None = None
    nature: Text
    subject_categories: list[Label] = Field(min_length=1, max_length=50)
    approx_subjects: int | None = Field(None, ge=0)
    record_categories: list[Label] = Field(min_length=1, max_length=50)
    approx_records: int | None = Field(None, ge=0)
    consequences: Text
    measures: Text
    dpo_contact: Label

    @field_validator("aware_at", "occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None


class BreachVersion(BaseModel):
    """One version of the facts: who recorded it, when, and what changed."""

    model_config = ConfigDict(extra="forbid")

    number: int
    recorded_at: datetime
    recorded_by: str
    via: str
    note: str | None = None
    facts: BreachFacts


class AuthorityNotification(BaseModel):
    """The supervisory authority was told: when, its reference, and why late if it was."""

    model_config = ConfigDict(extra="forbid")

    notified_at: datetime
    reference: str
    authority: str | None = None
    late: bool
    delay_reasons: str | None = None
    recorded_at: datetime
    recorded_by: str


class Breach(BaseModel):
    """A breach in the register: every version of its facts, and its notification if made."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created_at: datetime
    versions: list[BreachVersion]
    notification: AuthorityNotification | None = None

    @property
    def facts(self) -> BreachFacts:
        """The facts as they stand now (the latest version)."""
        return self.versions[-1].facts

    @property
    def aware_at(self) -> datetime:
        """When the controller became aware of the breach (fixed when recorded)."""
        return self.versions[0].facts.aware_at

    @property
    def notify_authority_by(self) -> datetime:
        """The authority's deadline: awareness + 72 h."""
        return self.aware_at + AUTHORITY_DEADLINE

    @property
    def at_risk_from(self) -> datetime:
        """When the breach, not yet notified, is at risk: awareness + 48 h."""
        return self.aware_at + AT_RISK_AFTER

    def clock(self, now: datetime) -> Clock:
        """Where the breach stands at ``now``."""
        if self.notification is not None:
            return Clock.NOTIFIED_LATE if self.notification.late else Clock.NOTIFIED
        if now > self.notify_authority_by:
            return Clock.OVERDUE
        if now >= self.at_risk_from:
            return Clock.AT_RISK
        return Clock.RUNNING


@dataclass(frozen=True)
class Recorder:
    """Who changes the register, and through which door (``api``, ``dashboard``, ``cli``)."""

    id: str
    via: str = "api"


class BreachRegister:
    """The register in Redis: record, update, notify, read; each change audited."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.redis: Any = resources.redis
        ns = resources.store.ns
        self.ns = ns
        self.index = f"{ns}breaches"
        self.open = f"{ns}breaches:open"
        self.late = f"{ns}breaches:late"

    @classmethod
    def of(cls, resources: Resources) -> BreachRegister:
        """The register of ``resources``' Redis."""
        return cls(resources)

    def key(self, breach_id: str) -> str:
        """Where one breach is kept."""
        return f"{self.ns}breach:{breach_id}"

    def _audit(self, by: Recorder, action: str, breach_id: str, **details: Any) -> AuditEntry:
        body = {"at": iso(utcnow()), "actor": by.id, "action": action, "breach": breach_id}
        if by.via != "api":
            body["via"] = by.via
        return AuditEntry(
            self.resources.audit.pending_key,
            orjson.dumps({**body, **details}, option=orjson.OPT_SORT_KEYS),
        )

    async def audit(self, by: Recorder, action: str, breach_id: str, **details: Any) -> None:
        """Record ``action`` on the breach in the audit log (a report issued, the register read)."""
        await self.resources.audit.record(self._audit(by, action, breach_id, **details))

    async def record(
        self, by: Recorder, facts: BreachFacts, *, now: datetime | None = None
    ) -> Breach:
        """A new breach in the register, version 1; the clock runs from ``facts.aware_at``."""
        now = now or utcnow()
        _check_times(facts, now)
        breach = Breach(
            id=new_ulid(),
            created_at=now,
            versions=[
                BreachVersion(number=1, recorded_at=now, recorded_by=by.id, via=by.via, facts=facts)
            ],
        )
        entry = self._audit(
            by, "breach.recorded", breach.id, notify_authority_by=iso(breach.notify_authority_by)
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(breach.id), breach.model_dump_json())
            pipe.zadd(self.index, {breach.id: epoch_ms(now)})
            pipe.zadd(self.open, {breach.id: epoch_ms(breach.notify_authority_by)})
            pipe.xadd(entry.stream, {"body": entry.body})
            await pipe.execute()
        self.resources.audit.seal_soon()
        await self.watch(now, breach_ids=[breach.id])
        return breach

    async def update(
        self,
        by: Recorder,
        breach_id: str,
        changes: Mapping[str, Any],
        note: str,
        *,
        now: datetime | None = None,
    ) -> Breach:
        """A new version: the latest facts with ``changes`` applied, and ``note`` saying why.

        ``aware_at`` cannot change: the clock runs from what was recorded first.
        """
        now = now or utcnow()
        if not note.strip():
            raise InvalidRequest("note", "say what changed (Art. 33(4): information in phases)")

        def change(breach: Breach) -> tuple[Breach, AuditEntry]:
            merged = {**breach.facts.model_dump(), **changes}
            facts = BreachFacts.model_validate(merged)
            if facts.aware_at != breach.aware_at:
                raise InvalidRequest(
                    "aware_at",
                    f"recorded as {iso(breach.aware_at)}; the 72-hour clock runs from it and "
                    "it cannot change",
                )
            _check_times(facts, now)
            before, after = breach.facts.model_dump(), facts.model_dump()
            changed = sorted(name for name in after if after[name] != before[name])
            number = len(breach.versions) + 1
            breach.versions.append(
                BreachVersion(
                    number=number,
                    recorded_at=now,
                    recorded_by=by.id,
                    via=by.via,
                    note=note.strip(),
                    facts=facts,
                )
            )
            entry = self._audit(by, "breach.updated", breach.id, version=number, fields=changed)
            return breach, entry

        return await self._change(breach_id, change)

    async def record_notification(
        self,
        by: Recorder,
        breach_id: str,
        *,
        notified_at: datetime,
        reference: str,
        authority: str | None = None,
        delay_reasons: str | None = None,
        now: datetime | None = None,
    ) -> Breach:
        """The authority was told at ``notified_at``: the clock stops.

        Past the deadline, ``delay_reasons`` are required (Art. 33(1)).
        """
        now = now or utcnow()
        reasons = (delay_reasons or "").strip() or None
        if not reference.strip():
            raise InvalidRequest("reference", "the authority's reference for the notification")
        if notified_at > now:
            raise InvalidRequest("notified_at", f"{iso(notified_at)} is in the future")

        def notify(breach: Breach) -> tuple[Breach, AuditEntry]:
            if breach.notification is not None:
                raise AlreadyNotified(breach.id, breach.notification.notified_at)
            if notified_at < breach.aware_at:
                raise InvalidRequest(
                    "notified_at",
                    f"{iso(notified_at)} is before awareness ({iso(breach.aware_at)})",
                )
            late = notified_at > breach.notify_authority_by
            if late and reasons is None:
                raise InvalidRequest(
                    "delay_reasons",
                    f"notified {_hours(notified_at - breach.aware_at)} after awareness, past "
                    f"the 72 hours ({iso(breach.notify_authority_by)}): Art. 33(1) requires the "
                    "reasons for the delay",
                )
            breach.notification = AuthorityNotification(
                notified_at=notified_at,
                reference=reference.strip(),
                authority=(authority or "").strip() or None,
                late=late,
                delay_reasons=reasons,
                recorded_at=now,
                recorded_by=by.id,
            )
            entry = self._audit(
                by,
                "breach.authority_notified",
                breach.id,
                notified_at=iso(notified_at),
                late=late,
            )
            return breach, entry

        return await self._change(breach_id, notify, notified=True)

    async def _change(
        self,
        breach_id: str,
        change: Callable[[Breach], tuple[Breach, AuditEntry]],
        *,
        notified: bool = False,
    ) -> Breach:
        """Apply ``change`` to the stored breach and write it with its audit entry, in one
        ``MULTI`` while the breach is watched (read again if another change came first)."""
        key = self.key(breach_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise BreachNotFound(breach_id)
                    changed, entry = change(Breach.model_validate_json(raw))
                    pipe.multi()
                    pipe.set(key, changed.model_dump_json())
                    if notified:
                        pipe.zrem(self.open, breach_id)
                        if changed.notification is not None and changed.notification.late:
                            pipe.sadd(self.late, breach_id)
                    pipe.xadd(entry.stream, {"body": entry.body})
                    await pipe.execute()
                except WatchError:
                    continue
                break
        self.resources.audit.seal_soon()
        return changed

    async def get(self, breach_id: str) -> Breach:
        """One breach; :class:`BreachNotFound` if there is none of this id."""
        raw = await self.redis.get(self.key(breach_id))
        if raw is None:
            raise BreachNotFound(breach_id)
        return Breach.model_validate_json(raw)

    async def all(self) -> list[Breach]:
        """Every breach in the register, newest first."""
        ids = [raw.decode() for raw in await self.redis.zrevrange(self.index, 0, -1)]
        if not ids:
            return []
        raws = await self.redis.mget([self.key(breach_id) for breach_id in ids])
        return [Breach.model_validate_json(raw) for raw in raws if raw is not None]

    async def clock_counts(self, now: datetime) -> dict[Clock, int]:
        """How many breaches stand where: the open ones from the deadline index."""
        deadline = epoch_ms(now)
        risk = epoch_ms(now + AUTHORITY_DEADLINE - AT_RISK_AFTER)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.index)
            pipe.zcount(self.open, "-inf", f"({deadline}")
            pipe.zcount(self.open, deadline, risk)
            pipe.zcard(self.open)
            pipe.scard(self.late)
            total, overdue, at_risk, still_open, late = await pipe.execute()
        return {
            Clock.RUNNING: still_open - overdue - at_risk,
            Clock.AT_RISK: at_risk,
            Clock.OVERDUE: overdue,
            Clock.NOTIFIED: total - still_open - late,
            Clock.NOTIFIED_LATE: late,
        }

    async def metrics_text(self, now: datetime) -> str:
        """The ``handover_breaches`` gauge, by clock, in the Prometheus text format."""
        lines = [
            "# HELP handover_breaches Breaches in the register by where their 72-hour clock "
            "stands (running, at_risk, overdue, notified, notified_late).",
            "# TYPE handover_breaches gauge",
        ]
        for clock, count in (await self.clock_counts(now)).items():
            lines.append(f'handover_breaches{{clock="{clock.value}"}} {count}')
        return "\n".join(lines) + "\n"

    async def watch(self, now: datetime | None = None, breach_ids: list[str] | None = None) -> int:
        """Queue ``breach.at_risk`` / ``breach.overdue`` webhooks for open breaches that
        reached that stage, once per breach and stage; returns how many were queued."""
        now = now or utcnow()
        if breach_ids is None:
            risk = epoch_ms(now + AUTHORITY_DEADLINE - AT_RISK_AFTER)
            breach_ids = [
                raw.decode() for raw in await self.redis.zrangebyscore(self.open, "-inf", risk)
            ]
        queued = 0
        for breach_id in breach_ids:
            breach = await self.get(breach_id)
            stage = breach.clock(now)
            if stage not in (Clock.AT_RISK, Clock.OVERDUE):
                continue
            event = f"breach.{stage.value}"
            told = f"{self.ns}breaches:told:{event}"
            if await self.redis.sismember(told, breach_id):
                continue
            # Queued, then marked: a process that dies in between queues it again next time
            # (the task id keeps a second copy out while the first is known to arq).
            for url in self.resources.settings.webhook_urls:
                target = webhook_digest(url)
                await self.redis.enqueue_job(
                    WEBHOOK_TASK,
                    target,
                    breach_id,
                    event,
                    _job_id=f"webhook:{target}:{breach_id}:{event}",
                )
            if await self.redis.sadd(told, breach_id):
                queued += 1
        return queued


def webhook_payload(breach: Breach, event: str, now: datetime) -> dict[str, Any]:
    """What a breach's webhook says: its clock, no description of the breach itself."""
    return {
        "id": new_ulid(),
        "type": event,
        "at": iso(now),
        "breach": {
            "id": breach.id,
            "aware_at": iso(breach.aware_at),
            "notify_authority_by": iso(breach.notify_authority_by),
            "clock": breach.clock(now).value,
            "links": {"self": f"/v1/breaches/{breach.id}"},
        },
    }


def _check_times(facts: BreachFacts, now: datetime) -> None:
    if facts.aware_at > now:
        raise InvalidRequest("aware_at", f"{iso(facts.aware_at)} is in the future")
    if facts.occurred_at is not None and facts.occurred_at > facts.aware_at:
        raise InvalidRequest(
            "occurred_at",
            f"{iso(facts.occurred_at)} is after awareness ({iso(facts.aware_at)})",
        )


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:.1f} h"
