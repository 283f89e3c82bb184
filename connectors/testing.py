"""Connectors for tests, demos and load measurements: Handover's fake of its own seam.

- :class:`MemoryConnector` is a processor in memory: it answers with the records
  it was given, erases and blocks them, and can be told to fail or to wait.
- :class:`SyntheticConnector` generates a telemetry history of any size on the fly,
  deterministic from its seed, without holding it in memory; it yields batches
  (:meth:`~connectors.base.Connector.export_batches`), :class:`MemoryConnector` one
  record at a time, so the two ways of exporting are both exercised.
- :class:`ConnectorContract` is the contract kit: the tests every connector must
  pass, which an integrator runs in their own pytest suite (see :mod:`connectors.contract`).
  It needs no pytest plugin, and importing this module does not import pytest.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.contract import ConnectorContract
from connectors.errors import PermanentError, TransientError
from connectors.items import Batch, Dataset, File, Item, Record, Records, Subject
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    FieldChange,
    FieldRectification,
    ObjectionReport,
    PurposeObjection,
    Rectifiable,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
    ValueType,
)

__all__ = ["ConnectorContract", "MemoryConnector", "SyntheticConnector"]


class MemoryConnector(Connector):
    """Serves ``records`` (``{subject: {dataset: [record, ...]}}``) and ``files``.

    ``fail`` makes every export raise a permanent error with that message
    (``fail_transient`` a transient one); ``delay`` waits that many seconds first.
    ``objection_purposes`` are the purposes it stops processing for when the subject
    objects; ``objected`` holds ``(subject, purpose)`` for each. ``rectifiable`` maps
    ``"dataset.field"`` to its value type; a rectification sets the field on the subject's
    records of the dataset.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"identification", "usage"})

    def __init__(
        self,
        name: str,
        *,
        records: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]] | None = None,
        files: Mapping[str, Mapping[str, bytes]] | None = None,
        datasets: Sequence[Mapping[str, Any]] = (),
        fail: str | None = None,
        fail_transient: str | None = None,
        delay: float = 0.0,
        objection_purposes: Sequence[str] = (),
        rectifiable: Mapping[str, ValueType] | None = None,
    ) -> None:
        super().__init__(name)
        self.objection_purposes = frozenset(objection_purposes)
        self.rectifiable = tuple(
            Rectifiable(dataset, field, kind, identity=kind == "email")
            for (dataset, _, field), kind in (
                (path.partition("."), kind) for path, kind in (rectifiable or {}).items()
            )
        )
        self.objected: set[tuple[str, str]] = set()
        self.records = dict(records or {})
        self.files = dict(files or {})
        self.fail = fail
        self.fail_transient = fail_transient
        self.delay = delay
        self.blocked: set[tuple[str, str]] = set()
        declared = [Dataset(**d) for d in datasets]
        known = {d.name for d in declared}
        for per_subject in self.records.values():
            for dataset_name in per_subject:
                if dataset_name not in known:
                    declared.append(Dataset(dataset_name, "usage"))
                    known.add(dataset_name)
        if self.files and "files" not in known:
            declared.append(Dataset("files", "usage", "uploaded files"))
        self.datasets = tuple(declared)  # type: ignore[misc]

    async def _misbehave(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise PermanentError(self.fail)
        if self.fail_transient:
            raise TransientError(self.fail_transient)

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        await self._misbehave()
        for dataset, rows in self.records.get(subject.id, {}).items():
            for row in rows:
                yield Record(dataset, row)
        for path, content in self.files.get(subject.id, {}).items():
            yield File(path, content)

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        await self._misbehave()
        held = self.records.get(subject.id, {})
        entries = []
        for dataset, rows in held.items():
            rule = retention.get(dataset)
            if rule is None:
                entries.append(DatasetErasure(dataset, deleted=len(rows)))
                continue
            until = datetime.now(UTC) + rule.duration
            entries.append(
                DatasetErasure(
                    dataset, retained=len(rows), legal_basis=rule.legal_basis, retained_until=until
                )
            )
        files = self.files.get(subject.id, {})
        if files:
            entries.append(DatasetErasure("files", deleted=len(files)))
        if not dry_run:
            self.records[subject.id] = {
                name: rows for name, rows in held.items() if name in retention
            }
            self.blocked.update((subject.id, name) for name in self.records[subject.id])
            self.files.pop(subject.id, None)
        return ErasureReport(tuple(entries))

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        await self._misbehave()
        held = self.records.get(subject.id, {})
        if not dry_run:
            self.blocked.update((subject.id, name) for name in held)
        return RestrictionReport(
            supported=True, restricted={name: len(rows) for name, rows in held.items()}
        )

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        await self._misbehave()
        entries = []
        for purpose in purposes:
            if purpose not in self.objection_purposes:
                entries.append(
                    PurposeObjection(
                        purpose, supported=False, note=f"{self.name} cannot stop {purpose}"
                    )
                )
                continue
            new = (subject.id, purpose) not in self.objected
            self.objected.add((subject.id, purpose))
            entries.append(PurposeObjection(purpose, (purpose,), stopped=int(new)))
        return ObjectionReport(tuple(entries))

    async def objections_in_force(
        self, subject: Subject, purposes: Sequence[str]
    ) -> Mapping[str, bool]:
        await self._misbehave()
        return {
            purpose: (subject.id, purpose) in self.objected
            for purpose in purposes
            if purpose in self.objection_purposes
        }

    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        await self._misbehave()
        mine = {(who, name) for who, name in self.blocked if who == subject.id}
        self.blocked -= mine
        held = self.records.get(subject.id, {})
        return RestrictionReport(
            supported=True,
            restricted={name: len(held.get(name, [])) for _, name in sorted(mine)},
        )

    async def rectify(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> RectificationReport:
        await self._misbehave()
        held = self.records.get(subject.id, {})
        entries = []
        for change in changes:
            rows = [dict(row) for row in held.get(change.dataset, [])]
            stale = [row for row in rows if row.get(change.field) != change.value]
            for row in stale:
                row[change.field] = change.value
            if stale:
                self.records[subject.id] = {**self.records[subject.id], change.dataset: rows}
                held = self.records[subject.id]
            entries.append(
                FieldRectification(change.dataset, change.field, len(stale), held=bool(rows))
            )
        return RectificationReport(tuple(entries))

    async def rectifications_in_force(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> Sequence[bool]:
        await self._misbehave()
        held = self.records.get(subject.id, {})
        return [
            all(row.get(c.field) == c.value for row in held.get(c.dataset, [])) for c in changes
        ]


class SyntheticConnector(Connector):
    """Generates ``records`` telemetry readings of about ``record_bytes`` each, for any subject.

    The stream is deterministic for a given ``seed`` and subject, so a test can
    regenerate it to compare with an archive record for record; it comes in batches
    of ``batch_rows`` rows. Each ``note`` is a slice of one small pool, which deflate
    compresses unrealistically well; ``entropy`` (0 to 1) is the share of each note
    taken instead from a pool far larger than deflate's window (``0.35`` compresses
    like real NDJSON, about 3.7:1).
    """

    categories: ClassVar[frozenset[str]] = frozenset({"telemetry"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "telemetry",
            "telemetry",
            "readings reported by the subject's devices",
            ("device_id", "seq", "ts", "temperature", "humidity", "firmware", "note"),
        ),
    )

    def __init__(
        self,
        name: str,
        *,
        records: int = 1000,
        record_bytes: int = 200,
        seed: int = 0,
        entropy: float = 0.0,
        batch_rows: int = 1000,
    ) -> None:
        super().__init__(name)
        if batch_rows < 1:
            raise PermanentError(f"connector {name!r}: batch_rows must be at least 1")
        if records < 0 or record_bytes < 64:
            raise PermanentError(f"connector {name!r}: records >= 0 and record_bytes >= 64")
        if not 0.0 <= entropy <= 1.0:
            raise PermanentError(f"connector {name!r}: entropy must be between 0 and 1")
        self.records = records
        self.record_bytes = record_bytes
        self.seed = seed
        self.entropy = entropy
        self.batch_rows = batch_rows
        self.erased: set[str] = set()

    def generate(self, subject: Subject) -> list[dict[str, Any]]:
        """The whole stream as a list, for tests that compare small exports."""
        return list(self._rows(subject))

    def _rows(self, subject: Subject) -> Any:
        rng = random.Random(f"{self.seed}:{subject.id}")
        padding = max(0, self.record_bytes - 150)
        text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=4096 + padding))
        fresh = round(padding * self.entropy)
        wide = ""
        if fresh:  # drawn only when asked: the default stream stays what it always was
            wide = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=(1 << 20) + fresh))
        for seq in range(self.records):
            row: dict[str, Any] = {
                "device_id": f"dev-{rng.randrange(4)}",
                "seq": seq,
                "ts": 1_700_000_000 + seq * 60,
                "temperature": round(rng.uniform(-10, 35), 2),
                "humidity": round(rng.uniform(0, 100), 1),
                "firmware": "2.4.1",
                "note": text[(start := rng.randrange(4096)) : start + padding],
            }
            if fresh:
                at = rng.randrange(1 << 20)
                row["note"] = row["note"][: padding - fresh] + wide[at : at + fresh]
            yield row

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        deleted = 0 if subject.id in self.erased else self.records
        if not dry_run:
            self.erased.add(subject.id)
        return ErasureReport((DatasetErasure("telemetry", deleted=deleted),))

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        if subject.id in self.erased:
            return
        rows = self._rows(subject)
        while batch := list(itertools.islice(rows, self.batch_rows)):
            yield Records("telemetry", batch)
            await asyncio.sleep(0)
