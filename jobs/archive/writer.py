"""The export archive: staged parts bundled into one signed, streamed ZIP.

::

    handover-export-<job id>.zip
      index.html           the readable answer (GDPR Art. 15): every file linked, each
                           dataset previewed and charted, the processing explained
                           (:mod:`jobs.archive.index`)
      manifest.json        job, subject, dates, what was asked (scope) and left out,
                           the kinds of identifier used and how each was verified,
                           connectors (asked or not, and why not), and per file:
                           path, connector, dataset, category, format, records, bytes, sha256;
                           a compelled disclosure's ``recipient`` (the authority, its order),
                           or the ``disclosures`` the subject may be told of (Art. 15(1)(c))
      manifest.json.sig    Ed25519 signature of manifest.json's exact bytes, with key id
      <connector>/<dataset>.<json|csv|ndjson>
      <connector>/files/…

The data files were deflated in staging, and bundling does not touch their bytes
again when it can help it. On S3 (an :class:`~jobs.storage.base.AssemblingStore`) the
archive is a multipart upload whose parts are the ZIP's headers, written here, and
ranges of the staged objects, which S3 copies itself (``UploadPartCopy``): their bytes
never pass through the worker, but for at most 5 MiB per range that S3's smallest
part size needs (:class:`~jobs.storage.s3.S3Assembler`). In the local store the kernel
copies the ranges, file to file (:class:`~jobs.storage.local.LocalAssembler`). A small
staged object the caller read whole (``held``) is written from memory instead. Once a
range was copied, no SHA-256 of the whole archive exists (computing one would mean
reading it back): the signed manifest's per-file SHA-256 vouches for the content, and
the store's CRC-32 of the whole for the transport (:class:`ArchiveOutput`). A
password-protected archive (every member encrypted here) and an age-encrypted one
(the whole stream encrypted here) are written byte by byte, and have both.
Nothing is held whole in memory or on disk either way.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from isal import isal_zlib

from jobs.archive import index
from jobs.archive.protection import AES_METHOD, AES_OVERHEAD, ZipMemberCipher, aes_extra
from jobs.archive.signing import Signer
from jobs.archive.zipwriter import DEFLATED, ZipWriter
from jobs.model import Job, StagedPart, iso
from jobs.storage.base import (
    READ_CHUNK,
    AssemblingStore,
    ObjectAssembler,
    ObjectShort,
    ObjectStore,
    ObjectWriter,
    StorageError,
)

FORMAT = "handover-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
INDEX = "index.html"
CHECKSUM_APART = READ_CHUNK
"""Bytes from which :class:`ArchiveOutput` takes a write's checksums on a thread (a
smaller write costs about as much to hand over as to hash: an age archive writes 64 KiB
pieces)."""


@dataclass(frozen=True)
class StagedFile:
    """A part and the staged object that holds its chunks."""

    staged_key: str
    part: StagedPart


class ArchiveOutput:
    """Where an archive goes: an :class:`~jobs.storage.base.ObjectWriter` that counts,
    checks and, on a store that can, has staged bytes copied by the store itself.

    While every byte passes through here, the whole archive's SHA-256 and CRC-32 are
    computed here. Once a range went to :meth:`copy`, :attr:`sha256` is ``None`` (no
    SHA-256 of the whole exists without reading the archive back) and :attr:`crc32` is
    the one the store computed over the object it holds, ``None`` if it gave none.

    A large write's checksums are taken on a thread (hashlib and isal release the GIL)
    while it is written and the caller reads the next bytes: SHA-256 is the slowest
    step of writing the archive byte by byte (1 GB/s, against several for reading
    and writing a file). The next write waits for them, so they are taken in order,
    and :meth:`complete` for the last.
    """

    def __init__(
        self, storage: ObjectStore, key: str, content_type: str = "application/octet-stream"
    ) -> None:
        self._assembler: ObjectAssembler | None = (
            storage.assembler(key, content_type) if isinstance(storage, AssemblingStore) else None
        )
        self.target: ObjectWriter = self._assembler or storage.writer(key, content_type)
        self._sha256 = hashlib.sha256()
        self._crc32 = 0
        self._copied = False
        self._checksumming: asyncio.Future[None] | None = None
        self.size = 0

    @property
    def can_copy(self) -> bool:
        """Whether :meth:`copy` is there: the store assembles objects from ranges."""
        return self._assembler is not None

    async def write(self, data: bytes) -> None:
        await self._checksummed()
        self.size += len(data)
        if len(data) >= CHECKSUM_APART and isinstance(data, bytes):  # bytes: no one changes them
            loop = asyncio.get_running_loop()
            self._checksumming = loop.run_in_executor(None, self._checksum, data)
        else:
            self._checksum(data)
        await self.target.write(data)

    def _checksum(self, data: bytes) -> None:
        self._sha256.update(data)
        self._crc32 = isal_zlib.crc32(data, self._crc32)

    async def _checksummed(self) -> None:
        """Once the checksums of the last write are taken."""
        if self._checksumming is not None:
            checksumming, self._checksumming = self._checksumming, None
            await checksumming

    async def copy(self, key: str, start: int, length: int) -> None:
        """Append ``length`` bytes of the stored object ``key`` from ``start``."""
        if self._assembler is None:
            raise TypeError("this store cannot copy ranges; write the bytes")
        self._copied = True
        self.size += length
        await self._assembler.copy(key, start, length)

    async def complete(self) -> int:
        await self._checksummed()
        return await self.target.complete()

    async def abort(self) -> None:
        try:
            await self._checksummed()  # no thread left reading a write's bytes
        finally:
            await self.target.abort()

    def _taken(self) -> None:
        if self._checksumming is not None:
            raise RuntimeError("the archive's checksums are still being taken: complete it first")

    @property
    def sha256(self) -> str | None:
        """The whole archive's SHA-256 (hex), if every byte passed through here."""
        self._taken()
        return None if self._copied else self._sha256.hexdigest()

    @property
    def crc32(self) -> str | None:
        """The whole archive's CRC-32 (8 hex digits): computed here, or by the store."""
        if self._copied:
            return self._assembler.crc32 if self._assembler is not None else None
        self._taken()
        return f"{self._crc32:08x}"


def _file_entry(part: StagedPart) -> dict[str, Any]:
    return {
        "path": part.path,
        "connector": part.connector,
        "dataset": part.dataset,
        "category": part.category,
        "format": part.format,
        "records": part.records,
        "bytes": part.bytes,
        "sha256": part.sha256,
    }


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


class _Members:
    """Writes members' headers and bytes, encrypting them (WinZip AE-2) given a password."""

    def __init__(self, zip_writer: ZipWriter, out: ObjectWriter, password: str | None) -> None:
        self.zip_writer = zip_writer
        self.out = out
        self.password = password
        self._cipher: ZipMemberCipher | None = None

    async def begin(self, name: str, crc32: int, size: int, compressed_size: int) -> None:
        if self.password is None:
            await self.out.write(self.zip_writer.member_header(name, crc32, size, compressed_size))
            return
        self._cipher = ZipMemberCipher(self.password)
        header = self.zip_writer.member_header(
            name,
            0,  # AE-2 leaves the CRC out: the authentication code protects the data
            size,
            compressed_size + AES_OVERHEAD,
            AES_METHOD,
            extra=aes_extra(DEFLATED),
            encrypted=True,
        )
        await self.out.write(header + self._cipher.start())

    async def data(self, chunk: bytes) -> None:
        await self.out.write(self._cipher.encrypt(chunk) if self._cipher else chunk)

    async def end(self) -> None:
        if self._cipher is not None:
            await self.out.write(self._cipher.finish())
            self._cipher = None

    async def small(self, name: str, data: bytes) -> None:
        compressed = _deflate(data)
        await self.begin(name, zlib.crc32(data), len(data), len(compressed))
        await self.data(compressed)
        await self.end()


async def _slice(data: bytes, start: int, length: int) -> AsyncIterator[bytes]:
    """A range of bytes held in memory, as :meth:`ObjectStore.read` gives a stored one."""
    yield data[start : start + length]


def _merged_ranges(chunks: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, length in chunks:
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((start, length))
    return merged


async def write_archive(
    *,
    job: Job,
    staged: Sequence[StagedFile],
    storage: ObjectStore,
    destination: ObjectWriter,
    signer: Signer,
    connectors: Sequence[Mapping[str, Any]],
    generated_at: datetime,
    expires_at: datetime,
    statement: index.Statement,
    previews: Mapping[tuple[str, str], Mapping[str, Any]],
    password: str | None = None,
    force_zip64: bool = False,
    recipient: Mapping[str, str] | None = None,
    disclosures: Sequence[Mapping[str, str]] = (),
    held: Mapping[str, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Stream the archive for ``job`` into ``destination`` (completed by the caller).

    With a ``password`` every member is AES-256 encrypted (WinZip AE-2). When
    ``destination`` is an :class:`ArchiveOutput` that can copy, the staged bytes of an
    archive without a password are copied by the store; otherwise they are read and
    written here. ``index.html`` is written from the manifest's facts, the
    ``previews`` staging gathered (by connector and dataset) and ``statement``
    (:mod:`jobs.archive.index`). ``recipient`` names the authority a compelled
    disclosure's archive is addressed to, and its order; ``disclosures`` are those the
    subject may be told of, listed among the recipients (:mod:`jobs.disclosures`); the
    manifest has either key only when given. ``held``: staged objects the caller read
    whole, by key, whose data is taken from there (neither copied nor read again).
    Returns the manifest's file list.
    """
    out = destination
    copying = (
        destination
        if isinstance(destination, ArchiveOutput) and destination.can_copy and password is None
        else None
    )
    zip_writer = ZipWriter(generated_at, force_zip64=force_zip64)
    members = _Members(zip_writer, out, password)
    data_files = [_file_entry(item.part) for item in staged]
    page = index.render(
        job=job,
        generated_at=generated_at,
        expires_at=expires_at,
        connectors=connectors,
        files=data_files,
        previews=previews,
        statement=statement,
        disclosures=disclosures,
    )
    index_entry = {
        "path": INDEX,
        "connector": None,
        "dataset": None,
        "category": None,
        "format": "html",
        "records": None,
        "bytes": len(page),
        "sha256": hashlib.sha256(page).hexdigest(),
    }
    files = [index_entry, *data_files]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "job": {"id": job.id, "kind": job.kind.value, "created_at": iso(job.created_at)},
        "subject": {"id": job.subject},
        "generated_at": iso(generated_at),
        "expires_at": iso(expires_at),
        "signing_key_id": signer.key_id,
        "scope": job.export_options.scope.model_dump(mode="json", exclude_none=True),
        "identity": job.identity.statement(),
        "connectors": list(connectors),
        "files": files,
    }
    if recipient is not None:
        manifest["recipient"] = dict(recipient)
    if disclosures:
        manifest["disclosures"] = [dict(entry) for entry in disclosures]
    manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
    await members.small(INDEX, page)
    await members.small(MANIFEST, manifest_bytes)
    await members.small(SIGNATURE, signer.sign(manifest_bytes))
    for item in staged:
        part = item.part
        await members.begin(part.path, part.crc32, part.bytes, part.compressed_size)
        whole = (held or {}).get(item.staged_key)
        if copying is not None and whole is None:
            ranges = _merged_ranges(part.chunks)
            # The header above declares compressed_size: the ranges S3 copies must make it.
            if sum(length for _, length in ranges) != part.compressed_size:
                raise StorageError(
                    f"staged object {item.staged_key!r} has chunks of {part.path!r} that do "
                    f"not add up to its {part.compressed_size} bytes",
                    transient=False,
                )
            for start, length in ranges:
                await copying.copy(item.staged_key, start, length)
            continue
        copied = 0
        for start, length in _merged_ranges(part.chunks):
            chunks = (
                _slice(whole, start, length)
                if whole is not None
                else storage.read(item.staged_key, start, length)
            )
            async for chunk in chunks:
                copied += len(chunk)
                await members.data(chunk)
        await members.end()
        if copied != part.compressed_size:
            # The object ends before the data it was staged with: cut short.
            raise ObjectShort(
                f"staged object {item.staged_key!r} gave {copied} bytes of {part.path!r}, "
                f"expected {part.compressed_size}",
                item.staged_key,
            )
    await out.write(zip_writer.central_directory())
    return files
