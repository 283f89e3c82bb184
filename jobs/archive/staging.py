"""Staging: a connector's items, encoded and deflated into one staged object.

Each archive file a connector contributes (one per dataset and format, one per
binary file) gets its own deflate stream, CRC-32 and SHA-256, computed once, here,
while the items stream in. The streams' output is cut into chunks and appended,
interleaved, to the connector's single staged object; every file remembers the
``(offset, length)`` of its chunks, so bundling copies them without recompressing.
Memory stays bounded by the chunk size per open file, whatever the export's size.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from isal import isal_zlib

from connectors.errors import PermanentError
from connectors.items import Dataset, Record
from jobs.archive.formats import RENDERERS, Renderer
from jobs.model import StagedPart

CHUNK_SIZE = 1 << 20
COMPRESSION_LEVEL = 1


class _Stream:
    """One archive file being deflated: checksums, sizes and pending output."""

    def __init__(self, part: StagedPart) -> None:
        self.part = part
        self._sha = hashlib.sha256()
        self._crc = 0
        self._deflate = isal_zlib.compressobj(COMPRESSION_LEVEL, isal_zlib.DEFLATED, -15)
        self.pending: list[bytes] = []
        self.pending_size = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._sha.update(data)
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

    Not thread-safe, and needs none: the pipeline calls it from one thread at a
    time. Every method returns the bytes to append to the staged object, in order.
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
        self._order: list[str] = []

    @property
    def staged_size(self) -> int:
        """Bytes handed out so far."""
        return self._offset

    def _open(self, path: str, dataset: Dataset, fmt: str) -> _Stream:
        if path in self._streams:
            raise PermanentError(f"connector {self.connector!r} produced {path!r} twice")
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
            for path in self._record_paths(name):
                renderer = self._renderers[path]
                stream = self._streams[path]
                stream.feed(renderer.render(rows))
                stream.part.records += len(rows)
                out.extend(self._drain(stream, self._chunk_size))
        return out

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
            stream.feed(renderer.begin())
            self._renderers[path] = renderer
            paths.append(path)
        self._record_streams[name] = paths
        return paths

    def open_file(self, path: str, dataset: str) -> str:
        """Start a binary file; returns its archive path for :meth:`add_file_data`."""
        clean = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
        if not clean or clean == "." or clean.startswith("../") or clean == "..":
            raise PermanentError(f"connector {self.connector!r} gave a bad file path {path!r}")
        archive_path = f"{self.connector}/files/{clean}"
        self._open(archive_path, self._dataset(dataset), "binary")
        return archive_path

    def add_file_data(self, archive_path: str, data: bytes) -> list[bytes]:
        """Feed a piece of a binary file; returns staged bytes ready to append."""
        stream = self._streams[archive_path]
        stream.feed(data)
        return self._drain(stream, self._chunk_size)

    def close_file(self, archive_path: str) -> list[bytes]:
        """Finish a binary file; returns its last staged bytes."""
        stream = self._streams[archive_path]
        stream.part.records = 1
        stream.close()
        return self._drain(stream, 1)

    def finish(self) -> tuple[list[bytes], list[StagedPart]]:
        """Close every open dataset; returns the last staged bytes and every part."""
        out: list[bytes] = []
        for path, renderer in self._renderers.items():
            stream = self._streams[path]
            stream.feed(renderer.end())
            stream.close()
            out.extend(self._drain(stream, 1))
        return out, [self._streams[path].part for path in self._order]

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
