"""The connector base class: ``export`` and ``export_batches``, each derived from the other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from connectors import (
    Batch,
    Connector,
    Dataset,
    ErasureReport,
    File,
    Item,
    Record,
    Records,
    RetentionRule,
    Subject,
)
from connectors.base import BATCH_ROWS

ALICE = Subject("alice")


class _Base(Connector):
    datasets = (Dataset("a", "usage"), Dataset("b", "usage"), Dataset("files", "usage"))

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closed = False

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


class OneByOne(_Base):
    """2,500 records of ``a``, 3 of ``b``, a file, 2 of ``a``: one at a time."""

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        try:
            for n in range(2 * BATCH_ROWS + 500):
                yield Record("a", {"n": n})
            for n in range(3):
                yield Record("b", {"n": n})
            yield File("notes.txt", b"hello")
            for n in range(2):
                yield Record("a", {"n": n})
        finally:
            self.closed = True


class InBatches(_Base):
    """Two pages of ``a`` around a file: in batches."""

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        try:
            yield Records("a", [{"n": 0}, {"n": 1}])
            yield File("notes.txt", b"hello")
            yield Records("a", [{"n": 2}])
        finally:
            self.closed = True


async def collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def shape(batch: Batch) -> tuple[str, Any]:
    if isinstance(batch, Records):
        return batch.dataset, [row["n"] for row in batch.rows]
    return "file", batch.path


async def test_a_one_record_export_comes_in_batches_of_consecutive_records() -> None:
    batches = await collect(OneByOne("crm").export_batches(ALICE))

    first, second = list(range(BATCH_ROWS)), list(range(BATCH_ROWS, 2 * BATCH_ROWS))
    assert [shape(b) for b in batches] == [
        ("a", first),
        ("a", second),
        ("a", list(range(2 * BATCH_ROWS, 2 * BATCH_ROWS + 500))),
        ("b", [0, 1, 2]),
        ("file", "notes.txt"),
        ("a", [0, 1]),
    ]


async def test_a_batch_export_comes_one_record_at_a_time_too() -> None:
    items = await collect(InBatches("crm").export(ALICE))

    assert items == [
        Record("a", {"n": 0}),
        Record("a", {"n": 1}),
        File("notes.txt", b"hello"),
        Record("a", {"n": 2}),
    ]


async def test_a_subclass_overriding_export_is_what_its_batches_read() -> None:
    class Filtered(InBatches):
        async def export(self, subject: Subject) -> AsyncIterator[Item]:
            async for item in super().export(subject):
                if not isinstance(item, Record) or item.data["n"] != 1:
                    yield item

    batches = await collect(Filtered("crm").export_batches(ALICE))

    assert [shape(b) for b in batches] == [("a", [0]), ("file", "notes.txt"), ("a", [2])]


async def test_a_subclass_yielding_batches_is_what_its_records_read() -> None:
    class Paged(OneByOne):
        async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
            yield Records("b", [{"n": 7}])

    assert await collect(Paged("crm").export(ALICE)) == [Record("b", {"n": 7})]


@pytest.mark.parametrize("cls", [OneByOne, InBatches])
@pytest.mark.parametrize("way", ["export", "export_batches"])
async def test_a_reader_stopping_early_closes_the_connectors_own_generator(
    cls: type[_Base], way: str
) -> None:
    connector = cls("crm")
    stream = getattr(connector, way)(ALICE)
    await anext(stream)
    await stream.aclose()

    assert connector.closed, "the connector's cursor or connection would stay open"


def test_a_connector_implementing_neither_is_refused_when_built() -> None:
    with pytest.raises(TypeError, match="Silent implements neither export.. nor export_batches"):
        type("Silent", (_Base,), {})("silent")
