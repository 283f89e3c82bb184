"""The ``s3files`` connector: the subject's files under a prefix of an S3 bucket.

Configured with a bucket and a prefix template naming where each subject's files
live::

    [connectors.uploads]
    type = "s3files"
    bucket = "platform-uploads"
    prefix = "uploads/{subject}/"
    endpoint_url = "http://127.0.0.1:9000"   # MinIO, moto; leave out for AWS
    category = "usage"

Every object under the subject's prefix is one file of the ``files`` dataset: an
export streams each body in chunks, an erasure deletes them. A retained ``files``
dataset is kept and blocked instead, as a restriction blocks it: the objects get
the tag ``handover-restricted=true``. Credentials come from the usual AWS chain
(environment, shared config, instance role). boto3 is synchronous, so every call
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from connectors.base import Connector
from connectors.errors import ConnectorError, PermanentError, TransientError
from connectors.items import Dataset, File, Item, Subject
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DATASET = "files"
RESTRICTED_TAG = "handover-restricted"
_LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)
_T = TypeVar("_T")


def _check_prefix_template(template: str) -> str:
    """``template`` names the subject once, followed by ``/``: one subject, one prefix."""
    parts = list(string.Formatter().parse(template))
    fields = [
        (field, spec, conversion) for _, field, spec, conversion in parts if field is not None
    ]
    if fields != [("subject", "", None)]:
        raise ValueError(f"prefix {template!r} must contain {{subject}} once and no other field")
    index = next(i for i, part in enumerate(parts) if part[1] == "subject")
    after = parts[index + 1][0] if index + 1 < len(parts) else ""
    if template.startswith("/"):
        raise ValueError(f"prefix {template!r} must not start with '/'")
    if not after.startswith("/"):
        # Without the slash, subject "al" would reach subject "alice"'s files.
        raise ValueError(f"prefix {template!r}: {{subject}} must be followed by '/'")
    return template


def _archive_path(relative_key: str) -> str:
    """A key below the subject's prefix as a safe relative path (S3 keys may hold ``..``)."""
    segments = [
        "__" if segment == ".." else segment
        for segment in relative_key.split("/")
        if segment not in {"", "."}
    ]
    return "/".join(segments) or "_"


class S3FilesConnector(Connector):
    """The subject's files under ``prefix`` (a template with ``{subject}``) in ``bucket``.

    ``category`` is the GDPR category of the files (default ``usage``);
    ``endpoint_url`` points at MinIO, moto or another S3-compatible store;
    ``chunk_size`` is how many bytes of a body are read at a time.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"usage"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(DATASET, "usage", "files the subject uploaded or that were stored for them"),
    )

    def __init__(
        self,
        name: str,
        *,
        bucket: str,
        prefix: str,
        category: str = "usage",
        endpoint_url: str | None = None,
        region: str | None = None,
        chunk_size: int = 1 << 20,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        if not bucket:
            raise PermanentError(f"connector {name!r}: bucket must not be empty")
        if chunk_size < 1:
            raise PermanentError(f"connector {name!r}: chunk_size must be at least 1")
        try:
            self.prefix = _check_prefix_template(prefix)
        except ValueError as exc:
            raise PermanentError(f"connector {name!r}: {exc}") from None
        self.bucket = bucket
        self.chunk_size = chunk_size
        self.categories = frozenset({category})  # type: ignore[misc]
        self.datasets = (  # type: ignore[misc]
            Dataset(DATASET, category, "files the subject uploaded or that were stored for them"),
        )
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard"}),
        )

    def subject_prefix(self, subject: Subject) -> str:
        """Where ``subject``'s files live in the bucket."""
        if not subject.id or "/" in subject.id or subject.id in {".", ".."}:
            raise PermanentError(
                f"connector {self.name!r}: subject id {subject.id!r} cannot name an S3 prefix"
            )
        return self.prefix.format(subject=subject.id)

    async def close(self) -> None:
        """Close the S3 client's connections."""
        await asyncio.to_thread(self.client.close)

    async def check(self) -> None:
        """Raise unless the bucket exists and answers."""
        await self._call(f"bucket {self.bucket!r}", self.client.head_bucket, Bucket=self.bucket)

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield every object under the subject's prefix as a :class:`File`, streamed."""
        prefix = self.subject_prefix(subject)
        async for key in self._keys(prefix):
            try:
                head = await self._call(key, self.client.head_object, Bucket=self.bucket, Key=key)
            except _Gone:
                continue  # deleted since it was listed: no longer held
            yield File(
                _archive_path(key[len(prefix) :]),
                self._body(key),
                media_type=head.get("ContentType") or "application/octet-stream",
                dataset=DATASET,
            )

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Delete the subject's objects, or tag them restricted when ``files`` is retained.

        Empty "folder" markers under the prefix go too; only files are counted.
        """
        everything = [
            key async for key in self._keys(self.subject_prefix(subject), with_markers=True)
        ]
        files = [key for key in everything if not key.endswith("/")]
        if not everything:
            return ErasureReport()
        rule = retention.get(DATASET)
        if rule is not None:
            if not dry_run:
                await self._tag_restricted(files)
            entry = DatasetErasure(
                DATASET,
                retained=len(files),
                legal_basis=rule.legal_basis,
                retained_until=datetime.now(UTC) + rule.duration,
            )
            return ErasureReport((entry,))
        if not dry_run:
            for start in range(0, len(everything), _DELETE_BATCH):
                await self._delete(everything[start : start + _DELETE_BATCH])
        return ErasureReport((DatasetErasure(DATASET, deleted=len(files)),))

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Tag the subject's objects ``handover-restricted=true``."""
        keys = [key async for key in self._keys(self.subject_prefix(subject))]
        if not dry_run:
            await self._tag_restricted(keys)
        return RestrictionReport(supported=True, restricted={DATASET: len(keys)})

    async def _keys(self, prefix: str, *, with_markers: bool = False) -> AsyncIterator[str]:
        """The keys under ``prefix``; empty "folder" markers (``…/``) only ``with_markers``."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self._call(
                prefix,
                self.client.list_objects_v2,
                Bucket=self.bucket,
                Prefix=prefix,
                MaxKeys=_LIST_PAGE,
                **extra,
            )
            for entry in page.get("Contents", []):
                if with_markers or not entry["Key"].endswith("/"):
                    yield entry["Key"]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def _body(self, key: str) -> AsyncIterator[bytes]:
        """The object's body in chunks of ``chunk_size``, fetched when first read."""
        response = await self._call(key, self.client.get_object, Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while chunk := await self._call(key, body.read, self.chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(body.close)

    async def _delete(self, keys: list[str]) -> None:
        response = await self._call(
            keys[0],
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            message = (
                f"S3 refused to delete {len(errors)} object(s) in {self.bucket!r}, "
                f"e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
            )
            if first.get("Code") in _TRANSIENT_CODES:
                raise TransientError(message)
            raise PermanentError(message)

    async def _tag_restricted(self, keys: list[str]) -> None:
        for key in keys:
            try:
                current = await self._call(
                    key, self.client.get_object_tagging, Bucket=self.bucket, Key=key
                )
            except _Gone:
                continue
            tags = [t for t in current.get("TagSet", []) if t["Key"] != RESTRICTED_TAG]
            tags.append({"Key": RESTRICTED_TAG, "Value": "true"})
            await self._call(
                key,
                self.client.put_object_tagging,
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": tags},
            )

    async def _call(self, what: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one boto3 call in a thread; its errors become connector errors."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._classify(exc, what) from exc

    def _classify(self, exc: ClientError | BotoCoreError, what: str) -> ConnectorError:
        where = f"connector {self.name!r}: S3 bucket {self.bucket!r}, {what}"
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return TransientError(f"{where}: unreachable: {exc}")
        if not isinstance(exc, ClientError):
            return PermanentError(f"{where}: {exc}")
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"{where}: {code or status}: {error.get('Message') or exc}"
        if code == "NoSuchBucket" or (status == 404 and exc.operation_name == "HeadBucket"):
            return PermanentError(f"{where}: the bucket does not exist")
        if code == "NoSuchKey" or status == 404:
            return _Gone(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(message)
        return PermanentError(message)


class _Gone(TransientError):
    """The object vanished between two calls (erased meanwhile); a retry lists afresh."""
