"""Staging: a connector's items, encoded and deflated into one staged object.

Each archive file a connector contributes (one per dataset and format, one per
binary file) gets its own deflate stream, CRC-32 and SHA-256, computed once, here,
while the items stream in. The streams' output is cut into chunks and appended,
interleaved, to the connector's single staged object; every file remembers the
``(offset, length)`` of its chunks, so bundling copies them without recompressing.
Memory stays bounded by the chunk size per open file, whatever the export's size.

:class:`Stager` is the work itself, without I/O or threads. :class:`StagingThread`
drives it for the export pipeline: the event loop renders records (orjson holds the GIL,
so another thread would not render faster), and one thread per connector run (one the
process keeps from run to run, :data:`IDLE_THREADS` at most) does CRC-32 and deflate,
which release the GIL, on about :data:`FEED_SIZE` of rendered bytes at a time, while the
loop reads and renders the next batch. At most :data:`IN_FLIGHT` pieces wait for that
thread, so memory stays flat whatever the connector's pace. A piece's SHA-256 goes to
whichever of the two is free first: the loop takes it while it would otherwise wait for
the thread (a fast source: a replayed one's staging went from 1.6–1.9 to 1.3–1.8 s for
463 MB, its two threads' CPU from 0.8 + 1.4–1.6 to 1.0 + 0.8–1.1 s), the thread after a
piece's deflate when the loop has not (a slow source, whose loop is busy producing
rows); each file's pieces are hashed in order, one taker at a time.

That thread needs the GIL back after each call that released it (three or four times
a piece), and while the loop runs Python without pause (a connector generating its
rows) CPython hands it over only every switch interval, 5 ms by default: up to 20 ms
a MiB, which made the thread, not the connector, set the pace. A process that stages
therefore lowers its switch interval to :data:`SWITCH_INTERVAL`, once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import posixpath
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from isal import isal_zlib

from connectors.errors import PermanentError
from connectors.items import Dataset, Record
from jobs.archive.formats import RENDERERS, Renderer
from jobs.archive.preview import Gatherer
from jobs.archive.zipwriter import unsafe_name
from jobs.model import StagedPart

CHUNK_SIZE = 1 << 20
COMPRESSION_LEVEL = 1
FEED_SIZE = 1 << 20
"""Rendered bytes of one archive file gathered before they go to the staging thread."""
IN_FLIGHT = 4
"""Pieces handed to the staging thread and not yet done, at most. A piece the thread has
done but whose SHA-256 is still to take (the loop was taking another's) is kept until it
is taken: at most as many again per archive file, in practice none for long."""
RENDER_ROWS = 2000
"""Rows rendered at a time: a larger batch is rendered in slices of this many."""
SWITCH_INTERVAL = 0.001
"""The longest a thread waits for the GIL while another runs Python, in seconds."""
IDLE_THREADS = 8
"""Staging threads kept waiting for the next run once theirs ended, at most: starting a
thread costs more than a tiny export's deflate."""


class _Threads:
    """The process's staging threads: each run borrows one that waits idle, or starts
    one; a thread whose run ended waits for the next unless :data:`IDLE_THREADS` already
    do, and then ends. A thread is named for the connector whose run it serves."""

    def __init__(self) -> None:
        self._idle: list[tuple[threading.Thread, queue.SimpleQueue[Callable[[], None]]]] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[], None], name: str) -> None:
        """Run ``work`` on a staging thread named ``name`` meanwhile."""
        with self._lock:  # a thread is named for what it does: idle while in the list
            idle = self._idle.pop() if self._idle else None
            if idle is not None:
                idle[0].name = name
        if idle is None:
            inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
            inbox.put(work)
            threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()
        else:
            idle[1].put(work)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        thread = threading.current_thread()
        while True:
            inbox.get()()
            with self._lock:
                if len(self._idle) >= IDLE_THREADS:
                    return
                thread.name = "handover-staging-idle"
                self._idle.append((thread, inbox))


_THREADS = _Threads()


class _Stream:
    """One archive file being deflated: checksums, sizes and pending output."""

    def __init__(self, part: StagedPart) -> None:
        self.part = part
        self._sha = hashlib.sha256()
        self._crc = 0
        self._deflate = isal_zlib.compressobj(COMPRESSION_LEVEL, isal_zlib.DEFLATED, -15)
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.opening = b""  # rendered bytes that go before the first records (a JSON "[")

    def feed(self, data: bytes | memoryview) -> None:
        self.digest(data)
        self.deflate(data)

    def digest(self, data: bytes | memoryview) -> None:
        """Add ``data`` to the SHA-256 (in order, one caller at a time)."""
        self._sha.update(data)

    def deflate(self, data: bytes | memoryview) -> None:
        """Count ``data`` and add it to the CRC-32 and the deflate stream."""
        if not data:
            return
        self._crc = isal_zlib.crc32(data, self._crc)
        self.part.bytes += len(data)
        self._push(self._deflate.compress(data))

    def close(self) -> None:
        self._push(self._deflate.flush())
        self.part.sha256 = self._sha.hexdigest()
        self.part.crc32 = self._crc

    def _push(self, data: bytes) -> None:
        if data:
            self.pending.append(data)
            self.pending_size += len(data)


class Stager:
    """Turns one connector's items into staged bytes and the parts that index them.

    Every method that returns bytes returns those to append to the staged object,
    in order. Called from one thread, it does everything; :class:`StagingThread`
    splits it in two, each half called from one thread only: rendering
    (:meth:`render_rows`, :meth:`open_file`, :meth:`end_records`) from the event
    loop, and everything that checksums, deflates or appends (:meth:`deflate`,
    :meth:`close_file`, :meth:`close_records`) from the staging thread, in the order
    the loop handed them over; :meth:`digest` from either, one at a time, in order.
    The halves share no state but the parts, whose fields each writes its own of
    (records; sizes, checksums and chunks) and the SHA-256 :meth:`digest` updates.
    """

    def __init__(
        self,
        connector: str,
        dataset: Callable[[str], Dataset],
        formats: Sequence[str],
        *,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.connector = connector
        self._dataset = dataset
        self._formats = tuple(formats)
        self._chunk_size = chunk_size
        self._offset = 0
        self._streams: dict[str, _Stream] = {}
        self._renderers: dict[str, Renderer] = {}
        self._record_streams: dict[str, list[str]] = {}
        self._previews: dict[str, Gatherer] = {}
        self._order: list[str] = []

    @property
    def staged_size(self) -> int:
        """Bytes handed out so far."""
        return self._offset

    def _open(self, path: str, dataset: Dataset, fmt: str) -> _Stream:
        if path in self._streams:
            raise PermanentError(
                f"connector {self.connector!r} produced one file path twice",
                detail=f"archive path {path!r}",
            )
        part = StagedPart(
            path=path,
            connector=self.connector,
            dataset=dataset.name,
            category=dataset.category,
            format=fmt,
            records=0,
            bytes=0,
            sha256="",
            crc32=0,
            compressed_size=0,
            chunks=[],
        )
        stream = _Stream(part)
        self._streams[path] = stream
        self._order.append(path)
        return stream

    def add_records(self, records: Sequence[Record]) -> list[bytes]:
        """Encode a batch of records; returns staged bytes ready to append."""
        grouped: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            grouped.setdefault(record.dataset, []).append(record.data)
        out: list[bytes] = []
        for name, rows in grouped.items():
            out.extend(self.add_rows(name, rows))
        return out

    def add_rows(self, dataset: str, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """Encode rows of one dataset; returns staged bytes ready to append."""
        out: list[bytes] = []
        if not rows:
            return out
        for path, data in self.render_rows(dataset, rows):
            out.extend(self.feed(path, data))
        return out

    def render_rows(
        self, dataset: str, rows: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, bytes]]:
        """Rows of one dataset rendered in every format: ``(archive path, bytes)`` for :meth:`feed`.

        The first rows of a dataset open its files, their opening bytes in front. The
        rows are shown to the dataset's preview (:attr:`previews`) on the way.
        """
        rendered = []
        paths = self._record_paths(dataset)
        self._previews[dataset].add(rows)
        for path in paths:
            stream = self._streams[path]
            data = self._renderers[path].render(rows)
            if stream.opening:
                data = stream.opening + data
                stream.opening = b""
            stream.part.records += len(rows)
            rendered.append((path, data))
        return rendered

    def feed(self, path: str, data: bytes | memoryview) -> list[bytes]:
        """Checksum and deflate rendered bytes of ``path``; returns staged bytes ready to append."""
        stream = self._streams[path]
        stream.feed(data)
        return self._drain(stream, self._chunk_size)

    def deflate(self, path: str, data: bytes | memoryview) -> list[bytes]:
        """:meth:`feed` but for the SHA-256, which :meth:`digest` takes apart."""
        stream = self._streams[path]
        stream.deflate(data)
        return self._drain(stream, self._chunk_size)

    def digest(self, path: str, data: bytes | memoryview) -> None:
        """Add bytes of ``path`` to its SHA-256: every byte :meth:`deflate` took, in the
        same order, before the file is closed; one caller at a time."""
        self._streams[path].digest(data)

    def _record_paths(self, name: str) -> list[str]:
        paths = self._record_streams.get(name)
        if paths is not None:
            return paths
        dataset = self._dataset(name)
        paths = []
        for fmt in self._formats:
            path = f"{self.connector}/{dataset.name}.{fmt}"
            renderer = RENDERERS[fmt](dataset.name, dataset.fields)
            stream = self._open(path, dataset, fmt)
            stream.opening = renderer.begin()
            self._renderers[path] = renderer
            paths.append(path)
        self._record_streams[name] = paths
        self._previews[name] = Gatherer(dataset)
        return paths

    def open_file(self, path: str, dataset: str) -> str:
        """Start a binary file; returns its archive path for :meth:`add_file_data`."""
        clean = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
        archive_path = f"{self.connector}/files/{clean}"
        problem: str | None
        if clean in {"", "."}:
            problem = "it names no file"
        elif clean == ".." or clean.startswith("../"):
            problem = "it leads out of the connector's files/ folder"
        else:
            problem = unsafe_name(archive_path)
        if problem is not None:
            # The path is the processor's (an object key, a file name): it may name the
            # subject, so it goes to admins only.
            raise PermanentError(
                f"connector {self.connector!r} gave an unsafe file path: {problem}",
                detail=f"file path {path!r}",
            )
        self._open(archive_path, self._dataset(dataset), "binary")
        return archive_path

    def add_file_data(self, archive_path: str, data: bytes | memoryview) -> list[bytes]:
        """Feed a piece of a binary file; returns staged bytes ready to append."""
        return self.feed(archive_path, data)

    def close_file(self, archive_path: str) -> list[bytes]:
        """Finish a binary file; returns its last staged bytes."""
        stream = self._streams[archive_path]
        stream.part.records = 1
        stream.close()
        return self._drain(stream, 1)

    def finish(self) -> tuple[list[bytes], list[StagedPart]]:
        """Close every open dataset; returns the last staged bytes and every part."""
        out: list[bytes] = []
        for path, data in self.end_records():
            out.extend(self.feed(path, data))
            out.extend(self.close_records(path))
        return out, self.parts

    def end_records(self) -> list[tuple[str, bytes]]:
        """Every dataset file's closing bytes, to :meth:`feed` before :meth:`close_records`."""
        return [(path, renderer.end()) for path, renderer in self._renderers.items()]

    def close_records(self, path: str) -> list[bytes]:
        """Finish dataset file ``path`` (closing bytes fed); returns its last staged bytes."""
        stream = self._streams[path]
        stream.close()
        return self._drain(stream, 1)

    @property
    def parts(self) -> list[StagedPart]:
        """Every archive file staged, in the order each was opened."""
        return [self._streams[path].part for path in self._order]

    @property
    def previews(self) -> dict[str, dict[str, Any]]:
        """Each dataset's preview for the archive's index, by name (:mod:`jobs.archive.preview`)."""
        return {name: gatherer.result() for name, gatherer in self._previews.items()}

    def _drain(self, stream: _Stream, threshold: int) -> list[bytes]:
        if stream.pending_size < threshold or not stream.pending:
            return []
        chunk = b"".join(stream.pending)
        stream.pending.clear()
        stream.pending_size = 0
        part = stream.part
        if part.chunks and part.chunks[-1][0] + part.chunks[-1][1] == self._offset:
            start, length = part.chunks[-1]
            part.chunks[-1] = (start, length + len(chunk))
        else:
            part.chunks.append((self._offset, len(chunk)))
        part.compressed_size += len(chunk)
        self._offset += len(chunk)
        return [chunk]


class StagingThread:
    """Drives a :class:`Stager` from the event loop, with its checksums and deflate on a thread.

    The loop renders (:meth:`Stager.render_rows`) and gathers each archive file's
    bytes until about ``feed_size`` of them; then one thread, this run's own while it
    lasts, feeds them to the file's CRC-32 and deflate (:meth:`Stager.deflate`), and
    their SHA-256 (:meth:`Stager.digest`) is taken by the loop while it waits for the
    thread, or else by the thread. Every method returns the staged bytes the thread has
    finished so far, in the order they belong in the staged object, and waits only
    while ``in_flight`` pieces are still with the thread. Use it as an async context
    manager: leaving it lets the thread go, whatever happened.
    """

    def __init__(
        self,
        stager: Stager,
        *,
        feed_size: int = FEED_SIZE,
        in_flight: int = IN_FLIGHT,
        render_rows: int = RENDER_ROWS,
    ) -> None:
        self._stager = stager
        self._feed_size = feed_size
        self._in_flight = in_flight
        self._render_rows = render_rows
        self._gathered: dict[str, list[bytes | memoryview]] = {}
        self._gathered_size: dict[str, int] = {}
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[Callable[[], list[bytes]] | None] = queue.SimpleQueue()
        self._done: collections.deque[list[bytes]] = collections.deque()
        self._pending = 0
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        #: Each open archive file's pieces whose SHA-256 is still to take, by path.
        self._unhashed: dict[str, _Unhashed] = {}
        self._pieces = 0

    async def __aenter__(self) -> StagingThread:
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        _THREADS.run(self._work, f"handover-staging-{self._stager.connector}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._inbox.put(None)  # its work ends once what it holds is done: a few pieces

    @property
    def previews(self) -> dict[str, dict[str, Any]]:
        """Each dataset's preview so far: :attr:`Stager.previews`."""
        return self._stager.previews

    @property
    def in_flight(self) -> int:
        """Pieces handed to the thread whose staged bytes the loop has not taken yet."""
        return self._pending

    async def add_rows(self, dataset: str, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """Render rows of one dataset, :data:`RENDER_ROWS` at a time; staged bytes so far."""
        out: list[bytes] = []
        step = self._render_rows
        for start in range(0, len(rows), step):
            batch = rows if len(rows) <= step else rows[start : start + step]
            for path, data in self._stager.render_rows(dataset, batch):
                if self._gather(path, data):
                    out.extend(await self._hand_over_piece(path, self._take(path)))
        return out

    def open_file(self, path: str, dataset: str) -> str:
        """Start a binary file: :meth:`Stager.open_file`."""
        return self._stager.open_file(path, dataset)

    async def add_file_data(self, archive_path: str, data: bytes) -> list[bytes]:
        """Feed a piece of a binary file, in slices of ``feed_size``; staged bytes so far."""
        out: list[bytes] = []
        view = memoryview(data)
        for start in range(0, len(view), self._feed_size):
            if self._gather(archive_path, view[start : start + self._feed_size]):
                out.extend(await self._hand_over_piece(archive_path, self._take(archive_path)))
        return out

    async def close_file(self, archive_path: str) -> list[bytes]:
        """Finish a binary file; staged bytes so far."""
        out = await self._flush(archive_path)
        out.extend(await self._hand_over(self._closing(archive_path, self._stager.close_file)))
        return out

    async def finish(self) -> tuple[list[bytes], list[StagedPart]]:
        """Close every dataset, wait for the thread; the last staged bytes and every part."""
        out: list[bytes] = []
        for path, data in self._stager.end_records():
            self._gather(path, data)
            out.extend(await self._flush(path))
            out.extend(await self._hand_over(self._closing(path, self._stager.close_records)))
        out.extend(await self._ready(0))
        return out, self._stager.parts

    def _gather(self, path: str, data: bytes | memoryview) -> bool:
        """Keep ``data`` for ``path``; whether enough is kept to hand over."""
        if data:
            self._gathered.setdefault(path, []).append(data)
            self._gathered_size[path] = self._gathered_size.get(path, 0) + len(data)
        return self._gathered_size.get(path, 0) >= self._feed_size

    def _take(self, path: str) -> bytes | memoryview:
        pieces = self._gathered.pop(path, [])
        self._gathered_size.pop(path, None)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _flush(self, path: str) -> list[bytes]:
        if path not in self._gathered:
            return []
        return await self._hand_over_piece(path, self._take(path))

    async def _hand_over_piece(self, path: str, piece: bytes | memoryview) -> list[bytes]:
        """Hand a piece of ``path`` to the thread to deflate; its SHA-256 waits apart, for
        whichever thread takes it first (:meth:`_digest_one`, :meth:`_deflate`)."""
        self._pieces += 1
        unhashed = self._unhashed.get(path)
        if unhashed is None:
            unhashed = self._unhashed[path] = _Unhashed(path)
        unhashed.pieces.append((self._pieces, piece))
        return await self._hand_over(partial(self._deflate, unhashed, self._pieces, piece))

    def _deflate(self, unhashed: _Unhashed, number: int, piece: bytes | memoryview) -> list[bytes]:
        """The thread's part of a piece: its deflate, then the SHA-256 of the pieces up to it
        that the loop has not taken, unless the loop is taking one now (with more than
        ``in_flight`` of them waiting, it waits for the loop, so that memory stays flat)."""
        staged = self._stager.deflate(unhashed.path, piece)
        if unhashed.lock.acquire(blocking=len(unhashed.pieces) > self._in_flight):
            try:
                unhashed.digest(self._stager, through=number)
            finally:
                unhashed.lock.release()
        return staged

    def _closing(self, path: str, close: Callable[[str], list[bytes]]) -> Callable[[], list[bytes]]:
        """The thread's work closing ``path``: the SHA-256 of every piece left, then ``close``."""
        unhashed = self._unhashed.pop(path, None)

        def closing() -> list[bytes]:
            if unhashed is not None:
                with unhashed.lock:
                    unhashed.digest(self._stager)
            return close(path)

        return closing

    def _digest_one(self) -> bool:
        """On the loop, which would wait for the thread otherwise: the SHA-256 of one piece
        handed over and not hashed yet; whether there was one to take."""
        for unhashed in self._unhashed.values():
            if unhashed.pieces and unhashed.lock.acquire(blocking=False):
                try:
                    if unhashed.digest(self._stager, most=1):
                        return True
                finally:
                    unhashed.lock.release()
        return False

    async def _hand_over(self, work: Callable[[], list[bytes]]) -> list[bytes]:
        """Queue ``work`` for the thread; what it has finished, once few enough pieces wait."""
        if self._failure is not None:
            raise self._failure
        self._pending += 1
        self._inbox.put(work)
        return await self._ready(self._in_flight)

    async def _ready(self, most: int) -> list[bytes]:
        """The staged bytes the thread has finished, once at most ``most`` pieces wait."""
        out: list[bytes] = []
        while True:
            while self._done:
                out.extend(self._done.popleft())
                self._pending -= 1
            if self._failure is not None:
                raise self._failure
            if self._pending <= most:
                return out
            if self._digest_one():
                await asyncio.sleep(0)  # the loop's other tasks (other runs) go first
                continue
            with self._lock:
                if self._done:
                    continue
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def _work(self) -> None:
        """The thread: each piece in turn, until told to stop or a piece fails."""
        while (work := self._inbox.get()) is not None:
            try:
                staged = work()
            except BaseException as exc:  # raised in the loop, by whoever waits next
                self._failure = exc
                staged = []
            self._done.append(staged)
            with self._lock:
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    self._loop.call_soon_threadsafe(_wake, waiter)
            if self._failure is not None:
                return


class _Unhashed:
    """One archive file's pieces handed to the thread whose SHA-256 is still to take, in
    order, with their numbers; whoever takes them holds ``lock``, so one at a time."""

    __slots__ = ("lock", "path", "pieces")

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.pieces: collections.deque[tuple[int, bytes | memoryview]] = collections.deque()

    def digest(self, stager: Stager, *, through: float = math.inf, most: float = math.inf) -> int:
        """Add the oldest pieces numbered ``through`` or less, ``most`` at most, to the
        file's SHA-256 (the caller holds ``lock``); how many."""
        taken = 0
        while taken < most and self.pieces and self.pieces[0][0] <= through:
            stager.digest(self.path, self.pieces.popleft()[1])
            taken += 1
        return taken


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
