"""Notices to the subject: what the law says they must be told, by email, in their language.

::

    notice                 sent when                                        details
    acknowledged           a request is received                            —
    awaiting_confirmation  an erasure waits for the subject's confirmation  —
    extended               the deadline is extended (GDPR Art. 12(3))       reason, due_at
    completed              an export's archive is ready, an erasure's or    —
                           restriction's receipt is signed
    refused                the request is refused (Art. 12(4), 12(5))       grounds, reason,
                                                                            authority, authority_url
    information_needed     support asks for information (Art. 12(6))        needed
    restriction_lifting    a restriction is about to be lifted (Art. 18(3)) lifts_at, reason
    disclosed              data was disclosed to an authority under its     authority, reference,
                           order, when the order's notice rule allows       legal_basis,
                           (:mod:`jobs.disclosures`)                        disclosed_at

:func:`notify_subject` queues one notice; the worker's task (:func:`deliver_notice`)
writes and sends it. The notices a new request gets at once (``acknowledged``, an erasure's
``awaiting_confirmation``) are queued by :func:`queued_with_job` in the very step that
stores the job, so a request costs one round trip to Redis and its notice can't be lost
between the two. ``completed`` links to where the subject signs in
(``HANDOVER_PRIVACY_URL``, else the job's path under ``HANDOVER_PUBLIC_URL``), never
to the archive itself: a forwarded or intercepted email downloads nothing.

Where notices go: with ``HANDOVER_SMTP_URL``, to that server (:mod:`jobs.mail`);
without it on the embedded store, into a maildir in the data dir (``DATA_DIR/mail``),
which the support dashboard lists; without it on a shared Redis, nowhere: notices
are off, and each one is recorded as skipped.

The address is the subject's ``email`` identifier on the job as passed. A job forgets
its identifiers in the transaction that ends it, so a notice about an ending is
queued with the job as read before that transaction, and its task waits until the
job has ended as the notice says (the finish queues ``completed`` just before the
job moves to ``succeeded``; if it never does, nothing is sent). No address, no notice,
and the timeline says so.

Personal data and the queue: the task's arguments name the job, the notice and the
generation only, because arq keeps arguments in its job and result keys and logs
them. The address and the details (staff's own words) wait in a key of their own,
``{ns}notice:{job}:{notice}:{generation}:letter``, deleted the moment the message is
handed over or given up, and expiring after :data:`LETTER_TTL` whatever happens.

Once per job, notice and generation (and, for ``extended``, new date: each extension
is told): ``{ns}notice:{job}:{notice}:{generation}`` holds the notice's state
(``queued``, ``sent``, ``failed``, ``skipped``; no personal data) for :data:`STATE_TTL`,
and a second call changes nothing. The Message-ID is made of the same and the sender's
domain, so a message sent twice (a worker killed between handing it over and recording
it) is one message to mail clients.

The timeline records ``notice.sent`` (notice, message_id, language, via),
``notice.failed`` (notice, error, attempts) and ``notice.skipped`` (notice, reason).
A server that cannot be reached, or answers 4xx, is tried again with exponential
backoff and full jitter (as webhooks are), :data:`MAX_TRIES` times in all; a 5xx
answer gives up at once. The job itself is never affected.

Notices of a personal data breach to the subjects it affects (GDPR Art. 34) are not
about a request: :mod:`jobs.breach_notices` sends them, one per subject, with the letter
:func:`write_breach_notice` writes, composed once per language and copied for each
recipient (:func:`merge_breach_notice`), and handed over as every notice is.

Language: the job's ``locale`` (the request's, else the token's ``locale`` claim)
reduced to its primary subtag: ``en``, ``fr``, ``nl`` or ``de``; anything else gets
English. Texts are gettext catalogs (``jobs/locale``: ``.po`` sources, ``.mo``
compiled by ``make catalogs`` and kept beside them), laid out as text and HTML by
the templates in ``jobs/templates``.
"""

from __future__ import annotations

import asyncio
import gettext
import logging
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import orjson
from arq.worker import Retry

from jobs.mail import (
    MailRefused,
    MailUnavailable,
    file_in_maildir,
    mail_address,
    send_smtp,
    smtp_target,
    usable_address,
)
from jobs.model import ErasureOptions, Job, JobKind, JobStatus, utcnow
from jobs.resources import Resources
from jobs.settings import Settings
from jobs.store import Alongside, JobNotFound, QueuedTask

log = logging.getLogger("handover.notices")

NOTICE_TASK = "send_notice"
#: Attempts at one notice, waiting for its job included, before it is given up.
MAX_TRIES = 10
#: How long the address and details of a notice not yet sent are kept, at most.
LETTER_TTL = timedelta(days=7)
#: How long a notice's state is remembered (a second call within it changes nothing).
STATE_TTL = timedelta(days=30)
LANGUAGES = ("en", "fr", "nl", "de")
DOMAIN = "handover"
LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATES = Path(__file__).parent / "templates"
#: Where notices go in embedded mode, under the data dir.
MAILDIR = "mail"
#: The sender when embedded mode has no ``HANDOVER_MAIL_FROM``.
EMBEDDED_SENDER = "Handover <handover@localhost>"
_DETAIL_LIMIT = 2000


@dataclass(frozen=True)
class Notice:
    """One kind of notice: the details its callers must give.

    ``distinct_by`` names the detail that makes another notice of the same kind in the
    same generation a new one (a second extension has a new date), not a repeat.
    """

    name: str
    details: frozenset[str]
    distinct_by: str | None = None


NOTICES = {
    notice.name: notice
    for notice in (
        Notice("acknowledged", frozenset()),
        Notice("awaiting_confirmation", frozenset()),
        Notice("extended", frozenset({"reason", "due_at"}), distinct_by="due_at"),
        Notice("completed", frozenset()),
        Notice("refused", frozenset({"grounds", "reason", "authority", "authority_url"})),
        Notice("information_needed", frozenset({"needed"})),
        Notice("restriction_lifting", frozenset({"lifts_at", "reason"})),
        Notice("disclosed", frozenset({"authority", "reference", "legal_basis", "disclosed_at"})),
    )
}


def backoff(attempt: int, base: float = 2.0, cap: float = 600.0) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def maildir_path(settings: Settings) -> Path | None:
    """The maildir notices go to: in embedded mode only (no SMTP URL, the embedded store)."""
    if settings.smtp_url is None and settings.embedded_redis:
        return settings.data_dir / MAILDIR
    return None


def language_of(locale: str | None) -> str:
    """The language a notice is written in: ``locale``'s primary subtag if written, else en."""
    primary = (locale or "").replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in LANGUAGES else "en"


def _instance(notice: str, generation: int, occasion: str) -> str:
    """Which notice of a job this is: its name, the generation, the occasion if any."""
    return f"{notice}:{generation}" + (f":{occasion}" if occasion else "")


def _state_key(
    resources: Resources, job_id: str, notice: str, generation: int, occasion: str = ""
) -> str:
    return f"{resources.store.ns}notice:{job_id}:{_instance(notice, generation, occasion)}"


def _task_id(job_id: str, notice: str, generation: int, occasion: str) -> str:
    # Never "<job>:<generation>…": the sweeper takes such ids for the job's own work.
    return f"notice:{job_id}:{_instance(notice, generation, occasion)}"


def _occasion(notice: str, details: Mapping[str, str]) -> str:
    """What tells this notice from an earlier one of its kind (a new date), as key-safe text."""
    distinct_by = NOTICES[notice].distinct_by
    return re.sub(r"[^0-9A-Za-z]", "", details[distinct_by])[:32] if distinct_by else ""


def _checked(notice: str, details: Mapping[str, Any]) -> dict[str, str]:
    """The details as stored: each one the notice needs, as text (moments in ISO 8601)."""
    spec = NOTICES.get(notice)
    if spec is None:
        raise ValueError(f"unknown notice {notice!r}; known: {', '.join(NOTICES)}")
    given = set(details)
    if given != spec.details:
        missing, extra = sorted(spec.details - given), sorted(given - spec.details)
        raise TypeError(f"notice {notice}: missing details {missing}, unexpected {extra}")
    checked = {}
    for name, value in details.items():
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        if not isinstance(value, str):
            raise TypeError(f"notice {notice}: {name} must be text or a datetime")
        checked[name] = value[:_DETAIL_LIMIT]
    return checked


def _skip_reason(settings: Settings, job: Job, notice: str) -> str | None:
    """Why the subject cannot be written to about this job, if they cannot."""
    if isinstance(job.options, ErasureOptions) and job.options.dry_run:
        return "a dry run: nothing was asked of the processors, so nothing is told the subject"
    if job.kind is JobKind.DISCLOSURE and notice != "disclosed":
        return "a disclosure to an authority: the subject is told only as its notice rule says"
    if settings.smtp_url is None and maildir_path(settings) is None:
        return "notices are off: HANDOVER_SMTP_URL is not set"
    address = job.identity.identifiers.get("email")
    if address is None:
        return "no email address of the subject is known"
    if not usable_address(address):
        return "the subject's email address cannot be written to"
    return None


@dataclass(frozen=True)
class _Queuing:
    """One notice about to be queued: where its state goes, and what is written there."""

    key: str
    occasion: str
    skip: str | None
    language: str
    letter: bytes


def _queuing(
    resources: Resources, job: Job, notice: str, occasion: str, details: Mapping[str, Any]
) -> _Queuing:
    values = _checked(notice, details)
    occasion = occasion or _occasion(notice, values)
    return _Queuing(
        key=_state_key(resources, job.id, notice, job.generation, occasion),
        occasion=occasion,
        skip=_skip_reason(resources.settings, job, notice),
        language=language_of(job.options.locale),
        letter=orjson.dumps({"to": job.identity.identifiers.get("email"), "details": values}),
    )


async def notify_subject(
    resources: Resources, job: Job, notice: str, *, occasion: str = "", **details: Any
) -> None:
    """Queue ``notice`` to ``job``'s subject, once per job, notice and generation (and,
    for ``extended``, new date: each extension is told; and per ``occasion`` when given,
    key-safe text such as the id of the lift that tells it).

    ``job`` must still hold the subject's identifiers: for a notice about the job's
    end, pass the job as read before the transaction that ends it. ``details`` are
    the notice's (see the module's table); datetimes become ISO 8601. An unknown
    notice or wrong details raise at once (a programming error), before anything is
    written. With no address, on a dry run, or with notices off, the timeline
    records ``notice.skipped`` with the reason and nothing is queued. A notice about
    a request being received is queued with the new job instead (:func:`queued_with_job`).
    """
    queuing = _queuing(resources, job, notice, occasion, details)
    skipped = (
        resources.store.event_command(
            job.id, "notice.skipped", "notices", {"notice": notice, "reason": queuing.skip}
        )
        if queuing.skip is not None
        else []
    )
    redis: Any = resources.redis  # redis-py types async results as sync-or-async unions
    script = redis.register_script(_RECORD)
    state = (
        await script(
            keys=[queuing.key],
            args=[
                "skipped" if queuing.skip else "queued",
                queuing.language,
                int(STATE_TTL.total_seconds()),
                int(LETTER_TTL.total_seconds()),
                "" if queuing.skip else queuing.letter,  # the address goes nowhere unsent
                *skipped,
            ],
        )
    ).decode()
    if state == "queued":  # new, or queued before a crash: queuing again queues once
        await resources.redis.enqueue_job(
            NOTICE_TASK,
            job.id,
            notice,
            job.generation,
            queuing.occasion,
            _job_id=_task_id(job.id, notice, job.generation, queuing.occasion),
        )


#: :func:`notify_subject`'s record of a notice, once. KEYS[1]: the notice's state;
#: ARGV: its state (``queued`` or ``skipped``), language, the state's and the letter's
#: TTL (seconds), the letter, then (when skipped) the ``notice.skipped`` event's ``XADD``
#: words. A notice recorded before keeps its state, and nothing is written: the answer.
_RECORD = """
local known = redis.call('HGET', KEYS[1], 'state')
if known then return known end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'language', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[1] == 'queued' then
  redis.call('SET', KEYS[1] .. ':letter', ARGV[5], 'EX', ARGV[4])
elseif #ARGV > 5 then
  redis.call(unpack(ARGV, 6, #ARGV))
end
return ARGV[1]
"""


def queued_with_job(resources: Resources, job: Job, *notices: str) -> Alongside:
    """``notices`` (with no details) to a new ``job``'s subject, to be stored with the job
    itself (:meth:`jobs.store.JobStore.create`): each one's state, letter and task, or its
    ``notice.skipped`` event, as :func:`notify_subject` writes them.

    The job and its notices are stored in one step, so a notice is queued exactly when
    its job is: once (a job is stored once), and never lost to a crash in between.
    """
    commands: list[list[str]] = []
    tasks: list[QueuedTask] = []
    events: list[tuple[str, str, dict[str, Any]]] = []
    for notice in notices:
        queuing = _queuing(resources, job, notice, "", {})
        state = "skipped" if queuing.skip else "queued"
        key = queuing.key
        commands.append(["HSET", key, "state", state, "language", queuing.language])
        commands.append(["EXPIRE", key, str(int(STATE_TTL.total_seconds()))])
        if queuing.skip is not None:
            events.append(("notice.skipped", "notices", {"notice": notice, "reason": queuing.skip}))
            continue
        letter_ttl = str(int(LETTER_TTL.total_seconds()))
        commands.append(["SET", f"{key}:letter", queuing.letter.decode(), "EX", letter_ttl])
        task_id = _task_id(job.id, notice, job.generation, queuing.occasion)
        args = (job.id, notice, job.generation, queuing.occasion)
        tasks.append(QueuedTask.now(resources.redis, NOTICE_TASK, *args, task_id=task_id))
    return Alongside(commands=commands, tasks=tasks, events=events)


async def notice_state(
    resources: Resources, job: Job, notice: str, occasion: str = ""
) -> str | None:
    """Where ``notice`` about ``job`` (its current generation; the ``occasion`` it was
    queued for, if any) stands: ``queued``, ``sent``, ``failed``, ``skipped``, or None when
    it was never asked for (or is forgotten)."""
    key = _state_key(resources, job.id, notice, job.generation, occasion)
    redis: Any = resources.redis  # redis-py types async results as sync-or-async unions
    state = await redis.hget(key, "state")
    return state.decode() if isinstance(state, bytes) else None


def _readiness(job: Job, notice: str, generation: int) -> str | None:
    """``None`` when the notice may go now; ``"wait"``; or why it no longer should."""
    if notice == "awaiting_confirmation" and job.status is not JobStatus.AWAITING_CONFIRMATION:
        return f"the request is {job.status.value} now: it no longer awaits confirmation"
    if notice != "completed":
        return None
    if job.generation == generation and job.status is JobStatus.RUNNING:
        return "wait"  # queued just before the job ends; it has not yet
    if job.status is not JobStatus.SUCCEEDED:
        return f"the request ended {job.status.value}, not completed"
    return None


async def deliver_notice(
    resources: Resources,
    job_id: str,
    notice: str,
    generation: int,
    occasion: str = "",
    *,
    attempt: int = 1,
) -> None:
    """Write and send one queued notice; the worker's task (:data:`NOTICE_TASK`)."""
    redis: Any = resources.redis
    key = _state_key(resources, job_id, notice, generation, occasion)
    state = await redis.hgetall(key)
    if state.get(b"state") != b"queued":
        return  # sent, given up or skipped already: arq runs a task at least once
    raw = await redis.get(f"{key}:letter")
    try:
        job = await resources.store.get(job_id)
    except JobNotFound:
        await redis.delete(key, f"{key}:letter")
        return
    if raw is None:
        error = f"its address was kept {LETTER_TTL.days} days and expired unsent"
        await _end(resources, job_id, notice, key, "failed", {"error": error, "attempts": attempt})
        return
    letter = orjson.loads(raw)
    readiness = _readiness(job, notice, generation)
    if readiness == "wait" and attempt < MAX_TRIES:
        raise Retry(defer=backoff(attempt, base=1.0, cap=60.0))
    if readiness is not None:
        reason = "the request had not ended" if readiness == "wait" else readiness
        await _end(resources, job_id, notice, key, "skipped", {"reason": reason})
        return
    language = state.get(b"language", b"en").decode()
    message, message_id, via = compose(
        resources.settings,
        job,
        notice,
        _instance(notice, generation, occasion),
        language,
        letter["to"],
        letter["details"],
    )
    try:
        await _hand_over(resources.settings, message, letter["to"])
    except MailRefused as exc:
        await _give_up(resources, job_id, notice, key, str(exc), attempt)
        return
    except MailUnavailable as exc:
        if attempt >= MAX_TRIES:
            await _give_up(resources, job_id, notice, key, str(exc), attempt)
            return
        log.warning("notice %s of job %s not sent (attempt %d): %s", notice, job_id, attempt, exc)
        raise Retry(defer=backoff(attempt)) from None
    data = {"message_id": message_id, "language": language, "via": via}
    if occasion:
        data["occasion"] = occasion  # which of a job's notices of this kind: e.g. which lift's
    await _end(resources, job_id, notice, key, "sent", data)
    log.info("notice %s of job %s sent: %s", notice, job_id, message_id)


async def _give_up(
    resources: Resources, job_id: str, notice: str, key: str, error: str, attempts: int
) -> None:
    log.error(
        "notice %s of job %s given up after %d attempt(s): %s", notice, job_id, attempts, error
    )
    await _end(resources, job_id, notice, key, "failed", {"error": error, "attempts": attempts})


async def _end(
    resources: Resources, job_id: str, notice: str, key: str, state: str, data: dict[str, Any]
) -> None:
    """Record how the notice ended on the timeline, then forget its address and details."""
    await resources.store.add_event(
        job_id, f"notice.{state}", "notices", {"notice": notice, **data}
    )
    async with resources.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, "state", state)
        pipe.delete(f"{key}:letter")
        await pipe.execute()


async def _hand_over(settings: Settings, message: EmailMessage, to: str) -> None:
    if settings.smtp_url is not None:
        target = smtp_target(settings.smtp_url.reveal())
        await send_smtp(target, message, mail_address(str(message["From"])), to)
        return
    path = maildir_path(settings)
    if path is None:
        raise MailRefused("notices are off: HANDOVER_SMTP_URL is not set")
    try:
        await asyncio.to_thread(file_in_maildir, path, message)
    except OSError as exc:
        raise MailUnavailable(f"the maildir {path} cannot be written: {exc.strerror}") from None


# Writing.


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of ``language`` (English is the texts themselves)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True)
class Letter:
    """What one notice says, in one language, before it is laid out."""

    subject: str
    paragraphs: tuple[str, ...]
    link: str
    link_text: str


def subject_link(settings: Settings, job: Job) -> str:
    """Where the subject signs in to follow the request (never an archive's own link).

    ``HANDOVER_PRIVACY_URL`` (``{job}`` in it becomes the job's id), else the job's
    path under ``HANDOVER_PUBLIC_URL``.
    """
    if settings.privacy_url is not None:
        return settings.privacy_url.replace("{job}", job.id)
    base = (settings.public_url or "http://127.0.0.1:8080").rstrip("/")
    return f"{base}/v1/jobs/{job.id}"


def write(
    settings: Settings, job: Job, notice: str, language: str, details: Mapping[str, str]
) -> Letter:
    """The letter of ``notice`` about ``job`` in ``language``."""
    _ = translations(language).gettext
    day = _day_writer(_, settings.zone)
    received = day(job.created_at)
    what = {
        JobKind.EXPORT: _("a copy of your personal data"),
        JobKind.ERASURE: _("the erasure of your personal data"),
        JobKind.RESTRICTION: _("the restriction of the processing of your personal data"),
        JobKind.OBJECTION: _("your objection to the processing of your personal data"),
        JobKind.RECTIFICATION: _("the rectification of your personal data"),
        JobKind.LIFT: _("the lifting of the restriction of the processing of your personal data"),
        JobKind.DISCLOSURE: _("a disclosure of your personal data to an authority"),
    }[job.kind]
    follow = _("Sign in to follow your request")
    link = subject_link(settings, job)
    if notice == "acknowledged":
        return Letter(
            _("We received your request"),
            (
                _("We received your request on {received}. It concerns {what}.").format(
                    received=received, what=what
                ),
                _("We will answer it by {due} at the latest.").format(due=day(job.due_at)),
            ),
            link,
            follow,
        )
    if notice == "awaiting_confirmation":
        return Letter(
            _("Please confirm the erasure of your data"),
            (
                _("We received your request on {received} to erase your personal data.").format(
                    received=received
                ),
                _("Nothing is erased until you confirm it. Erasure cannot be undone."),
                _("If you did not make this request, do not confirm it."),
            ),
            link,
            _("Sign in to confirm or cancel"),
        )
    if notice == "extended":
        return Letter(
            _("More time is needed to answer your request"),
            (
                _(
                    "Your request of {received} concerns {what}. We need more time to answer "
                    "it, as the law allows: we will answer it by {due} at the latest."
                ).format(received=received, what=what, due=day(_moment(details["due_at"]))),
                _("The reason: {reason}").format(reason=details["reason"]),
            ),
            link,
            follow,
        )
    if notice == "completed":
        return _completed(job, received, day, link, _)
    if notice == "refused":
        return Letter(
            _("We cannot act on your request"),
            (
                _("Your request of {received} concerns {what}. We cannot act on it.").format(
                    received=received, what=what
                ),
                _("Grounds: {grounds}").format(grounds=_grounds(details["grounds"], _)),
                _("The reason: {reason}").format(reason=details["reason"]),
                _(
                    "You have the right to lodge a complaint with a supervisory authority, "
                    "{authority} ({authority_url}), and to seek a judicial remedy."
                ).format(authority=details["authority"], authority_url=details["authority_url"]),
            ),
            link,
            follow,
        )
    if notice == "information_needed":
        return Letter(
            _("We need more information to answer your request"),
            (
                _(
                    "Your request of {received} concerns {what}. To answer it, we need more "
                    "information from you:"
                ).format(received=received, what=what),
                details["needed"],
            ),
            link,
            _("Sign in to answer"),
        )
    if notice == "restriction_lifting":
        return Letter(
            _("The restriction of your data is about to be lifted"),
            (
                _(
                    "The restriction of the processing of your personal data, which you asked "
                    "for on {received}, will be lifted on {lifts_on}."
                ).format(received=received, lifts_on=day(_moment(details["lifts_at"]))),
                _("The reason: {reason}").format(reason=details["reason"]),
            ),
            link,
            follow,
        )
    if notice == "disclosed":
        return _disclosed(settings, day, details, _)
    raise ValueError(f"unknown notice {notice!r}")


def _disclosed(
    settings: Settings,
    day: Callable[[datetime], str],
    details: Mapping[str, str],
    _: Callable[[str], str],
) -> Letter:
    """The ``disclosed`` letter; it links to the privacy center, never to the disclosure."""
    base = (settings.public_url or "http://127.0.0.1:8080").rstrip("/")
    return Letter(
        _("Your personal data was disclosed to an authority"),
        (
            _(
                "On {day}, the law compelled us to disclose personal data about you to "
                "{authority}, under its order {reference}."
            ).format(
                day=day(_moment(details["disclosed_at"])),
                authority=details["authority"],
                reference=details["reference"],
            ),
            _("The legal basis of the order: {legal_basis}").format(
                legal_basis=details["legal_basis"]
            ),
            _(
                "You may ask us for a copy of your personal data, which names this "
                "recipient, and you have the right to lodge a complaint with a supervisory "
                "authority."
            ),
        ),
        f"{base}/privacy",
        _("Sign in to see your requests"),
    )


def _completed(
    job: Job, received: str, day: Callable[[datetime], str], link: str, _: Callable[[str], str]
) -> Letter:
    if job.kind is JobKind.EXPORT:
        expires = day(job.result.expires_at) if job.result is not None else "—"
        return Letter(
            _("Your data is ready"),
            (
                _("The copy of your personal data you asked for on {received} is ready.").format(
                    received=received
                ),
                _(
                    "For your security, this message holds no download link: sign in to "
                    "download it. It can be downloaded until {expires}."
                ).format(expires=expires),
            ),
            link,
            _("Sign in to download your data"),
        )
    if job.kind is JobKind.ERASURE:
        return Letter(
            _("Your data has been erased"),
            (
                _("Your personal data has been erased, as you asked on {received}.").format(
                    received=received
                ),
                _(
                    "A signed receipt says what was erased where, and what the law obliges us "
                    "to keep, why and until when. Sign in to see it."
                ),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    if job.kind is JobKind.LIFT:
        return Letter(
            _("The restriction of your data has been lifted"),
            (
                _(
                    "The restriction of the processing of your personal data has been lifted, "
                    "as we told you beforehand."
                ),
                _("A signed receipt says where it was lifted. Sign in to see it."),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    if job.kind is JobKind.RECTIFICATION and not _all_found(job):
        return Letter(
            _("Your correction request has been handled"),
            (
                _(
                    "We acted on the correction you asked for on {received}. Some or all of "
                    "the data you named is not held where you said, and nothing was changed "
                    "there."
                ).format(received=received),
                _(
                    "A signed receipt says which data was corrected where, and where none was "
                    "found. Sign in to see it."
                ),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    if job.kind is JobKind.RECTIFICATION:
        return Letter(
            _("Your data has been corrected"),
            (
                _("Your personal data has been corrected, as you asked on {received}.").format(
                    received=received
                ),
                _("A signed receipt says which data was corrected where. Sign in to see it."),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    if job.kind is JobKind.OBJECTION and not _all_stopped(job):
        return Letter(
            _("Your objection has been handled"),
            (
                _(
                    "We acted on the objection you made on {received}. Some of the processors "
                    "offer no way to stop processing for every purpose you named."
                ).format(received=received),
                _(
                    "A signed receipt says where processing stopped and where it could not. "
                    "Sign in to see it."
                ),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    if job.kind is JobKind.OBJECTION:
        return Letter(
            _("Your objection has been acted on"),
            (
                _(
                    "Your personal data is no longer processed for the purposes you objected "
                    "to on {received}."
                ).format(received=received),
                _(
                    "A signed receipt says what was done where, and where it could not be "
                    "done. Sign in to see it."
                ),
            ),
            link,
            _("Sign in to see the receipt"),
        )
    return Letter(
        _("The processing of your data is restricted"),
        (
            _(
                "The processing of your personal data has been restricted, as you asked on "
                "{received}."
            ).format(received=received),
            _("A signed receipt says where it was restricted. Sign in to see it."),
        ),
        link,
        _("Sign in to see the receipt"),
    )


def _all_found(job: Job) -> bool:
    """Whether every processor of a rectification held each field it was asked to change
    (none reported it unverifiable, ``verified`` null, for want of a record)."""
    return all(
        field.get("verified") is not None
        for run in job.connectors.values()
        for field in (run.report or {}).get("fields", [])
    )


def _all_stopped(job: Job) -> bool:
    """Whether every processor of an objection could act on each purpose objected to (none
    reported one ``supported: false``)."""
    return all(
        purpose.get("supported") is True
        for run in job.connectors.values()
        for purpose in (run.report or {}).get("purposes", [])
    )


def _grounds(grounds: str, _: Callable[[str], str]) -> str:
    known = {
        "manifestly_unfounded": _("the request is manifestly unfounded (GDPR Art. 12(5))"),
        "excessive": _(
            "the request is excessive, in particular because of its repetitive character "
            "(GDPR Art. 12(5))"
        ),
        "identity_not_established": _(
            "your identity could not be established (GDPR Art. 11(2) and 12(2))"
        ),
        "data_accurate": _(
            "the data is accurate as it stands, so it was not changed (GDPR Art. 16)"
        ),
        "compelling_legitimate_grounds": _(
            "there are compelling legitimate grounds for the processing which override your "
            "interests, rights and freedoms (GDPR Art. 21(1))"
        ),
    }
    return known.get(grounds, grounds.replace("_", " "))


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _day_writer(_: Callable[[str], str], zone: tzinfo) -> Callable[[datetime], str]:
    """How the language writes a day, in the controller's time zone (where deadlines end):
    ``4 January 2027``, ``4 janvier 2027``…"""
    months = (
        _("January"),
        _("February"),
        _("March"),
        _("April"),
        _("May"),
        _("June"),
        _("July"),
        _("August"),
        _("September"),
        _("October"),
        _("November"),
        _("December"),
    )
    pattern = _("{day} {month} {year}")

    def day(moment: datetime) -> str:
        moment = moment.astimezone(zone)
        return pattern.format(day=moment.day, month=months[moment.month - 1], year=moment.year)

    return day


def compose(
    settings: Settings,
    job: Job,
    notice: str,
    instance: str,
    language: str,
    to: str,
    details: Mapping[str, str],
) -> tuple[EmailMessage, str, str]:
    """The message of a notice, its Message-ID and how it goes (``smtp`` or ``maildir``).

    Text and HTML (``multipart/alternative``); ``Auto-Submitted: auto-generated``
    (RFC 3834) so that auto-responders stay quiet; the Message-ID made of the job,
    the notice's ``instance`` (its name, the generation, the occasion) at the sender's domain.
    """
    letter = write(settings, job, notice, language, details)
    _ = translations(language).gettext
    sender = settings.mail_from or EMBEDDED_SENDER
    domain = mail_address(sender).rsplit("@", 1)[1]
    message_id = f"<handover.{job.id}.{instance.replace(':', '.')}@{domain}>"
    context = {
        "language": language,
        "letter": letter,
        "greeting": _("Hello,"),
        "reference": _("Reference of your request: {reference}").format(reference=job.id),
        "footer": _("This message was sent automatically."),
    }
    message = EmailMessage()
    message["Subject"] = letter.subject
    message["From"] = sender
    message["To"] = to
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Handover-Job"] = job.id
    message["X-Handover-Notice"] = notice
    message.set_content(_templates().get_template("notice.txt").render(context))
    message.add_alternative(
        _templates().get_template("notice.html").render(context), subtype="html"
    )
    message["Content-Language"] = language  # after the content, which clears Content-* headers
    return message, message_id, "smtp" if settings.smtp_url is not None else "maildir"


# Notices of a personal data breach (GDPR Art. 34): not about a request, so no job.


def write_breach_notice(settings: Settings, language: str, facts: Mapping[str, str]) -> Letter:
    """The Art. 34 letter in ``language``: the breach's nature in clear language, and the
    points (b), (c) and (d) of Art. 33(3) (Art. 34(2)), from ``facts`` (``nature``,
    ``consequences``, ``measures``, ``dpo_contact``), which are staff's own words."""
    _ = translations(language).gettext
    base = (settings.public_url or "http://127.0.0.1:8080").rstrip("/")
    return Letter(
        _("A personal data breach concerns your data"),
        (
            _(
                "We are writing to tell you of a personal data breach that concerns your "
                "personal data, as the law requires when it is likely to put your rights and "
                "freedoms at high risk."
            ),
            _("What happened: {nature}").format(nature=facts["nature"]),
            _("Its likely consequences: {consequences}").format(consequences=facts["consequences"]),
            _("What we have done, or will do, about it: {measures}").format(
                measures=facts["measures"]
            ),
            _("To learn more, contact our data protection officer: {contact}").format(
                contact=facts["dpo_contact"]
            ),
        ),
        f"{base}/privacy",
        _("Your privacy center"),
    )


def compose_breach_notice(
    settings: Settings, breach_id: str, line: int, language: str, to: str, facts: Mapping[str, str]
) -> tuple[EmailMessage, str, str]:
    """The message of an Art. 34 notice, its Message-ID and how it goes, as :func:`compose`.

    The Message-ID is made of the breach and the subject's line in the upload, so the
    same notice sent twice (a worker killed in between) is one message to mail clients.
    """
    letter = write_breach_notice(settings, language, facts)
    _ = translations(language).gettext
    sender = settings.mail_from or EMBEDDED_SENDER
    domain = mail_address(sender).rsplit("@", 1)[1]
    message_id = f"<handover.breach.{breach_id}.{line}@{domain}>"
    context = {
        "language": language,
        "letter": letter,
        "greeting": _("Hello,"),
        "reference": _("Reference of this notice: {reference}").format(reference=breach_id),
        "footer": _("This message was sent automatically."),
    }
    message = EmailMessage()
    message["Subject"] = letter.subject
    message["From"] = sender
    message["To"] = to
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Handover-Breach"] = breach_id
    message.set_content(_templates().get_template("notice.txt").render(context))
    message.add_alternative(
        _templates().get_template("notice.html").render(context), subtype="html"
    )
    message["Content-Language"] = language
    return message, message_id, "smtp" if settings.smtp_url is not None else "maildir"


#: Who a merged letter is addressed to before each recipient's copy is made.
_MERGE_TO = "recipient@handover.invalid"


@dataclass(frozen=True)
class MergedLetter:
    """One language's Art. 34 message, serialised once (a mail merge).

    Composing a message costs milliseconds, mostly the ``email`` package's header
    handling; a copy for one recipient replaces only its ``To`` and ``Message-ID`` in
    the serialised bytes (its ``Date`` is when the letter was composed, at the start of
    the task that sends it). An address that is not plain ASCII (it would need encoding)
    gets ``None``: compose that one whole (:func:`compose_breach_notice`).
    """

    raw: bytes
    to_field: bytes
    id_field: bytes
    breach_id: str
    domain: str
    via: str

    def copy_for(self, line: int, to: str) -> tuple[bytes, str] | None:
        """The bytes of the copy for ``to`` (line ``line`` of the upload), and its Message-ID."""
        if not to.isascii() or "\n" in to or "\r" in to:
            return None
        message_id = f"<handover.breach.{self.breach_id}.{line}@{self.domain}>"
        raw = self.raw.replace(self.to_field, b"\nTo: " + to.encode() + b"\n", 1)
        raw = raw.replace(self.id_field, f"\nMessage-ID: {message_id}\n".encode(), 1)
        return raw, message_id


def merge_breach_notice(
    settings: Settings, breach_id: str, language: str, facts: Mapping[str, str]
) -> MergedLetter:
    """The Art. 34 message in ``language``, ready for :meth:`MergedLetter.copy_for`."""
    message, message_id, via = compose_breach_notice(
        settings, breach_id, 0, language, _MERGE_TO, facts
    )
    raw = message.as_bytes()
    to_field = f"\nTo: {_MERGE_TO}\n".encode()
    id_field = f"\nMessage-ID: {message_id}\n".encode()
    if raw.count(to_field) != 1 or raw.count(id_field) != 1:
        raise ValueError("the merged letter's To or Message-ID is not where it is expected")
    domain = message_id.rsplit("@", 1)[1].rstrip(">")
    return MergedLetter(raw, to_field, id_field, breach_id, domain, via)


async def hand_over_bytes(settings: Settings, raw: bytes, to: str) -> None:
    """As :func:`hand_over`, for a message already serialised (a merged copy)."""
    if settings.smtp_url is not None:
        target = smtp_target(settings.smtp_url.reveal())
        await send_smtp(target, raw, mail_address(settings.mail_from or EMBEDDED_SENDER), to)
        return
    path = maildir_path(settings)
    if path is None:
        raise MailRefused("notices are off: HANDOVER_SMTP_URL is not set")
    try:
        await asyncio.to_thread(file_in_maildir, path, raw)
    except OSError as exc:
        raise MailUnavailable(f"the maildir {path} cannot be written: {exc.strerror}") from None


async def hand_over(settings: Settings, message: EmailMessage, to: str) -> None:
    """Send ``message`` to ``to`` the way every notice goes (SMTP, or the embedded maildir);
    :class:`~jobs.mail.MailRefused` when notices are off or the server refuses for good,
    :class:`~jobs.mail.MailUnavailable` when worth trying again."""
    await _hand_over(settings, message, to)


__all__ = [
    "MAX_TRIES",
    "NOTICES",
    "NOTICE_TASK",
    "Letter",
    "MergedLetter",
    "compose",
    "compose_breach_notice",
    "deliver_notice",
    "hand_over",
    "hand_over_bytes",
    "language_of",
    "maildir_path",
    "merge_breach_notice",
    "notice_state",
    "notify_subject",
    "subject_link",
    "write",
    "write_breach_notice",
]
