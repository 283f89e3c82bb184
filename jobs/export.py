"""The export pipeline: each connector's records staged, then bundled into a signed archive.

Each run reads its connector's export in batches (:meth:`~connectors.base.Connector.export_batches`:
a processor's pages as they come, or a one-record connector's records gathered) and
encodes and deflates them into one staged object (:mod:`jobs.archive.staging`: the
event loop renders, a thread of the run's own checksums and deflates); the
connector's next batch is read while the last one is encoded; the datasets' previews
for the archive's index (:mod:`jobs.archive.preview`) follow the data in the same object.
The finish step copies those bytes into the archive (:mod:`jobs.archive.writer`) without
recompressing, signs the manifest and uploads the archive (a small staged object is read
once, whole, for its previews and its data, or not at all when this process staged it:
:class:`Kept`; a larger one's data is copied by the store where it can). Staged objects
live at deterministic keys, so a run that arq executes twice overwrites its own output
and duplicates nothing. A staged object gone by the time the archive is written (the
store lost it) is not retried as if it might come back: its connector runs again
(:class:`~jobs.pipeline.StagingLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from connectors import demo
from connectors.base import Connector
from connectors.errors import PermanentError
from connectors.items import Batch, File, Records, Subject
from jobs.archive.index import Statement
from jobs.archive.protection import AgeWriter, ProtectionError, age_recipient
from jobs.archive.staging import Stager, StagingThread
from jobs.archive.writer import ArchiveOutput, StagedFile, write_archive
from jobs.disclosures import recipients_of
from jobs.handoff import reply_statement
from jobs.model import (
    ArchiveFile,
    ArchiveResult,
    ConnectorRun,
    DisclosureOptions,
    InvalidRequest,
    Job,
    JobKind,
    JobStatus,
    Protection,
    RunStatus,
    StagedPart,
    run_statement,
    utcnow,
)
from jobs.notices import language_of, subject_link
from jobs.pipeline import Outcome, Pipeline, RetryPolicy, StagingLost
from jobs.resources import Resources
from jobs.settings import Settings
from jobs.storage.base import ObjectMissing, ObjectShort, ObjectWriter

PREFETCHED = 2
"""Batches read ahead of the one being encoded."""
HELD_OBJECT = 1 << 20
"""A staged object this small is read whole at the finish, once, previews and data."""
HELD_TOTAL = 8 << 20
"""The most staged bytes one finish holds in memory so (:meth:`ExportPipeline._staged`)."""
KEPT_OBJECT = HELD_OBJECT
"""A staged object this small is kept by the process that staged it, for its own finish
(:class:`Kept`)."""
KEPT_FOR = 120.0
"""Seconds a process keeps such an object."""

Previews = dict[tuple[str, str], dict[str, Any]]
"""Each dataset's preview (:mod:`jobs.archive.preview`), by connector and dataset."""


class ExportPipeline(Pipeline):
    """The work of export jobs (GDPR Art. 15 and 20), and of the exports an authority's order
    compels (:mod:`jobs.disclosures`): the same archive, addressed to the authority."""

    kinds = (JobKind.EXPORT, JobKind.DISCLOSURE)

    def __init__(self, resources: Resources, retry_policy: RetryPolicy | None = None) -> None:
        super().__init__(resources, retry_policy)
        self.kept = Kept()

    async def work(self, connector: Connector, job: Job) -> Outcome:
        """Stage the connector's records and files for the archive."""
        staged_key = f"{self.resources.staging_prefix(job.id)}{job.generation}/{connector.name}.bin"
        parts = await self._stage(connector, job, staged_key)
        return Outcome(
            records=_record_count(parts),
            bytes=sum(p.bytes for p in parts),
            staged_key=staged_key,
            parts=parts,
        )

    async def _stage(self, connector: Connector, job: Job, staged_key: str) -> list[StagedPart]:
        options = job.export_options
        categories = set(options.categories)
        stager = Stager(connector.name, connector.dataset, options.formats)
        writer = _Teed(self.resources.storage.writer(staged_key))
        batches = _read_ahead(connector, _asked_of(job))
        try:
            async with StagingThread(stager) as staging:
                async for batch in batches:
                    if categories and connector.dataset(batch.dataset).category not in categories:
                        continue
                    if isinstance(batch, File):
                        await _stage_file(staging, writer, batch)
                    else:
                        await _write(writer, await staging.add_rows(batch.dataset, batch.rows))
                tail, parts = await staging.finish()
                await _write(writer, tail)
            # After the data, so the previews live and go as the staged data does.
            await writer.write(orjson.dumps(stager.previews))
            await writer.complete()
        except BaseException:
            await writer.abort()
            raise
        finally:
            await batches.aclose()
        if writer.kept is not None:
            self.kept.keep(staged_key, parts, b"".join(writer.kept))
        return parts

    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Write the signed archive; the change records where it is.

        A staged object found missing meanwhile raises :class:`~jobs.pipeline.StagingLost`
        naming every connector whose staged output is gone, for the finish to stage again.
        """
        try:
            result = await self._write_archive(job)
        except ObjectShort as exc:
            # Cut short: its data cannot be had, as if it were gone.
            short = _staged_at(job, exc.key)
            if not short:
                raise
            raise StagingLost(short) from exc
        except ObjectMissing as exc:
            missing = await self._missing_staging(job)
            if not missing:
                raise
            raise StagingLost(missing) from exc
        await self.resources.metrics.count("handover_archive_bytes_total", result.size)

        def record_result(job: Job) -> None:
            job.result = result
            job.archive_password = None  # the archive is written: forget its password

        return record_result

    async def _staged(self, job: Job) -> tuple[Previews, dict[str, bytes]]:
        """Each dataset's preview, by connector and dataset, as staging left them after
        each staged object's data; and the staged objects read whole meanwhile, by key.

        A staged object whose data is :data:`HELD_OBJECT` bytes or less is read whole,
        once, and held while those held come to :data:`HELD_TOTAL` or less, previews
        included: the archive takes its data from memory. Of any other only the previews
        are read. One this process staged itself and still keeps (:class:`Kept`) is not
        read at all. A staged object gone is left out (the index then shows none of its
        previews; writing the archive finds it gone). One staged before previews followed
        the data ends with its data: its previews are in :func:`old_preview_key`. One
        whose previews do not parse, or that ends before its data does, was cut short or
        is not the object staged: :class:`~jobs.pipeline.StagingLost`, as if gone.
        """
        previews: Previews = {}
        held: dict[str, bytes] = {}
        budget = HELD_TOTAL
        storage = self.resources.storage
        for name, run in job.connectors.items():
            if not run.parts or not run.staged_key:
                continue
            key = run.staged_key
            end = _data_end(run.parts)
            kept = self.kept.take(key, run.parts)
            try:
                if kept is not None or end <= min(HELD_OBJECT, budget):
                    whole = kept if kept is not None else await storage.get(key)
                    if len(whole) < end:
                        raise StagingLost({name: key})
                    if len(whole) <= budget:
                        held[key] = whole
                        budget -= len(whole)
                    trailer = whole[end:]
                else:
                    trailer = b"".join([chunk async for chunk in storage.read(key, end)])
                if not trailer:
                    trailer = await storage.get(old_preview_key(key))
            except ObjectMissing:
                continue
            try:
                stored = orjson.loads(trailer)
            except orjson.JSONDecodeError as exc:
                raise StagingLost({name: key}) from exc
            if not isinstance(stored, dict):
                raise StagingLost({name: key})
            previews.update(((name, dataset), preview) for dataset, preview in stored.items())
        return previews, held

    async def _missing_staging(self, job: Job) -> dict[str, str]:
        """The connectors whose staged object is gone, and the key each was staged at."""
        missing = {}
        for name, run in job.connectors.items():
            if (
                run.parts
                and run.staged_key
                and not await self.resources.storage.exists(run.staged_key)
            ):
                missing[name] = run.staged_key
        return missing

    async def cleanup(self, job: Job) -> None:
        """Staged parts are no longer needed once the archive exists (or the job was canceled).

        A job that succeeded at its first generation, with no by-hand processor's reply,
        knows every object it staged (each run's one staged object, its previews at its
        end; or, staged before that, beside it at :func:`old_preview_key`): those are
        deleted without listing the prefix. Any other job's staging area
        may hold more (an earlier generation's, a reply's files, a canceled run's): all
        of it goes.
        """
        prefix = self.resources.staging_prefix(job.id)
        self.kept.forget(prefix)
        await self.resources.storage.delete_prefix(prefix, holding=_staged_objects(job))

    def _statement(self, job: Job) -> Statement:
        resources = self.resources
        asked = [
            resources.connectors[name] for name in job.connectors if name in resources.connectors
        ]
        return statement_of(resources.settings, job, asked)

    async def _addressing(self, job: Job, now: datetime) -> dict[str, Any]:
        """Who the archive goes to: a disclosure's names the authority and its order; a
        subject's lists the disclosures they may be told of among the recipients (Art.
        15(1)(c)), never one whose notice is deferred or forbidden."""
        if isinstance(job.options, DisclosureOptions):
            return {"recipient": job.options.order.model_dump()}
        return {"disclosures": await recipients_of(self.resources, job.subject, now)}

    async def _write_archive(self, job: Job) -> ArchiveResult:
        resources = self.resources
        generated_at = utcnow()
        expires_at = generated_at + resources.settings.archive_ttl
        staged = [
            StagedFile(run.staged_key or "", part)
            for run in job.connectors.values()
            for part in run.parts
        ]
        described = [
            {
                **resources.connectors[name].describe(),
                **run_statement(run),
                "records": run.records,
                **reply_statement(run),
                **period_statement(resources.connectors[name], job, run),
            }
            for name, run in job.connectors.items()
            if name in resources.connectors
        ]
        key = resources.archive_key(job.id)
        await resources.keyring.publish(resources.signer)
        protection = job.export_options.protection
        previews, held = await self._staged(job)
        stored = ArchiveOutput(resources.storage, key)
        destination: ObjectWriter = stored
        if protection is not None and protection.kind == "age":
            destination = AgeWriter(stored, age_recipient(protection.recipient or ""))
        try:
            files = await write_archive(
                job=job,
                staged=staged,
                storage=resources.storage,
                destination=destination,
                signer=resources.signer,
                connectors=described,
                generated_at=generated_at,
                expires_at=expires_at,
                statement=self._statement(job),
                previews=previews,
                held=held,
                password=job.archive_password,
                **await self._addressing(job, generated_at),
            )
            await destination.complete()
        except BaseException:
            with contextlib.suppress(Exception):
                await destination.abort()
            raise
        return ArchiveResult(
            key=key,
            size=stored.size,
            sha256=stored.sha256,
            crc32=stored.crc32,
            expires_at=expires_at,
            key_id=resources.signer.key_id,
            files=[ArchiveFile(**{k: f[k] for k in ArchiveFile.model_fields}) for f in files],
        )


def statement_of(settings: Settings, job: Job, connectors: Sequence[Connector]) -> Statement:
    """What the archive's ``index.html`` states beside the data (:mod:`jobs.archive.index`).

    The demo platform (no connectors configured) states its own controller
    (:data:`connectors.demo.DEMO_CONTROLLER`); the settings win over it.
    """
    stated = dict(demo.DEMO_CONTROLLER) if not settings.connectors else {}
    profile = settings.profile(job.jurisdiction)
    return Statement(
        language=language_of(job.export_options.locale),
        time_zone=job.export_options.time_zone or settings.time_zone,
        controller=settings.controller or stated.get("controller"),
        controller_contact=settings.controller_contact or stated.get("controller_contact"),
        dpo_contact=settings.dpo_contact or stated.get("dpo_contact"),
        rights_url=subject_link(settings, job)
        if settings.privacy_url or settings.public_url
        else None,
        complaint_authority=profile.authority or settings.complaint_authority,
        complaint_url=profile.authority_url or settings.complaint_url,
        automated_decisions=settings.automated_decisions or stated.get("automated_decisions"),
        retention=settings.retention,
        recipients=settings.recipients,
        columns={
            connector.name: {
                dataset.name: dict(dataset.column_descriptions)
                for dataset in connector.datasets
                if dataset.column_descriptions
            }
            for connector in connectors
        },
    )


def old_preview_key(staged_key: str) -> str:
    """Where an object staged before previews followed its data kept them, beside it."""
    return f"{staged_key.removesuffix('.bin')}.preview.json"


def _staged_at(job: Job, key: str) -> dict[str, str]:
    """The connector whose staged object is at ``key``, by name, as :class:`StagingLost`
    takes it."""
    return {name: key for name, run in job.connectors.items() if run.staged_key == key}


def _data_end(parts: Sequence[StagedPart]) -> int:
    """Where a staged object's data ends, and its previews begin."""
    return max((start + length for part in parts for start, length in part.chunks), default=0)


def checked_time_zone(name: str | None) -> str | None:
    """``name`` if it is an IANA time zone this system knows; InvalidRequest otherwise."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            "time_zone", f"unknown time zone {name!r}; expected an IANA name such as Europe/Paris"
        ) from None
    return name


def protection_of(password: str | None, recipient: str | None) -> Protection | None:
    """How an archive is to be protected: an AES-256 password, an age recipient, or neither.

    The password itself goes to :attr:`~jobs.model.Job.archive_password`, never here.
    """
    if password is not None and recipient is not None:
        raise InvalidRequest("protection", "choose a password or an age recipient, not both")
    if password is not None:
        if len(password) < 12:
            raise InvalidRequest("password", "use at least 12 characters")
        return Protection(kind="password")
    if recipient is not None:
        try:
            age_recipient(recipient)
        except (ProtectionError, ValueError) as exc:
            raise InvalidRequest("age_recipient", str(exc)) from None
        return Protection(kind="age", recipient=recipient)
    return None


def _asked_of(job: Job) -> Subject:
    """The subject as an export's connectors are asked about: with its time range, if any."""
    subject = job.subject_view
    period = job.export_options.scope.period
    return subject if period is None else replace(subject, period=period.period)


def period_statement(connector: Connector, job: Job, run: ConnectorRun) -> dict[str, Any]:
    """What a processor did with the export's time range, as the manifest states it.

    The range, the datasets the connector applies it to (declared ``by_period``, for
    every end the range sets: :meth:`~connectors.items.Dataset.applies`) and those it
    exports whole: a range is never claimed where it was not applied. Empty when the
    export asked for no range, or the run did not succeed (the processor was not asked,
    or did not answer: nothing of it was applied).
    """
    period = job.export_options.scope.period
    if period is None or run.status is not RunStatus.SUCCEEDED:
        return {}
    held = [dataset for dataset in connector.datasets if not dataset.notice]
    asked = period.period
    return {
        "period": {
            **asked.statement(),
            "applied_to": sorted(d.name for d in held if d.applies(asked)),
            "not_applied_to": sorted(d.name for d in held if not d.applies(asked)),
        }
    }


def _staged_objects(job: Job) -> list[str] | None:
    """Every object a succeeded first-generation job staged, or ``None`` when it may hold
    others (see :meth:`ExportPipeline.cleanup`)."""
    if job.status is not JobStatus.SUCCEEDED or job.generation != 1:
        return None
    staged = []
    for run in job.connectors.values():
        if run.handoff is not None or run.reply is not None:
            return None
        if run.status is RunStatus.SUCCEEDED and run.staged_key:
            # The previews' own object too, for one staged before they followed the data.
            staged += [run.staged_key, old_preview_key(run.staged_key)]
        elif run.status is not RunStatus.NOT_ASKED:
            return None
    return staged


def _record_count(parts: Sequence[StagedPart]) -> int:
    """Records across datasets, counted once whatever the number of formats asked."""
    seen: dict[str, int] = {}
    for part in parts:
        if part.format == "binary":
            seen[part.path] = 1
        else:
            seen[part.dataset] = part.records
    return sum(seen.values())


async def _stage_file(staging: StagingThread, writer: ObjectWriter, item: File) -> None:
    path = staging.open_file(item.path, item.dataset)
    if isinstance(item.content, bytes):
        await _write(writer, await staging.add_file_data(path, item.content))
    else:
        async for piece in item.content:
            await _write(writer, await staging.add_file_data(path, piece))
    await _write(writer, await staging.close_file(path))


class Kept:
    """Small objects this process staged, kept for its own finish: the worker that ran a
    job's last connector also finishes it, at once, and then reads nothing back.

    An object is given only to a finish whose record names the very parts it was
    staged with (a run done twice, here and elsewhere, may have staged other bytes
    there since), once; one not taken within :data:`KEPT_FOR` seconds, or past
    :data:`HELD_TOTAL` bytes kept, the oldest first, is let go: the store still holds it.
    """

    def __init__(self) -> None:
        self._objects: dict[str, tuple[float, list[StagedPart], bytes]] = {}
        self._size = 0

    def keep(self, key: str, parts: list[StagedPart], data: bytes) -> None:
        self._drop(key)
        self._objects[key] = (time.monotonic(), parts, data)
        self._size += len(data)
        oldest = time.monotonic() - KEPT_FOR
        while self._objects:
            first, (since, _, _) = next(iter(self._objects.items()))
            if since >= oldest and self._size <= HELD_TOTAL:
                break
            self._drop(first)

    def take(self, key: str, parts: Sequence[StagedPart]) -> bytes | None:
        """The bytes staged at ``key`` with ``parts``, if kept; no longer kept after."""
        kept = self._drop(key)
        if kept is None or kept[1] != list(parts) or kept[0] < time.monotonic() - KEPT_FOR:
            return None
        return kept[2]

    def forget(self, prefix: str) -> None:
        for key in [key for key in self._objects if key.startswith(prefix)]:
            self._drop(key)

    def _drop(self, key: str) -> tuple[float, list[StagedPart], bytes] | None:
        kept = self._objects.pop(key, None)
        if kept is not None:
            self._size -= len(kept[2])
        return kept


class _Teed:
    """A staged object's writer that also keeps what it writes, while that comes to
    :data:`KEPT_OBJECT` bytes or less (:class:`Kept`): ``kept``, ``None`` past that."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer = writer
        self.kept: list[bytes] | None = []
        self._size = 0

    async def write(self, data: bytes) -> None:
        if self.kept is not None:
            self._size += len(data)
            if self._size <= KEPT_OBJECT:
                self.kept.append(data)
            else:
                self.kept = None
        await self.writer.write(data)

    async def complete(self) -> int:
        return await self.writer.complete()

    async def abort(self) -> None:
        self.kept = None
        await self.writer.abort()


async def _write(writer: ObjectWriter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await writer.write(chunk)


async def _read_ahead(connector: Connector, subject: Subject) -> AsyncGenerator[Batch, None]:
    """The connector's batches, read up to :data:`PREFETCHED` ahead of the one being encoded.

    A producer task reads the connector while the consumer encodes, so the
    connector's own I/O overlaps encoding. After a file, the producer waits until
    its content has been consumed: a file's stream may share the connector's
    connection with the items that follow it. Anything but :class:`Records` of a
    list of rows and :class:`File` breaks the connector's contract and fails its run.
    """
    queue: asyncio.Queue[Batch | BaseException | None] = asyncio.Queue(maxsize=PREFETCHED)
    file_done = asyncio.Event()

    async def produce() -> None:
        batches: AsyncIterator[Batch] | None = None
        try:
            batches = connector.export_batches(subject)
            async for batch in batches:
                if isinstance(batch, File):
                    file_done.clear()
                    await queue.put(batch)
                    await file_done.wait()
                elif _checked(connector, batch).rows:
                    await queue.put(batch)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)
        finally:
            aclose = getattr(batches, "aclose", None)  # its cursor or connection, freed now
            if aclose is not None:
                await aclose()

    producer = asyncio.create_task(produce())
    try:
        while True:
            entry = await queue.get()
            if entry is None:
                return
            if isinstance(entry, BaseException):
                raise entry
            yield entry
            file_done.set()
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


def _checked(connector: Connector, batch: object) -> Records:
    """``batch`` if it is :class:`Records` of a list of rows; anything else fails the run."""
    if not isinstance(batch, Records):
        raise PermanentError(
            f"connector {connector.name!r} yielded a {type(batch).__name__}: export() yields "
            "Record and File items, export_batches() Records and File"
        )
    if not isinstance(batch.rows, Sequence) or isinstance(batch.rows, str | bytes):
        raise PermanentError(
            f"connector {connector.name!r}: the rows of a {batch.dataset!r} batch are a "
            f"{type(batch.rows).__name__}, not a list of rows"
        )
    return batch
