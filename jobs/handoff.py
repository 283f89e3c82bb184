"""Processors a person serves (``email`` and ``manual`` connectors): asked, waited for, answered.

::

    run_connector ─▶ ask: the request recorded on the run (its nonce), then delivered
                     (email: to the processor's contact, with a reply link; manual: a task
                     on the dashboard) ─▶ run ``waiting_on_processor``: no worker, no lease
    chase (cron)  ─▶ reminders every ``remind_every_days`` until the reply; past
                     ``reply_by``: ``processor.overdue`` on the timeline, the
                     ``job.processor_overdue`` webhook, and support told by email
                     (``HANDOVER_SUPPORT_EMAIL``)
    reply         ─▶ the link checked (signature, expiry, still the run's request), files
                     streamed to storage (checksummed, size-capped), the reply recorded on
                     the run (``pending`` again) ─▶ run_connector: the connector answers
                     with it (:meth:`connectors.byhand.ByHandConnector.answered`): files into
                     the archive, the statement and who gave it into the receipt

A reply link is ``<job>.<connector>.<generation>.<nonce>.<expires>.<mac>``: the MAC is
keyed from the signing key (:meth:`jobs.archive.signing.Signer.mac`), so only Handover
makes one; it expires (``HANDOVER_REPLY_LINK_TTL`` after it was sent, each reminder
carrying a fresh one); and it works once: the run accepts one reply per request
(its nonce), a second is refused saying when the first came. The request outlives
the job's generations (a retry, a question to the subject carry it over): its links
answer it until it is answered. A reply after the job ended is refused and the attempt
recorded on the timeline, so nothing is silently dropped.

The waiting set ``{ns}handoff:waiting`` (a sorted set, ``<job>|<connector>`` scored by
the next time to look at it, in ms) is what the chase reads. Everything sent is on the
job's timeline with its Message-ID (``processor.asked``, ``processor.reminded``,
``processor.overdue``); everything received with its checksums (``processor.replied``).
Requests to processors are written in English: they go to businesses, not subjects.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.byhand import Answered, ByHandConnector, Erased, Reply, reply_file
from connectors.errors import PermanentError, TransientError
from jobs.mail import (
    MailError,
    MailRefused,
    MailUnavailable,
    file_in_maildir,
    mail_address,
    send_smtp,
    smtp_target,
)
from jobs.model import ConnectorRun, Job, JobKind, RunStatus, epoch_ms, iso, utcnow
from jobs.notices import EMBEDDED_SENDER, maildir_path
from jobs.resources import Resources
from jobs.store import JobNotFound

#: Where the API takes replies, and where a person's browser opens the reply page.
API_PATH = "/v1/replies/"
PAGE_PATH = "/reply/"
#: The most files one reply may carry.
MAX_FILES = 100
#: The most characters of a file's name kept (it becomes part of an archive path).
MAX_NAME = 100
#: A reply link's token: job id, connector, generation, nonce, expiry (Unix s), MAC.
TOKEN_PATTERN = (
    r"([0-9A-Z]{26})\.([A-Za-z0-9_-]{1,63})\.([0-9]{1,9})"
    r"\.([0-9a-f]{16})\.([0-9]{1,12})\.([0-9a-f]{32})"
)
_TOKEN = re.compile(TOKEN_PATTERN)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

#: The outcomes a statement line may state, by the request's kind, besides ``not_found``
#: (an export takes files, no lines; ``kept`` always names its legal basis).
OUTCOMES = {
    "erasure": ("erased", "anonymised", "kept"),
    "restriction": ("restricted", "kept"),
    "objection": ("stopped",),
}

#: What each kind of request asks, and how to answer it (by the kind's name: a kind added
#: later, rectification say, gets the generic words until it has its own).
WHAT = {
    "export": "a copy of the personal data you hold on this person",
    "erasure": "the erasure of the personal data you hold on this person",
    "restriction": "the restriction of the processing of this person's data",
    "objection": "that you stop processing this person's data for the purposes below",
}
HOW = {
    "export": "Upload the data you hold on this person (any files: JSON, CSV, PDF…), "
    "or state that you hold nothing on them.",
    "erasure": "State what you erased or anonymised, what you must keep (with its legal "
    "basis and until when), or that you found nothing.",
    "restriction": "State what you restricted, or that you found nothing.",
    "objection": "State, for each purpose, that you stopped (and how many records), or that "
    "you process nothing of this person's for it.",
}
_WHAT_ELSE = "that you act on this person's request"
_HOW_ELSE = "State what you did, one line per kind of data."


def outcomes(kind: str) -> list[str]:
    """The outcomes a statement's lines may state for a request of ``kind`` (none for an
    export, which takes files; every one for a kind without its own list)."""
    if kind == "export":
        return []
    allowed = OUTCOMES.get(kind, ("erased", "anonymised", "kept", "restricted", "stopped"))
    return [*allowed, "not_found"]


class ReplyRefused(Exception):
    """A reply that cannot be taken; ``reason`` says why, the message in Handover's words.

    Reasons: ``invalid`` (not a link Handover made), ``expired``, ``used`` (the request
    was answered already), ``superseded`` (the run no longer holds this request), ``ended`` (the job
    ended), ``too_large``, ``unexpected`` (what was sent does not fit what was asked).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReplyLink:
    """One reply link's content: the run it answers, the request's nonce, its expiry."""

    job_id: str
    connector: str
    generation: int
    nonce: str
    expires: int

    def token(self, resources: Resources) -> str:
        """The link's token: its fields and their MAC."""
        body = f"{self.job_id}.{self.connector}.{self.generation}.{self.nonce}.{self.expires}"
        return f"{body}.{_mac(resources, body)}"

    @classmethod
    def parse(cls, resources: Resources, token: str, now: float | None = None) -> ReplyLink:
        """The link a token stands for; :class:`ReplyRefused` if forged or expired."""
        found = _TOKEN.fullmatch(token)
        if found is None:
            raise ReplyRefused("invalid", "this reply link is not valid")
        body, mac = token.rsplit(".", 1)
        if not hmac.compare_digest(mac, _mac(resources, body)):
            raise ReplyRefused("invalid", "this reply link is not valid")
        job_id, connector, generation, nonce, expires = found.groups()[:5]
        link = cls(job_id, connector, int(generation), nonce, int(expires))
        if link.expires <= (time.time() if now is None else now):
            raise ReplyRefused(
                "expired",
                f"this reply link expired on {iso(datetime.fromtimestamp(link.expires, UTC))}; "
                "the next reminder carries a fresh one, or ask the sender for one",
            )
        return link


def _mac(resources: Resources, body: str) -> str:
    return resources.signer.mac(b"reply link", body.encode())[:32]


class StatementLine(BaseModel):
    """One line of what the processor did: ``what`` (a kind of data), its outcome, how many."""

    model_config = ConfigDict(extra="forbid")

    what: str = Field(min_length=1, max_length=200, examples=["payslips"])
    outcome: Literal["erased", "anonymised", "kept", "restricted", "stopped", "not_found"]
    records: int = Field(default=0, ge=0, le=10**12)
    legal_basis: str | None = Field(default=None, min_length=1, max_length=500)
    until: AwareDatetime | None = Field(
        default=None,
        description="Kept until: a moment with its zone, or a bare date (read as UTC).",
        examples=["2036-12-31"],
    )

    @field_validator("until", mode="before")
    @classmethod
    def _bare_date_is_utc(cls, value: object) -> object:
        if isinstance(value, str) and _DATE.fullmatch(value.strip()):
            return f"{value.strip()}T00:00:00Z"
        return value

    @model_validator(mode="after")
    def _kept_says_why(self) -> StatementLine:
        if self.outcome == "kept" and self.legal_basis is None:
            raise ValueError("a line that keeps data names its legal_basis")
        return self


class Statement(BaseModel):
    """A reply's words: who gives it, what was done, for an export whether anything is held."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(
        min_length=1,
        max_length=200,
        description="Who answers: a name, a role, an address.",
        examples=["Jane Doe, DPO, Payroll Ltd"],
    )
    lines: list[StatementLine] = Field(default_factory=list, max_length=200)
    nothing_held: bool = Field(
        default=False,
        description="Export: the processor holds nothing on the person.",
        examples=[True],
    )
    note: str | None = Field(default=None, max_length=2000)
    checklist: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Manual tasks: the checklist's steps done, as listed.",
    )


@dataclass
class Upload:
    """A reply's files, streamed into storage as they arrive; discarded if the reply fails.

    Each upload stores under its own random ``id``, recorded with each file (``key``):
    two replies racing to one request never write, or discard, each other's files.
    """

    resources: Resources
    link: ReplyLink
    max_bytes: int
    files: list[dict[str, Any]] = field(default_factory=list)
    id: str = field(default_factory=lambda: secrets.token_hex(8))

    def _key(self, index: int) -> str:
        link = self.link
        return reply_key(
            self.resources, link.job_id, link.generation, link.connector, self.id, index
        )

    async def add(self, filename: str, media_type: str, chunks: AsyncIterator[bytes]) -> None:
        """Store one file; :class:`ReplyRefused` past the size cap, or for too many files."""
        if len(self.files) >= MAX_FILES:
            raise ReplyRefused("unexpected", f"a reply carries {MAX_FILES} files at most")
        name = _unique(_safe_name(filename), {f["name"] for f in self.files})
        key = self._key(len(self.files))
        writer = self.resources.storage.writer(key, media_type)
        digest, size, before = hashlib.sha256(), 0, self.size
        try:
            async for chunk in chunks:
                size += len(chunk)
                if before + size > self.max_bytes:
                    raise ReplyRefused(
                        "too_large",
                        f"with {name} the reply passes the {self.max_bytes} bytes it may carry "
                        "(HANDOVER_REPLY_MAX_BYTES); nothing of this reply was kept",
                    )
                digest.update(chunk)
                await writer.write(chunk)
            if size == 0:
                raise ReplyRefused("unexpected", f"{name} is empty")
            await writer.complete()
        except BaseException:
            await writer.abort()
            raise
        self.files.append(
            {
                "name": name,
                "media_type": media_type,
                "bytes": size,
                "sha256": digest.hexdigest(),
                "key": key,
            }
        )

    @property
    def size(self) -> int:
        """Bytes stored so far."""
        return sum(f["bytes"] for f in self.files)

    async def discard(self) -> None:
        """Delete what this upload stored (the reply was refused), and nothing else."""
        for stored in self.files:
            await self.resources.storage.delete(stored["key"])


def reply_key(
    resources: Resources, job_id: str, generation: int, connector: str, upload: str, index: int
) -> str:
    """Where the ``index``-th file of the upload ``upload`` is kept: beside the job's staged
    parts, so it goes when they go (the archive written, the job ended)."""
    prefix = resources.staging_prefix(job_id)
    return f"{prefix}replies/{generation}/{connector}/{upload}/{index}"


def _safe_name(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    clean = _UNSAFE.sub("-", base).strip(".-")[:MAX_NAME]
    return clean or "file"


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, dot, suffix = name.partition(".")
    number = 2
    while f"{stem}-{number}{dot}{suffix}" in taken:
        number += 1
    return f"{stem}-{number}{dot}{suffix}"


class Handoffs:
    """Requests to processors a person serves, over one process's resources."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    @property
    def _waiting_key(self) -> str:
        return f"{self.resources.store.ns}handoff:waiting"

    # Asking.

    async def ask(self, job: Job, connector: ByHandConnector) -> Job | None:
        """Deliver the run's request and park the run; from the run's task, under its lease.

        The request (its nonce, its reply-by date) is recorded first, so delivering
        it again after a crash asks the same request (any of its links answers it) with
        the same Message-ID. Mail the
        server cannot take now raises :class:`TransientError` (the run retries), mail
        it refuses :class:`PermanentError` (the run fails, saying so).
        """
        store = self.resources.store
        name = connector.name
        handoff = job.connectors[name].handoff
        if handoff is None:
            now = utcnow()
            reply_by = min(now + timedelta(days=connector.reply_within_days), job.due_at)
            handoff = {
                "channel": connector.channel.kind,
                "to": connector.channel.to,
                "nonce": secrets.token_hex(8),
                "asked_at": iso(now),
                "reply_by": iso(reply_by),
                "reminders": 0,
                "escalated_at": None,
            }
            recorded = dict(handoff)

            def record(run: ConnectorRun) -> None:
                run.handoff = recorded

            if await store.update_run(job.id, name, record, generation=job.generation) is None:
                return None
        data: dict[str, Any] = {"channel": handoff["channel"], "reply_by": handoff["reply_by"]}
        if connector.channel.to is not None:
            link = self.link(job, name, handoff["nonce"], utcnow())
            message, message_id = self.compose(job, connector, link, handoff, "request")
            await self._send(message, connector.channel.to)
            data.update(message_id=message_id, to=connector.channel.to)
            handoff["message_id"] = message_id
        sent = dict(handoff)

        def waiting(run: ConnectorRun) -> None:
            run.status = RunStatus.WAITING_ON_PROCESSOR
            run.finished_at = None
            run.handoff = sent

        after = await store.update_run(
            job.id, name, waiting, generation=job.generation, event="processor.asked", data=data
        )
        if after is not None:
            await self._schedule(job.id, name, self._next_look(connector, sent, utcnow()))
        return after

    def link(self, job: Job, connector: str, nonce: str, now: datetime) -> ReplyLink:
        """A fresh reply link for the run's request, expiring ``HANDOVER_REPLY_LINK_TTL``
        after ``now``."""
        expires = int((now + self.resources.settings.reply_link_ttl).timestamp())
        return ReplyLink(job.id, connector, job.generation, nonce, expires)

    def page_url(self, link: ReplyLink) -> str:
        """Where the person opens the reply page."""
        base = (self.resources.settings.public_url or "http://127.0.0.1:8080").rstrip("/")
        return f"{base}{PAGE_PATH}{link.token(self.resources)}"

    def compose(
        self,
        job: Job,
        connector: ByHandConnector,
        link: ReplyLink,
        handoff: dict[str, Any],
        occasion: str,
    ) -> tuple[EmailMessage, str]:
        """The request (``request``), a reminder (``reminder-N``) or an overdue one: the
        message and its Message-ID (job, generation, connector and occasion at the sender's
        domain, so one sent again is one message to mail clients)."""
        settings = self.resources.settings
        sender = settings.mail_from or EMBEDDED_SENDER
        controller = parseaddr(sender)[0] or mail_address(sender)
        domain = mail_address(sender).rsplit("@", 1)[1]
        message_id = f"<handover.{job.id}.{job.generation}.{connector.name}.{occasion}@{domain}>"
        request = connector.request(job.subject_view, job.kind.value)
        reply_by = _day(handoff.get("reply_by"))
        expires = iso(datetime.fromtimestamp(link.expires, UTC))
        lines = ["Hello,", ""]
        if occasion.startswith("reminder"):
            lines += ["A reminder: we have not yet had your reply to the request below.", ""]
        if occasion == "overdue":
            lines += [f"Your reply was due on {reply_by}. Please answer without delay.", ""]
        lines += [
            f"{controller} asks you, as a recipient of personal data it controls, for "
            f"{WHAT.get(job.kind.value, _WHAT_ELSE)}: one of its users (a data subject) asked "
            f"for it under GDPR {request.article}.",
            *_purposes(job),
            "",
            "The person, as you know them:",
            *(f"  {key}: {value}" for key, value in request.identifiers.items()),
            "",
            f"Please reply by {reply_by}; the request must be answered by "
            f"{_day(iso(job.due_at))} at the latest.",
            "",
            HOW.get(job.kind.value, _HOW_ELSE),
            *([request.instructions] if request.instructions else []),
            "",
            f"Reply here (the link works for one reply, until {expires}):",
            self.page_url(link),
            "",
            f"Reference: {job.id} / {connector.name}",
            "This message was sent automatically by Handover.",
        ]
        message = EmailMessage()
        subject = f"Data-subject request {job.id} ({job.kind.value})"
        message["Subject"] = ("Reminder: " if occasion != "request" else "") + subject
        message["From"] = sender
        message["To"] = connector.channel.to or ""
        message["Date"] = format_datetime(utcnow())
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message["X-Handover-Job"] = job.id
        message["X-Handover-Connector"] = connector.name
        message["X-Handover-Notice"] = f"processor-{occasion.split('-')[0]}"
        message.set_content("\n".join(lines) + "\n")
        return message, message_id

    async def _send(self, message: EmailMessage, to: str) -> None:
        """Hand the message over as notices go (:mod:`jobs.notices`); failures as connector
        errors: :class:`TransientError` to try again, :class:`PermanentError` to give up."""
        settings = self.resources.settings
        try:
            if settings.smtp_url is not None:
                target = smtp_target(settings.smtp_url.reveal())
                await send_smtp(target, message, mail_address(str(message["From"])), to)
                return
            path = maildir_path(settings)
            if path is None:
                raise MailRefused("mail is off: HANDOVER_SMTP_URL is not set")
            try:
                await asyncio.to_thread(file_in_maildir, path, message)
            except OSError as exc:
                raise MailUnavailable(f"the maildir {path} cannot be written") from exc
        except MailUnavailable as exc:
            raise TransientError(f"the request could not be sent yet: {exc}") from None
        except MailError as exc:
            raise PermanentError(f"the request could not be sent: {exc}") from None

    # Waiting.

    def _next_look(
        self, connector: ByHandConnector, handoff: dict[str, Any], now: datetime
    ) -> datetime:
        """When the chase looks at the run next: the next reminder, or its reply-by date."""
        reply_by = datetime.fromisoformat(handoff["reply_by"])
        step = now + timedelta(days=connector.remind_every_days)
        if handoff.get("escalated_at") is not None or connector.channel.to is None:
            return step if now >= reply_by else reply_by
        return min(step, reply_by) if now < reply_by else step

    async def _schedule(self, job_id: str, connector: str, at: datetime) -> None:
        await self.resources.redis.zadd(self._waiting_key, {f"{job_id}|{connector}": epoch_ms(at)})

    async def forget(self, job_id: str, connector: str) -> None:
        """The run no longer waits: the chase leaves it be."""
        await self.resources.redis.zrem(self._waiting_key, f"{job_id}|{connector}")

    async def chase(self, now: datetime | None = None) -> list[tuple[Job, str]]:
        """Remind every waiting processor whose turn has come; escalate those overdue.

        Returns the (job, connector) pairs escalated now, for the caller to tell the
        platform (the ``job.processor_overdue`` webhook).
        """
        now = now or utcnow()
        redis: Any = self.resources.redis
        members = await redis.zrangebyscore(self._waiting_key, 0, epoch_ms(now), start=0, num=500)
        escalated = []
        for raw in members:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            job_id, _, name = member.partition("|")
            try:
                job = await self.resources.store.get(job_id)
            except JobNotFound:
                await self.forget(job_id, name)
                continue
            run = job.connectors.get(name)
            connector = self.resources.connectors.get(name)
            if (
                job.status.terminal
                or run is None
                or run.status is not RunStatus.WAITING_ON_PROCESSOR
                or run.handoff is None
                or not isinstance(connector, ByHandConnector)
            ):
                await self.forget(job_id, name)
                continue
            if await self._chase_one(job, connector, run.handoff, now):
                escalated.append((job, name))
        return escalated

    async def _chase_one(
        self, job: Job, connector: ByHandConnector, handoff: dict[str, Any], now: datetime
    ) -> bool:
        """Remind or escalate one run; whether it was escalated now."""
        store = self.resources.store
        reply_by = datetime.fromisoformat(handoff["reply_by"])
        overdue = now >= reply_by and handoff.get("escalated_at") is None
        updated = dict(handoff)
        event, data = None, {"reply_by": handoff["reply_by"]}
        if overdue:
            updated["escalated_at"] = iso(now)
            event = "processor.overdue"
            data["support_told"] = await self._tell_support(job, connector, handoff)
        if connector.channel.to is not None:
            updated["reminders"] = number = int(handoff.get("reminders", 0)) + 1
            occasion = "overdue" if overdue else f"reminder-{number}"
            link = self.link(job, connector.name, handoff["nonce"], now)
            message, message_id = self.compose(job, connector, link, handoff, occasion)
            try:
                await self._send(message, connector.channel.to)
            except (TransientError, PermanentError) as exc:
                data["reminder_error"] = str(exc)
            else:
                data.update(message_id=message_id, reminder=number)
            event = event or "processor.reminded"
        if event is None:
            await self._schedule(job.id, connector.name, self._next_look(connector, updated, now))
            return False

        def chased(run: ConnectorRun) -> None:
            if run.status is RunStatus.WAITING_ON_PROCESSOR:
                run.handoff = updated

        after = await store.update_run(
            job.id, connector.name, chased, generation=job.generation, event=event, data=data
        )
        if after is not None:
            await self._schedule(job.id, connector.name, self._next_look(connector, updated, now))
        return overdue and after is not None

    async def _tell_support(
        self, job: Job, connector: ByHandConnector, handoff: dict[str, Any]
    ) -> bool:
        """Email support that a processor's part is overdue (``HANDOVER_SUPPORT_EMAIL``)."""
        settings = self.resources.settings
        if settings.support_email is None:
            return False
        sender = settings.mail_from or EMBEDDED_SENDER
        domain = mail_address(sender).rsplit("@", 1)[1]
        message = EmailMessage()
        message["Subject"] = f"Overdue: {connector.name}'s part of request {job.id}"
        message["From"] = sender
        message["To"] = settings.support_email
        message["Date"] = format_datetime(utcnow())
        message["Message-ID"] = (
            f"<handover.{job.id}.{job.generation}.{connector.name}.escalation@{domain}>"
        )
        message["Auto-Submitted"] = "auto-generated"
        message["X-Handover-Job"] = job.id
        message["X-Handover-Notice"] = "processor-escalation"
        how = "by email to " + connector.channel.to if connector.channel.to else "as a staff task"
        message.set_content(
            f"The {job.kind.value} request {job.id} waits on {connector.name} ({how}), asked on "
            f"{_day(handoff.get('asked_at'))}, due to reply by {_day(handoff.get('reply_by'))}. "
            f"The request must be answered by {_day(iso(job.due_at))}.\n\n"
            "See the job on the dashboard.\n"
        )
        try:
            await self._send(message, settings.support_email)
        except (TransientError, PermanentError):
            return False
        return True

    # Replies.

    async def open(self, link: ReplyLink) -> tuple[Job, ByHandConnector]:
        """The job and connector a link answers, if a reply may still be given.

        A reply after the job ended is refused, and the attempt recorded on its
        timeline: nothing a processor sends vanishes without trace.
        """
        try:
            job = await self.resources.store.get(link.job_id)
        except JobNotFound:
            raise ReplyRefused("invalid", "this reply link is not valid") from None
        connector = self.resources.connectors.get(link.connector)
        run = job.connectors.get(link.connector)
        if run is None or not isinstance(connector, ByHandConnector):
            raise ReplyRefused("invalid", "this reply link is not valid")
        handoff = run.handoff or {}
        if run.reply is not None and handoff.get("nonce") == link.nonce:
            _check_run(job, link)  # answered already: says when
        if job.status.terminal:
            await self.resources.store.add_event(
                job.id,
                "processor.reply_refused",
                "processor",
                {"connector": link.connector, "reason": f"the request ended {job.status.value}"},
            )
            raise ReplyRefused(
                "ended",
                f"request {job.id} has ended ({job.status.value}): nothing more can be "
                "recorded for it; your attempt was noted",
            )
        _check_run(job, link)
        return job, connector

    def upload(self, link: ReplyLink) -> Upload:
        """Where a reply's files go while it is read."""
        return Upload(self.resources, link, self.resources.settings.reply_max_bytes)

    async def record(
        self,
        link: ReplyLink,
        statement: Statement,
        upload: Upload,
        *,
        actor: str = "processor",
        via: str = "link",
    ) -> Job:
        """Take the reply: checked against what was asked, recorded on the run, which is
        ``pending`` again for its task to answer with it. Refused: the files are deleted."""
        try:
            job, connector = await self.open(link)
            _check_fits(job, connector, statement, upload)
            reply = {
                "by": statement.by.strip(),
                "at": iso(utcnow()),
                "generation": link.generation,
                "via": via,
                "files": upload.files,
                "lines": [
                    line.model_dump(mode="json", exclude_none=True) for line in statement.lines
                ],
                "nothing_held": statement.nothing_held,
                "note": statement.note,
                "checklist": statement.checklist,
            }
            if via == "dashboard":
                reply["recorded_by"] = actor  # the signed-in staff member, not words typed

            def replied(run: ConnectorRun) -> None:
                _check_run(job, link, run)
                run.status = RunStatus.PENDING
                run.reply = reply

            after = await self.resources.store.update_run(
                job.id,
                link.connector,
                replied,
                generation=job.generation,
                event="processor.replied",
                actor=actor,
                data={
                    "by": reply["by"],
                    "via": via,
                    "files": [{k: f[k] for k in ("name", "bytes", "sha256")} for f in upload.files],
                    "lines": len(statement.lines),
                    "nothing_held": statement.nothing_held,
                },
            )
            if after is None:
                raise ReplyRefused("ended", f"request {job.id} has ended: the reply was not taken")
        except BaseException:
            await upload.discard()
            raise
        await self.forget(job.id, link.connector)
        return after

    def answered(self, connector: ByHandConnector, job: Job) -> Answered:
        """The connector answering with the run's recorded reply (files read from storage)."""
        reply = job.connectors[connector.name].reply or {}
        storage = self.resources.storage
        files = tuple(
            reply_file(f["name"], storage.read(f["key"]), f["media_type"])
            for f in reply.get("files", [])
        )
        lines = tuple(
            Erased(
                line["what"],
                line["outcome"],
                line.get("records", 0),
                line.get("legal_basis"),
                datetime.fromisoformat(line["until"]) if line.get("until") else None,
            )
            for line in reply.get("lines", [])
        )
        return connector.answered(
            Reply(
                by=reply.get("by", ""),
                at=datetime.fromisoformat(reply["at"]) if reply.get("at") else utcnow(),
                files=files,
                lines=lines,
                note=reply.get("note"),
                via=reply.get("via", "link"),
                recorded_by=reply.get("recorded_by"),
                checklist=tuple(reply.get("checklist", ())),
            )
        )


def _check_run(job: Job, link: ReplyLink, run: ConnectorRun | None = None) -> None:
    """The link still answers the run's open request (its nonce, whatever the job's
    generation now); :class:`ReplyRefused` saying why not."""
    run = run or job.connectors[link.connector]
    if run.handoff is None or run.handoff.get("nonce") != link.nonce:
        raise ReplyRefused(
            "superseded", "this request was replaced by a newer one: use the newest link"
        )
    if run.reply is not None:
        raise ReplyRefused(
            "used",
            f"this request was answered already, on {run.reply.get('at')}: a link works once",
        )
    if run.status is not RunStatus.WAITING_ON_PROCESSOR:
        raise ReplyRefused("used", "this request is not waiting for a reply")


def _check_fits(job: Job, connector: ByHandConnector, statement: Statement, upload: Upload) -> None:
    """What was sent fits what was asked: files for an export, a statement otherwise."""
    if job.kind is JobKind.EXPORT:
        if statement.lines:
            raise ReplyRefused(
                "unexpected", "an export asks for files (or nothing_held), not statement lines"
            )
        if not upload.files and not statement.nothing_held:
            raise ReplyRefused(
                "unexpected", "upload the data you hold on this person, or state nothing_held"
            )
        if upload.files and statement.nothing_held:
            raise ReplyRefused("unexpected", "files were sent, yet nothing_held is stated")
    else:
        if upload.files:
            raise ReplyRefused("unexpected", f"a {job.kind.value} asks for a statement, not files")
        if not statement.lines:
            raise ReplyRefused(
                "unexpected",
                f"state what was done: at least one line ({', '.join(outcomes(job.kind.value))})",
            )
        _check_lines(job, statement)
    unknown = sorted(set(statement.checklist) - set(connector.checklist))
    if unknown:
        raise ReplyRefused(
            "unexpected", f"not steps of this task's checklist: {', '.join(unknown)}"
        )
    unticked = [step for step in connector.checklist if step not in statement.checklist]
    if unticked:
        raise ReplyRefused(
            "unexpected", f"a task is done once every step is: not ticked: {', '.join(unticked)}"
        )


def _check_lines(job: Job, statement: Statement) -> None:
    """Each line states an outcome the request's kind can have; an objection's lines name
    its purposes."""
    kind = job.kind.value
    allowed = outcomes(kind)
    for number, line in enumerate(statement.lines, 1):
        if line.outcome not in allowed:
            raise ReplyRefused(
                "unexpected",
                f"line {number}: {line.outcome!r} is not an outcome of a {kind} "
                f"(one of {', '.join(allowed)})",
            )
    purposes = getattr(job.options, "purposes", None)
    if purposes is None:
        return
    for number, line in enumerate(statement.lines, 1):
        if line.what not in purposes:
            raise ReplyRefused(
                "unexpected",
                f"line {number}: {line.what!r} is not a purpose objected to "
                f"(one of {', '.join(purposes)})",
            )


def _purposes(job: Job) -> list[str]:
    """An objection's purposes, as the request names them (other kinds have none)."""
    purposes = getattr(job.options, "purposes", None)
    return ["", "Purposes objected to: " + ", ".join(purposes)] if purposes else []


def _day(moment: str | None) -> str:
    """A moment as a day in processors' mail: ``2027-01-04``."""
    return moment[:10] if moment else "—"


def reply_statement(run: ConnectorRun) -> dict[str, Any]:
    """A by-hand processor's reply as a signed manifest states it: who gave it, when, how
    many files (each listed, with its SHA-256, among the archive's), whether it said it
    holds nothing; recorded on the dashboard, the signed-in staff member who recorded it
    and the checklist's steps done. Empty for any other run."""
    if run.reply is None:
        return {}
    reply = run.reply
    statement = {
        "given_by": reply["by"],
        "given_at": reply["at"],
        "via": reply["via"],
        "files": len(reply["files"]),
        "nothing_held": reply["nothing_held"],
        "note": reply["note"],
    }
    if reply["via"] == "dashboard":
        statement.update(recorded_by=reply["recorded_by"], checklist_done=reply["checklist"])
    return {"statement": statement}


__all__ = [
    "API_PATH",
    "PAGE_PATH",
    "Handoffs",
    "ReplyLink",
    "ReplyRefused",
    "Statement",
    "StatementLine",
    "Upload",
    "outcomes",
    "reply_key",
    "reply_statement",
]
