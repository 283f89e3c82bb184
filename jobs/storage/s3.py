"""S3 object storage through boto3 (AWS, MinIO, moto), run in worker threads.

Writes stream through :class:`S3MultipartWriter`: S3 multipart with a bounded number
of parts in flight, aborted on failure, so nothing is ever held whole in memory.
boto3's errors leave as :class:`~jobs.storage.base.StorageError`, classified transient
or permanent in :func:`_error` (or :class:`~jobs.storage.base.ObjectMissing` for a key
that holds nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    InvalidRegionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from jobs.storage.base import (
    READ_CHUNK,
    ObjectMissing,
    ObjectWriter,
    StorageError,
    StoredObject,
    content_type_of,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


#: S3 error codes that may pass on their own (throttling, timeouts, an upload S3 forgot).
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "NoSuchUpload",
    }
)
#: botocore's errors that say the client is misconfigured: asking again cannot help.
MISCONFIGURED = (
    NoCredentialsError,
    PartialCredentialsError,
    NoRegionError,
    ParamValidationError,
    InvalidRegionError,
)


def _error(exc: Exception, key: str) -> StorageError:
    """boto3's error as Handover's, transient or permanent, classified here once.

    Transient: a 5xx, a 408 or 429, a throttling or timeout code, a connection
    refused or timed out. Permanent: a missing bucket, a denied access, bad
    credentials, any other 4xx, a client misconfigured. ``answered``: S3 sent an error
    response (not when it could not be reached, or the request not sent).
    """
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return ObjectMissing(f"no object at {key!r}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        transient = status >= 500 or status in {408, 429} or code in TRANSIENT_CODES
        return StorageError(f"S3 {code or 'error'} on {key!r}: {exc}", transient=transient)
    if isinstance(exc, MISCONFIGURED):
        return StorageError(
            f"S3 request for {key!r} cannot be sent: {exc}", transient=False, answered=False
        )
    return StorageError(f"S3 unreachable on {key!r}: {exc}", answered=False)


class S3MultipartWriter:
    """Buffers one part at a time; up to ``max_in_flight`` parts upload meanwhile.

    Pieces are kept as written and joined once when they reach the part size (parts
    may differ in size; only the last may be under S3's 5 MiB), so each byte is
    copied once on its way out.
    """

    def __init__(
        self,
        store: S3Store,
        key: str,
        content_type: str,
        *,
        max_in_flight: int = 2,
    ) -> None:
        self._store = store
        self._key = key
        self._content_type = content_type
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._size = 0

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._store.part_size:
            await self._start_part(self._take())

    def _take(self) -> bytes:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return body

    async def _start_part(self, body: bytes) -> None:
        client = self._store.client
        if self._upload_id is None:
            try:
                response = await asyncio.to_thread(
                    client.create_multipart_upload,
                    Bucket=self._store.bucket,
                    Key=self._key,
                    ContentType=self._content_type,
                    **self._store.put_extra,
                )
            except (ClientError, BotoCoreError) as exc:
                raise _error(exc, self._key) from exc
            self._upload_id = response["UploadId"]
        await self._slots.acquire()
        self._raise_failed()
        number = len(self._parts) + 1
        entry: dict[str, Any] = {"PartNumber": number}
        self._parts.append(entry)
        task = asyncio.create_task(self._upload_part(number, body, entry))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _upload_part(self, number: int, body: bytes, entry: dict[str, Any]) -> None:
        try:
            response = await asyncio.to_thread(
                self._store.client.upload_part,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id or "",
                PartNumber=number,
                Body=body,
            )
            entry["ETag"] = response["ETag"]
        except (ClientError, BotoCoreError) as exc:
            entry["error"] = _error(exc, self._key)
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        for entry in self._parts:
            if "error" in entry:
                raise entry["error"]

    async def complete(self) -> int:
        try:
            if self._upload_id is None:
                await self._store.put(self._key, self._take(), self._content_type)
                return self._size
            if self._pending or not self._parts:
                await self._start_part(self._take())
            await asyncio.gather(*self._in_flight)
            self._raise_failed()
            await asyncio.to_thread(
                self._store.client.complete_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in self._parts
                    ]
                },
            )
        except (ClientError, BotoCoreError) as exc:
            await self.abort()
            raise _error(exc, self._key) from exc
        except BaseException:
            await self.abort()
            raise
        return self._size

    async def abort(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._take()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        # If this fails too, the bucket's AbortIncompleteMultipartUpload rule is the backstop.
        with contextlib.suppress(ClientError, BotoCoreError):
            await asyncio.to_thread(
                self._store.client.abort_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=upload_id,
            )


class S3Store:
    """An S3 bucket (or a prefix of one) through boto3, run in worker threads."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        part_size: int = 8 << 20,
        server_side_encryption: str | None = None,
        max_attempts: int = 5,
    ) -> None:
        """``max_attempts`` is botocore's, per call, before a transient error is raised."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"max_attempts": max_attempts, "mode": "adaptive"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=20,
        )
        session = boto3.session.Session()
        self.client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._presigner: S3Client = (
            session.client("s3", endpoint_url=public_endpoint_url, config=config)
            if public_endpoint_url
            else self.client
        )
        self.bucket = bucket
        self.part_size = part_size
        self.put_extra: dict[str, Any] = (
            {"ServerSideEncryption": server_side_encryption} if server_side_encryption else {}
        )

    def writer(self, key: str, content_type: str = "application/octet-stream") -> ObjectWriter:
        return S3MultipartWriter(self, key, content_type)

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            params["Range"] = f"bytes={start}-{end}"
        try:
            response = await asyncio.to_thread(self.client.get_object, **params)
            body = response["Body"]
            while True:
                chunk = await asyncio.to_thread(body.read, READ_CHUNK)
                if not chunk:
                    break
                yield chunk
            body.close()
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        try:
            await asyncio.to_thread(
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                **self.put_extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(key)])

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = _error(exc, key)
            if isinstance(error, ObjectMissing):
                return False
            raise error from exc
        return True

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise StorageError("refusing to delete an empty prefix (the whole bucket)")
        deleted = 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = await asyncio.to_thread(
                lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
            )
            for page in pages:
                keys: list[Any] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    await asyncio.to_thread(
                        self.client.delete_objects,
                        Bucket=self.bucket,
                        Delete={"Objects": keys, "Quiet": True},
                    )
                    deleted += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, prefix) from exc
        return deleted

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                page = await asyncio.to_thread(self.client.list_objects_v2, **params)
            except (ClientError, BotoCoreError) as exc:
                raise _error(exc, prefix) from exc
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], item["Size"], item["LastModified"])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def download_url(self, key: str, *, ttl: timedelta, filename: str) -> str:
        return await asyncio.to_thread(
            self._presigner.generate_presigned_url,
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": content_type_of(filename),
            },
            ExpiresIn=max(1, math.floor(ttl.total_seconds())),
        )

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = _error(exc, self.bucket)
            if isinstance(error, ObjectMissing):  # HEAD has no body: a 404 names no code
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist", transient=False
                ) from exc
            raise error from exc

    async def ensure_lifecycle(self, prefix: str, archive_ttl: timedelta) -> None:
        """Merge Handover's lifecycle rules into the bucket's, keeping the operator's own.

        The rules are a backstop behind the cleanup job: archives expire a day after
        their TTL, staging data after two days, unfinished multipart uploads after one.
        """
        days = math.ceil(archive_ttl.total_seconds() / 86400) + 1
        ours = [
            {
                "ID": f"handover-archives-{prefix or 'root'}",
                "Filter": {"Prefix": f"{prefix}archives/"},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            },
            {
                "ID": f"handover-staging-{prefix or 'root'}",
                "Filter": {"Prefix": f"{prefix}staging/"},
                "Status": "Enabled",
                "Expiration": {"Days": 2},
            },
            {
                "ID": f"handover-multipart-{prefix or 'root'}",
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
        ]
        ids = {rule["ID"] for rule in ours}
        try:
            current = await asyncio.to_thread(
                self.client.get_bucket_lifecycle_configuration, Bucket=self.bucket
            )
            kept = [rule for rule in current.get("Rules", []) if rule.get("ID") not in ids]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise _error(exc, self.bucket) from exc
            kept = []
        try:
            await asyncio.to_thread(
                self.client.put_bucket_lifecycle_configuration,
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": [*kept, *ours]},  # type: ignore[list-item]
            )
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, self.bucket) from exc

    async def close(self) -> None:
        self.client.close()
        if self._presigner is not self.client:
            self._presigner.close()
