"""The contract kit: the fakes pass it, and it catches connectors that break the contract."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from connectors import (
    Batch,
    Connector,
    ConnectorError,
    Dataset,
    DatasetErasure,
    ErasureReport,
    File,
    Item,
    PermanentError,
    Record,
    Records,
    RestrictionReport,
    RetentionRule,
    Subject,
    Unidentified,
)
from connectors.testing import ConnectorContract, MemoryConnector, SyntheticConnector

ALICE = Subject("alice", email="alice@example.com")
INVOICES_KEPT = {
    "invoices": RetentionRule("tax law: invoices are kept for 10 years", timedelta(days=3653))
}


def crm_records() -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {
        "alice": {
            "contacts": [{"id": 1, "email": "alice@example.com", "name": "Alice"}],
            "invoices": [
                {"number": "2024-001", "amount": Decimal("19.90"), "issued": datetime(2024, 1, 2)},
                {"number": "2024-007", "amount": Decimal("5.00"), "issued": datetime(2024, 3, 4)},
            ],
        },
        "bob": {"contacts": [{"id": 2, "email": "bob@example.com", "name": "Bob"}]},
    }


def crm(**options: Any) -> MemoryConnector:
    return MemoryConnector(
        "crm",
        records=crm_records(),
        files={"alice": {"avatar.png": b"\x89PNG...", "docs/contract.pdf": b"%PDF-1.7"}},
        datasets=[
            {"name": "contacts", "category": "contact", "fields": ("id", "email", "name")},
            {"name": "invoices", "category": "economic"},
        ],
        **options,
    )


class TestMemoryConnector(ConnectorContract):
    """Keeps invoices under retention, erases the rest."""

    async def make_connector(self) -> Connector:
        return crm()

    def subject_with_data(self) -> Subject:
        return ALICE

    def retention(self) -> Mapping[str, RetentionRule]:
        return INVOICES_KEPT

    async def make_failing_connector(self) -> Connector | None:
        return crm(fail="401 from the CRM: API key revoked")


class TestMemoryConnectorWithoutRetention(TestMemoryConnector):
    """Erases everything; its processor fails transiently."""

    def retention(self) -> Mapping[str, RetentionRule]:
        return {}

    async def make_failing_connector(self) -> Connector | None:
        return crm(fail_transient="503 from the CRM")


class TestSyntheticConnector(ConnectorContract):
    """Generates telemetry for any subject it has not erased."""

    nobody = Subject("erased-long-ago")

    async def make_connector(self) -> Connector:
        connector = SyntheticConnector("telemetry", records=250, record_bytes=100, seed=7)
        await connector.erase(self.nobody, dry_run=False, retention={})
        return connector

    def subject_with_data(self) -> Subject:
        return ALICE

    def subject_without_data(self) -> Subject:
        return self.nobody

    async def make_failing_connector(self) -> Connector | None:
        return None  # it generates its data: there is no processor to fail

    def test_failures_are_classified_connector_errors(self) -> None:
        """Nothing can fail, so the kit checks nothing here, and says so."""
        with pytest.warns(UserWarning, match="returned None, so the error test checked nothing"):
            super().test_failures_are_classified_connector_errors()


class ByEmail(MemoryConnector):
    """The CRM keyed by email address: it cannot find a subject whose email is unknown."""

    identifiers = frozenset({"email"})

    def keyed(self, subject: Subject) -> Subject:
        self.require_identifier(subject)
        return Subject(subject.email or "")

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        async for item in super().export(self.keyed(subject)):
            yield item

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return await super().erase(self.keyed(subject), dry_run=dry_run, retention=retention)

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        return await super().restrict(self.keyed(subject), dry_run=dry_run)

    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        return await super().lift_restriction(self.keyed(subject))


def crm_by_email(**options: Any) -> ByEmail:
    emails = {"alice": "alice@example.com", "bob": "bob@example.com"}
    connector = ByEmail(
        "crm",
        records={emails[key]: held for key, held in crm_records().items()},
        files={"alice@example.com": {"avatar.png": b"\x89PNG..."}},
        datasets=[
            {"name": "contacts", "category": "contact", "fields": ("id", "email", "name")},
            {"name": "invoices", "category": "economic"},
        ],
        **options,
    )
    return connector


class TestMemoryConnectorByEmail(ConnectorContract):
    """Finds the subject by email only: one without raises Unidentified."""

    async def make_connector(self) -> Connector:
        return crm_by_email()

    def subject_with_data(self) -> Subject:
        return ALICE

    def retention(self) -> Mapping[str, RetentionRule]:
        return INVOICES_KEPT

    async def make_failing_connector(self) -> Connector | None:
        return crm_by_email(fail="401 from the CRM: API key revoked")


# Connectors that break one clause of the contract each.


class UndeclaredDataset(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield Record("secrets", {"pin": "1234"})


class Unserialisable(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield Record("contacts", {"id": 1, "handle": object()})


class FieldOutsideColumns(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield Record("contacts", {"id": 1, "email": "a@example.com", "phone": "+1 555"})


class ColumnsDrift(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield Record("invoices", {"number": "1"})
        yield Record("invoices", {"number": "2", "discount": "10%"})


class UnsafeFilePath(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield File("../../etc/passwd", b"root")


class TextChunks(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"fine"
            yield "not bytes"  # type: ignore[misc]

        yield File("notes.txt", chunks())


class NotAnItem(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield {"dataset": "contacts"}  # type: ignore[misc]


class RecordAmongBatches(MemoryConnector):
    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        yield Record("contacts", {"id": 1})  # type: ignore[misc]


class RowsInAGenerator(MemoryConnector):
    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        rows = crm_records()["alice"]["contacts"]
        yield Records("contacts", (row for row in rows))  # type: ignore[arg-type]


class BatchesOfAnUndeclaredDataset(MemoryConnector):
    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        yield Records("secrets", [{"pin": "1234"}])


class BatchesMissARecord(MemoryConnector):
    """Its batches skip a record its export() yields: the archive would lack it."""

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        async for batch in super().export_batches(subject):
            if isinstance(batch, Records) and batch.dataset == "invoices":
                batch = Records(batch.dataset, batch.rows[1:])
            yield batch

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        async for item in super().export(subject):
            yield item


class ForeignError(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        raise KeyError("email")
        yield  # pragma: no cover - makes this an async generator


class RemembersSubject(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        self.current_subject = subject
        async for item in super().export(subject):
            yield item


class SharesSubjectAcrossJobs(MemoryConnector):
    """Keeps "the subject being exported" on the instance: concurrent exports mix."""

    current: Subject | None = None

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        type(self).current = subject
        for dataset, rows in self.records.get(subject.id, {}).items():
            for row in rows:
                await asyncio.sleep(0)  # a processor round trip: other exports run meanwhile
                yield Record(dataset, row)
                current = type(self).current
                assert current is not None
                if current.id != subject.id:
                    yield Record(dataset, {**row, next(iter(row)): f"mixed up with {current.id}"})


class DryRunErases(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return await super().erase(subject, dry_run=False, retention=retention)


class AlwaysReportsDeletions(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        await super().erase(subject, dry_run=dry_run, retention=retention)
        return ErasureReport((DatasetErasure("contacts", deleted=1),))


class ErasesEverybody(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        if not dry_run:
            self.records.clear()
            self.files.clear()
        return ErasureReport()


class IgnoresRetention(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return await super().erase(subject, dry_run=dry_run, retention={})


class ReportsNothing(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        await super().erase(subject, dry_run=dry_run, retention=retention)
        return ErasureReport()


class PromisesAJournal(MemoryConnector):
    """Says it journals its commits, and never calls before_commit."""

    journals_commits: ClassVar[bool] = True


class JournalsWithoutSaying(MemoryConnector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        report = await super().erase(subject, dry_run=dry_run, retention=retention)
        await self.before_commit(report)
        return report


class JournalsInSteps(MemoryConnector):
    """Journals its erasure as one committed step, then a step the processor refuses
    (it answers that it holds none of it): ``settle`` says how each step is settled."""

    journals_commits: ClassVar[bool] = True

    async def settle(self, *, committed: bool) -> None:
        await (self.after_commit() if committed else self.withdraw())

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        report = await super().erase(subject, dry_run=dry_run, retention=retention)
        if dry_run:
            return report
        await self.before_commit(report)
        await self.settle(committed=True)
        await self.before_commit(ErasureReport((DatasetErasure("contacts", deleted=1),)))
        await self.settle(committed=False)
        return report


class MarksTwice(JournalsInSteps):
    """Marks a step committed, then withdraws it too."""

    async def settle(self, *, committed: bool) -> None:
        await self.after_commit()
        await self.withdraw()


class SettlesSomeSteps(JournalsInSteps):
    """Marks its first step committed and leaves the refused one as planned."""

    async def settle(self, *, committed: bool) -> None:
        if committed:
            await self.after_commit()


class SilentWhenDown(MemoryConnector):
    """Its processor is down, and it answers "nothing held" instead of failing."""

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        nothing: tuple[Item, ...] = ()
        for item in nothing:
            yield item

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


class AnswersNothingWithoutEmail(ByEmail):
    """Looks up "" when the email is unknown, and so answers that it holds nothing."""

    def keyed(self, subject: Subject) -> Subject:
        return Subject(subject.email or "")


class FailsWithoutEmail(ByEmail):
    def keyed(self, subject: Subject) -> Subject:
        if subject.email is None:
            raise PermanentError("the subject has no email")
        return Subject(subject.email)


class NeedsWhatItDoesNotDeclare(ByEmail):
    def keyed(self, subject: Subject) -> Subject:
        if subject.email is None:
            raise Unidentified(self.name, ("phone_number",))
        return Subject(subject.email)


class RestrictsWithoutEmail(ByEmail):
    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        return RestrictionReport(supported=True)


class LiftsWithoutEmail(ByEmail):
    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        return RestrictionReport(supported=True)


class CannotLiftWhatItRestricted(MemoryConnector):
    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        return RestrictionReport(supported=False, note="the CRM cannot unblock")


class LiftsAgainAndAgain(MemoryConnector):
    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        await super().lift_restriction(subject)
        return RestrictionReport(supported=True, restricted={"contacts": 1})


class CannotRestrictAtAll(ByEmail):
    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        return RestrictionReport(supported=False, note="the CRM has no restriction")


class DeclaresNoIdentifiers(MemoryConnector):
    identifiers = frozenset()


class ByPhoneNumber(ByEmail):
    identifiers = frozenset({"phone_number"})


class Unclassified(MemoryConnector):
    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        raise ConnectorError("something went wrong")
        yield  # pragma: no cover - makes this an async generator


class NoDatasets(Connector):
    datasets: ClassVar[tuple[Dataset, ...]] = ()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        yield Record("anything", {})

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


def probe(
    make: Callable[[], Connector],
    *,
    retention: Mapping[str, RetentionRule] | None = None,
    failing: Callable[[], Connector | None] | None = None,
) -> ConnectorContract:
    """A contract instance over ``make`` (not collected: its name does not start with Test)."""

    class Probe(ConnectorContract):
        async def make_connector(self) -> Connector:
            return make()

        def subject_with_data(self) -> Subject:
            return ALICE

        def retention(self) -> Mapping[str, RetentionRule]:
            return retention or {}

        async def make_failing_connector(self) -> Connector | None:
            if failing is None:
                return await super().make_failing_connector()
            return failing()

    return Probe()


def broken(cls: type[MemoryConnector]) -> Callable[[], Connector]:
    def make() -> Connector:
        connector = crm()
        connector.__class__ = cls
        return connector

    return make


def broken_by_email(cls: type[ByEmail]) -> Callable[[], Connector]:
    def make() -> Connector:
        connector = crm_by_email()
        connector.__class__ = cls
        return connector

    return make


BROKEN = {
    "no datasets": (lambda: NoDatasets("empty"), "test_declares_its_datasets", "declares no"),
    "undeclared dataset": (
        broken(UndeclaredDataset),
        "test_export_yields_valid_items",
        "'secrets', which the connector does not declare",
    ),
    "not JSON": (broken(Unserialisable), "test_export_yields_valid_items", "encoded as JSON"),
    "field outside declared fields": (
        broken(FieldOutsideColumns),
        "test_export_yields_valid_items",
        "phone outside the CSV columns .declared fields",
    ),
    "fields drift between records": (
        broken(ColumnsDrift),
        "test_export_yields_valid_items",
        "discount outside the CSV columns .first record's keys",
    ),
    "unsafe file path": (broken(UnsafeFilePath), "test_export_yields_valid_items", "not a safe"),
    "a record among batches": (
        broken(RecordAmongBatches),
        "test_export_yields_valid_items",
        r"export_batches yielded a Record; only Records and File are batches",
    ),
    "rows in a generator": (
        broken(RowsInAGenerator),
        "test_export_yields_valid_items",
        "a 'contacts' batch's rows are a generator, not a list of rows",
    ),
    "batches of an undeclared dataset": (
        broken(BatchesOfAnUndeclaredDataset),
        "test_export_yields_valid_items",
        "'secrets', which the connector does not declare",
    ),
    "batches miss a record": (
        broken(BatchesMissARecord),
        "test_export_yields_valid_items",
        r"export_batches\(\) and export\(\) of 'alice' differ: export_batches\(\) has "
        r"1 item\(s\) gone, 0 item\(s\) new",
    ),
    "text chunks": (broken(TextChunks), "test_export_yields_valid_items", "a str chunk"),
    "not an item": (broken(NotAnItem), "test_export_yields_valid_items", "only Record and File"),
    "foreign error": (broken(ForeignError), "test_export_yields_valid_items", "raised KeyError"),
    "per-job attribute": (
        broken(RemembersSubject),
        "test_export_keeps_no_per_job_state",
        "changed attribute.s. current_subject",
    ),
    "shared current subject": (
        broken(SharesSubjectAcrossJobs),
        "test_concurrent_exports_do_not_mix",
        "concurrent exports differ",
    ),
    "dry run erases": (broken(DryRunErases), "test_dry_run_erasure_changes_nothing", "dry-run"),
    "not idempotent": (
        broken(AlwaysReportsDeletions),
        "test_erasure_is_idempotent",
        "second erasure reports deletions in contacts",
    ),
    "erases everybody": (
        broken(ErasesEverybody),
        "test_erasure_leaves_other_subjects_alone",
        "changed this one's data",
    ),
    "reports nothing": (
        broken(ReportsNothing),
        "test_erasure_leaves_only_retained_data",
        "counts none deleted or anonymised",
    ),
    "promises a journal": (
        broken(PromisesAJournal),
        "test_erasure_leaves_only_retained_data",
        "before_commit planned 0 deleted in 'contacts', but erase reported 1",
    ),
    "settles a step twice": (
        broken(MarksTwice),
        "test_erasure_leaves_only_retained_data",
        "erase called withdraw with no step planned since the last one was settled",
    ),
    "settles some steps only": (
        broken(SettlesSomeSteps),
        "test_erasure_leaves_only_retained_data",
        "settles some planned steps .after_commit or withdraw. but not others",
    ),
    "journals without saying": (
        broken(JournalsWithoutSaying),
        "test_dry_run_erasure_changes_nothing",
        "erase called before_commit in a dry run",
    ),
    "answers nothing without an identifier": (
        broken_by_email(AnswersNothingWithoutEmail),
        "test_a_subject_without_its_identifiers_is_not_answered",
        "export of a subject without email answered an export of 0 item.s.: the processor "
        "could not be asked, so raise connectors.errors.Unidentified",
    ),
    "fails without an identifier": (
        broken_by_email(FailsWithoutEmail),
        "test_a_subject_without_its_identifiers_is_not_answered",
        "export of a subject without email raised PermanentError: the subject has no email",
    ),
    "needs what it does not declare": (
        broken_by_email(NeedsWhatItDoesNotDeclare),
        "test_a_subject_without_its_identifiers_is_not_answered",
        r"export raised Unidentified needing \('phone_number',\)",
    ),
    "restricts without an identifier": (
        broken_by_email(RestrictsWithoutEmail),
        "test_a_subject_without_its_identifiers_is_not_answered",
        "dry-run restrict of a subject without email answered RestrictionReport.supported=True",
    ),
    "lifts without an identifier": (
        broken_by_email(LiftsWithoutEmail),
        "test_a_subject_without_its_identifiers_is_not_answered",
        "lift_restriction of a subject without email answered RestrictionReport.supported=True",
    ),
    "cannot lift what it restricted": (
        broken(CannotLiftWhatItRestricted),
        "test_lifting_a_restriction_answers_a_report_and_keeps_data",
        "lift_restriction answers that it cannot lift what restrict restricted",
    ),
    "lifts again and again": (
        broken(LiftsAgainAndAgain),
        "test_lifting_a_restriction_answers_a_report_and_keeps_data",
        r"a repeated lift reports records newly lifted: \{'contacts': 1\}",
    ),
    "declares no identifiers": (
        broken(DeclaresNoIdentifiers),
        "test_a_subject_without_its_identifiers_is_not_answered",
        r"DeclaresNoIdentifiers declares identifiers frozenset\(\)",
    ),
    "subject without the identifier": (
        broken_by_email(ByPhoneNumber),
        "test_a_subject_without_its_identifiers_is_not_answered",
        r"subject_with_data\(\) 'alice' carries none of the identifiers the connector "
        r"declares \(phone_number\): give it one",
    ),
}


@pytest.mark.parametrize(("make", "test", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_the_contract_catches_a_broken_connector(
    make: Callable[[], Connector], test: str, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        getattr(probe(make), test)()


def test_a_step_withdrawn_is_left_out_of_the_plans_that_add_up_to_the_report() -> None:
    contract = probe(broken(JournalsInSteps))
    contract.test_erasure_leaves_only_retained_data()
    contract.test_erasure_is_idempotent()


def test_a_connector_that_cannot_restrict_at_all_may_say_so_for_anyone() -> None:
    probe(
        broken_by_email(CannotRestrictAtAll)
    ).test_a_subject_without_its_identifiers_is_not_answered()


def test_the_contract_catches_a_connector_that_ignores_retention() -> None:
    contract = probe(broken(IgnoresRetention), retention=INVOICES_KEPT)
    with pytest.raises(
        AssertionError, match="'invoices' is reported as .*deleted=2.* not retained under"
    ):
        contract.test_erasure_leaves_only_retained_data()


def test_the_contract_catches_a_connector_that_answers_nothing_when_down() -> None:
    contract = probe(crm, failing=broken(SilentWhenDown))
    with pytest.raises(AssertionError, match="export on the failing connector succeeded"):
        contract.test_failures_are_classified_connector_errors()


def test_the_contract_catches_an_unclassified_error() -> None:
    contract = probe(crm, failing=broken(Unclassified))
    with pytest.raises(AssertionError, match="classify it as TransientError"):
        contract.test_failures_are_classified_connector_errors()


class KeepsTheAnswerInTheDetail(MemoryConnector):
    """Fails the way a processor's error answer should be reported: its words in the detail."""

    async def _misbehave(self) -> None:
        raise PermanentError("crm: find contact: HTTP 404", detail="no contact alice@example.com")


def test_the_contract_catches_an_error_message_quoting_the_subject() -> None:
    contract = probe(
        crm, failing=lambda: crm(fail="404 from the CRM: no contact Alice@Example.com")
    )
    with pytest.raises(
        AssertionError,
        match="export raised PermanentError whose message quotes the subject's identifier "
        "'alice@example.com'",
    ):
        contract.test_failures_are_classified_connector_errors()
    probe(
        crm, failing=broken(KeepsTheAnswerInTheDetail)
    ).test_failures_are_classified_connector_errors()


def test_the_contract_asks_for_a_failing_connector() -> None:
    contract = probe(crm)
    with pytest.raises(AssertionError, match="does not override make_failing_connector"):
        contract.test_failures_are_classified_connector_errors()


def test_the_contract_says_when_no_failing_connector_was_given() -> None:
    contract = probe(crm, failing=lambda: None)
    with pytest.warns(UserWarning, match="checked nothing") as warned:
        contract.test_failures_are_classified_connector_errors()
    assert [str(w.message) for w in warned] == [
        "Probe.make_failing_connector() returned None, so the error test checked nothing: "
        "return a connector whose processor fails (a closed port, wrong credentials, a missing "
        "bucket) unless nothing can fail"
    ]


def test_the_contract_asks_for_data_on_the_subject() -> None:
    contract = probe(lambda: MemoryConnector("empty", records={}))
    with pytest.raises(AssertionError, match="export of subject_with_data.. 'alice' is empty"):
        contract.test_export_yields_valid_items()


def test_the_contract_runs_cleanup_after_each_scenario() -> None:
    calls: list[str] = []

    class Tracked(ConnectorContract):
        async def make_connector(self) -> Connector:
            calls.append("make")
            return crm()

        def subject_with_data(self) -> Subject:
            return ALICE

        async def cleanup(self) -> None:
            calls.append("cleanup")

    Tracked().test_erasure_is_idempotent()
    assert calls == ["make", "cleanup"]


def test_the_sdk_imports_without_pytest() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"  # makes `import pytest` fail
        "import connectors, connectors.testing, connectors.contract\n"
        "print(connectors.testing.ConnectorContract.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ConnectorContract"
