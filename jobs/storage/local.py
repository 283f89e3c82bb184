"""The embedded object store: files under the data dir, with HMAC-signed download links.

Same shape as :class:`~jobs.storage.s3.S3Store`, for ``handover serve`` with no bucket
configured. Objects are written to a temporary file and renamed into place on
completion, so a reader never sees half an object. Download links point at the
API itself (``/v1/objects/...``), which serves them only while the link's
signature and expiry check out. Like S3, it assembles an object from ranges of files
it holds (:class:`LocalAssembler`): the kernel copies them, file to file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from isal import isal_zlib

from jobs.storage.base import (
    READ_CHUNK,
    ObjectMissing,
    ObjectShort,
    ObjectWriter,
    StorageError,
    StoredObject,
)

LINK_PATH = "/v1/objects/"
WRITEBACK = 16 << 20
"""Bytes a writer writes between two flushes to disk begun while it goes on writing."""
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
#: The threads those flushes run on: their own, so that writers flushing to a slow disk
#: never hold the threads every other file read and write of the process waits for.
_FLUSHES = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="flush")

#: What ``copy_file_range`` answers where the kernel or the file system cannot copy
#: between these two files (another file system, an old kernel): the bytes are read and
#: written instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})

#: What a disk answers that stays until someone acts: full, over quota, read-only, forbidden.
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EFBIG,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)


def _error(exc: OSError, action: str, key: str) -> StorageError:
    """The file system's error as Handover's: permanent for a full, read-only or forbidden
    disk, transient otherwise (an I/O error or a busy device may pass)."""
    reason = exc.strerror or str(exc)
    return StorageError(
        f"local store cannot {action} {key!r}: {reason}",
        transient=exc.errno not in PERMANENT_ERRNOS,
    )


def load_link_secret(path: Path) -> bytes:
    """The HMAC key for download links, made once and kept in the data dir."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return bytes.fromhex(secret)


def _private_file(path: Path) -> IO[bytes]:
    """``path`` created for writing, mode 0600."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _sync_and_close(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _sync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter:
    """Streams into a temporary file beside the target; renamed into place on completion.

    Every :data:`WRITEBACK` bytes it starts flushing what it wrote to disk
    (``fdatasync`` on a thread) and goes on writing, so the ``fsync`` that completion
    waits for finds little left to write (a GB export's 265 MB archive: 0.12 s before).
    A failing disk (full, read-only) leaves as :class:`StorageError` and leaves no
    partial file behind.
    """

    def __init__(self, target: Path, key: str | None = None) -> None:
        self._target = target
        self._key = key or target.name
        self._temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
        self._handle: IO[bytes] | None = None
        self._size = 0
        self._unflushed = 0
        self._flushing: asyncio.Future[None] | None = None

    async def write(self, data: bytes) -> None:
        try:
            handle = await self._opened()
            await asyncio.to_thread(self._put, handle, data)
            await self._wrote(len(data))
        except OSError as exc:
            await self.abort()
            raise _error(exc, "write", self._key) from exc

    def _put(self, handle: IO[bytes], data: bytes) -> None:
        """On a thread: write ``data``."""
        handle.write(data)

    async def _opened(self) -> IO[bytes]:
        """The temporary file, created at the first write."""
        if self._handle is None:
            # Subjects' data: readable by Handover's own user only, whatever the umask.
            self._target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._handle = await asyncio.to_thread(_private_file, self._temporary)
        return self._handle

    async def _wrote(self, size: int) -> None:
        """Count ``size`` more bytes in the file; begin a flush to disk every
        :data:`WRITEBACK` bytes."""
        assert self._handle is not None
        self._size += size
        self._unflushed += size
        if self._unflushed >= WRITEBACK and (self._flushing is None or self._flushing.done()):
            await self._flushed()  # done: raises the disk's error, if it gave one
            self._unflushed = 0
            fd = self._handle.fileno()
            self._flushing = asyncio.get_running_loop().run_in_executor(_FLUSHES, _datasync, fd)

    async def _flushed(self) -> None:
        """Once the flush to disk begun last has ended."""
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            await flushing

    async def complete(self) -> int:
        if self._handle is None:
            await self.write(b"")
        assert self._handle is not None
        try:
            await self._flushed()
            # On disk before it is named: a job that says its archive is written must
            # not lose it to a power cut (the embedded store syncs every write too).
            await asyncio.to_thread(_sync_and_close, self._handle)
            os.replace(self._temporary, self._target)
            await asyncio.to_thread(_sync_directory, self._target.parent)
        except OSError as exc:
            await self.abort()
            raise _error(exc, "write", self._key) from exc
        return self._size

    async def abort(self) -> None:
        handle, self._handle = self._handle, None
        busy = self._threads()
        try:
            for running in busy:
                with contextlib.suppress(Exception):
                    await asyncio.shield(running)
        finally:  # canceled meanwhile too: the partial file goes, its file closed
            if handle is not None:
                _close_after(handle, busy)  # never under a thread that still uses it
            with contextlib.suppress(OSError):
                self._temporary.unlink()

    def _threads(self) -> list[asyncio.Future[Any]]:
        """What runs on a thread with the file (a flush to disk), taken for an abort."""
        flushing, self._flushing = self._flushing, None
        return [] if flushing is None else [flushing]


class LocalAssembler(LocalWriter):
    """An :class:`~jobs.storage.base.ObjectAssembler`: written bytes, and ranges of the
    store's files copied by the kernel (``copy_file_range``), file to file: their bytes
    never pass through this process, and no SHA-256 of the whole is taken (the signed
    manifest's per-file SHA-256 vouches for the content, as on S3).

    The whole object's CRC-32 is computed here, as S3 computes it there: of the written
    bytes as they are written, of a copied range as it is copied (read from the page
    cache the copy left it in, then combined, ``crc32_combine``), so that a download can
    still be checked end to end. A range goes :data:`WRITEBACK` bytes at a time, each
    followed by the flush to disk any write of as many bytes begins.
    """

    def __init__(self, store: LocalStore, target: Path, key: str) -> None:
        super().__init__(target, key)
        self._store = store
        self._crc = 0
        self._copied = 0
        #: The copy running on a thread, if any: an abort waits for it to let go of the file.
        self._copying: asyncio.Future[tuple[int, int, int]] | None = None

    @property
    def copied(self) -> int:
        return self._copied

    @property
    def crc32(self) -> str | None:
        return f"{self._crc:08x}"

    def _put(self, handle: IO[bytes], data: bytes) -> None:
        handle.write(data)
        self._crc = isal_zlib.crc32(data, self._crc)  # one write at a time: in order

    async def copy(self, key: str, start: int, length: int) -> None:
        source = self._store._path(key)
        try:
            handle = await self._opened()
            done = 0
            while done < length:
                piece = min(WRITEBACK, length - done)
                self._copying = asyncio.get_running_loop().run_in_executor(
                    None, _copy_range, source, handle, start + done, piece
                )
                copied, by_kernel, crc = await asyncio.shield(self._copying)
                self._copying = None
                self._crc = isal_zlib.crc32_combine(self._crc, crc, copied)
                self._copied += by_kernel
                done += copied
                await self._wrote(copied)
                if copied < piece:
                    raise ObjectShort(
                        f"{key!r} holds {start + done:,} bytes, not the {start + length:,} "
                        f"that copying {length:,} from byte {start:,} needs",
                        key,
                    )
        except FileNotFoundError:
            await self.abort()
            raise ObjectMissing(f"no object at {key!r}") from None
        except OSError as exc:
            await self.abort()
            raise _error(exc, "write", self._key) from exc
        except ObjectShort:
            await self.abort()
            raise

    def _threads(self) -> list[asyncio.Future[Any]]:
        copying, self._copying = self._copying, None  # canceled while copying: still runs
        return super()._threads() + ([] if copying is None else [copying])


def _copy_range(source: Path, handle: IO[bytes], start: int, length: int) -> tuple[int, int, int]:
    """Append up to ``length`` bytes of the file ``source`` from ``start`` to ``handle``;
    how many there were (fewer where the file ends), how many of them the kernel copied
    (the others were read and written here) and their CRC-32."""
    handle.flush()  # what was written before goes first
    target = handle.fileno()
    done = by_kernel = 0
    kernel = True
    with open(source, "rb", buffering=0) as file:
        fd = file.fileno()
        while done < length:
            copied = 0
            if kernel:
                try:
                    copied = os.copy_file_range(fd, target, length - done, start + done)
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                # None copied: the file ends here, or the file system copies nothing
                # (some answer 0 rather than an error): read and write from now on.
                kernel = copied > 0
                by_kernel += copied
            if not copied:
                data = memoryview(os.pread(fd, min(length - done, READ_CHUNK), start + done))
                copied = len(data)
                while data:
                    data = data[os.write(target, data) :]
            if not copied:
                break  # the file ends here
            done += copied
        handle.seek(0, os.SEEK_END)  # the buffered file, told where the copies left it
        crc = 0
        view = memoryview(bytearray(min(done, READ_CHUNK)))
        at = 0
        while at < done:
            read = os.preadv(fd, [view[: done - at]], start + at)
            if not read:
                raise OSError(errno.EIO, "the copied range could not be read back")
            crc = isal_zlib.crc32(view[:read], crc)
            at += read
    return done, by_kernel, crc


def _close_after(handle: IO[bytes], threads: list[asyncio.Future[Any]]) -> None:
    """Close ``handle`` of an aborted write once every one of ``threads`` has let go of it;
    a full disk fails the flush on close too, and the threads' own errors are of no more
    use."""
    for running in threads:
        if not running.done():
            running.add_done_callback(lambda _: _close_after(handle, threads))
            return
    for ended in threads:
        if not ended.cancelled():
            ended.exception()  # retrieved: not logged as never retrieved
    with contextlib.suppress(OSError):
        handle.close()


class LocalStore:
    """Objects as files under ``root``; links signed with ``link_secret``, served by the API."""

    def __init__(self, root: Path, *, link_secret: bytes, base_url: str) -> None:
        self.root = root.resolve()
        self._secret = link_secret
        self.base_url = base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"key {key!r} leaves the store", transient=False)
        return path

    def writer(self, key: str, content_type: str = "application/octet-stream") -> ObjectWriter:
        return LocalWriter(self._path(key), key)

    def assembler(self, key: str, content_type: str = "application/octet-stream") -> LocalAssembler:
        return LocalAssembler(self, self._path(key), key)

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"no object at {key!r}") from None
        except OSError as exc:
            raise _error(exc, "read", key) from exc
        with handle:
            handle.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                try:
                    chunk = await asyncio.to_thread(handle.read, size)
                except OSError as exc:
                    raise _error(exc, "read", key) from exc
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        writer = self.writer(key)
        await writer.write(data)
        await writer.complete()

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(key)])

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, "delete", key) from exc

    async def delete_prefix(self, prefix: str, *, holding: Sequence[str] | None = None) -> int:
        """Remove the folder ``prefix`` names, and all in it (``holding`` needs no listing
        here: removing the folder is one step, and leaves no empty folders behind)."""
        if not prefix:
            raise StorageError(
                "refusing to delete an empty prefix (the whole store)", transient=False
            )
        base = self._path(prefix.rstrip("/"))
        if base.is_dir():
            count = sum(1 for p in base.rglob("*") if p.is_file())
            await asyncio.to_thread(shutil.rmtree, base, True)
            return count
        return 0

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under ``prefix``, and every unfinished write (``….partial``).

        A writer's temporary file is listed under its own name: it is data in the
        store, and the folder it is in is still being written (reconciling judges a
        folder's age by its newest file, :mod:`jobs.reconcile`).
        """
        folder = prefix.rpartition("/")[0]
        directory = self._path(folder) if folder else self.root
        try:
            found = await asyncio.to_thread(self._files_under, directory)
        except OSError as exc:
            raise _error(exc, "list", prefix) from exc
        for key, size, mtime in sorted(found):
            if key.startswith(prefix):
                yield StoredObject(key, size, datetime.fromtimestamp(mtime, UTC))

    def _files_under(self, directory: Path) -> list[tuple[str, int, float]]:
        """Every object file below ``directory``, and every writer's ``.….partial``."""
        if not directory.is_dir():
            return []
        files = []
        for path in directory.rglob("*"):
            if path.name.startswith(".") and not path.name.endswith(".partial"):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted while listed
                if path.is_file():
                    stat = path.stat()
                    key = path.relative_to(self.root).as_posix()
                    files.append((key, stat.st_size, stat.st_mtime))
        return files

    def _signature(self, key: str, expires: int, filename: str, nonce: str) -> str:
        message = f"{key}\n{expires}\n{filename}\n{nonce}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def download_url(self, key: str, *, ttl: timedelta, filename: str) -> str:
        """A signed link; each is unique (a nonce), so each can be used once (the API
        remembers its signature once used)."""
        expires = int(time.time() + ttl.total_seconds())
        nonce = secrets.token_urlsafe(12)
        query = urlencode(
            {
                "expires": expires,
                "filename": filename,
                "nonce": nonce,
                "signature": self._signature(key, expires, filename, nonce),
            }
        )
        return f"{self.base_url}{LINK_PATH}{quote(key)}?{query}"

    def check_link(self, key: str, expires: str, filename: str, nonce: str, signature: str) -> Path:
        """The file a download link points at; :class:`StorageError` if forged or expired."""
        try:
            deadline = int(expires)
        except ValueError:
            raise StorageError("malformed link expiry") from None
        expected = self._signature(key, deadline, filename, nonce)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise StorageError("the link's signature does not match")
        if deadline < time.time():
            raise StorageError("the link has expired")
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(f"no object at {key!r}")
        return path

    async def check(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.root / ".probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"cannot write under {self.root}: {exc}",
                transient=exc.errno not in PERMANENT_ERRNOS,
            ) from exc

    async def close(self) -> None:
        return None
