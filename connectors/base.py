"""The ``Connector`` base class: the contract between Handover and one processor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from connectors.errors import PermanentError, Unidentified
from connectors.items import Batch, Dataset, Item, Record, Records, Subject
from connectors.reports import (
    ErasureReport,
    FieldChange,
    ObjectionReport,
    PurposeObjection,
    Rectifiable,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
)

BATCH_ROWS = 1000
"""How many rows of a one-record :meth:`Connector.export` a derived batch gathers."""

_Record = Callable[[ErasureReport], Awaitable[None]]
_Mark = Callable[[], Awaitable[None]]
_journal: ContextVar[tuple[_Record, _Mark | None, _Mark | None] | None] = ContextVar(
    "handover_commit_journal", default=None
)


@contextmanager
def journaling(
    record: _Record, committed: _Mark | None = None, withdrawn: _Mark | None = None
) -> Iterator[None]:
    """Within this block, :meth:`Connector.before_commit` hands each plan to ``record``,
    :meth:`Connector.after_commit` tells ``committed`` that the last plan was committed,
    and :meth:`Connector.withdraw` tells ``withdrawn`` that it was not.

    Handover wraps every erasure in it; each callable writes durably and returns only
    once it is written.
    """
    token = _journal.set((record, committed, withdrawn))
    try:
        yield
    finally:
        _journal.reset(token)


class Connector(ABC):
    """One downstream processor that holds personal data.

    Subclasses declare ``categories`` and ``datasets`` and implement :meth:`export`
    (one record at a time) or :meth:`export_batches` (many rows at once, which Handover
    encodes faster), and :meth:`erase`; :meth:`restrict` where the processor can
    restrict processing (and :meth:`lift_restriction`); :meth:`object` and
    :meth:`objections_in_force` where it can stop processing for a purpose the subject
    objects to (``objection_purposes``);
    :meth:`rectify` and :meth:`rectifications_in_force` where it lets fields be
    corrected (``rectifiable``).
    Resources shared across jobs (pools, clients) are created in :meth:`open` and
    released in :meth:`close`; everything about one request arrives as arguments,
    so one instance serves many jobs at once and holds no per-job state.

    Errors are reported with the classes in :mod:`connectors.errors`; anything else
    that escapes is treated as a permanent failure of this connector.

    Identity: ``identifiers`` names what the processor can find the subject by
    (``id``, ``email`` or an identity such as ``hubspot_contact_id``); it needs any
    one of them. Handover does not run a connector for a subject with none of them
    (the run ends ``unidentified``), and a connector that is called anyway raises
    :class:`~connectors.errors.Unidentified` (:meth:`require_identifier`), never an
    empty answer. An *identity source* also declares ``provides`` and implements
    :meth:`resolve`: Handover runs sources first, in dependency order, and hands
    what they found to every other connector.
    """

    categories: ClassVar[frozenset[str]] = frozenset()
    datasets: ClassVar[tuple[Dataset, ...]] = ()
    #: The identifiers the processor keys its data by; any one of them is enough.
    identifiers: frozenset[str] = frozenset({"id"})
    #: The identifiers :meth:`resolve` can look up (empty: not an identity source).
    provides: frozenset[str] = frozenset()
    #: What GDPR Art. 15(1) asks the platform to tell about this processing (purposes,
    #: legal_basis, recipient, retention, source); set from configuration.
    processing: Mapping[str, str] = {}
    #: Handover's purposes (``direct_marketing``, ``analytics``…) this processor can stop
    #: processing for when the subject objects (GDPR Art. 21); set from configuration.
    #: Empty: :meth:`object` reports every purpose unsupported.
    objection_purposes: frozenset[str] = frozenset()
    #: The fields the subject may have corrected (GDPR Art. 16), each with its value type;
    #: set from configuration. Handover asks :meth:`rectify` for these only.
    rectifiable: tuple[Rectifiable, ...] = ()
    #: Whether :meth:`erase` calls :meth:`before_commit` before every change it commits
    #: (and :meth:`withdraw` for a planned step it then did not commit).
    #: Only then can Handover tell, after a crash, what an interrupted attempt changed;
    #: otherwise the receipt says that it cannot.
    journals_commits: ClassVar[bool] = False
    #: Whether Handover refuses to start while :meth:`check` fails, even transiently:
    #: true for processors that are part of the platform itself (its database). A
    #: third-party processor that cannot be reached at start only gets a warning.
    needed_at_start: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep :meth:`export` and :meth:`export_batches` two views of one export.

        A class that implements one of them gets the other derived from it. So a
        subclass that overrides only :meth:`export` (to wrap a parent's, say) is what
        the batches read, even when the parent yields batches natively.
        """
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "export_batches" in own and "export" not in own:
            cls.export = _derived_export(own["export_batches"])  # type: ignore[method-assign,assignment]
        elif "export" in own and "export_batches" not in own:
            cls.export_batches = Connector.export_batches  # type: ignore[method-assign]

    def __init__(self, name: str, **options: Any) -> None:
        if type(self).export is Connector.export:
            raise TypeError(
                f"{type(self).__name__} implements neither export() nor export_batches(): "
                "a connector implements at least one"
            )
        if options:
            unknown = ", ".join(sorted(options))
            raise PermanentError(f"connector {name!r}: unknown option(s) {unknown}")
        self.name = name

    def dataset(self, name: str) -> Dataset:
        """The declaration of dataset ``name``; an undeclared dataset is a contract breach."""
        for dataset in self.datasets:
            if dataset.name == name:
                return dataset
        raise PermanentError(f"connector {self.name!r} yielded undeclared dataset {name!r}")

    def describe(self) -> Mapping[str, Any]:
        """What this connector tells subjects about itself (shown in archives and the API)."""
        return {
            "name": self.name,
            "type": type(self).__name__,
            **self.processing,
            "categories": sorted(self.categories),
            "identifiers": sorted(self.identifiers),
            "datasets": [
                {"name": d.name, "category": d.category, "description": d.description}
                for d in self.datasets
            ],
        }

    def require_identifier(self, subject: Subject) -> None:
        """Raise :class:`~connectors.errors.Unidentified` unless one of ``identifiers`` is known."""
        if not any(subject.identifier(name) for name in self.identifiers):
            raise Unidentified(self.name, self.identifiers)

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        """Look up the identifiers in ``provides`` for ``subject`` (an identity source).

        Returns those found, by name; one the processor does not hold is left out.
        Raises :class:`~connectors.errors.Unidentified` when it cannot look at all.
        """
        return {}

    async def open(self) -> None:
        """Acquire shared resources; called once before the first job."""

    async def close(self) -> None:
        """Release what :meth:`open` acquired."""

    async def check(self) -> None:
        """Raise a :class:`~connectors.errors.ConnectorError` when the processor is unusable."""

    def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield every record and file this processor holds on ``subject``.

        Retained (blocked) records are included: the subject has a right to see them.
        A connector that implements :meth:`export_batches` instead gets this derived:
        its rows, one :class:`~connectors.items.Record` each.
        """
        return _one_at_a_time(self.export_batches(subject))

    def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        """Yield the same as :meth:`export`, with records gathered into batches of rows.

        Each :class:`~connectors.items.Records` holds rows of one dataset, in the
        order :meth:`export` would yield them; files come as they are. Handover's
        archives read this. Implement it where the processor answers in pages (a
        cursor's fetch, an API page): a batch costs Handover far less than its rows
        one by one. The default gathers :meth:`export`'s consecutive records of a
        dataset, :data:`BATCH_ROWS` at most.
        """
        return _gathered(self.export(subject))

    @abstractmethod
    async def erase(
        self,
        subject: Subject,
        *,
        dry_run: bool,
        retention: Mapping[str, RetentionRule],
    ) -> ErasureReport:
        """Erase or anonymise what this processor holds on ``subject``.

        Datasets named in ``retention`` are not erased but blocked (kept, marked
        restricted) and reported as retained with the rule's legal basis. With
        ``dry_run`` nothing changes and the report says what would happen. Must be
        idempotent: a repeat reports zero new deletions and succeeds.
        """

    async def before_commit(self, planned: ErasureReport) -> None:
        """From :meth:`erase`: what is about to change, just before committing it.

        Handover records the plan durably before this returns, so if the process
        dies between the commit and the end of :meth:`erase`, the next attempt's
        findings tell whether the plan was committed, and the receipt still counts
        it. If recording fails this raises, and the change must not be committed
        (let the exception roll the transaction back). A connector that commits in
        several steps calls it once per step, with that step's counts only. Not
        called in a dry run. Connectors that call it set ``journals_commits = True``.
        """
        hooks = _journal.get()
        if hooks is not None:
            await hooks[0](planned)

    async def after_commit(self) -> None:
        """From :meth:`erase`: the step last planned with :meth:`before_commit` was committed.

        Call it as soon as the commit returned (the transaction committed, the processor
        answered that it deleted). Handover records it, so a crash after this point
        leaves nothing to judge; without it, the next attempt's findings decide whether
        the step was committed (see :meth:`before_commit`). If recording fails this
        raises; the step stays planned, and the findings decide.
        """
        hooks = _journal.get()
        if hooks is not None and hooks[1] is not None:
            await hooks[1]()

    async def withdraw(self) -> None:
        """From :meth:`erase`: the step last planned with :meth:`before_commit` changed nothing.

        Call it when the commit did not happen and :meth:`erase` goes on: the processor
        answered that it holds none of what was planned (a 404 for a deletion), so the
        report counts zero for the step. Handover drops the plan, so a crash later in the
        attempt does not count it. If recording fails this raises; then the plan stays,
        and the connector must not go on as if it were withdrawn (let the error end
        :meth:`erase`: the next attempt's findings judge the step).
        """
        hooks = _journal.get()
        if hooks is not None and hooks[2] is not None:
            await hooks[2]()

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Mark the subject's data restricted (Art. 18) where the processor supports it."""
        return RestrictionReport(
            supported=False, note=f"{type(self).__name__} offers no way to restrict processing"
        )

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """Stop processing the subject's data for ``purposes`` (GDPR Art. 21).

        ``purposes`` are Handover's names. The report has one entry per purpose asked:
        those in ``objection_purposes`` mapped to what the processor calls them, with
        how much was changed now; any other ``supported=False`` with a note saying so.
        Idempotent: a repeat reports nothing newly stopped. A subject the processor
        cannot be asked about raises :class:`~connectors.errors.Unidentified`.
        """
        note = f"{type(self).__name__} offers no way to object to processing for this purpose"
        return ObjectionReport(
            tuple(PurposeObjection(purpose, supported=False, note=note) for purpose in purposes)
        )

    async def objections_in_force(
        self, subject: Subject, purposes: Sequence[str]
    ) -> Mapping[str, bool]:
        """Read back, for each of ``purposes`` in ``objection_purposes``, whether processing
        for it has stopped (``True``) or goes on (``False``): how Handover verifies an
        objection, and shows it in force later. Purposes it cannot act on are left out.
        """
        return {}

    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        """End a restriction (Art. 18(3)): the subject's data is processed again, where the
        processor restricted it. ``restricted`` counts the records no longer restricted. The
        base class answers ``supported=False``, as :meth:`restrict` does."""
        return RestrictionReport(
            supported=False, note=f"{type(self).__name__} offers no way to restrict processing"
        )

    async def rectify(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> RectificationReport:
        """Correct the subject's records (GDPR Art. 16): each change is to a field declared in
        ``rectifiable``, its value already checked against the declared type.

        The report has one entry per change, in order, counting the records changed now
        (a repeat changes nothing). Idempotent. A subject the processor cannot be asked
        about raises :class:`~connectors.errors.Unidentified`. A connector that declares
        nothing rectifiable is never asked.
        """
        raise PermanentError(f"{type(self).__name__} declares no rectifiable field")

    async def rectifications_in_force(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> Sequence[bool]:
        """Read back, for each change, whether every one of the subject's records of its
        dataset now holds the new value: how Handover verifies a rectification."""
        raise PermanentError(f"{type(self).__name__} declares no rectifiable field")


def _derived_export(
    batches: Callable[[Connector, Subject], AsyncIterator[Batch]],
) -> Callable[[Connector, Subject], AsyncIterator[Item]]:
    """An :meth:`Connector.export` that yields the rows of ``batches`` one record at a time.

    It calls that class's own ``batches``, never ``self.export_batches``: a subclass's
    batches may be derived from this very export.
    """

    def export(self: Connector, subject: Subject) -> AsyncIterator[Item]:
        return _one_at_a_time(batches(self, subject))

    export.__doc__ = "Every row of :meth:`export_batches`, one record at a time."
    return export


async def _one_at_a_time(batches: AsyncIterator[Batch]) -> AsyncIterator[Item]:
    """Each row of each :class:`Records` as a :class:`Record`; anything else as it is.

    Anything else is passed on unchecked: whoever reads the export checks its items.
    """
    try:
        async for batch in batches:
            if isinstance(batch, Records):
                dataset = batch.dataset
                for row in batch.rows:
                    yield Record(dataset, row)
            else:
                yield batch
    finally:
        await _close(batches)


async def _gathered(items: AsyncIterator[Item]) -> AsyncIterator[Batch]:
    """Consecutive records of one dataset as :class:`Records` of at most :data:`BATCH_ROWS`.

    Files, and anything else, are passed on as they are, in their place.
    """
    dataset = ""
    rows: list[Mapping[str, Any]] = []
    try:
        async for item in items:
            if isinstance(item, Record):
                if rows and (item.dataset != dataset or len(rows) >= BATCH_ROWS):
                    yield Records(dataset, rows)
                    rows = []
                dataset = item.dataset
                rows.append(item.data)
                continue
            if rows:
                yield Records(dataset, rows)
                rows = []
            yield item
        if rows:
            yield Records(dataset, rows)
    finally:
        await _close(items)


async def _close(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator at once (its connection, its cursor), not when collected."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
