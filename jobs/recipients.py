"""Recipients that are not connectors, told of a rectification, erasure or restriction
(GDPR Art. 19), and of a restriction's lifting.

A connector is told by the job itself: its run *is* the telling. Any other recipient of
the subject's data is configured beside the connectors (:class:`jobs.settings.RecipientConfig`)::

    [recipients.insurer]
    contact = "privacy@insurer.example"       # where it is told
    description = "Insurer of the devices"    # what subjects are told of it (GET /v1/recipients)
    identifiers = ["email"]                    # what it knows subjects by; only these are sent

When such a job's work is done, :meth:`Recipients.queue` (called by the pipeline's
``complete``, before the receipt is signed) queues one message per recipient; the task
(:meth:`Recipients.deliver`, the worker's ``tell_recipient``) sends it only once the job
has *succeeded* (while the job still runs it waits, looking again every :data:`END_POLL`
without spending any of its tries; a job that ended otherwise tells no one, and says
why). The message is plain text, as a by-hand processor's request (:mod:`jobs.handoff`):
what was done, under which article, and only the identifiers the recipient knows the subject by; a
rectification names the fields corrected, never a value. It goes the way notices go
(``HANDOVER_SMTP_URL``, or the embedded maildir), tried again with backoff on a
server that cannot take it now, :data:`jobs.notices.MAX_TRIES` times in all, and
given up at once on a refusal.

The timeline records ``recipient.told`` (recipient, message_id, via) or
``recipient.not_told`` (recipient, why). The signed receipt lists every recipient and
how it stands: ``told`` (with the Message-ID and when), ``not_told`` (with why), or
``queued`` while the message has not been handed over, never "told" before it was.
Once every recipient of the job is settled, the receipt is signed again with their
final states (:func:`jobs.archive.receipt.reissue_receipt`; ``receipt.reissued`` on
the timeline).

Personal data and the queue: the task's arguments name the job and the recipient only;
the identifiers wait in ``{ns}recipient:{job}:{name}:letter``, deleted once the message
is handed over or given up, and expiring after :data:`jobs.notices.LETTER_TTL`. The
state (``{ns}recipient:{job}:{name}``: no personal data) is kept :data:`STATE_TTL`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

import orjson
from arq.worker import Retry

from jobs.archive.receipt import reissue_receipt
from jobs.mail import MailRefused, MailUnavailable, mail_address
from jobs.model import ErasureOptions, Job, JobKind, JobStatus, RectificationOptions, iso, utcnow
from jobs.notices import EMBEDDED_SENDER, LETTER_TTL, MAX_TRIES, backoff, hand_over, maildir_path
from jobs.resources import Resources
from jobs.settings import RecipientConfig
from jobs.store import JobNotFound

log = logging.getLogger("handover.recipients")

RECIPIENT_TASK = "tell_recipient"
#: How long a recipient's state on a job is kept: the receipt is signed again well before.
STATE_TTL = 90 * 86400


def _list_key(namespace: str, job_id: str) -> str:
    return f"{namespace}recipients:{job_id}"


def _state_key(namespace: str, job_id: str, name: str) -> str:
    return f"{namespace}recipient:{job_id}:{name}"


async def recipient_keys(redis: Any, namespace: str, job_id: str) -> list[str]:
    """Every key this module keeps of a job (its list, each recipient's state and letter),
    for Handover's own retention to delete with the job (:mod:`jobs.records`)."""
    raw = await redis.get(_list_key(namespace, job_id))
    names = [entry["name"] for entry in orjson.loads(raw)] if raw is not None else []
    states = [_state_key(namespace, job_id, name) for name in names]
    return [_list_key(namespace, job_id), *states, *(f"{key}:letter" for key in states)]


#: How often a message waiting for its job to end (still running) looks again.
END_POLL = timedelta(seconds=2)

#: What each kind of job did, and under which article (GDPR Art. 19 for every one).
DONE = {
    JobKind.RECTIFICATION: (
        "corrected the personal data of one of its users (a data subject)",
        "Art. 16 (rectification), told to recipients under Art. 19",
        "Please correct the data you hold on this person in these fields; ask us for the "
        "corrected values if you need them:",
    ),
    JobKind.ERASURE: (
        "erased the personal data of one of its users (a data subject)",
        "Art. 17 (erasure), told to recipients under Art. 19",
        "Please erase the personal data you received from us on this person, unless the "
        "law obliges you to keep it.",
    ),
    JobKind.RESTRICTION: (
        "restricted the processing of the personal data of one of its users (a data subject)",
        "Art. 18 (restriction of processing), told to recipients under Art. 19",
        "Please restrict the processing of the data you received from us on this person: "
        "keep it, but do not otherwise process it until we tell you the restriction is lifted.",
    ),
    JobKind.LIFT: (
        "lifted the restriction of the processing of the personal data of one of its users "
        "(a data subject), after telling them",
        "Art. 18(3) (lifting of a restriction), told to recipients as its restriction was",
        "The restriction we told you of earlier no longer applies to this person's data.",
    ),
}


def tells(job: Job) -> bool:
    """Whether ``job`` is told to recipients: a rectification, erasure, restriction or lift
    that changed something (a dry run did not)."""
    if job.kind not in DONE:
        return False
    return not (isinstance(job.options, ErasureOptions) and job.options.dry_run)


def listed(resources: Resources) -> list[dict[str, Any]]:
    """Every recipient of subjects' data, as subjects are told of them (GDPR Art. 15(1)(c),
    19): each connector (told by its jobs) and each configured recipient (told by email)."""
    shown: list[dict[str, Any]] = []
    for name, connector in sorted(resources.connectors.items()):
        described = connector.describe()
        shown.append(
            {
                "name": name,
                "recipient": described.get("recipient"),
                "categories": sorted(connector.categories),
                "told_by": "connector",
            }
        )
    for recipient in resources.settings.recipients:
        shown.append(
            {
                "name": recipient.name,
                "recipient": recipient.description,
                "categories": [],
                "told_by": "email",
            }
        )
    return shown


class Recipients:
    """Telling one job's recipients, and what the receipt says of it."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def _key(self, job_id: str, name: str) -> str:
        return _state_key(self.resources.store.ns, job_id, name)

    def _skip_reason(self, job: Job, recipient: RecipientConfig) -> str | None:
        settings = self.resources.settings
        if settings.smtp_url is None and maildir_path(settings) is None:
            return "mail is off: HANDOVER_SMTP_URL is not set"
        subject = job.subject_view
        if not any(subject.identifier(name) for name in recipient.identifiers):
            named = ", ".join(recipient.identifiers)
            return f"none of the identifiers it knows subjects by ({named}) is known"
        return None

    def _list_key(self, job_id: str) -> str:
        return _list_key(self.resources.store.ns, job_id)

    async def queue(self, job: Job) -> list[dict[str, Any]]:
        """Queue the message to each configured recipient (once per job: a second call
        changes nothing), and return how each stands, for the receipt. ``job`` must
        still hold the subject's identifiers. A recipient that cannot be told (mail off,
        no identifier it knows) is recorded ``not_told`` at once, with why.

        Which recipients the job tells is recorded with it on the first call (name and
        description), and every statement is built from that list, not from the
        configuration of the day: a recipient configured later is not said to be told,
        and one removed since is still accounted for (``not_told``, no longer configured)."""
        configured = {r.name: r for r in self.resources.settings.recipients}
        listed = [{"name": r.name, "description": r.description} for r in configured.values()]
        redis: Any = self.resources.redis
        key = self._list_key(job.id)
        await redis.set(key, orjson.dumps(listed), nx=True, ex=STATE_TTL)
        for entry in await self._listed(job.id):
            recipient = configured.get(entry["name"])
            if recipient is not None:
                await self._queue_one(job, recipient)
            elif await redis.hget(self._key(job.id, entry["name"]), "state") is None:
                why = {"why": "it is no longer configured"}
                await self._end(job.id, entry["name"], "not_told", why)
        return await self.statements(job.id)

    async def _listed(self, job_id: str) -> list[dict[str, Any]]:
        """The recipients the job tells, as recorded when it queued them (none if never)."""
        raw = await self.resources.redis.get(self._list_key(job_id))
        return [] if raw is None else list(orjson.loads(raw))

    async def _queue_one(self, job: Job, recipient: RecipientConfig) -> None:
        redis: Any = self.resources.redis
        key = self._key(job.id, recipient.name)
        skip = self._skip_reason(job, recipient)
        subject = job.subject_view
        known = {
            name: value
            for name in recipient.identifiers
            if (value := subject.identifier(name)) is not None
        }
        letter = orjson.dumps({"to": recipient.contact, "identifiers": known})
        state = {"state": "not_told", "why": skip} if skip else {"state": "queued"}

        async def record(pipe: Any) -> bool:
            if await pipe.hget(key, "state") is not None:
                await pipe.unwatch()
                return False
            pipe.multi()
            pipe.hset(key, mapping=state)
            pipe.expire(key, STATE_TTL)
            if skip is None:
                pipe.set(f"{key}:letter", letter, ex=LETTER_TTL)
            return True

        fresh = await redis.transaction(record, key, value_from_callable=True)
        if fresh and skip is not None:
            await self.resources.store.add_event(
                job.id,
                "recipient.not_told",
                "recipients",
                {"recipient": recipient.name, "why": skip},
            )
        if await redis.hget(key, "state") == b"queued":  # new, or queued before a crash
            await redis.enqueue_job(
                RECIPIENT_TASK,
                job.id,
                recipient.name,
                _job_id=f"recipient:{job.id}:{recipient.name}",
            )

    async def statements(self, job_id: str) -> list[dict[str, Any]]:
        """How each recipient the job tells (as recorded when it queued them) stands on
        ``job_id``, as the receipt says it."""
        redis: Any = self.resources.redis
        shown = []
        for recipient in await self._listed(job_id):
            raw = await redis.hgetall(self._key(job_id, recipient["name"]))
            state = {k.decode(): v.decode() for k, v in raw.items()}
            entry: dict[str, Any] = {
                "recipient": recipient["name"],
                "description": recipient["description"],
                "state": state.get("state", "queued"),
            }
            if entry["state"] == "told":
                entry.update(message_id=state["message_id"], told_at=state["at"], via=state["via"])
            elif entry["state"] == "not_told":
                entry["why"] = state.get("why")
            shown.append(entry)
        return shown

    async def deliver(self, job_id: str, name: str, *, attempt: int = 1) -> None:
        """Write and send the message to recipient ``name`` about ``job_id``: the task
        (:data:`RECIPIENT_TASK`); then sign the receipt again if every recipient is settled."""
        redis: Any = self.resources.redis
        key = self._key(job_id, name)
        if await redis.hget(key, "state") != b"queued":
            await self.reissue(job_id)  # settled already: arq runs a task at least once
            return
        recipient = next((r for r in self.resources.settings.recipients if r.name == name), None)
        try:
            job = await self.resources.store.get(job_id)
        except JobNotFound:
            await redis.delete(key, f"{key}:letter")
            return
        raw = await redis.get(f"{key}:letter")
        if recipient is None or raw is None:
            why = (
                "it is no longer configured"
                if recipient is None
                else f"its message was kept {LETTER_TTL.days} days and expired unsent"
            )
            await self._end(job_id, name, "not_told", {"why": why})
            return
        if job.status is JobStatus.RUNNING:  # the finish has not moved it yet
            await self._wait_for_the_end(job_id, name)
            return
        if job.status is not JobStatus.SUCCEEDED:
            why = f"the request ended {job.status.value}: nothing done is told"
            await self._end(job_id, name, "not_told", {"why": why})
            return
        letter = orjson.loads(raw)
        message, message_id = self.compose(job, recipient, letter["identifiers"])
        try:
            await hand_over(self.resources.settings, message, letter["to"])
        except MailRefused as exc:
            await self._end(job_id, name, "not_told", {"why": str(exc), "attempts": attempt})
            return
        except MailUnavailable as exc:
            if attempt >= MAX_TRIES:
                await self._end(job_id, name, "not_told", {"why": str(exc), "attempts": attempt})
                return
            log.warning(
                "recipient %s of job %s not told (attempt %d): %s", name, job_id, attempt, exc
            )
            raise Retry(defer=backoff(attempt)) from None
        via = "smtp" if self.resources.settings.smtp_url is not None else "maildir"
        await self._end(job_id, name, "told", {"message_id": message_id, "via": via})
        log.info("recipient %s of job %s told: %s", name, job_id, message_id)

    async def _wait_for_the_end(self, job_id: str, name: str) -> None:
        """Look again in :data:`END_POLL` for a job still running: a fresh task, under an id
        of its own per period (a duplicate delivery queues once), so that waiting for the
        job to end counts none of the tries that mail failures have."""
        poll = END_POLL.total_seconds()
        period = int((utcnow().timestamp() + poll) // poll)
        await self.resources.redis.enqueue_job(
            RECIPIENT_TASK,
            job_id,
            name,
            _job_id=f"recipient:{job_id}:{name}|ended?|{period}",
            _defer_by=END_POLL,
        )

    async def _end(self, job_id: str, name: str, state: str, data: dict[str, Any]) -> None:
        """Record how the telling ended, forget the identifiers, sign the receipt again."""
        key = self._key(job_id, name)
        await self.resources.store.add_event(
            job_id, f"recipient.{state}", "recipients", {"recipient": name, **data}
        )
        fields = {"state": state, "at": iso(utcnow())}
        fields.update({k: str(v) for k, v in data.items() if k in {"message_id", "via", "why"}})
        async with self.resources.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.delete(f"{key}:letter")
            await pipe.execute()
        await self.reissue(job_id)

    async def reissue(self, job_id: str) -> None:
        """Sign the job's receipt again once every recipient is settled (told or not), if
        what it says of them has changed."""
        statements = await self.statements(job_id)
        if any(entry["state"] == "queued" for entry in statements):
            return
        resources = self.resources
        try:
            job = await resources.store.get(job_id)
        except JobNotFound:
            return
        if job.receipt is None or job.receipt.get("recipients") == statements:
            return
        await resources.keyring.publish(resources.signer)
        receipt = reissue_receipt(
            job.receipt, recipients=statements, signer=resources.signer, issued_at=utcnow()
        )

        def reissued(job: Job) -> None:
            job.receipt = receipt

        await resources.store.modify(
            job_id,
            reissued,
            actor="recipients",
            event="receipt.reissued",
            data={"recipients": [entry["recipient"] for entry in statements]},
            expect={JobStatus.SUCCEEDED},
        )

    def compose(
        self, job: Job, recipient: RecipientConfig, identifiers: dict[str, str]
    ) -> tuple[EmailMessage, str]:
        """The message to ``recipient`` about ``job``, and its Message-ID (the job and the
        recipient at the sender's domain, so one sent twice is one message to mail clients)."""
        settings = self.resources.settings
        sender = settings.mail_from or EMBEDDED_SENDER
        controller = settings.controller or parseaddr(sender)[0] or mail_address(sender)
        domain = mail_address(sender).rsplit("@", 1)[1]
        message_id = f"<handover.{job.id}.recipient.{recipient.name}@{domain}>"
        done, article, asked = DONE[job.kind]
        fields = []
        if isinstance(job.options, RectificationOptions):
            fields = [f"  {ref.dataset}.{ref.field}" for ref in job.options.changes]
            if settings.controller_contact:
                fields.append(f"Where to ask: {settings.controller_contact}")
        lines = [
            "Hello,",
            "",
            f"{controller} tells you, as a recipient of personal data it controls, that it "
            f"{done}, under GDPR {article}.",
            "",
            "The person, as you know them:",
            *(f"  {name}: {value}" for name, value in sorted(identifiers.items())),
            "",
            asked,
            *fields,
            "",
            f"Reference: {job.id} / {recipient.name}",
            "This message was sent automatically by Handover.",
        ]
        message = EmailMessage()
        message["Subject"] = f"Data-subject request {job.id} ({job.kind.value}): GDPR Art. 19"
        message["From"] = sender
        message["To"] = recipient.contact
        message["Date"] = format_datetime(utcnow())
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message["X-Handover-Job"] = job.id
        message["X-Handover-Notice"] = "recipient"
        message.set_content("\n".join(lines) + "\n")
        return message, message_id


__all__ = ["DONE", "RECIPIENT_TASK", "Recipients", "listed", "tells"]
