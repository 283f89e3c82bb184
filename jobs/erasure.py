"""Erasure (GDPR Art. 17, with Art. 19) and restriction (Art. 18) jobs.

An erasure cannot be undone, so it waits in ``awaiting_confirmation`` until the
subject (with a freshly authenticated token) or an admin confirms it, then for a
grace period during which it can still be canceled. Each connector then erases or
anonymises what its processor holds — telling that recipient, Art. 19 — except
what a retention rule obliges the platform to keep, which is blocked instead.
After erasing, the connector's export runs again: anything found beyond what was
retained or anonymised fails the run, naming the leftovers. The finished job
carries a signed receipt (:mod:`jobs.archive.receipt`).

A restriction marks the subject's data restricted at every processor that can;
one that cannot says so, and the receipt records it. A dry run of either reports
what would happen and changes nothing, so it needs no confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from connectors.base import Connector, journaling
from connectors.byhand import Answered
from connectors.errors import ConnectorError, PermanentError
from connectors.items import File, Record, Subject
from connectors.reports import ErasureReport, RetentionRule
from jobs.archive.receipt import build_receipt
from jobs.journal import ADDITIVE, ErasureJournal, tally
from jobs.model import Job, JobKind, JobStatus, iso, utcnow
from jobs.pipeline import Outcome, Pipeline, classify
from jobs.recipients import Recipients, tells
from jobs.search import JobQuery


def erasure_entries(report: ErasureReport, extra: Iterable[str] = ()) -> list[dict[str, Any]]:
    """A report's datasets as JSON-ready dicts, then an all-zero one per ``extra`` name
    the report lacks."""
    listed = {entry.dataset for entry in report.datasets}
    datasets = [*report.datasets, *(report.dataset(n) for n in extra if n not in listed)]
    return [
        {k: iso(v) if isinstance(v, datetime) else v for k, v in asdict(entry).items()}
        for entry in datasets
    ]


class ErasurePipeline(Pipeline):
    """The work of erasure and restriction jobs."""

    kinds = (JobKind.ERASURE, JobKind.RESTRICTION)

    @property
    def journal(self) -> ErasureJournal:
        """The journal of every erasure run's attempts (:mod:`jobs.journal`)."""
        return ErasureJournal(self.resources.redis, self.resources.store.ns)

    def retention_for(self, connector: Connector) -> dict[str, RetentionRule]:
        """The retention rules that apply to each of the connector's datasets."""
        rules: dict[str, RetentionRule] = {}
        for dataset in connector.datasets:
            for rule in self.resources.settings.retention:
                if rule.applies_to(connector.name, dataset.name, dataset.category):
                    rules[dataset.name] = RetentionRule(rule.legal_basis, rule.duration)
                    break
        return rules

    async def work(self, connector: Connector, job: Job) -> Outcome:
        """Erase (and verify) or restrict at one processor."""
        subject = job.subject_view
        dry_run = job.erasure_options.dry_run
        statement = connector.statement() if isinstance(connector, Answered) else None
        if job.kind is JobKind.RESTRICTION:
            restriction = await connector.restrict(subject, dry_run=dry_run)
            return Outcome(
                records=sum(restriction.restricted.values()),
                report={
                    "supported": restriction.supported,
                    "restricted": dict(restriction.restricted),
                    "note": restriction.note,
                    **({"statement": statement} if statement is not None else {}),
                },
            )
        retention = self.retention_for(connector)
        if dry_run:
            report = await connector.erase(subject, dry_run=True, retention=retention)
            entries = erasure_entries(report)
            result: dict[str, Any] = {"datasets": entries, "note": report.note}
        else:
            report, result = await self._erase(connector, job, retention)
            if isinstance(connector, Answered):  # a person's word: nothing to export again
                result["verification"] = connector.verification()
                result["statement"] = statement
            else:
                result["verification"] = await self._verify(connector, subject, report, retention)
        changed = sum(e["deleted"] + e["anonymised"] for e in result["datasets"])
        return Outcome(records=changed, report=result)

    async def _erase(
        self, connector: Connector, job: Job, retention: Mapping[str, RetentionRule]
    ) -> tuple[ErasureReport, dict[str, Any]]:
        """Erase, journaling each step; the report and what every attempt did, together.

        The counts are those of the whole run (:func:`jobs.journal.tally`): an
        attempt interrupted after its commit still counts, and one whose outcome
        cannot be established is named, not guessed.
        """
        journal = self.journal
        attempt = await journal.start(job.id, connector.name)

        async def record(planned: ErasureReport) -> None:
            await journal.plan(job.id, connector.name, attempt, planned)

        async def committed() -> None:
            await journal.commit(job.id, connector.name, attempt)

        async def withdrawn() -> None:
            await journal.withdraw(job.id, connector.name, attempt)

        try:
            with journaling(record, committed, withdrawn):
                report = await connector.erase(job.subject_view, dry_run=False, retention=retention)
        except ConnectorError as exc:
            await journal.fail(job.id, connector.name, attempt, classify(exc))
            raise
        await journal.confirm(job.id, connector.name, attempt, report)
        total = tally(
            await journal.attempts(job.id, connector.name),
            journals_commits=connector.journals_commits,
        )
        # Every dataset this run changed, including those only an earlier attempt found.
        reported = [entry.dataset for entry in report.datasets]
        names = reported + [name for name in total.counts if name not in reported]
        entries = []
        for entry in erasure_entries(report, extra=names):
            entry.update(total.counts.get(entry["dataset"], dict.fromkeys(ADDITIVE, 0)))
            entries.append(entry)
        result: dict[str, Any] = {"datasets": entries, "note": report.note}
        if total.interrupted:
            result["interrupted_attempts"] = [i.statement() for i in total.interrupted]
        return report, result

    async def _verify(
        self,
        connector: Connector,
        subject: Subject,
        report: ErasureReport,
        retention: Mapping[str, RetentionRule],
    ) -> dict[str, Any]:
        """Export again: only retained (or reported anonymised) records may remain.

        Notice datasets (statements about the processing, the same for everyone) are
        not data held on the subject and do not count.
        """
        found: dict[str, int] = {}
        async for item in connector.export(subject):
            if isinstance(item, Record | File) and not connector.dataset(item.dataset).notice:
                found[item.dataset] = found.get(item.dataset, 0) + 1
        leftovers = {}
        for dataset, count in found.items():
            if dataset in retention:
                continue
            allowed = report.dataset(dataset).anonymised
            if count > allowed:
                leftovers[dataset] = count - allowed
        if leftovers:
            listed = ", ".join(
                f"{count} in {dataset}" for dataset, count in sorted(leftovers.items())
            )
            raise PermanentError(f"verification failed: record(s) left after erasure: {listed}")
        return {
            "checked_at": iso(utcnow()),
            "passed": True,
            "remaining": {dataset: count for dataset, count in sorted(found.items())},
        }

    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Erase Handover's own copies (after a real erasure), then sign the receipt."""
        resources = self.resources
        copies = []
        if job.kind is JobKind.ERASURE and not job.erasure_options.dry_run:
            copies = await self._erase_own_copies(job)
        recipients = await Recipients(resources).queue(job) if tells(job) else None
        await resources.keyring.publish(resources.signer)
        described = {name: connector.describe() for name, connector in resources.connectors.items()}
        receipt = build_receipt(
            job,
            connectors=described,
            signer=resources.signer,
            issued_at=utcnow(),
            handover_copies=copies,
            recipients=recipients,
        )

        def record_receipt(job: Job) -> None:
            job.receipt = receipt

        return record_receipt

    async def _erase_own_copies(self, job: Job) -> list[dict[str, Any]]:
        """Delete the subject's archives and staged exports; their jobs end, saying why.

        A finished export's archive and staging are deleted and the job ends
        ``expired``; a live export that already staged data (it waits for support)
        is canceled and its staging deleted. A live export with nothing staged yet
        is left to run: it will show what remains after the erasure. Each entry
        states what was deleted, for the receipt; each is journaled before anything of
        it is deleted and again once done, so a finish that runs again after a crash
        lists every copy (:meth:`jobs.journal.ErasureJournal.copies`).
        """
        store = self.resources.store
        storage = self.resources.storage
        journal = self.journal
        reason = f"erased: the subject's data was erased by job {job.id}"
        # A finish interrupted while deleting copies left them journaled.
        copies = await journal.copies(job.id)
        cursor = None
        while True:
            page = await store.search(
                JobQuery(subject=job.subject, kind=JobKind.EXPORT, limit=200, cursor=cursor)
            )
            for export in page.jobs:
                staged = any(run.staged_key for run in export.connectors.values())
                if export.status in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
                    target = JobStatus.EXPIRED
                elif (
                    staged and not export.status.terminal and export.status is not JobStatus.RUNNING
                ):
                    target = JobStatus.CANCELED
                else:
                    continue
                copy: dict[str, Any] = {
                    "job": export.id,
                    "kind": export.kind.value,
                    "archive_deleted": export.result is not None,
                    "status": target.value,
                }
                await journal.plan_copy(job.id, copy)
                if export.result is not None:
                    await storage.delete(export.result.key)  # no error when already gone
                copy["staged_objects_deleted"] = await storage.delete_prefix(
                    self.resources.staging_prefix(export.id)
                )
                moved = await store.transition(
                    export.id,
                    target,
                    actor="worker",
                    expect={export.status},
                    data={"reason": reason},
                )
                copy["status"] = (moved or await store.get(export.id)).status.value
                await journal.copy_done(job.id, copy)
                copies[export.id] = copy
            cursor = page.next_cursor
            if cursor is None:
                return list(copies.values())
