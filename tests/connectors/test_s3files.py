"""The ``s3files`` connector against moto's S3 server over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import boto3
import pytest

from connectors import (
    Connector,
    File,
    PermanentError,
    RetentionRule,
    Subject,
    TransientError,
    s3files,
)
from connectors.registry import ConnectorConfig, build_connectors
from connectors.s3files import S3FilesConnector
from connectors.testing import ConnectorContract
from tests.conftest import free_port
from tests.connectors.journaled import journal_events
from tests.connectors.processor_servers import FakeS3Listing, ListingPage, serve

ALICE = Subject("alice")
BIG = bytes(range(256)) * 12_289  # a little over 3 MiB, not a multiple of any chunk size
ALICE_FILES = {
    "uploads/alice/avatar.png": (b"\x89PNG\r\n\x1a\n...", "image/png"),
    "uploads/alice/docs/contract.pdf": (b"%PDF-1.7 ...", "application/pdf"),
    "uploads/alice/recordings/day-1.bin": (BIG, "application/octet-stream"),
}
OTHER_FILES = {
    "uploads/alice-smith/cv.pdf": (b"%PDF alice-smith", "application/pdf"),
    "uploads/bob/photo.jpg": (b"\xff\xd8\xff bob", "image/jpeg"),
    "uploads/alice.txt": (b"not under alice/", "text/plain"),
}
FILES_KEPT = {"files": RetentionRule("litigation hold", timedelta(days=365))}


def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint)


def seed(endpoint: str, bucket: str) -> None:
    client = s3(endpoint)
    for key, (body, media_type) in {**ALICE_FILES, **OTHER_FILES}.items():
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=media_type)
    client.put_object(Bucket=bucket, Key="uploads/alice/empty-folder/", Body=b"")


def keys(endpoint: str, bucket: str) -> set[str]:
    pages = s3(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {entry["Key"] for page in pages for entry in page.get("Contents", [])}


def tags(endpoint: str, bucket: str, key: str) -> dict[str, str]:
    tag_set = s3(endpoint).get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return {tag["Key"]: tag["Value"] for tag in tag_set}


def connector(endpoint: str, bucket: str, **options: Any) -> S3FilesConnector:
    return S3FilesConnector(
        "uploads", bucket=bucket, prefix="uploads/{subject}/", endpoint_url=endpoint, **options
    )


async def files_of(connector: Connector, subject: Subject) -> dict[str, tuple[bytes, str]]:
    found = {}
    async for item in connector.export(subject):
        assert isinstance(item, File)
        assert not isinstance(item.content, bytes)
        found[item.path] = (b"".join([chunk async for chunk in item.content]), item.media_type)
    return found


class TestS3FilesConnector(ConnectorContract):
    """Files deleted on erasure."""

    @pytest.fixture(autouse=True)
    def _bucket(self, s3_endpoint: str, bucket: str) -> None:
        self.endpoint = s3_endpoint
        self.bucket = bucket
        seed(s3_endpoint, bucket)

    async def make_connector(self) -> Connector:
        return connector(self.endpoint, self.bucket, chunk_size=256 * 1024)

    def subject_with_data(self) -> Subject:
        return ALICE

    def subject_without_data(self) -> Subject:
        return Subject("carol")

    async def make_failing_connector(self) -> Connector | None:
        return connector(self.endpoint, f"missing-{uuid.uuid4().hex[:12]}")


class TestS3FilesConnectorUnderRetention(TestS3FilesConnector):
    """Files kept and blocked on erasure; the processor unreachable."""

    def retention(self) -> Mapping[str, RetentionRule]:
        return FILES_KEPT

    async def make_failing_connector(self) -> Connector | None:
        return connector(f"http://127.0.0.1:{free_port()}", self.bucket)


@pytest.fixture
def seeded(s3_endpoint: str, bucket: str) -> tuple[str, str]:
    seed(s3_endpoint, bucket)
    return s3_endpoint, bucket


async def test_export_streams_each_file_in_chunks_under_the_subjects_prefix_only(
    seeded: tuple[str, str],
) -> None:
    files = connector(*seeded, chunk_size=64 * 1024)
    chunk_sizes: list[int] = []
    found = {}
    async for item in files.export(ALICE):
        assert isinstance(item, File) and not isinstance(item.content, bytes)
        chunks = [chunk async for chunk in item.content]
        if item.path == "recordings/day-1.bin":
            chunk_sizes = [len(chunk) for chunk in chunks]
        found[item.path] = (b"".join(chunks), item.media_type, item.dataset)
    await files.close()
    assert found == {
        key.removeprefix("uploads/alice/"): (body, media_type, "files")
        for key, (body, media_type) in ALICE_FILES.items()
    }
    assert len(chunk_sizes) == -(-len(BIG) // (64 * 1024))
    assert max(chunk_sizes) == 64 * 1024


async def test_erasure_deletes_the_subjects_files_and_counts_them(
    seeded: tuple[str, str],
) -> None:
    endpoint, bucket = seeded
    files = connector(endpoint, bucket)
    everything = keys(endpoint, bucket)
    dry = await files.erase(ALICE, dry_run=True, retention={})
    assert dry.dataset("files").deleted == 3
    assert keys(endpoint, bucket) == everything
    report = await files.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("files").deleted == 3
    assert keys(endpoint, bucket) == set(OTHER_FILES)  # the empty "folder" went too
    again = await files.erase(ALICE, dry_run=False, retention={})
    assert again.datasets == ()
    await files.close()


async def test_erasure_pages_through_many_files(
    s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3files, "_LIST_PAGE", 2)
    monkeypatch.setattr(s3files, "_DELETE_BATCH", 3)
    client = s3(s3_endpoint)
    for n in range(7):
        client.put_object(Bucket=bucket, Key=f"uploads/alice/{n}.txt", Body=str(n).encode())
    files = connector(s3_endpoint, bucket)
    assert sorted(await files_of(files, ALICE)) == [f"{n}.txt" for n in range(7)]
    report = await files.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("files").deleted == 7
    assert keys(s3_endpoint, bucket) == set()
    await files.close()


async def test_each_delete_batch_is_journaled_and_marked_committed(
    s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3files, "_DELETE_BATCH", 3)
    client = s3(s3_endpoint)
    for n in range(7):
        client.put_object(Bucket=bucket, Key=f"uploads/alice/{n}.txt", Body=str(n).encode())
    files = connector(s3_endpoint, bucket)
    with journal_events() as events:
        report = await files.erase(ALICE, dry_run=False, retention={})
    await files.close()
    assert events == ["plan files=3", "commit", "plan files=3", "commit", "plan files=1", "commit"]
    assert report.dataset("files").deleted == 7


async def test_retained_and_restricted_files_are_tagged_keeping_their_tags(
    s3_endpoint: str, bucket: str
) -> None:
    client = s3(s3_endpoint)
    client.put_object(Bucket=bucket, Key="uploads/alice/a.txt", Body=b"a", Tagging="project=apollo")
    client.put_object(Bucket=bucket, Key="uploads/bob/b.txt", Body=b"b")
    files = connector(s3_endpoint, bucket)
    dry = await files.restrict(ALICE, dry_run=True)
    assert dry.supported and dry.restricted == {"files": 1}
    assert tags(s3_endpoint, bucket, "uploads/alice/a.txt") == {"project": "apollo"}
    report = await files.erase(ALICE, dry_run=False, retention=FILES_KEPT)
    entry = report.dataset("files")
    assert (entry.deleted, entry.retained, entry.legal_basis) == (0, 1, "litigation hold")
    assert tags(s3_endpoint, bucket, "uploads/alice/a.txt") == {
        "project": "apollo",
        "handover-restricted": "true",
    }
    await files.restrict(Subject("bob"), dry_run=False)
    assert tags(s3_endpoint, bucket, "uploads/bob/b.txt") == {"handover-restricted": "true"}
    await files.close()


async def test_keys_that_climb_out_of_the_prefix_become_safe_paths(
    s3_endpoint: str, bucket: str
) -> None:
    client = s3(s3_endpoint)
    client.put_object(Bucket=bucket, Key="uploads/alice/../../etc/passwd", Body=b"x")
    client.put_object(Bucket=bucket, Key="uploads/alice/a//./b.txt", Body=b"y")
    files = connector(s3_endpoint, bucket)
    assert sorted(await files_of(files, ALICE)) == ["__/__/etc/passwd", "a/b.txt"]
    await files.close()


async def test_check_classifies_a_missing_bucket_and_an_unreachable_endpoint(
    s3_endpoint: str,
) -> None:
    missing = connector(s3_endpoint, "no-such-bucket-here")
    with pytest.raises(PermanentError, match="does not exist"):
        await missing.check()
    unreachable = connector(f"http://127.0.0.1:{free_port()}", "any")
    with pytest.raises(TransientError, match="unreachable"):
        await unreachable.check()
    await asyncio.gather(missing.close(), unreachable.close())


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("uploads/", "must contain {subject} once"),
        ("uploads/{subject}/{subject}/", "must contain {subject} once"),
        ("uploads/{user}/", "must contain {subject} once"),
        ("uploads/{subject!r}/", "must contain {subject} once"),
        ("uploads/{subject}", "must be followed by '/'"),
        ("uploads/{subject}-files/", "must be followed by '/'"),
        ("/uploads/{subject}/", "must not start with '/'"),
        ("uploads/{subject/", "expected '}'"),
    ],
)
def test_a_prefix_that_could_mix_subjects_is_refused(prefix: str, problem: str) -> None:
    with pytest.raises(PermanentError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        S3FilesConnector("uploads", bucket="b", prefix=prefix)


@pytest.mark.parametrize("subject_id", ["", "alice/../bob", "..", "."])
async def test_a_subject_id_that_is_no_path_segment_is_refused(subject_id: str) -> None:
    files = S3FilesConnector("uploads", bucket="b", prefix="u/{subject}/")
    with pytest.raises(PermanentError, match="cannot name an S3 prefix"):
        await files.erase(Subject(subject_id), dry_run=True, retention={})


def test_it_registers_like_any_connector_with_its_category(s3_endpoint: str) -> None:
    built = build_connectors(
        [
            ConnectorConfig(
                "uploads",
                "s3files",
                {
                    "bucket": "b",
                    "prefix": "users/{subject}/files/",
                    "endpoint_url": s3_endpoint,
                    "category": "contact",
                },
            )
        ]
    )
    uploads = built["uploads"]
    assert isinstance(uploads, S3FilesConnector)
    assert uploads.describe()["datasets"] == [
        {
            "name": "files",
            "category": "contact",
            "description": "files the subject uploaded or that were stored for them",
        }
    ]
    assert uploads.subject_prefix(ALICE) == "users/alice/files/"


# -- a hostile store -----------------------------------------------------------------


@asynccontextmanager
async def listing(
    pages: Callable[[str | None], ListingPage], **options: Any
) -> AsyncIterator[tuple[FakeS3Listing, S3FilesConnector]]:
    """A local S3 whose ListObjectsV2 answers ``pages``, and a connector on its bucket."""
    fake = FakeS3Listing(pages)
    async with serve(fake) as url:
        files = connector(url, FakeS3Listing.BUCKET, **options)
        try:
            yield fake, files
        finally:
            await files.close()


def endless(token: str | None) -> ListingPage:
    """A listing that never ends: two new keys and a new token each time."""
    n = int(token or "0")
    return ListingPage([f"uploads/alice/{n}.a", f"uploads/alice/{n}.b"], str(n + 1))


async def test_a_listing_whose_token_comes_round_again_is_refused() -> None:
    def circle(token: str | None) -> ListingPage:
        return ListingPage([f"uploads/alice/{token}.bin"], "b" if token == "a" else "a")

    async with listing(circle) as (fake, files), asyncio.timeout(30):
        with pytest.raises(PermanentError) as caught:
            await files.erase(ALICE, dry_run=True, retention={})
    assert str(caught.value) == (
        f"connector 'uploads': S3 bucket {FakeS3Listing.BUCKET!r}, list objects: the store "
        "gives a continuation token already followed: its listing goes round in a circle"
    )
    assert len(fake.seen("/uploads")) == 3


async def test_a_listing_that_never_ends_stops_at_max_objects() -> None:
    async with listing(endless, max_objects=50) as (fake, files), asyncio.timeout(30):
        with pytest.raises(PermanentError, match="more than 50 objects under the subject's"):
            await files.restrict(ALICE, dry_run=True)
        with pytest.raises(PermanentError, match=r"more than 50 objects .*\(max_objects\)"):
            [item async for item in files.export(ALICE)]
    listings = [seen for seen in fake.requests if seen.method == "GET"]
    assert len(listings) == 2 * 26  # 25 pages of 2 keys, and the page that passed 50
    with pytest.raises(PermanentError, match="max_objects must be a whole number above 0"):
        connector("http://127.0.0.1:9", "b", max_objects=0)


async def test_erasure_deletes_each_listing_page_before_reading_the_next() -> None:
    def three_pages(token: str | None) -> ListingPage:
        n = int(token or "0")
        return ListingPage(
            [f"uploads/alice/{n}.a", f"uploads/alice/{n}/"], str(n + 1) if n < 2 else None
        )

    async with listing(three_pages) as (fake, files):
        report = await files.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("files").deleted == 3  # the "folder" markers go too, uncounted
    assert [seen.method for seen in fake.requests if seen.method != "HEAD"] == ["GET", "POST"] * 3
    assert fake.deleted == [
        key for n in range(3) for key in (f"uploads/alice/{n}.a", f"uploads/alice/{n}/")
    ]


async def test_messages_name_the_operation_never_the_key() -> None:
    """The subject's id is in every key and prefix: only the detail may show them."""
    subject = Subject("alice-7f3a9c")
    unreachable = connector(f"http://127.0.0.1:{free_port()}", "any")
    with pytest.raises(TransientError) as listed:
        await unreachable.erase(subject, dry_run=True, retention={})
    await unreachable.close()
    assert str(listed.value) == (
        "connector 'uploads': S3 bucket 'any', list objects: unreachable (EndpointConnectionError)"
    )
    assert listed.value.detail is not None and "alice-7f3a9c" in listed.value.detail
    with pytest.raises(PermanentError) as refused:
        unreachable.subject_prefix(Subject("alice/../bob"))
    assert "alice" not in str(refused.value)
