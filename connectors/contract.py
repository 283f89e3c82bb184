"""The connector contract: what every connector owes Handover, as tests an integrator runs.

Subclass :class:`ConnectorContract` in a test module, name the subclass ``Test…``,
and say how to build the connector and whom its processor holds data on::

    from connectors import Connector, Subject
    from connectors.testing import ConnectorContract

    class TestAcmeCrm(ConnectorContract):
        async def make_connector(self) -> Connector:
            return AcmeCrmConnector("acme", base_url=ACME_URL, contacts=SAMPLE)

        def subject_with_data(self) -> Subject:
            return Subject("alice", email="alice@example.com")

        async def make_failing_connector(self) -> Connector | None:
            return AcmeCrmConnector("acme", base_url="http://127.0.0.1:9")

pytest collects the inherited ``test_*`` methods. Each one builds a fresh connector
with :meth:`~ConnectorContract.make_connector`, opens it, runs its scenario in an
event loop of its own and closes it, so the kit needs no pytest plugin and works
in any asyncio mode. The scenarios erase data: ``make_connector`` must give each
test a processor holding the subject's data afresh.

The tests use pytest fixtures through an autouse fixture on the subclass that keeps
what it needs on ``self`` (pytest makes one instance of the class per test)::

    @pytest.fixture(autouse=True)
    def _bucket(self, bucket: str) -> None:
        self.bucket = bucket

A server the connector talks to is best started in ``make_connector`` (same event
loop as the scenario) and stopped in :meth:`~ConnectorContract.cleanup`.

What the contract checks:

- the connector declares its datasets, each with a category;
- :meth:`~connectors.base.Connector.check` passes on a healthy processor;
- an export yields only :class:`~connectors.items.Record` and
  :class:`~connectors.items.File` items of declared datasets; a record's data is a
  mapping with text keys that Handover can encode as JSON, and that fits one CSV
  header (the dataset's declared ``fields``, or else the first record's keys); a
  file has a safe relative path and ``bytes`` content, whole or in chunks;
- :meth:`~connectors.base.Connector.export_batches` (what archives read, derived from
  ``export`` unless the connector implements it) yields only
  :class:`~connectors.items.Records` of declared datasets, whose ``rows`` are a list
  of rows each checked as a record is, and files; and the two hold the same items
  (every scenario below reads both and compares them);
- a subject the processor holds nothing on gets an empty export;
- exports running at the same time do not mix their subjects' data;
- an export leaves the instance's attributes as they were: a connector keeps no
  per-job state. The comparison is shallow — it sees an attribute rebound (a
  cursor, a counter, "the current subject"), not a mutation inside a shared
  object, so keep per-job data in local variables;
- an erasure with ``dry_run`` changes nothing the export shows;
- after an erasure, the export holds only datasets named in ``retention()``
  (blocked, still shown to the subject); the report counts what was deleted or
  anonymised per dataset, and what was retained with the rule's legal basis;
- a second erasure succeeds and reports nothing new deleted or anonymised;
- a connector that sets ``journals_commits`` calls ``before_commit`` in every real
  erasure with counts adding up to its report (steps it then ``withdraw``-s aside),
  and never in a dry run; one that does not set it never calls it; ``after_commit``
  and ``withdraw`` each settle the step last planned, once, and a connector that
  settles any step settles every one;
- erasing one subject leaves another subject's data alone;
- a restriction answers a :class:`~connectors.reports.RestrictionReport` and,
  with ``dry_run``, changes nothing;
- a connector that declares ``lift_restriction`` (overrides the base class's) answers
  it, after a restriction, with a RestrictionReport naming declared datasets; it may
  answer that it cannot lift only if it could not restrict either; the export holds as
  many records as before; a repeat lifts nothing new;
- an objection answers an :class:`~connectors.reports.ObjectionReport` with one entry
  per purpose asked: each purpose the connector declares in ``objection_purposes`` acted
  on and, read back by ``objections_in_force``, in force, a repeat stopping nothing new;
  any other purpose reported unsupported, with a note; and the export holds no fewer
  records of any dataset than before (an objection stops processing, it deletes nothing;
  it may record the refusal);
- a rectification of each field declared ``rectifiable`` (but those identifying the
  subject) answers a :class:`~connectors.reports.RectificationReport` with one entry per
  change, in order; read back by ``rectifications_in_force``, each field holds its new
  value; a repeat changes nothing; the export holds as many records as before;
- the connector declares the ``identifiers`` it finds subjects by, and
  :meth:`~ConnectorContract.subject_with_data` and
  :meth:`~ConnectorContract.subject_without_data` carry one of them; given a
  subject without any of them (unless it needs only the ``id`` every subject
  has), export, erase (dry run and real), restrict, object, rectify and (where declared)
  lift_restriction raise
  :class:`~connectors.errors.Unidentified` naming identifiers it declares —
  never an empty export or a zero report, since the processor was not asked —
  and leave the data as it was (a restriction or an objection may instead answer
  that the processor cannot restrict, or act on the purpose, at all);
- a connector whose processor fails (:meth:`~ConnectorContract.make_failing_connector`)
  raises a classified :class:`~connectors.errors.TransientError` or
  :class:`~connectors.errors.PermanentError` from export and erase, rather than
  answering "nothing held"; the message of every error it raises quotes none of
  :meth:`~ConnectorContract.subject_with_data`'s identifier values (its id, email or
  identities, those of five characters or more, in any case): messages are shown to
  support staff and sent in webhooks, so the processor's own words belong in the
  error's ``detail`` (admins only), which must be text or None; and throughout,
  anything a connector raises is a :class:`~connectors.errors.ConnectorError`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import posixpath
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeVar

import orjson

from connectors.base import Connector, journaling
from connectors.errors import ConnectorError, PermanentError, TransientError, Unidentified
from connectors.items import Dataset, File, Record, Records, Subject
from connectors.reports import (
    ErasureReport,
    FieldChange,
    ObjectionReport,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
)

__all__ = ["ConnectorContract"]

_T = TypeVar("_T")


def _json_default(value: Any) -> Any:
    """What Handover's archive encoder does with values JSON has no type for."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass(frozen=True)
class _Holding:
    """What one export showed, as sorted ``(dataset, fingerprint)`` pairs: order does not count.

    A record's fingerprint is its canonical JSON; a file's, its path and SHA-256.
    """

    items: tuple[tuple[str, str], ...]

    def counts(self) -> Counter[str]:
        """Items per dataset."""
        return Counter(dataset for dataset, _ in self.items)

    @property
    def empty(self) -> bool:
        """Whether the export yielded nothing."""
        return not self.items


async def _guarded(operation: str, awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable``; an exception that is no ConnectorError breaks the contract."""
    try:
        return await awaitable
    except (ConnectorError, AssertionError):
        raise
    except Exception as exc:
        raise AssertionError(
            f"{operation} raised {type(exc).__name__}: {exc} — a connector reports failures "
            "as connectors.errors classes (map foreign errors at the boundary: "
            "raise TransientError(...) from exc)"
        ) from exc


class _ExportChecker:
    """Checks every item of one export against the contract and records what it saw."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.declared: dict[str, Dataset] = {d.name: d for d in connector.datasets}
        self.columns: dict[str, frozenset[str]] = {
            d.name: frozenset(d.fields) for d in connector.datasets if d.fields
        }
        self.items: list[tuple[str, str]] = []

    def _require_declared(self, dataset: object, what: str) -> str:
        if not isinstance(dataset, str) or dataset not in self.declared:
            known = ", ".join(sorted(self.declared)) or "none"
            raise AssertionError(
                f"{what} belongs to dataset {dataset!r}, which the connector does not declare "
                f"(declared: {known})"
            )
        return dataset

    def add_record(self, record: Record) -> None:
        dataset = self._require_declared(record.dataset, "a record")
        data = record.data
        if not isinstance(data, Mapping):
            raise AssertionError(
                f"a {dataset!r} record's data is {type(data).__name__}, not a dict"
            )
        keys = list(data)
        bad_keys = [key for key in keys if not isinstance(key, str)]
        if bad_keys:
            raise AssertionError(f"a {dataset!r} record has non-text keys {bad_keys!r}")
        try:
            encoded = orjson.dumps(data, default=_json_default, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise AssertionError(f"a {dataset!r} record cannot be encoded as JSON: {exc}") from exc
        columns = self.columns.setdefault(dataset, frozenset(keys))
        extra = sorted(set(keys) - columns)
        if extra:
            source = "declared fields" if self.declared[dataset].fields else "first record's keys"
            raise AssertionError(
                f"a {dataset!r} record has field(s) {', '.join(extra)} outside the CSV columns "
                f"({source}: {', '.join(sorted(columns))}); declare them in the Dataset's fields"
            )
        self.items.append((dataset, encoded.decode()))

    def add_records(self, batch: Records) -> None:
        dataset = self._require_declared(batch.dataset, "a batch of records")
        rows = batch.rows
        if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
            raise AssertionError(
                f"a {dataset!r} batch's rows are a {type(rows).__name__}, not a list of rows"
            )
        for row in rows:
            self.add_record(Record(dataset, row))

    async def add_file(self, file: File) -> None:
        dataset = self._require_declared(file.dataset, f"file {file.path!r}")
        path = file.path
        clean = posixpath.normpath(path) if isinstance(path, str) and path else ""
        if (
            not clean
            or path.startswith("/")
            or clean in {".", ".."}
            or clean.startswith("../")
            or "\\" in path
        ):
            raise AssertionError(
                f"file path {path!r} is not a safe relative path (it lands under files/)"
            )
        if not isinstance(file.media_type, str) or "/" not in file.media_type:
            raise AssertionError(f"file {path!r} has media type {file.media_type!r}")
        digest = hashlib.sha256()
        if isinstance(file.content, bytes):
            digest.update(file.content)
        elif isinstance(file.content, AsyncIterable):
            async for chunk in file.content:
                if not isinstance(chunk, bytes):
                    raise AssertionError(
                        f"file {path!r} streamed a {type(chunk).__name__} chunk, not bytes"
                    )
                digest.update(chunk)
        else:
            raise AssertionError(
                f"file {path!r} has content of type {type(file.content).__name__}: "
                "give bytes or an async iterable of bytes"
            )
        self.items.append((dataset, f"file {clean} sha256:{digest.hexdigest()}"))

    def holding(self) -> _Holding:
        """What the export held on the subject: notice datasets (statements about the
        processing, the same for everyone) are checked like the rest but not counted."""
        kept = [(d, fingerprint) for d, fingerprint in self.items if not self.declared[d].notice]
        return _Holding(tuple(sorted(kept)))


async def _collect(connector: Connector, subject: Subject) -> _Holding:
    """Run an export to its end, one record at a time and in batches, checking every item.

    The two ways must hold the same: the archive reads the batches, an erasure's
    verification the records.
    """
    one_by_one, batched = await _collect_both_ways(connector, subject)
    assert batched == one_by_one, (
        f"export_batches() and export() of {subject.id!r} differ: export_batches() has "
        f"{_difference(one_by_one, batched)}"
    )
    return one_by_one


async def _collect_both_ways(connector: Connector, subject: Subject) -> tuple[_Holding, _Holding]:
    """What :meth:`~connectors.base.Connector.export` and then ``export_batches`` held."""
    checker = _ExportChecker(connector)

    async def consume() -> None:
        async for item in connector.export(subject):
            if isinstance(item, Record):
                checker.add_record(item)
            elif isinstance(item, File):
                await checker.add_file(item)
            else:
                raise AssertionError(
                    f"export yielded a {type(item).__name__}; only Record and File are items"
                )

    batch_checker = _ExportChecker(connector)

    async def consume_batches() -> None:
        async for batch in connector.export_batches(subject):
            if isinstance(batch, Records):
                batch_checker.add_records(batch)
            elif isinstance(batch, File):
                await batch_checker.add_file(batch)
            else:
                raise AssertionError(
                    f"export_batches yielded a {type(batch).__name__}; only Records and File "
                    "are batches (gather records as Records(dataset, rows))"
                )

    await _guarded(f"export of {subject.id!r}", consume())
    await _guarded(f"export_batches of {subject.id!r}", consume_batches())
    return checker.holding(), batch_checker.holding()


def _check_erasure_report(connector: Connector, report: object) -> ErasureReport:
    if not isinstance(report, ErasureReport):
        raise AssertionError(f"erase returned {type(report).__name__}, not an ErasureReport")
    declared = {d.name for d in connector.datasets}
    for entry in report.datasets:
        if entry.dataset not in declared:
            raise AssertionError(f"the erasure report names undeclared dataset {entry.dataset!r}")
        for count in ("deleted", "anonymised", "retained"):
            value = getattr(entry, count)
            if not isinstance(value, int) or value < 0:
                raise AssertionError(f"{entry.dataset!r}: {count} is {value!r}, not a count")
    return report


_Journaled = list[ErasureReport | Literal["committed", "withdrawn"]]
"""What an erasure journaled, in order: each plan, and each step's mark."""


def _check_plans(
    connector: Connector, journaled: _Journaled, report: ErasureReport, *, dry_run: bool
) -> None:
    """``before_commit`` was called as :attr:`Connector.journals_commits` promises, and
    ``after_commit`` and ``withdraw`` each settled the step last planned."""
    if journaled and dry_run:
        plans_made = any(isinstance(event, ErasureReport) for event in journaled)
        called = "before_commit" if plans_made else "after_commit or withdraw"
        raise AssertionError(f"erase called {called} in a dry run, which commits nothing")
    plans: list[ErasureReport] = []
    settled: list[bool] = []  # by plan: whether after_commit or withdraw settled it
    for event in journaled:
        if isinstance(event, ErasureReport):
            plans.append(event)
            settled.append(False)
            continue
        call = "after_commit" if event == "committed" else "withdraw"
        if not settled or settled[-1]:
            raise AssertionError(
                f"erase called {call} with no step planned since the last one was settled: "
                "call before_commit first, and settle each step once"
            )
        settled[-1] = True
        if event == "withdrawn":
            plans.pop()
            settled.pop()
    if journaled and not connector.journals_commits:
        raise AssertionError("erase calls before_commit: set journals_commits = True")
    if dry_run or not connector.journals_commits:
        return
    if any(isinstance(e, str) for e in journaled) and not all(settled):
        raise AssertionError(
            "erase settles some planned steps (after_commit or withdraw) but not others: "
            "settle each step once its commit returned, or none"
        )
    for dataset in dict.fromkeys(entry.dataset for entry in report.datasets):
        for count in ("deleted", "anonymised"):
            planned = sum(getattr(plan.dataset(dataset), count) for plan in plans)
            reported = getattr(report.dataset(dataset), count)
            if planned != reported:
                raise AssertionError(
                    f"journals_commits: before_commit planned {planned} {count} in "
                    f"{dataset!r}, but erase reported {reported} (a step planned and then "
                    "not committed is withdrawn: withdraw)"
                )


def _check_restriction_report(
    connector: Connector, report: object, operation: str = "restrict"
) -> RestrictionReport:
    if not isinstance(report, RestrictionReport):
        raise AssertionError(
            f"{operation} returned {type(report).__name__}, not a RestrictionReport"
        )
    declared = {d.name for d in connector.datasets}
    for dataset, count in report.restricted.items():
        if dataset not in declared:
            raise AssertionError(f"the {operation} report names undeclared dataset {dataset!r}")
        if not isinstance(count, int) or count < 0:
            raise AssertionError(f"{dataset!r}: {operation} counts {count!r}, not a count")
    return report


def _lifts_restrictions(connector: Connector) -> bool:
    """Whether the connector declares :meth:`~connectors.base.Connector.lift_restriction`
    (overrides the base class's, which answers that it cannot)."""
    return type(connector).lift_restriction is not Connector.lift_restriction


_UNDECLARED_PURPOSE = "handover_contract_undeclared"
"""A purpose no connector declares: the kit checks it is reported unsupported."""


def _check_objection_report(
    connector: Connector, report: object, asked: Sequence[str]
) -> ObjectionReport:
    if not isinstance(report, ObjectionReport):
        raise AssertionError(f"object returned {type(report).__name__}, not an ObjectionReport")
    named = [entry.purpose for entry in report.purposes]
    assert sorted(named) == sorted(asked), (
        f"the objection report names purposes {named}; it has one entry per purpose asked "
        f"({list(asked)})"
    )
    for entry in report.purposes:
        declared = entry.purpose in connector.objection_purposes
        assert entry.supported is declared, (
            f"purpose {entry.purpose!r}: supported is {entry.supported!r}, but the connector "
            f"{'declares' if declared else 'does not declare'} it in objection_purposes"
        )
        assert isinstance(entry.stopped, int) and entry.stopped >= 0, (
            f"purpose {entry.purpose!r}: stopped is {entry.stopped!r}, not a count"
        )
        assert declared or entry.note, (
            f"purpose {entry.purpose!r} is not acted on: its note says why"
        )
    return report


_SAMPLE_VALUES: Mapping[str, Any] = {
    "text": "Handover contract check",
    "email": "contract-check@example.com",
    "integer": 7,
    "number": 7.5,
    "boolean": True,
}
"""The value the kit gives a rectifiable field of each type."""


def _sample_changes(connector: Connector) -> list[FieldChange]:
    """A change to each field the connector declares rectifiable, but those identifying the
    subject (changing them would change whom the later checks find)."""
    return [
        FieldChange(field.dataset, field.field, _SAMPLE_VALUES[field.type])
        for field in connector.rectifiable
        if not field.identity
    ]


def _check_rectification_report(
    report: object, changes: Sequence[FieldChange]
) -> RectificationReport:
    if not isinstance(report, RectificationReport):
        raise AssertionError(f"rectify returned {type(report).__name__}, not a RectificationReport")
    named = [(entry.dataset, entry.field) for entry in report.fields]
    asked = [(change.dataset, change.field) for change in changes]
    assert named == asked, (
        f"the rectification report names {named}; it has one entry per change, in order ({asked})"
    )
    for entry in report.fields:
        assert isinstance(entry.changed, int) and entry.changed >= 0, (
            f"{entry.dataset}.{entry.field}: changed is {entry.changed!r}, not a count"
        )
    return report


def _without_identifiers(subject: Subject, identifiers: frozenset[str]) -> Subject:
    """``subject`` stripped of every identifier in ``identifiers`` but its id."""
    return Subject(
        subject.id,
        email=None if "email" in identifiers else subject.email,
        identities={k: v for k, v in subject.identities.items() if k not in identifiers},
    )


def _describe_answer(answer: object) -> str:
    if isinstance(answer, _Holding):
        return f"an export of {len(answer.items)} item(s)"
    return repr(answer)


def _difference(before: _Holding, after: _Holding) -> str:
    gone = Counter(before.items) - Counter(after.items)
    new = Counter(after.items) - Counter(before.items)
    return f"{sum(gone.values())} item(s) gone, {sum(new.values())} item(s) new or changed"


class ConnectorContract(ABC):
    """The tests every connector must pass; subclass it as ``Test<YourConnector>``.

    Override :meth:`make_connector` and :meth:`subject_with_data`; override
    :meth:`make_failing_connector` (or have it return ``None`` when the connector has
    no processor that can fail); override :meth:`retention`,
    :meth:`subject_without_data` and :meth:`cleanup` where the defaults do not fit.
    """

    #: True for a processor whose API offers no per-user export (e.g. web analytics):
    #: its export is only notice datasets, so "the subject's data" is checked as empty.
    exports_notices_only: ClassVar[bool] = False

    @abstractmethod
    async def make_connector(self) -> Connector:
        """A new connector whose processor holds data on :meth:`subject_with_data`.

        Called once per test, inside that test's event loop; every test may erase,
        so each call must give a processor holding the data afresh.
        """

    @abstractmethod
    def subject_with_data(self) -> Subject:
        """A subject the processor holds at least one record or file on."""

    def subject_without_data(self) -> Subject:
        """A subject the processor holds nothing on."""
        return Subject("handover-contract-nobody", email="nobody@contract.invalid")

    def retention(self) -> Mapping[str, RetentionRule]:
        """The retention rules erasures run with: datasets that must be kept and blocked.

        Name a dataset the subject has data in to test the connector's blocking;
        the default, none, tests that everything is erased.
        """
        return {}

    async def make_failing_connector(self) -> Connector | None:
        """A connector whose processor fails: unreachable, refusing its credentials, gone.

        Return ``None`` only when the connector has no processor that can fail (it
        generates its data, say): the error test then checks nothing and warns so.
        Not overriding it fails the contract's error test.
        """
        raise AssertionError(
            f"{type(self).__name__} does not override make_failing_connector(): return a "
            "connector whose processor fails (a closed port, wrong credentials, a missing "
            "bucket), or None when nothing can fail"
        )

    async def cleanup(self) -> None:
        """Stop what :meth:`make_connector` started; runs after the connector is closed."""

    def _run(self, scenario: Callable[[Connector], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                connector = await self.make_connector()
                await _guarded("open", connector.open())
                try:
                    await scenario(connector)
                finally:
                    await _guarded("close", connector.close())
            finally:
                await self.cleanup()

        asyncio.run(main())

    async def _erase(
        self, connector: Connector, subject: Subject, *, dry_run: bool
    ) -> ErasureReport:
        journaled: _Journaled = []

        async def record(planned: ErasureReport) -> None:
            journaled.append(_check_erasure_report(connector, planned))

        async def committed() -> None:
            journaled.append("committed")

        async def withdrawn() -> None:
            journaled.append("withdrawn")

        with journaling(record, committed, withdrawn):
            report = await _guarded(
                f"erase of {subject.id!r}",
                connector.erase(subject, dry_run=dry_run, retention=self.retention()),
            )
        report = _check_erasure_report(connector, report)
        _check_plans(connector, journaled, report, dry_run=dry_run)
        return report

    async def _holding_of_subject(self, connector: Connector) -> _Holding:
        holding = await _collect(connector, self.subject_with_data())
        if holding.empty and not self.exports_notices_only:
            raise AssertionError(
                f"the export of subject_with_data() {self.subject_with_data().id!r} is empty: "
                "make_connector() must give a processor holding data on that subject"
            )
        return holding

    def test_declares_its_datasets(self) -> None:
        """Datasets are declared up front, each with a unique name and a category."""

        async def scenario(connector: Connector) -> None:
            names = [d.name for d in connector.datasets]
            assert names, f"{type(connector).__name__} declares no datasets"
            assert len(names) == len(set(names)), f"dataset names repeat: {names}"
            for dataset in connector.datasets:
                assert isinstance(dataset, Dataset), f"{dataset!r} is not a Dataset"
                assert dataset.name and isinstance(dataset.name, str), f"{dataset!r} has no name"
                assert dataset.category and isinstance(dataset.category, str), (
                    f"dataset {dataset.name!r} has no category"
                )

        self._run(scenario)

    def test_check_passes_on_a_healthy_processor(self) -> None:
        """``check()`` raises nothing when the processor works."""

        async def scenario(connector: Connector) -> None:
            await _guarded("check", connector.check())

        self._run(scenario)

    def test_export_yields_valid_items(self) -> None:
        """Items are records and files of declared datasets, encodable as JSON and CSV."""

        async def scenario(connector: Connector) -> None:
            await self._holding_of_subject(connector)

        self._run(scenario)

    def test_export_of_a_subject_without_data_is_empty(self) -> None:
        """A subject the processor holds nothing on gets nothing."""

        async def scenario(connector: Connector) -> None:
            nobody = self.subject_without_data()
            holding = await _collect(connector, nobody)
            assert holding.empty, (
                f"the export of {nobody.id!r} yielded {sum(holding.counts().values())} item(s)"
            )

        self._run(scenario)

    def test_concurrent_exports_do_not_mix(self) -> None:
        """Exports of different subjects at the same time each get their own subject's data."""

        async def scenario(connector: Connector) -> None:
            alone = await self._holding_of_subject(connector)
            subject, nobody = self.subject_with_data(), self.subject_without_data()
            for first, second in ((subject, nobody), (nobody, subject)):
                holdings = await asyncio.gather(
                    _collect_both_ways(connector, first), _collect_both_ways(connector, second)
                )
                together = dict(zip((first.id, second.id), holdings, strict=True))
                ways = zip(("export", "export_batches"), together[subject.id], strict=True)
                for way, held in ways:
                    assert held == alone, (
                        f"concurrent exports differ from a lone one ({way}): "
                        f"{_difference(alone, held)}"
                    )
                assert all(held.empty for held in together[nobody.id]), (
                    f"{nobody.id!r} got data while another subject's export ran"
                )

        self._run(scenario)

    def test_export_keeps_no_per_job_state(self) -> None:
        """An export rebinds no attribute of the instance (compared shallowly)."""

        async def scenario(connector: Connector) -> None:
            before = dict(vars(connector))
            await self._holding_of_subject(connector)
            after = dict(vars(connector))
            changed = sorted(
                name
                for name in before.keys() | after.keys()
                if name not in before or name not in after or before[name] is not after[name]
            )
            assert not changed, (
                f"export changed attribute(s) {', '.join(changed)} of the connector: per-job "
                "data belongs in arguments and local variables, shared resources in open()"
            )

        self._run(scenario)

    def test_dry_run_erasure_changes_nothing(self) -> None:
        """``erase(dry_run=True)`` reports, and the export afterwards is the same."""

        async def scenario(connector: Connector) -> None:
            before = await self._holding_of_subject(connector)
            await self._erase(connector, self.subject_with_data(), dry_run=True)
            after = await _collect(connector, self.subject_with_data())
            assert after == before, f"a dry-run erasure changed data: {_difference(before, after)}"

        self._run(scenario)

    def test_erasure_leaves_only_retained_data(self) -> None:
        """After an erasure the export holds only retained datasets, as the report says."""

        async def scenario(connector: Connector) -> None:
            subject = self.subject_with_data()
            retention = self.retention()
            before = await self._holding_of_subject(connector)
            report = await self._erase(connector, subject, dry_run=False)
            after = await _collect(connector, subject)
            left = sorted(set(after.counts()) - set(retention))
            assert not left, f"after erasure the export still holds dataset(s) {', '.join(left)}"
            for dataset, count in before.counts().items():
                entry = report.dataset(dataset)
                rule = retention.get(dataset)
                if rule is None:
                    assert entry.deleted + entry.anonymised > 0, (
                        f"the subject had {count} item(s) in {dataset!r} but the report "
                        "counts none deleted or anonymised"
                    )
                    continue
                assert entry.retained > 0 and entry.legal_basis == rule.legal_basis, (
                    f"retained dataset {dataset!r} is reported as {entry}, not retained "
                    f"under {rule.legal_basis!r}"
                )
                assert after.counts()[dataset] == count, (
                    f"retained dataset {dataset!r} held {count} item(s) before the erasure "
                    f"and {after.counts()[dataset]} after: retained data is kept and shown"
                )

        self._run(scenario)

    def test_erasure_is_idempotent(self) -> None:
        """A repeated erasure succeeds and reports nothing new deleted or anonymised."""

        async def scenario(connector: Connector) -> None:
            subject = self.subject_with_data()
            await self._holding_of_subject(connector)
            await self._erase(connector, subject, dry_run=False)
            first = await _collect(connector, subject)
            again = await self._erase(connector, subject, dry_run=False)
            repeated = [e.dataset for e in again.datasets if e.deleted or e.anonymised]
            assert not repeated, (
                f"the second erasure reports deletions in {', '.join(repeated)}: {again}"
            )
            second = await _collect(connector, subject)
            assert second == first, f"the second erasure changed data: {_difference(first, second)}"

        self._run(scenario)

    def test_erasure_leaves_other_subjects_alone(self) -> None:
        """Erasing a subject the processor holds nothing on touches nobody's data."""

        async def scenario(connector: Connector) -> None:
            before = await self._holding_of_subject(connector)
            report = await self._erase(connector, self.subject_without_data(), dry_run=False)
            counted = [e.dataset for e in report.datasets if e.deleted or e.anonymised]
            assert not counted, f"erasing a subject without data reports deletions: {report}"
            after = await _collect(connector, self.subject_with_data())
            assert after == before, (
                f"erasing another subject changed this one's data: {_difference(before, after)}"
            )

        self._run(scenario)

    def test_restriction_answers_a_report(self) -> None:
        """``restrict`` answers a RestrictionReport, changes nothing on a dry run, keeps data."""

        async def scenario(connector: Connector) -> None:
            subject = self.subject_with_data()
            before = await self._holding_of_subject(connector)
            dry = await _guarded(
                f"restrict of {subject.id!r}", connector.restrict(subject, dry_run=True)
            )
            _check_restriction_report(connector, dry)
            after_dry = await _collect(connector, subject)
            assert after_dry == before, (
                f"a dry-run restriction changed data: {_difference(before, after_dry)}"
            )
            report = await _guarded(
                f"restrict of {subject.id!r}", connector.restrict(subject, dry_run=False)
            )
            _check_restriction_report(connector, report)
            after = await _collect(connector, subject)
            assert after.counts() == before.counts(), (
                "a restriction keeps the data (Art. 18 blocks processing, not storage): "
                f"{dict(before.counts())} before, {dict(after.counts())} after"
            )

        self._run(scenario)

    def test_lifting_a_restriction_answers_a_report_and_keeps_data(self) -> None:
        """A connector declaring ``lift_restriction`` lifts what ``restrict`` restricted:
        a RestrictionReport of declared datasets, the data kept, a repeat lifting nothing."""

        async def scenario(connector: Connector) -> None:
            if not _lifts_restrictions(connector):
                return
            subject = self.subject_with_data()
            before = await self._holding_of_subject(connector)
            restricted = _check_restriction_report(
                connector,
                await _guarded(
                    f"restrict of {subject.id!r}", connector.restrict(subject, dry_run=False)
                ),
            )
            what = f"lift_restriction of {subject.id!r}"
            lifted = _check_restriction_report(
                connector, await _guarded(what, connector.lift_restriction(subject)), what
            )
            assert lifted.supported or not restricted.supported, (
                "lift_restriction answers that it cannot lift what restrict restricted "
                f"({dict(restricted.restricted)}): a restriction must be liftable (Art. 18(3))"
            )
            after = await _collect(connector, subject)
            assert after.counts() == before.counts(), (
                "restricting then lifting keeps the data: "
                f"{dict(before.counts())} before, {dict(after.counts())} after"
            )
            if not lifted.supported:
                return
            again = _check_restriction_report(
                connector, await _guarded(what, connector.lift_restriction(subject)), what
            )
            assert not any(again.restricted.values()), (
                f"a repeated lift reports records newly lifted: {dict(again.restricted)}"
            )

        self._run(scenario)

    def test_an_objection_is_answered_for_every_purpose_and_holds(self) -> None:
        """``object`` answers each purpose asked; those declared are acted on and hold."""

        async def scenario(connector: Connector) -> None:
            subject = self.subject_with_data()
            declared = sorted(connector.objection_purposes)
            before = await self._holding_of_subject(connector)
            what = f"object of {subject.id!r}"
            asked = [*declared, _UNDECLARED_PURPOSE]
            _check_objection_report(
                connector, await _guarded(what, connector.object(subject, asked)), asked
            )
            in_force = await _guarded(
                f"objections_in_force of {subject.id!r}",
                connector.objections_in_force(subject, declared),
            )
            assert dict(in_force) == dict.fromkeys(declared, True), (
                f"read back after the objection, {dict(in_force)}: every purpose declared "
                "and objected to is in force (True)"
            )
            again = _check_objection_report(
                connector, await _guarded(what, connector.object(subject, declared)), declared
            )
            assert all(entry.stopped == 0 for entry in again.purposes), (
                "a repeated objection reports something newly stopped: "
                f"{[(e.purpose, e.stopped) for e in again.purposes]}"
            )
            after = await _collect(connector, subject)
            lost = before.counts() - after.counts()
            assert not lost, (
                "an objection stops processing, it deletes nothing: "
                f"{dict(before.counts())} before, {dict(after.counts())} after"
            )

        self._run(scenario)

    def test_a_rectification_changes_each_declared_field_and_holds(self) -> None:
        """``rectify`` changes each field declared ``rectifiable`` (identity fields aside,
        which would change who the subject is); read back, each holds its new value."""

        async def scenario(connector: Connector) -> None:
            subject = self.subject_with_data()
            changes = _sample_changes(connector)
            if not changes:
                return
            before = await self._holding_of_subject(connector)
            what = f"rectify of {subject.id!r}"
            _check_rectification_report(
                await _guarded(what, connector.rectify(subject, changes)), changes
            )
            in_force = await _guarded(
                f"rectifications_in_force of {subject.id!r}",
                connector.rectifications_in_force(subject, changes),
            )
            assert list(in_force) == [True] * len(changes), (
                f"read back after the rectification, {list(in_force)}: every field changed "
                "holds its new value (True)"
            )
            again = _check_rectification_report(
                await _guarded(what, connector.rectify(subject, changes)), changes
            )
            assert all(entry.changed == 0 for entry in again.fields), (
                "a repeated rectification reports records newly changed: "
                f"{[(e.dataset, e.field, e.changed) for e in again.fields]}"
            )
            after = await _collect(connector, subject)
            assert after.counts() == before.counts(), (
                "a rectification changes values, not how many records there are: "
                f"{dict(before.counts())} before, {dict(after.counts())} after"
            )

        self._run(scenario)

    def test_a_subject_without_its_identifiers_is_not_answered(self) -> None:
        """Without an identifier it declares, every operation raises Unidentified.

        "Nothing held" would be a claim about a processor that was never asked.
        A connector that needs only the subject's ``id`` (which every subject has)
        is checked for declaring identifiers that its test subjects carry.
        """

        async def scenario(connector: Connector) -> None:
            identifiers = connector.identifiers
            named = " or ".join(sorted(identifiers))
            assert identifiers and all(isinstance(n, str) and n for n in identifiers), (
                f"{type(connector).__name__} declares identifiers {identifiers!r}: name the "
                "ones it finds subjects by (id, email or an identity such as phone_number)"
            )
            for role, subject in (
                ("subject_with_data()", self.subject_with_data()),
                ("subject_without_data()", self.subject_without_data()),
            ):
                assert any(subject.identifier(name) for name in identifiers), (
                    f"{role} {subject.id!r} carries none of the identifiers the connector "
                    f"declares ({named}): give it one"
                )
            if "id" in identifiers:
                return
            before = await self._holding_of_subject(connector)
            stranger = _without_identifiers(self.subject_with_data(), identifiers)
            retention = self.retention()
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "export": lambda: _collect(connector, stranger),
                "dry-run erase": lambda: connector.erase(
                    stranger, dry_run=True, retention=retention
                ),
                "erase": lambda: connector.erase(stranger, dry_run=False, retention=retention),
                "dry-run restrict": lambda: connector.restrict(stranger, dry_run=True),
                "restrict": lambda: connector.restrict(stranger, dry_run=False),
                "object": lambda: connector.object(stranger, ["direct_marketing"]),
            }
            changes = _sample_changes(connector)
            if changes:
                calls["rectify"] = lambda: connector.rectify(stranger, changes)
            if _lifts_restrictions(connector):
                calls["lift_restriction"] = lambda: connector.lift_restriction(stranger)
            for operation, call in calls.items():
                await _expect_unidentified(connector, operation, named, call)
            after = await _collect(connector, self.subject_with_data())
            assert after == before, (
                "operations on a subject without identifiers changed the data: "
                f"{_difference(before, after)}"
            )

        self._run(scenario)

    def test_failures_are_classified_connector_errors(self) -> None:
        """A failing processor surfaces as TransientError or PermanentError, never as "nothing"."""

        async def main() -> None:
            try:
                connector = await self.make_failing_connector()
                if connector is None:
                    warnings.warn(
                        f"{type(self).__name__}.make_failing_connector() returned None, so the "
                        "error test checked nothing: return a connector whose processor fails "
                        "(a closed port, wrong credentials, a missing bucket) unless nothing "
                        "can fail",
                        stacklevel=2,
                    )
                    return
                await self._expect_failures(connector)
            finally:
                await self.cleanup()

        asyncio.run(main())

    async def _expect_failures(self, connector: Connector) -> None:
        subject = self.subject_with_data()
        try:
            await _guarded("open", connector.open())
        except ConnectorError as exc:
            _require_classified("open", exc)
            _require_safe_message("open", exc, subject)
            return
        try:
            with_failure: dict[str, Callable[[], Awaitable[object]]] = {
                "export": lambda: _collect(connector, subject),
                "erase": lambda: connector.erase(
                    subject, dry_run=False, retention=self.retention()
                ),
            }
            for operation, call in with_failure.items():
                try:
                    await _guarded(operation, call())
                except ConnectorError as exc:
                    _require_classified(operation, exc)
                    _require_safe_message(operation, exc, subject)
                    continue
                raise AssertionError(
                    f"{operation} on the failing connector succeeded: a processor that "
                    "cannot answer must raise, not report that it holds nothing"
                )
            for operation, optional in (
                ("check", lambda: connector.check()),
                ("restrict", lambda: connector.restrict(subject, dry_run=True)),
            ):
                try:
                    await _guarded(operation, optional())
                except ConnectorError as exc:
                    _require_classified(operation, exc)
                    _require_safe_message(operation, exc, subject)
        finally:
            await _guarded("close", connector.close())


async def _expect_unidentified(
    connector: Connector,
    operation: str,
    named: str,
    call: Callable[[], Awaitable[object]],
) -> None:
    """``call`` on a subject lacking ``named`` must raise Unidentified naming declared ones.

    A restriction may instead answer that the processor cannot restrict at all, an
    objection that it cannot act on the purpose: that says nothing about the subject.
    """
    try:
        answer = await _guarded(f"{operation} of a subject without {named}", call())
    except Unidentified as exc:
        needs = set(exc.needs)
        if not needs or not needs <= connector.identifiers:
            raise AssertionError(
                f"{operation} raised Unidentified needing {exc.needs!r}; it names what the "
                f"subject lacks among the identifiers the connector declares ({named})"
            ) from exc
        return
    except ConnectorError as exc:
        raise AssertionError(
            f"{operation} of a subject without {named} raised {type(exc).__name__}: {exc} — "
            "raise connectors.errors.Unidentified (self.require_identifier(subject))"
        ) from exc
    if isinstance(answer, RestrictionReport) and not answer.supported:
        return
    if isinstance(answer, ObjectionReport) and not any(p.supported for p in answer.purposes):
        return
    raise AssertionError(
        f"{operation} of a subject without {named} answered {_describe_answer(answer)}: the "
        "processor could not be asked, so raise connectors.errors.Unidentified "
        "(self.require_identifier(subject)) rather than answer that it holds nothing"
    )


def _require_classified(operation: str, exc: ConnectorError) -> None:
    if not isinstance(exc, TransientError | PermanentError):
        raise AssertionError(
            f"{operation} raised {type(exc).__name__}: {exc} — classify it as TransientError "
            "(retry may help) or PermanentError (it will not)"
        ) from exc


_SHORTEST_CHECKED_VALUE = 5
"""Shorter identifier values (``"1"``, ``"bob"``) cannot be told from other words."""


def _require_safe_message(operation: str, exc: ConnectorError, subject: Subject) -> None:
    """``exc``'s message quotes none of ``subject``'s identifiers; its detail is text or None."""
    message = str(exc).casefold()
    values = {subject.id, subject.email, *subject.identities.values()}
    checked = sorted((v for v in values if v and len(v) >= _SHORTEST_CHECKED_VALUE), key=len)
    for value in reversed(checked):  # the longest first: it names the leak best
        if value.casefold() in message:
            raise AssertionError(
                f"{operation} raised {type(exc).__name__} whose message quotes the subject's "
                f"identifier {value!r}: {exc} — messages are shown to support staff and sent "
                "in webhooks; name the operation instead, and put the processor's own words "
                "in the error's detail= (admins only)"
            ) from exc
    if exc.detail is not None and not isinstance(exc.detail, str):
        raise AssertionError(
            f"{operation} raised {type(exc).__name__} with a detail of type "
            f"{type(exc.detail).__name__}: give text or None"
        ) from exc
