"""Telling the subjects a breach affects (GDPR Art. 34), each in their language, and
accounting for every one of them.

An admin uploads the affected subjects as lines of text, one subject id per line,
optionally followed by a comma and the subject's language tag (``alice`` or
``alice,fr``); blank lines are skipped. The upload is read as a stream and written to
Redis in chunks of :data:`CHUNK` lines, one list per chunk, so neither the API process
nor any single Redis value ever holds the whole list (100,000 ids are 100 chunks).
A malformed line stops the upload with its line number and removes what was written:
a fan-out starts whole or not at all. One fan-out per breach.

Each chunk is one worker task (:data:`TASK`), so chunks go out side by side on every
worker. For each line the task finds the subject's address through the identity-source
connectors (:func:`jobs.identity.resolve_identity`, as a request's first step does),
writes the Art. 34(2) letter in the line's language, else the language a source knows
(a ``locale`` identifier), else English (:func:`jobs.notices.write_breach_notice`), and
hands it over as every notice goes (SMTP, or the embedded maildir). What happened to
the line is recorded at once, so a task run again (arq runs tasks at least once) skips
what it did: ``sent`` (with the Message-ID), ``no_address`` (every source was asked and
none knows an address: such subjects are listed, for the controller to reach another
way, or to make a public communication, Art. 34(3)(c)), ``not_looked_up`` (an identity
source failed transiently through :data:`MAX_TRIES` attempts: whether an address is
known was never established), ``failed`` (the server refused, or stayed unreachable
through :data:`MAX_TRIES` attempts), ``unconfirmed`` (handed over by a run that stopped
before recording it) or ``duplicate`` (the id came earlier in the upload: told once).
A transient failure, of the mail server or of an identity source, leaves its line
undone and the chunk runs again later. No address is kept.

Each letter goes out **at most once**: a run claims a line (``HSETNX`` of its run id)
before handing its letter over, and a line claimed by another run is never handed over
again. A process that dies between the hand-over and the record leaves its claimed lines
``unconfirmed`` (the letter may or may not have gone out; it is not sent twice): the
delivery report lists them for the controller to check. A hand-over the server never
accepted (it could not be reached) gives its claim back, so the line goes out later.
``failed`` and ``not_looked_up`` lines can be sent again once the fan-out is done
(:meth:`BreachNotices.retry_failed`).

The upload is bounded while it streams: at most :data:`MAX_UPLOAD_LINES` lines and
:data:`MAX_UPLOAD_BYTES` bytes (:class:`UploadTooLarge`, nothing kept).

The delivery report (:meth:`BreachNotices.report`) accounts for every uploaded line, in
upload order; the progress (:meth:`BreachNotices.progress`) counts them by outcome.
The fan-out's start and end are in the audit log. Like the register, none of this is
a job: Handover's own retention leaves it be.

Layout: ``{ns}breach:{id}:art34`` (hash: state, counts, version, times),
``…:art34:chunk:{n}`` (list of ``line\\tid\\tlanguage\\tduplicate``),
``…:art34:outcome:{n}`` (hash: line → outcome JSON), ``…:art34:claims:{n}`` (hash:
line → the id of the run that handed it over), ``…:art34:seen`` (set of ids, to
find duplicates), ``…:art34:chunks_done`` (set), ``{ns}breaches:art34:sending`` (the
fan-outs under way, which the worker's cron queues again if their tasks were lost).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from arq.worker import Retry

from connectors.errors import TransientError
from connectors.items import Subject
from jobs.audit import AuditEntry
from jobs.breaches import BreachRegister, Recorder
from jobs.identity import resolve_identity
from jobs.lifecycle import NotAllowed
from jobs.mail import MailRefused, MailUnavailable, ensure_maildir, usable_address
from jobs.model import InvalidRequest, iso, utcnow
from jobs.notices import (
    MergedLetter,
    backoff,
    compose_breach_notice,
    hand_over,
    hand_over_bytes,
    language_of,
    maildir_path,
    merge_breach_notice,
)
from jobs.resources import Resources

log = logging.getLogger("handover.breach_notices")

TASK = "send_breach_notices"
#: Lines per chunk: per Redis list, and per worker task.
CHUNK = 1000
#: How long an upload may stay unfinished before it is taken for abandoned (its process died).
UPLOAD_ABANDONED = timedelta(hours=1)
#: Lines of one chunk told at once.
CONCURRENCY = 16
#: Attempts at a chunk whose mail server is unreachable before its lines are failed.
MAX_TRIES = 8
MAX_ID = 256
#: The most lines, and bytes, one upload may hold (blank lines included).
MAX_UPLOAD_LINES = 1_000_000
MAX_UPLOAD_BYTES = 64 << 20
OUTCOMES = ("sent", "no_address", "not_looked_up", "failed", "unconfirmed", "duplicate")
#: Outcomes whose letter never went out, which :meth:`BreachNotices.retry_failed` sends again.
RETRIABLE = ("not_looked_up", "failed")


#: A line's outcome (``KEYS[1]`` field ``ARGV[1]`` = ``ARGV[2]``) and, if it is new, its
#: count (``KEYS[2]`` field ``ARGV[3]`` + 1).
_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
return 1
"""

#: A chunk done (``KEYS[2]``, set of chunks, + ``ARGV[1]``); the fan-out (``KEYS[1]``)
#: flipped to done, and taken off the sending set (``KEYS[3]`` − ``ARGV[2]``), by the one
#: call that finds every chunk done while it is sending (1; else 0).
_FINISH = """
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'sending' then return 0 end
if redis.call('SCARD', KEYS[2]) < tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""

#: One chunk's lines whose letter never went out (status in ``ARGV``) forgotten, so they are
#: told again: outcome (``KEYS[1]``) and claim (``KEYS[2]``) removed, counts (``KEYS[3]``)
#: lowered, the chunk no longer done (``KEYS[4]`` − ``ARGV[1]``). Returns how many.
_FORGET_RETRIABLE = """
local forgotten = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local status = cjson.decode(entries[i + 1])['status']
  for j = 2, #ARGV do
    if status == ARGV[j] then
      redis.call('HDEL', KEYS[1], entries[i])
      redis.call('HDEL', KEYS[2], entries[i])
      redis.call('HINCRBY', KEYS[3], status, -1)
      forgotten = forgotten + 1
    end
  end
end
if forgotten > 0 then redis.call('SREM', KEYS[4], ARGV[1]) end
return forgotten
"""


class UploadTooLarge(Exception):
    """The upload holds more lines or bytes than one fan-out takes; nothing was kept."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"the upload holds more than {limit:,} {what}; split the affected subjects "
            "or make a public communication (Art. 34(3)(c))"
        )


class FanOutExists(Exception):
    """The breach's subjects are being, or have been, told already."""

    def __init__(self, breach_id: str, state: str) -> None:
        super().__init__(
            f"breach {breach_id}: its affected subjects' notices are {state} already; "
            "one fan-out per breach"
        )
        self.breach_id = breach_id


@dataclass(frozen=True)
class Line:
    """One uploaded line, as a chunk keeps it."""

    number: int
    subject: str
    language: str | None
    duplicate: bool

    def encode(self) -> str:
        """As stored: tab-separated (ids hold no tabs)."""
        return f"{self.number}\t{self.subject}\t{self.language or ''}\t{int(self.duplicate)}"

    @classmethod
    def decode(cls, raw: bytes) -> Line:
        """Inverse of :meth:`encode`."""
        number, subject, language, duplicate = raw.decode().split("\t")
        return cls(int(number), subject, language or None, duplicate == "1")


def parse_line(number: int, raw: bytes) -> tuple[str, str | None] | None:
    """The subject id and language on one line; ``None`` for a blank line."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest("body", f"line {number}: not UTF-8 text") from None
    if not text:
        return None
    subject, _, language = (part.strip() for part in text.partition(","))
    if not subject or len(subject) > MAX_ID or not subject.isprintable() or "\t" in subject:
        raise InvalidRequest(
            "body", f"line {number}: {subject[:40]!r} is not a subject id (printable, 1-256)"
        )
    if language and (len(language) > 35 or not language.replace("-", "").isalnum()):
        raise InvalidRequest("body", f"line {number}: {language[:40]!r} is not a language tag")
    return subject, language or None


class BreachNotices:
    """The Art. 34 fan-out of one process's resources."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.redis: Any = resources.redis
        self.ns = resources.store.ns
        self._record_script = self.redis.register_script(_RECORD)
        self._finish_script = self.redis.register_script(_FINISH)
        self._forget_retriable_script = self.redis.register_script(_FORGET_RETRIABLE)
        self.sending = f"{self.ns}breaches:art34:sending"

    @classmethod
    def of(cls, resources: Resources) -> BreachNotices:
        """The fan-out over ``resources``."""
        return cls(resources)

    def _key(self, breach_id: str, part: str = "") -> str:
        return f"{self.ns}breach:{breach_id}:art34" + (f":{part}" if part else "")

    async def start(
        self, by: Recorder, breach_id: str, lines: AsyncIterable[bytes]
    ) -> dict[str, Any]:
        """Read the upload into chunks, then queue one task per chunk; returns the progress.

        :class:`FanOutExists` if the breach's subjects were told already;
        :class:`~jobs.lifecycle.NotAllowed` if notices are off (no SMTP URL, no maildir):
        every letter would fail; :class:`~jobs.model.InvalidRequest` (nothing kept) for a
        malformed line or an empty upload; :class:`UploadTooLarge` (nothing kept).
        """
        breach = await BreachRegister.of(self.resources).get(breach_id)
        self._require_notices()
        run = self._key(breach_id)
        await self._forget_abandoned_upload(breach_id)
        if not await self.redis.hsetnx(run, "state", "uploading"):
            state = await self.redis.hget(run, "state")
            raise FanOutExists(breach_id, (state or b"under way").decode())
        await self.redis.hset(run, "uploading_since", iso(utcnow()))
        try:
            chunks, total = await self._store(breach_id, lines)
        except BaseException:
            await self._forget(breach_id)
            raise
        if total == 0:
            await self._forget(breach_id)
            raise InvalidRequest("body", "no subject id: send one per line")
        audit = self.resources.audit
        entry = _audit_body(
            by.id,
            "breach.subjects_notified",
            breach_id,
            subjects=total,
            version=breach.versions[-1].number,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                run,
                mapping={
                    "state": "sending",
                    "chunks": chunks,
                    "total": total,
                    "version": breach.versions[-1].number,
                    "started_at": iso(utcnow()),
                    "by": by.id,
                },
            )
            pipe.xadd(audit.pending_key, {"body": entry})
            pipe.sadd(self.sending, breach_id)
            await pipe.execute()
        audit.seal_soon()
        await self._queue(breach_id, range(chunks))
        return await self.progress(breach_id)

    def _require_notices(self) -> None:
        settings = self.resources.settings
        if settings.smtp_url is None and maildir_path(settings) is None:
            raise NotAllowed(
                "notices-off",
                "notices are off (no HANDOVER_SMTP_URL): no letter could go out; "
                "configure mail first",
            )

    async def retry_failed(self, by: Recorder, breach_id: str) -> dict[str, Any]:
        """Send again, once the fan-out is done, the lines whose letter never went out
        (``failed``, ``not_looked_up``); returns the progress.

        :class:`~jobs.lifecycle.NotAllowed` while the fan-out is not done (or not started)
        or while notices are off; nothing to send again leaves it as it is.
        """
        await BreachRegister.of(self.resources).get(breach_id)  # 404 for no breach
        self._require_notices()
        run = self._key(breach_id)
        state = await self.redis.hget(run, "state")
        if state != b"done":
            raise NotAllowed(
                "notices-not-done",
                f"breach {breach_id}: the notices are "
                f"{(state or b'not started').decode().replace('_', ' ')}; "
                "failed lines are sent again once every line has an outcome",
            )
        chunks = int(await self.redis.hget(run, "chunks") or 0)
        again: list[int] = []
        for chunk in range(chunks):
            forgotten = await self._forget_retriable_script(
                keys=[
                    self._key(breach_id, f"outcome:{chunk}"),
                    self._key(breach_id, f"claims:{chunk}"),
                    run,
                    self._key(breach_id, "chunks_done"),
                ],
                args=[chunk, *RETRIABLE],
            )
            if forgotten:
                again.append(chunk)
        if not again:
            return await self.progress(breach_id)
        lines = await self.progress(breach_id)
        entry = _audit_body(
            by.id, "breach.subjects_notices_retried", breach_id, subjects=lines["pending"]
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(run, "state", "sending")
            pipe.hdel(run, "finished_at")
            pipe.xadd(self.resources.audit.pending_key, {"body": entry})
            pipe.sadd(self.sending, breach_id)
            await pipe.execute()
        self.resources.audit.seal_soon()
        await self._queue(breach_id, again)
        return await self.progress(breach_id)

    async def _queue(self, breach_id: str, chunks: Iterable[int]) -> None:
        for chunk in chunks:
            await self.redis.enqueue_job(
                TASK, breach_id, chunk, _job_id=f"breach-notices:{breach_id}:{chunk}"
            )

    async def resume(self) -> int:
        """Queue again the unfinished chunks of every fan-out still sending (the worker's
        cron): a process that died between recording a fan-out and queuing its tasks, or
        a task lost, leaves none behind. A chunk still queued or running is not queued
        twice (its task id), and one run twice skips the lines it did. Returns how many
        fan-outs it looked at."""
        breach_ids = [raw.decode() for raw in await self.redis.smembers(self.sending)]
        for breach_id in breach_ids:
            chunks = int(await self.redis.hget(self._key(breach_id), "chunks") or 0)
            done = {
                int(raw) for raw in await self.redis.smembers(self._key(breach_id, "chunks_done"))
            }
            await self._queue(breach_id, [c for c in range(chunks) if c not in done])
        return len(breach_ids)

    async def _forget_abandoned_upload(self, breach_id: str) -> None:
        """An upload whose process died midway is forgotten after :data:`UPLOAD_ABANDONED`."""
        raw = await self.redis.hmget(self._key(breach_id), "state", "uploading_since")
        if raw[0] != b"uploading" or raw[1] is None:
            return
        since = datetime.fromisoformat(raw[1].decode())
        if utcnow() - since > UPLOAD_ABANDONED:
            log.warning("breach %s: an upload abandoned since %s is forgotten", breach_id, since)
            await self._forget(breach_id)

    async def _store(self, breach_id: str, lines: AsyncIterable[bytes]) -> tuple[int, int]:
        """Write the lines in chunks; returns (chunks, lines kept)."""
        seen = self._key(breach_id, "seen")
        batch: list[tuple[int, str, str | None]] = []
        chunks = total = number = 0

        async def flush() -> None:
            nonlocal chunks
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, subject, _ in batch:
                    pipe.sadd(seen, subject)
                fresh = await pipe.execute()
            encoded = [
                Line(line, subject, language, not new).encode()
                for (line, subject, language), new in zip(batch, fresh, strict=True)
            ]
            await self.redis.rpush(self._key(breach_id, f"chunk:{chunks}"), *encoded)
            chunks += 1
            batch.clear()

        size = 0
        async for raw in lines:
            number += 1
            size += len(raw)
            if number > MAX_UPLOAD_LINES:
                raise UploadTooLarge("lines", MAX_UPLOAD_LINES)
            if size > MAX_UPLOAD_BYTES:
                raise UploadTooLarge("bytes", MAX_UPLOAD_BYTES)
            parsed = parse_line(number, raw)
            if parsed is None:
                continue
            batch.append((number, *parsed))
            total += 1
            if len(batch) == CHUNK:
                await flush()
        if batch:
            await flush()
        return chunks, total

    async def _forget(self, breach_id: str) -> None:
        keys = [key async for key in self.redis.scan_iter(match=self._key(breach_id, "*"))]
        await self.redis.delete(self._key(breach_id), *keys)

    async def send_chunk(self, breach_id: str, chunk: int, *, attempt: int = 1) -> int:
        """Tell the subjects of one chunk; the worker's task. Returns how many it told now.

        Up to :data:`CONCURRENCY` lines at once (their lookups, Redis writes and mail
        overlap, in one task group: if one fails, the others are cancelled before this
        returns); each language's letter is composed once per run and copied for each
        recipient (:func:`jobs.notices.merge_breach_notice`). A server that cannot be
        reached, or an identity source failing transiently, makes the whole task try
        again later, skipping the lines already done. A line claimed by an earlier run
        that never recorded it is ``unconfirmed``, not sent again (the module's docstring).
        """
        run = self._key(breach_id)
        outcomes = self._key(breach_id, f"outcome:{chunk}")
        raw_lines = await self.redis.lrange(self._key(breach_id, f"chunk:{chunk}"), 0, -1)
        done = set(await self.redis.hkeys(outcomes))
        claimed = set(await self.redis.hkeys(self._key(breach_id, f"claims:{chunk}")))
        breach = await BreachRegister.of(self.resources).get(breach_id)
        version = int(await self.redis.hget(run, "version") or len(breach.versions))
        facts = breach.versions[version - 1].facts.model_dump(mode="json")
        settings = self.resources.settings
        notices_off = settings.smtp_url is None and maildir_path(settings) is None
        letters: dict[str, MergedLetter] = {}
        later: list[MailUnavailable | TransientError] = []
        claim = _Claim(self.redis, self._key(breach_id, f"claims:{chunk}"), uuid.uuid4().hex)
        told = 0

        async def tell(line: Line) -> None:
            nonlocal told
            outcome: dict[str, Any] | None
            if line.duplicate:
                outcome = {"status": "duplicate", "reason": "earlier in the upload: told once"}
            elif notices_off:
                outcome = {"status": "failed", "reason": "notices are off: no HANDOVER_SMTP_URL"}
            elif str(line.number).encode() in claimed:
                outcome = {"status": "unconfirmed", "reason": UNCONFIRMED}
            else:
                try:
                    outcome = await self._tell(breach_id, line, facts, letters, claim)
                except (MailUnavailable, TransientError) as exc:
                    if attempt < MAX_TRIES:
                        later.append(exc)
                        return
                    outcome = _given_up(exc)
            if outcome is None:
                return  # another run claimed it: that run records it
            told += outcome["status"] == "sent"
            await self._record(breach_id, chunk, line, outcome)

        async def teller(lines: Iterator[Line]) -> None:
            for line in lines:  # shared by the tellers: each line goes to one of them
                if later:
                    return  # the server or a source is down: this task runs again later
                await tell(line)

        maildir = maildir_path(settings)
        if maildir is not None and settings.smtp_url is None:
            await asyncio.to_thread(ensure_maildir, maildir)
        lines = (Line.decode(raw) for raw in raw_lines)
        undone = (line for line in lines if str(line.number).encode() not in done)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(teller(undone))
        except ExceptionGroup as failed:  # the siblings are cancelled: the first cause, as is
            raise failed.exceptions[0] from failed
        if later:
            log.warning("breach notices %s/%d: %s; again later", breach_id, chunk, later[0])
            raise Retry(defer=backoff(attempt))
        if await self.redis.hlen(outcomes) >= len(raw_lines):
            await self._chunk_done(breach_id, chunk)
        return told

    async def _tell(
        self,
        breach_id: str,
        line: Line,
        facts: dict[str, Any],
        letters: dict[str, MergedLetter],
        claim: _Claim,
    ) -> dict[str, Any] | None:
        """The line's outcome; ``None`` if another run claimed it first.

        Raises :class:`~connectors.errors.TransientError` (an identity source failing for
        now) and :class:`~jobs.mail.MailUnavailable` (claim given back) for a later try.
        """
        settings = self.resources.settings
        resolution = await resolve_identity(
            self.resources.identity_sources,
            Subject(line.subject),
            time_limit=settings.connector_timeout,
            tolerate_transient=False,
        )
        address = resolution.found.get("email")
        language = language_of(line.language or resolution.found.get("locale"))
        if address is None or not usable_address(address):
            reason = (
                "no identity source knows an address"
                if address is None
                else "the address known cannot be written to"
            )
            if resolution.failures:
                reason += f" ({len(resolution.failures)} source(s) could not be asked)"
            return {"status": "no_address", "language": language, "reason": reason}
        if language not in letters:
            letters[language] = merge_breach_notice(settings, breach_id, language, facts)
        letter = letters[language]
        copy = letter.copy_for(line.number, address)
        if not await claim.take(line.number):
            return None
        try:
            if copy is None:  # an address the merge cannot write: the letter composed whole
                message, message_id, _ = compose_breach_notice(
                    settings, breach_id, line.number, language, address, facts
                )
                await hand_over(settings, message, address)
            else:
                raw, message_id = copy
                await hand_over_bytes(settings, raw, address)
        except MailRefused as exc:
            return {"status": "failed", "language": language, "reason": str(exc)}
        except MailUnavailable:
            await claim.give_back(line.number)  # never accepted: it may go out later
            raise
        return {"status": "sent", "language": language, "message_id": message_id, "via": letter.via}

    async def _record(
        self, breach_id: str, chunk: int, line: Line, outcome: dict[str, Any]
    ) -> None:
        """The line's outcome and its count, in one step; a line recorded already counts once."""
        await self._record_script(
            keys=[self._key(breach_id, f"outcome:{chunk}"), self._key(breach_id)],
            args=[line.number, orjson.dumps(outcome), outcome["status"]],
        )

    async def _chunk_done(self, breach_id: str, chunk: int) -> None:
        """The chunk done; the call that finds every chunk done flips the fan-out to done
        (one step in Redis) and alone writes the audit entry."""
        flipped = await self._finish_script(
            keys=[self._key(breach_id), self._key(breach_id, "chunks_done"), self.sending],
            args=[chunk, breach_id, iso(utcnow())],
        )
        if not flipped:
            return
        counts = await self.progress(breach_id)
        body = _audit_body(
            "notices",
            "breach.subjects_notices_done",
            breach_id,
            **{name: counts[name] for name in OUTCOMES},
        )
        await self.resources.audit.record(AuditEntry(self.resources.audit.pending_key, body))

    async def progress(self, breach_id: str) -> dict[str, Any]:
        """Where the fan-out stands: its state and every line counted by outcome."""
        raw = {
            k.decode(): v.decode()
            for k, v in (await self.redis.hgetall(self._key(breach_id))).items()
        }
        if not raw:
            await BreachRegister.of(self.resources).get(breach_id)  # 404 for no breach
            return {"state": "not_started", "total": 0, **dict.fromkeys(OUTCOMES, 0), "pending": 0}
        counts = {name: int(raw.get(name, 0)) for name in OUTCOMES}
        total = int(raw.get("total", 0))
        return {
            "state": raw["state"],
            "version": int(raw.get("version", 0)) or None,
            "total": total,
            **counts,
            "pending": total - sum(counts.values()),
            "started_at": raw.get("started_at"),
            "finished_at": raw.get("finished_at"),
        }

    async def report(self, breach_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every uploaded line in order, with what happened to it (``pending`` if nothing yet)."""
        chunks = int(await self.redis.hget(self._key(breach_id), "chunks") or 0)
        for chunk in range(chunks):
            raw_lines = await self.redis.lrange(self._key(breach_id, f"chunk:{chunk}"), 0, -1)
            outcomes = await self.redis.hgetall(self._key(breach_id, f"outcome:{chunk}"))
            for raw in raw_lines:
                line = Line.decode(raw)
                found = outcomes.get(str(line.number).encode())
                outcome = orjson.loads(found) if found else {"status": "pending"}
                yield {"line": line.number, "subject": line.subject, **outcome}


#: Why a line claimed by a run that never recorded it is not sent again.
UNCONFIRMED = (
    "handed over by a run that stopped before recording it: it may have gone out; "
    "not sent twice (at most once)"
)


class _Claim:
    """One run's claims on a chunk's lines (``HSETNX`` line → run id): a line is handed
    over by the run that claimed it, and by no other."""

    def __init__(self, redis: Any, key: str, run_id: str) -> None:
        self.redis = redis
        self.key = key
        self.run_id = run_id

    async def take(self, line: int) -> bool:
        """Whether this run may hand the line's letter over (no run claimed it before)."""
        return bool(await self.redis.hsetnx(self.key, line, self.run_id))

    async def give_back(self, line: int) -> None:
        """A hand-over the server never accepted: the line may be claimed again."""
        await self.redis.hdel(self.key, line)


def _given_up(exc: MailUnavailable | TransientError) -> dict[str, Any]:
    """A line's outcome once :data:`MAX_TRIES` attempts met a transient failure."""
    if isinstance(exc, MailUnavailable):
        return {"status": "failed", "reason": str(exc)}
    return {
        "status": "not_looked_up",
        "reason": f"an identity source failed through {MAX_TRIES} attempts: {exc}"[:500],
    }


def _audit_body(actor: str, action: str, breach_id: str, **details: Any) -> bytes:
    body = {"at": iso(utcnow()), "actor": actor, "action": action, "breach": breach_id}
    return orjson.dumps({**body, **details}, option=orjson.OPT_SORT_KEYS)


#: Report columns, in order.
REPORT_COLUMNS = ("line", "subject", "status", "language", "message_id", "via", "reason")
#: How long a chunk's task may take (1,000 letters, each a connector lookup and a send).
TASK_TIMEOUT = timedelta(hours=1)
