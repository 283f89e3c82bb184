"""The embedded object store: files under the data dir, with HMAC-signed download links.

Same shape as :class:`~jobs.storage.s3.S3Store`, for ``handover serve`` with no bucket
configured. Objects are written to a temporary file and renamed into place on
completion, so a reader never sees half an object. Download links point at the
API itself (``/v1/objects/...``), which serves them only while the link's
signature and expiry check out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlencode

from jobs.storage.base import READ_CHUNK, ObjectMissing, ObjectWriter, StorageError

LINK_PATH = "/v1/objects/"


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


class LocalWriter:
    """Streams into a temporary file beside the target; renamed into place on completion."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
        self._handle: IO[bytes] | None = None
        self._size = 0

    async def write(self, data: bytes) -> None:
        if self._handle is None:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            self._handle = await asyncio.to_thread(self._temporary.open, "wb")
        self._size += len(data)
        await asyncio.to_thread(self._handle.write, data)

    async def complete(self) -> int:
        if self._handle is None:
            await self.write(b"")
        assert self._handle is not None
        self._handle.close()
        os.replace(self._temporary, self._target)
        return self._size

    async def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


class LocalStore:
    """Objects as files under ``root``; links signed with ``link_secret``, served by the API."""

    def __init__(self, root: Path, *, link_secret: bytes, base_url: str) -> None:
        self.root = root.resolve()
        self._secret = link_secret
        self.base_url = base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"key {key!r} leaves the store")
        return path

    def writer(self, key: str, content_type: str = "application/octet-stream") -> ObjectWriter:
        return LocalWriter(self._path(key))

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"no object at {key!r}") from None
        with handle:
            handle.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(handle.read, size)
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
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise StorageError("refusing to delete an empty prefix (the whole store)")
        base = self._path(prefix.rstrip("/"))
        if base.is_dir():
            count = sum(1 for p in base.rglob("*") if p.is_file())
            await asyncio.to_thread(shutil.rmtree, base, True)
            return count
        return 0

    def _signature(self, key: str, expires: int, filename: str) -> str:
        message = f"{key}\n{expires}\n{filename}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def download_url(self, key: str, *, ttl: timedelta, filename: str) -> str:
        expires = int(time.time() + ttl.total_seconds())
        query = urlencode(
            {
                "expires": expires,
                "filename": filename,
                "signature": self._signature(key, expires, filename),
            }
        )
        return f"{self.base_url}{LINK_PATH}{quote(key)}?{query}"

    def check_link(self, key: str, expires: str, filename: str, signature: str) -> Path:
        """The file a download link points at; :class:`StorageError` if forged or expired."""
        try:
            deadline = int(expires)
        except ValueError:
            raise StorageError("malformed link expiry") from None
        expected = self._signature(key, deadline, filename)
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
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc}") from exc

    async def close(self) -> None:
        return None
