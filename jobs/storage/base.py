"""The object store seam: what every store offers, how a streaming write goes, its errors.

:class:`ObjectStore` and :class:`ObjectWriter` are the contract that
:class:`~jobs.storage.s3.S3Store` and :class:`~jobs.storage.local.LocalStore` both
keep; a store reports its failures as :class:`StorageError`, transient or permanent
(:attr:`StorageError.transient`), and a key that holds nothing as :class:`ObjectMissing`.

A store that can also assemble an object from ranges of objects it already holds,
without their bytes passing through Handover (S3's ``UploadPartCopy``, the local
store's ``copy_file_range``), offers :class:`AssemblingStore`; its
:class:`ObjectAssembler` reports the whole object's CRC-32 as the store computed it. A
store that expires what it holds by rules of its own (an S3 bucket's lifecycle) offers
:class:`ExpiringStore`, which a worker sets up at start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

READ_CHUNK = 1 << 20


def content_type_of(filename: str) -> str:
    """The media type a downloaded archive is served as."""
    return "application/zip" if filename.endswith(".zip") else "application/octet-stream"


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it: its key, size and when it was last written (UTC)."""

    key: str
    size: int
    modified: datetime


class StorageError(Exception):
    """The object store failed or could not be reached.

    ``transient`` says whether trying again may help: a timeout, a 5xx, a refused
    connection may pass; a missing bucket, a denied access, a full or read-only disk
    stay until someone fixes them. ``answered`` says whether the storage service
    answered (with an error: no such bucket, access denied, a disk full) or could not
    be reached at all (no connection, a client that cannot send). Stores decide both
    where the foreign error is mapped.
    """

    def __init__(self, message: str, *, transient: bool = True, answered: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
        self.answered = answered

    @property
    def kind(self) -> str:
        """``transient`` or ``permanent``, as error messages say it."""
        return "transient" if self.transient else "permanent"


class ObjectMissing(StorageError):
    """No object at this key (permanent: asking again finds nothing either)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class ObjectShort(StorageError):
    """The object at ``key`` holds fewer bytes than a read of it needs: it was cut short
    (or is not the object written there). Permanent: reading again finds the same bytes."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message, transient=False)
        self.key = key


class ObjectWriter(Protocol):
    """A streaming upload: ``write`` pieces, then ``complete`` (or ``abort``)."""

    async def write(self, data: bytes) -> None:
        """Append ``data`` to the object."""

    async def complete(self) -> int:
        """Make the object visible; returns its size."""

    async def abort(self) -> None:
        """Drop everything written; the key is left as it was."""


class ObjectStore(Protocol):
    """The storage operations Handover needs."""

    def writer(self, key: str, content_type: str = "application/octet-stream") -> ObjectWriter:
        """A streaming writer for ``key``."""

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes (or a range of them), in chunks."""

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store a small object in one call."""

    async def get(self, key: str) -> bytes:
        """A small object's bytes."""

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is already gone."""

    async def delete_prefix(self, prefix: str, *, holding: Sequence[str] | None = None) -> int:
        """Remove every object under ``prefix``; returns how many.

        ``holding``: every key the caller knows the prefix holds, when it knows them all
        (a job's own staged objects): a store may then delete those without listing
        the prefix first (returning how many keys it was given), and deletes nothing
        outside the prefix. A key the store refuses to delete fails the call
        (:class:`StorageError`): no key is counted that was not deleted.
        """

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object whose key starts with ``prefix``, in key order."""

    async def download_url(self, key: str, *, ttl: timedelta, filename: str) -> str:
        """A URL that downloads ``key`` as an attachment for ``ttl``."""

    async def check(self) -> None:
        """Raise :class:`StorageError` when the store is unusable."""

    async def close(self) -> None:
        """Release connections."""


class ObjectAssembler(ObjectWriter, Protocol):
    """A streaming write that can also append ranges of objects the same store holds.

    The store decides how: a range big enough is copied by the store itself, and a
    small one is read and written like any other bytes. Either way the object's bytes
    come out in the order they were written and copied.
    """

    async def copy(self, key: str, start: int, length: int) -> None:
        """Append ``length`` bytes of the object at ``key``, from byte ``start``."""

    @property
    def copied(self) -> int:
        """Bytes the store copied itself, which never passed through this process."""

    @property
    def crc32(self) -> str | None:
        """Once complete: the whole object's CRC-32 (8 hex digits) as the store computed
        it, or ``None`` when the store did not say."""


@runtime_checkable
class AssemblingStore(Protocol):
    """A store that can assemble an object from ranges of the objects it holds."""

    def assembler(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> ObjectAssembler:
        """A writer for ``key`` that can also :meth:`~ObjectAssembler.copy` ranges."""


@runtime_checkable
class ExpiringStore(Protocol):
    """A store that expires objects by rules of its own: a backstop behind the cleanup job."""

    async def ensure_lifecycle(self, prefix: str, archive_ttl: timedelta) -> None:
        """Make the store's rules expire what Handover keeps under ``prefix``: archives
        some time after ``archive_ttl``, staging data and unfinished uploads sooner."""
