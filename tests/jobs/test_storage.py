"""Object stores: S3Store against moto's server over HTTP, and the embedded LocalStore."""

from __future__ import annotations

import asyncio
import errno
import hmac
import itertools
import os
import random
import threading
import tracemalloc
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import boto3
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

from jobs.storage import local, s3
from jobs.storage.base import READ_CHUNK, ObjectMissing, ObjectShort, ObjectStore, StorageError
from jobs.storage.local import LINK_PATH, LocalStore
from jobs.storage.s3 import MIN_PART, S3Store
from tests.conftest import free_port
from tests.polling import eventually

MiB = 2**20
BIG = 12 * MiB


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def uneven_pieces(data: bytes) -> list[bytes]:
    """``data`` cut at irregular points, from one byte to a few MiB."""
    sizes = random.Random(1).choices([1, 17, 4095, 65_537, MiB + 3, 3 * MiB - 1], k=len(data))
    pieces, position = [], 0
    for size in sizes:
        if position >= len(data):
            break
        pieces.append(data[position : position + size])
        position += size
    return pieces


async def read_all(
    store: ObjectStore, key: str, start: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, length)])


async def write_object(store: ObjectStore, key: str, data: bytes) -> int:
    writer = store.writer(key, "application/zip")
    for piece in uneven_pieces(data):
        await writer.write(piece)
    return await writer.complete()


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", link_secret=b"k" * 32, base_url="http://127.0.0.1:9")


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each store in turn, for the behaviour both must share."""
    name = "s3_store" if request.param == "s3" else "local_store"
    store: ObjectStore = request.getfixturevalue(name)
    return store


@pytest.fixture
def calls(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the S3 store's upload calls by operation."""
    counts: dict[str, int] = {}
    for operation in ("put_object", "create_multipart_upload", "upload_part"):
        original = getattr(s3_store.client, operation)

        def counted(
            *args: Any, _original: Any = original, _name: str = operation, **kw: Any
        ) -> Any:
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kw)

        monkeypatch.setattr(s3_store.client, operation, counted)
    return counts


async def test_streamed_object_reads_back_whole(store: ObjectStore) -> None:
    data = payload(BIG)

    assert await write_object(store, "archives/big.zip", data) == len(data)

    assert await store.get("archives/big.zip") == data
    assert await store.exists("archives/big.zip")


async def test_s3_writer_uses_multipart_for_a_big_object(
    s3_store: S3Store, s3_client: Any, bucket: str, calls: dict[str, int]
) -> None:
    await write_object(s3_store, "archives/big.zip", payload(BIG))

    assert calls == {"create_multipart_upload": 1, "upload_part": 3}
    head = s3_client.head_object(Bucket=bucket, Key="archives/big.zip")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == BIG
    assert head["ContentType"] == "application/zip"


async def test_s3_writer_of_whole_parts_sends_no_empty_part(
    s3_store: S3Store, s3_client: Any, bucket: str, calls: dict[str, int]
) -> None:
    data = payload(2 * s3_store.part_size)

    assert await write_object(s3_store, "exact.bin", data) == len(data)

    assert calls == {"create_multipart_upload": 1, "upload_part": 2}
    assert s3_client.head_object(Bucket=bucket, Key="exact.bin")["ETag"].strip('"').endswith("-2")
    assert await s3_store.get("exact.bin") == data


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1])
async def test_s3_writer_puts_a_small_object_in_one_call(
    s3_store: S3Store, s3_client: Any, bucket: str, calls: dict[str, int], size: int
) -> None:
    data = payload(size)

    assert await write_object(s3_store, "small.json", data) == size

    assert calls == {"put_object": 1}
    assert "-" not in s3_client.head_object(Bucket=bucket, Key="small.json")["ETag"]
    assert await s3_store.get("small.json") == data


async def test_s3_abort_leaves_no_object_nor_upload(
    s3_store: S3Store, s3_client: Any, bucket: str, calls: dict[str, int]
) -> None:
    writer = s3_store.writer("archives/aborted.zip")
    await writer.write(payload(6 * MiB))
    assert calls["create_multipart_upload"] == 1
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "an upload started"

    await writer.abort()

    assert not await s3_store.exists("archives/aborted.zip")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_s3_failed_upload_aborts_itself(
    s3_store: S3Store, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = s3_store.client.upload_part
    done = 0

    def second_part_fails(**kwargs: Any) -> Any:
        nonlocal done
        done += 1
        if done == 2:
            kwargs["UploadId"] = "no-such-upload"
        return original(**kwargs)

    monkeypatch.setattr(s3_store.client, "upload_part", second_part_fails)
    writer = s3_store.writer("archives/broken.zip")
    await writer.write(payload(6 * MiB))  # part 1
    await writer.write(payload(5 * MiB))  # part 2, which fails

    with pytest.raises(StorageError):
        await writer.complete()

    assert not await s3_store.exists("archives/broken.zip")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_abort_leaves_nothing(store: ObjectStore) -> None:
    await store.put("kept.txt", b"unrelated")
    writer = store.writer("archives/aborted.zip")
    await writer.write(payload(6 * MiB))

    await writer.abort()

    assert not await store.exists("archives/aborted.zip")
    with pytest.raises(ObjectMissing):
        await store.get("archives/aborted.zip")
    assert await store.get("kept.txt") == b"unrelated"


async def test_local_abort_and_complete_leave_no_partial_file(local_store: LocalStore) -> None:
    aborted = local_store.writer("archives/a.zip")
    await aborted.write(b"half")
    await aborted.abort()
    completed = local_store.writer("archives/b.zip")
    await completed.write(b"whole")
    await completed.complete()

    assert [p.name for p in (local_store.root / "archives").iterdir()] == ["b.zip"]


async def test_local_flush_failing_fails_the_write_and_leaves_no_file(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush to disk begun while writing that fails (EIO) is the write's failure: told at
    the next write or at completion, never an object said written that the disk refused."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(local, "_datasync", failing)
    monkeypatch.setattr(local, "WRITEBACK", 1024)
    writer = local_store.writer("archives/refused.zip")

    async def write_whole() -> None:
        for _ in range(3):
            await writer.write(b"x" * 1024)
        await writer.complete()

    with pytest.raises(StorageError, match="cannot write 'archives/refused.zip'") as failed:
        await write_whole()

    assert failed.value.transient
    assert not await local_store.exists("archives/refused.zip")
    assert list(local_store.root.rglob("*.partial")) == []


async def test_local_abort_canceled_during_a_flush_leaves_no_file_and_closes_it_after(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort canceled while a flush to disk runs (a job canceled as its export fails)
    still removes the partial file, and closes it only once the flush's thread lets go."""
    flushing = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def slow(fd: int) -> None:
        seen.append(fd)
        flushing.set()
        release.wait(10)
        os.fstat(fd)  # the file is still open under the flush: raises EBADF otherwise

    monkeypatch.setattr(local, "_datasync", slow)
    monkeypatch.setattr(local, "WRITEBACK", 1024)
    writer = local_store.writer("archives/aborted.zip")
    await writer.write(b"x" * 1024)  # starts the flush
    await eventually(flushing.is_set, timeout=5, what="the flush to start")
    partial = list(local_store.root.rglob("*.partial"))
    assert len(partial) == 1

    aborting = asyncio.create_task(writer.abort())
    await asyncio.sleep(0)  # the abort waits for the flush
    aborting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await aborting

    assert not partial[0].exists()
    os.fstat(seen[0])  # not closed while the flush's thread holds it
    release.set()
    await eventually(
        lambda: _closed(seen[0], partial[0]),
        timeout=5,
        what="the file closed once the flush ended",
    )


def _closed(fd: int, path: Path) -> bool:
    """Whether descriptor ``fd`` no longer names ``path`` (closed, or its number reused)."""
    try:
        return path.name not in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True


async def test_local_assembler_has_the_kernel_copy_ranges_between_writes(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = payload(5 * MiB)
    await local_store.put("staging/job/crm.bin", source)
    copies: list[tuple[int, int]] = []  # (count asked, source offset)
    copy_file_range = os.copy_file_range

    def counted(src: int, dst: int, count: int, offset_src: int, *rest: Any) -> int:
        copies.append((count, offset_src))
        return copy_file_range(src, dst, count, offset_src, *rest)

    monkeypatch.setattr(os, "copy_file_range", counted)
    monkeypatch.setattr(local, "WRITEBACK", 2 * MiB)  # a range goes in pieces of as much
    assembler = local_store.assembler("archives/job.zip")

    await assembler.write(b"H" * 100)
    await assembler.copy("staging/job/crm.bin", 1000, 4 * MiB + 7)
    await assembler.write(b"middle")
    await assembler.copy("staging/job/crm.bin", 0, 10)
    await assembler.write(b"the central directory")
    size = await assembler.complete()

    expected = b"H" * 100 + source[1000 : 1000 + 4 * MiB + 7] + b"middle" + source[:10]
    expected += b"the central directory"
    assert size == len(expected)
    assert await local_store.get("archives/job.zip") == expected
    assert copies[:3] == [(2 * MiB, 1000), (2 * MiB, 1000 + 2 * MiB), (7, 1000 + 4 * MiB)]
    assert assembler.copied == 4 * MiB + 17
    assert assembler.crc32 == crc32_of(expected)
    assert list(local_store.root.rglob("*.partial")) == []


@pytest.mark.parametrize("refusal", ["EXDEV", "copies nothing"])
async def test_local_assembler_reads_and_writes_where_the_kernel_cannot_copy(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    source = payload(3 * MiB)
    await local_store.put("staging/job/crm.bin", source)

    def across(*_: Any) -> int:
        if refusal == "EXDEV":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return 0  # as some file systems answer, with bytes still to copy

    monkeypatch.setattr(os, "copy_file_range", across)
    assembler = local_store.assembler("archives/job.zip")
    await assembler.write(b"head")
    await assembler.copy("staging/job/crm.bin", 5, 3 * MiB - 5)
    await assembler.complete()

    assert await local_store.get("archives/job.zip") == b"head" + source[5:]
    assert assembler.crc32 == crc32_of(b"head" + source[5:])
    assert assembler.copied == 0, "every byte read and written here"


@pytest.mark.parametrize(
    ("key", "failure", "message"),
    [
        ("staging/job/crm.bin", ObjectShort, "holds 1,048,576 bytes, not the 1,048,586"),
        ("staging/job/gone.bin", ObjectMissing, "no object at 'staging/job/gone.bin'"),
    ],
)
async def test_local_assembler_refuses_a_range_it_cannot_copy_whole_and_leaves_nothing(
    local_store: LocalStore, key: str, failure: type[StorageError], message: str
) -> None:
    await local_store.put("staging/job/crm.bin", payload(MiB))
    assembler = local_store.assembler("archives/job.zip")
    await assembler.write(b"head")

    with pytest.raises(failure, match=message) as refused:
        await assembler.copy(key, 10, MiB)

    assert not refused.value.transient
    assert not await local_store.exists("archives/job.zip")
    assert list(local_store.root.rglob("*.partial")) == []


@pytest.mark.parametrize("abort_canceled", [False, True], ids=["abort waits", "abort canceled"])
async def test_local_assembler_aborted_while_copying_closes_the_file_after_the_copy(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch, abort_canceled: bool
) -> None:
    """A copy canceled mid-way (its job canceled) leaves its thread copying; the abort
    that follows removes the partial file and closes it only once that thread lets go,
    also when the abort itself is canceled while it waits."""
    await local_store.put("staging/job/crm.bin", payload(MiB))
    copying = threading.Event()
    release = threading.Event()
    still_open: list[bool] = []
    copy_file_range = os.copy_file_range

    def slow(src: int, dst: int, *rest: Any) -> int:
        copying.set()
        release.wait(10)
        try:
            os.fstat(dst)
        except OSError:  # EBADF: closed under the copy
            still_open.append(False)
            raise
        still_open.append(True)
        return copy_file_range(src, dst, *rest)

    monkeypatch.setattr(os, "copy_file_range", slow)
    assembler = local_store.assembler("archives/job.zip")
    copy = asyncio.create_task(assembler.copy("staging/job/crm.bin", 0, MiB))
    await eventually(copying.is_set, timeout=5, what="the copy to start")
    copy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copy
    partial = list(local_store.root.rglob("*.partial"))
    assert len(partial) == 1
    aborting = asyncio.create_task(assembler.abort())
    await asyncio.sleep(0)  # an abort that did not wait would close the file now
    if abort_canceled:
        aborting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await aborting
        assert not partial[0].exists()

    release.set()
    if not abort_canceled:
        await aborting
    await eventually(lambda: still_open, timeout=5, what="the copy's thread to go on")
    assert still_open == [True]
    assert not await local_store.exists("archives/job.zip")
    assert list(local_store.root.rglob("*.partial")) == []


async def test_local_object_is_invisible_until_complete(local_store: LocalStore) -> None:
    writer = local_store.writer("archives/pending.zip")
    await writer.write(b"not yet")

    assert not await local_store.exists("archives/pending.zip")
    await writer.complete()
    assert await local_store.get("archives/pending.zip") == b"not yet"


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 10), (5, 100), (READ_CHUNK - 3, 7), (0, None), (1234, None), (3 * MiB - 1, 2 * MiB + 5)],
)
async def test_range_reads(store: ObjectStore, start: int, length: int | None) -> None:
    data = payload(4 * MiB)
    await store.put("staging/job/crm", data)

    end = None if length is None else start + length
    assert await read_all(store, "staging/job/crm", start, length) == data[start:end]


async def test_reads_come_in_bounded_chunks(store: ObjectStore) -> None:
    await store.put("big.bin", payload(3 * MiB + 5))

    chunks = [chunk async for chunk in store.read("big.bin")]

    assert len(chunks) >= 4
    assert max(len(chunk) for chunk in chunks) <= READ_CHUNK


async def test_missing_object(store: ObjectStore) -> None:
    assert not await store.exists("nothing/here")
    with pytest.raises(ObjectMissing, match="nothing/here"):
        await store.get("nothing/here")
    await store.delete("nothing/here")


async def test_delete(store: ObjectStore) -> None:
    await store.put("a/1", b"one")
    await store.put("a/2", b"two")

    await store.delete("a/1")

    assert not await store.exists("a/1")
    assert await store.exists("a/2")


async def test_delete_prefix(store: ObjectStore) -> None:
    for key in ("staging/job1/crm", "staging/job1/billing", "staging/job1/x/y", "staging/job10/a"):
        await store.put(key, key.encode())

    assert await store.delete_prefix("staging/job1/") == 3

    for key in ("staging/job1/crm", "staging/job1/billing", "staging/job1/x/y"):
        assert not await store.exists(key)
    assert await store.get("staging/job10/a") == b"staging/job10/a"
    assert await store.delete_prefix("staging/job1/") == 0


async def test_delete_prefix_holding_deletes_the_keys_named(store: ObjectStore) -> None:
    for key in ("staging/job1/1/crm.bin", "staging/job1/1/billing.bin", "staging/job10/a"):
        await store.put(key, key.encode())
    named = ["staging/job1/1/crm.bin", "staging/job1/1/billing.bin"]

    assert await store.delete_prefix("staging/job1/", holding=named) == 2

    assert [item.key async for item in store.list_objects("staging/job1/")] == []
    assert await store.get("staging/job10/a") == b"staging/job10/a"


async def test_s3_delete_prefix_holding_lists_nothing_and_deletes_nothing_else(
    s3_store: S3Store,
) -> None:
    for key in ("staging/job1/1/crm.bin", "staging/job1/stray", "staging/job2/crm.bin"):
        await s3_store.put(key, b"x")
    sent: Counter[str] = Counter()  # every request the client sends, paginators' too

    def note(model: Any, **_: Any) -> None:
        sent[model.name] += 1

    s3_store.client.meta.events.register("before-call.s3", note)

    assert await s3_store.delete_prefix("staging/job1/", holding=["staging/job1/1/crm.bin"]) == 1
    with pytest.raises(StorageError, match="staging/job2/crm.bin"):
        await s3_store.delete_prefix("staging/job1/", holding=["staging/job2/crm.bin"])

    assert sent == {"DeleteObjects": 1}
    assert not await s3_store.exists("staging/job1/1/crm.bin")
    assert await s3_store.exists("staging/job1/stray")  # not named: the lifecycle rule's
    assert await s3_store.exists("staging/job2/crm.bin")


async def test_s3_deletions_asked_together_go_in_one_request_each_answered_for_its_keys(
    s3_store: S3Store,
) -> None:
    jobs = [f"staging/job{n}/" for n in range(12)]
    for prefix in jobs:
        await s3_store.put(f"{prefix}1/crm.bin", b"x")
        await s3_store.put(f"{prefix}1/billing.bin", b"x")
    sent: Counter[str] = Counter()

    def note(model: Any, params: dict[str, Any], **_: Any) -> None:
        sent[model.name] += 1
        sent["keys"] += params["body"].count(b"<Key>")

    s3_store.client.meta.events.register("before-call.s3", note)
    holding = {prefix: [f"{prefix}1/crm.bin", f"{prefix}1/billing.bin"] for prefix in jobs}
    counts = await asyncio.gather(
        *(s3_store.delete_prefix(prefix, holding=holding[prefix]) for prefix in jobs)
    )
    assert counts == [2] * len(jobs)
    assert sent == {"DeleteObjects": 1, "keys": 2 * len(jobs)}
    assert [item.key async for item in s3_store.list_objects("staging/")] == []


async def test_reading_from_an_objects_end_gives_nothing(store: ObjectStore) -> None:
    await store.put("staging/job/crm.bin", b"data")

    assert [chunk async for chunk in store.read("staging/job/crm.bin", 4)] == []
    assert b"".join([chunk async for chunk in store.read("staging/job/crm.bin", 2)]) == b"ta"


async def test_empty_prefix_is_refused(store: ObjectStore) -> None:
    await store.put("keep", b"me")

    with pytest.raises(StorageError, match="empty prefix"):
        await store.delete_prefix("")

    assert await store.exists("keep")


async def test_s3_download_url_serves_an_attachment(s3_store: S3Store) -> None:
    data = payload(70_000)
    await s3_store.put("archives/job.zip", data)

    url = await s3_store.download_url(
        "archives/job.zip", ttl=timedelta(minutes=5), filename="handover-export-01H.zip"
    )

    query = parse_qs(urlsplit(url).query)
    assert query["response-content-disposition"] == [
        'attachment; filename="handover-export-01H.zip"'
    ]
    assert query["X-Amz-Expires"] == ["300"]
    with await asyncio.to_thread(urllib.request.urlopen, url, timeout=10) as response:
        body = response.read()
        disposition = response.headers["Content-Disposition"]
    assert body == data
    assert disposition.startswith("attachment")


def signature_holds(store: S3Store, method: str, url: str) -> bool:
    """Whether ``url``'s SigV4 query signature signs ``method`` on exactly that URL, as S3
    checks it: recomputed by botocore with the store's credentials and the link's own date.

    moto's server serves a presigned link without checking its signature or its expiry
    (moto 5: only an ``Authorization`` header is ever verified, and only with
    ``INITIAL_NO_AUTH_ACTION_COUNT`` set), so a request to it cannot tell a forged link."""
    parts = urlsplit(url)
    pairs = [pair.partition("=") for pair in parts.query.split("&")]
    given = {key: value for key, _, value in pairs}
    unsigned = "&".join(f"{k}={v}" for k, _, v in pairs if k != "X-Amz-Signature")
    request = AWSRequest(method=method, url=urlunsplit(parts._replace(query=unsigned)))
    request.context["timestamp"] = given["X-Amz-Date"]
    credentials = boto3.session.Session().get_credentials()  # the tests' own, as the store's
    assert credentials is not None
    signer = S3SigV4QueryAuth(
        credentials.get_frozen_credentials(), "s3", store.client.meta.region_name
    )
    wanted = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    return hmac.compare_digest(wanted, given.get("X-Amz-Signature", ""))


async def test_s3_download_url_signs_its_method_key_disposition_and_expiry(
    s3_store: S3Store,
) -> None:
    await s3_store.put("archives/alice.zip", b"alice's data")
    await s3_store.put("archives/bob.zip", b"bob's data")
    url = await s3_store.download_url(
        "archives/alice.zip", ttl=timedelta(minutes=5), filename="handover-export-01H.zip"
    )
    assert signature_holds(s3_store, "GET", url)

    # Used for another method, another object, another disposition, or for longer: refused.
    assert not signature_holds(s3_store, "PUT", url)
    assert not signature_holds(s3_store, "DELETE", url)
    assert not signature_holds(s3_store, "GET", url.replace("/alice.zip?", "/bob.zip?"))
    inline = url.replace(
        "response-content-disposition=attachment", "response-content-disposition=inline"
    )
    assert inline != url and not signature_holds(s3_store, "GET", inline)
    longer = url.replace("X-Amz-Expires=300", "X-Amz-Expires=604800")
    assert longer != url and not signature_holds(s3_store, "GET", longer)
    # The expiry it signs is the TTL asked, counted from when it was made.
    query = parse_qs(urlsplit(url).query)
    made = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(made - datetime.now(UTC)) < timedelta(minutes=1)
    assert query["X-Amz-Expires"] == ["300"]


async def test_s3_check(s3_store: S3Store, s3_endpoint: str) -> None:
    await s3_store.check()

    with pytest.raises(StorageError):
        await S3Store("no-such-bucket-here", endpoint_url=s3_endpoint).check()


async def test_s3_errors_say_whether_trying_again_can_help(
    s3_store: S3Store, s3_endpoint: str
) -> None:
    missing_bucket = S3Store("no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError) as no_bucket:
        await missing_bucket.put("staging/a.bin", b"data")
    assert not no_bucket.value.transient
    assert str(no_bucket.value).startswith("S3 NoSuchBucket on 'staging/a.bin'")
    with pytest.raises(StorageError) as checked:
        await missing_bucket.check()
    assert not isinstance(checked.value, ObjectMissing) and not checked.value.transient
    assert str(checked.value) == "S3 bucket 'no-such-bucket-here' does not exist"

    with pytest.raises(ObjectMissing) as no_key:
        await s3_store.get("staging/never-written.bin")
    assert not no_key.value.transient

    closed = S3Store(
        s3_store.bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1
    )
    with pytest.raises(StorageError) as refused:
        await closed.put("staging/a.bin", b"data")
    assert refused.value.transient
    assert str(refused.value).startswith("S3 unreachable on 'staging/a.bin'")
    for store in (missing_bucket, closed):
        await store.close()


def lifecycle_rules(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert len(by_id) == len(rules), "rule ids are unique"
    return by_id


async def test_ensure_lifecycle_on_a_bare_bucket(
    s3_store: S3Store, s3_client: Any, bucket: str
) -> None:
    await s3_store.ensure_lifecycle("handover/", timedelta(days=7))

    rules = lifecycle_rules(s3_client, bucket)
    assert set(rules) == {
        "handover-archives-handover/",
        "handover-staging-handover/",
        "handover-multipart-handover/",
    }
    assert rules["handover-archives-handover/"]["Expiration"] == {"Days": 8}
    assert rules["handover-staging-handover/"]["Expiration"] == {"Days": 2}
    assert rules["handover-multipart-handover/"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1
    }


async def test_ensure_lifecycle_keeps_the_operators_rule(
    s3_store: S3Store, s3_client: Any, bucket: str
) -> None:
    operator_rule = {
        "ID": "operator-logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [operator_rule]}
    )

    await s3_store.ensure_lifecycle("handover/", timedelta(days=7))
    await s3_store.ensure_lifecycle("handover/", timedelta(days=14))

    rules = lifecycle_rules(s3_client, bucket)
    assert set(rules) == {
        "operator-logs",
        "handover-archives-handover/",
        "handover-staging-handover/",
        "handover-multipart-handover/",
    }
    assert rules["operator-logs"]["Expiration"] == {"Days": 30}
    assert rules["operator-logs"]["Filter"] == {"Prefix": "logs/"}
    assert rules["handover-archives-handover/"]["Expiration"] == {"Days": 15}


@pytest.fixture
def link_params(local_store: LocalStore) -> Callable[..., Any]:
    """The (key, expires, filename, signature) a LocalStore download link carries."""

    async def make(key: str, ttl: timedelta = timedelta(minutes=5)) -> dict[str, str]:
        url = await local_store.download_url(key, ttl=ttl, filename="handover-export.zip")
        parts = urlsplit(url)
        assert url.startswith(f"http://127.0.0.1:9{LINK_PATH}")
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        return {"key": unquote(parts.path[len(LINK_PATH) :]), **query}

    return make


async def test_local_link_checks_out(
    local_store: LocalStore, link_params: Callable[..., Any]
) -> None:
    await local_store.put("archives/export 1.zip", b"zip bytes")
    params = await link_params("archives/export 1.zip")

    path = local_store.check_link(**params)

    assert params["key"] == "archives/export 1.zip"
    assert params["filename"] == "handover-export.zip"
    assert path.read_bytes() == b"zip bytes"


async def test_local_link_with_changed_signature_is_refused(
    local_store: LocalStore, link_params: Callable[..., Any]
) -> None:
    await local_store.put("archives/a.zip", b"a")
    params = await link_params("archives/a.zip")
    params["signature"] = params["signature"][:-1] + (
        "0" if params["signature"][-1] != "0" else "1"
    )

    with pytest.raises(StorageError, match="signature"):
        local_store.check_link(**params)


@pytest.mark.parametrize("field", ["key", "filename", "expires", "nonce"])
async def test_local_link_with_changed_field_is_refused(
    local_store: LocalStore, link_params: Callable[..., Any], field: str
) -> None:
    await local_store.put("archives/a.zip", b"a")
    await local_store.put("archives/b.zip", b"b")
    params = await link_params("archives/a.zip")
    params[field] = {
        "key": "archives/b.zip",
        "filename": "other.zip",
        "expires": str(int(params["expires"]) + 3600),
        "nonce": "another-nonce",
    }[field]

    with pytest.raises(StorageError, match="signature"):
        local_store.check_link(**params)


async def test_local_link_from_another_secret_is_refused(local_store: LocalStore) -> None:
    await local_store.put("archives/a.zip", b"a")
    other = LocalStore(local_store.root, link_secret=b"j" * 32, base_url="http://127.0.0.1:9")
    url = await other.download_url("archives/a.zip", ttl=timedelta(minutes=5), filename="a.zip")
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    with pytest.raises(StorageError, match="signature"):
        local_store.check_link("archives/a.zip", **query)


async def test_expired_local_link_is_refused(
    local_store: LocalStore, link_params: Callable[..., Any]
) -> None:
    await local_store.put("archives/a.zip", b"a")
    params = await link_params("archives/a.zip", ttl=timedelta(seconds=-60))

    with pytest.raises(StorageError, match="expired"):
        local_store.check_link(**params)


async def test_local_link_with_malformed_expiry_is_refused(local_store: LocalStore) -> None:
    with pytest.raises(StorageError, match="malformed"):
        local_store.check_link("archives/a.zip", "soon", "a.zip", "n0nce", "00")


async def test_local_link_to_a_deleted_object_is_missing(
    local_store: LocalStore, link_params: Callable[..., Any]
) -> None:
    await local_store.put("archives/a.zip", b"a")
    params = await link_params("archives/a.zip")
    await local_store.delete("archives/a.zip")

    with pytest.raises(ObjectMissing):
        local_store.check_link(**params)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "", "."])
async def test_local_key_escaping_the_root_is_refused(local_store: LocalStore, key: str) -> None:
    with pytest.raises(StorageError, match="leaves the store"):
        local_store.writer(key)
    with pytest.raises(StorageError, match="leaves the store"):
        await local_store.exists(key)
    with pytest.raises(StorageError, match="leaves the store"):
        await read_all(local_store, key)
    assert not (local_store.root.parent / "x").exists()


# -- S3: parts let go once sent; archives assembled by S3 itself -------------------------


@dataclass
class S3Traffic:
    """What an S3 client asked, and the bytes it sent and received, by the real calls."""

    calls: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    sent_to: Counter[str] = field(default_factory=Counter)
    received: int = 0
    copied: list[tuple[int, int]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)


def watch_traffic(client: Any, monkeypatch: pytest.MonkeyPatch) -> S3Traffic:
    """Count ``client``'s calls (each still made as it was) and their payload bytes."""
    seen = S3Traffic()

    def sent(arguments: dict[str, Any], _: Any) -> None:
        seen.sent += len(arguments["Body"])
        seen.sent_to[arguments["Key"]] += len(arguments["Body"])
        seen.bodies.append(arguments["Body"])

    def received(_: dict[str, Any], response: Any) -> None:
        seen.received += response["ContentLength"]

    def copied(arguments: dict[str, Any], _: Any) -> None:
        first, last = arguments["CopySourceRange"].removeprefix("bytes=").split("-")
        seen.copied.append((int(first), int(last) - int(first) + 1))

    noted: dict[str, Callable[[dict[str, Any], Any], None]] = {
        "put_object": sent,
        "upload_part": sent,
        "get_object": received,
        "upload_part_copy": copied,
    }
    for operation in (
        *noted,
        "create_multipart_upload",
        "complete_multipart_upload",
        "abort_multipart_upload",
        "head_object",
    ):
        original = getattr(client, operation)

        def call(_original: Any = original, _name: str = operation, **arguments: Any) -> Any:
            seen.calls[_name] += 1
            response = _original(**arguments)
            if _name in noted:
                noted[_name](arguments, response)
            return response

        monkeypatch.setattr(client, operation, call)
    return seen


@pytest.fixture
def traffic(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> S3Traffic:
    return watch_traffic(s3_store.client, monkeypatch)


def crc32_of(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


async def test_s3_writer_sends_whole_parts(s3_store: S3Store, traffic: S3Traffic) -> None:
    part = s3_store.part_size
    data = payload(4 * part + part // 2)

    assert await write_object(s3_store, "staging/job/crm.bin", data) == len(data)

    assert [len(body) for body in traffic.bodies] == [part] * 4 + [part // 2]
    assert await s3_store.get("staging/job/crm.bin") == data


async def test_s3_writer_lets_a_part_go_once_s3_has_it(s3_store: S3Store) -> None:
    part = s3_store.part_size
    data = payload(3 * part + part // 2)
    parts = [data[start : start + part] for start in range(0, len(data), part)]
    writer = s3_store.writer("staging/job/crm.bin")
    tracemalloc.start()  # after the data is made: only what the writer holds counts
    try:
        for number, piece in enumerate(parts[:-1], start=1):
            await writer.write(piece)  # fills part `number`: its upload starts
            # Kept for the next part, its buffer would stay: a whole part, for good.
            await eventually(
                lambda: tracemalloc.get_traced_memory()[0],
                until=lambda held: held < part // 2,
                timeout=10,
                what=f"part {number}'s buffer to be let go once sent",
            )
        await writer.write(parts[-1])
        assert await writer.complete() == len(data)
    finally:
        tracemalloc.stop()

    assert await s3_store.get("staging/job/crm.bin") == data


async def test_s3_assembler_has_s3_copy_a_big_range_itself(
    s3_store: S3Store, traffic: S3Traffic
) -> None:
    source = payload(14 * MiB)
    await s3_store.put("staging/job/crm.bin", source)
    header, tail = b"H" * 100, b"the central directory"
    assembler = s3_store.assembler("archives/job.zip", "application/zip")

    await assembler.write(header)
    await assembler.copy("staging/job/crm.bin", 1000, 13 * MiB)
    await assembler.write(tail)
    size = await assembler.complete()

    expected = header + source[1000 : 1000 + 13 * MiB] + tail
    assert size == len(expected)
    top_up = MIN_PART - len(header)  # the first part: the header and the range's first bytes
    assert traffic.copied == [(1000 + top_up, 13 * MiB - top_up)]
    assert assembler.copied == 13 * MiB - top_up
    assert traffic.received == top_up
    assert traffic.sent == len(source) + MIN_PART + len(tail)  # the source's put, then ours
    assert assembler.crc32 == crc32_of(expected)
    assert await s3_store.get("archives/job.zip") == expected


async def test_s3_assembler_copies_a_range_with_nothing_before_it_whole(
    s3_store: S3Store, traffic: S3Traffic
) -> None:
    source = payload(6 * MiB)
    await s3_store.put("staging/job/crm.bin", source)
    assembler = s3_store.assembler("archives/job.zip")

    await assembler.copy("staging/job/crm.bin", 0, len(source))
    await assembler.write(b"end")
    await assembler.complete()

    assert traffic.copied == [(0, len(source))]
    assert traffic.received == 0
    assert assembler.crc32 == crc32_of(source + b"end")
    assert await s3_store.get("archives/job.zip") == source + b"end"


async def test_s3_assembler_reads_through_a_range_too_small_to_stand_as_a_part(
    s3_store: S3Store, traffic: S3Traffic
) -> None:
    source = payload(7 * MiB)
    await s3_store.put("staging/job/crm.bin", source)
    assembler = s3_store.assembler("archives/job.zip")

    await assembler.write(b"header")
    await assembler.copy("staging/job/crm.bin", 5, 7 * MiB - 5)  # 5 MiB short of two parts
    await assembler.complete()

    assert traffic.copied == []
    assert assembler.copied == 0
    assert traffic.received == 7 * MiB - 5
    assert await s3_store.get("archives/job.zip") == b"header" + source[5:]
    assert assembler.crc32 == crc32_of(b"header" + source[5:])


async def test_s3_assembler_copies_a_range_over_a_copy_part_in_pieces(
    s3_store: S3Store, traffic: S3Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "COPY_PART", 6 * MiB)
    source = payload(20 * MiB + 3)
    await s3_store.put("staging/job/crm.bin", source)
    assembler = s3_store.assembler("archives/job.zip")

    await assembler.copy("staging/job/crm.bin", 0, len(source))
    await assembler.complete()

    pieces = sorted(traffic.copied)  # copied in parallel: in any order
    assert len(pieces) == 4
    assert [start for start, _ in pieces] == list(
        itertools.accumulate([0] + [length for _, length in pieces[:-1]])
    )
    assert sum(length for _, length in pieces) == len(source)
    assert min(length for _, length in pieces) >= MIN_PART
    assert await s3_store.get("archives/job.zip") == source


async def test_s3_assembler_small_object_is_one_put_with_its_crc32(
    s3_store: S3Store, traffic: S3Traffic
) -> None:
    assembler = s3_store.assembler("archives/tiny.zip")
    await assembler.write(b"PK\x05\x06" + bytes(18))

    await assembler.complete()

    assert traffic.calls["put_object"] == 1
    assert assembler.crc32 == crc32_of(b"PK\x05\x06" + bytes(18))


async def test_s3_assembler_refuses_a_range_past_its_source_and_leaves_nothing(
    s3_store: S3Store, s3_client: Any, bucket: str
) -> None:
    await s3_store.put("staging/job/crm.bin", payload(6 * MiB))
    assembler = s3_store.assembler("archives/job.zip")
    await assembler.write(payload(6 * MiB))

    with pytest.raises(StorageError, match=r"holds 6,291,456 bytes"):
        await assembler.copy("staging/job/crm.bin", MiB, 6 * MiB)
    await assembler.abort()

    assert not await s3_store.exists("archives/job.zip")
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_s3_assembler_copying_from_a_missing_object_says_which(s3_store: S3Store) -> None:
    assembler = s3_store.assembler("archives/job.zip")

    with pytest.raises(ObjectMissing, match="staging/job/gone.bin"):
        await assembler.copy("staging/job/gone.bin", 0, 10 * MiB)
    await assembler.abort()


def test_s3_parts_from_the_smallest_hold_s3s_largest_object_in_its_part_limit() -> None:
    sizes = [s3.written_part_size(MIN_PART, number) for number in range(1, s3.MAX_PARTS + 1)]

    assert sum(sizes) >= 5 * 2**40, "S3's largest object, 5 TiB, fits in 10,000 parts"
    assert max(sizes) == 5 * 2**30, "no part over S3's largest, 5 GiB"
    assert sum(sizes[: s3.PARTS_PER_SIZE]) > 2 * 2**30, "2 GiB go up in parts of 5 MiB"
    assert set(sizes[: s3.PARTS_PER_SIZE]) == {MIN_PART}


async def test_s3_writer_parts_grow_as_the_object_does(
    s3_store: S3Store, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "PARTS_PER_SIZE", 2)  # double every 2 parts, not 500: MiBs, not GiBs
    part = s3_store.part_size
    data = payload(2 * part + 2 * 2 * part + 3 * part)

    assert await write_object(s3_store, "staging/job/crm.bin", data) == len(data)

    first = s3_client.head_object(Bucket=bucket, Key="staging/job/crm.bin", PartNumber=1)
    sizes = [first["ContentLength"]] + [
        s3_client.head_object(Bucket=bucket, Key="staging/job/crm.bin", PartNumber=number)[
            "ContentLength"
        ]
        for number in range(2, first["PartsCount"] + 1)
    ]
    assert sizes == [part, part, 2 * part, 2 * part, 3 * part], "the last part short of 4"
    assert await s3_store.get("staging/job/crm.bin") == data
