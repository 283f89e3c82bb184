"""Exports in batches through the real worker: the same archive as record by record.

A connector may yield :class:`~connectors.items.Records` (``export_batches``) or one
:class:`~connectors.items.Record` at a time (``export``). Either way the archive must
hold the same bytes, and those bytes must be what the generic encoder writes
(:func:`jobs.archive.formats.dumps`), whichever batches needed its fallback.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
import pytest
from arq.connections import ArqRedis

from connectors.base import Connector
from connectors.items import Batch, Dataset, Item, Record, Records, Subject
from connectors.reports import ErasureReport, RetentionRule
from connectors.testing import SyntheticConnector
from jobs.archive.formats import FORMATS, CsvRenderer, dumps
from jobs.archive.staging import FEED_SIZE
from jobs.commands import Actor, Commands
from jobs.model import JobStatus, RunStatus
from jobs.resources import Resources
from tests.jobs.test_export import archive_of, drain
from tests.polling import eventually_sync

FIELDS = ("seq", "device", "reading", "note", "extra")
# Irregular batch sizes: a batch of one, batches around the connectors' usual 1,000,
# and the rest; with ~600-byte rows, each format's file spans several 1 MiB pieces.
BATCH_SIZES = (1, 999, 1000, 7, 1500)


def rows(count: int = sum(BATCH_SIZES)) -> list[dict[str, Any]]:
    """Telemetry-like rows; every 500th holds values plain orjson cannot write."""
    made: list[dict[str, Any]] = []
    for seq in range(count):
        row: dict[str, Any] = {
            "seq": seq,
            "device": f"dev-{seq % 4}",
            "reading": seq * 0.25 - 40,
            "note": f"reading {seq} " + "x" * 800,
            "extra": None,
        }
        if seq % 500 == 3:
            row["extra"] = {
                "amount": Decimal(f"{seq}.10"),
                "raw": f"blob {seq}".encode(),
                "tags": ("a", "b"),
                "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                "by_port": {seq: "open"},
            }
        made.append(row)
    return made


class _Telemetry(Connector):
    """Serves ``rows`` of one ``telemetry`` dataset to every subject; erases nothing."""

    categories: ClassVar[frozenset[str]] = frozenset({"telemetry"})
    datasets: ClassVar[tuple[Dataset, ...]] = (Dataset("telemetry", "telemetry", "", FIELDS),)

    def __init__(self, name: str, data: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(name)
        self.data = data

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


class OneByOne(_Telemetry):
    """A one-record connector: ``export`` only."""

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        for row in self.data:
            yield Record("telemetry", row)


class Batched(_Telemetry):
    """A batch connector: ``export_batches`` only, in batches of ``sizes`` rows."""

    def __init__(
        self, name: str, data: Sequence[Mapping[str, Any]], sizes: Sequence[int] = BATCH_SIZES
    ) -> None:
        super().__init__(name, data)
        self.sizes = tuple(sizes)

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        start = 0
        for size in self.sizes:
            yield Records("telemetry", list(self.data[start : start + size]))
            start += size


def generic_rendering(
    fmt: str, data: Sequence[Mapping[str, Any]], fields: Sequence[str] = FIELDS
) -> bytes:
    """The dataset's file as the generic encoder writes it, in one batch: as before batches."""
    if fmt == "ndjson":
        return b"".join(dumps(row) + b"\n" for row in data)
    if fmt == "json":
        return b"[\n" + b",\n".join(dumps(row) for row in data) + b"\n]\n"
    renderer = CsvRenderer("telemetry", fields)
    return renderer.begin() + renderer.render(data) + renderer.end()


async def export_all_formats(resources: Resources, redis: ArqRedis) -> zipfile.ZipFile:
    job = await Commands(resources).request_export(
        Actor("alice", staff=False), subject="alice", formats=list(FORMATS)
    )
    worker = await drain(redis, resources)
    assert worker.jobs_failed == 0
    done = await resources.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    return await archive_of(resources, job.id)


def manifest_entries(archive: zipfile.ZipFile, connector: str) -> dict[str, dict[str, Any]]:
    """The manifest's account of ``connector``'s files: size, records, SHA-256, by format."""
    files = orjson.loads(archive.read("manifest.json"))["files"]
    return {
        f["format"]: {k: f[k] for k in ("bytes", "records", "sha256")}
        for f in files
        if f["connector"] == connector
    }


async def test_a_batch_connector_and_a_one_record_connector_make_the_same_files(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    data = rows()
    connectors = {"single": OneByOne("single", data), "batched": Batched("batched", data)}
    async with resources_factory(connectors) as resources:
        archive = await export_all_formats(resources, redis)

    for fmt in FORMATS:
        single = archive.read(f"single/telemetry.{fmt}")
        assert len(single) > 2 * FEED_SIZE, "each file spans several pieces of the staging thread"
        assert archive.read(f"batched/telemetry.{fmt}") == single, fmt
        assert single == generic_rendering(fmt, data), f"{fmt} differs from the generic encoder"
    assert manifest_entries(archive, "batched") == manifest_entries(archive, "single")
    assert manifest_entries(archive, "single")["ndjson"]["records"] == len(data)


async def test_native_batches_and_a_subclass_exporting_one_by_one_agree(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    class SyntheticOneByOne(SyntheticConnector):
        """Overrides only ``export``: its batches must come from it, one record at a time."""

        async def export(self, subject: Subject) -> AsyncIterator[Item]:
            async for item in super().export(subject):
                assert isinstance(item, Record)
                yield Record(item.dataset, {**item.data, "note": "wrapped"})

    options: dict[str, Any] = {"records": 2500, "record_bytes": 300, "seed": 5, "batch_rows": 700}
    connectors = {
        "native": SyntheticConnector("native", **options),
        "wrapped": SyntheticOneByOne("wrapped", **options),
    }
    async with resources_factory(connectors) as resources:
        archive = await export_all_formats(resources, redis)

    expected = SyntheticConnector("native", **options).generate(Subject("alice"))
    native = [orjson.loads(line) for line in archive.read("native/telemetry.ndjson").splitlines()]
    wrapped = archive.read("wrapped/telemetry.ndjson").splitlines()
    assert native == expected
    assert [orjson.loads(line) for line in wrapped] == [{**r, "note": "wrapped"} for r in expected]
    for fmt in FORMATS:
        synthetic = generic_rendering(fmt, expected, SyntheticConnector.datasets[0].fields)
        assert archive.read(f"native/telemetry.{fmt}") == synthetic, fmt


async def test_a_batch_with_a_value_plain_orjson_cannot_write_is_rendered_as_before(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    plain: list[dict[str, Any]] = [
        {"seq": n, "device": "dev-1", "reading": 1.5, "note": "ok", "extra": None} for n in range(3)
    ]
    special: dict[str, Any] = {
        "seq": 3,
        "device": "dev-1",
        "reading": Decimal("21.50"),  # a Decimal: a string, as the generic encoder writes it
        "note": b"\x00\xff",  # bytes: base64
        "extra": {"ids": {3, 1, 2}, 7: "a key that is not text"},
    }
    data = [*plain, special, *plain]
    connector = Batched("batched", data, sizes=(3, 4, 3))
    async with resources_factory({"batched": connector}) as resources:
        archive = await export_all_formats(resources, redis)

    for fmt in FORMATS:
        assert archive.read(f"batched/telemetry.{fmt}") == generic_rendering(fmt, data), fmt
    lines = archive.read("batched/telemetry.ndjson").splitlines()
    assert orjson.loads(lines[3]) == {
        "seq": 3,
        "device": "dev-1",
        "reading": "21.50",
        "note": "AP8=",
        "extra": {"ids": [1, 2, 3], "7": "a key that is not text"},
    }


async def test_a_value_no_encoder_can_write_fails_the_run_naming_it(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    data: list[dict[str, Any]] = [
        {"seq": 1, "device": "d", "reading": 1, "note": object(), "extra": None}
    ]
    async with resources_factory({"batched": Batched("batched", data, (1,))}) as resources:
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", formats=["ndjson"]
        )
        await drain(redis, resources)
        run = (await resources.store.get(job.id)).connectors["batched"]
    assert run.status is RunStatus.FAILED and run.error_class == "permanent"
    assert run.error == "record is not serialisable: Type is not JSON serializable: object"


class YieldsARecord(_Telemetry):
    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        yield Record("telemetry", {"seq": 1})  # type: ignore[misc]


class YieldsAGenerator(_Telemetry):
    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        yield Records("telemetry", (row for row in self.data))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("connector", "error"),
    [
        (
            YieldsARecord("odd", []),
            "connector 'odd' yielded a Record: export() yields Record and File items, "
            "export_batches() Records and File",
        ),
        (
            YieldsAGenerator("odd", rows(2)),
            "connector 'odd': the rows of a 'telemetry' batch are a generator, not a list of rows",
        ),
    ],
)
async def test_a_batch_that_breaks_the_contract_fails_the_run_saying_how(
    resources_factory: Callable[..., Any], redis: ArqRedis, connector: Connector, error: str
) -> None:
    async with resources_factory({"odd": connector}) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources)
        done = await resources.store.get(job.id)
    assert done.status is JobStatus.FAILED
    run = done.connectors["odd"]
    assert (run.error_class, run.error) == ("permanent", error)


def staging_threads() -> list[str]:
    """The staging threads serving a run (those kept idle for the next are not)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("handover-staging-") and t.name != "handover-staging-idle"
    ]


async def test_the_staging_thread_is_let_go_with_its_run_whatever_the_outcome(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    class BreaksMidway(Batched):
        async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
            async for batch in super().export_batches(subject):
                yield batch
                raise KeyError("the processor's answer had no 'next'")

    data = rows()
    connectors = {"fine": Batched("fine", data), "broken": BreaksMidway("broken", data)}
    async with resources_factory(connectors) as resources:
        job = await Commands(resources).request_export(Actor("alice", staff=False), subject="alice")
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.connectors["fine"].status is RunStatus.SUCCEEDED
        assert done.connectors["broken"].error_class == "internal"
    eventually_sync(
        staging_threads, until=lambda names: names == [], timeout=5, what="staging threads to go"
    )
