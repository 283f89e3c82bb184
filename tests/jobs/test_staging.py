"""Staging: items deflated once into one staged object, each file indexed by its chunks."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import random
import sys
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from connectors.errors import PermanentError
from connectors.items import Record
from connectors.testing import MemoryConnector
from jobs.archive.formats import FORMATS
from jobs.archive.staging import IDLE_THREADS, SWITCH_INTERVAL, Stager, StagingThread
from jobs.model import StagedPart
from tests.polling import eventually, eventually_sync

CONNECTOR = "shop"
ORDER_FIELDS = ("id", "total", "note")
ROUNDS = 12
BATCH = 300
FILE_PIECE = 48 * 1024


@dataclass
class Staged:
    """What the pipeline would have uploaded: the staged object and its parts by path."""

    data: bytes
    parts: dict[str, StagedPart]


@pytest.fixture
def connector() -> MemoryConnector:
    return MemoryConnector(
        CONNECTOR,
        datasets=[
            {"name": "orders", "category": "economic", "fields": ORDER_FIELDS},
            {"name": "visits", "category": "usage"},
            {"name": "uploads", "category": "contact"},
        ],
    )


@pytest.fixture
def stager_factory(connector: MemoryConnector) -> Callable[..., Stager]:
    def make(formats: Sequence[str] = FORMATS, chunk_size: int = 1024) -> Stager:
        return Stager(connector.name, connector.dataset, formats, chunk_size=chunk_size)

    return make


def order(index: int) -> dict[str, Any]:
    note = hashlib.sha256(f"order {index}".encode()).hexdigest()
    return {"id": index, "total": f"{index * 7 % 1000}.{index % 100:02d}", "note": note}


def visit(index: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"visit {index}".encode()).hexdigest()
    return {"page": f"/p/{digest[:12]}", "at": index * 1000, "ua": digest}


def file_bytes(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def inflate(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(-15)
    content = decompressor.decompress(data) + decompressor.flush()
    assert decompressor.eof, "the chunks hold a complete deflate stream"
    assert decompressor.unused_data == b""
    return content


def content_of(staged: Staged, part: StagedPart) -> bytes:
    return inflate(b"".join(staged.data[start : start + length] for start, length in part.chunks))


def stage_interleaved(stager: Stager) -> list[bytes]:
    """Two datasets and a binary file, fed in alternation like a real connector."""
    out: list[bytes] = []
    upload = stager.open_file("photos/me.bin", "uploads")
    content = file_bytes(ROUNDS * FILE_PIECE)
    for round_ in range(ROUNDS):
        first = round_ * BATCH
        out.extend(
            stager.add_records([Record("orders", order(i)) for i in range(first, first + BATCH)])
        )
        mixed = [Record("visits", visit(first + i)) for i in range(BATCH)]
        mixed.insert(BATCH // 2, Record("orders", order(10_000 + round_)))
        out.extend(stager.add_records(mixed))
        out.extend(
            stager.add_file_data(upload, content[round_ * FILE_PIECE : (round_ + 1) * FILE_PIECE])
        )
    out.extend(stager.close_file(upload))
    last, _ = stager.finish()
    return out + last


async def stage_interleaved_on_a_thread(stager: Stager) -> list[bytes]:
    """The same through a :class:`StagingThread`, in pieces small enough to interleave."""
    out: list[bytes] = []
    content = file_bytes(ROUNDS * FILE_PIECE)
    async with StagingThread(stager, feed_size=4096, in_flight=2, render_rows=100) as staging:
        upload = staging.open_file("photos/me.bin", "uploads")
        for round_ in range(ROUNDS):
            first = round_ * BATCH
            out.extend(await staging.add_rows("orders", [order(first + i) for i in range(BATCH)]))
            out.extend(await staging.add_rows("visits", [visit(first + i) for i in range(BATCH)]))
            out.extend(await staging.add_rows("orders", [order(10_000 + round_)]))
            piece = content[round_ * FILE_PIECE : (round_ + 1) * FILE_PIECE]
            out.extend(await staging.add_file_data(upload, piece))
        out.extend(await staging.close_file(upload))
        last, _ = await staging.finish()
    return out + last


@pytest.fixture(params=["stager", "staging thread"])
async def interleaved(
    request: pytest.FixtureRequest, stager_factory: Callable[..., Stager]
) -> Staged:
    """The interleaved export, staged by the Stager alone or driven by a StagingThread."""
    stager = stager_factory()
    if request.param == "stager":
        out = stage_interleaved(stager)
    else:
        out = await stage_interleaved_on_a_thread(stager)
    data = b"".join(out)
    assert stager.staged_size == len(data)
    return Staged(data, {part.path: part for part in stager.parts})


def expected_orders() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        rows.extend(order(i) for i in range(round_ * BATCH, (round_ + 1) * BATCH))
        rows.append(order(10_000 + round_))
    return rows


def expected_visits() -> list[dict[str, Any]]:
    return [visit(i) for i in range(ROUNDS * BATCH)]


def test_every_file_of_the_export_is_staged(interleaved: Staged) -> None:
    assert list(interleaved.parts) == [
        f"{CONNECTOR}/files/photos/me.bin",
        *(f"{CONNECTOR}/orders.{fmt}" for fmt in FORMATS),
        *(f"{CONNECTOR}/visits.{fmt}" for fmt in FORMATS),
    ]
    upload = interleaved.parts[f"{CONNECTOR}/files/photos/me.bin"]
    assert (upload.connector, upload.dataset, upload.category, upload.format) == (
        CONNECTOR,
        "uploads",
        "contact",
        "binary",
    )
    orders_csv = interleaved.parts[f"{CONNECTOR}/orders.csv"]
    assert (orders_csv.dataset, orders_csv.category, orders_csv.format) == (
        "orders",
        "economic",
        "csv",
    )


def test_every_part_inflates_to_its_checksummed_bytes(interleaved: Staged) -> None:
    for part in interleaved.parts.values():
        content = content_of(interleaved, part)
        assert len(content) == part.bytes, part.path
        assert hashlib.sha256(content).hexdigest() == part.sha256, part.path
        assert zlib.crc32(content) == part.crc32, part.path
        assert part.compressed_size == sum(length for _, length in part.chunks), part.path


def test_parts_tile_the_staged_object(interleaved: Staged) -> None:
    ranges = sorted(chunk for part in interleaved.parts.values() for chunk in part.chunks)
    position = 0
    for start, length in ranges:
        assert start == position, "chunks neither overlap nor leave gaps"
        assert length > 0
        position += length
    assert position == len(interleaved.data)


def test_interleaved_parts_have_several_unmerged_chunks(interleaved: Staged) -> None:
    many = [part for part in interleaved.parts.values() if len(part.chunks) > 1]
    assert len(many) >= 3, "the fixture interleaves several streams"
    for part in many:
        for (start, length), (next_start, _) in zip(part.chunks, part.chunks[1:], strict=False):
            assert start + length < next_start, f"{part.path}: adjacent chunks are merged"


def test_record_parts_render_every_record(interleaved: Staged) -> None:
    orders, visits = expected_orders(), expected_visits()
    for dataset, rows in (("orders", orders), ("visits", visits)):
        json_part = interleaved.parts[f"{CONNECTOR}/{dataset}.json"]
        assert json.loads(content_of(interleaved, json_part)) == rows
        ndjson_part = interleaved.parts[f"{CONNECTOR}/{dataset}.ndjson"]
        lines = content_of(interleaved, ndjson_part).decode().splitlines()
        assert [json.loads(line) for line in lines] == rows
        csv_part = interleaved.parts[f"{CONNECTOR}/{dataset}.csv"]
        text = content_of(interleaved, csv_part).decode()
        reader = csv.DictReader(io.StringIO(text, newline=""))
        typed = [{k: int(v) if k in {"id", "at"} else v for k, v in r.items()} for r in reader]
        assert typed == rows
        for part in (json_part, ndjson_part, csv_part):
            assert part.records == len(rows), part.path


def test_csv_part_uses_the_declared_fields(interleaved: Staged) -> None:
    text = content_of(interleaved, interleaved.parts[f"{CONNECTOR}/orders.csv"]).decode()
    assert text.split("\r\n", 1)[0] == ",".join(ORDER_FIELDS)


def test_binary_part_holds_the_file(interleaved: Staged) -> None:
    upload = interleaved.parts[f"{CONNECTOR}/files/photos/me.bin"]
    assert content_of(interleaved, upload) == file_bytes(ROUNDS * FILE_PIECE)
    assert upload.records == 1


def test_a_stream_drained_twice_in_a_row_keeps_one_chunk(
    stager_factory: Callable[..., Stager],
) -> None:
    stager = stager_factory()
    content = file_bytes(1 << 20)
    path = stager.open_file("big.bin", "uploads")
    out: list[bytes] = []
    drains = 0
    for start in range(0, len(content), 64 * 1024):
        pieces = stager.add_file_data(path, content[start : start + 64 * 1024])
        drains += bool(pieces)
        out.extend(pieces)
    out.extend(stager.close_file(path))
    _, [part] = stager.finish()

    assert drains > 1
    assert part.chunks == [(0, len(b"".join(out)))]
    assert inflate(b"".join(out)) == content


def test_only_the_requested_formats_are_staged(stager_factory: Callable[..., Stager]) -> None:
    stager = stager_factory(formats=["ndjson"])
    out = stager.add_records([Record("visits", visit(1)), Record("visits", visit(2))])
    last, parts = stager.finish()

    assert [part.path for part in parts] == [f"{CONNECTOR}/visits.ndjson"]
    staged = Staged(b"".join(out + last), {parts[0].path: parts[0]})
    lines = content_of(staged, parts[0]).splitlines()
    assert [json.loads(line) for line in lines] == [visit(1), visit(2)]
    assert parts[0].records == 2


def test_empty_file_is_a_valid_part(stager_factory: Callable[..., Stager]) -> None:
    stager = stager_factory()
    path = stager.open_file("empty.txt", "uploads")
    out = stager.close_file(path)
    _, [part] = stager.finish()

    staged = Staged(b"".join(out), {path: part})
    assert content_of(staged, part) == b""
    assert (part.bytes, part.crc32, part.records) == (0, 0, 1)
    assert part.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("given", "archive_path"),
    [
        ("a.txt", "shop/files/a.txt"),
        ("./docs//a.txt", "shop/files/docs/a.txt"),
        ("/abs/a.txt", "shop/files/abs/a.txt"),
        ("docs\\scan.pdf", "shop/files/docs/scan.pdf"),
        ("docs/old/../a.txt", "shop/files/docs/a.txt"),
    ],
)
def test_file_paths_are_normalised(
    stager_factory: Callable[..., Stager], given: str, archive_path: str
) -> None:
    assert stager_factory().open_file(given, "uploads") == archive_path


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../x", "it leads out of the connector's files/ folder"),
        ("..", "it leads out of the connector's files/ folder"),
        ("a/../../x", "it leads out of the connector's files/ folder"),
        ("..\\x", "it leads out of the connector's files/ folder"),
        ("/", "it names no file"),
        ("", "it names no file"),
        (".", "it names no file"),
        ("a\x00.png", "it holds a NUL"),
        ("a\ud800.png", "it is not valid Unicode"),
        ("a" * 70_000, "it is longer than 65535 bytes"),
    ],
)
def test_unsafe_file_path_is_refused_naming_it_to_admins_only(
    stager_factory: Callable[..., Stager], path: str, problem: str
) -> None:
    with pytest.raises(PermanentError) as refused:
        stager_factory().open_file(path, "uploads")
    assert str(refused.value) == f"connector 'shop' gave an unsafe file path: {problem}"
    assert refused.value.detail is not None and refused.value.detail.startswith("file path ")


def test_undeclared_dataset_of_records_is_refused(stager_factory: Callable[..., Stager]) -> None:
    with pytest.raises(PermanentError, match="undeclared dataset 'secrets'"):
        stager_factory().add_records([Record("secrets", {"x": 1})])


def test_undeclared_dataset_of_a_file_is_refused(stager_factory: Callable[..., Stager]) -> None:
    with pytest.raises(PermanentError, match="undeclared dataset 'secrets'"):
        stager_factory().open_file("a.bin", "secrets")


@pytest.mark.parametrize("second", ["a.bin", "./a.bin", "/a.bin"])
def test_same_file_path_twice_is_refused(
    stager_factory: Callable[..., Stager], second: str
) -> None:
    stager = stager_factory()
    stager.open_file("a.bin", "uploads")

    with pytest.raises(PermanentError, match="produced one file path twice") as refused:
        stager.open_file(second, "uploads")
    assert refused.value.detail == "archive path 'shop/files/a.bin'"


async def test_the_staging_thread_stages_what_the_stager_alone_does(
    stager_factory: Callable[..., Stager],
) -> None:
    alone, threaded = stager_factory(), stager_factory()
    stage_interleaved(alone)
    await stage_interleaved_on_a_thread(threaded)

    def summary(stager: Stager) -> list[tuple[Any, ...]]:
        return [(p.path, p.records, p.bytes, p.sha256, p.crc32) for p in stager.parts]

    assert summary(threaded) == summary(alone)


class GatedStager(Stager):
    """A Stager whose deflating half waits for ``gate``, counting the pieces it got, and
    noting which thread took each piece's SHA-256."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fed = 0
        self.rendered = 0
        self.digested_on: list[str] = []

    def render_rows(
        self, dataset: str, rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, bytes]]:
        self.rendered += 1
        return super().render_rows(dataset, rows)

    def deflate(self, path: str, data: bytes | memoryview) -> list[bytes]:
        self.fed += 1
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return super().deflate(path, data)

    def digest(self, path: str, data: bytes | memoryview) -> None:
        self.digested_on.append(threading.current_thread().name)
        super().digest(path, data)


async def test_the_loop_waits_while_the_thread_holds_enough(connector: MemoryConnector) -> None:
    """Memory stays flat: with the thread stuck, the loop renders no further than its bound."""
    stager = GatedStager(connector.name, connector.dataset, ["ndjson"], chunk_size=1024)
    async with StagingThread(stager, feed_size=1, in_flight=2) as staging:

        async def add_batches() -> list[bytes]:
            out: list[bytes] = []
            for batch in range(10):
                out.extend(await staging.add_rows("visits", [visit(batch)]))
            return out

        task = asyncio.create_task(add_batches())
        await eventually(lambda: staging.in_flight == 3, timeout=10, what="3 pieces handed over")
        for _ in range(100):  # the loop runs freely; only the thread could wake the task
            await asyncio.sleep(0)
        assert (stager.rendered, staging.in_flight, task.done()) == (3, 3, False)
        # Waiting, the loop took the SHA-256 of the pieces the stuck thread holds.
        assert stager.digested_on == [threading.main_thread().name] * 3
        stager.gate.set()
        out = await task
        last, [part] = await staging.finish()

    lines = inflate(b"".join(out + last)).splitlines()
    assert [json.loads(line) for line in lines] == [visit(n) for n in range(10)]
    assert part.records == 10


@pytest.mark.parametrize("loop_helps", [True, False], ids=["shared", "thread only"])
async def test_each_sha256_is_the_same_whichever_thread_takes_its_pieces(
    connector: MemoryConnector, monkeypatch: pytest.MonkeyPatch, loop_helps: bool
) -> None:
    """The loop takes a piece's SHA-256 only while it waits for the thread, the thread
    those the loop left (or all, the loop never helping): each file's digest is the
    Stager's alone. (The loop taking them all: the gated test above.)"""
    if not loop_helps:
        monkeypatch.setattr(StagingThread, "_digest_one", lambda self: False)
    alone = Stager(connector.name, connector.dataset, ["ndjson", "csv"], chunk_size=1024)
    stage_interleaved(alone)
    threaded = GatedStager(connector.name, connector.dataset, ["ndjson", "csv"], chunk_size=1024)
    threaded.gate.set()
    await stage_interleaved_on_a_thread(threaded)

    assert [(p.path, p.bytes, p.sha256) for p in threaded.parts] == [
        (p.path, p.bytes, p.sha256) for p in alone.parts
    ]
    if not loop_helps:
        assert set(threaded.digested_on) == {f"handover-staging-{CONNECTOR}"}


async def test_a_failure_on_the_staging_thread_is_raised_in_the_loop(
    stager_factory: Callable[..., Stager],
) -> None:
    async with StagingThread(stager_factory(), feed_size=1) as staging:
        path = staging.open_file("a.bin", "uploads")
        await staging.close_file(path)

        async def deflate_after_the_end() -> None:
            await staging.add_file_data(path, b"more")  # raised here or, if not seen yet, below
            await staging.finish()

        with pytest.raises(Exception, match="Level buffer too small"):  # isal's own error
            await deflate_after_the_end()


async def test_staging_lowers_the_switch_interval(
    stager_factory: Callable[..., Stager], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread must not wait 5 ms for the GIL after each hash or deflate call."""
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: intervals.append(seconds))
    monkeypatch.setattr(sys, "getswitchinterval", lambda: 0.005)
    intervals: list[float] = []
    async with StagingThread(stager_factory()) as staging:
        await staging.finish()
    assert intervals == [SWITCH_INTERVAL] and SWITCH_INTERVAL <= 0.001


def staging_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"handover-staging-{CONNECTOR}"]


def idle_staging_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "handover-staging-idle"]


@pytest.fixture
def no_run_being_staged() -> None:
    """No staging thread serves a run: an earlier test's may still be on its way back to
    the idle ones, under its connector's name, when the next test starts."""

    def serving() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.name.startswith("handover-staging-") and t.name != "handover-staging-idle"
        ]

    eventually_sync(serving, until=lambda t: t == [], timeout=5, what="earlier runs to end")


@pytest.mark.usefixtures("no_run_being_staged")
@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
async def test_the_staging_thread_is_let_go_with_its_block_and_serves_the_next_run(
    stager_factory: Callable[..., Stager], fails: bool
) -> None:
    with contextlib.suppress(KeyError):
        async with StagingThread(stager_factory()) as staging:
            await staging.add_rows("visits", [visit(1)])
            [thread] = staging_threads()
            if fails:
                raise KeyError("the connector broke")
            await staging.finish()
    eventually_sync(staging_threads, until=lambda t: t == [], timeout=5, what="the thread to go")
    assert thread.is_alive() and thread in idle_staging_threads()

    async with StagingThread(stager_factory()) as staging:
        await staging.add_rows("visits", [visit(2)])
        assert staging_threads() == [thread]  # not a thread started for it
        await staging.finish()


@pytest.mark.usefixtures("no_run_being_staged")
async def test_at_most_idle_threads_stay_once_their_runs_end(
    stager_factory: Callable[..., Stager],
) -> None:
    async with contextlib.AsyncExitStack() as runs:
        for _ in range(IDLE_THREADS + 3):
            staging = await runs.enter_async_context(StagingThread(stager_factory()))
            await staging.add_rows("visits", [visit(1)])
        assert len(staging_threads()) == IDLE_THREADS + 3

    def every_staging_thread() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("handover-staging-")]

    eventually_sync(
        every_staging_thread,
        until=lambda t: len(t) == IDLE_THREADS,
        timeout=5,
        what="the others to end",
    )
    assert every_staging_thread() == idle_staging_threads()
