"""The archive writer, through the export pipeline and a real worker.

On S3 the archive is assembled by S3 itself: the staged objects' bytes are copied
server-side (``UploadPartCopy``), only headers, small files and 5 MiB per copied range
pass through the worker, and the job records S3's full-object CRC-32 instead of a
SHA-256 nobody computed. A password- or age-protected archive, and any archive in the
local store, is written byte by byte and records both. Every archive is a valid ZIP
(``zipfile``, ``unzip -t``, 7-Zip when installed), ZIP64 too, that ``handover verify``
accepts.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyrage
import pytest
from arq.connections import ArqRedis

from connectors.base import Connector
from connectors.testing import MemoryConnector
from jobs.archive.verify import verify_archive
from jobs.archive.writer import CHECKSUM_APART, ArchiveOutput, write_archive
from jobs.commands import Actor, Commands
from jobs.model import Job, JobStatus
from jobs.resources import Resources
from jobs.storage import local
from jobs.storage.local import LocalWriter
from jobs.storage.s3 import MIN_PART, S3Store
from tests.jobs.test_export import drain
from tests.jobs.test_storage import watch_traffic

MiB = 2**20
PHOTO = random.Random(16).randbytes(12 * MiB)  # random: its deflate is as large as itself
NOTES = b"remember the milk\n"


def connectors() -> dict[str, Connector]:
    return {
        "uploads": MemoryConnector(
            "uploads",
            records={"alice": {"profile": [{"name": "Alice"}]}},
            files={"alice": {"photo.bin": PHOTO, "notes.txt": NOTES}},
        ),
        "crm": MemoryConnector(
            "crm", records={"alice": {"contacts": [{"email": "alice@example.com"}]}}
        ),
    }


async def exported(resources: Resources, redis: ArqRedis, **options: Any) -> tuple[Job, Path]:
    """Export alice's data through a worker; the job and its archive, saved to a file."""
    job = await Commands(resources).request_export(
        Actor("alice", staff=False), subject="alice", **options
    )
    await drain(redis, resources)
    done = await resources.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    assert done.result is not None
    path = resources.settings.data_dir / f"{job.id}.zip"
    path.write_bytes(await resources.storage.get(done.result.key))
    assert path.stat().st_size == done.result.size
    return done, path


def assert_valid_zip(path: Path) -> None:
    """Every reader at hand accepts the archive and finds alice's data in it."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.read("uploads/files/photo.bin") == PHOTO
        assert archive.read("uploads/files/notes.txt") == NOTES
        assert orjson.loads(archive.read("crm/contacts.json")) == [{"email": "alice@example.com"}]
    unzip = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, check=False)
    assert unzip.returncode == 0, unzip.stdout + unzip.stderr
    assert "No errors detected" in unzip.stdout
    seven_zip = shutil.which("7z") or shutil.which("7zz") or shutil.which("7za")
    if seven_zip is not None:
        tested = subprocess.run([seven_zip, "t", str(path)], capture_output=True, text=True)
        assert tested.returncode == 0, tested.stdout + tested.stderr


def checksum(path: Path) -> str:
    return f"{zlib.crc32(path.read_bytes()):08x}"


@pytest.mark.parametrize("zip64", [False, True])
async def test_an_s3_archive_is_assembled_by_s3_from_the_staged_objects(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    zip64: bool,
) -> None:
    if zip64:  # the ZIP64 records a member or archive over 4 GiB gets, on a small one

        async def zip64_archive(**arguments: Any) -> Any:
            return await write_archive(**arguments, force_zip64=True)

        monkeypatch.setattr("jobs.export.write_archive", zip64_archive)
    async with resources_factory(connectors()) as resources:
        assert isinstance(resources.storage, S3Store)
        traffic = watch_traffic(resources.storage.client, monkeypatch)

        done, path = await exported(resources, redis)

        assert done.result is not None
        assert len(traffic.copied) == 1, "the photo's deflated bytes, but their first 5 MiB"
        assert sum(length for _, length in traffic.copied) > len(PHOTO) - MIN_PART
        sent = traffic.sent_to[done.result.key]
        assert sent < MIN_PART + 64 * 1024, "headers, small files and the first 5 MiB only"
        assert done.result.sha256 is None, "no SHA-256 of the whole archive was computed"
        assert done.result.crc32 == checksum(path)
        assert_valid_zip(path)
        with zipfile.ZipFile(path) as archive:
            assert (archive.getinfo("uploads/files/photo.bin").extra != b"") is zip64
        verified = verify_archive(path, [resources.signer.public_key])
        assert verified.ok, verified.problems
        assert verified.crc32 == done.result.crc32


async def test_a_local_archive_is_assembled_by_the_kernel_from_the_staged_files(
    resources_factory: Callable[..., Any], redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[int] = []
    copy_file_range = os.copy_file_range

    def counted(source: int, target: int, count: int, *args: Any) -> int:
        copied = copy_file_range(source, target, count, *args)
        copies.append(copied)
        return copied

    monkeypatch.setattr(os, "copy_file_range", counted)
    async with resources_factory(connectors(), s3_bucket=None) as resources:
        done, path = await exported(resources, redis)

    assert done.result is not None
    assert sum(copies) > len(PHOTO), "the photo's deflated bytes, copied file to file"
    assert done.result.sha256 is None, "no SHA-256 of the whole archive was computed"
    assert done.result.crc32 == checksum(path)
    assert_valid_zip(path)
    verified = verify_archive(path, [resources.signer.public_key])
    assert verified.ok, verified.problems
    assert verified.crc32 == done.result.crc32


@pytest.mark.parametrize("store", ["s3", "local"])
async def test_a_password_archive_is_written_byte_by_byte(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
) -> None:
    overrides = {"s3_bucket": None} if store == "local" else {}
    copies: list[int] = []
    monkeypatch.setattr(os, "copy_file_range", lambda *args: copies.append(1))
    async with resources_factory(connectors(), **overrides) as resources:
        if isinstance(resources.storage, S3Store):
            traffic = watch_traffic(resources.storage.client, monkeypatch)

        done, path = await exported(resources, redis, password="correct horse battery staple")

        assert done.result is not None
        assert done.result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert done.result.crc32 == checksum(path)
        assert copies == [], "encrypted here: nothing to copy"
        if store == "s3":
            assert traffic.copied == [], "encrypted here: nothing to copy"


async def test_an_age_archive_is_written_byte_by_byte(
    resources_factory: Callable[..., Any], redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = pyrage.x25519.Identity.generate()
    async with resources_factory(connectors()) as resources:
        assert isinstance(resources.storage, S3Store)
        traffic = watch_traffic(resources.storage.client, monkeypatch)

        done, path = await exported(resources, redis, age_recipient=str(identity.to_public()))

        assert done.result is not None
        assert traffic.copied == []
        assert done.result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert done.result.crc32 == checksum(path)
        plain = path.with_suffix(".plain.zip")
        plain.write_bytes(pyrage.decrypt(path.read_bytes(), [identity]))
        assert_valid_zip(plain)


async def test_the_local_archive_is_checksummed_while_it_is_written(
    resources_factory: Callable[..., Any], redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each large write's SHA-256 is taken on a thread while the store writes those very
    bytes, not on the loop before it; the job records the checksums of the bytes stored."""
    written: list[bytes] = []
    seen = threading.Condition()
    alongside: list[bool] = []
    write = LocalWriter.write

    async def writing(self: LocalWriter, data: bytes) -> None:
        with seen:
            written.append(data)
            seen.notify_all()
        await write(self, data)

    class Gated:
        """SHA-256 whose large updates wait (5 s at most) for the store to take their bytes."""

        def __init__(self) -> None:
            self._sha = hashlib.sha256()

        def update(self, data: bytes) -> None:
            if len(data) >= CHECKSUM_APART:
                with seen:
                    taken = seen.wait_for(lambda: any(w is data for w in written), timeout=5)
                alongside.append(taken)
            self._sha.update(data)

        def hexdigest(self) -> str:
            return self._sha.hexdigest()

    start = ArchiveOutput.__init__

    def gated(self: ArchiveOutput, *args: Any, **kwargs: Any) -> None:
        start(self, *args, **kwargs)
        self._sha256 = Gated()  # type: ignore[assignment]

    monkeypatch.setattr(LocalWriter, "write", writing)
    monkeypatch.setattr(ArchiveOutput, "__init__", gated)
    async with resources_factory(connectors(), s3_bucket=None) as resources:
        # Encrypted here, so written byte by byte (a plain one is copied by the kernel).
        done, path = await exported(resources, redis, password="correct horse battery staple")

    assert alongside and all(alongside), alongside  # the photo's encrypted 12 MiB, in pieces
    assert done.result is not None
    assert done.result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert done.result.crc32 == checksum(path)


async def test_the_local_store_flushes_to_disk_while_it_writes(
    resources_factory: Callable[..., Any], redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staged object and the archive begin going to disk while they are written
    (every ``WRITEBACK`` bytes), so completing them waits for little; nothing changes
    in what is stored."""
    flushed: list[int] = []  # the file's size at each flush begun
    datasync = local._datasync

    def flushing(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)
        datasync(fd)

    monkeypatch.setattr(local, "_datasync", flushing)
    monkeypatch.setattr(local, "WRITEBACK", MiB)
    async with resources_factory(connectors(), s3_bucket=None) as resources:
        done, path = await exported(resources, redis)

    # The photo's 12 MiB, deflated to as much, in the staged object and in the archive.
    assert len(flushed) >= 2 and min(flushed) >= MiB, flushed
    assert done.result is not None
    assert done.result.crc32 == checksum(path)
    assert_valid_zip(path)
