"""The export pipeline: fan out to every connector, stage, fan in, bundle, sign.

::

    create ──▶ run_connector(job, c₁, gen) ─┐   each stages its own output, then marks
           ├─▶ run_connector(job, c₂, gen) ─┼─▶ its run finished; the one that finishes
           └─▶ run_connector(job, cₙ, gen) ─┘   last enqueues bundle(job, gen)
                                                    │
                          archive in object storage ◀┘ job succeeded (or failed, naming
                                                       the connectors that failed)

arq runs every task at least once, so each step checks before it writes: a
finished run is never redone, a bundled job is never rebundled, staged objects
and archives live at deterministic keys, and a stale generation (the job was
retried meanwhile) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from arq.worker import Retry

from connectors.base import Connector
from connectors.errors import ConnectorError, PermanentError, RateLimited, TransientError
from connectors.items import File, Record, Subject
from jobs.archive import StagedFile, write_archive
from jobs.formats import FORMATS
from jobs.ids import new_ulid
from jobs.model import (
    ArchiveResult,
    ConnectorRun,
    InvalidRequest,
    Job,
    JobKind,
    JobStatus,
    RunStatus,
    StagedPart,
    utcnow,
)
from jobs.resources import Resources
from jobs.staging import Stager

BATCH_RECORDS = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """How transient connector failures are retried: exponential backoff with full jitter."""

    max_tries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, error: TransientError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if attempt >= self.max_tries:
            return None
        if isinstance(error, RateLimited):
            return min(max(error.retry_after, 0.0), self.max_delay * 10)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


class ExportPipeline:
    """Creates export jobs and does their work; one per process, shared by tasks."""

    def __init__(self, resources: Resources, retry_policy: RetryPolicy | None = None) -> None:
        self.resources = resources
        self.retry_policy = retry_policy or RetryPolicy()

    def select_connectors(
        self, names: Sequence[str] | None, categories: Sequence[str] | None
    ) -> list[str]:
        """The connectors an export asks for, checked against what is configured."""
        available = self.resources.connectors
        if names:
            unknown = sorted(set(names) - set(available))
            if unknown:
                raise InvalidRequest(
                    "connectors",
                    f"unknown connector(s) {', '.join(unknown)}; known: {', '.join(available)}",
                )
            chosen = [name for name in available if name in set(names)]
        else:
            chosen = list(available)
        if categories:
            wanted = set(categories)
            chosen = [
                name for name in chosen if wanted & {d.category for d in available[name].datasets}
            ]
            if not chosen:
                raise InvalidRequest(
                    "categories", f"no connector holds data in {', '.join(sorted(wanted))}"
                )
        if not chosen:
            raise InvalidRequest("connectors", "no connector is configured")
        return chosen

    async def create(
        self,
        *,
        subject: str,
        requested_by: str,
        formats: Sequence[str] | None = None,
        connectors: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> tuple[Job, bool]:
        """Record a new export job and queue its connector runs; returns ``(job, created)``."""
        formats = list(dict.fromkeys(formats or self.resources.settings.default_formats))
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise InvalidRequest(
                "formats", f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}"
            )
        chosen = self.select_connectors(connectors, categories)
        now = utcnow()
        job = Job(
            id=new_ulid(),
            kind=JobKind.EXPORT,
            subject=subject,
            status=JobStatus.QUEUED,
            requested_by=requested_by,
            created_at=now,
            updated_at=now,
            due_at=now + self.resources.settings.deadline,
            options={"formats": formats, "categories": sorted(set(categories or []))},
            connectors={name: ConnectorRun() for name in chosen},
        )
        job, created = await self.resources.store.create(
            job, idempotency_key=idempotency_key, fingerprint=fingerprint
        )
        if created:
            await self.enqueue_runs(job)
        return job, created

    async def enqueue_runs(self, job: Job) -> None:
        """Queue every unfinished connector run of the job's current generation."""
        for name, run in job.connectors.items():
            if not run.status.finished:
                await self.resources.redis.enqueue_job(
                    "run_connector",
                    job.id,
                    name,
                    job.generation,
                    _job_id=f"run:{job.id}:{job.generation}:{name}",
                )

    async def run_connector(
        self, job_id: str, name: str, generation: int, attempt: int = 1
    ) -> None:
        """Stage one connector's export for the job; the last run to finish queues the bundle."""
        store = self.resources.store
        job = await store.get(job_id)
        if job.generation != generation or job.status.terminal:
            return
        run = job.connectors[name]
        if run.status.finished:
            await self._fan_in(job)
            return
        await store.transition(
            job_id, JobStatus.RUNNING, actor="worker", event="started", expect={JobStatus.QUEUED}
        )

        def started(run: ConnectorRun) -> None:
            run.status = RunStatus.RUNNING
            run.attempts += 1
            run.started_at = utcnow()
            run.error = run.error_class = None

        if (
            await store.update_run(
                job_id, name, started, generation=generation, event="connector.started"
            )
            is None
        ):
            return
        connector = self.resources.connectors[name]
        staged_key = f"{self.resources.staging_prefix(job_id)}{generation}/{name}.bin"
        timeout = self.resources.settings.connector_timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout):
                parts = await self._stage(connector, job, staged_key)
        except TransientError as exc:
            delay = self.retry_policy.delay(attempt, exc)
            if delay is not None:
                await store.add_event(
                    job_id,
                    "connector.retrying",
                    "worker",
                    {"connector": name, "error": _error_text(exc), "delay": round(delay, 3)},
                )
                raise Retry(defer=delay) from exc
            await self._fail_run(job_id, name, generation, exc)
            return
        except TimeoutError:
            message = f"timed out after {self.resources.settings.connector_timeout}"
            await self._fail_run(job_id, name, generation, TransientError(message))
            return
        except Exception as exc:
            await self._fail_run(job_id, name, generation, exc)
            return

        def succeeded(run: ConnectorRun) -> None:
            run.status = RunStatus.SUCCEEDED
            run.finished_at = utcnow()
            run.staged_key = staged_key
            run.parts = parts
            run.records = _record_count(parts)
            run.bytes = sum(p.bytes for p in parts)

        after = await store.update_run(
            job_id,
            name,
            succeeded,
            generation=generation,
            event="connector.succeeded",
            data={"records": _record_count(parts), "files": len(parts)},
        )
        if after is not None:
            await self._fan_in(after)

    async def _fail_run(
        self,
        job_id: str,
        name: str,
        generation: int,
        exc: BaseException,
    ) -> None:
        error_class = _classify(exc)
        message = _error_text(exc)

        def failed(run: ConnectorRun) -> None:
            run.status = RunStatus.FAILED
            run.finished_at = utcnow()
            run.error = message
            run.error_class = error_class

        after = await self.resources.store.update_run(
            job_id,
            name,
            failed,
            generation=generation,
            event="connector.failed",
            data={"error": message, "error_class": error_class},
        )
        if after is not None:
            await self._fan_in(after)

    async def _stage(self, connector: Connector, job: Job, staged_key: str) -> list[StagedPart]:
        categories = set(job.options.get("categories") or [])
        stager = Stager(connector.name, connector.dataset, job.options["formats"])
        writer = self.resources.storage.writer(staged_key)
        subject = Subject(job.subject)
        try:
            async for batch in _batches(connector.export(subject), BATCH_RECORDS):
                if isinstance(batch, File):
                    if categories and connector.dataset(batch.dataset).category not in categories:
                        continue
                    await self._stage_file(stager, writer, batch)
                    continue
                if categories:
                    batch = [
                        r for r in batch if connector.dataset(r.dataset).category in categories
                    ]
                for chunk in await asyncio.to_thread(stager.add_records, batch):
                    await writer.write(chunk)
            tail, parts = await asyncio.to_thread(stager.finish)
            for chunk in tail:
                await writer.write(chunk)
            await writer.complete()
        except BaseException:
            await writer.abort()
            raise
        return parts

    async def _stage_file(self, stager: Stager, writer: Any, item: File) -> None:
        path = stager.open_file(item.path, item.dataset)
        if isinstance(item.content, bytes):
            for chunk in await asyncio.to_thread(stager.add_file_data, path, item.content):
                await writer.write(chunk)
        else:
            async for piece in item.content:
                for chunk in await asyncio.to_thread(stager.add_file_data, path, piece):
                    await writer.write(chunk)
        for chunk in await asyncio.to_thread(stager.close_file, path):
            await writer.write(chunk)

    async def _fan_in(self, job: Job) -> None:
        if all(run.status.finished for run in job.connectors.values()):
            await self.resources.redis.enqueue_job(
                "bundle", job.id, job.generation, _job_id=f"bundle:{job.id}:{job.generation}"
            )

    async def bundle(self, job_id: str, generation: int) -> None:
        """Build, sign and upload the archive once every run finished; or fail the job."""
        store = self.resources.store
        job = await store.get(job_id)
        if job.generation != generation or job.status is not JobStatus.RUNNING:
            return
        failed = {
            name: run for name, run in job.connectors.items() if run.status is RunStatus.FAILED
        }
        if failed:
            summary = "; ".join(f"{name}: {run.error}" for name, run in failed.items())

            def record_failure(job: Job) -> None:
                job.error = f"connector(s) failed: {summary}"

            await store.transition(
                job_id,
                JobStatus.FAILED,
                actor="worker",
                expect={JobStatus.RUNNING},
                change=record_failure,
                data={"connectors": sorted(failed)},
            )
            return
        if not all(run.status is RunStatus.SUCCEEDED for run in job.connectors.values()):
            return
        result = await self._write_archive(job)

        def record_result(job: Job) -> None:
            job.result = result

        done = await store.transition(
            job_id,
            JobStatus.SUCCEEDED,
            actor="worker",
            expect={JobStatus.RUNNING},
            change=record_result,
            data={"size": result.size, "sha256": result.sha256},
        )
        if done is not None:
            await self.resources.storage.delete_prefix(self.resources.staging_prefix(job_id))

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
            {**resources.connectors[name].describe(), "records": run.records}
            for name, run in job.connectors.items()
            if name in resources.connectors
        ]
        key = resources.archive_key(job.id)
        await resources.keyring.publish(resources.signer)
        destination = resources.storage.writer(key, "application/zip")
        try:
            written = await write_archive(
                job=job,
                staged=staged,
                storage=resources.storage,
                destination=destination,
                signer=resources.signer,
                connectors=described,
                generated_at=generated_at,
                expires_at=expires_at,
            )
            await destination.complete()
        except BaseException:
            with contextlib.suppress(Exception):
                await destination.abort()
            raise
        return ArchiveResult(
            key=key,
            size=written.size,
            sha256=written.sha256,
            expires_at=expires_at,
            key_id=resources.signer.key_id,
            files=[
                {k: f[k] for k in ("path", "connector", "format", "records", "bytes")}
                for f in written.files
            ],
        )


def _classify(exc: BaseException) -> str:
    """The error classes the API reports: transient, permanent, or internal (a bug)."""
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, ConnectorError):
        return "permanent"
    return "internal"


def _record_count(parts: Sequence[StagedPart]) -> int:
    """Records across datasets, counted once whatever the number of formats asked."""
    seen: dict[str, int] = {}
    for part in parts:
        if part.format == "binary":
            seen[part.path] = 1
        else:
            seen[part.dataset] = part.records
    return sum(seen.values())


async def _batches(items: AsyncIterator[Any], size: int) -> AsyncIterator[list[Record] | File]:
    """Group consecutive records into lists of at most ``size``; files pass alone.

    A producer task reads the connector while the consumer encodes the previous
    batch, so the connector's own I/O overlaps encoding and compression. After a
    file, the producer waits until its content has been consumed: a file's stream
    may share the connector's connection with the items that follow it.
    """
    queue: asyncio.Queue[list[Record] | File | BaseException | None] = asyncio.Queue(maxsize=2)
    file_done = asyncio.Event()

    async def produce() -> None:
        batch: list[Record] = []
        try:
            async for item in items:
                if isinstance(item, Record):
                    batch.append(item)
                    if len(batch) >= size:
                        await queue.put(batch)
                        batch = []
                elif isinstance(item, File):
                    if batch:
                        await queue.put(batch)
                        batch = []
                    file_done.clear()
                    await queue.put(item)
                    await file_done.wait()
                else:
                    raise PermanentError(
                        f"connector yielded {type(item).__name__}, not a Record or File"
                    )
            if batch:
                await queue.put(batch)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

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
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
