"""``HANDOVER_S3_SERVER_SIDE_COPY``: archives on S3 assembled by S3, or written by the worker.

On (the default) S3 copies the staged bytes itself and the job records S3's CRC-32
but no SHA-256. Off, the store is no :class:`~jobs.storage.base.AssemblingStore`: the
worker writes every byte, computes both checksums, and asks S3 for neither
``UploadPartCopy`` nor a checksum, so an S3-compatible store without them serves.
Every export runs through a real worker on moto.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from botocore.exceptions import ClientError

from jobs.archive.verify import verify_archive
from jobs.storage.s3 import S3PlainStore
from tests.jobs.test_storage import lifecycle_rules, watch_traffic
from tests.jobs.test_writer import assert_valid_zip, checksum, connectors, exported

#: The calls of a multipart or whole upload, which may carry checksum arguments.
UPLOADS = ("create_multipart_upload", "upload_part", "complete_multipart_upload", "put_object")


def refuse_copies_and_checksums(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``client`` answer as an S3-compatible store with neither ``UploadPartCopy``
    nor checksums would: 501 NotImplemented."""

    def not_implemented(operation: str) -> ClientError:
        response: dict[str, Any] = {
            "Error": {"Code": "NotImplemented", "Message": "not implemented"},
            "ResponseMetadata": {"HTTPStatusCode": 501},
        }
        return ClientError(response, operation)  # type: ignore[arg-type]  # only what S3 says

    def refuse_copy(**_: Any) -> Any:
        raise not_implemented("UploadPartCopy")

    monkeypatch.setattr(client, "upload_part_copy", refuse_copy)
    for operation in UPLOADS:
        original = getattr(client, operation)

        def upload(_original: Any = original, _name: str = operation, **arguments: Any) -> Any:
            if any(name.startswith("Checksum") for name in arguments):
                raise not_implemented(_name)
            return _original(**arguments)

        monkeypatch.setattr(client, operation, upload)


@pytest.mark.parametrize("server_side_copy", [True, False])
async def test_the_setting_decides_who_writes_an_s3_archive_and_its_checksums(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    server_side_copy: bool,
) -> None:
    async with resources_factory(connectors(), s3_server_side_copy=server_side_copy) as resources:
        assert isinstance(resources.storage, S3PlainStore)
        traffic = watch_traffic(resources.storage.client, monkeypatch)

        done, path = await exported(resources, redis)

        assert done.result is not None
        if server_side_copy:
            assert traffic.copied, "the photo's deflated bytes, copied by S3"
            assert done.result.sha256 is None, "no SHA-256 of the whole archive was computed"
        else:
            assert traffic.copied == []
            assert done.result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert done.result.crc32 == checksum(path)
        assert_valid_zip(path)
        verified = verify_archive(path, [resources.signer.public_key])
        assert verified.ok, verified.problems
        assert verified.crc32 == done.result.crc32


async def test_without_server_side_copy_a_store_lacking_copies_and_checksums_serves(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    bucket: str,
) -> None:
    async with resources_factory(connectors(), s3_server_side_copy=False) as resources:
        assert isinstance(resources.storage, S3PlainStore)
        refuse_copies_and_checksums(resources.storage.client, monkeypatch)

        done, path = await exported(resources, redis)

        assert done.result is not None
        assert done.result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert done.result.crc32 == checksum(path)
        assert verify_archive(path, [resources.signer.public_key]).ok
        rules = lifecycle_rules(resources.storage.client, bucket)
        assert {"handover-archives-handover/", "handover-staging-handover/"} <= set(rules)
