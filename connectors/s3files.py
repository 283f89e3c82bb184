"""The ``s3files`` connector: the subject's files under a prefix of an S3 bucket.

Configured with a bucket and a prefix template naming where each subject's files
live::

    [connectors.uploads]
    type = "s3files"
    bucket = "platform-uploads"
    prefix = "uploads/{subject}/"
    endpoint_url = "http://127.0.0.1:9000"   # MinIO, moto; leave out for AWS
    category = "usage"
    max_objects = 1000000                    # optional: the most objects one subject may have

Every object under the subject's prefix is one file of the ``files`` dataset: an
export streams each body in chunks, an erasure deletes them. A retained ``files``
dataset is kept and blocked instead, as a restriction blocks it: the objects get
the tag ``handover-restricted=true``. Credentials come from the usual AWS chain
(environment, shared config, instance role). boto3 is synchronous, so every call
runs in a worker thread.

Listings are streamed a page (1,000 keys) at a time, for export, erasure and
restriction alike, so memory stays flat whatever the subject holds; and bounded: a
listing that passes ``max_objects`` objects (each page counting at least one), or
hands back a continuation token it already gave, ends in a
:class:`~connectors.errors.PermanentError` rather than running forever.

Error messages name the connector, the bucket, the operation (``list objects``,
``read object``…), the HTTP status and S3's error code when it is one S3 documents;
never an object key or the prefix, which hold the subject's id. The store's own
message, and the key, go to the error's ``detail`` (admins only).
"""

from __future__ import annotations

import asyncio
import hashlib
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
DEFAULT_MAX_OBJECTS = 1_000_000
# S3's documented error codes: one of these may stand in a message; another
# store's own code goes to the detail with its message.
_S3_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InternalError",
        "InvalidAccessKeyId",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidBucketState",
        "InvalidObjectState",
        "InvalidRequest",
        "InvalidToken",
        "MethodNotAllowed",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchTagSet",
        "NotImplemented",
        "OperationAborted",
        "PermanentRedirect",
        "PreconditionFailed",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "ServiceUnavailable",
        "SignatureDoesNotMatch",
        "SlowDown",
        "TemporaryRedirect",
        "Throttling",
        "ThrottlingException",
    }
)
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
    ``chunk_size`` is how many bytes of a body are read at a time; ``max_objects``
    bounds one subject's listing.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"usage"})
    journals_commits: ClassVar[bool] = True
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
        max_objects: int = DEFAULT_MAX_OBJECTS,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        if not bucket:
            raise PermanentError(f"connector {name!r}: bucket must not be empty")
        if chunk_size < 1:
            raise PermanentError(f"connector {name!r}: chunk_size must be at least 1")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise PermanentError(f"connector {name!r}: max_objects must be a whole number above 0")
        self.max_objects = max_objects
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
                f"connector {self.name!r}: the subject's id cannot name an S3 prefix "
                "(it is empty, '.' or '..', or holds a '/')"
            )
        return self.prefix.format(subject=subject.id)

    async def close(self) -> None:
        """Close the S3 client's connections."""
        await asyncio.to_thread(self.client.close)

    async def check(self) -> None:
        """Raise unless the bucket exists and answers."""
        await self._call("check the bucket", self.client.head_bucket, Bucket=self.bucket)

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield every object under the subject's prefix as a :class:`File`, streamed."""
        prefix = self.subject_prefix(subject)
        async for keys in self._pages(prefix):
            for key in keys:
                if key.endswith("/"):
                    continue  # an empty "folder" marker
                try:
                    head = await self._call(
                        "read object metadata",
                        self.client.head_object,
                        Bucket=self.bucket,
                        Key=key,
                        key=key,
                    )
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

        Empty "folder" markers under the prefix go too; only files are counted. The
        listing is streamed: each page is deleted (or tagged) before the next is read,
        and each batch is journaled (:meth:`before_commit`) before it is deleted, and
        marked committed (:meth:`after_commit`) once S3 answered that it was.
        """
        rule = retention.get(DATASET)
        listed = files = 0
        async for keys in self._pages(self.subject_prefix(subject)):
            listed += len(keys)
            found = [key for key in keys if not key.endswith("/")]
            files += len(found)
            if dry_run:
                continue
            if rule is not None:
                await self._tag_restricted(found)
                continue
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = keys[start : start + _DELETE_BATCH]
                counted = sum(not key.endswith("/") for key in batch)
                # Journaled first: a retry after a crash still counts this batch.
                await self.before_commit(ErasureReport((DatasetErasure(DATASET, deleted=counted),)))
                await self._delete(batch)
                await self.after_commit()
        if not listed:
            return ErasureReport()
        if rule is not None:
            entry = DatasetErasure(
                DATASET,
                retained=files,
                legal_basis=rule.legal_basis,
                retained_until=datetime.now(UTC) + rule.duration,
            )
            return ErasureReport((entry,))
        return ErasureReport((DatasetErasure(DATASET, deleted=files),))

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Tag the subject's objects ``handover-restricted=true``."""
        restricted = 0
        async for keys in self._pages(self.subject_prefix(subject)):
            found = [key for key in keys if not key.endswith("/")]
            restricted += len(found)
            if not dry_run:
                await self._tag_restricted(found)
        return RestrictionReport(supported=True, restricted={DATASET: restricted})

    async def _pages(self, prefix: str) -> AsyncIterator[list[str]]:
        """The keys under ``prefix`` (empty "folder" markers too), one listing page at a time.

        Bounded: past ``max_objects`` objects (a page counts at least one), or at a
        continuation token already given, the listing ends in a PermanentError.
        """
        token: str | None = None
        given: set[bytes] = set()
        counted = 0
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self._call(
                "list objects",
                self.client.list_objects_v2,
                Bucket=self.bucket,
                Prefix=prefix,
                MaxKeys=_LIST_PAGE,
                **extra,
            )
            keys = [entry["Key"] for entry in page.get("Contents", [])]
            counted += max(1, len(keys))
            if counted > self.max_objects:
                raise PermanentError(
                    f"{self._where('list objects')}: more than {self.max_objects} objects "
                    "under the subject's prefix (max_objects): the listing was stopped"
                )
            yield keys
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            digest = hashlib.sha256(token.encode()).digest()
            if digest in given:
                raise PermanentError(
                    f"{self._where('list objects')}: the store gives a continuation token "
                    "already followed: its listing goes round in a circle"
                )
            given.add(digest)

    async def _body(self, key: str) -> AsyncIterator[bytes]:
        """The object's body in chunks of ``chunk_size``, fetched when first read."""
        response = await self._call(
            "read object", self.client.get_object, Bucket=self.bucket, Key=key, key=key
        )
        body = response["Body"]
        try:
            while chunk := await self._call("read object", body.read, self.chunk_size, key=key):
                yield chunk
        finally:
            await asyncio.to_thread(body.close)

    async def _delete(self, keys: list[str]) -> None:
        response = await self._call(
            "delete objects",
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            code = str(first.get("Code", ""))
            message = (
                f"{self._where('delete objects')}: S3 refused to delete {len(errors)} "
                f"object(s){' (' + code + ')' if code in _S3_CODES else ''}"
            )
            detail = f"e.g. {first.get('Key')!r}: {code} {first.get('Message', '')}"
            if code in _TRANSIENT_CODES:
                raise TransientError(message, detail=detail)
            raise PermanentError(message, detail=detail)

    async def _tag_restricted(self, keys: list[str]) -> None:
        for key in keys:
            try:
                current = await self._call(
                    "read object tags",
                    self.client.get_object_tagging,
                    Bucket=self.bucket,
                    Key=key,
                    key=key,
                )
            except _Gone:
                continue
            tags = [t for t in current.get("TagSet", []) if t["Key"] != RESTRICTED_TAG]
            tags.append({"Key": RESTRICTED_TAG, "Value": "true"})
            await self._call(
                "tag object",
                self.client.put_object_tagging,
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": tags},
                key=key,
            )

    async def _call(
        self,
        operation: str,
        function: Callable[..., _T],
        *args: Any,
        key: str | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run one boto3 call in a thread; its errors become connector errors.

        ``operation`` names the call in the message; ``key``, which holds the
        subject's id, only in the detail.
        """
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._classify(exc, operation, key) from exc

    def _where(self, operation: str) -> str:
        return f"connector {self.name!r}: S3 bucket {self.bucket!r}, {operation}"

    def _classify(
        self, exc: ClientError | BotoCoreError, operation: str, key: str | None
    ) -> ConnectorError:
        where = self._where(operation)
        on = "" if key is None else f"key {key!r}: "
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return TransientError(f"{where}: unreachable ({type(exc).__name__})", detail=str(exc))
        if not isinstance(exc, ClientError):
            return PermanentError(f"{where}: {type(exc).__name__}", detail=on + str(exc))
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"{where}: HTTP {status}" + (f" {code}" if code in _S3_CODES else "")
        detail = f"{on}{code}: {error.get('Message') or exc}"
        if code == "NoSuchBucket" or (status == 404 and exc.operation_name == "HeadBucket"):
            return PermanentError(f"{where}: the bucket does not exist", detail=detail)
        if code == "NoSuchKey" or status == 404:
            return _Gone(message, detail=detail)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(message, detail=detail)
        return PermanentError(message, detail=detail)


class _Gone(TransientError):
    """The object vanished between two calls (erased meanwhile); a retry lists afresh."""
